"""Every number a model run produces, saved for a byte-for-byte comparison of two checkouts:
training (2 epochs, Bernoulli with dynamic binarization and Gaussian, 50-40-30-5 tanh, float32),
Adam's moments, the ELBO (k=3), the log-likelihood (K=70 in chunks of 500 pairs), encode/decode,
and one explicit ELBO and IWAE step's gradients.

    PYTHONPATH=<checkout> python benchmarks/dev/model_bits.py out.npz   # twice: the second run
    # loads Numba's cache (fresh-compiled code may round differently, numba#10617)

Used for issue 15: c413666 against 6e5b8c8, 76 arrays, all byte-identical.
"""
import sys, numpy as np
import fastvae as fv
out = {}
rng = np.random.default_rng(0)
for lik in ("bernoulli", "gaussian"):
    x = rng.random((300, 50)).astype(np.float32)
    if lik == "gaussian":
        x = x * 4 - 2
    m = fv.VAE(50, (40, 30), 5, lik, "tanh", seed=3)
    h = m.fit(x, epochs=2, batch_size=32, lr=3e-3, seed=1, progress=False,
              validation_data=x[:40], **({"binarize": "dynamic"} if lik == "bernoulli" else {}))
    out[f"{lik}_params"] = m.params.flat.copy()
    out[f"{lik}_m"] = m.optimizer_state.m.copy()
    out[f"{lik}_loss"] = np.array([r["loss"] for r in h])
    out[f"{lik}_elbo"] = m.elbo(x[:100], k=3, seed=2)
    out[f"{lik}_ll"] = m.log_likelihood(x[:60], K=70, seed=4, max_pairs=500, progress=False)
    mu, lv = m.encode(x[:50]); out[f"{lik}_mu"] = mu; out[f"{lik}_dec"] = m.decode(mu)
    eps = np.random.default_rng(5).standard_normal((20, 3, 5))
    for obj in ("elbo", "iwae"):
        loss, g = m.loss_and_grads(x[:20], eps, objective=obj)
        out[f"{lik}_{obj}_loss"] = np.array([loss])
        for n in g: out[f"{lik}_{obj}_{n}"] = g[n]
np.savez(sys.argv[1], **out)
