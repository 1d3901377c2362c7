"""Datasets: IDX / .npy / .npz readers, Fashion-MNIST discovery, the digits fallback, input checks.

Everything returns NumPy arrays of rows: ``x`` is (N, D) float32 in [0, 1] once loaded through
``load_dataset``. Nothing here downloads anything: Fashion-MNIST is found on disk (see
``fashion_mnist_dirs``), the 8x8 digits ship inside scikit-learn.

IDX (the MNIST-family format, http://yann.lecun.com/exdb/mnist/), all integers big-endian::

    bytes 0-1   0x00 0x00
    byte  2     type code: 0x08 ubyte, 0x09 sbyte, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64
    byte  3     ndim
    4*ndim      uint32 dimensions
    rest        prod(dims) items in C order, big-endian

Plain files are read with ``np.fromfile`` or mapped with ``np.memmap`` past the header, so a
``read_idx(path, mmap=True)`` of a file larger than RAM costs nothing until rows are touched.
gzip files (detected by their magic bytes 0x1f 0x8b, not by the suffix) are decompressed into one
preallocated array in 16 MiB pieces, never holding two copies.
"""
import dataclasses
import gzip
import os
import warnings
import zlib

import numpy as np

from ._reference import LIKELIHOODS

__all__ = [
    "IDX_TYPES", "read_idx", "load_array", "fashion_mnist_dirs", "find_fashion_mnist",
    "load_fashion_mnist", "load_digits", "Dataset", "load_dataset", "binarize", "check_data",
    "DATASET_NAMES", "LIKELIHOODS",
]

# type code -> big-endian dtype of the items
IDX_TYPES = {
    0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_CHUNK = 16 << 20          # bytes per gzip readinto call, and the target size of a check_data block

DATASET_NAMES = ("fashion-mnist", "digits", "auto")


# ---------------------------------------------------------------------------------------------
# IDX

def _parse_idx_header(path, head):
    """(dtype, dims, header_len) from the first bytes of an IDX file; ValueError naming path."""
    if len(head) < 4 or head[0] != 0 or head[1] != 0:
        raise ValueError(f"{path}: not an IDX file: bad magic {head[:4].hex(' ') or '(empty)'}, "
                         f"expected 00 00 <type> <ndim>")
    code, ndim = head[2], head[3]
    if code not in IDX_TYPES:
        known = ", ".join(f"0x{c:02X} {IDX_TYPES[c].name}" for c in IDX_TYPES)
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02X} (known: {known})")
    header_len = 4 + 4 * ndim
    if len(head) < header_len:
        raise ValueError(f"{path}: truncated IDX file: the header of a {ndim}-D array needs "
                         f"{header_len} bytes, the file has {len(head)}")
    dims = tuple(int(d) for d in np.frombuffer(head, ">u4", count=ndim, offset=4))
    return IDX_TYPES[code], dims, header_len


def _size_error(path, dtype, dims, header_len, got):
    need = int(np.prod(dims, dtype=object)) * dtype.itemsize
    says = (f"the header says shape {dims} of {dtype.name}: {need} bytes after the "
            f"{header_len}-byte header")
    if got < need:
        return ValueError(f"{path}: truncated IDX file: {says}, but only {got} follow")
    return ValueError(f"{path}: {got - need} trailing bytes after the IDX data: {says}, "
                      f"the file has {got}")


def _to_native(a):
    """Byte-swap a big-endian array in place and view it native (no copy)."""
    if not a.dtype.isnative:
        a.byteswap(inplace=True)
        a = a.view(a.dtype.newbyteorder("="))
    return a


def read_idx(path, mmap=False):
    """Read an IDX file (plain or gzip) into an array of its header's shape and dtype.

    path: a plain or gzip-compressed IDX file; gzip is recognised by its magic bytes.
    mmap: for a plain file, return a read-only ``np.memmap`` of the data instead of reading it.
        Its dtype keeps the file's big-endian byte order (``>i2`` etc.; the same as native for
        the 1-byte types); arithmetic on it gives native results. A gzip file cannot be mapped:
        it is decompressed into memory as with ``mmap=False``; so is an empty array.
    Returns an ndarray in native byte order (uint8, int8, int16, int32, float32 or float64).
    Raises ValueError naming the file for a bad magic, an unknown type code, a truncated file
    (fewer bytes than the header says), trailing bytes, or a corrupt gzip stream.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        magic = f.read(2)
        f.seek(0)
        if magic == _GZIP_MAGIC:
            return _read_idx_gzip(path, f)
        head = f.read(4)
        head += f.read(4 * head[3]) if len(head) == 4 else b""
        dtype, dims, header_len = _parse_idx_header(path, head)
        count = int(np.prod(dims, dtype=object))
        got = os.fstat(f.fileno()).st_size - header_len
        if got != count * dtype.itemsize:
            raise _size_error(path, dtype, dims, header_len, got)
        if count == 0:                       # np.memmap refuses empty maps
            return np.empty(dims, dtype.newbyteorder("="))
        if mmap:
            return np.memmap(path, dtype=dtype, mode="r", offset=header_len, shape=dims)
        f.seek(header_len)
        a = np.fromfile(f, dtype=dtype, count=count)
    return _to_native(a).reshape(dims)


def _read_idx_gzip(path, raw):
    try:
        with gzip.GzipFile(fileobj=raw, mode="rb") as f:
            head = f.read(4)
            head += f.read(4 * head[3]) if len(head) == 4 else b""
            dtype, dims, header_len = _parse_idx_header(path, head)
            try:
                a = np.empty(int(np.prod(dims, dtype=object)), dtype)
            except (MemoryError, ValueError) as e:     # a corrupt header can claim petabytes
                raise ValueError(f"{path}: cannot allocate the shape {dims} of {dtype.name} "
                                 f"that the IDX header claims: {e}") from e
            buf = memoryview(a.view(np.uint8))
            got = 0
            while got < len(buf):
                n = f.readinto(buf[got:got + _CHUNK])
                if not n:
                    raise _size_error(path, dtype, dims, header_len, got)
                got += n
            extra = len(f.read(_CHUNK))
            if extra:
                while chunk := f.read(_CHUNK):
                    extra += len(chunk)
                raise _size_error(path, dtype, dims, header_len, got + extra)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: corrupt or truncated gzip stream: {e}") from e
    return _to_native(a).reshape(dims)


# ---------------------------------------------------------------------------------------------
# .npy / .npz

def load_array(path, key=None, mmap=False):
    """Load one array from a .npy or .npz file, never unpickling (allow_pickle=False).

    The format is told by the magic bytes, not the suffix.
    key: the array's name in an .npz; may be omitted when the archive holds exactly one array.
    mmap: map a .npy file read-only (``mmap_mode="r"``) instead of reading it; ignored for .npz,
        whose members are always read into memory.
    Raises ValueError naming the file for object (pickled) arrays, a missing or ambiguous key,
    or a file that is neither format.
    """
    path = os.fspath(path)
    kind = _sniff(path)
    if kind not in ("npy", "npz"):
        raise ValueError(f"{path}: not a .npy or .npz file (no NumPy or zip magic bytes)")
    try:
        if kind == "npy":
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        with np.load(path, allow_pickle=False) as z:
            if key is None:
                if len(z.files) != 1:
                    raise ValueError(f"{path}: holds {len(z.files)} arrays {z.files}; pass "
                                     f"key= to choose one")
                key = z.files[0]
            if key not in z.files:
                raise ValueError(f"{path}: no array {key!r}; it holds {z.files}")
            return z[key]
    except ValueError as e:
        if "allow_pickle" in str(e) or "Python objects" in str(e):
            raise ValueError(f"{path}: holds an object (pickled) array; fastvae never unpickles "
                             f"data files (allow_pickle=False): save a numeric array "
                             f"instead") from e
        if str(e).startswith(path):
            raise
        raise ValueError(f"{path}: cannot read as {kind}: {e}") from e


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST

# Debian/Ubuntu's dataset-fashion-mnist package installs the upstream zalando files here
# (checked with dpkg -c on dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb):
#   /usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
SYSTEM_DIRS = ("/usr/share/datasets/fashion-mnist",)
_SUBDIRS = ("", "fashion-mnist", os.path.join("data", "fashion"))
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_HOW_TO_GET = ("To get it: `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put "
               "the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
               "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz, from "
               "https://github.com/zalandoresearch/fashion-mnist) in $FASTVAE_DATA")


def fashion_mnist_dirs():
    """Folders searched for Fashion-MNIST, in order: $FASTVAE_DATA (if set), ~/.cache/fastvae,
    then SYSTEM_DIRS. Each is also searched under fashion-mnist/ and data/fashion/."""
    dirs = []
    env = os.environ.get("FASTVAE_DATA")
    if env:
        dirs.append(os.path.expanduser(env))
    dirs.append(os.path.join(os.path.expanduser("~"), ".cache", "fastvae"))
    dirs.extend(SYSTEM_DIRS)
    return dirs


def _split_prefix(split):
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return _SPLIT_PREFIX[split]


def _find_file(folder, stem):
    for name in (stem + ".gz", stem):
        for sep_name in (name, name.replace("-idx", ".idx", 1)):   # also Kaggle's *-images.idx3-*
            p = os.path.join(folder, sep_name)
            if os.path.isfile(p):
                return p
    return None


def find_fashion_mnist(split="train"):
    """(images_path, labels_path) of a Fashion-MNIST split: the first searched folder holding both.

    Accepts ``<prefix>-images-idx3-ubyte[.gz]`` and ``<prefix>-labels-idx1-ubyte[.gz]`` with
    prefix ``train`` or ``t10k``. Raises FileNotFoundError listing the folders searched and how
    to get the data.
    """
    prefix = _split_prefix(split)
    searched = []
    for base in fashion_mnist_dirs():
        for sub in _SUBDIRS:
            folder = os.path.join(base, sub) if sub else base
            searched.append(folder)
            images = _find_file(folder, f"{prefix}-images-idx3-ubyte")
            labels = _find_file(folder, f"{prefix}-labels-idx1-ubyte")
            if images and labels:
                return images, labels
    env = "" if os.environ.get("FASTVAE_DATA") else " ($FASTVAE_DATA is not set)"
    raise FileNotFoundError(
        f"Fashion-MNIST ({split} split: {prefix}-images-idx3-ubyte[.gz] and "
        f"{prefix}-labels-idx1-ubyte[.gz]) not found. Searched{env}:\n  "
        + "\n  ".join(searched) + f"\n{_HOW_TO_GET}.")


def load_fashion_mnist(split="train", flatten=True, scale=True):
    """Fashion-MNIST images and labels of one split (60000 train or 10000 test).

    flatten: images as (N, 784) rows, else (N, 28, 28).
    scale: images as float32 in [0, 1] (pixel / 255), else the raw uint8 pixels.
    Returns (images, labels uint8 (N,) in 0..9). The folders searched are in
    ``fashion_mnist_dirs``; FileNotFoundError says how to get the data when none has it.
    """
    images_path, labels_path = find_fashion_mnist(split)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: expected uint8 images of shape (N, 28, 28), got "
                         f"{images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.shape != images.shape[:1]:
        raise ValueError(f"{labels_path}: expected {images.shape[0]} uint8 labels to match "
                         f"{images_path}, got {labels.dtype} {labels.shape}")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{labels_path}: labels must be in 0..9, found {labels.max()}")
    if flatten:
        images = images.reshape(len(images), -1)
    if scale:
        images = _scale_uint8(images)
    return images, labels


def _scale_uint8(a):
    out = a.astype(np.float32)
    out *= np.float32(1 / 255)
    return out


# ---------------------------------------------------------------------------------------------
# scikit-learn's 8x8 digits

DIGITS_SPLIT = (1500, 297)   # train / test rows of the 1797 digits
DIGITS_SEED = 0


def load_digits(flatten=True, scale=True):
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, no download needed).

    flatten: images as (1797, 64) rows, else (1797, 8, 8).
    scale: images as float32 in [0, 1] (value / 16), else the raw uint8 values 0..16.
    Returns (images, labels uint8 (1797,)). Needs scikit-learn (an optional dependency).
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:
        raise ImportError("the digits dataset comes from scikit-learn, which is not installed: "
                          "`pip install scikit-learn`") from e
    bunch = sk_load_digits()
    images = bunch.images.astype(np.uint8)        # values 0..16, exact in float64
    labels = bunch.target.astype(np.uint8)
    if flatten:
        images = images.reshape(len(images), -1)
    if scale:
        images = images.astype(np.float32) / np.float32(16)
    return images, labels


# ---------------------------------------------------------------------------------------------
# load_dataset

@dataclasses.dataclass
class Dataset:
    """A train/test pair of row matrices and where they came from.

    name: "fashion-mnist", "digits", or the file's name. x_train (N, D), x_test (M, D): float32,
    [0, 1] for the named datasets (a user file is converted, not checked: run ``check_data``).
    source: where the data was read from, and how integers were scaled. y_train, y_test: labels
    when known, else None. test_name, test_first_row: what to call x_test in error messages (the
    file, when it is a slice of one) and the file row of its first row, so that ``check_data(
    ds.x_test, ..., name=ds.test_name, first_row=ds.test_first_row)`` names rows of the file.
    """
    name: str
    x_train: np.ndarray
    x_test: np.ndarray
    source: str
    y_train: np.ndarray = None
    y_test: np.ndarray = None
    test_name: str = "x_test"
    test_first_row: int = 0

    @property
    def input_dim(self):
        return self.x_train.shape[1]

    def describe(self):
        return (f"{self.name}: {len(self.x_train)} train + {len(self.x_test)} test rows of "
                f"{self.input_dim} ({self.source})")


def _fashion_dataset():
    xtr, ytr = load_fashion_mnist("train")
    xte, yte = load_fashion_mnist("test")
    source = os.path.dirname(find_fashion_mnist("train")[0])
    return Dataset("fashion-mnist", xtr, xte, source, ytr, yte,
                   test_name=find_fashion_mnist("test")[0])


def _digits_dataset():
    x, y = load_digits()
    perm = np.random.default_rng(DIGITS_SEED).permutation(len(x))
    tr, te = perm[:DIGITS_SPLIT[0]], perm[DIGITS_SPLIT[0]:]
    return Dataset("digits", x[tr], x[te], "sklearn.datasets.load_digits "
                   f"(seeded {DIGITS_SPLIT[0]}/{DIGITS_SPLIT[1]} split)", y[tr], y[te],
                   test_name="the digits test set")


def _sniff(path):
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if head.startswith(_ZIP_MAGIC):
        return "npz"
    return "idx"                                   # plain or gzip; read_idx says if it is not


def _int_range(a):
    """(min, max) of an integer or boolean array as Python ints, read about _CHUNK bytes of rows
    at a time (a memmap is streamed, never held whole)."""
    step = max(1, _CHUNK // max(1, a[0].nbytes))
    lo, hi = None, None
    for start in range(0, len(a), step):
        b = a[start:start + step]
        b_lo, b_hi = int(b.min()), int(b.max())
        lo = b_lo if lo is None else min(lo, b_lo)
        hi = b_hi if hi is None else max(hi, b_hi)
    return lo, hi


def _integer_scale(path, arrays):
    """(divisor, note) for integer/boolean row arrays: 1 when every value is 0 or 1 (binary
    data, e.g. binarized MNIST saved as uint8), 255 for other uint8 (pixels), else ValueError."""
    ranges = [_int_range(a) for a in arrays]
    lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    dtypes = "/".join(sorted({a.dtype.name for a in arrays}))
    if lo >= 0 and hi <= 1:
        return 1, f"{dtypes} 0/1 values taken as binary data (not divided by 255)"
    if all(a.dtype == np.uint8 for a in arrays):
        return 255, "uint8 divided by 255"
    raise ValueError(
        f"{path}: {dtypes} values in [{lo}, {hi}]: fastvae scales integer data only when it is "
        f"uint8 pixels (divided by 255) or 0/1; it does not guess the scale of other integers. "
        f"Convert the rows to float32 yourself, e.g. to [0, 1] with "
        f"np.save('rows.npy', ((a - {lo}) / {max(hi - lo, 1)}).astype(np.float32))")


def _rows(path, *arrays):
    """(N, D) float32 rows of each array, and a note on how integers were scaled (or "").

    Integer and boolean arrays are scaled together (see _integer_scale): 0/1 values are kept,
    other uint8 is divided by 255, other integers are refused. Floats are converted as they are
    (native float32 is returned as it is: a memmap stays mapped)."""
    rows = []
    for a in arrays:
        if a.size == 0:
            raise ValueError(f"{path}: holds no data: an empty array of shape {a.shape} (need "
                             f"rows (N, D) or images (N, H, W, ...) with N >= 1)")
        if a.ndim < 2:
            raise ValueError(f"{path}: expected rows (N, D) or images (N, H, W, ...), got shape "
                             f"{a.shape}")
        if a.dtype.kind not in "biuf":
            raise ValueError(f"{path}: expected a numeric array, got dtype {a.dtype}")
        rows.append(a.reshape(len(a), -1))
    integers = [a for a in rows if a.dtype.kind in "biu"]
    divisor, note = _integer_scale(path, integers) if integers else (1, "")
    out = []
    for a in rows:
        if a.dtype.kind in "biu":
            a = _scale_uint8(a) if divisor == 255 else a.astype(np.float32)
        elif a.dtype != np.float32:              # in memory, including big-endian IDX floats
            a = a.astype(np.float32)
        out.append(a)                            # native float32 (a memmap stays mapped)
    return out, note


def _file_dataset(path, mmap):
    name = os.path.basename(path)
    kind = _sniff(path)
    if kind == "npz":
        with np.load(path, allow_pickle=False) as z:
            files = z.files
        for tr, te in (("x_train", "x_test"), ("train", "test")):
            if tr in files and te in files:
                (xtr, xte), note = _rows(path, load_array(path, tr), load_array(path, te))
                if xtr.shape[1] != xte.shape[1]:
                    raise ValueError(f"{path}: {tr!r} has {xtr.shape[1]} columns, {te!r} has "
                                     f"{xte.shape[1]}")
                return Dataset(name, xtr, xte, f"{path} [{tr!r}, {te!r}]" + _note(note),
                               test_name=f"{path} [{te!r}]")
        if len(files) != 1:
            raise ValueError(f"{path}: expected arrays 'x_train' and 'x_test' (or 'train' and "
                             f"'test') or a single array, found {files}")
        x = load_array(path)
    elif kind == "npy":
        x = load_array(path, mmap=mmap)
    else:
        x = read_idx(path, mmap=mmap)
    (x,), note = _rows(path, x)
    if len(x) < 2:
        raise ValueError(f"{path}: need at least 2 rows to split into train and test, got "
                         f"{len(x)}")
    n_test = max(1, len(x) // 10)
    return Dataset(name, x[:-n_test], x[-n_test:],
                   f"{path} (last {n_test} of {len(x)} rows held out as test)" + _note(note),
                   test_name=path, test_first_row=len(x) - n_test)


def _note(note):
    return f"; {note}" if note else ""


def load_dataset(name="auto", mmap=True):
    """Load a dataset by name or path as a ``Dataset`` of float32 rows.

    name:
      "fashion-mnist"  Fashion-MNIST (60000 + 10000 rows of 784), see ``find_fashion_mnist``.
      "digits"         scikit-learn's 8x8 digits, a seeded 1500/297 split of 1797 rows of 64.
      "auto"           Fashion-MNIST if found, else digits with a warning saying why.
      a path           an .npz with arrays x_train and x_test (or train and test), or a single
                       array in .npy, .npz or IDX (plain or gzip): images (N, H, W) are flattened
                       and the last 10% of rows (at least one) are the test set (contiguous, so a
                       memmap stays mapped: shuffle ordered files first).
    Integer (and boolean) files are scaled by what they hold, found in one chunked pass (a
    memmap is never read whole): all values 0 or 1 -> binary data, kept as 0.0/1.0 (binarized
    MNIST saved as uint8 is NOT divided by 255); other uint8 -> divided by 255 (pixels); any
    other integer data (int16 0..1000, int8 with negatives, ...) -> ValueError naming the file:
    fastvae does not guess a scale, convert such data to float32 yourself. The choice is stated
    in the Dataset's ``source`` (the CLI prints it). An empty array -> ValueError naming the file.
    Float data is converted to float32 but not checked (see ``check_data``).
    mmap: map plain .npy/IDX files instead of reading them. Native float32 (.npy) stays mapped,
        so a file larger than RAM works; other dtypes, and IDX floats (big-endian on disk), are
        converted to float32 in memory.
    Names are matched before paths: write ./digits for a file of that name.
    """
    key = str(name).lower().replace("_", "-")
    if key in ("fashion-mnist", "fashion", "fmnist"):
        return _fashion_dataset()
    if key == "digits":
        return _digits_dataset()
    if key == "auto":
        try:
            return _fashion_dataset()
        except FileNotFoundError as e:
            missing = e
        try:
            ds = _digits_dataset()
        except ImportError as e:
            raise FileNotFoundError(f"{missing}\nThe fallback, scikit-learn's digits, is not "
                                    f"available either: {e}") from e
        searched = ", ".join(fashion_mnist_dirs())
        warnings.warn(f"Fashion-MNIST not found (searched {searched}; each also under "
                      f"fashion-mnist/ and data/fashion/), so using scikit-learn's 8x8 digits "
                      f"({ds.describe()}). {_HOW_TO_GET}.", UserWarning, stacklevel=2)
        return ds
    path = os.path.expanduser(os.fspath(name))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"unknown dataset {name!r}: expected one of "
                                f"{', '.join(DATASET_NAMES)} or the path of an .npy, .npz or "
                                f"IDX file")
    return _file_dataset(path, mmap)


# ---------------------------------------------------------------------------------------------
# binarization and checks

def binarize(x, rng, out=None):
    """Dynamic binarization: ``out[i, j] = 1 if u[i, j] < x[i, j] else 0``, u ~ U[0, 1).

    x: probabilities (any shape), float32 or float64. rng: a ``np.random.Generator`` or an int
    seed. out: optional array of x's shape to overwrite. Returns an array of x's float dtype
    (float32 for other inputs) holding 0 and 1 with P(1) = x.
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    x = np.asarray(x)
    dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float32)
    u = rng.random(x.shape, dtype=dtype)
    np.less(u, x, out=u)                 # reuse u's memory: 1.0 where u < x, else 0.0
    if out is None:
        return u
    out[...] = u
    return out


def _first(mask):
    return tuple(int(i) for i in np.argwhere(mask)[0])


# native float dtype -> (unsigned integer of its width, the bits of 1.0)
_ONE_BITS = {np.dtype(np.float32): (np.uint32, 0x3F800000),
             np.dtype(np.float64): (np.uint64, 0x3FF0000000000000)}


def block_is_clean(b, likelihood):
    """True if the in-memory block b holds no NaN/Inf and, for "bernoulli", only values in
    [0, 1]. The cheap path that every evaluation chunk takes (fastvae/eval.py has its measured
    cost): one pass, no temporary array, for native float32/float64:
      bernoulli: the bits of +0.0 .. 1.0, read as unsigned integers, are 0 .. bits(1.0), and
        every other value (negatives, -0.0 included; > 1; NaN; Inf) is above: one integer max.
      gaussian: NaN or Inf anywhere makes the dot product of the block with itself NaN or Inf
        (so can finite values above ~1e19 in float32; the exact test below then decides).
    Anything else (and a fast test that fails) takes a min and a max, NaN propagating."""
    if b.size == 0:
        return True
    if b.dtype.kind != "f" and likelihood != "bernoulli":
        return True
    fast = _ONE_BITS.get(b.dtype)
    if fast is not None:
        if likelihood == "bernoulli":
            if b.view(fast[0]).max() <= fast[1]:
                return True
        elif b.flags.c_contiguous:
            flat = b.reshape(-1)
            with np.errstate(over="ignore", invalid="ignore"):
                square = np.dot(flat, flat)
            if np.isfinite(square):
                return True
    lo, hi = b.min(), b.max()
    if likelihood == "bernoulli":
        return bool(lo >= 0) and bool(hi <= 1)        # False for NaN
    return bool(np.isfinite(lo)) and bool(np.isfinite(hi))


def raise_first_bad(b, likelihood, name="x", first_row=0):
    """Raise ValueError naming the first offending value of the block b (n, D), whose row 0 is
    row ``first_row`` of the argument ``name``: NaN/Inf first, then (for "bernoulli") values
    outside [0, 1]. Returns None if b is clean."""
    last = first_row + len(b) - 1
    if b.dtype.kind == "f":
        bad = ~np.isfinite(b)
        if bad.any():
            i, j = _first(bad)
            raise ValueError(f"{name} has a non-finite value {b[i, j]} at row {first_row + i}, "
                             f"column {j} ({int(bad.sum())} in rows {first_row}..{last}); "
                             f"remove or impute NaN/Inf first")
    if likelihood == "bernoulli":
        bad = (b < 0) | (b > 1)
        if bad.any():
            i, j = _first(bad)
            raise ValueError(f"{name} has {b[i, j]} at row {first_row + i}, column {j}, outside "
                             f"[0, 1], which the Bernoulli likelihood needs (scale the data, "
                             f"e.g. divide uint8 pixels by 255, or use likelihood='gaussian')")


def check_data(x, likelihood, input_dim=None, name="x", block_rows=None, first_row=0):
    """Refuse data a model cannot train on, reading ``x`` one block of rows at a time.

    x: (N, D) array or memmap (may be larger than RAM: only ``block_rows`` rows are in memory
        at once; by default blocks of about 16 MiB). likelihood: "bernoulli" (values must lie
        in [0, 1]) or "gaussian". input_dim: the model's D, or None to skip the width check.
    name: what to call x in messages (an argument's name, a file). first_row: the row number
        that x's first row has in messages (x a slice of a file, say).
    Raises ValueError naming the first offending row, column and value for NaN/Inf or values
    outside [0, 1]; and for the wrong rank, width, an empty array or a non-numeric dtype.
    Returns None.
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    shape = getattr(x, "shape", None)
    if shape is None:
        x = np.asarray(x)
        shape = x.shape
    if len(shape) != 2:
        raise ValueError(f"{name} must be 2-D rows (N, D), got shape {tuple(shape)}")
    n, d = shape
    if n == 0 or d == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(shape)}")
    if input_dim is not None and d != input_dim:
        raise ValueError(f"{name} has {d} columns but the model's input_dim is {input_dim}")
    kind = np.dtype(x.dtype).kind
    if kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {x.dtype}")
    if kind != "f" and likelihood != "bernoulli":
        return                                   # integers are finite: nothing to read
    if block_rows is None:
        block_rows = max(1, _CHUNK // (d * 8))
    for start in range(0, n, block_rows):
        b = np.asarray(x[start:start + block_rows])
        if not block_is_clean(b, likelihood):
            raise_first_bad(b, likelihood, name, first_row + start)
