// A program that replaces only operator new(size_t) and operator delete(void*),
// with a size header in front of each block, as allocation counters and pools
// do.  The standard has the forms it did not replace call these: new[] and
// the nothrow new call its new; sized delete and delete[] call its delete.
// Under LD_PRELOAD of hakmem, whose operator new/delete stand in for
// libstdc++'s, every block must still come from and go back to the program's
// pair (a review found hakmem's sized delete freeing the program's blocks
// itself: "invalid pointer in operator delete").
#include <cstdio>
#include <cstdlib>
#include <new>

static size_t live, news, deletes;
void* operator new(size_t n) {
  size_t* p = static_cast<size_t*>(std::malloc(n + 16));
  if (p == nullptr) throw std::bad_alloc();
  p[0] = n;
  live += n;
  news++;
  return p + 2;
}
void operator delete(void* q) noexcept {
  if (q == nullptr) return;
  size_t* p = static_cast<size_t*>(q) - 2;
  live -= p[0];
  deletes++;
  std::free(p);
}

struct S {
  long a[5];
};

int main() {
  S* s = new S;  // the program's new
  delete s;      // sized delete: must call the program's delete
  int* a = new int[10];
  delete[] a;
  S* t = new (std::nothrow) S;
  delete t;
  char* c = new char[100];
  ::operator delete[](c, 100);
  std::printf("live=%zu news=%zu deletes=%zu\n", live, news, deletes);
  return live == 0 && news == 4 && deletes == 4 ? 0 : 1;
}
