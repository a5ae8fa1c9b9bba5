# Time MQAR probes on one GPU: one training alone (float32 and bf16), RAT chunk 16, and
# 2 lrs x 2 seeds as 4 workers sharing the GPU. Usage: probe_timing.sh REPO OUT
set -u
R=$1; O=$2; mkdir -p "$O"
cd /tmp || exit 1
timed() {  # timed NAME LIMIT_S COMMAND...: stdout/stderr to NAME.out/.err, seconds to times.txt
  local name=$1 limit=$2; shift 2
  local start; start=$(date +%s%N)
  timeout "$limit" "$@" >"$O/$name.out" 2>"$O/$name.err"
  local rc=$?
  echo "$name rc=$rc ms=$(( ($(date +%s%N) - start) / 1000000 ))" | tee -a "$O/times.txt"
}
P="python3 -m archlab.cli probe mqar"
timed att1 120 $P "$R/specs/paper/attention.yaml" --out "$O/att1"
timed att1_bf16 100 $P "$R/specs/paper/attention.yaml" --dtype bfloat16 --out "$O/att1_bf16"
timed rat16 120 $P "$R/specs/paper/rat.yaml" --out "$O/rat16"
timed att_j4 200 $P "$R/specs/paper/attention.yaml" --lr 1e-3,3e-3 --seed 0,1 --jobs 4 --out "$O/att_j4"
