#!/usr/bin/env bash
# One GPU check in at most 8 minutes: the JDM train-step rows per fast-path switch (`small`, 128 px),
# `nnaug synthesize` throughput by batch size, and a few minutes of real `small` training at 128 px on
# Kvasir-SEG, each printing samples/s, peak memory and (train step) MFU. Tables go into the issue note.
#
#   bash benchmarks/gpu_check.sh                    # on a GPU machine with nnaug installed
#   bash benchmarks/gpu_check.sh --dry-run          # anywhere: every part at toy size, to know the script works
#
# Needs: nnaug importable (pip install -e .), the Kvasir-SEG folder at $NNAUG_SHARED_DATA/kvasir-seg-1000
# (default ../shared/data), and for the timed run a CUDA device. Output: stdout, and the same in $OUT/ if set.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
DATA=${NNAUG_SHARED_DATA:-$(cd .. && pwd)/shared/data}/kvasir-seg-1000
WORK=$(mktemp -d)
export nnUNet_raw=$WORK/raw nnUNet_preprocessed=$WORK/preprocessed nnUNet_results=$WORK/results PYTHONUNBUFFERED=1
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"
LOG=${OUT:-$WORK}/gpu_check.log
say() { echo; echo "== $* ($(date +%T))" | tee -a "$LOG"; }

if [ $DRY = 1 ]; then
  STEP_ARGS="--preset tiny --steps 1 --rounds 1 --warmup 0 --settings fp32,channels-last"
  SYNTH_ARGS="--preset tiny --batch-sizes 1,2 --cases 2 --steps 2"
  TRAIN_ARGS="--preset small --resolution 32 --channels 64,64 --attention-resolutions 16 --batch-size 2 --steps 2 --cpu"
  SPLIT=train=8,rest=rest; SIZE=32; TRAIN_SECONDS=120
else
  python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device (use --dry-run on a CPU)')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$LOG"
  STEP_ARGS="--preset small --steps 10 --rounds 3 --warmup 3 --settings fp32,bf16,tf32,channels-last,fused-adamw,all"
  SYNTH_ARGS="--preset small --batch-sizes 8,64,256 --cases 256 --steps 25"
  TRAIN_ARGS="--preset small --mixed-precision bf16 --tf32 --steps 100000 --checkpoint-every 100000"
  SPLIT=train=800,rest=rest; SIZE=128; TRAIN_SECONDS=150
fi

say "1/3 JDM train step per switch (nnaug vs a bare loop)"
timeout 200 python benchmarks/jdm_train_step.py $STEP_ARGS 2>&1 | tee -a "$LOG"

say "2/3 nnaug synthesize throughput by batch size"
timeout 100 python benchmarks/synthesize_throughput.py $SYNTH_ARGS 2>&1 | tee -a "$LOG"

say "3/3 train-generator small at $SIZE px on Kvasir-SEG for ${TRAIN_SECONDS}s"
nnaug convert "$DATA" -d 701 --name Kvasir --size $SIZE --labels background,polyp --split $SPLIT >/dev/null
MEM=$WORK/memory.csv
if [ $DRY = 0 ]; then nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 >"$MEM" & fi
start=$(date +%s.%N)
set +e
timeout $TRAIN_SECONDS nnaug train-generator 701 --model jdm $TRAIN_ARGS --output "$WORK/gen" >"$WORK/train.log" 2>&1
rc=$?
set -e
seconds=$(python -c "import time; print(time.time() - $start)")
[ $DRY = 0 ] && kill %1 2>/dev/null || true
case $rc in 0|124) ;; *) tail -20 "$WORK/train.log"; echo "gpu_check: training failed (exit $rc)"; exit 1 ;; esac
python - "$WORK/train.log" "$MEM" "$seconds" "$TRAIN_ARGS" <<'PY' | tee -a "$LOG"
import re, sys
from pathlib import Path
log, mem, seconds, args = Path(sys.argv[1]).read_text(), Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
steps = max([int(m) for m in re.findall(r"(\d+)/\d+ \[", log)] or [0])
batch = int(re.search(r"--batch-size (\d+)", args).group(1)) if "--batch-size" in args else 16
peak = max((int(x) for x in mem.read_text().split()), default=0) if mem.is_file() else 0
print(f"| steps in {seconds:.0f} s (incl. start-up) | steps/s | samples/s | peak GPU memory (MiB, nvidia-smi) |")
print("|---|---|---|---|")
print(f"| {steps} | {steps / seconds:.2f} | {steps * batch / seconds:.1f} | {peak or 'n/a'} |")
PY
say "done; log in $LOG"
rm -rf "$WORK/raw" "$WORK/preprocessed"
