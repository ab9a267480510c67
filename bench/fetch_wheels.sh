#!/usr/bin/env bash
# Download the wheels that bench/gpu_check.sh installs on a GPU machine without a package index, into bench/wheels/
# (ignored by git: never commit wheels; the device tool must carry that folder: carry=["bench/wheels"]).
#
#   bench/fetch_wheels.sh
#
# FlashRNN is pure Python (its CUDA code is built on first use with the machine's nvcc and ninja). Its other needs,
# torch, triton, einops, ninja, filelock and packaging, are on the GPU image already (checked with `pip show`
# there by gpu_check.sh's --list line: a missing one makes the flashrnn rows errors that name it).
set -euo pipefail
cd "$(dirname "$0")"
FLASHRNN_VERSION=$(python3 -c 'import re, pathlib; print(re.search(r"FLASHRNN_VERSION = \"(.+?)\"", pathlib.Path("providers.py").read_text()).group(1))')
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest wheels "flashrnn==$FLASHRNN_VERSION"
ls -l wheels
