// The device cost of one small commit's write pattern, before and after issue 3 session 7
// (BENCHMARKS.md "Backend: one write request per small commit"), without the engines: per
// iteration, in rotating order, three files on the same disk get
//   base:  6 single pages at random places + the meta page (page 0/1) + fdatasync;
//   after: 8 adjacent pages at the growing tail + the meta + fdatasync, with 248 pages of zeros
//          written after the tail whenever it passes the zeroed part (db.rs ZERO_AHEAD_PAGES);
//   8 adjacent tail pages into fallocate'd (unwritten) blocks + the meta + fdatasync.
// usage: gcc -O2 -o /tmp/pattern bench/scripts/btree-commit-pattern.c
//        /tmp/pattern /work/benchdata/pattern ITERATIONS   (removes its three files)
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e6+t.tv_nsec/1e3;}
static int cmp(const void*a,const void*b){double x=*(double*)a,y=*(double*)b;return x<y?-1:x>y;}
// A: 6 scattered pages + meta (base); B: 8 contiguous tail pages + meta, tail zeroed ahead 256 pages at a time (after)
// C: 8 contiguous tail pages + meta into fallocated (unwritten) blocks, no zeros
int main(int argc,char**argv){
  int iters=atoi(argv[2]); size_t ps=4096; long pages=65536;
  char*buf; posix_memalign((void**)&buf,4096,ps*256); memset(buf,0xab,ps*8); memset(buf+ps*8,0,ps*248);
  char p[3][256]; int fd[3];
  for(int m=0;m<3;m++){ sprintf(p[m],"%s.%d",argv[1],m); fd[m]=open(p[m],O_RDWR|O_CREAT|O_TRUNC,0644);
    fallocate(fd[m],0,0,ps*(pages+iters*8+512));
    for(long o=0;o<pages;o+=64) pwrite(fd[m],buf+ps*8,ps*64,o*ps); fdatasync(fd[m]); }
  static double lat[3][10000]; long zend=pages; srand(3);
  for(int it=0;it<iters;it++) for(int mm=0;mm<3;mm++){ int m=(mm+it)%3; double t0=now();
    if(m==0){ for(int j=0;j<6;j++){ long q=2+rand()%(pages-2); pwrite(fd[0],buf,ps,q*ps);} }
    else { long at=pages+(long)it*8; pwrite(fd[m],buf,ps*8,at*ps);
      if(m==1 && at+8>zend){ pwrite(fd[1],buf+ps*8,ps*248,(at+8)*ps); zend=at+8+248; } }
    pwrite(fd[m],buf,ps,(it%2)*ps); fdatasync(fd[m]); lat[m][it]=now()-t0; }
  const char*n[]={"base: 6 scattered+meta","after: 8 tail+meta,zeros","8 tail unwritten+meta"};
  for(int m=0;m<3;m++){ double s=0; for(int i=0;i<iters;i++) s+=lat[m][i]; qsort(lat[m],iters,sizeof(double),cmp);
    printf("%-27s mean %7.1f p50 %7.1f p25 %7.1f p75 %7.1f us\n",n[m],s/iters,lat[m][iters/2],lat[m][iters/4],lat[m][iters*3/4]); unlink(p[m]); }
}
