#include "prelude_serial.h"
#include KERNELS
typedef unsigned long long u64;
static std::vector<float> rnd(size_t n, unsigned seed){ std::vector<float> v(n); unsigned k=seed*2654435761u+1; for(auto&x:v){k=k*1664525u+1013904223u; x=((k>>8)/16777216.0f)*2-1;} return v;}
static double dot(const std::vector<float>&a,const std::vector<float>&b){double s=0; for(size_t i=0;i<a.size();++i) s+=(double)a[i]*b[i]; return s;}
int fails=0;
#define CHECK(c,msg) do{ if(!(c)){printf("FAIL %s\n",msg); fails++;} }while(0)
int main(){
  // conv geometry cases: n,cin,h,w,k,stride,pt,pl,pb,pr
  int cases[][10]={{2,3,8,8,3,1,1,1,1,1},{3,2,9,7,3,2,0,0,1,1},{2,2,9,9,3,2,1,1,1,1},{1,3,6,5,5,1,2,1,0,2}};
  for(auto&c:cases){
    int n=c[0],cin=c[1],h=c[2],w=c[3],k=c[4],st=c[5],pt=c[6],pl=c[7],pb=c[8],pr=c[9];
    int oh=(h+pt+pb-k)/st+1, ow=(w+pl+pr-k)/st+1;
    size_t per=(size_t)cin*k*k*oh*ow;
    auto x=rnd((size_t)n*cin*h*w,1);
    // im2col for samples 1.. (s0=1) and compare with direct formula
    for(int s0=0;s0<n;++s0){
      std::vector<float> col(per*(n-s0));
      k_im2col(x.data(),col.data(),s0,cin,h,w,oh,ow,k,k,st,pt,pl,(u64)col.size());
      bool ok=true;
      for(int s=s0;s<n;++s)for(int ci=0;ci<cin;++ci)for(int ky=0;ky<k;++ky)for(int kx=0;kx<k;++kx)for(int oy=0;oy<oh;++oy)for(int ox=0;ox<ow;++ox){
        int iy=oy*st+ky-pt, ix=ox*st+kx-pl; float want=(iy>=0&&iy<h&&ix>=0&&ix<w)?x[(((size_t)s*cin+ci)*h+iy)*w+ix]:0;
        size_t row=(size_t)(ci*k+ky)*k+kx; float got=col[(size_t)(s-s0)*per+row*oh*ow+oy*ow+ox]; if(got!=want) ok=false;}
      CHECK(ok,"im2col");
      // adjoint: <im2col(x), g> == <x_sub, col2im(g)>
      auto g=rnd(col.size(),7);
      std::vector<float> dx((size_t)n*cin*h*w, 123.0f);
      k_col2im(g.data(),dx.data(),s0,cin,h,w,oh,ow,k,k,st,pt,pl,(u64)((size_t)(n-s0)*cin*h*w));
      std::vector<float> xs(x.begin()+(size_t)s0*cin*h*w,x.end()), dxs(dx.begin()+(size_t)s0*cin*h*w,dx.end());
      double a=dot(col,g), b=dot(xs,dxs);
      CHECK(fabs(a-b)<1e-3*(1+fabs(a)),"col2im adjoint");
      bool untouched=true; for(size_t i=0;i<(size_t)s0*cin*h*w;++i) if(dx[i]!=123.0f) untouched=false;
      CHECK(untouched,"col2im writes only its chunk");
    }
  }
  // resize
  int rs[][4]={{5,7,10,14},{8,8,8,8},{5,7,8,3},{9,4,4,13}};
  for(auto&r:rs){int ih=r[0],iw=r[1],oh=r[2],ow=r[3],nc=3;
    auto x=rnd((size_t)nc*ih*iw,3); std::vector<float> y((size_t)nc*oh*ow);
    k_resize_nearest(x.data(),y.data(),ih,iw,oh,ow,(u64)y.size());
    bool ok=true;
    for(int p=0;p<nc;++p)for(int oy=0;oy<oh;++oy)for(int ox=0;ox<ow;++ox){
      auto src=[](int o,int in,int out){ if(out==in) return o; if(out==2*in) return o>>1; float sc=(float)in/(float)out; return std::min((int)std::floor(o*sc),in-1);};
      if(y[((size_t)p*oh+oy)*ow+ox]!=x[((size_t)p*ih+src(oy,ih,oh))*iw+src(ox,iw,ow)]) ok=false;}
    CHECK(ok,"resize");
    auto g=rnd(y.size(),4); std::vector<float> dx(x.size());
    k_resize_nearest_backward(g.data(),dx.data(),ih,iw,oh,ow,(u64)dx.size());
    CHECK(fabs(dot(y,g)-dot(x,dx))<1e-4,"resize adjoint");
  }
  // concat / split
  { u64 la=6, lb=10; int n=3; auto a=rnd(n*la,5), b=rnd(n*lb,6); std::vector<float> o(n*(la+lb));
    k_concat(a.data(),b.data(),o.data(),la,lb,o.size());
    bool ok=true; for(int s=0;s<n;++s){ for(u64 i=0;i<la;++i) ok&=o[s*(la+lb)+i]==a[s*la+i]; for(u64 i=0;i<lb;++i) ok&=o[s*(la+lb)+la+i]==b[s*lb+i]; }
    CHECK(ok,"concat"); std::vector<float> a2(a.size()), b2(b.size()); k_split(o.data(),a2.data(),b2.data(),la,lb,o.size()); CHECK(a2==a&&b2==b,"split"); }
  // add_broadcast
  { u64 outer=3, mid=5, inner=7; auto y=rnd(outer*mid*inner,8), v=rnd(mid,9); auto y0=y; k_add_broadcast(y.data(),v.data(),mid,inner,y.size());
    bool ok=true; for(u64 o=0;o<outer;++o)for(u64 m=0;m<mid;++m)for(u64 i=0;i<inner;++i){size_t j=(o*mid+m)*inner+i; ok&= y[j]==y0[j]+v[m];} CHECK(ok,"add_broadcast"); }
  // geglu
  { u64 rows=4, inner=5; auto h=rnd(rows*2*inner,10); std::vector<float> y(rows*inner); k_geglu(h.data(),y.data(),inner,y.size());
    bool ok=true; for(u64 r=0;r<rows;++r)for(u64 j=0;j<inner;++j){ double g=h[r*2*inner+inner+j]; float want=(float)(0.5*g*(1+erf(g/sqrt(2.0)))); ok&= fabs(y[r*inner+j]-h[r*2*inner+j]*want)<1e-6;} CHECK(ok,"geglu");
    // geglu backward vs finite differences of sum(y*dy)
    auto dy=rnd(y.size(),11); std::vector<float> dh(h.size()); k_geglu_backward(h.data(),dy.data(),dh.data(),inner,y.size());
    bool ok2=true; for(size_t i=0;i<h.size();++i){ auto hp=h, hm=h; hp[i]+=1e-3f; hm[i]-=1e-3f; std::vector<float> yp(y.size()), ym(y.size()); k_geglu(hp.data(),yp.data(),inner,y.size()); k_geglu(hm.data(),ym.data(),inner,y.size()); double fd=(dot(yp,dy)-dot(ym,dy))/(hp[i]-hm[i]); if(fabs(fd-dh[i])>1e-3) ok2=false;} CHECK(ok2,"geglu backward"); }
  // attention helper kernels: rows mapping
  { int heads=3, rows=4; u64 m=5, q_len=10, b=1, n0=6; u64 off=b*heads*q_len+n0; std::vector<float> lse(2*heads*q_len); for(size_t i=0;i<lse.size();++i) lse[i]=0.1f*i;
    auto s=rnd((size_t)heads*rows*m,12); auto s0=s; k_attn_probs(s.data(),lse.data(),m,rows,off,q_len,(u64)s.size());
    bool ok=true; for(int h=0;h<heads;++h)for(int i=0;i<rows;++i)for(u64 j=0;j<m;++j){size_t idx=((size_t)h*rows+i)*m+j; ok&= s[idx]==expf(s0[idx]-lse[(b*heads+h)*q_len+n0+i]);} CHECK(ok,"attn_probs");
    // rowdot
    int B=2, dh=4; u64 ql=3; auto dO=rnd(B*ql*heads*dh,13), O=rnd(B*ql*heads*dh,14); std::vector<float> D(B*heads*ql); k_attn_rowdot(dO.data(),O.data(),D.data(),heads,dh,ql,D.size());
    bool ok2=true; for(int bb=0;bb<B;++bb)for(int h=0;h<heads;++h)for(u64 i=0;i<ql;++i){ double a=0; for(int t=0;t<dh;++t){size_t o=((bb*ql+i)*heads+h)*dh+t; a+=(double)dO[o]*O[o];} ok2&= D[(bb*heads+h)*ql+i]==(float)a;} CHECK(ok2,"rowdot"); }
  // gemm k0
  { std::vector<float> c(40,2.0f); k_gemm_k0(c.data(),3,2,3,4,12,0.0f,(u64)(2*2*3)); int zeros=0; for(float v:c) zeros+= v==0; CHECK(zeros==12,"gemm_k0 zeros count");
    CHECK(c[3]==0&&c[4]==0&&c[5]==0&&c[6]==2&&c[7]==0&&c[15]==0&&c[6]==2,"gemm_k0 layout"); }
  printf("%s (%d failures)\n", fails? "FAILED":"all ok", fails); return fails!=0;
}
