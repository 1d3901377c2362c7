"""fvt.reparameterize forward + backward against PyTorch's own ``mu + exp(0.5 logvar) *
randn_like(mu)`` in eager mode (issue 13, item 6): the fixed cost per call.

    .venv/bin/python benchmarks/dev/torch_overhead.py [--repeats 15] [--threads 2]

float32, mu and logvar leaves requiring grad, ``z.backward(dz)`` with a given dz. Contenders run
interleaved (A B A B ...) after a warm-up; each block times a batch of calls; the median block
(and min) in microseconds per call is printed. Also prints the pieces of fastvae's call (kernel
alone, no autograd) so the overhead can be read off.

2026-12-03, 2 shared AMD EPYC cores (load average 2.8 from other jobs), 21 blocks, medians:
  threads 1: (128, 20) pytorch 65.1 us, fastvae.torch 61.9 us (0.95x), kernels 18.1 us;
             (4096, 64) pytorch 1901 us, fastvae.torch 1075 us (0.57x), kernels 938 us.
  threads 2: (128, 20) pytorch 72.7 us, fastvae.torch 62.9 us (0.86x), kernels 19.2 us;
             (4096, 64) pytorch 1430 us, fastvae.torch 639 us (0.45x), kernels 473 us.
At (128, 20) the two Numba calls take ~9 us each with their launch (~4.8 us of it the kernel);
a Python autograd.Function with an empty forward and backward already costs ~42 us here (apply,
the engine's Python node, AccumulateGrad), and the argument checks ~2 us.
"""
import argparse
import os
import statistics
import time

import numpy as np
import torch

import fastvae
import fastvae.torch as fvt
from fastvae.cpu import reparam as cpu_reparam


def contenders(n, l):
    mu = torch.randn(n, l, requires_grad=True)
    logvar = torch.randn(n, l, requires_grad=True)
    dz = torch.randn(n, l)

    def pytorch():
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        z.backward(dz)

    def fastvae_torch():
        z = fvt.reparameterize(mu, logvar, 7, 1234)
        z.backward(dz)

    m, lv, d = mu.detach().numpy(), logvar.detach().numpy(), dz.numpy()

    def kernels_only():                 # the two Numba launchers, no torch, no checks
        cpu_reparam._forward_generated(m, lv, 7, 1234)
        cpu_reparam._backward_generated(d, lv, 7, 1234)

    return {"pytorch": pytorch, "fastvae.torch": fastvae_torch, "kernels only": kernels_only}


def block_us(fn, calls):
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, torch threads {torch.get_num_threads()}, float32, "
          f"load average before {os.getloadavg()[0]:.2f}")
    for n, l in [(128, 20), (4096, 64)]:
        fns = contenders(n, l)
        calls = 300 if n * l <= 5000 else 20
        for fn in fns.values():             # warm-up (Numba compile / cache load)
            block_us(fn, 3)
        print(f"({n}, {l}): fastvae threads {fastvae.num_threads()}, {calls} calls per block")
        times = {name: [] for name in fns}
        for _ in range(args.repeats):
            for name, fn in fns.items():
                times[name].append(block_us(fn, calls))
        for name, ts in times.items():
            print(f"  {name:14s} median {statistics.median(ts):8.1f} us   min {min(ts):8.1f} us")
        ratio = statistics.median(times["fastvae.torch"]) / statistics.median(times["pytorch"])
        print(f"  fastvae.torch / pytorch (medians): {ratio:.2f}")
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
