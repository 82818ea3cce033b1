/* A plain program with three memory errors, run under valgrind with
 * LD_PRELOAD of a libhakmem.so built for memcheck (track_preload.sh):
 * memcheck must report each, with hakmem's malloc in the stacks. */
#include <stdio.h>
#include <stdlib.h>

int main(void) {
  volatile char* a = malloc(24);
  a[24] = 1; /* overflow by one byte */
  char* b = malloc(1000);
  free(b);
  volatile char* vb = b;
  int x = vb[500]; /* use after free */
  char* c = malloc(64);
  if (c[10] == 42) x++; /* uninitialized */
  free((void*)a);
  free(c);
  printf("done %d\n", x);
  return 0;
}
