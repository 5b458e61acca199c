#!/usr/bin/env bash
# One call of a lent GPU machine: train the moving-shapes CogVideoX model there within a time
# budget and bring it back as one tar (the machine returns at most 8 files) beside the log.
#
#   bash scripts/device-train-video.sh MINUTES [train_video options...]
#
# The machine has PyTorch, transformers and the rest but no diffusers, and nothing can be
# fetched there: the wheels travel in .whl (README, under "The moving-shapes world"). MINUTES
# covers the whole run; keep it a minute or two under the call's timeout for the install and tar.
#
# A call carries at most 64 MiB of working tree, and the shipped weights alone are about 114 MiB
# (a fresh training needs none of them). For the call's duration, untrack and ignore them, and
# name .whl in the call's carry:
#   git rm -r -q --cached assets/models && echo /assets/models/ >> .git/info/exclude
# and afterwards put them back as they were:
#   sed -i '\#^/assets/models/$#d' .git/info/exclude && git reset -q assets/models
set -euo pipefail
minutes=$1
shift
: "${OUT:?run this on the device machine, where OUT is set}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/log"
python3 -m studio.toyworld.train_video --device cuda --minutes "$minutes" --output /tmp/model "$@" 2>&1 \
    | tr '\r' '\n' | tee -a "$OUT/log"
tar -C /tmp -cf "$OUT/model.tar" model
