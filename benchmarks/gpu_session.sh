# The GPU work still owed, in stages that each fit one `device` run (10 minutes).
# On the device machine, from the repository root, with `carry: [".whl"]`:
#   bash benchmarks/gpu_session.sh tests     # GPU tests: every fast backend vs the references
#   bash benchmarks/gpu_session.sh kernels   # RAT Triton kernels: checks and timings (issue 5)
#   bash benchmarks/gpu_session.sh layer     # RAT layer vs the published figures (issue 5)
#   bash benchmarks/gpu_session.sh profile   # the paper's Table 1 and efficiency figure (issue 6)
# (archlab runs as `python3 -m archlab.cli`: the install in /tmp/site puts no script on PATH.)
# Each stage leaves one log and one tarball of JSON/plots in $OUT (fetched back by the tool);
# commit them under benchmarks/results/ with this command line, the GPU, versions and date.
set -u
stage=${1:?usage: gpu_session.sh tests|kernels|layer|profile}
out=${OUT:-/tmp/out}
mkdir -p "$out/$stage"
source benchmarks/device_setup.sh
cd /tmp || exit 1  # run outside the checkout: the source folder must not shadow the install
repo=$OLDPWD
{
  echo "# $(date -u +%FT%TZ) stage=$stage"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} >"$out/$stage/env.txt" 2>&1
case $stage in
  tests)
    timeout 560 python3 -m pytest -q -m gpu -p no:cacheprovider -rs \
      "$repo/tests/blocks" "$repo/tests/kernels" \
      --junitxml="$out/$stage/junit.xml" 2>&1 | tee "$out/$stage/pytest.log"
    ;;
  kernels)
    timeout 560 python3 "$repo/benchmarks/rat_kernels.py" --out "$out/$stage" 2>&1 \
      | tee "$out/$stage/rat_kernels.log"
    ;;
  layer)
    timeout 560 python3 "$repo/benchmarks/rat_layer.py" --out "$out/$stage/rat_layer.json" 2>&1 \
      | tee "$out/$stage/rat_layer.log"
    ;;
  profile)
    specs=$repo/specs/paper
    timeout 200 python3 -m archlab.cli profile "$specs/attention.yaml" "$specs/rat.yaml" \
      "$specs/attention_swa.yaml" "$specs/rat_swa.yaml" --mode throughput --prompt 3072 \
      --generate 1024 --gen-sample 16 --json --out "$out/$stage/table1" \
      >"$out/$stage/table1.json" 2>"$out/$stage/table1.log"
    timeout 340 python3 -m archlab.cli profile "$specs/attention.yaml" "$specs/rnn.yaml" "$specs/rat.yaml" \
      --layer attention --layer rnn --layer rat:chunk_size=16 --layer rat:chunk_size=64 \
      --layer rat:chunk_size=128 --mode train,prefill,decode --seq 4k,16k,64k,128k \
      --tokens 262144 --decode-batch 512 --warmup 1 --repeats 3 --json \
      --out "$out/$stage/layers" >"$out/$stage/layers.json" 2>"$out/$stage/layers.log"
    ;;
  *) echo "unknown stage $stage"; exit 2 ;;
esac
tar -C "$out" -czf "$out/$stage.tar.gz" "$stage" && rm -rf "${out:?}/$stage"
