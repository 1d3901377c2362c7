"""The Bernoulli x check of the ELBO and log-weight ops on the CUDA backend
(kernels/loglik.cuh::report_bad_x, fastvae/cuda/elbo.py::refuse_bad_x): the cases of
tests/test_input_checks.py with the arrays on the device; the message is the CPU's."""
import numpy as np
import pytest

from tests.test_input_checks import X_BAD, X_D, X_OPS, check_x_refused, run_x_op, x_range_inputs

DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("row, col, value", X_BAD[:3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", X_OPS)
def test_bernoulli_x_outside_unit_interval_is_refused(dev, op, dtype, row, col, value):
    check_x_refused(op, dtype, row, col, value, put=dev.put)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", X_OPS)
def test_bernoulli_x_exactly_zero_and_one_is_accepted(dev, op, dtype):
    arrays = x_range_inputs(dtype)
    out = run_x_op(op, arrays[0], arrays, dev.put)
    out = out if isinstance(out, float) else dev.get(out)
    np.testing.assert_allclose(out, run_x_op(op, arrays[0], arrays),
                               rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("op", X_OPS)
def test_gaussian_x_is_not_range_checked(dev, op):
    arrays = x_range_inputs(np.float64)
    x = arrays[0] * 40 - 20
    out = run_x_op(op, x, arrays, dev.put, likelihood="gaussian",
                   dec_logvar=dev.put(np.zeros(X_D)))
    assert np.all(np.isfinite(out if isinstance(out, float) else dev.get(out)))
