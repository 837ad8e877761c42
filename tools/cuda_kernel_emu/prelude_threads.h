#include <cmath>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include <thread>
#include <barrier>
#include <memory>
struct D3{unsigned x,y,z;};
static D3 blockIdx{0,0,0}, blockDim{1,1,1}, gridDim{1,1,1};
thread_local D3 threadIdx{0,0,0};
static std::unique_ptr<std::barrier<>> g_block;
static std::vector<std::unique_ptr<std::barrier<>>> g_warp;
static double g_slots_d[1024]; static float g_slots_f[1024];
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
static inline float __int_as_float(int v){float f; memcpy(&f,&v,4); return f;}
static inline void __syncthreads(){ g_block->arrive_and_wait(); }
static inline double __shfl_down_sync(unsigned, double v, int o){
  unsigned t=threadIdx.x, lane=t&31, w=t>>5; g_slots_d[t]=v; g_warp[w]->arrive_and_wait();
  double r = lane+o<32 ? g_slots_d[t+o] : v; g_warp[w]->arrive_and_wait(); return r; }
static inline float __shfl_down_sync(unsigned, float v, int o){
  unsigned t=threadIdx.x, lane=t&31, w=t>>5; g_slots_f[t]=v; g_warp[w]->arrive_and_wait();
  float r = lane+o<32 ? g_slots_f[t+o] : v; g_warp[w]->arrive_and_wait(); return r; }
template<class F> void launch(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, F f){
  gridDim={gx,gy,gz}; blockDim={bx,by,1};
  for(unsigned z=0;z<gz;++z)for(unsigned y=0;y<gy;++y)for(unsigned x=0;x<gx;++x){
    blockIdx={x,y,z}; unsigned nt=bx*by; g_block=std::make_unique<std::barrier<>>(nt); g_warp.clear();
    for(unsigned w=0;w<(nt+31)/32;++w) g_warp.push_back(std::make_unique<std::barrier<>>(32));
    std::vector<std::thread> th; for(unsigned t=0;t<nt;++t) th.emplace_back([&,t]{ threadIdx={t%bx,t/bx,0}; f(); }); for(auto&t:th) t.join(); }
}
