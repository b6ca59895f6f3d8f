#!/usr/bin/env bash
# Run benchmarks/gpu_suite.py on a lent GPU machine in one call, installing nothing
# from the internet (the machine has no network).
#
#   bash benchmarks/run_gpu_suite.sh                      # 64 and 128 frames, <= ~8 min
#   bash benchmarks/run_gpu_suite.sh --frames 64          # extra args go to the suite
#   MAX_MINUTES=4 bash benchmarks/run_gpu_suite.sh        # a shorter lease
#   CHECK_ONLY=1 bash benchmarks/run_gpu_suite.sh         # print the environment, stop
#
# 1. Prints Python, torch, CUDA, GPU and transformers versions and checks that every
#    module the suite imports is present; exits 3 naming what is missing.
# 2. Makes tokenred importable without installing it: PYTHONPATH is the checkout,
#    and the suite registers the in-repo reducer plugins (plugins/*/) itself when
#    their entry points are absent. If a wheelhouse folder `.wheels/` was carried
#    (see docs/measuring.md, "GPU figures"), missing packages are installed from it
#    with `pip install --no-index --find-links .wheels`.
# 3. Runs the suite with results written to $OUT (the folder the device tool brings
#    back) or benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false

check() {
    "$PY" - <<'EOF'
import importlib, platform, sys
need = ["torch", "transformers", "tokenizers", "safetensors", "pluggy", "numpy", "PIL"]
missing = []
for name in need:
    try:
        importlib.import_module(name)
    except Exception as exc:  # report every gap at once
        missing.append(f"{name} ({type(exc).__name__}: {exc})")
print("python", platform.python_version(), platform.machine())
if "torch" not in " ".join(missing):
    import torch
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", gpu)
    if gpu is not None:
        free, total = torch.cuda.mem_get_info()
        print(f"gpu memory free {free / 2**30:.1f} / {total / 2**30:.1f} GiB")
if "transformers" not in " ".join(missing):
    import transformers
    print("transformers", transformers.__version__)
    if transformers.__version__ != "5.23.0":
        print("warning: tokenred pins transformers 5.23.0 (insertion hooks rely on it)")
if missing:
    print("missing:", "; ".join(missing))
    sys.exit(3)
EOF
}

if ! check; then
    if [ -d .wheels ]; then
        echo "installing from the carried wheelhouse .wheels/"
        "$PY" -m pip install -q --no-index --find-links .wheels \
            transformers==5.23.0 pluggy pillow numpy
        check
    else
        echo "no .wheels/ wheelhouse was carried; see docs/measuring.md (GPU figures)"
        exit 3
    fi
fi
if [ "${CHECK_ONLY:-0}" = "1" ]; then
    exit 0
fi
OUTDIR="${OUT:-benchmarks/results}"
exec "$PY" benchmarks/gpu_suite.py --frames 64 128 \
    --max-minutes "${MAX_MINUTES:-7}" --out "$OUTDIR" "$@"
