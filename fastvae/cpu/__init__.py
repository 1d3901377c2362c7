"""Numba CPU backend: one module per operation, same file stems as fastvae/_reference.py.

Numba's on-disk cache checks only the timestamp of the file that defines a kernel, but kernels
here inline helpers from other files (elbo.py from loglik.py and kl.py, iwae.py from
logsumexp.py, ...): after editing a helper, a stale cached kernel would keep the old code (numba
issue #1833). So the cache is dropped whenever any source file of this package changes.
"""
import hashlib
import pathlib


def _drop_stale_numba_cache():
    here = pathlib.Path(__file__).parent
    digest = hashlib.sha256()
    for source in sorted(here.glob("*.py")):
        digest.update(source.name.encode() + source.read_bytes())
    cache = here / "__pycache__"
    stamp = cache / "fastvae-sources.sha256"
    try:
        if stamp.exists() and stamp.read_text() == digest.hexdigest():
            return
        for stale in list(cache.glob("*.nbi")) + list(cache.glob("*.nbc")):
            stale.unlink(missing_ok=True)
        cache.mkdir(exist_ok=True)
        stamp.write_text(digest.hexdigest())
    except OSError:   # read-only install or a concurrent writer: numba's own checks remain
        pass


_drop_stale_numba_cache()
