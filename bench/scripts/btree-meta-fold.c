// What folding the meta page into a small commit's run would save on the device (issue 3,
// session 9, rev9; BENCHMARKS.md "rev9"), without the engines: per iteration, in rotating order,
// four files on the same disk (each pre-written, so no write allocates blocks) get
//   today: 8 adjacent pages at a moving place + the meta page (page 0/1, alternating) + fdatasync
//          (ringkv's durable 1-key commit: 2 write requests, 1 flush);
//   fold:  9 adjacent pages at the same place + fdatasync (the meta folded into the run);
//   one:   1 page at the same place + fdatasync (the smallest buffered commit);
//   lmdb:  5 scattered pages + fdatasync, then the meta page through an O_DSYNC descriptor
//          (LMDB's pattern: 2 flushes).
// usage: gcc -O2 -o /tmp/metafold bench/scripts/btree-meta-fold.c
//        /tmp/metafold /work/benchdata/metafold ITERATIONS   (removes its files)
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e6+t.tv_nsec/1e3;}
static int cmp(const void*a,const void*b){double x=*(double*)a,y=*(double*)b;return x<y?-1:x>y;}
#define M 4
int main(int argc,char**argv){
  int iters=atoi(argv[2]); size_t ps=4096; long pages=16384;
  char*buf=malloc(ps*64); memset(buf,0xab,ps*64);
  char p[M][256]; int fd[M], dsync=-1;
  for(int m=0;m<M;m++){ sprintf(p[m],"%s.%d",argv[1],m); fd[m]=open(p[m],O_RDWR|O_CREAT|O_TRUNC,0644);
    for(long o=0;o<pages;o+=64) pwrite(fd[m],buf,ps*64,o*ps); fdatasync(fd[m]); }
  dsync=open(p[3],O_RDWR|O_DSYNC);
  double*lat=calloc((size_t)M*iters,sizeof(double)); srand(5);
  for(int it=0;it<iters;it++) for(int mm=0;mm<M;mm++){ int m=(mm+it)%M; long at=2+((long)it*9)%(pages-16);
    double t0=now();
    if(m==0){ pwrite(fd[0],buf,ps*8,at*ps); pwrite(fd[0],buf,ps,(it%2)*ps); fdatasync(fd[0]); }
    else if(m==1){ pwrite(fd[1],buf,ps*9,at*ps); fdatasync(fd[1]); }
    else if(m==2){ pwrite(fd[2],buf,ps,at*ps); fdatasync(fd[2]); }
    else { for(int j=0;j<5;j++){ long q=2+rand()%(pages-2); pwrite(fd[3],buf,ps,q*ps);} fdatasync(fd[3]);
           pwrite(dsync,buf,ps,(it%2)*ps); }
    lat[m*iters+it]=now()-t0; }
  const char*n[]={"today: 8 pages + meta, 1 flush","fold: 9 adjacent pages, 1 flush","one: 1 page, 1 flush","lmdb: 5 scattered + flush + O_DSYNC meta"};
  for(int m=0;m<M;m++){ double*l=lat+m*iters,s=0; for(int i=0;i<iters;i++) s+=l[i]; qsort(l,iters,sizeof(double),cmp);
    printf("%-42s mean %7.1f p25 %7.1f p50 %7.1f p75 %7.1f us\n",n[m],s/iters,l[iters/4],l[iters/2],l[iters*3/4]); unlink(p[m]); }
  return 0;
}
