# One variant of the transfer set on a trained teacher (experiments/transfer-sweep/transfer-sweep.md):
#   bash sweep.sh SIZE NAME [bdk soft-labels options...]
# The teacher is trained once per size (`bdk teacher --dataset DATA/synthetic-SIZE.parquet --out SWEEP/teacher-SIZE`)
# and copied into each variant's run, then `bdk soft-labels` and `bdk student` run there. val.py appends the student's
# validation figures (only those) to SWEEP/results.jsonl. Run the variants one at a time.
set -e
size=$1; name=$2; shift 2
SWEEP=${SWEEP:-/tmp/tsweep}
BDK=${BDK:-.venv/bin/bdk}
run=$SWEEP/runs/$size-$name
if [ -e $run/student/metrics.json ]; then echo "$size $name: done already"; exit 0; fi
rm -rf $run; mkdir -p $run
cp -a $SWEEP/teacher-$size/data $SWEEP/teacher-$size/teacher $run/
t0=$(date +%s)
$BDK soft-labels --run $run --no-progress "$@" > $run.soft.log 2>&1
t1=$(date +%s)
$BDK student --run $run --no-gate --no-progress > $run.student.log 2>&1
t2=$(date +%s)
python "$(dirname "$0")/val.py" $run $size $name $((t1-t0)) $((t2-t1)) "$*" >> $SWEEP/results.jsonl
tail -1 $SWEEP/results.jsonl
