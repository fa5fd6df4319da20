//! DINOv2 ViT-S/14 as a frozen feature extractor for the linear-probe baseline of Table 6, through
//! candle-transformers' model. The features are DINOv2's linear-evaluation features: the final
//! LayerNorm's class token concatenated with the mean of its patch tokens (2 x 384 = 768 values).
//!
//! Weights: Meta's `dinov2_vits14_pretrain.pth` converted once to `model-weights/dinov2_vits14.safetensors`
//! (`scripts/convert_dinov2_weights.py`; the names are the same). The backbone checkpoint has no
//! classification head; candle-transformers' model ends in one (1000 ImageNet classes), so the head is set
//! to pass the 768 features through unchanged. Candle-transformers' model sizes the position embedding
//! for 518 x 518 inputs and resamples it to other sizes with nearest-neighbour interpolation (the original
//! uses bicubic): 518 is the faithful size, 224 (the default, about 8x cheaper) an approximation. Its
//! forward pass joins the class token to the patch tokens without broadcasting over the batch, so images
//! go through it one at a time.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Module, VarBuilder};
use candle_transformers::models::dinov2::{self, DinoVisionTransformer};

use crate::{Error, Result};

pub const WEIGHTS_FILE: &str = "dinov2_vits14.safetensors";
/// ViT-S/14's width: the features have twice as many values.
pub const EMBED_DIM: usize = 384;
pub const PATCH: usize = 14;
/// The size candle-transformers' position embedding is made for.
pub const NATIVE_SIZE: usize = 518;
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// The ImageNet classes of candle-transformers' head.
const HEAD_OUTPUTS: usize = 1000;

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
    for i in 0..12 {
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

pub struct Dino {
    model: DinoVisionTransformer,
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

    /// The model from named tensors (Meta's names; a head, if present, is replaced).
    pub fn from_tensors(mut tensors: HashMap<String, Tensor>, size: usize, device: &Device) -> Result<Self> {
        check_size(size)?;
        let width = tensors.get("cls_token").map(|t| t.elem_count());
        if width != Some(EMBED_DIM) {
            return Err(Error::Data(format!(
                "not DINOv2 ViT-S/14 weights: cls_token has {width:?} values, ViT-S/14 {EMBED_DIM}"
            )));
        }
        // The head passes the concatenated features through: identity on the first 768 outputs.
        let features = 2 * EMBED_DIM;
        let eye = Tensor::eye(features, DType::F32, &Device::Cpu)?;
        let head =
            Tensor::cat(&[eye, Tensor::zeros((HEAD_OUTPUTS - features, features), DType::F32, &Device::Cpu)?], 0)?;
        tensors.insert("head.weight".into(), head);
        tensors.insert("head.bias".into(), Tensor::zeros(HEAD_OUTPUTS, DType::F32, &Device::Cpu)?);
        tensors.remove("mask_token");
        let tensors = tensors
            .into_iter()
            .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?.to_device(device)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let model = dinov2::vit_small(vb).map_err(|e| Error::Data(format!("not DINOv2 ViT-S/14 weights: {e}")))?;
        Ok(Dino { model, size, device: device.clone() })
    }

    /// A model with [`random_tensors`]: for tests and benchmarks only; its features are no DINOv2 baseline.
    pub fn random(seed: u64, size: usize, device: &Device) -> Result<Self> {
        check_size(size)?;
        Self::from_tensors(random_tensors(seed)?, size, device)
    }

    /// Features (768 per image) of `images` ([N, C, H, W] in [-1, 1], C = 1 or 3), prepared `batch_size`
    /// at a time (and measured one by one; see the module's note).
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
            for i in 0..len {
                let y = self.model.forward(&x.narrow(0, i, 1)?)?.narrow(1, 0, 2 * EMBED_DIM)?;
                out.extend(y.to_vec2::<f32>()?);
            }
        }
        Ok(out)
    }
}
