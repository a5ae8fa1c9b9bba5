# session 11 run 7: the backward scan's program shape, kernel and layer (one H200)
cd .snap && ln -sfn ../.whl .whl && source benchmarks/device_setup.sh >/tmp/setup.log 2>&1
export ARCHLAB_READY=1 TRITON_CACHE_DIR=/tmp/triton-cache; mkdir -p $TRITON_CACHE_DIR
tar -xzkf benchmarks/device_cache/*.tgz -C /tmp 2>/dev/null
R=$PWD; cd /tmp; timeout 170 python3 $R/scanbwd.py >$OUT/scanbwd.log 2>&1; tail -4 $OUT/scanbwd.log
