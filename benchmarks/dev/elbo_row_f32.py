import numpy as np
from fastvae.bench.timing import median_seconds   # one untimed call, then the median
from fastvae.cpu._numba import jit
from fastvae.cpu._math import exp_f32, log1p_unit_f32
from fastvae.cpu import elbo as E
from fastvae import _reference as R
F = np.float32

@jit
def bern_row_f32(dlogit_row, dll_n, x_row, logit_row):
    acc = 0.0
    g = F(dll_n)
    for d in range(x_row.shape[0]):
        x = x_row[d]; l = logit_row[d]
        e = exp_f32(-abs(l))
        acc += np.float64(x * l - ((l if l > F(0) else F(0)) + log1p_unit_f32(e)))
        dlogit_row[d] = g * (x - (F(1) if l >= F(0) else e) / (F(1) + e))
    return acc

@jit
def kern(ll, dlogits, x, logits, g):
    for n in range(x.shape[0]):
        ll[n] = bern_row_f32(dlogits[n], g, x[n], logits[n])

from fastvae.cpu.loglik import bernoulli_loglik_and_backward_row
@jit
def kern64(ll, dlogits, x, logits, g):
    for n in range(x.shape[0]):
        ll[n] = bernoulli_loglik_and_backward_row(dlogits[n], g, x[n], logits[n])

rng = np.random.default_rng(0)
N, D = 128, 784
x = (rng.random((N, D)) < .3).astype(F); lg = (rng.standard_normal((N, D)) * 4).astype(F)
ll = np.empty(N); dl = np.empty_like(lg); ll2 = np.empty(N); dl2 = np.empty_like(lg)
g = -1.0 / N
for f, a, b in ((kern, ll, dl), (kern64, ll2, dl2)):
    s = median_seconds(lambda: f(a, b, x, lg, g), 300)
    print(f.__name__ if hasattr(f, '__name__') else f,
          f"{s * 1e6:.0f} us  {s / (N * D) * 1e9:.2f} ns/elt")
ref = R.bernoulli_loglik_forward(x.astype(float), lg.astype(float))[0]
print("max |ll32-ref| ", np.abs(ll - ref).max(), " f64 path", np.abs(ll2 - ref).max())
print("max |dl32-dl64| rel", np.abs(dl - dl2).max() / np.abs(dl2).max())

@jit
def bern_row_f32b(dlogit_row, dll_n, x_row, logit_row):
    acc = F(0)
    g = F(dll_n)
    for d in range(x_row.shape[0]):
        x = x_row[d]; l = logit_row[d]
        e = exp_f32(-abs(l))
        acc += x * l - ((l if l > F(0) else F(0)) + log1p_unit_f32(e))
        dlogit_row[d] = g * (x - (F(1) if l >= F(0) else e) / (F(1) + e))
    return np.float64(acc)

@jit
def kernb(ll, dlogits, x, logits, g):
    for n in range(x.shape[0]):
        ll[n] = bern_row_f32b(dlogits[n], g, x[n], logits[n])
s = median_seconds(lambda: kernb(ll, dl, x, lg, g), 300)
print("f32 acc", f"{s * 1e6:.0f} us", np.abs(ll - ref).max())
for fn in (kern, kernb):
    asm = list(fn.inspect_asm().values())[0]
    print(fn.py_func.__name__, "vdivps ymm:", asm.count("vdivps\t%ymm"),
          "vdivps xmm:", asm.count("vdivps\t%xmm"), "vdivss:", asm.count("vdivss"))
y = np.empty_like(lg)
print("np.exp f32 100k", f"{median_seconds(lambda: np.exp(lg, out=y), 300) * 1e6:.0f} us")
