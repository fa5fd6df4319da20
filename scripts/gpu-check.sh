#!/bin/bash
# The GPU check of docs/benchmarks.md, for a machine with an NVIDIA GPU; builds nothing there. Usage:
#   scripts/gpu-check.sh [KIT] [OUT]
# KIT (default target-gpu, made by scripts/build-cuda): `repdiff` and `cuda-tests` (or their .xz),
# optionally DiT/ (the official PyTorch DiT, for the reference rows). OUT (default ./gpu-check) gets log.txt and results.json:
# the GPU tests (every fused op forward and backward against the CPU, the optimiser, training in each
# precision), the job kinds on the GPU against the CPU, and the benchmark of RepDiff against PyTorch on
# the same card. Sections run in order of importance, each under a time limit, so a short lease still
# brings back the first ones. cuBLAS/cuRAND of CUDA 13 must be under /usr/local or in Python's nvidia
# wheels.
KIT=$(realpath "${1:-target-gpu}")
OUT=$(mkdir -p "${2:-gpu-check}" && realpath "${2:-gpu-check}")
# scripts/build-cuda ships the binaries xz-compressed.
for bin in repdiff cuda-tests; do
  if [ -f "$KIT/$bin.xz" ] && [ ! -x "$KIT/$bin" ]; then
    mkdir -p /tmp/repdiff-kit
    xz -dc "$KIT/$bin.xz" > "/tmp/repdiff-kit/$bin" 2>/dev/null ||
      python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
        "$KIT/$bin.xz" "/tmp/repdiff-kit/$bin"
    chmod +x "/tmp/repdiff-kit/$bin"
  fi
done
[ -x /tmp/repdiff-kit/repdiff ] && [ ! -x "$KIT/repdiff" ] && BIN=/tmp/repdiff-kit || BIN=$KIT
B=$BIN/repdiff
exec > >(tee "$OUT/log.txt") 2>&1
START=$(date +%s)
# Seconds the whole check may take (a lease is 15 minutes, the machine's start included, and one command
# at most 10): sections past it are skipped, each runs under the time that is left.
BUDGET=${GPU_CHECK_BUDGET:-540}
elapsed() { echo $(( $(date +%s) - START )); }
section() { printf '\n=== %s (%ss)\n' "$*" "$(elapsed)"; }
# `within SECONDS command...`: runs it under SECONDS or the budget left, whichever is less; skips it when
# less than 20 s are left.
within() {
  local limit=$1 left=$(( BUDGET - $(date +%s) + START )); shift
  if [ "$left" -lt 20 ]; then echo "skipped (budget spent): $*"; return 0; fi
  timeout $(( limit < left ? limit : left )) "$@"
}

section device
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
libdirs=$( (find /usr/local -name 'libcublas.so.13*' -o -name 'libcurand.so.10*' -o -name 'libcublasLt.so.13*';
  python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__file__))' 2>/dev/null | xargs -r -I{} find {} -name 'libcublas*.so.13*' -o -name 'libcurand.so.10*') 2>/dev/null |
  xargs -r -n1 dirname | sort -u | paste -sd:)
export LD_LIBRARY_PATH=$BIN:$libdirs:${LD_LIBRARY_PATH:-}
ldd "$B" | grep -E "not found|cublas|curand|cuda" || true
"$B" --version

section "GPU tests: fused ops, attention memory, optimiser, training precisions (against the CPU)"
within 150 "$BIN/cuda-tests" --test-threads=1 --nocapture 2>&1 | tee "$OUT/cuda-tests.txt" | grep -vE "^\s*$"

section "benchmark: RepDiff (bf16 and TF32 at batch 128 and 256, f32 anchor)"
within 150 "$B" bench --models DiT-B/2,DiT-XL/2 --batch-size 128,256 --precision bf16,high --iters 3 --json "$OUT/repdiff-bench.json"
within 60 "$B" bench --models DiT-S/2,DiT-B/2 --batch-size 32 --precision highest,bf16 --iters 3 --sample-steps 50 --json "$OUT/repdiff-bench-small.json"

if [ -f "$KIT/DiT/models.py" ]; then
  section "benchmark: PyTorch, the official DiT on the same card"
  within 150 python3 "$(dirname "$0")/bench_torch.py" --dit-repo "$KIT/DiT" --device cuda --models DiT-B/2,DiT-XL/2 \
    --batch-size 128,256 --modes bf16,tf32 --iters 3 --json "$OUT/torch-bench.json"
  within 60 python3 "$(dirname "$0")/bench_torch.py" --dit-repo "$KIT/DiT" --device cuda --models DiT-S/2,DiT-B/2 \
    --batch-size 32 --modes f32,bf16 --iters 3 --sample-steps 50 --json "$OUT/torch-bench-small.json"
  within 90 python3 "$(dirname "$0")/bench_torch.py" --dit-repo "$KIT/DiT" --device cuda --models DiT-B/2 \
    --batch-size 256 --modes bf16-compile --iters 3 --json "$OUT/torch-bench-compile.json"
fi

section "job kinds on the GPU against the CPU: train, sample, classify, counterfactual"
cd "$(mktemp -d)"
within 60 "$B" train --preset tiny-cpu --conditioning class --toy 256 --steps 600 --checkpoint-every 300 --matmul-precision bf16 --out run 2>&1 | tail -3
C=run/checkpoint.safetensors
for dev in gpu cpu; do
  if [ $dev = cpu ]; then export REPDIFF_DEVICE=cpu; else unset REPDIFF_DEVICE; fi
  ( time within 60 "$B" sample --checkpoint $C -n 16 --sampler ddim --steps 50 --seed 1 --out s-$dev ) 2>&1 | tail -4
  ( time within 60 "$B" classify --checkpoint $C --validation s-cpu/samples.safetensors --test s-cpu/samples.safetensors \
      --timesteps 200,500 --draws 64 --sequential --agreement --out cls-$dev.json ) 2>&1 | tail -4
done
unset REPDIFF_DEVICE
within 30 "$B" counterfactual --checkpoint $C --data s-cpu/samples.safetensors -n 4 --t 450 --guidance 3 --out cf 2>&1 | tail -2
python3 - "$OUT" <<'PY'
import json, struct, sys
import numpy as np
def load_file(path):  # safetensors: an 8-byte header length, a JSON header, the raw tensors (f32 here)
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, t in header.items():
        if name != "__metadata__" and t["dtype"] == "F32":
            a, b = t["data_offsets"]
            out[name] = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=np.float32).reshape(t["shape"])
    return out
g = load_file('s-gpu/samples.safetensors')['latents']; c = load_file('s-cpu/samples.safetensors')['latents']
cg, cc = json.load(open('cls-gpu.json')), json.load(open('cls-cpu.json'))
checks = {"samples_max_abs_diff": float(abs(g - c).max()), "samples_rel_diff": float(abs(g - c).max() / abs(c).max()),
          "classify_same_t": cg["chosen_t"] == cc["chosen_t"], "classify_same_predictions": cg["test"]["predicted"] == cc["test"]["predicted"]}
print(checks)
json.dump(checks, open(sys.argv[1] + "/job-checks.json", "w"), indent=2)
PY
cp cf/counterfactuals.png s-gpu/grid.png "$OUT"/ 2>/dev/null
cd - >/dev/null

section "the other networks on the GPU (random weights): Inception-v3, DINOv2, SD VAE"
within 40 "$B" bench --metrics 512 --batch-size 128
within 30 "$B" bench --dino 64
within 40 "$B" bench --imaging 64 --vae-images 16

section "results.json"
python3 - "$OUT" <<'PY'
import json, os, re, sys
out = sys.argv[1]
def load(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) else None
tests = {}
if os.path.exists(os.path.join(out, "cuda-tests.txt")):
    for line in open(os.path.join(out, "cuda-tests.txt")):
        m = re.match(r"test (\S+) \.\.\. (ok|FAILED)", line)
        if m:
            tests[m.group(1)] = m.group(2)
results = {"device": open(os.path.join(out, "device.txt")).read().strip(), "gpu_tests": tests,
           "job_checks": load("job-checks.json"),
           "repdiff": [load("repdiff-bench.json"), load("repdiff-bench-small.json")],
           "torch": [load("torch-bench.json"), load("torch-bench-small.json"), load("torch-bench-compile.json")]}
json.dump(results, open(os.path.join(out, "results.json"), "w"), indent=2)
print(json.dumps({"gpu_tests": tests, "job_checks": results["job_checks"]}, indent=2))
PY
section done
