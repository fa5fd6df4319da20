"""One-time conversion of Meta's DINOv2 ViT-S/14 backbone to the safetensors file RepDiff reads.

Meta publishes the weights as a pickled PyTorch state dict, a format candle does not read. Download it once
where you have internet (the link is in facebookresearch/dinov2's README, "Pretrained models"):

    dinov2_vits14_pretrain.pth

then, with torch and safetensors installed (`pip install torch safetensors`):

    python scripts/convert_dinov2_weights.py dinov2_vits14_pretrain.pth model-weights/

which writes model-weights/dinov2_vits14.safetensors (Meta's tensor names, float32, without the
`mask_token` that only masked training uses). `repdiff probe --features dinov2` reads it.
"""

import os
import sys

import torch
from safetensors.torch import save_file


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    source, out_dir = sys.argv[1], sys.argv[2]
    state = torch.load(source, map_location="cpu", weights_only=True)
    tensors = {name: t.float().contiguous() for name, t in state.items() if name != "mask_token"}
    width = tensors.get("cls_token", torch.empty(0)).numel()
    blocks = {name.split(".")[1] for name in tensors if name.startswith("blocks.")}
    if width != 384 or len(blocks) != 12 or "pos_embed" not in tensors:
        sys.exit(f"{source} does not look like DINOv2 ViT-S/14 (width {width}, {len(blocks)} blocks)")
    if tensors["pos_embed"].shape[1] != 1 + 37 * 37:
        sys.exit(f"{source}: a position embedding for {tensors['pos_embed'].shape[1] - 1} patches, not 37 x 37")
    os.makedirs(out_dir, exist_ok=True)
    target = os.path.join(out_dir, "dinov2_vits14.safetensors")
    save_file(tensors, target, metadata={"source": os.path.basename(source)})
    print(f"wrote {len(tensors)} tensors to {target}")


if __name__ == "__main__":
    main()
