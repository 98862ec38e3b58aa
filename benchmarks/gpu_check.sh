#!/usr/bin/env bash
# The GPU check: one command, on a CUDA machine, under 8 minutes (not a test).
#
#   bash benchmarks/gpu_check.sh            # on a CUDA machine: runs every check, one line per figure
#   bash benchmarks/gpu_check.sh --dry-run  # anywhere: checks that every command parses, runs nothing heavy
#
# 1. NCCL: a 1-process NCCL group through CRaFT's L_ret reduction (modeling_craft._mean_over_processes).
# 2. Full-size SmolVLA (~450M parameters, VLM trainable, random weights) in stock lerobot-train,
#    bf16 autocast: craft steps against plain steps, time ratio and peak GPU memory
#    (benchmarks/full_size.py). pi0_fast is not covered: its PaliGemma and FAST tokenizers come
#    from the Hub, which this check cannot reach (a full-size tokenizer cannot be built offline).
# 3. `craft build-cache --device=cuda --dtype=bfloat16` throughput against a bare teacher loop
#    (benchmarks/cache_build.py).
# 4. `craft eval-mcq --device=cuda` scoring: shared prefix against naive (benchmarks/mcq_speed.py).
#
# The environment is the project's (scripts/craft-env.sh); nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=""
if [[ "${1:-}" == "--dry-run" ]]; then DRY="--dry-run"; fi
PY="${PYTHON:-$(scripts/craft-env.sh ensure)/bin/python}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
DEVICE=cuda
if [[ -n "$DRY" ]]; then DEVICE=cpu; fi
start=$(date +%s)

echo "== 1. NCCL reduction"
"$PY" - "$DRY" <<'EOF'
import os, sys
import torch
import torch.distributed as dist
from craft_plugin.policies.craft.modeling_craft import _mean_over_processes, reduction_device

if sys.argv[1] == "--dry-run":
    assert reduction_device("nccl", torch.device("cuda:0")) == torch.device("cuda:0")
    print(f"nccl reduction: dry run ok (nccl available here: {dist.is_nccl_available()})")
    raise SystemExit(0)
os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("MASTER_PORT", "29655")
torch.cuda.set_device(0)
dist.init_process_group("nccl", rank=0, world_size=1)
value = _mean_over_processes(0.375, device="cuda:0")
dist.destroy_process_group()
assert value == 0.375, value
print(f"nccl reduction: ok (1-process NCCL group on {torch.cuda.get_device_name(0)}, mean 0.375 -> {value})")
EOF

echo "== 2. full-size SmolVLA, bf16: craft vs plain steps"
"$PY" benchmarks/full_size.py --device "$DEVICE" --bf16 --steps 6 --warmup 2 --batch-size 8 $DRY | grep -E "machine|SmolVLA|step|ratio|dry-run"

echo "== 3. craft build-cache on cuda, bf16, against a bare teacher loop"
"$PY" benchmarks/cache_build.py --device "$DEVICE" --dtype bfloat16 --anchors 256 --batch-size 32 --repeats 2 $DRY | grep -E "machine|anchors/s|ratio|dry-run"

echo "== 4. craft eval-mcq on cuda: shared prefix against naive"
"$PY" benchmarks/mcq_speed.py --device "$DEVICE" --questions 48 --repeats 3 $DRY | grep -E "machine|naive|shared|speed-up|dry-run"

echo "gpu_check: done in $(( $(date +%s) - start )) s${DRY:+ (dry run)}"
