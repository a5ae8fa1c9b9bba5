# The recall sweep on one GPU: decode of the 1.3B models at full size, MQAR probes at
# two learning rates (resumes from OUT/sweep when it exists). Usage: recall.sh REPO OUT LIMIT_S
set -u
R=$1; O=$2; L=$3; mkdir -p "$O"
cd /tmp || exit 1
start=$(date +%s)
timeout "$L" python3 -m archlab.cli sweep "$R/sweeps/rat_chunk_recall.yaml" --measure \
  --mode decode --no-compile --probe mqar --probe-lr 1e-3,3e-3 --probe-seed 0 \
  --probe-jobs 2 --out "$O/sweep" >"$O/sweep.log" 2>&1
echo "rc=$? s=$(( $(date +%s) - start ))" >>"$O/sweep.log"
