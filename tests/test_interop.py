"""fastvae.ops with PyTorch tensors and JAX arrays (fastvae/_interop.py): zero-copy DLPack views
in and out, the caller's type back, in-place Adam on torch tensors, and the errors.

Every op's results with torch/JAX inputs are compared with the same op on NumPy inputs (the same
kernels, so they must agree exactly). Memory sharing is shown with pointers: a spy on the backend
launcher records the arrays the kernel received and returned.
"""
import subprocess
import sys

import numpy as np
import pytest

import fastvae.cpu.elbo
import fastvae.cpu.kl
from fastvae import ops

RNG = np.random.default_rng(20261207)
N, D, L, K, I, O = 37, 131, 7, 5, 11, 13


# ---------------------------------------------------------------------------------------------
# the two frameworks behind one interface
# ---------------------------------------------------------------------------------------------
class Torch:
    name = "torch"

    def __init__(self):
        self.torch = pytest.importorskip("torch", reason="torch is an optional extra (interop)")

    def wrap(self, a):                   # a torch tensor sharing a's memory
        return self.torch.from_numpy(a)

    def is_own(self, a):
        return isinstance(a, self.torch.Tensor)

    def pointer(self, a):
        return a.data_ptr()


class Jax:
    name = "jax"

    def __init__(self):
        self.jax = pytest.importorskip("jax", reason="jax is an optional extra (interop)")
        self.jnp = self.jax.numpy

    def wrap(self, a):                   # a JAX array (a copy of a: JAX owns its buffers)
        b = self.jnp.asarray(a)
        assert b.dtype == a.dtype, "float64 JAX arrays need the x64 fixture"
        return b

    def is_own(self, a):
        return isinstance(a, self.jax.Array)

    def pointer(self, a):
        return a.unsafe_buffer_pointer()


@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason="torch is an optional extra (interop)")


@pytest.fixture
def jax():
    return pytest.importorskip("jax", reason="jax is an optional extra (interop)")


@pytest.fixture(params=["torch", "jax"])
def framework(request):
    return Torch() if request.param == "torch" else Jax()


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request, framework):
    """The dtype; float64 JAX arrays need jax_enable_x64, on for this test only."""
    if framework.name == "jax" and request.param == np.float64:
        with framework.jax.enable_x64(True):
            yield request.param
    else:
        yield request.param


def _r(*shape, dtype=np.float64, scale=1.0):
    return (scale * RNG.standard_normal(shape)).astype(dtype)


def _unit(*shape, dtype=np.float64):
    return RNG.uniform(0.05, 0.95, shape).astype(dtype)


def _spy(monkeypatch, module, name, returns=None):
    """Wrap the backend launcher ``module.name``; the dict gets the args it received and what it
    returned (``returns(result)`` replaces the result when given)."""
    seen = {}
    launcher = getattr(module, name)

    def spy(*args, **kwargs):
        seen["args"] = args
        seen["out"] = launcher(*args, **kwargs) if returns is None else returns(
            launcher(*args, **kwargs))
        return seen["out"]

    monkeypatch.setattr(module, name, spy)
    return seen


def _aligned_copy(a, alignment, misalign=0):
    """A copy of ``a`` whose buffer starts ``misalign`` bytes past an ``alignment`` boundary."""
    raw = np.empty(a.nbytes + alignment + misalign, dtype=np.uint8)
    start = (-raw.ctypes.data) % alignment + misalign
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


# ---------------------------------------------------------------------------------------------
# every op: the caller's type back, the same numbers as with NumPy
# ---------------------------------------------------------------------------------------------
def _op_calls(dt):
    """name -> function(wrap) running an op (forward and backward) on inputs passed through
    ``wrap``; returns every array result in a flat list."""
    x, W, b = _r(N, I, dtype=dt), _r(I, O, dtype=dt), _r(O, dtype=dt)
    mu, lv, eps = _r(N, L, dtype=dt), _r(N, L, dtype=dt), _r(N, L, dtype=dt)
    xd, logits, dlv = _unit(N, D, dtype=dt), _r(N, D, dtype=dt, scale=3), _r(D, dtype=dt)
    dec3, eps3, logw = _r(N, K, D, dtype=dt, scale=3), _r(N, K, L, dtype=dt), _r(N, K, dtype=dt)
    d_n, d_nl, d_no, d_nk = _r(N, dtype=dt), _r(N, L, dtype=dt), _r(N, O, dtype=dt), _r(N, K,
                                                                                      dtype=dt)

    def pair(forward, backward, dout, *args, **kwargs):
        def run(w):
            out, cache = forward(*map(w, args), **kwargs)
            grads = backward(w(dout), cache)
            return [out, *(grads if isinstance(grads, tuple) else (grads,))]
        return run

    def lse_stream(w):
        m1, s1 = ops.logsumexp_partial(w(logw[:, :2]))
        m2, s2 = ops.logsumexp_partial(w(logw[:, 2:]))
        m, s = ops.logsumexp_merge(m1, s1, m2, s2)
        return [m1, s1, m, s, ops.logsumexp_finalize(m, s)]

    def elbo_fused(likelihood, *extra):
        def run(w):
            loss, grads = ops.elbo_loss_and_grads(
                w(xd), w(logits), w(mu), w(lv), likelihood=likelihood,
                dec_logvar=w(extra[0]) if extra else None, beta=0.37)
            return [np.asarray(loss), *grads]   # the loss stays a Python float
        return run

    return {
        "dense": pair(ops.dense_forward, ops.dense_backward, d_no, x, W, b, activation="tanh"),
        "reparam_eps": pair(ops.reparam_forward, ops.reparam_backward, d_nl, mu, lv, eps),
        "reparam_seed": pair(ops.reparam_forward, ops.reparam_backward, d_nl, mu, lv, seed=7,
                             offset=3),
        "kl": pair(ops.kl_forward, ops.kl_backward, d_n, mu, lv),
        "bernoulli": pair(ops.bernoulli_loglik_forward, ops.bernoulli_loglik_backward, d_n,
                          xd, logits),
        "gaussian": pair(ops.gaussian_loglik_forward, ops.gaussian_loglik_backward, d_n,
                         xd, logits, dlv),
        "elbo_bernoulli": pair(ops.elbo_forward, ops.elbo_backward, d_n, xd, logits, mu, lv,
                               beta=0.37),
        "elbo_gaussian": pair(ops.elbo_forward, ops.elbo_backward, d_n, xd, logits, mu, lv,
                              likelihood="gaussian", dec_logvar=dlv),
        "elbo_fused_bernoulli": elbo_fused("bernoulli"),
        "elbo_fused_gaussian": elbo_fused("gaussian", dlv),
        "logsumexp": pair(ops.logsumexp_forward, ops.logsumexp_backward, d_n, logw),
        "logsumexp_streaming": lse_stream,
        "iwae": pair(ops.iwae_forward, ops.iwae_backward, d_n, logw),
        "log_weight": pair(ops.log_weight_forward, ops.log_weight_backward, d_nk, xd, dec3, mu,
                           lv, eps3, likelihood="gaussian", dec_logvar=dlv),
    }


@pytest.mark.parametrize("op", list(_op_calls(np.float32)))
def test_every_op_returns_the_callers_type_with_numpys_results(op, framework, dtype):
    run = _op_calls(dtype)[op]
    expected = run(lambda a: a)                       # NumPy in, NumPy out
    got = run(framework.wrap)
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        if op.startswith("elbo_fused") and i == 0:    # the loss: a float for every caller
            assert g.dtype == np.float64
        else:
            assert framework.is_own(g), f"{op}[{i}]: {type(g).__name__}"
        g = np.asarray(g)
        assert g.dtype == e.dtype, f"{op}[{i}]: dtype {g.dtype} != {e.dtype}"
        np.testing.assert_array_equal(g, e, err_msg=f"{op}[{i}]")


def test_adam_update_changes_the_torch_tensors_in_place(torch, dtype=np.float32):
    param, grad, m, v = _r(4099), _r(4099), _r(4099, scale=0.1), _r(4099) ** 2
    expected = [a.copy() for a in (param, m, v)]
    ops.adam_update(*expected[:1], grad, *expected[1:], step=3, lr=0.01)
    p = torch.nn.Parameter(torch.tensor(param))
    m_t, v_t = torch.tensor(m), torch.tensor(v)
    pointers = [p.data_ptr(), m_t.data_ptr(), v_t.data_ptr()]
    result = ops.adam_update(p.detach(), torch.tensor(grad), m_t, v_t, step=3, lr=0.01)
    assert result is None
    assert [p.data_ptr(), m_t.data_ptr(), v_t.data_ptr()] == pointers
    for t, e, name in zip((p, m_t, v_t), expected, ("param", "m", "v")):
        np.testing.assert_array_equal(t.detach().numpy(), e, err_msg=name)
    assert p.requires_grad


# ---------------------------------------------------------------------------------------------
# no copies: the kernel sees the caller's memory and returns into the caller's tensor
# ---------------------------------------------------------------------------------------------
def test_torch_tensors_go_in_and_out_without_copies(torch, monkeypatch):
    mu, lv = torch.tensor(_r(N, L)), torch.tensor(_r(N, L))
    forward = _spy(monkeypatch, fastvae.cpu.kl, "kl_forward")
    kl, cache = ops.kl_forward(mu, lv)
    kernel_mu, kernel_lv = forward["args"]
    assert (kernel_mu.ctypes.data, kernel_lv.ctypes.data) == (mu.data_ptr(), lv.data_ptr())
    assert kl.data_ptr() == forward["out"][0].ctypes.data

    backward = _spy(monkeypatch, fastvae.cpu.kl, "kl_backward")
    dkl = torch.tensor(_r(N))
    dmu, dlogvar = ops.kl_backward(dkl, cache)
    assert backward["args"][0].ctypes.data == dkl.data_ptr()
    assert [dmu.data_ptr(), dlogvar.data_ptr()] == [g.ctypes.data for g in backward["out"]]


def test_fused_elbo_gradients_wrap_the_kernel_buffers(torch, monkeypatch):
    arrays = [torch.tensor(a) for a in (_unit(N, D), _r(N, D), _r(N, L), _r(N, L), _r(D))]
    fused = _spy(monkeypatch, fastvae.cpu.elbo, "elbo_loss_and_grads")
    loss, grads = ops.elbo_loss_and_grads(*arrays[:4], likelihood="gaussian",
                                          dec_logvar=arrays[4])
    assert [a.ctypes.data for a in fused["args"][:4]] == [t.data_ptr() for t in arrays[:4]]
    assert [g.data_ptr() for g in grads] == [g.ctypes.data for g in fused["out"][1]]
    assert isinstance(loss, float)


def test_noncontiguous_torch_tensors_are_copied_once(torch, monkeypatch):
    mu_t, lv = torch.tensor(_r(L, N)).T, torch.tensor(_r(N, L))   # mu (N, L), transposed view
    assert not mu_t.is_contiguous()
    forward = _spy(monkeypatch, fastvae.cpu.kl, "kl_forward")
    kl, _ = ops.kl_forward(mu_t, lv)
    kernel_mu, kernel_lv = forward["args"]
    assert kernel_mu.flags.c_contiguous and kernel_mu.ctypes.data != mu_t.data_ptr()
    assert kernel_lv.ctypes.data == lv.data_ptr()
    np.testing.assert_array_equal(kl.numpy(), ops.kl_forward(mu_t.numpy(), lv.numpy())[0])


def test_jax_inputs_are_read_in_place(jax, monkeypatch):
    mu, lv = jax.numpy.asarray(_r(N, L, dtype=np.float32)), jax.numpy.asarray(_r(N, L,
                                                                                 dtype=np.float32))
    forward = _spy(monkeypatch, fastvae.cpu.kl, "kl_forward")
    ops.kl_forward(mu, lv)
    kernel_mu, kernel_lv = forward["args"]
    assert (kernel_mu.ctypes.data, kernel_lv.ctypes.data) == (mu.unsafe_buffer_pointer(),
                                                              lv.unsafe_buffer_pointer())
    assert not kernel_mu.flags.writeable        # JAX's buffers stay immutable


@pytest.mark.parametrize("misalign", [0, 16])
def test_jax_adopts_kernel_output_when_aligned_else_copies(jax, monkeypatch, misalign):
    """XLA on the CPU adopts a buffer only if it is 64-byte aligned: the kernel's output becomes
    the JAX array itself then, and an equal copy otherwise."""
    kept = {}

    def realign(result):
        kl, saved = result
        kept["kl"] = _aligned_copy(kl, 64, misalign)
        return kept["kl"], saved

    _spy(monkeypatch, fastvae.cpu.kl, "kl_forward", returns=realign)
    jnp = jax.numpy
    kl, _ = ops.kl_forward(jnp.asarray(_r(N, L, dtype=np.float32)),
                           jnp.asarray(_r(N, L, dtype=np.float32)))
    same_buffer = kl.unsafe_buffer_pointer() == kept["kl"].ctypes.data
    assert same_buffer == (misalign == 0)
    np.testing.assert_array_equal(np.asarray(kl), kept["kl"])


# ---------------------------------------------------------------------------------------------
# which type comes back
# ---------------------------------------------------------------------------------------------
def test_backward_gradients_follow_the_type_of_dout(framework):
    mu, lv = _r(N, L, dtype=np.float32), _r(N, L, dtype=np.float32)
    _, cache = ops.kl_forward(mu, lv)                       # NumPy forward
    grads = ops.kl_backward(framework.wrap(_r(N, dtype=np.float32)), cache)
    assert all(framework.is_own(g) for g in grads)
    _, cache = ops.kl_forward(framework.wrap(mu), framework.wrap(lv))
    grads = ops.kl_backward(_r(N, dtype=np.float32), cache)  # NumPy dout after a foreign forward
    assert all(isinstance(g, np.ndarray) for g in grads)


def test_numpy_mixed_into_a_torch_call_gives_torch(torch):
    mu, lv = _r(N, L), _r(N, L)
    kl, _ = ops.kl_forward(torch.tensor(mu), lv)
    assert isinstance(kl, torch.Tensor)
    np.testing.assert_array_equal(kl.numpy(), ops.kl_forward(mu, lv)[0])


def test_torch_and_jax_in_one_call_is_refused(torch, jax):
    mu = _r(N, L, dtype=np.float32)
    with pytest.raises(TypeError, match="cannot mix torch tensors and JAX arrays"):
        ops.kl_forward(torch.tensor(mu), jax.numpy.asarray(mu))


def test_to_native_leaves_numpy_alone_and_views_torch(torch):
    from fastvae._interop import to_native
    a = _r(3, 4)
    native, back = to_native(a)
    assert native is a and back(native) is a
    t = torch.tensor(a)
    native, back = to_native(t)
    assert isinstance(native, np.ndarray) and native.ctypes.data == t.data_ptr()
    again = back(native)
    assert isinstance(again, torch.Tensor) and again.data_ptr() == t.data_ptr()


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
def test_torch_tensor_requiring_grad_is_refused_naming_it(torch):
    mu = torch.tensor(_r(N, L), requires_grad=True)
    with pytest.raises(TypeError, match=r"mu is a torch tensor that requires grad.*mu\.detach"):
        ops.kl_forward(mu, torch.tensor(_r(N, L)))
    kl, _ = ops.kl_forward(mu.detach(), torch.tensor(_r(N, L)))   # detached: fine
    assert not kl.requires_grad


def test_adam_update_refuses_jax_arrays(jax):
    a = jax.numpy.asarray(_r(11, dtype=np.float32))
    with pytest.raises(TypeError, match="param is a JAX array and JAX arrays are immutable"):
        ops.adam_update(a, a, a, a, step=1)


def test_jax_tracers_are_refused(jax):
    mu = jax.numpy.asarray(_r(N, L, dtype=np.float32))
    with pytest.raises(TypeError, match="traced JAX value.*fastvae.jax"):
        jax.jit(lambda m: ops.kl_forward(m, m)[0])(mu)


def test_unsupported_torch_dtypes_are_type_errors(torch):
    with pytest.raises(TypeError, match="mu .*bfloat16"):
        ops.kl_forward(torch.ones(3, 2, dtype=torch.bfloat16), torch.ones(3, 2))
    with pytest.raises(TypeError, match="mu must be a floating array"):
        ops.kl_forward(torch.ones(3, 2, dtype=torch.int64), torch.ones(3, 2))


def test_shape_errors_still_name_the_argument(framework):
    with pytest.raises(ValueError, match="shape mismatch on L: logvar"):
        ops.kl_forward(framework.wrap(_r(N, L, dtype=np.float32)),
                       framework.wrap(_r(N, L + 1, dtype=np.float32)))


def test_importing_fastvae_ops_imports_neither_torch_nor_jax():
    code = ("import sys, numpy as np; import fastvae, fastvae.ops as ops; "
            "ops.kl_forward(np.ones((2, 3)), np.ones((2, 3))); "
            "print(sorted({'torch', 'jax', 'jaxlib'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# CUDA (runs only where torch sees a GPU and CuPy is installed)
# ---------------------------------------------------------------------------------------------
def test_torch_cuda_tensors_run_the_cuda_kernels_in_place(torch):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch")
    pytest.importorskip("cupy", reason="CUDA tensors go through CuPy")
    mu, lv = _r(N, L, dtype=np.float32), _r(N, L, dtype=np.float32)
    mu_t, lv_t = torch.tensor(mu, device="cuda"), torch.tensor(lv, device="cuda")
    kl, cache = ops.kl_forward(mu_t, lv_t)
    assert kl.is_cuda and cache.module.__name__ == "fastvae.cuda.kl"
    assert cache.saved[0].data.ptr == mu_t.data_ptr()      # the CuPy view of the caller's mu
    np.testing.assert_allclose(kl.cpu().numpy(), ops.kl_forward(mu, lv)[0], rtol=1e-5)
