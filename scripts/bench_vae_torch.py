"""PyTorch reference for `repdiff bench --imaging`: the SD VAE (diffusers AutoencoderKL, same architecture,
random weights) encoding and decoding 4 images at 256x256 with 2 threads.

    venv/bin/pip install torch diffusers && venv/bin/python scripts/bench_vae_torch.py
"""

import time

import torch
from diffusers import AutoencoderKL

torch.set_num_threads(2)
vae = AutoencoderKL(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
    sample_size=256,
).eval()
images = torch.rand(4, 3, 256, 256) * 2 - 1
with torch.no_grad():
    vae.encode(images[:1])  # warm-up
    start = time.time()
    latents = vae.encode(images).latent_dist.sample()
    encode = time.time() - start
    start = time.time()
    vae.decode(latents)
    decode = time.time() - start
print(f"torch {torch.__version__}: encode {4 / encode:.2f} images/s ({encode:.1f} s), "
      f"decode {4 / decode:.2f} images/s ({decode:.1f} s)")
