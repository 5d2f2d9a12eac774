// The kernel cost of creating small files, three ways, single-threaded (for the `many` row
// of benches/compare.sh: what any receiver pays per new file on this file system).
//   cc -O2 -o /tmp/create_cost benches/probes/create_cost.c
//   /tmp/create_cost MODE DIR NDIRS NFILES   (DIR must not exist; remove it afterwards)
// MODE: t = O_TMPFILE, write, fchmod, futimens, linkat (haul: no partial file at its name)
//       c = open(O_CREAT), write, futimens (cp -a, tar: partial files at their names)
//       r = named temporary, write, fchmod, futimens, rename (rsync)
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/resource.h>
#include <time.h>
int main(int argc, char **argv) {
  char mode = argv[1][0]; const char *root = argv[2]; int nd = atoi(argv[3]), nf = atoi(argv[4]);
  char buf[8192]; memset(buf, 'x', sizeof buf);
  struct timespec ts[2] = {{1000000, 5}, {1000000, 5}};
  mkdir(root, 0755);
  int rfd = open(root, O_DIRECTORY);
  struct timespec t0, t1; clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int d = 0; d < nd; d++) {
    char dn[32]; sprintf(dn, "d%d", d); mkdirat(rfd, dn, 0755);
    int dfd = openat(rfd, dn, O_DIRECTORY);
    for (int f = 0; f < nf; f++) {
      char fn[64], tn[64]; sprintf(fn, "file-%07d.blob", f); sprintf(tn, ".haul-tmp-%07d", f);
      int len = (f * 2654435761u) % 8192;
      int fd;
      if (mode == 't') fd = openat(dfd, ".", O_TMPFILE | O_WRONLY, 0600);
      else if (mode == 'c') fd = openat(dfd, fn, O_CREAT | O_EXCL | O_WRONLY, 0644);
      else fd = openat(dfd, tn, O_CREAT | O_EXCL | O_WRONLY, 0600);
      if (fd < 0) { perror("open"); return 1; }
      pwrite(fd, buf, len, 0);
      if (mode != 'c') fchmod(fd, 0644);
      futimens(fd, ts);
      if (mode == 't') { char p[64]; sprintf(p, "/proc/self/fd/%d", fd); if (linkat(AT_FDCWD, p, dfd, fn, AT_SYMLINK_FOLLOW)) { perror("link"); return 1; } }
      if (mode == 'r') renameat(dfd, tn, dfd, fn);
      close(fd);
    }
    close(dfd);
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  struct rusage ru; getrusage(RUSAGE_SELF, &ru);
  printf("%c: %.2f s wall, user %.2f sys %.2f\n", mode, (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9, ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6, ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
  return 0;
}
