// fastvae's XLA FFI shim (CPU): one handler, "fastvae_call", that runs one of fastvae's Numba
// kernels on XLA's buffers without a Python callback. Built by fastvae/_xla.py with the
// compiler found at first use (no -ffast-math: the reductions below keep NumPy's order).
//
// A kernel is a tile loop, a Numba @cfunc of fastvae/_xla.py registered with fv_set_kernel:
//     int64 tile_loop(void** bufs, const int64* dims, int64* counter)
// bufs: the inputs, then the outputs (at most 16 together), then from index 16 on the scratch
// buffers below (16: elbo, 17: partial, 18: inv_var, 19: bad; null when unused); dims[4 i + j] is
// dimension j of buffer i (0-padded). The loop claims tiles with an atomic fetch-add on
// counter[0] until it passes its own tile count, exactly like a phase of fastvae's pool
// (fastvae/_threads.py): the handler runs it on `threads` threads (XLA's intra-op pool's and
// the calling one) and waits for those that entered it. It returns 0, or nonzero when the kernel
// raised (a Numba try/except): the handler then asks the explainer (a Python ctypes callback,
// fv_set_explain) to rerun the op through fastvae.ops on views of the same buffers, and returns
// its message as an XLA FFI error.
//
// finish (bit flags: what the handler adds around the tile loop; 0 for elementwise ops):
//   1  fused loss: scratch elbo (N,) float64; output 0 = -(0 + pairwise_sum(elbo)) / N, as
//      fastvae/cpu/elbo.py's -float(elbo.sum()) / n
//   2  Gaussian ddec_logvar: scratch partial (B = n_tiles, D) float64 zeroed; output 4 =
//      -0.5 * partial.sum(axis=0) (rows added in order)
//   4  scratch inv_var (D,) = exp(-dec_logvar) (input 5 of the loss, 5 of the forward), by
//      NumPy's own float64 exp loop (fv_set_exp_loop), else std::exp
//   16 with 1 or 8: the sum over rows instead of the mean (fastvae/jax.py's reduction "sum")
//   32 scratch bad (N,) bool (slot 19), zeroed: the Bernoulli x check's per-row flags; any set
//      row fails the call (the explainer gives fastvae.ops's message)
//   8  mean: output 1 = -np.mean(output 0, dtype=float64) rounded to the dtype (float32 rows
//      summed in NumPy's 8192-element casting chunks)
//   64 the IWAE layout (fastvae/cpu/iwae.py::log_weight_forward's setup): inputs (x, dec_out,
//      mu, logvar, eps[, dec_logvar]), after one cotangent input when 128 is set too; scratch
//      sigma (N, L) float64 = exp(0.5 * logvar) by NumPy's exp (slot 16); with 4: inv_var (D,)
//      = exp(-dec_logvar) rounded to the dtype (slot 18) and sum(dec_logvar) in float64 by
//      NumPy's pairwise sum (slot 19, (1,)); with 2: the partial (n_tiles, D) float64, zeroed
//      (slot 17), reduced into the last output as for the ELBO
// N, D: the first two dimensions of x (input 1 for the ELBO ops, beta coming first; input 0 or
// 1 for the IWAE ones). With 2, ddec_logvar is the last output.
#include <sched.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

typedef int64_t (*TileLoop)(void** bufs, const int64_t* dims, int64_t* counter);
typedef void (*UfuncLoop)(char** args, const intptr_t* dims, const intptr_t* steps, void* data);
typedef int64_t (*Explain)(int64_t kernel, void** bufs, const int64_t* dims, int64_t n_bufs,
                           char* message, int64_t size);

static constexpr int kMaxKernels = 256;
static constexpr int kMaxBuffers = 20;
static std::atomic<TileLoop> g_kernels[kMaxKernels];
static std::atomic<UfuncLoop> g_exp_loop{nullptr};
static void* g_exp_data = nullptr;
static std::atomic<Explain> g_explain{nullptr};

extern "C" {
int64_t fv_set_kernel(int64_t kernel, void* fn) {
  if (kernel < 0 || kernel >= kMaxKernels) return 1;
  g_kernels[kernel].store(reinterpret_cast<TileLoop>(fn));
  return 0;
}
void fv_set_exp_loop(void* loop, void* data) {
  g_exp_data = data;
  g_exp_loop.store(reinterpret_cast<UfuncLoop>(loop));
}
void fv_set_explain(void* fn) { g_explain.store(reinterpret_cast<Explain>(fn)); }
int64_t fv_abi_version() { return 2; }

// NumPy's pairwise summation of a contiguous float64 array (numpy/_core/src/umath/
// loops_utils.h.src, PW_BLOCKSIZE 128), as np.add.reduce runs it: 0.0 + pairwise(a).
static double pairwise(const double* a, int64_t n) {
  if (n < 8) {
    double res = 0.;
    for (int64_t i = 0; i < n; i++) res += a[i];
    return res;
  } else if (n <= 128) {
    double r[8];
    for (int j = 0; j < 8; j++) r[j] = a[j];
    int64_t i;
    for (i = 8; i < n - (n % 8); i += 8)
      for (int j = 0; j < 8; j++) r[j] += a[i + j];
    double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; i++) res += a[i];
    return res;
  }
  int64_t n2 = n / 2;
  n2 -= n2 % 8;
  return pairwise(a, n2) + pairwise(a + n2, n - n2);
}
double fv_numpy_sum(const double* a, int64_t n) { return 0.0 + pairwise(a, n); }
}

namespace {

// Floating-point environment: the caller's (XLA's CPU threads flush denormals, FTZ/DAZ, as they
// do for the pure_callback route's host calls): so the two routes agree bit for bit; fastvae.ops
// called on a NumPy thread keeps denormals, and differs from both where a value is denormal.
struct Phase {
  TileLoop fn;
  std::vector<void*> bufs;
  std::vector<int64_t> dims;
  alignas(64) int64_t counter[2] = {0, 0};
  alignas(64) std::atomic<int64_t> inside{0};
  std::atomic<int64_t> status{0};

  // A helper that arrives after the handler returned must not touch XLA's buffers: it counts
  // itself in first and runs the loop only while tiles are left. The handler returns after its
  // own loop found none left and `inside` read 0, so a later arrival sees no tile left.
  void join(int64_t n_tiles) {
    inside.fetch_add(1);
    if (__atomic_load_n(&counter[0], __ATOMIC_SEQ_CST) < n_tiles) {
      int64_t r = fn(bufs.data(), dims.data(), counter);
      if (r != 0) status.store(r);
    }
    inside.fetch_sub(1);
  }
};

template <typename T>
void store_scalar(void* out, double v) {
  *static_cast<T*>(out) = static_cast<T>(v);
}

ffi::Error Call(ffi::ThreadPool pool, ffi::RemainingArgs args, ffi::RemainingRets rets,
                int64_t kernel, int64_t finish, int64_t threads, int64_t n_tiles) {
  if (kernel < 0 || kernel >= kMaxKernels) return ffi::Error::InvalidArgument("bad kernel id");
  TileLoop fn = g_kernels[kernel].load();
  if (fn == nullptr)
    return ffi::Error::Internal("fastvae_call: kernel " + std::to_string(kernel) +
                                " is not registered in this process");
  auto phase = std::make_shared<Phase>();
  phase->fn = fn;
  std::vector<ffi::DataType> types;
  auto add = [&](void* data, ffi::Span<const int64_t> d, ffi::DataType t) {
    phase->bufs.push_back(data);
    for (int j = 0; j < 4; j++) phase->dims.push_back(j < (int)d.size() ? d[j] : 0);
    types.push_back(t);
  };
  for (size_t i = 0; i < args.size(); i++) {
    auto b = args.get<ffi::AnyBuffer>(i);
    if (!b.has_value()) return b.error();
    add(b->untyped_data(), b->dimensions(), b->element_type());
  }
  for (size_t i = 0; i < rets.size(); i++) {
    auto b = rets.get<ffi::AnyBuffer>(i);
    if (!b.has_value()) return b.error();
    add((*b)->untyped_data(), (*b)->dimensions(), (*b)->element_type());
  }
  size_t n_in = args.size();
  if (phase->bufs.size() > 16) return ffi::Error::InvalidArgument("too many buffers");
  int64_t zero[1] = {0};
  auto slot = [&](size_t i) {   // pad to scratch slot i
    while (phase->bufs.size() < i)
      add(nullptr, ffi::Span<const int64_t>(zero, 0), ffi::DataType::F64);
  };
  // scratch
  std::vector<double> elbo, partial, inv_var, sigma, consts;
  std::vector<float> inv_var32;
  const bool iwae = (finish & 64) != 0;
  const size_t xi = iwae ? ((finish & 128) ? 1 : 0) : 1;   // x
  if (n_in <= xi) return ffi::Error::InvalidArgument("fastvae_call: x missing");
  int64_t N = phase->dims[4 * xi], D = phase->dims[4 * xi + 1];
  UfuncLoop exp_loop = g_exp_loop.load();
  auto numpy_exp = [&](double* a, int64_t n) {   // in place
    if (exp_loop != nullptr) {
      char* uargs[2] = {reinterpret_cast<char*>(a), reinterpret_cast<char*>(a)};
      intptr_t udims[1] = {(intptr_t)n};
      intptr_t steps[2] = {8, 8};
      exp_loop(uargs, udims, steps, g_exp_data);
    } else {
      for (int64_t i = 0; i < n; i++) a[i] = std::exp(a[i]);
    }
  };
  auto as_double = [&](size_t i, int64_t k) {
    const void* p = phase->bufs[i];
    return types[i] == ffi::DataType::F32 ? (double)static_cast<const float*>(p)[k]
                                          : static_cast<const double*>(p)[k];
  };
  if (iwae) {
    const size_t lvi = xi + 3, dlvi = xi + 5;
    if (n_in <= xi + 4) return ffi::Error::InvalidArgument("fastvae_call: IWAE inputs missing");
    int64_t L = phase->dims[4 * lvi + 1];
    sigma.resize(N * L);
    for (int64_t i = 0; i < N * L; i++) sigma[i] = 0.5 * as_double(lvi, i);
    numpy_exp(sigma.data(), N * L);
    slot(16);
    int64_t d2[2] = {N, L};
    add(sigma.data(), ffi::Span<const int64_t>(d2, 2), ffi::DataType::F64);
    if (finish & 2) {
      slot(17);
      partial.assign(n_tiles * D, 0.0);
      int64_t p2[2] = {n_tiles, D};
      add(partial.data(), ffi::Span<const int64_t>(p2, 2), ffi::DataType::F64);
    }
    if (finish & 4) {
      if (n_in <= dlvi) return ffi::Error::InvalidArgument("fastvae_call: dec_logvar missing");
      consts.assign(1, 0.0);
      inv_var.resize(D);
      for (int64_t d = 0; d < D; d++) inv_var[d] = as_double(dlvi, d);
      consts[0] = fv_numpy_sum(inv_var.data(), D);      // float(np.sum(lv))
      for (int64_t d = 0; d < D; d++) inv_var[d] = -inv_var[d];
      numpy_exp(inv_var.data(), D);
      slot(18);
      int64_t d1[1] = {D};
      if (types[dlvi] == ffi::DataType::F32) {           // .astype(x.dtype)
        inv_var32.resize(D);
        for (int64_t d = 0; d < D; d++) inv_var32[d] = (float)inv_var[d];
        add(inv_var32.data(), ffi::Span<const int64_t>(d1, 1), ffi::DataType::F32);
      } else {
        add(inv_var.data(), ffi::Span<const int64_t>(d1, 1), ffi::DataType::F64);
      }
      int64_t c1[1] = {1};
      add(consts.data(), ffi::Span<const int64_t>(c1, 1), ffi::DataType::F64);
    }
  }
  if (finish & 1) {
    slot(16);
    elbo.assign(N, 0.0);
    int64_t d1[1] = {N};
    add(elbo.data(), ffi::Span<const int64_t>(d1, 1), ffi::DataType::F64);
  }
  if (!iwae && (finish & 6)) {
    size_t lv = 5;   // dec_logvar: (beta, x, dec, mu, logvar, dec_logvar)
    if (n_in <= lv) return ffi::Error::InvalidArgument("fastvae_call: dec_logvar missing");
    if (finish & 2) {
      slot(17);
      int64_t B = n_tiles;
      partial.assign(B * D, 0.0);
      int64_t d2[2] = {B, D};
      add(partial.data(), ffi::Span<const int64_t>(d2, 2), ffi::DataType::F64);
    }
    inv_var.resize(D);
    const void* lv_data = phase->bufs[lv];
    for (int64_t d = 0; d < D; d++)
      inv_var[d] = -(types[lv] == ffi::DataType::F32 ? (double)static_cast<const float*>(lv_data)[d]
                                                     : static_cast<const double*>(lv_data)[d]);
    numpy_exp(inv_var.data(), D);
    slot(18);
    int64_t d1[1] = {D};
    add(inv_var.data(), ffi::Span<const int64_t>(d1, 1), ffi::DataType::F64);
  }
  std::vector<uint8_t> bad;
  if (finish & 32) {
    slot(19);
    bad.assign(N, 0);
    int64_t d1[1] = {N};
    add(bad.data(), ffi::Span<const int64_t>(d1, 1), ffi::DataType::PRED);
  }
  if (phase->bufs.size() > kMaxBuffers) return ffi::Error::InvalidArgument("too many buffers");
  slot(kMaxBuffers);   // every slot exists (null when unused)
  const int64_t* dims = phase->dims.data();

  // the tile loop on `threads` threads
  int64_t helpers = std::min<int64_t>(threads, n_tiles) - 1;
  for (int64_t h = 0; h < helpers; h++) {
    pool.Schedule([phase, n_tiles] { phase->join(n_tiles); });
  }
  phase->join(n_tiles);
  while (phase->inside.load() != 0) sched_yield();

  int64_t status = phase->status.load();
  if (status == 0 && (finish & 32))
    for (int64_t n = 0; n < N; n++)
      if (bad[n]) { status = 3; break; }
  if (status != 0) {
    std::string message = "fastvae kernel " + std::to_string(kernel) + " failed (status " +
                          std::to_string(status) + ")";
    Explain explain = g_explain.load();
    if (explain != nullptr) {
      char buf[2048];
      buf[0] = 0;
      if (explain(kernel, phase->bufs.data(), dims, (int64_t)phase->bufs.size(), buf,
                  sizeof buf) == 0 && buf[0])
        message = buf;
    }
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, message);
  }

  if (finish & 1) {
    // the loss is output 0
    double loss = -fv_numpy_sum(elbo.data(), N) / (double)N;
    if (finish & 16) loss = loss * (double)N;   // fastvae/jax.py: loss * n
    void* out = phase->bufs[n_in];
    if (types[n_in] == ffi::DataType::F32) store_scalar<float>(out, loss);
    else store_scalar<double>(out, loss);
  }
  if (finish & 8) {
    const void* rows = phase->bufs[n_in];
    double sum = 0.0;
    if (types[n_in] == ffi::DataType::F32) {
      std::vector<double> chunk;
      for (int64_t i = 0; i < N; i += 8192) {
        int64_t m = std::min<int64_t>(8192, N - i);
        chunk.resize(m);
        for (int64_t k = 0; k < m; k++) chunk[k] = static_cast<const float*>(rows)[i + k];
        sum += pairwise(chunk.data(), m);
      }
    } else {
      sum = 0.0 + pairwise(static_cast<const double*>(rows), N);
    }
    double loss = (finish & 16) ? -sum : -sum / (double)N;
    if (types[n_in] == ffi::DataType::F32) store_scalar<float>(phase->bufs[n_in + 1], loss);
    else store_scalar<double>(phase->bufs[n_in + 1], loss);
  }
  if (finish & 2) {
    // (-0.5 * partial.sum(axis=0)).astype(dtype): rows added in order, from 0.0
    size_t out_lv = n_in + rets.size() - 1;   // the last output
    void* out = phase->bufs[out_lv];
    int64_t B = n_tiles;
    for (int64_t d = 0; d < D; d++) {
      double s = 0.0;
      for (int64_t b = 0; b < B; b++) s += partial[b * D + d];
      double v = -0.5 * s;
      if (types[out_lv] == ffi::DataType::F32) static_cast<float*>(out)[d] = (float)v;
      else static_cast<double*>(out)[d] = v;
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FastvaeCall, Call,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int64_t>("kernel")
                                  .Attr<int64_t>("finish")
                                  .Attr<int64_t>("threads")
                                  .Attr<int64_t>("n_tiles"));
