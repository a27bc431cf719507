#!/usr/bin/env bash
# The model on a GPU (H100/H200): seconds per step, samples/s and model FLOPs utilisation of
# the medium preset at Europe's 153 x 321 cells, both backbones, bf16 autocast, FlashAttention
# / memory-efficient attention through scaled_dot_product_attention, with and without
# torch.compile, and activation checkpointing against none (memory and step time ratios);
# the training loader (4 workers, pinned memory) beside each. One short run (~6 min with the
# install); figures to $OUT (or ./bench-gpu).
#
#   bash benchmarks/gpu_model.sh            # on a GPU node, from the repository root
#
# Needs a CUDA build of PyTorch 2.13 (envs/train.yaml on Snellius; elsewhere the venv's).
set -euo pipefail
out=${OUT:-bench-gpu}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
common=(--device cuda --bf16 --grid 153x321 --steps 10 --loader-batches 4 --workers 4)
for bs in 1 4; do
  bfm bench model --presets medium --backbones swin3d mvit --batch-size "$bs" "${common[@]}" \
    --json "$out/medium_b${bs}.json" 2>&1 | tee "$out/medium_b${bs}.log"
done
bfm bench model --presets medium --backbones swin3d mvit --batch-size 4 --compile \
  "${common[@]}" --json "$out/medium_b4_compiled.json" 2>&1 | tee "$out/medium_b4_compiled.log"
bfm bench model --presets medium --backbones swin3d mvit --batch-size 4 \
  --activation-checkpointing both --loader-batches 0 --device cuda --bf16 --grid 153x321 \
  --steps 5 --json "$out/medium_b4_checkpointing.json" 2>&1 | tee "$out/medium_b4_checkpointing.log"
