"""Reference implementations: the specification every fast kernel is tested against.

Plain NumPy, written to be obviously right rather than fast. Every function computes in the
floating dtype of its inputs, so the tests can evaluate it twice: in float64 (``ref64``, the
truth) and in float32 (``ref32``, how much float32 rounding alone moves the result).

Conventions, shared with ``fastvae.ops`` and every backend:

- ``<op>_forward(...) -> (out, cache)``; ``<op>_backward(dout, cache) -> (d<input>, ...)``, the
  gradients in the order of the forward's differentiable inputs. Backwards return new arrays.
- Rows are examples: N rows, D data dimensions, L latent dimensions, K importance samples.
- ``log`` is the natural logarithm; every log-likelihood is in nats.
"""
import numpy as np

LOG_2PI = float(np.log(2.0 * np.pi))
LIKELIHOODS = ("bernoulli", "gaussian")
ACTIVATIONS = ("identity", "relu", "tanh", "softplus", "sigmoid")
# Global indices of the random stream are int64 in every backend's kernels: offset + size stays
# below this.
INDEX_LIMIT = 1 << 62


def activation_code(activation):
    """The int the dense kernels take for ``activation``: its index in ACTIVATIONS
    (fastvae/cpu/dense.py and kernels/dense.cu number them the same way)."""
    try:
        return ACTIVATIONS.index(activation)
    except ValueError:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}") \
            from None


def _softplus(a):
    """softplus(a) = log(1 + exp(a)), without overflow."""
    return np.logaddexp(np.zeros((), a.dtype), a)


def _sigmoid(a):
    """sigmoid(a) = 1 / (1 + exp(-a)), as ``e / (1 + e)`` with ``e = exp(-|a|)`` for a < 0:
    no overflow, and correctly rounded to a few ulp for large |a|."""
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1, e) / (1 + e)


# ---------------------------------------------------------------------------------------------
# dense: y = act(x @ W + b)
# ---------------------------------------------------------------------------------------------
def _activate(a, activation):
    if activation == "identity":
        return a.copy()
    if activation == "relu":
        return np.maximum(a, 0)
    if activation == "tanh":
        return np.tanh(a)
    if activation == "softplus":
        return _softplus(a)
    if activation == "sigmoid":
        return _sigmoid(a)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def _activation_grad(a, activation):
    """act'(a): 1; [a > 0]; 1 - tanh(a)^2; sigmoid(a); sigmoid(a) (1 - sigmoid(a))."""
    if activation == "identity":
        return np.ones_like(a)
    if activation == "relu":
        return (a > 0).astype(a.dtype)
    if activation == "tanh":
        return 1 - np.tanh(a) ** 2
    if activation == "softplus":
        return _sigmoid(a)
    if activation == "sigmoid":
        s = _sigmoid(a)
        return s * (1 - s)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def dense_forward(x, W, b, activation="identity"):
    """Fused dense layer ``y = act(x @ W + b)``.

    x (N, I), W (I, O), b (O,) -> y (N, O). ``cache = (x, W, a, activation)`` with the
    pre-activation ``a = x @ W + b``.
    """
    a = x @ W + b
    return _activate(a, activation), (x, W, a, activation)


def dense_backward(dy, cache):
    """Backward of ``dense_forward``: with ``da = dy * act'(a)``,
    ``dx = da @ W.T`` (N, I), ``dW = x.T @ da`` (I, O), ``db = sum_n da`` (O,)."""
    x, W, a, activation = cache
    da = dy * _activation_grad(a, activation)
    return da @ W.T, x.T @ da, da.sum(axis=0)


# ---------------------------------------------------------------------------------------------
# random: Philox4x32-10 (Salmon, Moraes, Dror, Shaw, SC 2011) and the normals derived from it
# ---------------------------------------------------------------------------------------------
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57   # round multipliers
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85   # key schedule (golden ratio, sqrt(3) - 1)
_MASK32 = 0xFFFFFFFF


def philox4x32_10(counters, key):
    """Philox4x32 with 10 rounds, as in Random123 and cuRAND.

    counters (..., 4) uint32, key (2,) uint32 -> (..., 4) uint32. One round, with 64-bit
    products ``hi0:lo0 = M0 * c0`` and ``hi1:lo1 = M1 * c2``:
    ``(c0, c1, c2, c3) <- (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)``; between rounds the key
    is bumped: ``k0 += W0, k1 += W1`` (mod 2^32).
    """
    c = np.asarray(counters, dtype=np.uint32).astype(np.uint64)
    k0, k1 = (int(k) for k in np.asarray(key, dtype=np.uint32))
    c0, c1, c2, c3 = c[..., 0], c[..., 1], c[..., 2], c[..., 3]
    for round_index in range(10):
        if round_index:
            k0, k1 = (k0 + PHILOX_W0) & _MASK32, (k1 + PHILOX_W1) & _MASK32
        p0 = np.uint64(PHILOX_M0) * c0
        p1 = np.uint64(PHILOX_M1) * c2
        hi0, lo0 = p0 >> np.uint64(32), p0 & np.uint64(_MASK32)
        hi1, lo1 = p1 >> np.uint64(32), p1 & np.uint64(_MASK32)
        c0, c1, c2, c3 = hi1 ^ c1 ^ np.uint64(k0), lo1, hi0 ^ c3 ^ np.uint64(k1), lo0
    return np.stack([c0, c1, c2, c3], axis=-1).astype(np.uint32)


def seed_to_key(seed):
    """A seed in [0, 2^64) -> Philox key (lo, hi) as uint32 (2,)."""
    seed = int(seed)
    return np.array([seed & _MASK32, (seed >> 32) & _MASK32], dtype=np.uint32)


def philox_blocks(n_blocks, seed, first_block=0):
    """Philox output for counters (b & 0xffffffff, b >> 32, 0, 0), b = first_block .. + n_blocks.

    -> (n_blocks, 4) uint32.
    """
    b = np.arange(first_block, first_block + n_blocks, dtype=np.uint64)
    counters = np.stack([b & np.uint64(_MASK32), b >> np.uint64(32),
                         np.zeros_like(b), np.zeros_like(b)], axis=-1)
    return philox4x32_10(counters.astype(np.uint32), seed_to_key(seed))


def uniform_from_bits(bits, dtype=np.float32):
    """uint32 -> uniform in the open interval (0, 1): ``u = ((bits >> 9) + 0.5) * 2^-23``.

    The 23 high bits; every value ``(2k + 1) 2^-24`` has at most 24 significant bits, so it is
    exact in float32 and both backends agree bit for bit; ``2^-24 <= u <= 1 - 2^-24``.
    """
    top23 = (np.asarray(bits, dtype=np.uint32) >> np.uint32(9)).astype(np.float64)
    return ((top23 + 0.5) * 2.0 ** -23).astype(dtype)


def normal(shape, seed, offset=0, dtype=np.float64):
    """Standard normals from Philox4x32-10 by the Box-Muller transform.

    Element ``g = offset + j`` (j the C-order flat index) lives in Philox block ``g // 4``,
    lane ``g % 4``. With ``u0..u3 = uniform_from_bits(philox(block))``, ``r = sqrt(-2 log u0)``,
    ``t = 2 pi u1`` and ``r' = sqrt(-2 log u2)``, ``t' = 2 pi u3``, the four normals of the
    block are ``(r cos t, r sin t, r' cos t', r' sin t')``. Computed in ``dtype``.
    """
    shape = (shape,) if np.isscalar(shape) else tuple(shape)
    n = int(np.prod(shape, dtype=np.int64))
    first_block, last_block = offset // 4, (offset + n + 3) // 4
    u = uniform_from_bits(philox_blocks(last_block - first_block, seed, first_block))
    u = u.astype(dtype)
    r01 = np.sqrt(-2 * np.log(u[:, 0]))
    r23 = np.sqrt(-2 * np.log(u[:, 2]))
    t01 = 2 * np.asarray(np.pi, dtype) * u[:, 1]
    t23 = 2 * np.asarray(np.pi, dtype) * u[:, 3]
    z = np.stack([r01 * np.cos(t01), r01 * np.sin(t01), r23 * np.cos(t23), r23 * np.sin(t23)],
                 axis=-1).reshape(-1)
    start = offset - 4 * first_block
    return z[start:start + n].reshape(shape)


# ---------------------------------------------------------------------------------------------
# reparam: z = mu + exp(logvar / 2) * eps
# ---------------------------------------------------------------------------------------------
def reparam_forward(mu, logvar, eps):
    """Reparameterized sample ``z = mu + exp(logvar / 2) * eps``; all (N, L) -> z (N, L)."""
    sigma = np.exp(logvar / 2)
    return mu + sigma * eps, (eps, sigma)


def reparam_backward(dz, cache):
    """``dmu = dz``; ``dlogvar = dz * eps * exp(logvar / 2) / 2``. -> (dmu, dlogvar)."""
    eps, sigma = cache
    return dz.copy(), dz * eps * sigma / 2


# ---------------------------------------------------------------------------------------------
# kl: KL(N(mu, exp(logvar)) || N(0, I)) per row
# ---------------------------------------------------------------------------------------------
def kl_forward(mu, logvar):
    """``kl_n = 1/2 sum_l (mu^2 + exp(logvar) - 1 - logvar)``, written with
    ``expm1(logvar) - logvar`` so that small |logvar| keeps its precision. (N, L) -> (N,)."""
    return 0.5 * np.sum(mu * mu + np.expm1(logvar) - logvar, axis=1), (mu, logvar)


def kl_backward(dkl, cache):
    """``dmu = dkl * mu``; ``dlogvar = dkl * expm1(logvar) / 2``. dkl (N,) -> (N, L) each."""
    mu, logvar = cache
    return dkl[:, None] * mu, dkl[:, None] * np.expm1(logvar) / 2


# ---------------------------------------------------------------------------------------------
# loglik: Bernoulli from logits, diagonal Gaussian with a per-dimension log-variance
# ---------------------------------------------------------------------------------------------
def bernoulli_loglik_forward(x, logits):
    """``ll_n = sum_d x_nd l_nd - softplus(l_nd)`` (the stable form of
    ``x log sigmoid(l) + (1 - x) log(1 - sigmoid(l))``). x, logits (N, D) -> (N,)."""
    return np.sum(x * logits - _softplus(logits), axis=1), (x, logits)


def bernoulli_loglik_backward(dll, cache):
    """``dlogits = dll * (x - sigmoid(l))`` (N, D)."""
    x, logits = cache
    return dll[:, None] * (x - _sigmoid(logits))


def gaussian_loglik_forward(x, mean, logvar):
    """``ll_n = -1/2 sum_d (log 2 pi + lv_d + (x_nd - m_nd)^2 exp(-lv_d))``.

    x, mean (N, D); logvar (D,), one log-variance per data dimension -> (N,).
    """
    r2 = (x - mean) ** 2 * np.exp(-logvar)
    return -0.5 * np.sum(LOG_2PI + logvar + r2, axis=1), (x, mean, logvar)


def gaussian_loglik_backward(dll, cache):
    """``dmean = dll (x - m) exp(-lv)`` (N, D); ``dlogvar_d = -1/2 sum_n dll_n (1 - (x - m)^2
    exp(-lv_d))`` (D,). -> (dmean, dlogvar)."""
    x, mean, logvar = cache
    inv_var = np.exp(-logvar)
    dmean = dll[:, None] * (x - mean) * inv_var
    dlogvar = -0.5 * np.sum(dll[:, None] * (1 - (x - mean) ** 2 * inv_var), axis=0)
    return dmean, dlogvar


def loglik_forward(x, dec_out, likelihood, dec_logvar=None):
    """Dispatch on ``likelihood`` in {"bernoulli", "gaussian"}."""
    if likelihood == "bernoulli":
        return bernoulli_loglik_forward(x, dec_out)
    if likelihood == "gaussian":
        return gaussian_loglik_forward(x, dec_out, dec_logvar)
    raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")


def loglik_backward(dll, cache, likelihood):
    """-> (ddec_out,) for Bernoulli, (ddec_out, ddec_logvar) for Gaussian."""
    if likelihood == "bernoulli":
        return (bernoulli_loglik_backward(dll, cache),)
    return gaussian_loglik_backward(dll, cache)


# ---------------------------------------------------------------------------------------------
# elbo: per-row ELBO = log p(x | z) - beta KL(q(z | x) || p(z))
# ---------------------------------------------------------------------------------------------
def elbo_forward(x, dec_out, mu, logvar, likelihood="bernoulli", dec_logvar=None, beta=1.0):
    """``elbo_n = loglik(x_n | dec_out_n) - beta * kl(mu_n, logvar_n)``.

    x, dec_out (N, D) (logits for Bernoulli, means for Gaussian); mu, logvar (N, L);
    dec_logvar (D,) for Gaussian -> (N,).
    """
    ll, ll_cache = loglik_forward(x, dec_out, likelihood, dec_logvar)
    kl, kl_cache = kl_forward(mu, logvar)
    return ll - beta * kl, (ll_cache, kl_cache, likelihood, beta)


def elbo_backward(delbo, cache):
    """-> (ddec_out, dmu, dlogvar) for Bernoulli; (ddec_out, dmu, dlogvar, ddec_logvar) for
    Gaussian. ``dmu, dlogvar = kl_backward(-beta * delbo)``."""
    ll_cache, kl_cache, likelihood, beta = cache
    dll = loglik_backward(delbo, ll_cache, likelihood)
    dmu, dlogvar = kl_backward(-beta * delbo, kl_cache)
    return (dll[0], dmu, dlogvar) + tuple(dll[1:])


def elbo_loss_and_grads(x, dec_out, mu, logvar, likelihood="bernoulli", dec_logvar=None,
                        beta=1.0):
    """``loss = -mean_n elbo_n`` and its gradients, as returned by ``elbo_backward``."""
    elbo, cache = elbo_forward(x, dec_out, mu, logvar, likelihood, dec_logvar, beta)
    n = x.shape[0]
    return -np.mean(elbo), elbo_backward(np.full(n, -1.0 / n, dtype=elbo.dtype), cache)


# ---------------------------------------------------------------------------------------------
# logsumexp over the last axis, and its streaming (chunked) form
# ---------------------------------------------------------------------------------------------
def logsumexp_partial(a):
    """Streaming state of a chunk: ``m = max_k a_k`` and ``s = sum_k exp(a_k - m)``.

    a (N, K) -> (m (N,), s (N,)). Special rows: all -inf -> (-inf, 0); holding +inf -> (+inf, 1);
    holding NaN -> (nan, nan). With these, merge and finalize need no further special cases.
    """
    m = np.max(a, axis=1)
    finite_m = np.where(np.isfinite(m), m, 0)
    with np.errstate(invalid="ignore", over="ignore"):
        s = np.sum(np.exp(a - finite_m[:, None]), axis=1)
    s = np.where(m == -np.inf, 0, np.where(m == np.inf, 1, s))
    return m, s.astype(a.dtype)


def logsumexp_merge(m1, s1, m2, s2):
    """Merge two streaming states: ``m = max(m1, m2)``, ``s = s1 e^(m1 - m) + s2 e^(m2 - m)``;
    a side whose m is -inf contributes 0; m = +inf keeps s = 1."""
    m = np.maximum(m1, m2)
    finite_m = np.where(np.isfinite(m), m, 0)
    with np.errstate(invalid="ignore", over="ignore"):
        s = (np.where(m1 == -np.inf, 0, s1 * np.exp(m1 - finite_m))
             + np.where(m2 == -np.inf, 0, s2 * np.exp(m2 - finite_m)))
    return m, np.where(m == np.inf, 1, s).astype(s1.dtype)


def logsumexp_finalize(m, s):
    """``lse = m + log s``: -inf for an all -inf row (m = -inf, s = 0), +inf for m = +inf."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return m + np.log(s)


def logsumexp_forward(a):
    """``lse_n = log sum_k exp(a_nk)``, computed as ``m + log sum_k exp(a_nk - m)`` with
    ``m = max_k a_nk``. a (N, K) -> (N,). All -inf row -> -inf; +inf -> +inf; NaN -> NaN.
    ``cache = (a, lse)``."""
    lse = logsumexp_finalize(*logsumexp_partial(a))
    return lse, (a, lse)


def logsumexp_backward(dlse, cache):
    """``da_nk = dlse_n * softmax(a_n)_k = dlse_n exp(a_nk - lse_n)``; 0 on an all -inf row;
    on a row holding +inf: NaN at the +inf entries, 0 at the finite ones; NaN rows give NaN.
    a, da (N, K); dlse (N,)."""
    a, lse = cache
    finite_lse = np.where(lse == -np.inf, 0, lse)
    with np.errstate(invalid="ignore"):
        weights = np.where((lse == -np.inf)[:, None], 0, np.exp(a - finite_lse[:, None]))
    return dlse[:, None] * weights


# ---------------------------------------------------------------------------------------------
# iwae: the log importance weights and the importance-weighted estimate of log p(x)
# ---------------------------------------------------------------------------------------------
def iwae_forward(logw):
    """``log p(x_n) ~ logsumexp_k(logw_nk) - log K``. logw (N, K) -> (N,)."""
    lse, cache = logsumexp_forward(logw)
    return lse - lse.dtype.type(np.log(logw.shape[1])), cache


def iwae_backward(dest, cache):
    """``dlogw_nk = dest_n * softmax_k(logw_n)`` (the normalized importance weights)."""
    return logsumexp_backward(dest, cache)


def log_weight_forward(x, dec_out, mu, logvar, eps, likelihood="bernoulli", dec_logvar=None):
    """Log importance weight ``log w_nk = log p(x_n | z_nk) + log p(z_nk) - log q(z_nk | x_n)``.

    ``z_nk = mu_n + exp(logvar_n / 2) eps_nk``; ``log p(z) = -1/2 sum_l (z_l^2 + log 2 pi)``;
    ``log q(z | x) = -1/2 sum_l (log 2 pi + logvar_l + eps_l^2)`` (eps, not z - mu, so that tiny
    variances keep their precision).
    x (N, D); dec_out (N, K, D) = decoder(z); mu, logvar (N, L); eps (N, K, L) -> (N, K).
    """
    n, k, d = dec_out.shape
    x_rep = np.broadcast_to(x[:, None, :], dec_out.shape).reshape(n * k, d)
    ll, ll_cache = loglik_forward(x_rep, dec_out.reshape(n * k, d), likelihood, dec_logvar)
    z = mu[:, None, :] + np.exp(logvar / 2)[:, None, :] * eps
    log_pz = -0.5 * np.sum(z * z + LOG_2PI, axis=2)
    log_qz = -0.5 * np.sum(LOG_2PI + logvar[:, None, :] + eps * eps, axis=2)
    logw = ll.reshape(n, k) + log_pz - log_qz
    return logw, (ll_cache, likelihood, z, eps, logvar, dec_out.shape)


def log_weight_backward(dlogw, cache):
    """Gradients with eps held fixed, z = mu + exp(logvar / 2) eps:
    ``ddec_out_nk = dlogw_nk dloglik/ddec_out`` (N, K, D);
    ``dmu_n = -sum_k dlogw_nk z_nk``; ``dlogvar_n = sum_k dlogw_nk (1/2 - z_nk eps_nk
    exp(logvar_n / 2) / 2)`` (N, L); plus ``ddec_logvar`` (D,) for Gaussian.
    The decoder's own dependence on z is not included (that path runs through the decoder).
    """
    ll_cache, likelihood, z, eps, logvar, shape = cache
    n, k, d = shape
    dll = loglik_backward(dlogw.reshape(n * k), ll_cache, likelihood)
    sigma = np.exp(logvar / 2)[:, None, :]
    dmu = -np.sum(dlogw[:, :, None] * z, axis=1)
    dlogvar = np.sum(dlogw[:, :, None] * (0.5 - z * eps * sigma / 2), axis=1)
    return (dll[0].reshape(shape), dmu, dlogvar) + tuple(dll[1:])


# ---------------------------------------------------------------------------------------------
# adam: one bias-corrected Adam step (Kingma & Ba 2015)
# ---------------------------------------------------------------------------------------------
def adam_update(param, grad, m, v, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    """``m <- b1 m + (1 - b1) g``; ``v <- b2 v + (1 - b2) g^2``;
    ``param <- param - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)`` with t = step >= 1.

    Returns new (param, m, v); the fast kernels update the same arrays in place.
    """
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad * grad
    m_hat = m / (1 - beta1 ** step)
    v_hat = v / (1 - beta2 ** step)
    return param - lr * m_hat / (np.sqrt(v_hat) + eps), m, v
