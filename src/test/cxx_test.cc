// C++'s operator new and delete (src/cxx.c), linked in as the shim is: the
// call site of a `new` is the code that wrote it, bad_alloc and the
// new_handler behave as the standard says, and a bad delete is diagnosed.
#include <cstdint>
#include <new>

#include "src/hakmem.h"
#include "src/test/test.h"

static void* volatile sink;

// Two sites asking for the same size (above the size classes, so every
// request is recorded in the site table).
static const size_t kBig = 256 * 1024;
__attribute__((noinline)) static void new_site_a() { delete[] static_cast<char*>(sink = new char[kBig]); }
__attribute__((noinline)) static void new_site_b() { delete[] static_cast<char*>(sink = new char[kBig]); }
__attribute__((noinline)) static void end_of_sites() {}

// The site whose return address lies in [lo, hi), or NULL.
static const hak_site_info_t* site_in(const hak_site_info_t* s, size_t n, const void* lo, const void* hi) {
  for (size_t i = 0; i < n; i++)
    if (s[i].site >= lo && s[i].site < hi) return &s[i];
  return nullptr;
}

TEST(new_sees_its_caller) {
  for (int i = 0; i < 10; i++) new_site_a();
  for (int i = 0; i < 20; i++) new_site_b();
  static hak_site_info_t s[1024];
  size_t n = hak_sites_get(s, 1024);
  // functions are laid out in order; each site lies in its own function
  const void* a = reinterpret_cast<const void*>(&new_site_a);
  const void* b = reinterpret_cast<const void*>(&new_site_b);
  const void* e = reinterpret_cast<const void*>(&end_of_sites);
  const void* lo = a < b ? a : b;
  const void* mid = a < b ? b : a;
  const hak_site_info_t* first = site_in(s, n, lo, mid);
  const hak_site_info_t* second = site_in(s, n, mid, e > mid ? e : static_cast<const char*>(mid) + 256);
  ASSERT_NOT_NULL(first);
  ASSERT_NOT_NULL(second);
  EXPECT_EQ_U(first->allocs + second->allocs, 30);
  EXPECT_TRUE(first->allocs == 10 || first->allocs == 20);
  EXPECT_TRUE(first->frees == first->allocs);
}

// Does f() throw std::bad_alloc?
template <class F>
static bool throws_bad_alloc(F f) {
  try {
    f();
  } catch (const std::bad_alloc&) {
    return true;
  }
  return false;
}

TEST(bad_alloc_thrown) {
  EXPECT_TRUE(throws_bad_alloc([] { sink = ::operator new(SIZE_MAX / 4); }));
  EXPECT_TRUE(throws_bad_alloc([] { sink = ::operator new[](SIZE_MAX / 4, std::align_val_t(4096)); }));
}

static int handler_calls;
static void give_up_second_time() {
  if (++handler_calls == 2) std::set_new_handler(nullptr);
}
static void throw_from_handler() {
  handler_calls++;
  throw std::bad_alloc();
}

TEST(new_handler_called_until_it_gives_up) {
  handler_calls = 0;
  std::set_new_handler(give_up_second_time);
  EXPECT_TRUE(throws_bad_alloc([] { sink = ::operator new(SIZE_MAX / 4); }));
  EXPECT_EQ_U(handler_calls, 2);
  std::set_new_handler(nullptr);
}

TEST(nothrow_returns_null) {
  EXPECT_TRUE(::operator new(SIZE_MAX / 4, std::nothrow) == nullptr);
  EXPECT_TRUE(::operator new[](SIZE_MAX / 4, std::align_val_t(64), std::nothrow) == nullptr);
  // a handler that throws: the nothrow form still returns NULL
  handler_calls = 0;
  std::set_new_handler(throw_from_handler);
  EXPECT_TRUE(::operator new[](SIZE_MAX / 4, std::nothrow) == nullptr);
  EXPECT_EQ_U(handler_calls, 1);
  std::set_new_handler(nullptr);
  void* p = ::operator new(100, std::nothrow);
  ASSERT_NOT_NULL(p);
  ::operator delete(p, std::nothrow);
}

struct alignas(4096) Page {
  char bytes[100];
};

TEST(aligned_new_and_sized_delete) {
  for (int i = 0; i < 100; i++) {
    Page* p = new Page;
    EXPECT_EQ_U(reinterpret_cast<uintptr_t>(p) % 4096, 0);
    p->bytes[99] = 1;
    delete p;  // sized, aligned delete
    char* q = new char[i * 1000 + 1];
    q[i * 1000] = 1;
    ::operator delete[](q, i * 1000 + 1);
  }
  delete static_cast<int*>(nullptr);
}

static void delete_twice(void*) {
  int* p = new int(7);
  sink = p;
  delete p;
  delete p;
}
static void delete_stack(void* arg) { ::operator delete(arg); }

TEST(bad_delete_diagnosed) {
  EXPECT_DEATH(delete_twice, nullptr, "double free in operator delete(", static_cast<void*>(nullptr));
  int on_stack[4];
  EXPECT_DEATH(delete_stack, on_stack, "invalid pointer (not allocated by hakmem) in operator delete(", on_stack);
}

TEST_MAIN()
