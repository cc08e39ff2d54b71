#!/usr/bin/env bash
# Fetch, here, the wheels scripts/gpu_check.sh needs on a bare GPU machine (Python 3.12, x86-64),
# which has torch, einops and PyYAML but not DeepSpeed or Hydra: DeepSpeed (pure Python), Hydra and
# OmegaConf (`ardscale.config` imports them) and the packages they import that the machine lacks.
# They land in .whl/ (ignored by git); carry it with the run.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLAT[@]}" -d .whl hjson==3.1.0 pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 \
  typing-inspection==0.4.2 hydra-core==1.3.8 omegaconf==2.3.1
# antlr4 4.9.3 (the version OmegaConf 2.3 pins) is source only on PyPI; its wheel is pure Python.
python3 -m pip wheel --quiet --no-deps -w .whl antlr4-python3-runtime==4.9.3
# PyPI has DeepSpeed as source only; built without its C++ ops (DS_BUILD_OPS=0) it is pure Python.
DS_BUILD_OPS=0 python3 -m pip wheel --quiet --no-deps --no-build-isolation -w .whl deepspeed==0.19.8
ls .whl
