# session 11 run 3: the gated RAT op and the new attention tiles: layer times (GPU 0); GPU tests, kernel tables (GPU 1)
cd .snap && ln -sfn ../.whl .whl && source benchmarks/device_setup.sh >/tmp/setup.log 2>&1
export ARCHLAB_READY=1; R=$PWD; A=$OUT/g0; C=$OUT/g1; mkdir -p $A $C
(export CUDA_VISIBLE_DEVICES=0
 OUT=$A LAYER_VARIANTS="rat L=16 triton" bash benchmarks/gpu_session.sh layer:330 >$A/run.out 2>&1
 touch /tmp/g0.done) &
export CUDA_VISIBLE_DEVICES=1
OUT=$C TESTS_K="rat_gated or test_rat_triton or (contract and rat)" bash benchmarks/gpu_session.sh tests:170 ratprof:200 >$C/run.out 2>&1
tar -C $OUT -czf $OUT/g1.tgz g1 && rm -rf $C
while [ ! -f /tmp/g0.done ]; do sleep 2; done
tar -C $OUT -czf $OUT/g0.tgz g0 && rm -rf $A
