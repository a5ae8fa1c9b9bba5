# session 11 run 2: RAT attention tiles at 128K (GPU 0) and 16K (GPU 1); attention decode peers with the stage rule (GPU 1)
cd .snap && ln -sfn ../.whl .whl && source benchmarks/device_setup.sh >/tmp/setup.log 2>&1
export ARCHLAB_READY=1; R=$PWD; A=$OUT/g0; C=$OUT/g1; mkdir -p $A $C
export TRITON_CACHE_DIR=/tmp/triton-cache; mkdir -p $TRITON_CACHE_DIR; tar -xzkf benchmarks/device_cache/*.tgz -C /tmp 2>/dev/null
(export CUDA_VISIBLE_DEVICES=0; cd /tmp
 timeout 420 python3 $R/benchmarks/rat_attention_tiles.py --shapes 2x131072 --out $A >$A/tiles.log 2>&1
 touch /tmp/g0.done) &
export CUDA_VISIBLE_DEVICES=1
(cd /tmp; timeout 250 python3 $R/benchmarks/rat_attention_tiles.py --shapes 16x16384 --out $C >$C/tiles.log 2>&1)
OUT=$C PEER_ARGS="--kinds attention --modes decode --decode 512x16384" bash benchmarks/gpu_session.sh peers:150 >$C/run.out 2>&1
tar -C $OUT -czf $OUT/g1.tgz g1 && rm -rf $C
while [ ! -f /tmp/g0.done ]; do sleep 2; done
tar -C $OUT -czf $OUT/g0.tgz g0 && rm -rf $A
