# Source this at the start of a command on the GPU machine (the `device` tool):
#   source benchmarks/device_setup.sh
# It installs the carried wheels (.whl: pydantic and its needs, fla-core) and archlab
# itself into /tmp/site, which the GPU image's python3 then sees through PYTHONPATH.
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade \
    --target /tmp/site . >/dev/null
export PYTHONPATH=/tmp/site
# Do not let the source folder archlab/ in the working directory shadow the installed
# package (whose archlab.blocks and archlab.kernels live in blocks/ and kernels/).
export PYTHONSAFEPATH=1
export PYTHONUNBUFFERED=1
set +e
python3 -c "import torch, triton, archlab.blocks; print('device ready: torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
