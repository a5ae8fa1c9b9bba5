# session 11 run 4: the RAT layer at every paper length, Table 1 (GPU 0); memory/time of the gated op, GPU tests, kernel tables (GPU 1)
cd .snap && ln -sfn ../.whl .whl && source benchmarks/device_setup.sh >/tmp/setup.log 2>&1
export ARCHLAB_READY=1; R=$PWD; A=$OUT/g0; C=$OUT/g1; mkdir -p $A $C
(export CUDA_VISIBLE_DEVICES=0
 OUT=$A LAYER_VARIANTS="rat L=16 triton" bash benchmarks/gpu_session.sh layer:290 >$A/run.out 2>&1
 OUT=$A TABLE1_SPECS="attention rat" bash benchmarks/gpu_session.sh table1:250 >>$A/run.out 2>&1
 touch /tmp/g0.done) &
export CUDA_VISIBLE_DEVICES=1
(cd /tmp; timeout 90 python3 $R/mem.py 16 16384 >$C/mem.json 2>$C/mem.err; timeout 60 python3 $R/mem.py 2 131072 >>$C/mem.json 2>>$C/mem.err)
OUT=$C TESTS_K="rat_gated or test_rat_triton or (contract and rat)" bash benchmarks/gpu_session.sh tests:170 ratprof:200 >$C/run.out 2>&1
tar -C $OUT -czf $OUT/g1.tgz g1 && rm -rf $C
while [ ! -f /tmp/g0.done ]; do sleep 2; done
tar -C $OUT -czf $OUT/g0.tgz g0 && rm -rf $A
