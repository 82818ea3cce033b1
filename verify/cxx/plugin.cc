// A C++ plugin: allocation failure inside it is std::bad_alloc, after the
// new_handler, even when the host is a C program that loaded libstdc++ only
// by opening this plugin (hakmem's operator new looks libstdc++'s functions
// up when allocation fails; the first version resolved them when it was
// loaded, and a failed new aborted).
#include <cstdint>
#include <new>

static int handler_calls;
static void give_up() {
  handler_calls++;
  std::set_new_handler(nullptr);
}

extern "C" int plugin_run() {
  std::set_new_handler(give_up);
  int caught = 0;
  try {
    void* p = ::operator new(SIZE_MAX / 4);
    ::operator delete(p);
  } catch (const std::bad_alloc&) {
    caught = 1;
  }
  void* q = ::operator new(SIZE_MAX / 4, std::nothrow);
  return caught * 100 + handler_calls * 10 + (q == nullptr);
}
