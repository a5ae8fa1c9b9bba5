# session 11 run 5 (final code): the RAT layer at every paper length, Table 1 (GPU 0); gated op against the former composition (time, memory), GPU tests, kernel tables (GPU 1)
cd .snap && ln -sfn ../.whl .whl && source benchmarks/device_setup.sh >/tmp/setup.log 2>&1
export ARCHLAB_READY=1; R=$PWD; A=$OUT/g0; C=$OUT/g1; mkdir -p $A $C
(export CUDA_VISIBLE_DEVICES=0
 OUT=$A LAYER_VARIANTS="rat L=16 triton" bash benchmarks/gpu_session.sh layer:250 >$A/run.out 2>&1
 OUT=$A TABLE1_SPECS="attention rat" bash benchmarks/gpu_session.sh table1:230 >>$A/run.out 2>&1
 touch /tmp/g0.done) &
export CUDA_VISIBLE_DEVICES=1
(cd /tmp; timeout 80 python3 $R/mem.py 16 16384 >$C/mem.json 2>$C/mem.err; timeout 70 python3 $R/peak_gpu.py 16 16384 >$C/peak.log 2>&1)
OUT=$C TESTS_K="rat_gated or test_rat_triton or (contract and rat)" bash benchmarks/gpu_session.sh tests:150 ratprof:150 >$C/run.out 2>&1
tar -C $OUT -czf $OUT/g1.tgz g1 && rm -rf $C
while [ ! -f /tmp/g0.done ]; do sleep 2; done
tar -C $OUT -czf $OUT/g0.tgz g0 && rm -rf $A
