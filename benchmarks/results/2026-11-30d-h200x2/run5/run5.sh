# session 10 run 5: the tuned decode kernel: kernel rows, GPU tests, Table 1 (all positions); peers decode
cd .snap && ln -sfn ../.whl .whl && source benchmarks/device_setup.sh >/tmp/setup.log 2>&1
export ARCHLAB_READY=1; R=$PWD; A=$OUT/g0; C=$OUT/g1; mkdir -p $A $C
(export CUDA_VISIBLE_DEVICES=0; cd /tmp
 timeout 100 python3 $R/benchmarks/decode_attention.py --out $A/decode_attention.json >$A/decode_attention.log 2>&1
 cd $R; OUT=$A TESTS_K="attention_decode or test_attention or local_attention" \
   TABLE1_SAMPLE=0 TABLE1_SPECS=attention bash benchmarks/gpu_session.sh tests:140 table1:130 >$A/run.out 2>&1; touch /tmp/g0.done) &
export CUDA_VISIBLE_DEVICES=1
OUT=$C PEER_ARGS="--kinds attention,local_attention --modes decode --decode 512x4096,512x16384" \
  bash benchmarks/gpu_session.sh peers:150 >$C/run.out 2>&1
mkdir -p $C/swa; OUT=$C/swa TABLE1_SAMPLE=0 TABLE1_SPECS="attention_swa rat_swa" bash benchmarks/gpu_session.sh table1:190 >$C/swa/run.out 2>&1
tar -C $OUT -czf $OUT/g1.tgz g1 && rm -rf $C
while [ ! -f /tmp/g0.done ]; do sleep 2; done
tar -C $OUT -czf $OUT/g0.tgz g0 && rm -rf $A
