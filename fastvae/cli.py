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

# Exit codes: one per kind of expected failure, so scripts can tell them apart.
EXIT_OK = 0
EXIT_BUG = 1             # an unexpected exception: a traceback is printed (please report it)
EXIT_USAGE = 2           # bad option, bad or missing input file, bad checkpoint (argparse uses 2)
EXIT_DIVERGED = 3        # TrainingDiverged: the last good parameters are in the checkpoint
EXIT_IO = 4              # OSError writing output: unwritable folder, disk full
EXIT_INTERRUPTED = 130   # SIGINT (Ctrl-C): stopped at a step boundary, checkpoint written
EXIT_TERMINATED = 143    # SIGTERM: likewise (128 + signal number, as shells report it)


def _add_data(p):
    p.add_argument("--data", default="auto",
                   help="fashion-mnist, digits, auto (Fashion-MNIST if installed, else digits), "
                        "or a path to .npy/.npz/IDX rows in [0, 1] (default: auto)")


def _parser():
    parser = argparse.ArgumentParser(prog="fastvae", description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, help="CPU threads for the kernels")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a VAE and write a checkpoint")
    _add_data(t)
    t.add_argument("--hidden", type=int, nargs="*", default=[400], help="hidden widths")
    t.add_argument("--latent", type=int, default=20)
    t.add_argument("--likelihood", choices=("bernoulli", "gaussian"), default="bernoulli")
    t.add_argument("--activation", default="relu",
                   choices=("relu", "tanh", "softplus", "sigmoid", "identity"))
    t.add_argument("--epochs", type=int, default=10, help="total epochs (default 10)")
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
    t.add_argument("--figures", metavar="DIR", help="write PNG figures here after training")
    t.add_argument("--K", type=int, default=0,
                   help="after training, also estimate log p(x) with K samples (0: skip)")
    t.add_argument("--eval-examples", type=int, default=1000,
                   help="test examples for the log-likelihood estimate")

    e = sub.add_parser("evaluate", help="test ELBO and importance-weighted log-likelihood")
    e.add_argument("checkpoint")
    _add_data(e)
    e.add_argument("--K", type=int, default=5000, help="importance samples (default 5000)")
    e.add_argument("--examples", type=int,
                   help="log-likelihood on the first N test examples only (ELBO uses all)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--scheduler", metavar="ADDRESS",
                   help="estimate log p(x) on the Dask cluster of this scheduler, e.g. "
                        "tcp://host:8786 (pip install 'fastvae[distributed]')")

    f = sub.add_parser("figures", help="PNG grids of reconstructions and samples, and curves")
    f.add_argument("checkpoint")
    _add_data(f)
    f.add_argument("--out-dir", default="runs")

    s = sub.add_parser("sample", help="a PNG grid of samples from the prior")
    s.add_argument("checkpoint")
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="runs/samples.png")

    from .bench import add_arguments as add_bench_arguments   # no NumPy: workers set threads
    add_bench_arguments(sub.add_parser(
        "bench", help="benchmark suite against PyTorch and JAX: table, JSON, figure "
                      "(peers: pip install 'fastvae[bench]')"))
    return parser


def _load_data(name):
    from .data import load_dataset
    dataset = load_dataset(name)
    print(f"data: {dataset.name} ({dataset.source}): {dataset.x_train.shape[0]} train, "
          f"{dataset.x_test.shape[0]} test, {dataset.x_train.shape[1]} dims")
    return dataset


def _test_set(dataset, model, seed):
    """Test rows as the model sees them: a fixed binarization for Bernoulli models."""
    from .data import binarize
    x = dataset.x_test
    return binarize(x, np.random.default_rng([seed, 7, 1])) if model.likelihood == "bernoulli" \
        else x


def _report(model, x, K, seed, ll_examples=None, client=None):
    """Print the test ELBO on all of x and the IWAE log-likelihood on its first ll_examples
    (on the Dask cluster of client, if given)."""
    t0 = time.perf_counter()
    elbo = model.elbo(x, seed=seed)
    print(f"test ELBO: {elbo.mean():.3f} ± {elbo.std() / np.sqrt(len(elbo)):.3f} nats "
          f"({len(x)} examples, {time.perf_counter() - t0:.1f} s)")
    if K:
        x = x[:ll_examples] if ll_examples else x
        t0 = time.perf_counter()
        if client is None:
            ll = model.log_likelihood(x, K=K, seed=seed)
        else:
            from .distributed import log_likelihood
            ll = client.compute(log_likelihood(model, x, K=K, seed=seed, client=client)).result()
        seconds = time.perf_counter() - t0
        print(f"test log p(x) (IWAE, K={K}): {ll.mean():.3f} ± "
              f"{ll.std() / np.sqrt(len(ll)):.3f} nats ({len(x)} examples, {seconds:.1f} s, "
              f"{len(x) * K / seconds:,.0f} pairs/s)")


def _model_for_training(args, dataset):
    """The model to train: resumed from --out (with --resume, if it exists), else a new one."""
    from .model import VAE
    if args.resume and os.path.exists(args.out):
        model = VAE.load(args.out)
        print(f"resuming {model} from {args.out} after epoch {len(model.history)}")
    else:
        model = VAE(dataset.x_train.shape[1], tuple(args.hidden), args.latent, args.likelihood,
                    args.activation, seed=args.seed)
        print(f"model: {model}")
    return model


def cmd_train(args):
    dataset = _load_data(args.data)
    model = _model_for_training(args, dataset)
    binarize = None if args.binarize == "none" or args.likelihood != "bernoulli" \
        else args.binarize
    history = model.fit(dataset.x_train, epochs=args.epochs, batch_size=args.batch_size,
                        lr=args.lr, validation_data=dataset.x_test, beta=args.beta,
                        warmup_epochs=args.warmup, binarize=binarize, k=args.k,
                        objective=args.objective, seed=args.seed,
                        early_stopping_patience=args.patience, checkpoint=args.out,
                        progress=True)
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
    model = VAE.load(args.checkpoint)
    x = _test_set(_load_data(args.data), model, args.seed)
    if not args.scheduler:
        _report(model, x, args.K, args.seed, args.examples)
        return
    with _dask_client(args.scheduler) as client:
        _report(model, x, args.K, args.seed, args.examples, client)


def _dask_client(address):
    """A dask.distributed Client connected to the scheduler at address."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise ImportError("--scheduler needs Dask: pip install 'fastvae[distributed]'") from None
    try:
        client = Client(address)
    except OSError as e:   # refused, timed out, unknown host
        raise ValueError(f"cannot reach the Dask scheduler at {address}: {e}") from None
    threads = client.nthreads()
    print(f"dask: {address}, {len(threads)} workers, {sum(threads.values())} threads")
    return client


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
    figures.sample_grid(VAE.load(args.checkpoint), args.out, n=args.n, seed=args.seed)
    print(f"samples: {args.out}")


def cmd_bench(args):
    from .bench import run_suite
    run_suite(args)


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.threads:
        import numba
        numba.set_num_threads(args.threads)
    commands = {"train": cmd_train, "evaluate": cmd_evaluate, "figures": cmd_figures,
                "sample": cmd_sample, "bench": cmd_bench}
    try:
        commands[args.command](args)
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"fastvae {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
