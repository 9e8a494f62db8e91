# Sourced by the gpu_*.sh scripts: output folder, carried wheels (.whl/), import path.
# SRC: the hf_gns checkout to run (default: this repository).
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
SRC=${SRC:-$PWD}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$SRC
else
  export PYTHONPATH=$SRC
fi
