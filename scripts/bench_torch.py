"""PyTorch reference for `repdiff bench`: the official DiT (facebookresearch/DiT `models.py` and `diffusion/`),
same shapes, batches and table. Run it on the same machine in the same session as `repdiff bench`:

    python scripts/bench_torch.py --dit-repo /path/to/DiT --models DiT-S/2,DiT-B/2 --iters 3            # CPU
    python scripts/bench_torch.py --dit-repo DiT --device cuda --batch-size 32,128,256 \\
        --modes f32,tf32,bf16,bf16-compile --sample-steps 50 --json torch.json                          # GPU

Modes: f32 (TF32 off), tf32 (`allow_tf32`: PyTorch's "high"), bf16 (`torch.autocast(bfloat16)`, f32 weights
and optimiser), bf16-compile (the same with `torch.compile`). Peak memory is `torch.cuda.max_memory_allocated`
from before the model is made to the end of its training steps (weights, AdamW state, activations), as
`repdiff bench` counts its pool. Where timm is missing (a GPU machine without the internet), DiT's three timm
layers come from scripts/timm_stand_in (PatchEmbed, Attention with scaled_dot_product_attention, Mlp).
"""
import argparse
import json
import os
import sys
import time

import torch


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dit-repo", required=True)
    parser.add_argument("--models", default="DiT-S/2,DiT-B/2")
    parser.add_argument("--batch-size", default="16", help="comma-separated: a row per model, mode and batch")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", default="f32", help="comma-separated: f32, tf32, bf16, bf16-compile")
    parser.add_argument("--bf16", action="store_true", help="the same as adding bf16 to --modes")
    parser.add_argument("--sample-steps", type=int, default=0, help="also time DDIM sampling with this many steps")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    sys.path.insert(0, args.dit_repo)
    try:
        import timm  # noqa: F401
    except ImportError:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "timm_stand_in"))
    from models import DiT_models  # the official definitions
    from diffusion import create_diffusion

    device = torch.device(args.device)
    modes = args.modes.split(",") + (["bf16"] if args.bf16 else [])
    batches = [int(b) for b in args.batch_size.split(",")]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"PyTorch {torch.__version__} on {where}; 4x32x32 inputs, mean of {args.iters} timed runs after a warm-up\n")
    sampling = f" DDIM-{args.sample_steps} images/s |" if args.sample_steps else ""
    print(f"| model | mode | batch | parameters | forward images/s | train s/step | train images/s | peak GiB |{sampling}")
    print("|---|---|---|---|---|---|---|---|" + ("---|" if sampling else ""))
    rows = []
    for name in args.models.split(","):
        for mode in modes:
            for n in batches:
                row = {"model": name, "mode": mode, "batch": n}
                try:
                    measure(row, DiT_models[name], create_diffusion, device, mode, n, args)
                except torch.cuda.OutOfMemoryError as e:
                    row["error"] = f"out of memory: {str(e).splitlines()[0]}"
                rows.append(row)
                print(markdown(row, bool(sampling)))
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "device": where, "iters": args.iters, "rows": rows}, f, indent=2)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(row, make_model, create_diffusion, device, mode, n, args):
    cuda = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    torch.backends.cudnn.allow_tf32 = mode == "tf32"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    model = make_model(input_size=32, num_classes=2).to(device)
    diffusion = create_diffusion("")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)
    x = torch.randn(n, 4, 32, 32, device=device)
    y = torch.arange(n, device=device) % 2
    t = torch.randint(0, 1000, (n,), device=device)
    run = torch.compile(model) if mode == "bf16-compile" else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode.startswith("bf16"))

    def train_step():
        model.train()
        with autocast:
            loss = diffusion.training_losses(run, x, t, dict(y=y))["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def forward():
        model.eval()
        with torch.no_grad(), autocast:
            run(x, t, y).sum().item()

    def mean_seconds(f, iters):
        f()
        synchronize(device)
        start = time.perf_counter()
        for _ in range(iters):
            f()
        synchronize(device)
        return (time.perf_counter() - start) / iters

    step = mean_seconds(train_step, args.iters)
    row["parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    row["train_s_per_step"] = step
    row["train_images_per_s"] = n / step
    row["peak_bytes"] = torch.cuda.max_memory_allocated(device) if cuda else None
    del opt
    fwd = mean_seconds(forward, args.iters)
    row["forward_images_per_s"] = n / fwd
    if args.sample_steps:
        sampler = create_diffusion(f"ddim{args.sample_steps}")

        def sample():
            model.eval()
            with torch.no_grad(), autocast:
                noise = torch.randn(n, 4, 32, 32, device=device)
                sampler.ddim_sample_loop(run, noise.shape, noise, clip_denoised=False, model_kwargs=dict(y=y),
                                         device=device)

        row["sample_images_per_s"] = n / mean_seconds(sample, 1)


def markdown(row, sampling):
    head = f"| {row['model']} | {row['mode']} | {row['batch']} |"
    if "error" in row:
        return f"{head} failed: {row['error']} |"
    peak = f"{row['peak_bytes'] / 2 ** 30:.2f}" if row.get("peak_bytes") else "-"
    sample = f" {row['sample_images_per_s']:.1f} |" if sampling else ""
    return (f"{head} {row['parameters'] / 1e6:.1f}M | {row['forward_images_per_s']:.1f} | {row['train_s_per_step']:.3f} "
            f"| {row['train_images_per_s']:.1f} | {peak} |{sample}")


if __name__ == "__main__":
    main()
