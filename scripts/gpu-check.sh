#!/bin/bash
# The CUDA check of docs/benchmarks.md, for a machine with an NVIDIA GPU: trains, samples and classifies
# on the GPU, compares samples and classifications against the CPU (REPDIFF_DEVICE=cpu), draws
# counterfactuals and measures the paper's models. Usage: scripts/gpu-check.sh PATH/TO/repdiff [OUT]
# (a `--features cuda` build; OUT, default ./gpu-check, gets the log and figures). Its libraries
# (cuBLAS, cuRAND, and the CUDA runtime the kernels were built with) must be on LD_LIBRARY_PATH or
# under /usr/local/cuda*.
B=$(realpath "${1:?usage: scripts/gpu-check.sh PATH/TO/repdiff [OUT]}")
OUT=$(mkdir -p "${2:-gpu-check}" && realpath "${2:-gpu-check}")
D=$(dirname "$B")
exec > >(tee "$OUT/log.txt") 2>&1
set -x
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
# The newest toolkit's libraries under /usr/local (what `ldd` does not find otherwise).
CUBLAS=$(find /usr/local -name 'libcublas.so.1[0-9]*' 2>/dev/null | sort -V | tail -1)
CURAND=$(find /usr/local -name 'libcurand.so.10*' 2>/dev/null | sort -V | tail -1)
echo "cublas $CUBLAS curand $CURAND"
export LD_LIBRARY_PATH=$D:$(dirname "$CUBLAS"):$(dirname "$CURAND"):$LD_LIBRARY_PATH
ldd $B | grep -E "not found|cublas|curand|cudart|libcuda"
cd /tmp
# A. the tiny preset, class-conditional, on the toy set, trained on the GPU
time $B train --preset tiny-cpu --conditioning class --toy 256 --steps 1000 --checkpoint-every 500 --out /tmp/gpu-run 2>&1 | tail -6
C=/tmp/gpu-run/checkpoint.safetensors
# B. the same samples on GPU and CPU (seeded noise from our own RNG: they must agree)
time $B sample --checkpoint $C -n 16 --sampler ddim --steps 50 --seed 1 --out /tmp/s-gpu 2>&1 | tail -4
time REPDIFF_DEVICE=cpu $B sample --checkpoint $C -n 16 --sampler ddim --steps 50 --seed 1 --out /tmp/s-cpu 2>&1 | tail -4
python3 - <<'PY'
from safetensors.numpy import load_file
import numpy as np
g = load_file('/tmp/s-gpu/samples.safetensors')['latents']; c = load_file('/tmp/s-cpu/samples.safetensors')['latents']
print('samples GPU vs CPU: max abs diff', float(np.abs(g - c).max()), 'rel', float(np.abs(g - c).max() / np.abs(c).max()))
PY
cp /tmp/s-gpu/grid.png "$OUT/grid-gpu.png"
# C. the diffusion classifier on GPU and CPU (sequential, agreement measured)
for dev in gpu cpu; do
  if [ $dev = cpu ]; then export REPDIFF_DEVICE=cpu; else unset REPDIFF_DEVICE; fi
  ( time $B classify --checkpoint $C --validation /tmp/s-cpu/samples.safetensors --test /tmp/s-cpu/samples.safetensors --timesteps 200,500 --draws 64 --sequential --agreement --out /tmp/cls-$dev.json ) 2>&1 | tail -16
done
unset REPDIFF_DEVICE
python3 -c "
import json; g=json.load(open('/tmp/cls-gpu.json')); c=json.load(open('/tmp/cls-cpu.json'))
print('classify GPU vs CPU: same chosen t', g['chosen_t']==c['chosen_t'], 'same test predictions', g['test']['predicted']==c['test']['predicted'])"
# D. counterfactuals and trajectories on the GPU
$B counterfactual --checkpoint $C --data /tmp/s-cpu/samples.safetensors -n 4 --t 450 --guidance 3 --out /tmp/cf 2>&1 | tail -8
cp /tmp/cf/counterfactuals.png "$OUT"/ 2>/dev/null
# E. throughput of the paper's models on this GPU (debug-built RepDiff crates, optimised candle)
$B bench --models DiT-S/2,DiT-B/2,DiT-XL/2 --batch-size 16 --iters 5 --representation 2>&1 | tail -14
for bs in 64 128; do $B bench --models DiT-B/2 --batch-size $bs --iters 3 2>&1 | tail -3; done
