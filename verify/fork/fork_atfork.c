/* Forks from a multithreaded program whose library registered allocating
 * atfork handlers before the allocator did (atfork_lib.c).  Worker threads
 * allocate and free on every tier throughout; a fresh thread (no heap yet)
 * forks 200 times, each child allocates and exits.  A deadlock in fork is
 * reported after 120 s by the alarm (a liveness bound, not a timing test:
 * 200 forks take 10-15 s on a quiet 2-core VM here, 30 s beside a build). */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int atfork_lib_present(void);
void atfork_lib_work(unsigned seed);

static atomic_int stop;

static void* worker(void* arg) {
  unsigned s = (unsigned)(uintptr_t)arg;
  void* slots[64] = {0};
  while (!atomic_load(&stop)) {
    s = s * 1103515245u + 12345u;
    unsigned i = (s >> 8) % 64;
    free(slots[i]);
    size_t size = (s >> 16) % 4 == 0 ? (size_t)((s >> 4) % (4u << 20)) : (size_t)((s >> 4) % 2048);
    slots[i] = malloc(size + 1);
    memset(slots[i], (int)i, size + 1 < 64 ? size + 1 : 64);
  }
  for (int i = 0; i < 64; i++) free(slots[i]);
  return NULL;
}

/* Calls into the library, which allocates under the lock its prepare takes. */
static void* lib_worker(void* arg) {
  for (unsigned i = 0; !atomic_load(&stop); i++) atfork_lib_work(i);
  return NULL;
}

static void* forker(void* arg) {
  for (int k = 0; k < 200; k++) {
    pid_t pid = fork();
    if (pid < 0) {
      perror("fork");
      exit(1);
    }
    if (pid == 0) {
      void* p[100];
      for (int i = 0; i < 100; i++) p[i] = malloc((size_t)i * 1000 + 1);
      for (int i = 0; i < 100; i++) free(p[i]);
      _exit(0);
    }
    int st = 0;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      fprintf(stderr, "fork_atfork: child %d failed (status %d)\n", k, st);
      exit(1);
    }
  }
  return NULL;
}

static void on_alarm(int sig) {
  static const char msg[] = "fork_atfork: DEADLOCK: fork did not complete within 120 s\n";
  (void)!write(2, msg, sizeof(msg) - 1);
  _exit(2);
}

int main(void) {
  if (!atfork_lib_present()) return 1;
  signal(SIGALRM, on_alarm);
  alarm(120);
  pthread_t w[3], f, lw;
  for (int i = 0; i < 3; i++) pthread_create(&w[i], NULL, worker, (void*)(uintptr_t)(i + 1));
  pthread_create(&lw, NULL, lib_worker, NULL);
  pthread_create(&f, NULL, forker, NULL);
  pthread_join(f, NULL);
  atomic_store(&stop, 1);
  for (int i = 0; i < 3; i++) pthread_join(w[i], NULL);
  pthread_join(lw, NULL);
  printf("fork_atfork: 200 forks with allocating atfork handlers and a library allocating under its prepare lock: ok\n");
  return 0;
}
