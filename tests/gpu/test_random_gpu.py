"""fastvae.random with device="cuda": the Philox stream of the CPU on the device. Uniforms are
bit-identical; normals agree to float64 rounding, float32 normals to 2e-6
(fastvae/cuda/random.py)."""
import numpy as np
import pytest

import fastvae as fv

from .conftest import is_device_array

DTYPES = [np.float32, np.float64]
# seeds over both key words; offsets in every lane of a Philox block and past 2^32 numbers
STREAMS = [(0, 0), (7, 1), (2 ** 32 + 5, 3), (2 ** 64 - 1, 2 ** 33 + 2)]
SHAPES = [(1,), (1003,), (5, 7, 3)]


def _on_device(dev, fn, *args, **kwargs):
    out = fn(*args, device="cuda", **kwargs)
    assert is_device_array(out), type(out)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed, offset", STREAMS)
def test_uniform_equals_the_cpu_stream_bit_for_bit(dev, seed, offset, dtype):
    for shape in SHAPES:
        got = _on_device(dev, fv.random.uniform, shape, seed, offset, dtype)
        want = fv.random.uniform(shape, seed, offset, dtype)
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(dev.get(got), want, err_msg=f"{shape}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed, offset", STREAMS)
def test_normal_equals_the_cpu_stream(dev, seed, offset, dtype):
    atol = 2e-6 if dtype == np.float32 else 1e-14
    for shape in SHAPES:
        got = dev.get(_on_device(dev, fv.random.normal, shape, seed, offset, dtype))
        want = fv.random.normal(shape, seed, offset, dtype)
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=0, atol=atol * max(1.0, np.abs(want).max()),
                                   err_msg=f"{shape}")


@pytest.mark.parametrize("fn", [fv.random.normal, fv.random.uniform])
@pytest.mark.parametrize("n", [1, 4, 6, 1001])
def test_offset_continues_the_stream_on_the_device(dev, fn, n):
    whole = dev.get(_on_device(dev, fn, n + 9, 3, 0, np.float32))
    first = dev.get(_on_device(dev, fn, n, 3, 0, np.float32))
    rest = dev.get(_on_device(dev, fn, 9, 3, n, np.float32))
    np.testing.assert_array_equal(whole, np.concatenate([first, rest]))


def test_an_empty_shape_gives_an_empty_device_array(dev):
    out = _on_device(dev, fv.random.normal, (0, 4), 1)
    assert out.shape == (0, 4) and out.dtype == np.float32


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(shape=3, seed=-1), ValueError, "seed must be in"),
    (dict(shape=3, seed=1, offset=2 ** 62), ValueError, "offset \\+ size must be below"),
    (dict(shape=3, seed=1, dtype=np.int32), ValueError, "dtype must be float32 or float64"),
])
def test_arguments_are_checked_before_the_device_is_used(dev, kwargs, error, match):
    with pytest.raises(error, match=match):
        fv.random.normal(device="cuda", **kwargs)
