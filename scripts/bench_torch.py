"""PyTorch reference for `repdiff bench`: the official DiT (facebookresearch/DiT) and its diffusion, same
shapes and batch, same table. Run it on the same machine in the same session as `repdiff bench`:

    python scripts/bench_torch.py --dit-repo /path/to/DiT --models DiT-S/2,DiT-B/2 --iters 3
"""
import argparse
import sys
import time

import torch


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dit-repo", required=True)
    parser.add_argument("--models", default="DiT-S/2,DiT-B/2")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--bf16", action="store_true",
                        help="also time each model under torch.autocast('cpu', bfloat16): bf16 matmuls, f32 weights")
    args = parser.parse_args()
    sys.path.insert(0, args.dit_repo)
    from models import DiT_models  # the official definitions
    from diffusion import create_diffusion

    n = args.batch_size
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads; batch {n}, 4x32x32 inputs, "
          f"mean of {args.iters} timed runs after a warm-up\n")
    print("| model | parameters | forward s/batch | forward images/s | train s/step | train steps/s |")
    print("|---|---|---|---|---|---|")
    rows = [(name, False) for name in args.models.split(",")]
    if args.bf16:
        rows = [(name, bf16) for name in args.models.split(",") for bf16 in (False, True)]
    for name, bf16 in rows:
        torch.manual_seed(0)
        model = DiT_models[name](input_size=32, num_classes=2)
        diffusion = create_diffusion("")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)
        x = torch.randn(n, 4, 32, 32)
        y = torch.arange(n) % 2
        t = torch.randint(0, 1000, (n,))

        def forward():
            model.eval()
            with torch.no_grad():
                model(x, t, y).sum().item()

        def train_step():
            model.train()
            loss = diffusion.training_losses(model, x, t, dict(y=y))["loss"].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        def mean_seconds(f):
            f()
            start = time.perf_counter()
            for _ in range(args.iters):
                f()
            return (time.perf_counter() - start) / args.iters

        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            fwd = mean_seconds(forward)
            step = mean_seconds(train_step)
        params = sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6
        label = f"{name} (autocast bf16)" if bf16 else name
        print(f"| {label} | {params:.1f}M | {fwd:.3f} | {n / fwd:.1f} | {step:.3f} | {1 / step:.3f} |")


if __name__ == "__main__":
    main()
