# Why attention stays under 99% on MQAR (d_model 128, 16 pairs in 256 tokens, 4000 steps):
# longer training, PyTorch's default init, no RoPE, another seed. Usage: REPO OUT
set -u
R=$1; O=$2; mkdir -p "$O"
S=$(cd "$(dirname "$0")" && pwd)
cd /tmp || exit 1
timed() {  # timed NAME LIMIT_S COMMAND...
  local name=$1 limit=$2; shift 2
  local start; start=$(date +%s%N)
  timeout "$limit" "$@" --out "$O/$name" >"$O/$name.out" 2>"$O/$name.err"
  echo "$name rc=$? ms=$(( ($(date +%s%N) - start) / 1000000 ))" | tee -a "$O/times.txt"
}
P="python3 -m archlab.cli probe mqar"
A=$R/specs/paper/attention.yaml
timed att_8000 150 $P "$A" --steps 8000 --lr 5e-4,1e-3 --jobs 2
timed att_torch_init 90 $P "$A" --init torch --lr 1e-3,3e-3 --jobs 2
timed att_norope 90 $P "$S/probe_specs/attention_norope.yaml" --extends-root "$R/specs" --lr 1e-3,3e-3 --jobs 2
timed seed1 100 $P "$A" "$R/specs/paper/rat.yaml" --seed 1 --jobs 2
