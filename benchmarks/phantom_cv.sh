#!/usr/bin/env bash
# The study-sized phantom benchmark (issue 12): 75 cases in 5 patient folds, the study's pipeline
# with breast masking against the same detector without it, and the paired case-level bootstrap
# of their CPM difference over all folds pooled. CPU demo detector (configs/frcnn_cpu_demo.yaml,
# 1,000 iterations, SEED 0), two folds side by side with one thread each. Resumable: rerun to
# continue (finished steps are skipped).
#
#   bash benchmarks/phantom_cv.sh                    # ~75 min on 2 cores at 700 iterations;
#                                                    # the masked CV alone: 34 min at 1,000
#   CASES=10 MATRIX=96 SLICES=16 OPTS="SOLVER.MAX_ITER 4 SOLVER.STEPS (3,)" bash benchmarks/phantom_cv.sh
#
# MASKS=gt (default) masks with the ground-truth breast masks, to spend the CPU on detection;
# MASKS=model trains U-Net++ per fold as in the study (tools/cross_validate.py --masks model).
# Writes OUT (default output/phantom_cv): phantom/ (+ PHANTOM_STATS.md), coco/, masked/ and
# unmasked/ (tools/cross_validate.py job folders with breast_d2's default merge: fused slice
# boxes + box fit; report/ and the out-of-fold fp_reducer/ in each), masked_study/ and
# unmasked_study/ (the same detections merged as the study does), compare/ (pooled candidates of
# both runs and compare.json of tools/froc.py --compare), fp_final/ (one reducer trained on the
# masked run's out-of-fold candidates of every case but PH0000-PH0039, which with SEED 0 are the
# cases of the default demo cohort: the model `make demo` applies, models/phantom_fp_reducer).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-output/phantom_cv}
CASES=${CASES:-75}
MATRIX=${MATRIX:-160}
SLICES=${SLICES:-48}
SEED=${SEED:-0}
MASKS=${MASKS:-gt}
LANES=${LANES:-2}
CONFIG=${CONFIG:-configs/frcnn_cpu_demo.yaml}
read -r -a OPTS <<< "${OPTS:-}"

mkdir -p "$OUT"
"$PY" tools/make_phantom.py --out "$OUT/phantom" --cases "$CASES" --seed "$SEED" \
  --matrix "$MATRIX" --slices "$SLICES" --workers 2
"$PY" tools/phantom_stats.py --phantom "$OUT/phantom" --out "$OUT/phantom/PHANTOM_STATS.md" \
  > /dev/null || true
"$PY" tools/convert_to_coco.py --images "$OUT/phantom/IMAGES" --labels "$OUT/phantom/LABELS" \
  --masks "$OUT/phantom/MASKS" --out "$OUT/coco" --folds 5 --seed "$SEED" --resume
for run in masked unmasked; do
  masks=$MASKS
  [[ $run == unmasked ]] && masks=none
  "$PY" tools/cross_validate.py --config-file "$CONFIG" --data "$OUT/coco" --out "$OUT/$run" \
    --masks "$masks" --lanes "$LANES" ${OPTS[@]+"${OPTS[@]}"}
done
# The study's merge (union of the slice boxes, no box fit) of the same detections, post hoc.
for run in masked unmasked; do
  "$PY" tools/froc.py --detections "$OUT/$run"/detector/fold*/inference/breast_fold*_val \
    --box-merge union --no-box-fit --out "$OUT/${run}_study" > /dev/null
done
# Pool each run's candidates over the folds (every case is validated exactly once).
mkdir -p "$OUT/compare"
"$PY" - "$OUT" <<'EOF'
import glob, json, os, sys
out = sys.argv[1]
for run in ("masked", "unmasked"):
    cands = []
    for path in sorted(glob.glob(f"{out}/{run}/detector/fold*/inference/*/candidates.json")):
        with open(path) as f:
            cands += json.load(f)
    with open(os.path.join(out, "compare", f"{run}_candidates.json"), "w") as f:
        json.dump(cands, f)
EOF
"$PY" tools/froc.py --compare "$OUT/compare/masked_candidates.json" \
  "$OUT/compare/unmasked_candidates.json" --ground-truth "$OUT/coco/cases.json" \
  --bootstrap 2000 --out "$OUT/compare"
# The demo's reducer: every fold's out-of-fold candidates except the default demo cohort's cases
# (a cohort of 40 cases or fewer has none left to train on).
if (( CASES > 40 )); then
  "$PY" tools/reduce_fp.py --cv "$OUT/masked" --data "$OUT/coco" --final \
    --exclude-cases "$("$PY" -c "print(','.join(f'PH{i:04d}' for i in range(40)))")" \
    --out "$OUT/fp_final"
fi
