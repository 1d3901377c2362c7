"""Run kernels in a process that has a sanitizer runtime preloaded (see test_cuda_host.py::test_sanitizers).
Run as a script in a subprocess, so it imports cuda_host.py from its own folder."""
import pathlib
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from cuda_host import HostModule  # noqa: E402

san, case, cache = sys.argv[1], sys.argv[2], sys.argv[3]
K, B = HERE / "kernels", HERE / "bad"
flags = ("-fsanitize=thread",) if san == "thread" else ("-fsanitize=address", "-fno-omit-frame-pointer")
mod = lambda p: HostModule(p, options=("-I", str(K)), extra_flags=flags, cache_dir=cache)  # noqa: E731
x = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
out = np.zeros(1, np.float32)
if case == "clean":
    mod(K / "reduce.cu").get_function("block_sum")((16,), (256,), (x, np.int32(4096), out))
    xs = x[:33 * 100].reshape(33, 100).copy()
    mod(K / "lse.cu").get_function("row_logsumexp")((33,), (128,), (xs, np.int32(33), np.int32(100), np.zeros(33, np.float32)))
    t = np.zeros((100, 33), np.float32)
    mod(K / "transpose.cu").get_function("transpose")((4, 2), (32, 8), (xs, t, np.int32(33), np.int32(100)))
    assert (t == xs.T).all()
elif case == "missing_sync":
    mod(B / "missing_sync.cu").get_function("block_sum_nosync")((16,), (256,), (x, np.int32(4096), out))
elif case == "legacy_warp":
    mod(B / "legacy_warp.cu").get_function("legacy_warp_sum")((16,), (256,), (x, np.int32(4096), out))
elif case == "oob":
    mod(B / "oob.cu").get_function("scale_oob")((4,), (256,), (x[:1000].copy(), np.zeros(1000, np.float32), np.float32(2), np.int32(1000)))
print("done", case)
