"""One-time conversion of pytorch-fid's FID Inception weights to the safetensors file RepDiff reads.

pytorch-fid publishes the weights of TensorFlow's inception-2015-12-05 graph (the FID network) as a
pickled PyTorch state dict, a format candle does not read. Download it once where you have internet:

    https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth

then, with torch and safetensors installed (`pip install torch safetensors`):

    python scripts/convert_inception_weights.py pt_inception-2015-12-05-6726825d.pth model-weights/

which writes model-weights/pt_inception-2015-12-05.safetensors. `repdiff evaluate` and evaluate jobs use it
when present; without it they fall back to the documented random network and say so.
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
    tensors = {
        name: tensor.float().contiguous()
        for name, tensor in state.items()
        if not name.endswith("num_batches_tracked")
    }
    if "Mixed_6d.branch1x1.conv.weight" not in tensors or tensors["fc.weight"].shape[0] != 1008:
        sys.exit(f"{source} does not look like pytorch-fid's FID Inception (1008 classes)")
    os.makedirs(out_dir, exist_ok=True)
    target = os.path.join(out_dir, "pt_inception-2015-12-05.safetensors")
    save_file(tensors, target, metadata={"source": os.path.basename(source)})
    print(f"wrote {len(tensors)} tensors to {target}")


if __name__ == "__main__":
    main()
