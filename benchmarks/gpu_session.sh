# The GPU work, in stages; several stages may share one `device` run (10 minutes), each
# with its own time limit in seconds. On the device machine, from the repository root,
# with `carry: [".whl"]`:
#   bash benchmarks/gpu_session.sh kernels:110 tests:280 layer:160
#   kernels   RAT Triton kernels: checks at real shapes and timings (docs/rat_kernels.md)
#   tests     every GPU test (fast backends vs the references, the contract suite at
#             d_model 2048, T = 4096 in bf16), each test's result printed as it ends (a
#             stage cut by its limit keeps them); fla's kernels autotune at each new shape:
#             its first test took over 200 s on an H200, give fla's kinds a stage of their own
#   layer     the RAT layer against the paper's published code's H200 times (rat_layer.py)
#   (LAYER_VARIANTS="label,label" keeps some of rat_layer.py's variants;
#    TESTS_K="pytest -k expression" selects some of the GPU tests)
#   table1    the RAT paper's Table 1 through `archlab profile --mode throughput`
#             (all 1024 generated positions timed; TABLE1_SAMPLE=16 estimates them from 16;
#             TABLE1_SPECS picks specs)
#   figure    the paper's efficiency figure through `archlab profile --layer`
#   compare   the README's main command at real sizes: `archlab compare --measure` of
#             the paper's attention, RAT and RAT-SWA specs
#   ssm       the Mamba-2 block alone: fla (`triton`) against the `reference` backend,
#             train and prefill
#   peers     each block kind beside the plain layer a user would write (peers.py;
#             PEER_ARGS="--kinds attention,rnn --shapes 64x4096" narrows it; RAT_REPO names
#             a checkout of the RAT paper's code for the rat peer)
#   distributed  sharded training on 2 GPUs (kind nvidia-h200-x2; docs/distributed.md):
#             torchrun smoke run, the 1.3B RAT at 4K on 2 GPUs and on 1 (the scaling),
#             the ~10B RAT hybrid with checkpointing (per-GPU peak vs the prediction; on one
#             GPU it must run out of memory), and `compare --measure --parallel`
#             (DIST_PARTS="smoke,rat,10b,compare" picks parts; DIST_BATCH the 1.3B's
#             sequences per GPU, default 4)
#   recall    RAT's chunk size against recall and decode speed: the 1.3B models' decode
#             measured at full size and MQAR probes (sweeps/rat_chunk_recall.yaml)
#   mixers    the field's mixers alone at the 1.3B width (specs/examples/field_mixers_1.3b.yaml),
#             train / prefill at 4K and 16K (262,144 tokens), decode at batch 512
#             (MIXERS="gla mamba" picks kinds, MIXER_SEQ the lengths)
#   scan      Mamba-1's selective scan alone (selective_scan.py; SCAN_VARIANTS picks)
#   ratprof   the RAT layer's train and prefill at long T (RATPROF_SEQ, default 16k,128k) with
#             each case's kernel table (`profile --trace`): where the time goes
#   decode    the attention decode kernel against sdpa, fresh cache lengths included
#             (decode_attention.py; DECODE_ARGS="--sweep" also times its tiles)
#   compiled  attention and RAT layers under --compile, beside the mixers stage's eager rows
#   (`archlab profile --out` rewrites profile.json after every case, so a stage cut by its
#   limit keeps what it measured)
# (archlab runs as `python3 -m archlab.cli`: the install in /tmp/site puts no script on PATH.)
# Each stage leaves one tarball of its logs and JSON in $OUT (fetched back by the tool), made
# even when the stage hits its limit; commit them under benchmarks/results/ with this
# command line, the GPU, versions and date.
set -u
[ $# -gt 0 ] || { echo "usage: gpu_session.sh STAGE[:SECONDS]..."; exit 2; }
out=${OUT:-/tmp/out}
# ARCHLAB_READY=1: device_setup.sh already ran in this command (stages run side by side
# on several GPUs, each with its own CUDA_VISIBLE_DEVICES, install once)
[ -n "${ARCHLAB_READY:-}" ] || source benchmarks/device_setup.sh
# Triton's cache (compiled kernels and, for fla's kernels, the autotuning results: minutes
# per new shape) can travel between sessions: a carried .triton-cache.tgz in the checkout
# is unpacked first, and TRITON_CACHE_OUT=1 leaves the cache's autotuning results as
# $OUT/triton-cache.tgz to carry next time (the whole cache passed the device tool's 16 MiB
# per file)
# (benchmarks/device_cache/ keeps such results in the repository, per GPU and versions;
# they are unpacked too, once per machine: their keys hold Triton's and the kernels' own
# hashes, so results from other versions are never used)
export TRITON_CACHE_DIR=/tmp/triton-cache
if [ ! -d "$TRITON_CACHE_DIR" ]; then
  mkdir -p "$TRITON_CACHE_DIR"
  for tgz in benchmarks/device_cache/*.tgz .triton-cache.tgz; do
    [ -f "$tgz" ] && tar -xzkf "$tgz" -C /tmp 2>/dev/null
  done
fi
cd /tmp || exit 1  # run outside the checkout: the source folder must not shadow the install
repo=$OLDPWD
for arg in "$@"; do
stage=${arg%%:*}
limit=${arg#*:}
[ "$limit" = "$arg" ] && limit=560
mkdir -p "$out/$stage"
{
  echo "# $(date -u +%FT%TZ) stage=$stage"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} >"$out/$stage/env.txt" 2>&1
case $stage in
  tests)
    ARCHLAB_INSTAFAIL=1 timeout "$limit" python3 -m pytest -v -m gpu -p no:cacheprovider -rs \
      -o faulthandler_timeout=120 --durations=15 -k "${TESTS_K:-}" "$repo/tests/blocks" "$repo/tests/kernels" \
      --junitxml="$out/$stage/junit.xml" >"$out/$stage/pytest.log" 2>&1
    grep -E "^FAILED|passed|failed" "$out/$stage/pytest.log"
    ;;
  kernels)
    timeout "$limit" python3 "$repo/benchmarks/rat_kernels.py" --out "$out/$stage" \
      >"$out/$stage/rat_kernels.log" 2>&1
    tail -12 "$out/$stage/rat_kernels.log"
    ;;
  layer)
    timeout "$limit" python3 "$repo/benchmarks/rat_layer.py" --out "$out/$stage/rat_layer.json" \
      --repeats 5 --variants "${LAYER_VARIANTS:-}" >"$out/$stage/rat_layer.log" 2>&1
    tail -30 "$out/$stage/rat_layer.log"
    ;;
  table1)  # the RAT paper's Table 1: throughput at 1.3B (prompt 3072, generate 1024)
    # (all 1024 positions timed; TABLE1_SAMPLE=16 estimates them from 16 positions;
    #  TABLE1_SPECS="attention rat" picks specs)
    specs=$repo/specs/paper
    files=""
    for name in ${TABLE1_SPECS:-attention rat attention_swa rat_swa}; do
      files="$files $specs/$name.yaml"
    done
    # shellcheck disable=SC2086
    timeout "$limit" python3 -m archlab.cli profile $files --mode throughput --prompt 3072 \
      --generate 1024 --gen-sample "${TABLE1_SAMPLE:-0}" --out "$out/$stage" \
      >"$out/$stage/profile.log" 2>&1
    tail -20 "$out/$stage/profile.log"
    ;;
  figure)  # the RAT paper's efficiency figure: single layers, 4K to 128K tokens
    specs=$repo/specs/paper
    timeout "$limit" python3 -m archlab.cli profile "$specs/attention.yaml" "$specs/rnn.yaml" \
      "$specs/rat.yaml" --layer attention --layer rnn --layer rat:chunk_size=16 \
      --layer rat:chunk_size=64 --layer rat:chunk_size=128 --mode train,prefill,decode \
      --seq 4k,16k,64k,128k --tokens 262144 --decode-batch 512 --warmup 1 --repeats 3 \
      --out "$out/$stage" >"$out/$stage/profile.log" 2>&1
    tail -40 "$out/$stage/profile.log"
    ;;
  compare)  # whole 1.3B models side by side: table, plots and report.md
    specs=$repo/specs/paper
    timeout "$limit" python3 -m archlab.cli compare "$specs/attention.yaml" "$specs/rat.yaml" \
      "$specs/rat_swa.yaml" --measure --out "$out/$stage/compare" >"$out/$stage/compare.log" 2>&1
    tail -30 "$out/$stage/compare.log"
    ;;
  ssm)  # the SSM block of a 1B hybrid, alone: fla's kernels against the PyTorch reference
    timeout "$limit" python3 -m archlab.cli profile "$repo/specs/examples/megatron_ssm_hybrid.yaml" \
      --layer ssm --layer ssm:backend=reference --mode train,prefill --seq 4k,8k \
      --out "$out/$stage" >"$out/$stage/profile.log" 2>&1
    tail -12 "$out/$stage/profile.log"
    ;;
  peers)  # archlab's blocks against their plain peers, same weights, one process
    # shellcheck disable=SC2086
    timeout "$limit" python3 "$repo/benchmarks/peers.py" ${PEER_ARGS:-} \
      ${RAT_REPO:+--rat-repo "$RAT_REPO"} --out "$out/$stage/peers.json" \
      >"$out/$stage/peers.log" 2>&1
    tail -40 "$out/$stage/peers.log"
    ;;
  distributed)  # FSDP2 over 2 GPUs: scaling of the 1.3B RAT, the ~10B hybrid's memory
    specs=$repo/specs
    parts=",${DIST_PARTS:-smoke,rat,10b,compare},"
    nvidia-smi topo -m >"$out/$stage/topo.txt" 2>&1
    case $parts in *,smoke,*)  # torchrun itself starting the ranks, tiny model
      timeout "${SMOKE_S:-330}" python3 -m torch.distributed.run --standalone --nproc-per-node 2 \
        -m archlab.cli profile "$specs/tiny/hybrid.yaml" --seq 128 --batch 2 --optimizer \
        --checkpoint --timeout "$(( ${SMOKE_S:-330} - 30 ))" --out "$out/$stage/smoke" >"$out/$stage/smoke.log" 2>&1
      tail -6 "$out/$stage/smoke.log" ;;
    esac
    case $parts in *,rat,*)  # target: 2 GPUs >= 1.85x one GPU at the same batch per GPU
      timeout "$limit" python3 -m archlab.cli profile "$specs/paper/rat.yaml" --nproc 2 \
        --seq 4k --batch "${DIST_BATCH:-4}" --optimizer --timeout 400 --out "$out/$stage/rat" \
        >"$out/$stage/rat.log" 2>&1
      tail -8 "$out/$stage/rat.log" ;;
    esac
    case $parts in *,10b,*)  # target: per-GPU peak within 10% of the prediction
      timeout "$limit" python3 -m archlab.cli profile "$specs/examples/rat_hybrid_10b.yaml" \
        --nproc 2 --checkpoint --seq 4k --batch 1 --optimizer --warmup 1 --repeats 3 \
        --timeout 450 --out "$out/$stage/10b" >"$out/$stage/10b.log" 2>&1
      python3 -m archlab.cli cost "$specs/examples/rat_hybrid_10b.yaml" --seq 4k \
        --train-memory --shards 2 --checkpoint >"$out/$stage/10b_cost.txt" 2>&1
      tail -8 "$out/$stage/10b.log" ;;
    esac
    case $parts in *,compare,*)  # one spec per GPU at once, merged into one report
      timeout "$limit" python3 -m archlab.cli compare "$specs/paper/attention.yaml" \
        "$specs/paper/rat.yaml" --measure --parallel --seq 4k --mode train,decode \
        --out "$out/$stage/compare" >"$out/$stage/compare.log" 2>&1
      tail -20 "$out/$stage/compare.log" ;;
    esac
    ;;
  recall)  # decode of the 1.3B models at full size and MQAR recall, per RAT chunk size
    # (PyTorch's initialisation for every kind: as built, attention's copy stalled at 89.5%;
    # docs/sweep.md; two trainings at once)
    timeout "$limit" python3 -m archlab.cli sweep "$repo/sweeps/rat_chunk_recall.yaml" --measure \
      --mode decode --probe mqar --probe-init torch --probe-jobs 2 --no-compile \
      --out "$out/$stage/sweep" >"$out/$stage/sweep.log" 2>&1
    tail -30 "$out/$stage/sweep.log"
    ;;
  mixers)  # the field's mixers alone, at the paper's width and token count
    layers=""
    for k in ${MIXERS:-attention rat gated_deltanet gla mamba rg_lru mla moe}; do
      layers="$layers --layer $k"
    done
    # shellcheck disable=SC2086
    timeout "$limit" python3 -m archlab.cli profile "$repo/specs/examples/field_mixers_1.3b.yaml" \
      $layers --mode train,prefill,decode \
      --seq "${MIXER_SEQ:-4k,16k}" --tokens 262144 --decode-batch 512 --warmup 1 --repeats 3 \
      --no-compile --out "$out/$stage" >"$out/$stage/profile.log" 2>&1
    tail -40 "$out/$stage/profile.log"
    ;;
  compiled)  # attention and RAT layers under torch.compile (the mixers stage's eager rows)
    timeout "$limit" python3 -m archlab.cli profile "$repo/specs/examples/field_mixers_1.3b.yaml" \
      --layer attention --layer rat --mode train,prefill,decode --seq 4k --tokens 262144 \
      --decode-batch 512 --warmup 1 --repeats 3 --compile --out "$out/$stage" \
      >"$out/$stage/profile.log" 2>&1
    tail -12 "$out/$stage/profile.log"
    ;;
  ratprof)  # where the RAT layer's train and prefill time goes at long T: eager kernel tables
    timeout "$limit" python3 -m archlab.cli profile "$repo/specs/paper/rat.yaml" --layer rat \
      --mode train,prefill --seq "${RATPROF_SEQ:-16k,128k}" --tokens 262144 --warmup 1 \
      --repeats 3 --no-compile --trace "$out/$stage/trace" --out "$out/$stage" \
      >"$out/$stage/profile.log" 2>&1
    tail -8 "$out/$stage/profile.log"
    ;;
  decode)  # the decode attention kernel against sdpa (decode_attention.py; DECODE_ARGS=--sweep)
    # shellcheck disable=SC2086
    timeout "$limit" python3 "$repo/benchmarks/decode_attention.py" ${DECODE_ARGS:-} \
      --out "$out/$stage/decode_attention.json" >"$out/$stage/decode_attention.log" 2>&1
    tail -16 "$out/$stage/decode_attention.log"
    ;;
  scan)  # Mamba-1's selective scan: the Triton kernel against the PyTorch loop (compiled too)
    timeout "$limit" python3 "$repo/benchmarks/selective_scan.py" \
      --variants "${SCAN_VARIANTS:-triton,reference,compiled}" --out "$out/$stage/scan.json" \
      >"$out/$stage/scan.log" 2>&1
    tail -12 "$out/$stage/scan.log"
    ;;
  *) echo "unknown stage $stage"; exit 2 ;;
esac
tar -C "$out" -czf "$out/$stage.tar.gz" "$stage" && rm -rf "${out:?}/$stage"
done
if [ -n "${TRITON_CACHE_OUT:-}" ] && [ -d "$TRITON_CACHE_DIR" ]; then
  # the autotuning results only (small): the kernels themselves recompile in seconds
  (cd /tmp && find triton-cache -name "*.autotune.json" | tar -czf "${out:-/tmp/out}/triton-cache.tgz" -T -)
fi
