#!/usr/bin/env bash
# One fold of the study's detector (configs/frcnn_r101.yaml) on the phantom at the study's
# resolution, with a shortened schedule: does R101 learn from random weights (no ImageNet weights
# offline), and how fast is a batch-8 step? Prepared for a GPU machine; every size is a variable
# so that a CPU dry run (small values, DEVICE=cpu) checks the script itself:
#
#   bash benchmarks/gpu_r101_fold.sh                                   # GPU, ~10 min
#   DEVICE=cpu CASES=6 MATRIX=64 SLICES=16 ITERS=4 BATCH=2 SIZE=64 bash benchmarks/gpu_r101_fold.sh
#
# Writes OUT (default output/gpu_r101_fold): the converted phantom, the training's metrics.json,
# froc.json of fold 0, and summary.json: first/last mean total loss, whether it fell, whether any
# loss was NaN, sens@3.4 FP and CPM, and the median seconds per iteration (from metrics.json).
# FrozenBN from random init overflows (BENCHMARKS.md), so the backbone uses trainable BN with
# normalised input, as the timing rows of BENCHMARKS.md do.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-output/gpu_r101_fold}
DEVICE=${DEVICE:-cuda}
CASES=${CASES:-40}
MATRIX=${MATRIX:-320}
SLICES=${SLICES:-96}
ITERS=${ITERS:-1500}
BATCH=${BATCH:-8}
SIZE=${SIZE:-640}
WORKERS=${WORKERS:-8}

mkdir -p "$OUT"
[[ -f "$OUT/phantom/phantom.json" ]] || "$PY" tools/make_phantom.py --out "$OUT/phantom" \
  --cases "$CASES" --seed 0 --matrix "$MATRIX" --slices "$SLICES" --workers "$WORKERS"
[[ -f "$OUT/coco/splits.json" ]] || "$PY" tools/convert_to_coco.py --images "$OUT/phantom/IMAGES" \
  --labels "$OUT/phantom/LABELS" --masks "$OUT/phantom/MASKS" --out "$OUT/coco" --folds 5 \
  --workers "$WORKERS"
OPTS=(OUTPUT_DIR "$OUT/train" MODEL.DEVICE "$DEVICE" MODEL.WEIGHTS "" MODEL.RESNETS.NORM BN
      MODEL.BACKBONE.FREEZE_AT 0 MODEL.PIXEL_STD "[57.375,57.12,58.395]" SOLVER.EPOCHS 0
      SOLVER.MAX_ITER "$ITERS" SOLVER.STEPS "()" SOLVER.IMS_PER_BATCH "$BATCH"
      SOLVER.BASE_LR 0.01 SOLVER.WARMUP_ITERS "$((ITERS / 10 + 1))" SOLVER.CHECKPOINT_PERIOD 100000
      INPUT.MIN_SIZE_TRAIN "($SIZE,)" INPUT.MAX_SIZE_TRAIN "$SIZE" INPUT.MIN_SIZE_TEST "$SIZE"
      INPUT.MAX_SIZE_TEST "$SIZE" INPUT.BREAST_MASK.SOURCE gt TEST.FINAL_EVAL False
      DATALOADER.NUM_WORKERS 4)
"$PY" tools/train_net.py --config-file configs/frcnn_r101.yaml --fold 0 --data "$OUT/coco" \
  "${OPTS[@]}"
"$PY" tools/train_net.py --config-file configs/frcnn_r101.yaml --fold 0 --data "$OUT/coco" \
  --eval-only "${OPTS[@]}" MODEL.WEIGHTS "$OUT/train/fold0/model_final.pth"
"$PY" - "$OUT" <<'PY'
import json, math, os, statistics, sys
out = sys.argv[1]
rows = [json.loads(l) for l in open(os.path.join(out, "train", "fold0", "metrics.json"))]
loss = [r["total_loss"] for r in rows if "total_loss" in r]
times = [r["time"] for r in rows if "time" in r]
k = max(1, len(loss) // 10)
froc = json.load(open(os.path.join(out, "train", "fold0", "inference", "breast_fold0_val",
                                   "froc.json")))
summary = {
    "first_loss": statistics.mean(loss[:k]), "last_loss": statistics.mean(loss[-k:]),
    "loss_fell": statistics.mean(loss[-k:]) < statistics.mean(loss[:k]),
    "nan_loss": any(not math.isfinite(v) for v in loss),
    "median_s_per_iter": statistics.median(times) if times else None,
    "sens@3.4": froc["sensitivity_at"]["3.4"], "cpm": froc["cpm"], "cpm_interp": froc["cpm_interp"],
    "num_cases": froc["num_cases"], "num_lesions": froc["num_lesions"],
}
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
print(json.dumps(summary))
PY
