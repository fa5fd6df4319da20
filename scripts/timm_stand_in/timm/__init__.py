"""A stand-in for the three timm layers facebookresearch/DiT imports (see vision_transformer.py), for
scripts/bench_torch.py on machines where timm cannot be installed (a GPU machine without the internet)."""
