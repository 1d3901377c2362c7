"""The ``fastvae`` command: train, evaluate, sample / figures.

    fastvae train --data auto --hidden 400 --latent 20 --epochs 10 --out runs/model.npz
    fastvae evaluate runs/model.npz --data auto --K 5000
    fastvae figures runs/model.npz --data auto --out-dir runs
"""
import argparse
import os
import sys
import time

import numpy as np

from ._reference import LIKELIHOODS

# Exit codes: one per kind of expected failure, so scripts can tell them apart.
EXIT_OK = 0
EXIT_BUG = 1             # an unexpected exception: a traceback is printed (please report it)
EXIT_USAGE = 2           # bad option, bad or missing input file, bad checkpoint (argparse uses 2)
EXIT_DIVERGED = 3        # TrainingDiverged: the last good parameters are in the checkpoint
EXIT_IO = 4              # OSError writing output: unwritable folder, disk full
EXIT_INTERRUPTED = 130   # SIGINT (Ctrl-C): stopped at a step boundary, checkpoint written
EXIT_TERMINATED = 143    # SIGTERM: likewise (128 + signal number, as shells report it)

# `fastvae train`'s architecture for a new model, where --hidden/--latent/--likelihood/--activation
# are not given (on --resume the checkpoint's architecture applies instead).
NEW_MODEL = dict(hidden=[400], latent=20, likelihood="bernoulli", activation="relu")


def _add_data(p):
    p.add_argument("--data", default="auto",
                   help="fashion-mnist, digits, auto (Fashion-MNIST if installed, else digits), "
                        "or a path to .npy/.npz/IDX rows in [0, 1] (default: auto)")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that may take its options from ``add_arguments(parser)``, called the
    first time it parses: ``fastvae bench`` takes its options from fastvae/bench/__init__.py,
    imported only then, so ``import fastvae.cli``, ``fastvae --help`` and ``fastvae train`` load
    no benchmark code."""

    def __init__(self, *args, add_arguments=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._add_arguments = add_arguments

    def parse_known_args(self, args=None, namespace=None):
        add, self._add_arguments = self._add_arguments, None
        if add is not None:
            add(self)
        return super().parse_known_args(args, namespace)


def _add_bench_arguments(p):
    from .bench import add_arguments   # no NumPy: the bench workers set their threads first
    add_arguments(p)


def _parser():
    parser = _Parser(prog="fastvae", description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for training and evaluation (default: the CPUs this "
                             "process may use, or FASTVAE_NUM_THREADS)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub.add_parser("train", help="train a VAE and write a checkpoint"))
    _add_evaluate(sub.add_parser("evaluate",
                                 help="test ELBO and importance-weighted log-likelihood"))
    f = sub.add_parser("figures", help="PNG grids of reconstructions and samples, and curves")
    f.add_argument("checkpoint")
    _add_data(f)
    f.add_argument("--out-dir", default="runs")
    s = sub.add_parser("sample", help="a PNG grid of samples from the prior")
    s.add_argument("checkpoint")
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="runs/samples.png")
    sub.add_parser("bench", add_arguments=_add_bench_arguments,
                   help="benchmark suite against PyTorch and JAX: table, JSON, figure "
                        "(peers: pip install 'fastvae[bench]')")
    return parser


def _add_architecture(t):
    # The architecture flags default to None: a new model gets NEW_MODEL's values, a resumed
    # one the checkpoint's architecture (giving a flag that contradicts it is an error).
    t.add_argument("--hidden", type=int, nargs="*", metavar="WIDTH",
                   help=f"hidden widths (new model: {' '.join(map(str, NEW_MODEL['hidden']))}; "
                        f"--resume: the checkpoint's)")
    t.add_argument("--latent", type=int,
                   help=f"latent dimensions (new model: {NEW_MODEL['latent']}; --resume: the "
                        f"checkpoint's)")
    t.add_argument("--likelihood", choices=LIKELIHOODS,
                   help=f"decoder likelihood (new model: {NEW_MODEL['likelihood']}; --resume: "
                        f"the checkpoint's)")
    t.add_argument("--activation", choices=("relu", "tanh", "softplus", "sigmoid", "identity"),
                   help=f"hidden activation (new model: {NEW_MODEL['activation']}; --resume: "
                        f"the checkpoint's)")


def _add_train(t):
    _add_data(t)
    _add_architecture(t)
    t.add_argument("--epochs", type=int, default=10,
                   help="total epochs (default 10); with --resume, training continues until "
                        "the model has this many")
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--beta", type=float, default=1.0, help="KL weight")
    t.add_argument("--warmup", type=float, default=0.0, help="KL warm-up epochs")
    t.add_argument("--binarize", choices=("none", "dynamic", "fixed"), default="dynamic")
    t.add_argument("--k", type=int, default=1, help="samples per example")
    t.add_argument("--objective", choices=("elbo", "iwae"), default="elbo")
    t.add_argument("--patience", type=int, help="early stopping patience (epochs)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default="runs/model.npz", help="checkpoint path")
    t.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    t.add_argument("--checkpoint-every", type=int, metavar="N",
                   help="also write the checkpoint every N steps (it is written after every "
                        "epoch, and on Ctrl-C/SIGTERM)")
    t.add_argument("--figures", metavar="DIR", help="write PNG figures here after training")
    t.add_argument("--K", type=int, default=0,
                   help="after training, also estimate log p(x) with K samples (0: skip)")
    t.add_argument("--eval-examples", type=int, default=1000,
                   help="test examples for the log-likelihood estimate")


def _add_evaluate(e):
    e.add_argument("checkpoint")
    _add_data(e)
    e.add_argument("--K", type=int, default=5000,
                   help="importance samples, >= 0 (default 5000; 0: ELBO only)")
    e.add_argument("--examples", type=int,
                   help="log-likelihood on the first N >= 1 test examples only (ELBO uses all)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", metavar="FILE.npy",
                   help="write the per-example log p(x) estimates (float64) to this .npy file, "
                        "filled as the rows finish (NaN where an interrupted run did not reach)")
    e.add_argument("--scheduler", metavar="ADDRESS",
                   help="estimate log p(x) on the Dask cluster of this scheduler, e.g. "
                        "tcp://host:8786 (pip install 'fastvae[distributed]')")


def _load_data(name):
    from .data import load_dataset
    dataset = load_dataset(name)
    print(f"data: {dataset.name} ({dataset.source}): {dataset.x_train.shape[0]} train, "
          f"{dataset.x_test.shape[0]} test, {dataset.x_train.shape[1]} dims")
    return dataset


def _test_set(dataset, model, seed):
    """Test rows as the model sees them: a fixed binarization for Bernoulli models.
    The rows are checked first (binarizing would turn NaN into 0 and 3.7 into 1): ValueError
    naming the file, row, column and value for NaN/Inf, or values outside [0, 1] for a Bernoulli
    model, or the wrong width."""
    from .data import binarize, check_data
    x = dataset.x_test
    check_data(x, model.likelihood, model.input_dim, name=dataset.test_name,
               first_row=dataset.test_first_row)
    return binarize(x, np.random.default_rng([seed, 7, 1])) if model.likelihood == "bernoulli" \
        else x


def _check_report_options(K, ll_examples, examples_flag="--examples / --eval-examples"):
    """ValueError naming the option unless K >= 0 (0: skip) and ll_examples is None or >= 1."""
    if isinstance(K, bool) or not isinstance(K, int) or K < 0:
        raise ValueError(f"--K must be an integer >= 0 (0: skip the log-likelihood), got {K!r}")
    if ll_examples is not None and (isinstance(ll_examples, bool) or
                                    not isinstance(ll_examples, int) or ll_examples < 1):
        raise ValueError(f"{examples_flag} must be an integer >= 1 (omit it for every test "
                         f"example), got {ll_examples!r}")


def _report(model, x, K, seed, ll_examples=None, client=None, out=None):
    """Print the test ELBO on all of x and the IWAE log-likelihood on its first ll_examples
    (on the Dask cluster of client, if given). K and ll_examples are checked before any work."""
    _check_report_options(K, ll_examples)
    t0 = time.perf_counter()
    elbo = model.elbo(x, seed=seed)
    print(f"test ELBO: {elbo.mean():.3f} ± {elbo.std() / np.sqrt(len(elbo)):.3f} nats "
          f"({len(x)} examples, {time.perf_counter() - t0:.1f} s)")
    if K:
        x = x[:ll_examples] if ll_examples else x
        t0 = time.perf_counter()
        if client is None:
            estimate = model.log_likelihood(x, K=K, seed=seed, out=out, stats=True)
        else:
            from .distributed import log_likelihood
            estimate = log_likelihood(model, x, K=K, seed=seed, client=client, out=out,
                                      stats=True)
        _print_estimate(estimate, time.perf_counter() - t0, out)


def _print_estimate(estimate, seconds, out):
    """The log-likelihood with its standard error, the weights' ESS and the active units."""
    from .eval import ACTIVE_UNIT_THRESHOLD
    s = estimate.summary()
    n, K = s["examples"], s["K"]
    print(f"test log p(x) (IWAE, K={K}): {s['log_likelihood']:.3f} ± {s['sem']:.3f} nats "
          f"(standard error; {n} examples, {seconds:.1f} s, {n * K / seconds:,.0f} pairs/s)")
    print(f"importance weights: effective sample size median {s['ess_median']:.1f} of K={K}, "
          f"min {s['ess_min']:.1f}; {s['ess_below_1_percent_of_K']} of {n} examples below 1% "
          f"of K")
    print(f"active latent units: {s['active_units']} of {s['latent_dim']} (Var_x E_q[z_u] > "
          f"{ACTIVE_UNIT_THRESHOLD:g})")
    if out:
        print(f"per-example log p(x): {out} ({n} float64 values, .npy)")


def _model_for_training(args, dataset):
    """The model to train: resumed from --out (with --resume, if it exists), else a new one.

    A resumed model keeps the checkpoint's architecture: --hidden/--latent/--likelihood/
    --activation may be omitted, and one given that contradicts the checkpoint is a ValueError,
    as is --data of another width. A new model gets NEW_MODEL's value for each flag not given.
    Afterwards args.hidden/latent/likelihood/activation hold the model's effective values, so the
    rest of cmd_train (e.g. whether --binarize applies) sees the architecture actually trained.
    """
    from .model import VAE
    width = dataset.x_train.shape[1]
    if args.resume and os.path.exists(args.out):
        model = VAE.load(args.out)
        stored = dict(hidden=None if model.hidden_dims is None else list(model.hidden_dims),
                      latent=model.latent_dim, likelihood=model.likelihood,
                      activation=model.activation)
        for flag, value in stored.items():
            given = getattr(args, flag)
            if given is not None and value is None:   # not expressible as one flag
                raise ValueError(f"--{flag} cannot describe the checkpoint {args.out}: {model}; "
                                 f"drop --{flag} to resume it")
            if given is not None and given != value:
                shown, saved = (" ".join(map(str, v)) or "(no widths)" if flag == "hidden"
                                else v for v in (given, value))
                raise ValueError(
                    f"--{flag} {shown} contradicts the checkpoint {args.out}, which has --{flag} "
                    f"{saved}; drop --{flag} to resume it, or train a new model with another "
                    f"--out")
        if width != model.input_dim:
            raise ValueError(f"--data {args.data} has {width} columns but the checkpoint "
                             f"{args.out} was trained on {model.input_dim}-column data; resume it "
                             f"on the data it was trained on, or train a new model with another "
                             f"--out")
        print(f"resuming {model} from {args.out} after epoch {len(model.history)}")
    else:
        arch = {flag: default if getattr(args, flag) is None else getattr(args, flag)
                for flag, default in NEW_MODEL.items()}
        model = VAE(width, tuple(arch["hidden"]), arch["latent"], arch["likelihood"],
                    arch["activation"], seed=args.seed)
        print(f"model: {model}")
    args.hidden = None if model.hidden_dims is None else list(model.hidden_dims)
    args.latent = model.latent_dim
    args.likelihood, args.activation = model.likelihood, model.activation
    return model


def _resume_command(args):
    """The command line that continues this training run: its options that differ from the
    defaults, with --resume and --out."""
    import shlex
    defaults = vars(_parser().parse_args(["train"]))
    words = ["fastvae"] + (["--threads", str(args.threads)] if args.threads else []) + ["train"]
    for dest, value in vars(args).items():
        if dest in ("command", "threads", "resume", "out") or value == defaults.get(dest):
            continue
        words += [f"--{dest.replace('_', '-')}", *map(str, value if isinstance(value, list)
                                                     else [value])]
    return shlex.join(words + ["--resume", "--out", args.out])


def cmd_train(args):
    """Train (or, with --resume, continue) a model; -> the exit code. SIGINT/SIGTERM stop
    training at a step boundary with the checkpoint written, and print the resuming command."""
    from .train import TrainingInterrupted
    resume = _resume_command(args)
    dataset = _load_data(args.data)
    model = _model_for_training(args, dataset)
    binarize = None if args.binarize == "none" or args.likelihood != "bernoulli" \
        else args.binarize
    try:
        history = model.fit(dataset.x_train, total_epochs=args.epochs,
                            batch_size=args.batch_size, lr=args.lr,
                            validation_data=dataset.x_test, beta=args.beta,
                            warmup_epochs=args.warmup, binarize=binarize, k=args.k,
                            objective=args.objective, seed=args.seed,
                            early_stopping_patience=args.patience, checkpoint=args.out,
                            checkpoint_every=args.checkpoint_every, progress=True)
    except TrainingInterrupted as e:
        print(f"fastvae train: {e}. Resume with: {resume}", file=sys.stderr)
        return EXIT_TERMINATED if e.signal_name == "SIGTERM" else EXIT_INTERRUPTED
    for h in history:
        print(f"epoch {h['epoch']:3d}  loss {h['loss']:9.3f}  val ELBO "
              f"{h['val_elbo'] if h['val_elbo'] is None else round(h['val_elbo'], 3)}  "
              f"{h['samples_per_s']:8.0f} samples/s")
    print(f"checkpoint: {args.out}")
    x_test = _test_set(dataset, model, args.seed)
    _report(model, x_test, args.K, args.seed, args.eval_examples)
    if args.figures:
        _write_figures(model, x_test, args.figures)


def cmd_evaluate(args):
    from .model import VAE
    _check_report_options(args.K, args.examples, "--examples")
    if args.out and not args.K:
        raise ValueError("--out holds the per-example log p(x): it needs --K >= 1")
    model = VAE.load(args.checkpoint)
    x = _test_set(_load_data(args.data), model, args.seed)
    if not args.scheduler:
        _report(model, x, args.K, args.seed, args.examples, out=args.out)
        return
    with _dask_client(args.scheduler) as client:
        _report(model, x, args.K, args.seed, args.examples, client, args.out)


DASK_CONNECT_TIMEOUT = "5s"   # Dask's default (30 s) made a refused connection wait 30 s


def _dask_client(address, timeout=None):
    """A dask.distributed Client connected to the scheduler at address; ValueError saying
    whether the connection was refused, the host unknown, or no answer came within timeout
    (default DASK_CONNECT_TIMEOUT; Dask retries a refused connection until then)."""
    timeout = DASK_CONNECT_TIMEOUT if timeout is None else timeout
    try:
        from dask.distributed import Client
    except ImportError:
        raise ImportError("--scheduler needs Dask: pip install 'fastvae[distributed]'") from None
    _probe_tcp(address, timeout)
    try:
        client = Client(address, timeout=timeout)
    except OSError as e:   # refused, timed out, unknown host
        raise ValueError(f"cannot reach the Dask scheduler at {address}: "
                         f"{_connect_failure(e, timeout)}") from None
    threads = client.nthreads()
    print(f"dask: {address}, {len(threads)} workers, {sum(threads.values())} threads")
    return client


def _probe_tcp(address, timeout):
    """For a tcp:// (or bare host:port) address, one plain TCP connection first: a refusal or an
    unknown host is then reported at once, whatever Dask's retry loop would have made of it on a
    busy machine (it reported a refusal as "timed out" there)."""
    import socket
    import urllib.parse
    url = urllib.parse.urlsplit(address if "://" in address else f"tcp://{address}")
    if url.scheme != "tcp" or not url.hostname or url.port is None:
        return                                   # tls://, inproc://, ...: Dask alone decides
    from dask.utils import parse_timedelta
    try:
        socket.create_connection((url.hostname, url.port), timeout=parse_timedelta(timeout)).close()
    except OSError as e:
        raise ValueError(f"cannot reach the Dask scheduler at {address}: "
                         f"{_connect_failure(e, timeout)}") from None


def _connect_failure(error, timeout):
    """Why a Dask connection failed. Dask retries a refused connection until its timeout and
    then raises "Timed out trying to connect"; the refusal is in the exception's chain."""
    import socket
    chain, e = [], error
    while e is not None and not any(e is seen for seen in chain):
        chain.append(e)
        e = e.__cause__ or e.__context__
    if any(isinstance(e, ConnectionRefusedError) or "refused" in str(e).lower() for e in chain):
        return ("connection refused: nothing listens at that address (is the scheduler "
                "running, and is the port right?)")
    if any(isinstance(e, socket.gaierror) for e in chain):
        return f"unknown host ({error})"
    return f"timed out: no answer within {timeout} ({error})"


def _write_figures(model, x, out_dir):
    from . import figures
    recon = os.path.join(out_dir, "reconstructions_and_samples.png")
    figures.reconstructions_and_samples(model, x, recon)
    written = [recon]
    if model.history:
        curve = os.path.join(out_dir, "training_curves.png")
        figures.training_curves(model.history, curve)
        written.append(curve)
    print("figures: " + ", ".join(written))


def cmd_figures(args):
    from .model import VAE
    model = VAE.load(args.checkpoint)
    _write_figures(model, _test_set(_load_data(args.data), model, 0), args.out_dir)


def cmd_sample(args):
    from . import figures
    from .model import VAE
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if not 0 <= args.seed < 2 ** 64:
        raise ValueError(f"--seed must be in [0, 2^64), got {args.seed}")
    figures.sample_grid(VAE.load(args.checkpoint), args.out, n=args.n, seed=args.seed)
    print(f"samples: {args.out}")


def cmd_bench(args):
    from .bench import run_suite
    run_suite(args)


def _set_threads(n):
    """--threads N: ``fastvae.set_num_threads`` (fastvae/_threads.py: the pool that runs
    training and evaluation, and Numba's threads for the row-parallel kernels of fastvae.ops)."""
    from ._threads import set_num_threads
    set_num_threads(n)   # ValueError (a usage error) unless n is a positive int


def main(argv=None):
    """Run one command; -> its exit code. An expected failure prints one line,
    ``fastvae <command>: error: <message>``, and returns its EXIT_* code; an unexpected exception
    (a bug) prints its traceback and returns EXIT_BUG."""
    args = _parser().parse_args(argv)
    commands = {"train": cmd_train, "evaluate": cmd_evaluate, "figures": cmd_figures,
                "sample": cmd_sample, "bench": cmd_bench}
    try:
        if args.threads is not None:
            _set_threads(args.threads)
        code = commands[args.command](args)
    except BaseException as e:   # noqa: B036 - KeyboardInterrupt too; re-raises what it can't map
        code, message = _failure(e, args)
        if code is None:
            raise
        if code == EXIT_BUG:
            import traceback
            traceback.print_exc()
        print(f"fastvae {args.command}: error: {' '.join(message.split())}", file=sys.stderr)
        return code
    return EXIT_OK if code is None else code


def _failure(e, args):
    """-> (exit code, one-line message) for an exception escaping a command; (None, None) for
    those main lets through (SystemExit, GeneratorExit)."""
    if isinstance(e, KeyboardInterrupt):   # TrainingInterrupted, or Ctrl-C outside training
        sigterm = getattr(e, "signal_name", None) == "SIGTERM"
        where = getattr(e, "checkpoint", None)
        return (EXIT_TERMINATED if sigterm else EXIT_INTERRUPTED,
                f"interrupted by {'SIGTERM' if sigterm else 'SIGINT (Ctrl-C)'}" +
                (f"; the checkpoint {where} was written: continue with --resume" if where else ""))
    if not isinstance(e, Exception):
        return None, None
    if isinstance(e, FileNotFoundError):
        return EXIT_USAGE, (f"{e.filename}: no such file or directory" if e.filename else str(e))
    if isinstance(e, (ValueError, ImportError)):
        return EXIT_USAGE, str(e)
    from .train import TrainingDiverged
    if isinstance(e, TrainingDiverged):
        out = getattr(args, "out", None)
        lr = getattr(args, "lr", None)
        keep = f"The checkpoint {out} keeps the last good parameters" if out else \
            "The last good parameters are kept"
        return EXIT_DIVERGED, (f"{e} {keep}: rerun with --resume and a smaller --lr (this run: "
                               f"--lr {lr:g})." if lr else f"{e} {keep}.")
    if isinstance(e, OSError):
        return EXIT_IO, _os_error(e, args)
    return EXIT_BUG, (f"unexpected {type(e).__name__} (a bug in fastvae; the traceback is "
                      f"above, please report it): {e}")


_CAUSES = {"ENOSPC": "disk full", "EDQUOT": "disk quota exceeded", "EACCES": "permission denied",
           "EPERM": "permission denied", "EROFS": "read-only file system",
           "EISDIR": "is a folder", "ENOTDIR": "a parent is not a folder",
           "ENAMETOOLONG": "name too long", "EIO": "input/output error"}


def _os_error(e, args):
    """'<path>: <cause> (<strerror>); <what to do>' for an OSError (not FileNotFoundError)."""
    import errno
    name = errno.errorcode.get(e.errno, "")
    cause = _CAUSES.get(name) or (e.strerror or str(e) or type(e).__name__).lower()
    if e.strerror and e.strerror.lower() != cause:
        cause += f" ({e.strerror})"
    out = {"train": "--out", "sample": "--out", "figures": "--out-dir"}.get(args.command)
    target = getattr(args, out[2:].replace("-", "_")) if out else None
    if e.filename is not None:
        path = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 is not None else "")
    elif target is not None:
        path = f"writing {out} {target}"
    else:
        path = "I/O"
    advice = {"ENOSPC": "free some space", "EDQUOT": "free some space",
              "EACCES": "check the permissions", "EPERM": "check the permissions",
              "EROFS": "write somewhere writable"}.get(name, "check the path")
    writing = target is not None and (e.filename is None or _near(e.filename, target))
    return f"{path}: {cause}; {advice}" + (f" or choose another {out}" if writing else "")


def _near(filename, target):
    """Whether filename is target, beside it (its temporary file) or inside it (--out-dir)."""
    f, t = os.path.abspath(os.fsdecode(filename)), os.path.abspath(os.fsdecode(target))
    return t in (f, os.path.dirname(f)) or os.path.dirname(f) == os.path.dirname(t) or \
        t.startswith(f + os.sep)


if __name__ == "__main__":
    sys.exit(main())
