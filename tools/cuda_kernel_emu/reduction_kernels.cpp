#include "prelude_threads.h"
#include KERNELS
typedef unsigned long long u64;
static std::vector<float> rnd(size_t n, unsigned seed, float lo=-1, float hi=1){ std::vector<float> v(n); unsigned k=seed*2654435761u+1; for(auto&x:v){k=k*1664525u+1013904223u; x=lo+(hi-lo)*((k>>8)/16777216.0f);} return v;}
int fails=0;
#define CHECK(c,msg) do{ if(!(c)){printf("FAIL %s\n",msg); fails++;} else printf("ok %s\n",msg);}while(0)
int main(){
  // sum_inner
  { u64 rows=3, inner=1000; auto x=rnd(rows*inner,1); std::vector<float> out(rows);
    launch(rows,1,1,256,1,[&]{ k_sum_inner(x.data(),out.data(),inner); });
    bool ok=true; for(u64 r=0;r<rows;++r){ double s=0; for(u64 i=0;i<inner;++i) s+=x[r*inner+i]; ok&= fabs(out[r]-s)<1e-5; } CHECK(ok,"sum_inner"); }
  // transpose
  { int B=2, rows=33, cols=65; auto x=rnd((size_t)B*rows*cols,2); std::vector<float> o(x.size());
    launch((cols+31)/32,(rows+31)/32,B,32,8,[&]{ k_transpose(x.data(),o.data(),rows,cols); });
    bool ok=true; for(int b=0;b<B;++b)for(int r=0;r<rows;++r)for(int c=0;c<cols;++c) ok&= o[((size_t)b*cols+c)*rows+r]==x[((size_t)b*rows+r)*cols+c]; CHECK(ok,"transpose"); }
  // group norm + backward vs finite differences
  for(int silu=0;silu<2;++silu){ u64 n=2,c=4,hw=300,G=2; float eps=1e-5f; auto x=rnd(n*c*hw,3,2,5), ga=rnd(c,4,0.5,1.5), be=rnd(c,5,-.5,.5);
    std::vector<float> y(x.size()), st(n*G*2);
    launch(n*G,1,1,256,1,[&]{ k_group_norm(x.data(),ga.data(),be.data(),y.data(),st.data(),c,hw,G,eps,silu); });
    bool ok=true; u64 len=c/G*hw;
    for(u64 b=0;b<n*G;++b){ double m=0,v=0; for(u64 i=0;i<len;++i) m+=x[b*len+i]; m/=len; for(u64 i=0;i<len;++i) v+=(x[b*len+i]-m)*(x[b*len+i]-m); v/=len; double rs=1/sqrt(v+eps);
      ok&= fabs(st[2*b]-m)<1e-5 && fabs(st[2*b+1]-rs)<1e-4*rs;
      for(u64 i=0;i<len;++i){ u64 ch=(b%G)*(c/G)+i/hw; double a=(x[b*len+i]-m)*rs*ga[ch]+be[ch]; if(silu) a=a/(1+exp(-a)); ok&= fabs(y[b*len+i]-a)<1e-4; } }
    CHECK(ok, silu? "group_norm silu":"group_norm");
    // backward: compare with FD on a few coordinates of L = sum(y*dy)
    auto dy=rnd(x.size(),6); std::vector<float> dx(x.size());
    launch(n*G,1,1,256,1,[&]{ k_group_norm_backward(x.data(),st.data(),ga.data(),be.data(),dy.data(),dx.data(),c,hw,G,silu); });
    auto L=[&](std::vector<float>&xx){ std::vector<float> yy(xx.size()), ss(n*G*2); launch(n*G,1,1,64,1,[&]{ k_group_norm(xx.data(),ga.data(),be.data(),yy.data(),ss.data(),c,hw,G,eps,silu); }); double s=0; for(size_t i=0;i<yy.size();++i) s+=(double)yy[i]*dy[i]; return s; };
    bool ok2=true; for(size_t i: {0ul, 17ul, 299ul, 300ul, 777ul, 1199ul, 2399ul}){ auto xp=x, xm=x; xp[i]+=1e-2f; xm[i]-=1e-2f; double fd=(L(xp)-L(xm))/(xp[i]-xm[i]); if(fabs(fd-dx[i])>2e-3*(1+fabs(fd))){ ok2=false; printf("  i=%zu fd %g got %g\n",i,fd,dx[i]);} }
    CHECK(ok2, silu? "group_norm_backward silu":"group_norm_backward"); }
  // softmax rows + lse
  { int heads=2, rows=3; u64 m=300, q_len=7, n0=2, b=1; u64 off=b*heads*q_len+n0; auto s=rnd(heads*rows*m,7,-3,3); auto s0=s; std::vector<float> lse(2*heads*q_len, -1);
    launch(heads*rows,1,1,256,1,[&]{ k_softmax_rows(s.data(),lse.data(),m,rows,off,q_len); });
    bool ok=true; for(int r=0;r<heads*rows;++r){ double mx=-1e30,sum=0; for(u64 j=0;j<m;++j) mx=std::max(mx,(double)s0[r*m+j]); for(u64 j=0;j<m;++j) sum+=exp(s0[r*m+j]-mx);
      for(u64 j=0;j<m;++j) ok&= fabs(s[r*m+j]-exp(s0[r*m+j]-mx)/sum)<1e-6; int h=r/rows,i=r%rows; ok&= fabs(lse[(b*heads+h)*q_len+n0+i]-(mx+log(sum)))<1e-5; }
    CHECK(ok,"softmax_rows"); }
  printf("%s (%d failures)\n", fails? "FAILED":"all ok", fails); return fails!=0;
}
