"""The PyTorch side of `repdiff bench --metrics`: pytorch-fid's Inception-v3 (random weights: speed only) on
8 images of 256x256, two threads. Needs torch, torchvision, pytorch-fid."""
import time, torch, torchvision
import pytorch_fid.inception as fid
torch.set_num_threads(2)
fid.load_state_dict_from_url = lambda *a, **k: {}
torchvision.models.inception.Inception3.load_state_dict = lambda self, sd, strict=True: None
m = fid.InceptionV3(output_blocks=[3]).eval()
x = torch.rand(8, 3, 256, 256)
with torch.no_grad():
    m(x)
    t = time.time()
    for _ in range(2):
        m(x)
    dt = (time.time() - t) / 16
print(f"pytorch-fid CPU (2 threads, torch {torch.__version__}): {dt*1e3:.1f} ms/image, {1/dt:.2f} images/s")
