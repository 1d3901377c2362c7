#!/usr/bin/env bash
# The main job: train the canonical 784-400-20 VAE on Fashion-MNIST (Debian's dataset package,
# installed here when this user may; otherwise scikit-learn's bundled 8x8 digits), then print the
# test ELBO and the importance-weighted log-likelihood and write the figures to runs/.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ] && [ -z "${FASTVAE_DATA:-}" ]; then
  as_root=""
  [ "$(id -u)" = 0 ] || as_root="sudo -n"
  if { [ -z "$as_root" ] || sudo -n true 2>/dev/null; } && command -v apt-get >/dev/null; then
    $as_root apt-get update -qq && $as_root apt-get install -y -qq dataset-fashion-mnist \
      || echo "could not install dataset-fashion-mnist; falling back to the bundled digits"
  fi
fi

python3 -m venv .venv
.venv/bin/pip install -q -e ".[data]"
.venv/bin/fastvae train --data auto --hidden 400 --latent 20 --epochs "${EPOCHS:-10}" \
  --batch-size 128 --lr 1e-3 --binarize dynamic --seed 0 \
  --out runs/vae.npz --figures runs --K "${K:-5000}" --eval-examples "${EVAL_EXAMPLES:-1000}"
