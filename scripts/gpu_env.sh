# Sourced by the GPU job scripts (scripts/gpu_*.sh) on the device machine:
# installs the carried wheels (.whl/: dm-pix, ml-collections, tensorboardX,
# which that machine lacks) into /tmp/site and sets the paths and caches.
# Sets OUT to /tmp/out when the caller did not.
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 JAX_DAE_CACHE=/tmp/jax_dae_cache
