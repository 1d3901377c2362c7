// cuda_host.h - run CUDA C kernels on the CPU for semantic tests (g++ >= 9, -std=c++17, x86-64 Linux/glibc).
// One .so per .cu: g++ -std=c++17 -O1 -shared -fPIC -fvisibility=hidden -include cuda_host.h w.cpp -o k.so,
// where w.cpp = `#include "k.cu"` + CUDA_HOST_EXPORT(name) per kernel (cuda_host.py writes and caches it).
// Every CUDA thread is a fiber; a block's threads run cooperatively on the calling OS thread and switch only
// inside __syncthreads*() and warp *_sync ops; blocks run one after another. Misuse (divergent barriers,
// bad masks, deadlock) is reported as an error. __shared__ memory is NaN-poisoned before every block.
// Env: CUDA_HOST_ORDER=fwd|rev|rand (fiber resume order), CUDA_HOST_SEED, CUDA_HOST_STACK_KB (default 64).
// Built with -fsanitize=thread it reports data races between the threads of a block (TSan fiber API).
// fastvae additions (end of file): sincospi/sincospif/sinpi/cospi with exact argument reduction, __sincosf,
// __umulhi/__umul64hi/__mulhi, __int2float_rn, __dsqrt_rn, __ddiv_rn.
#pragma once
#define CUDA_HOST_HARNESS 1
#include <link.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <cmath>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __shared__ thread_local   // block scope => static; `extern __shared__` stays valid
#define CH_VEC(T, N, A) struct __attribute__((aligned(A))) N##2 { T x, y; }; struct N##3 { T x, y, z; };              \
  struct __attribute__((aligned(2 * A))) N##4 { T x, y, z, w; }; inline N##2 make_##N##2(T x, T y) { return {x, y}; } \
  inline N##3 make_##N##3(T x, T y, T z) { return {x, y, z}; } inline N##4 make_##N##4(T x, T y, T z, T w) { return {x, y, z, w}; }
CH_VEC(float, float, 8) CH_VEC(int, int, 8) CH_VEC(unsigned, uint, 8) CH_VEC(double, double, 16)
struct dim3 { unsigned x, y, z; dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {} };

#ifdef __SANITIZE_THREAD__
extern "C" { void* __tsan_get_current_fiber(); void* __tsan_create_fiber(unsigned); void __tsan_destroy_fiber(void*);
             void __tsan_switch_to_fiber(void*, unsigned); void __tsan_acquire(void*); void __tsan_release(void*); }
#define CH_TSAN(x) x
#define CH_NOSAN __attribute__((no_sanitize_thread, noinline))   // harness bookkeeping is not user data
#else
#define CH_TSAN(x)
#define CH_NOSAN
#endif
asm(".text\n.p2align 4\n.weak cudahost_swap\n.hidden cudahost_swap\n.type cudahost_swap,@function\ncudahost_swap:\n"
    "pushq %rbp\npushq %rbx\npushq %r12\npushq %r13\npushq %r14\npushq %r15\nmovq %rsp,(%rdi)\nmovq %rsi,%rsp\n"
    "popq %r15\npopq %r14\npopq %r13\npopq %r12\npopq %rbx\npopq %rbp\nret\n.size cudahost_swap,.-cudahost_swap\n");
extern "C" void cudahost_swap(void** save_sp, void* new_sp);   // saves/restores the SysV callee-saved registers

namespace cudahost {
struct Abort {};
struct Warp { unsigned live, arrived, rmask, gen; uint64_t slot[2][32]; };
struct Fiber { void* sp; uint3 tid; bool done; char waiting; void* tf; };   // waiting: 1 bar, 2 warp, 3 not started
struct Ctx {   // one launch
  uint3 bid; dim3 bdim, gdim; unsigned n, live, bar_arrived, bar_gen, bar_acc[2]; int bar_line; const char* bar_file;
  unsigned long progress; void (*tramp)(void*); void* arg; char err[400]; Warp warp[32]; Fiber* fib; unsigned cur; void *sched_sp, *tsched; };
struct Self { uint3 tid; unsigned lin; Ctx* c; };
static thread_local Self me;             // harness TLS; kept across the shared-memory poisoning
static thread_local char last_error[400];
static char* pool; static size_t pool_len, pool_ssz; static int pool_busy;   // fiber stacks, reused across launches

CH_NOSAN inline void seterr(Ctx* c, const char* fmt, ...) {   // keeps the first error
  if (!c->err[0]) { va_list ap; va_start(ap, fmt); vsnprintf(c->err, sizeof c->err, fmt, ap); va_end(ap); } }
#define CH_FAIL(c, ...) do { seterr(c, __VA_ARGS__); throw Abort(); } while (0)
#define CH_WAIT(c, kind, pred) do { c->fib[c->cur].waiting = kind; while (!(pred)) { if (c->err[0]) throw Abort(); \
    CH_TSAN(__tsan_switch_to_fiber(c->tsched, 1)); cudahost_swap(&c->fib[c->cur].sp, c->sched_sp); \
    asm volatile("" ::: "memory"); } c->fib[c->cur].waiting = 0; } while (0)

CH_NOSAN inline void release_barrier(Ctx* c) { c->bar_arrived = 0; c->bar_gen++; }
CH_NOSAN inline void arrive_exit(Ctx* c, unsigned lin) {   // a CUDA thread returned from the kernel
  c->progress++; c->live--;
  Warp& w = c->warp[lin >> 5]; w.live &= ~(1u << (lin & 31));
  if (c->bar_arrived && c->bar_arrived == c->live) release_barrier(c);
  if (w.arrived && (w.rmask >> (lin & 31) & 1)) seterr(c, "thread %u exited while its warp waits in a *_sync op naming it", lin);
}
CH_NOSAN inline unsigned bar(const char* file, int line, unsigned pred) {   // __syncthreads*; returns count of pred
  Ctx* c = me.c; c->progress++;
  if (c->bar_arrived == 0) { c->bar_file = file; c->bar_line = line; c->bar_acc[c->bar_gen & 1] = 0; }
  else if (c->bar_line != line || (c->bar_file != file && strcmp(c->bar_file, file)))
    CH_FAIL(c, "divergent __syncthreads: threads wait at %s:%d and at %s:%d", file, line, c->bar_file, c->bar_line);
  unsigned g = c->bar_gen; c->bar_acc[g & 1] += pred != 0; CH_TSAN(__tsan_release(&c->bar_acc[g & 1]));
  if (++c->bar_arrived == c->live) release_barrier(c);
  else CH_WAIT(c, 1, c->bar_gen != g);
  CH_TSAN(__tsan_acquire(&c->bar_acc[g & 1]));
  return c->bar_acc[g & 1];
}
CH_NOSAN inline const uint64_t* warp_round(unsigned mask, uint64_t mine, bool fence = false) {   // lanes exchange 8 bytes
  Ctx* c = me.c; unsigned lane = me.lin & 31; Warp& w = c->warp[me.lin >> 5]; c->progress++;
  if (!(mask >> lane & 1)) CH_FAIL(c, "thread %u calls a *_sync op whose mask 0x%x excludes it", me.lin, mask);
  if (mask & ~w.live) CH_FAIL(c, "*_sync mask 0x%x names exited or nonexistent lanes 0x%x", mask, mask & ~w.live);
  if (w.arrived == 0) w.rmask = mask;
  else if (w.rmask != mask) CH_FAIL(c, "lanes of warp %u use different *_sync masks 0x%x / 0x%x", me.lin >> 5, mask, w.rmask);
  unsigned g = w.gen; w.slot[g & 1][lane] = mine; w.arrived |= 1u << lane;
  if (fence) CH_TSAN(__tsan_release(&w.slot[g & 1]));   // __syncwarp orders memory; shuffles do not
  if (w.arrived == mask) { w.arrived = 0; w.gen++; }
  else CH_WAIT(c, 2, w.gen != g);
  if (fence) CH_TSAN(__tsan_acquire(&w.slot[g & 1]));
  return w.slot[g & 1];   // double-buffered: valid until this lane's next round
}
template <class T> CH_NOSAN T shfl(unsigned mask, T v, int kind, int arg, int width) {
  static_assert(sizeof(T) <= 8, "shuffle of more than 8 bytes");
  uint64_t b = 0; memcpy(&b, &v, sizeof(T));
  const uint64_t* s = warp_round(mask, b);
  int lane = me.lin & 31, base = lane & ~(width - 1), src;
  if (kind == 0) src = base + (arg & (width - 1));
  else if (kind == 1) src = lane - arg < base ? lane : lane - arg;
  else if (kind == 2) src = lane + arg >= base + width ? lane : lane + arg;
  else src = (lane ^ arg) >= base + width ? lane : (lane ^ arg);
  uint64_t r = (mask >> src & 1) ? s[src] : ~0ull;   // source lane outside mask: undefined -> poison
  T out; memcpy(&out, &r, sizeof(T)); return out;
}
CH_NOSAN inline unsigned ballot(unsigned mask, int p) {
  const uint64_t* s = warp_round(mask, p != 0); unsigned r = 0; for (int l = 0; l < 32; l++) r |= (mask >> l & 1) && s[l] ? 1u << l : 0; return r; }
CH_NOSAN inline void fiber_main() {
  Ctx* c = me.c; unsigned i = c->cur;
  try { c->tramp(c->arg); } catch (Abort&) {}
  arrive_exit(c, i); c->fib[i].done = true;
  CH_TSAN(__tsan_switch_to_fiber(c->tsched, 0)); cudahost_swap(&c->fib[i].sp, c->sched_sp); abort();   // never resumed
}
CH_NOSAN inline int find_tls(dl_phdr_info* i, size_t, void* v) {   // this module's TLS block = all __shared__ data
  char** q = (char**)v; char* d = (char*)i->dlpi_tls_data;
  for (int k = 0; k < i->dlpi_phnum; k++)
    if (i->dlpi_phdr[k].p_type == PT_TLS && d && q[0] >= d && q[0] < d + i->dlpi_phdr[k].p_memsz) { q[1] = d; q[2] = d + i->dlpi_phdr[k].p_memsz; return 1; }
  return 0;
}
CH_NOSAN inline void run(Ctx* c, unsigned long nblocks) {
  const char* e = getenv("CUDA_HOST_ORDER"); int ord = !e ? 0 : !strcmp(e, "rev") ? 1 : !strcmp(e, "rand") ? 2 : 0;
  e = getenv("CUDA_HOST_SEED"); uint64_t rng = (e ? strtoull(e, 0, 10) : 0) * 2654435761u + 88172645463325252ull;
  e = getenv("CUDA_HOST_STACK_KB"); size_t ssz = (e ? strtoul(e, 0, 10) : 64) << 10, pg = 4096, len = (ssz + pg) * c->n;
  bool pooled = !__atomic_exchange_n(&pool_busy, 1, __ATOMIC_ACQUIRE);
  char* mem = pooled && pool_len >= len && pool_ssz == ssz ? pool
            : (char*)mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mem == MAP_FAILED) { seterr(c, "mmap of %zu bytes of fiber stacks failed", len); if (pooled) __atomic_store_n(&pool_busy, 0, __ATOMIC_RELEASE); return; }
  if (mem != pool) for (unsigned i = 0; i < c->n; i++) mprotect(mem + i * (ssz + pg), pg, PROT_NONE);   // guard pages
  char* tls[3] = {(char*)&me, 0, 0}; dl_iterate_phdr(find_tls, tls);
  Fiber* fib = new Fiber[c->n](); unsigned* order = new unsigned[c->n]; c->fib = fib; CH_TSAN(c->tsched = __tsan_get_current_fiber());
  for (unsigned long b = 0; b < nblocks && !c->err[0]; b++) {
    c->bid = {unsigned(b % c->gdim.x), unsigned(b / c->gdim.x % c->gdim.y), unsigned(b / ((unsigned long)c->gdim.x * c->gdim.y))};
    c->live = c->n; c->bar_arrived = 0; c->progress = 0;
    for (unsigned w = 0; w < (c->n + 31) / 32; w++) { unsigned k = c->n - 32 * w; c->warp[w] = {k >= 32 ? ~0u : (1u << k) - 1, 0, 0, 0, {}}; }
    Self keep = me; if (tls[1]) memset(tls[1], 0xff, tls[2] - tls[1]); me = keep;   // fresh NaN-filled shared memory
    for (unsigned i = 0; i < c->n; i++) {
      uint64_t* sp = (uint64_t*)(mem + (i + 1) * (ssz + pg)); *--sp = 0; *--sp = (uint64_t)&fiber_main;   // "returns" into fiber_main
      for (int r = 0; r < 6; r++) *--sp = 0;   // callee-saved registers popped by cudahost_swap
      fib[i] = {sp, {i % c->bdim.x, i / c->bdim.x % c->bdim.y, i / (c->bdim.x * c->bdim.y)}, false, 3, fib[i].tf};
      CH_TSAN(if (!fib[i].tf) fib[i].tf = __tsan_create_fiber(0)); order[i] = ord == 1 ? c->n - 1 - i : i;
    }
    for (unsigned left = c->n; left;) {   // scheduling passes: resume every live fiber once
      unsigned long before = c->progress;
      for (unsigned j = c->n - 1; ord == 2 && j > 0; j--) {   // xorshift shuffle of the resume order
        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; unsigned k = rng % (j + 1), t = order[j]; order[j] = order[k]; order[k] = t; }
      for (unsigned j = 0; j < c->n; j++) {
        unsigned i = order[j]; if (fib[i].done) continue;
        c->cur = i; me.tid = fib[i].tid; me.lin = i;
        CH_TSAN(__tsan_switch_to_fiber(fib[i].tf, fib[i].waiting != 3));   // first entry synchronizes with the scheduler
        if (fib[i].waiting == 3) fib[i].waiting = 0;
        cudahost_swap(&c->sched_sp, fib[i].sp); left -= fib[i].done;
      }
      if (left && c->progress == before && !c->err[0]) {
        unsigned nb = 0, nw = 0; for (unsigned i = 0; i < c->n; i++) nb += fib[i].waiting == 1, nw += fib[i].waiting == 2;
        seterr(c, "deadlock in block (%u,%u,%u): %u threads wait in __syncthreads (%s:%d), %u in warp *_sync ops",
               c->bid.x, c->bid.y, c->bid.z, nb, c->bar_arrived ? c->bar_file : "-", c->bar_arrived ? c->bar_line : 0, nw);
      }
    }
  }
  CH_TSAN(for (unsigned i = 0; i < c->n; i++) __tsan_destroy_fiber(fib[i].tf));
  delete[] fib; delete[] order; c->fib = 0; if (!pooled) { munmap(mem, len); return; }
  if (mem != pool) { if (pool) munmap(pool, pool_len); pool = mem; pool_len = len; pool_ssz = ssz; }
  __atomic_store_n(&pool_busy, 0, __ATOMIC_RELEASE);
}

template <class T> void code(char* s) {   // numpy-style type code of a kernel parameter, e.g. "*f4"
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_pointer_v<U>) { strcat(s, "*"); code<std::remove_pointer_t<U>>(s); }
  else if constexpr (std::is_void_v<U>) strcat(s, "V0");
  else if constexpr (std::is_same_v<U, bool>) strcat(s, "b1");
  else sprintf(s + strlen(s), "%c%zu", std::is_floating_point_v<U> ? 'f' : !std::is_integral_v<U> ? 'V' : std::is_signed_v<U> ? 'i' : 'u', sizeof(U));
}
template <class... A> const char* sig(void (*)(A...)) { static char s[512]; if (!s[0]) ((code<A>(s), strcat(s, ",")), ...); return s; }
template <class... A, size_t... I> void call(void (*k)(A...), void** a, std::index_sequence<I...>) { k(*static_cast<std::remove_cv_t<A>*>(a[I])...); }
template <class... A> void tramp(void* p) { auto* kp = (std::pair<void (*)(A...), void**>*)p; call(kp->first, kp->second, std::index_sequence_for<A...>{}); }
#ifndef CUDA_HOST_MAX_DYN_SMEM
#define CUDA_HOST_MAX_DYN_SMEM 0
#endif
template <class... A> int launch(void (*k)(A...), dim3 g, dim3 b, size_t shmem, void** args) {
  unsigned long nb = (unsigned long)g.x * g.y * g.z; unsigned n = b.x * b.y * b.z;
  if (!nb || !n || n > 1024 || b.z > 64 || g.y > 65535 || g.z > 65535) { snprintf(last_error, sizeof last_error, "invalid launch configuration"); return 1; }
  if (shmem > CUDA_HOST_MAX_DYN_SMEM) { snprintf(last_error, sizeof last_error, "dynamic shared memory %zu > %d", shmem, CUDA_HOST_MAX_DYN_SMEM); return 1; }
  std::pair<void (*)(A...), void**> kp{k, args};
  Ctx* c = new Ctx(); c->gdim = g; c->bdim = b; c->n = n; c->tramp = tramp<A...>; c->arg = &kp;
  Self saved = me; me.c = c; run(c, nb); me = saved;
  int rc = c->err[0] != 0; if (rc) snprintf(last_error, sizeof last_error, "%s", c->err);
  delete c; return rc;
}
template <class T> struct id { using type = T; };
template <class T, class F> T rmw(T* p, F f) {   // CAS loop: works for float/double too
  T old, nw; __atomic_load(p, &old, __ATOMIC_RELAXED);
  do { nw = f(old); } while (!__atomic_compare_exchange(p, &old, &nw, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)); return old; }
}  // namespace cudahost

#define CH_API extern "C" __attribute__((visibility("default")))
#define CUDA_HOST_EXPORT(k) CH_API const char* cudahost_sig_##k() { return ::cudahost::sig(k); }                          \
  CH_API int cudahost_launch_##k(const unsigned* g, const unsigned* b, size_t sh, void** a) {                           \
    return ::cudahost::launch(k, dim3(g[0], g[1], g[2]), dim3(b[0], b[1], b[2]), sh, a); }
#define CUDA_HOST_DYNAMIC_SHARED(T, name) alignas(16) thread_local T name[CUDA_HOST_MAX_DYN_SMEM / sizeof(T)];
CH_API const char* cudahost_last_error() { return ::cudahost::last_error; }

// ---- CUDA built-ins ----
#define threadIdx (::cudahost::me.tid)
#define blockIdx (::cudahost::me.c->bid)
#define blockDim (::cudahost::me.c->bdim)
#define gridDim (::cudahost::me.c->gdim)
#define warpSize 32
#define __syncthreads() ((void)::cudahost::bar(__FILE__, __LINE__, 0))
#define __syncthreads_count(p) ((int)::cudahost::bar(__FILE__, __LINE__, (p)))
#define __syncthreads_and(p) ((int)(::cudahost::bar(__FILE__, __LINE__, !(p)) == 0))
#define __syncthreads_or(p) ((int)(::cudahost::bar(__FILE__, __LINE__, (p)) != 0))
#define CH_SHFL(name, K, A) template <class T> T name(unsigned m, T v, A a, int w = 32) { return cudahost::shfl(m, v, K, a, w); }
CH_SHFL(__shfl_sync, 0, int) CH_SHFL(__shfl_up_sync, 1, unsigned) CH_SHFL(__shfl_down_sync, 2, unsigned) CH_SHFL(__shfl_xor_sync, 3, int)
inline void __syncwarp(unsigned m = 0xffffffffu) { cudahost::warp_round(m, 0, true); }
inline unsigned __ballot_sync(unsigned m, int p) { return cudahost::ballot(m, p); }
inline int __any_sync(unsigned m, int p) { return cudahost::ballot(m, p) != 0; } inline int __all_sync(unsigned m, int p) { return cudahost::ballot(m, p) == m; }
CH_NOSAN inline unsigned __activemask() { return cudahost::me.c->warp[cudahost::me.lin >> 5].live; }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); } inline void __threadfence_block() { __threadfence(); }
#define CH_ATOMIC(name, expr) template <class T> T name(T* p, typename cudahost::id<T>::type v) { return cudahost::rmw(p, [v](T o) { return T(expr); }); }
CH_ATOMIC(atomicAdd, o + v) CH_ATOMIC(atomicSub, o - v) CH_ATOMIC(atomicMax, o < v ? v : o) CH_ATOMIC(atomicMin, v < o ? v : o)
CH_ATOMIC(atomicExch, v) CH_ATOMIC(atomicAnd, o & v) CH_ATOMIC(atomicOr, o | v) CH_ATOMIC(atomicXor, o ^ v)
template <class T> T atomicCAS(T* p, typename cudahost::id<T>::type cmp, typename cudahost::id<T>::type v) {
  __atomic_compare_exchange(p, &cmp, &v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED); return cmp; }
template <class A, class B> std::common_type_t<A, B> min(A a, B b) { return b < a ? b : a; }
template <class A, class B> std::common_type_t<A, B> max(A a, B b) { return a < b ? b : a; }
template <class T> T __ldg(const T* p) { return *p; }
// Fast-math intrinsics become correctly rounded libm calls; the GPU's approximations differ by a few ulp.
#define CH_F1(name, expr) inline float name(float x) { return expr; }
#define CH_F2(name, expr) inline float name(float x, float y) { return expr; }
CH_F1(__expf, expf(x)) CH_F1(__exp10f, powf(10.0f, x)) CH_F1(__logf, logf(x)) CH_F1(__log2f, log2f(x)) CH_F1(__log10f, log10f(x))
CH_F1(__sinf, sinf(x)) CH_F1(__cosf, cosf(x)) CH_F1(__tanf, tanf(x)) CH_F1(__frcp_rn, 1.0f / x) CH_F1(__fsqrt_rn, sqrtf(x))
CH_F1(rsqrtf, 1.0f / sqrtf(x)) CH_F1(__saturatef, x >= 1.0f ? 1.0f : (x > 0.0f ? x : 0.0f))
CH_F2(__powf, powf(x, y)) CH_F2(__fdividef, x / y) CH_F2(fdividef, x / y) CH_F2(__fadd_rn, x + y) CH_F2(__fmul_rn, x * y)
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); } inline double rsqrt(double x) { return 1.0 / sqrt(x); }
#define CH_CAST(name, From, To) inline To name(From x) { To r; memcpy(&r, &x, sizeof r); return r; }
CH_CAST(__float_as_int, float, int) CH_CAST(__float_as_uint, float, unsigned) CH_CAST(__int_as_float, int, float)
CH_CAST(__uint_as_float, unsigned, float) CH_CAST(__double_as_longlong, double, long long) CH_CAST(__longlong_as_double, long long, double)
inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); } inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x ? __builtin_clz(x) : 32; } inline int __ffs(int x) { return __builtin_ffs(x); }

// sin(pi x) / cos(pi x) with an exact argument reduction (CUDA's sincospi*, sinpi*, cospi*): x - n/2 is exact.
inline void sincospi(double x, double* s, double* c) {
  if (!std::isfinite(x)) { *s = *c = x - x; return; }
  double n = nearbyint(2.0 * x), r = M_PI * (x - 0.5 * n), sr = sin(r), cr = cos(r);
  long q = (long)fmod(n, 4.0); q = q < 0 ? q + 4 : q;   // quadrant: pi x = pi r' + q pi/2
  *s = q == 0 ? sr : q == 1 ? cr : q == 2 ? -sr : -cr;
  *c = q == 0 ? cr : q == 1 ? -sr : q == 2 ? -cr : sr;
}
inline void sincospif(float x, float* s, float* c) { double sd, cd; sincospi(x, &sd, &cd); *s = (float)sd; *c = (float)cd; }
inline double sinpi(double x) { double s, c; sincospi(x, &s, &c); return s; }
inline double cospi(double x) { double s, c; sincospi(x, &s, &c); return c; }
inline float sinpif(float x) { float s, c; sincospif(x, &s, &c); return s; }
inline float cospif(float x) { float s, c; sincospif(x, &s, &c); return c; }
inline void __sincosf(float x, float* s, float* c) { sincosf(x, s, c); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) { return (unsigned long long)(((unsigned __int128)a * b) >> 64); }
inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
inline float __int2float_rn(int x) { return (float)x; } inline float __uint2float_rn(unsigned x) { return (float)x; }
inline double __dsqrt_rn(double x) { return sqrt(x); } inline double __ddiv_rn(double x, double y) { return x / y; }
