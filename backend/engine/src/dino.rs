//! DINOv2 ViT-S/14 as a frozen feature extractor for the linear-probe baseline of Table 6. The features are
//! DINOv2's linear-evaluation features: the final LayerNorm's class token concatenated with the mean of
//! its patch tokens (2 x 384 = 768 values).
//!
//! Weights: Meta's `dinov2_vits14_pretrain.pth` converted once to `model-weights/dinov2_vits14.safetensors`
//! (`scripts/convert_dinov2_weights.py`; the names are the same).
//!
//! The model is written here, not taken from candle-transformers, whose `dinov2` differs from Meta's in
//! four ways: LayerNorm eps 1e-5 (Meta's 1e-6), tanh-approximated GELU (Meta's is exact), the position
//! embedding resampled nearest-neighbour (Meta's bicubic), and a class token not broadcast over the
//! batch (images went through one at a time). This one agrees with Meta's model on the same weights to
//! a relative error under 1e-4 at 518 and at 224 pixels (`dinov2_features_match_metas_model`), runs
//! batched, and uses the engine's fused kernels.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::dit::{AffineNorm, Attention, patchify};
use crate::nn::{Init, Linear, ParamPath, Params};
use crate::{Error, Result};

pub const WEIGHTS_FILE: &str = "dinov2_vits14.safetensors";
/// ViT-S/14's width: the features have twice as many values.
pub const EMBED_DIM: usize = 384;
pub const PATCH: usize = 14;
const DEPTH: usize = 12;
const HEADS: usize = 6;
/// The size the position embedding is made for (37 x 37 patches).
pub const NATIVE_SIZE: usize = 518;
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

fn check_size(size: usize) -> Result<()> {
    if size == 0 || !size.is_multiple_of(PATCH) {
        return Err(Error::Config(format!("the DINOv2 input size is a multiple of {PATCH}, not {size}")));
    }
    Ok(())
}

/// The names and shapes of ViT-S/14's weights, as in Meta's checkpoint (without its `mask_token`).
pub fn parameter_shapes() -> Vec<(String, Vec<usize>)> {
    let d = EMBED_DIM;
    let grid = NATIVE_SIZE / PATCH;
    let mut shapes = vec![
        ("cls_token".to_string(), vec![1, 1, d]),
        ("pos_embed".to_string(), vec![1, 1 + grid * grid, d]),
        ("patch_embed.proj.weight".to_string(), vec![d, 3, PATCH, PATCH]),
        ("patch_embed.proj.bias".to_string(), vec![d]),
        ("norm.weight".to_string(), vec![d]),
        ("norm.bias".to_string(), vec![d]),
    ];
    for i in 0..DEPTH {
        for (name, shape) in [
            ("norm1.weight", vec![d]),
            ("norm1.bias", vec![d]),
            ("attn.qkv.weight", vec![3 * d, d]),
            ("attn.qkv.bias", vec![3 * d]),
            ("attn.proj.weight", vec![d, d]),
            ("attn.proj.bias", vec![d]),
            ("ls1.gamma", vec![d]),
            ("norm2.weight", vec![d]),
            ("norm2.bias", vec![d]),
            ("mlp.fc1.weight", vec![4 * d, d]),
            ("mlp.fc1.bias", vec![4 * d]),
            ("mlp.fc2.weight", vec![d, 4 * d]),
            ("mlp.fc2.bias", vec![d]),
            ("ls2.gamma", vec![d]),
        ] {
            shapes.push((format!("blocks.{i}.{name}"), shape));
        }
    }
    shapes
}

/// Randomly initialised ViT-S/14 weights under Meta's names (seeded: weights N(0, 0.02), LayerNorms 1 and
/// 0, layer scales 0.1): what tests write as a stand-in weights file.
pub fn random_tensors(seed: u64) -> Result<HashMap<String, Tensor>> {
    let mut rng = crate::rng::Rng::new(seed);
    let mut tensors = HashMap::new();
    for (name, shape) in parameter_shapes() {
        let count: usize = shape.iter().product();
        let values: Vec<f32> =
            if name.ends_with("norm1.weight") || name.ends_with("norm2.weight") || name == "norm.weight" {
                vec![1.0; count]
            } else if name.ends_with(".gamma") {
                vec![0.1; count]
            } else if name.ends_with("bias") {
                vec![0.0; count]
            } else {
                rng.normal_vec(count).into_iter().map(|v| 0.02 * v).collect()
            };
        tensors.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
    }
    Ok(tensors)
}

/// Writes [`random_tensors`] (with the `mask_token` Meta's checkpoint also carries) as the weights file in
/// `dir`: a stand-in for tests and benchmarks. Returns its path.
pub fn write_random_weights(dir: &Path, seed: u64) -> Result<std::path::PathBuf> {
    let mut tensors = random_tensors(seed)?;
    tensors.insert("mask_token".into(), Tensor::zeros((1, EMBED_DIM), DType::F32, &Device::Cpu)?);
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join(WEIGHTS_FILE);
    candle_core::safetensors::save(&tensors, &path)?;
    Ok(path)
}

/// One pre-norm block: attention and MLP (exact GELU), each scaled by its layer scale; LayerNorm eps 1e-6
/// as Meta's `norm_layer`.
struct Block {
    norm1: AffineNorm,
    attn: Attention,
    ls1: Tensor,
    norm2: AffineNorm,
    fc1: Linear,
    fc2: Linear,
    ls2: Tensor,
}

impl Block {
    fn new(path: &ParamPath) -> Result<Self> {
        let d = EMBED_DIM;
        Ok(Block {
            norm1: AffineNorm::new(&path.pp("norm1"), d)?,
            attn: Attention::new(&path.pp("attn"), d, HEADS)?,
            ls1: path.get("ls1.gamma", &[d], Init::Ones)?,
            norm2: AffineNorm::new(&path.pp("norm2"), d)?,
            fc1: Linear::new(&path.pp("mlp.fc1"), d, 4 * d, Init::XavierUniform, Init::Zeros)?,
            fc2: Linear::new(&path.pp("mlp.fc2"), 4 * d, d, Init::XavierUniform, Init::Zeros)?,
            ls2: path.get("ls2.gamma", &[d], Init::Ones)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = self.attn.forward(&self.norm1.forward(x)?)?;
        let x = (x + a.broadcast_mul(&self.ls1)?)?;
        let m = self.fc2.forward(&self.fc1.forward(&self.norm2.forward(&x)?)?.gelu_erf()?)?;
        Ok((&x + m.broadcast_mul(&self.ls2)?)?)
    }
}

/// Meta's position embedding (for 518 x 518) resampled to a `grid` x `grid` patch grid as Meta's
/// `interpolate_pos_encoding` does: bicubic (a = -0.75, edge samples repeated, no antialiasing) with the
/// scale factor (grid + 0.1) / 37 of its `interpolate_offset`. `[1, 1 + 37^2, D]` -> `[1, 1 + grid^2, D]`.
fn resample_pos_embed(pos_embed: &Tensor, grid: usize) -> Result<Tensor> {
    let native = NATIVE_SIZE / PATCH;
    if grid == native {
        return Ok(pos_embed.clone());
    }
    let d = EMBED_DIM;
    let values = pos_embed.flatten_all()?.to_vec1::<f32>()?;
    let (class, patches) = values.split_at(d);
    // Per output index: the four source rows (clamped) and their weights. torch computes these in f32 with
    // the reciprocal of the given scale factor: src = (dst + 0.5) / scale - 0.5.
    let inverse = 1.0 / ((grid as f64 + 0.1) / native as f64) as f32;
    let taps: Vec<([usize; 4], [f32; 4])> = (0..grid)
        .map(|dst| {
            let src = inverse * (dst as f32 + 0.5) - 0.5;
            let floor = src.floor();
            let t = src - floor;
            let index = |k: i64| (floor as i64 + k).clamp(0, native as i64 - 1) as usize;
            ([index(-1), index(0), index(1), index(2)], cubic_weights(t))
        })
        .collect();
    let mut out = Vec::with_capacity((1 + grid * grid) * d);
    out.extend_from_slice(class);
    for (rows, wy) in &taps {
        for (cols, wx) in &taps {
            let mut acc = vec![0f32; d];
            for (row, wy) in rows.iter().zip(wy) {
                for (col, wx) in cols.iter().zip(wx) {
                    let w = wy * wx;
                    let src = &patches[(row * native + col) * d..][..d];
                    acc.iter_mut().zip(src).for_each(|(a, s)| *a += w * s);
                }
            }
            out.extend(acc);
        }
    }
    Ok(Tensor::from_vec(out, (1, 1 + grid * grid, d), pos_embed.device())?)
}

/// Keys' cubic-convolution weights (a = -0.75, as torch) for the samples at -1, 0, 1, 2 from the floor.
fn cubic_weights(t: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// DINOv2 ViT-S/14 (frozen): patch embedding, class token, position embedding for the working size,
/// 12 blocks, final LayerNorm.
pub struct Dino {
    patch_embed: Linear,
    cls_token: Tensor,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: AffineNorm,
    size: usize,
    device: Device,
}

impl Dino {
    /// Reads the weights from `weights_dir`; images are resized to `size` (a multiple of 14).
    pub fn pretrained(weights_dir: &Path, size: usize, device: &Device) -> Result<Self> {
        let path = weights_dir.join(WEIGHTS_FILE);
        if !path.exists() {
            return Err(Error::Config(format!(
                "{} not found: convert Meta's dinov2_vits14_pretrain.pth with scripts/convert_dinov2_weights.py \
                 (see model-weights/README.md)",
                path.display()
            )));
        }
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
            .map_err(|e| Error::Data(format!("{}: cannot read as safetensors: {e}", path.display())))?;
        Self::from_tensors(tensors, size, device).map_err(|e| Error::Data(format!("{}: {e}", path.display())))
    }

    /// The model from named tensors (Meta's names; `mask_token` and a head, if present, are not used).
    pub fn from_tensors(mut tensors: HashMap<String, Tensor>, size: usize, device: &Device) -> Result<Self> {
        check_size(size)?;
        let width = tensors.get("cls_token").map(|t| t.elem_count());
        if width != Some(EMBED_DIM) {
            return Err(Error::Data(format!(
                "not DINOv2 ViT-S/14 weights: cls_token has {width:?} values, ViT-S/14 {EMBED_DIM}"
            )));
        }
        tensors.retain(|name, _| name != "mask_token" && !name.starts_with("head."));
        let params = Params::frozen(tensors, device);
        let root = params.root();
        let d = EMBED_DIM;
        let grid = NATIVE_SIZE / PATCH;
        let patch_embed = Linear::conv_patch(&root.pp("patch_embed.proj"), d, 3, PATCH)?;
        let cls_token = root.get("cls_token", &[1, 1, d], Init::Zeros)?;
        let pos_embed =
            resample_pos_embed(&root.get("pos_embed", &[1, 1 + grid * grid, d], Init::Zeros)?, size / PATCH)?;
        let blocks = (0..DEPTH).map(|i| Block::new(&root.pp("blocks").pp(i))).collect::<Result<Vec<_>>>()?;
        let norm = AffineNorm::new(&root.pp("norm"), d)?;
        params.finish().map_err(|e| Error::Data(format!("not DINOv2 ViT-S/14 weights: {e}")))?;
        Ok(Dino { patch_embed, cls_token, pos_embed, blocks, norm, size, device: device.clone() })
    }

    /// The final norm's class token and mean patch token, `[N, 768]`, of normalised images `[N, 3, size, size]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.dim(0)?;
        let patches = self.patch_embed.forward(&patchify(x, PATCH)?)?;
        let cls = self.cls_token.broadcast_as((n, 1, EMBED_DIM))?;
        let mut tokens = Tensor::cat(&[&cls, &patches], 1)?.broadcast_add(&self.pos_embed)?;
        for block in &self.blocks {
            tokens = block.forward(&tokens)?;
        }
        let tokens = self.norm.forward(&tokens)?;
        let count = tokens.dim(1)?;
        Ok(Tensor::cat(&[tokens.narrow(1, 0, 1)?.squeeze(1)?, tokens.narrow(1, 1, count - 1)?.mean(1)?], 1)?)
    }

    /// A model with [`random_tensors`]: for tests and benchmarks only; its features are no DINOv2 baseline.
    pub fn random(seed: u64, size: usize, device: &Device) -> Result<Self> {
        check_size(size)?;
        Self::from_tensors(random_tensors(seed)?, size, device)
    }

    /// Features (768 per image) of `images` ([N, C, H, W] in [-1, 1], C = 1 or 3), `batch_size` at a time.
    pub fn features(&self, images: &Tensor, batch_size: usize) -> Result<Vec<Vec<f32>>> {
        let (n, c, _, _) = images.dims4()?;
        if c != 1 && c != 3 {
            return Err(Error::Data(format!("DINOv2 takes grey or RGB images, not {c} channels")));
        }
        let mean = Tensor::new(&IMAGENET_MEAN, &self.device)?.reshape((1, 3, 1, 1))?;
        let std = Tensor::new(&IMAGENET_STD, &self.device)?.reshape((1, 3, 1, 1))?;
        let mut out = Vec::with_capacity(n);
        for start in (0..n).step_by(batch_size.max(1)) {
            let len = batch_size.max(1).min(n - start);
            let x = images.narrow(0, start, len)?.to_device(&self.device)?.to_dtype(DType::F32)?;
            let x = if c == 1 { x.repeat((1, 3, 1, 1))? } else { x };
            let x = ((x + 1.0)? * 0.5)?.clamp(0f32, 1f32)?;
            let x = crate::metrics::inception::resize_bilinear(&x, self.size, self.size)?;
            let x = x.broadcast_sub(&mean)?.broadcast_div(&std)?;
            out.extend(self.forward(&x)?.to_vec2::<f32>()?);
        }
        Ok(out)
    }
}
