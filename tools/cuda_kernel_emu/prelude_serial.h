#include <cmath>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
struct D3{unsigned x,y,z;};
static D3 blockIdx{0,0,0}, threadIdx{0,0,0}, blockDim{1,1,1}, gridDim{1,1,1};
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
static inline float __int_as_float(int v){float f; memcpy(&f,&v,4); return f;}
template<class T> T __shfl_down_sync(unsigned, T v, int){return v;}
static inline void __syncthreads(){}
