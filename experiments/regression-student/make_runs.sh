#!/bin/bash
# The regression teacher runs of this sweep: Boston, Concrete and a generated Friedman #1 table (20k rows), seeds 0-2,
# each a teacher and its soft labels with the defaults. RUNS (default /tmp/reg/runs) holds them; then
#   .venv/bin/python bench/sweep_student.py --runs "$RUNS/*/seed*/flipout" \
#       --grid '{"hidden": [[50], [100]], "uncertainty": ["regressor", "ratio"]}' --out /tmp/ssweep-reg
set -e
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-/tmp/reg/runs}
mkdir -p "$RUNS"
B=.venv/bin/bdk
[ -f "$RUNS/friedman-20k.parquet" ] || .venv/bin/python bench/make_synthetic.py --problem friedman1 --rows 20000 --out "$RUNS/friedman-20k.parquet"
for d in boston concrete "$RUNS/friedman-20k.parquet"; do
  name=$(basename "$d" .parquet)
  for s in 0 1 2; do
    run=$RUNS/$name/seed$s/flipout
    [ -f "$run/soft_labels/manifest.json" ] && continue
    extra=""; [ "$name" != "$d" ] && extra="--task regression"
    $B teacher --dataset "$d" $extra --out "$run" --seed $s --overwrite --no-progress > "$RUNS/$name-$s-teacher.log" 2>&1
    $B soft-labels --run "$run" --seed $s --no-progress > "$RUNS/$name-$s-soft.log" 2>&1
    echo "$name seed $s done"
  done
done
