# session 10 run 1: GPU0 ssm tests + peers; GPU1 decode traces, Table 1 all positions, rnn peers
cd .snap && ln -sfn ../.whl .whl && source benchmarks/device_setup.sh >/tmp/setup.log 2>&1
export ARCHLAB_READY=1; R=$PWD; A=$OUT/g0; C=$OUT/g1; mkdir -p $A $C
cp /tmp/setup.log $OUT/setup.log
(export CUDA_VISIBLE_DEVICES=0; OUT=$A TRITON_CACHE_OUT=1 TESTS_K="ssm or ssd" \
  PEER_ARGS="--kinds ssm --shapes 64x4096,16x16384,4x65536,2x131072 --decode 512x4096,512x16384" \
  bash benchmarks/gpu_session.sh tests:150 peers:350 >$A/run.out 2>&1; touch /tmp/g0.done) &
export CUDA_VISIBLE_DEVICES=1
( cd /tmp && mkdir -p $C/trace && \
  timeout 110 python3 -m archlab.cli profile $R/specs/paper/rat.yaml --mode throughput --prompt 3072 --generate 1024 \
    --gen-batch 2896 --gen-sample 2 --trace $C/trace/rat --out $C/trace/rat >$C/trace/rat.log 2>&1; \
  timeout 70 python3 -m archlab.cli profile $R/specs/paper/attention.yaml --mode throughput --prompt 3072 --generate 1024 \
    --gen-batch 176 --gen-sample 2 --trace $C/trace/att --out $C/trace/att >$C/trace/att.log 2>&1 )
OUT=$C TABLE1_SAMPLE=0 TABLE1_SPECS="attention rat" PEER_ARGS="--kinds rnn --shapes 4x65536,2x131072" \
  bash benchmarks/gpu_session.sh table1:220 peers:130 >$C/run.out 2>&1
tar -C $OUT -czf $OUT/g1.tgz g1 && rm -rf $C
while [ ! -f /tmp/g0.done ]; do sleep 2; done
tar -C $OUT -czf $OUT/g0.tgz g0 && rm -rf $A
