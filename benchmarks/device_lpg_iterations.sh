#!/bin/bash
# Does the bench LPG gain from more training iterations? Trains the bench preset twice, at once on
# one device: as is (6 x 300 iterations) and with 4x the iterations (12 x 600), each stopped
# BUDGET_S - 130 s after the start at the latest, then scans and evaluates `detection_test`. Also
# runs a tiny 2-round harvest on the device. Written for a lent GPU machine (16 cores):
#   bash benchmarks/device_lpg_iterations.sh bench cuda 550      # results in $OUT/summary.txt
# `tiny cpu 400` is the quick dry run of the same script.
set -u
SIZE=$1; DEV=$2; BUDGET=$3
export PYTHONUNBUFFERED=1
T0=$(date +%s)
OUT=${OUT:-/tmp/lpg_iterations_out}; mkdir -p "$OUT"
W=/tmp/lpg_iterations; rm -rf $W; mkdir -p $W
S=$OUT/summary.txt
say() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$S"; }
if [ -d .whl ]; then  # wheels the device image lacks (monai, nibabel, pydicom)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
PY=${PY:-python3}
LH="$PY -m lesion_harvester.cli.main"
$PY - "$SIZE" $W <<'PYEOF'
import sys, yaml
from importlib import resources
size, out = sys.argv[1:]
for name, epochs, iters in (("x1", None, None), ("x4", 12, 600)):
    d = yaml.safe_load(resources.files("lesion_harvester.configs").joinpath(f"{size}.yaml").read_text())
    d["name"] = f"{size}_{name}"
    d["lpg_train"]["loader_workers"] = 6
    if epochs:
        d["lpg_train"]["epochs"], d["lpg_train"]["iters_per_epoch"] = epochs, iters
    yaml.safe_dump(d, open(f"{out}/{size}_{name}.yaml", "w"), sort_keys=False)
PYEOF
(nproc; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null) | tee -a "$S"
( $LH synth $W/tiny --preset tiny --seed 11 && $LH harvest $W/tiny --out $W/tiny_run --preset tiny --rounds 2 --device "$DEV" \
  && cp $W/tiny_run/report.json "$OUT/tiny_report.json" ) > $W/tiny.log 2>&1 &
TINY=$!
say "synth $SIZE"
$LH synth $W/b --preset "$SIZE" --seed 0 --workers $(( $(nproc) - 2 )) > $W/synth.log 2>&1 || tail -5 $W/synth.log | tee -a "$S"
say "prepare"
$PY benchmarks/prepare_cache.py $W/b --preset $W/${SIZE}_x1.yaml --workers "$(nproc)" | grep "^> " | tee -a "$S"
say "train"
LEFT=$(( BUDGET - ($(date +%s) - T0) - 130 ))
for V in x1 x4; do
  timeout $LEFT $LH train-lpg $W/b --out $W/$V --preset $W/${SIZE}_$V.yaml --device "$DEV" > $W/train_$V.log 2>&1 &
  eval "P_$V=$!"
done
wait "$P_x1"; say "x1 rc $?"; wait "$P_x4"; say "x4 rc $?"
for V in x1 x4; do
  [ -f $W/$V/last.pt ] || { say "$V: no epoch finished"; continue; }
  $PY - $W/$V <<'PYEOF' | tee -a "$S"
import sys, torch
state = torch.load(f"{sys.argv[1]}/last.pt", weights_only=True, map_location="cpu")
for h in state["history"]:
    print(sys.argv[1], "epoch", h["epoch"], "loss %.3f" % h["loss"], "train_s", h["train_s"],
          "val %.3f" % h["score"], "ap %.3f" % h["ap"])
PYEOF
  [ -f $W/$V/best.pt ] || continue
  $LH propose $W/b --checkpoint $W/$V/best.pt --split detection_test --score-threshold 0.05 --out $W/dt_$V.pkl \
    --device "$DEV" > $W/prop_$V.log 2>&1
  $LH evaluate --gt $W/b/ground_truth/complete.pkl --detections $W/dt_$V.pkl --split detection_test \
    --json "$OUT/eval_$V.json" 2>&1 | tail -15 | tee -a "$S"
  say "evaluated $V"
done
wait $TINY; say "tiny harvest rc $?"
tar czf "$OUT/logs.tgz" -C $W tiny.log synth.log train_x1.log train_x4.log prop_x1.log prop_x4.log 2>/dev/null
say done
