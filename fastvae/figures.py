"""Figures people would rather look at than read: reconstructions, samples, training curves."""
import math
import os

import numpy as np


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def image_side(input_dim):
    """Images are square (28x28 Fashion-MNIST, 8x8 digits); other widths are drawn as strips."""
    side = int(round(math.sqrt(input_dim)))
    return (side, side) if side * side == input_dim else (1, input_dim)


def _tile(images, n_cols, shape):
    """images (n, D) -> one (rows*h, n_cols*w) mosaic with 1-pixel gaps."""
    h, w = shape
    n_rows = math.ceil(len(images) / n_cols)
    mosaic = np.ones((n_rows * (h + 1) - 1, n_cols * (w + 1) - 1), dtype=np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, n_cols)
        mosaic[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = img.reshape(h, w)
    return mosaic


def reconstructions_and_samples(model, x, path, n=16, seed=0):
    """PNG: row 1 originals, row 2 their reconstructions, rows 3-4 samples from the prior.
    ``model.reconstruct`` checks the first n rows of x before anything is drawn (ValueError
    naming the row for NaN/Inf, or values outside [0, 1] for a Bernoulli model): the picture's
    clipping would hide them."""
    plt = _pyplot()
    x = np.asarray(x[:n], dtype=np.float32)
    recon = model.reconstruct(x)
    samples = model.sample(2 * len(x), seed=seed)
    shape = image_side(model.input_dim)
    fig, axes = plt.subplots(3, 1, figsize=(max(6, len(x) * 0.6), 5.5),
                             gridspec_kw={"height_ratios": [1, 1, 2]})
    for ax, imgs, title in zip(axes, (x, recon, samples),
                               ("data", "reconstruction (decoder mean of mu)",
                                "samples from the prior")):
        ax.imshow(_tile(np.clip(imgs, 0, 1), len(x), shape), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(repr(model), fontsize=8)
    _save(fig, path)


def sample_grid(model, path, n=64, seed=0):
    """PNG: a square grid of n samples from the prior."""
    plt = _pyplot()
    images = np.clip(model.sample(n, seed=seed), 0, 1)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(_tile(images, math.ceil(math.sqrt(n)), image_side(model.input_dim)), cmap="gray",
              vmin=0, vmax=1)
    ax.axis("off")
    _save(fig, path)


def training_curves(history, path):
    """PNG: training loss (negative ELBO) and validation ELBO per epoch, and throughput."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_rate) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(epochs, [-h["loss"] for h in history], "o-", label="train ELBO (mean)")
    val = [(h["epoch"], h["val_elbo"]) for h in history if h.get("val_elbo") is not None]
    if val:
        ax_loss.plot(*zip(*val), "s-", label="validation ELBO")
    ax_loss.set(xlabel="epoch", ylabel="nats per example", title="ELBO")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_rate.bar(epochs, [h["samples_per_s"] for h in history])
    ax_rate.set(xlabel="epoch", ylabel="samples / s", title="training throughput")
    _save(fig, path)


def _save(fig, path):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
