# session 11 run 1: issue-13 rows never measured (GPU 0); RAT layer kernel tables at long T, decode stages (GPU 1)
cd .snap && ln -sfn ../.whl .whl && source benchmarks/device_setup.sh >/tmp/setup.log 2>&1
export ARCHLAB_READY=1; R=$PWD; A=$OUT/g0; C=$OUT/g1; mkdir -p $A/p2 $C
(export CUDA_VISIBLE_DEVICES=0
 OUT=$A PEER_ARGS="--kinds local_attention --shapes 4x65536 --decode 512x65536" bash benchmarks/gpu_session.sh peers:300 >$A/run.out 2>&1
 OUT=$A/p2 PEER_ARGS="--kinds ssm,mlp --modes decode --decode 512x65536" bash benchmarks/gpu_session.sh peers:170 >$A/p2/run.out 2>&1
 touch /tmp/g0.done) &
export CUDA_VISIBLE_DEVICES=1
OUT=$C DECODE_ARGS=--stages bash benchmarks/gpu_session.sh decode:100 ratprof:330 >$C/run.out 2>&1
tar -C $OUT -czf $OUT/g1.tgz g1 && rm -rf $C
while [ ! -f /tmp/g0.done ]; do sleep 2; done
tar -C $OUT -czf $OUT/g0.tgz g0 && rm -rf $A
