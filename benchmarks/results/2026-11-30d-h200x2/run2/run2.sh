# session 10 run 2: decode attention kernel vs sdpa, overlap probe, GPU tests, Table 1; peers decode
cd .snap && ln -sfn ../.whl .whl && source benchmarks/device_setup.sh >/tmp/setup.log 2>&1
export ARCHLAB_READY=1; R=$PWD; A=$OUT/g0; C=$OUT/g1; mkdir -p $A $C
(export CUDA_VISIBLE_DEVICES=0; cd /tmp
 timeout 120 python3 $R/benchmarks/decode_attention.py --out $A/decode_attention.json >$A/decode_attention.log 2>&1
 timeout 60 python3 $R/overlap.py $A/overlap.json >$A/overlap.log 2>&1
 cd $R; OUT=$A TESTS_K="attention_decode or test_attention or local_attention or ssd_step or (ssm and step)" \
   TABLE1_SAMPLE=0 TABLE1_SPECS=attention bash benchmarks/gpu_session.sh tests:150 table1:160 >$A/run.out 2>&1; touch /tmp/g0.done) &
export CUDA_VISIBLE_DEVICES=1
OUT=$C PEER_ARGS="--kinds attention,local_attention,ssm,mlp --modes decode --decode 512x4096,512x16384" \
  bash benchmarks/gpu_session.sh peers:270 >$C/run.out 2>&1
mkdir -p $C/p2; OUT=$C/p2 PEER_ARGS="--kinds attention --modes prefill --shapes 2x131072" \
  bash benchmarks/gpu_session.sh peers:100 >$C/p2/run.out 2>&1
mkdir -p $C/t16; OUT=$C/t16 TABLE1_SPECS="attention rat" bash benchmarks/gpu_session.sh table1:110 >$C/t16/run.out 2>&1
tar -C $OUT -czf $OUT/g1.tgz g1 && rm -rf $C
while [ ! -f /tmp/g0.done ]; do sleep 2; done
tar -C $OUT -czf $OUT/g0.tgz g0 && rm -rf $A
