//! Inception-v3 as FID measures with it: the network of pytorch-fid (`fid_inception_v3`), itself the
//! TensorFlow graph `inception-2015-12-05` that the ADM evaluator (and so DiT) used. That graph differs
//! from torchvision's Inception-v3 in four places, all kept here: average pools that do not count the
//! padding, a max pool in the last block's pooling branch, 1008 classes, and batch norm with eps 1e-3.
//!
//! Parameters carry pytorch-fid's state-dict names (`Mixed_6d.branch1x1.conv.weight`, ...). Batch norm
//! is folded into the convolutions when the network is built (inference only), so a forward is convs,
//! ReLUs, pools and concatenations.
//!
//! Outputs, per image: `pool` (the 2,048-d `pool_3` features of FID), `spatial` (the first 7 channels of
//! `mixed_6/conv`, i.e. `Mixed_6d.branch1x1`, flattened height-width-channel: 17 x 17 x 7 = 2,023 values,
//! the sFID features) and `logits` (pool_3 times the classifier's weight, without its bias, as the ADM
//! evaluator computes the Inception Score's softmax).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{D, DType, Device, Tensor};

use crate::ops::{Pool3x3, pool_3x3};

use crate::{Error, Result};

/// The file `repdiff` reads pretrained FID weights from, in the weights folder (see
/// `scripts/convert_inception_weights.py`).
pub const WEIGHTS_FILE: &str = "pt_inception-2015-12-05.safetensors";
pub const POOL_DIM: usize = 2048;
pub const SPATIAL_DIM: usize = 17 * 17 * 7;
pub const CLASSES: usize = 1008;
const INPUT_SIZE: usize = 299;
const BN_EPS: f64 = 1e-3;

/// One `BasicConv2d` (conv without bias, batch norm, ReLU), its batch norm folded into a bias.
struct ConvUnit {
    weight: Tensor,
    /// `[c_out]`.
    bias: Tensor,
    stride: usize,
    padding: (usize, usize),
}

impl ConvUnit {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::ops::conv2d_bias_relu(x, &self.weight, &self.bias, self.stride, self.padding)
    }
}

/// The layer list: name, input and output channels, kernel (h, w), stride, padding (h, w).
struct Spec {
    name: String,
    c_in: usize,
    c_out: usize,
    kernel: (usize, usize),
    stride: usize,
    padding: (usize, usize),
}

fn specs() -> Vec<Spec> {
    let mut all = Vec::new();
    let mut add = |name: String, c_in, c_out, kernel: (usize, usize), stride, padding| {
        all.push(Spec { name, c_in, c_out, kernel, stride, padding })
    };
    add("Conv2d_1a_3x3".into(), 3, 32, (3, 3), 2, (0, 0));
    add("Conv2d_2a_3x3".into(), 32, 32, (3, 3), 1, (0, 0));
    add("Conv2d_2b_3x3".into(), 32, 64, (3, 3), 1, (1, 1));
    add("Conv2d_3b_1x1".into(), 64, 80, (1, 1), 1, (0, 0));
    add("Conv2d_4a_3x3".into(), 80, 192, (3, 3), 1, (0, 0));
    for (block, c_in, pool) in [("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)] {
        let n = |b: &str| format!("{block}.{b}");
        add(n("branch1x1"), c_in, 64, (1, 1), 1, (0, 0));
        add(n("branch5x5_1"), c_in, 48, (1, 1), 1, (0, 0));
        add(n("branch5x5_2"), 48, 64, (5, 5), 1, (2, 2));
        add(n("branch3x3dbl_1"), c_in, 64, (1, 1), 1, (0, 0));
        add(n("branch3x3dbl_2"), 64, 96, (3, 3), 1, (1, 1));
        add(n("branch3x3dbl_3"), 96, 96, (3, 3), 1, (1, 1));
        add(n("branch_pool"), c_in, pool, (1, 1), 1, (0, 0));
    }
    add("Mixed_6a.branch3x3".into(), 288, 384, (3, 3), 2, (0, 0));
    add("Mixed_6a.branch3x3dbl_1".into(), 288, 64, (1, 1), 1, (0, 0));
    add("Mixed_6a.branch3x3dbl_2".into(), 64, 96, (3, 3), 1, (1, 1));
    add("Mixed_6a.branch3x3dbl_3".into(), 96, 96, (3, 3), 2, (0, 0));
    for (block, c7) in [("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)] {
        let n = |b: &str| format!("{block}.{b}");
        add(n("branch1x1"), 768, 192, (1, 1), 1, (0, 0));
        add(n("branch7x7_1"), 768, c7, (1, 1), 1, (0, 0));
        add(n("branch7x7_2"), c7, c7, (1, 7), 1, (0, 3));
        add(n("branch7x7_3"), c7, 192, (7, 1), 1, (3, 0));
        add(n("branch7x7dbl_1"), 768, c7, (1, 1), 1, (0, 0));
        add(n("branch7x7dbl_2"), c7, c7, (7, 1), 1, (3, 0));
        add(n("branch7x7dbl_3"), c7, c7, (1, 7), 1, (0, 3));
        add(n("branch7x7dbl_4"), c7, c7, (7, 1), 1, (3, 0));
        add(n("branch7x7dbl_5"), c7, 192, (1, 7), 1, (0, 3));
        add(n("branch_pool"), 768, 192, (1, 1), 1, (0, 0));
    }
    add("Mixed_7a.branch3x3_1".into(), 768, 192, (1, 1), 1, (0, 0));
    add("Mixed_7a.branch3x3_2".into(), 192, 320, (3, 3), 2, (0, 0));
    add("Mixed_7a.branch7x7x3_1".into(), 768, 192, (1, 1), 1, (0, 0));
    add("Mixed_7a.branch7x7x3_2".into(), 192, 192, (1, 7), 1, (0, 3));
    add("Mixed_7a.branch7x7x3_3".into(), 192, 192, (7, 1), 1, (3, 0));
    add("Mixed_7a.branch7x7x3_4".into(), 192, 192, (3, 3), 2, (0, 0));
    for (block, c_in) in [("Mixed_7b", 1280), ("Mixed_7c", 2048)] {
        let n = |b: &str| format!("{block}.{b}");
        add(n("branch1x1"), c_in, 320, (1, 1), 1, (0, 0));
        add(n("branch3x3_1"), c_in, 384, (1, 1), 1, (0, 0));
        add(n("branch3x3_2a"), 384, 384, (1, 3), 1, (0, 1));
        add(n("branch3x3_2b"), 384, 384, (3, 1), 1, (1, 0));
        add(n("branch3x3dbl_1"), c_in, 448, (1, 1), 1, (0, 0));
        add(n("branch3x3dbl_2"), 448, 384, (3, 3), 1, (1, 1));
        add(n("branch3x3dbl_3a"), 384, 384, (1, 3), 1, (0, 1));
        add(n("branch3x3dbl_3b"), 384, 384, (3, 1), 1, (1, 0));
        add(n("branch_pool"), c_in, 192, (1, 1), 1, (0, 0));
    }
    all
}

/// The five tensors of a `BasicConv2d` and the classifier, as pytorch-fid names them, with their shapes.
pub fn parameter_shapes() -> Vec<(String, Vec<usize>)> {
    let mut shapes = Vec::new();
    for s in specs() {
        shapes.push((format!("{}.conv.weight", s.name), vec![s.c_out, s.c_in, s.kernel.0, s.kernel.1]));
        for p in ["weight", "bias", "running_mean", "running_var"] {
            shapes.push((format!("{}.bn.{p}", s.name), vec![s.c_out]));
        }
    }
    shapes.push(("fc.weight".into(), vec![CLASSES, POOL_DIM]));
    shapes.push(("fc.bias".into(), vec![CLASSES]));
    shapes
}

/// The value the documented random initialisation puts at element `index` of parameter `name`: a
/// counter-based draw (SplitMix64 of the seed, the name's FNV-1a hash and the index), so any language
/// rebuilds the same network (`tests/fixtures/inception/gen_inception_reference.py` does, in NumPy).
/// Convolutions are He-uniform, the classifier uniform in +-1/sqrt(2048), batch-norm scales and
/// variances uniform in [0.5, 1.5), shifts and means in [-0.1, 0.1).
pub fn random_value(seed: u64, name: &str, index: u64, fan_in: usize) -> f32 {
    let u = counter_uniform(seed, fnv1a(name), index);
    let centred = 2.0 * u - 1.0;
    if name.ends_with(".conv.weight") {
        centred * (6.0 / fan_in as f32).sqrt()
    } else if name.starts_with("fc.") {
        centred / (POOL_DIM as f32).sqrt()
    } else if name.ends_with(".bn.weight") || name.ends_with(".bn.running_var") {
        0.5 + u
    } else {
        0.1 * centred
    }
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01B3))
}

/// Uniform in [0, 1) with 24 bits (exact in f32).
fn counter_uniform(seed: u64, stream: u64, index: u64) -> f32 {
    let mut z = seed
        .wrapping_add(stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(index.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 24) as f32
}

/// Which network produced a set of features: metrics are only comparable within one extractor, and only
/// the pretrained one gives numbers that may be called FID.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Extractor {
    /// pytorch-fid's pretrained weights: the field's FID, sFID and IS.
    Pretrained,
    /// The randomly initialised network of [`random_value`] with this seed (Naeem et al. 2020: random
    /// embeddings are informative for non-ImageNet domains). Its "FID" is a Frechet distance in a random
    /// feature space, named so wherever it is shown.
    Random { seed: u64 },
}

impl Extractor {
    /// A short label for tables and file names: `inception-v3` or `random-inception-v3-seed0`.
    pub fn label(&self) -> String {
        match self {
            Extractor::Pretrained => "inception-v3".into(),
            Extractor::Random { seed } => format!("random-inception-v3-seed{seed}"),
        }
    }
}

/// What the network computes for a batch (rows are images).
pub struct InceptionFeatures {
    pub pool: Tensor,
    pub spatial: Tensor,
    pub logits: Tensor,
}

pub struct InceptionV3 {
    convs: HashMap<String, ConvUnit>,
    fc_weight: Tensor,
    extractor: Extractor,
    device: Device,
}

impl InceptionV3 {
    /// The pretrained network from `weights_dir/`[`WEIGHTS_FILE`].
    pub fn pretrained(weights_dir: &Path, device: &Device) -> Result<Self> {
        let path = weights_dir.join(WEIGHTS_FILE);
        if !path.exists() {
            return Err(Error::Config(format!(
                "{} not found: convert pytorch-fid's pt_inception-2015-12-05-6726825d.pth with \
                 scripts/convert_inception_weights.py (see README, Generation metrics)",
                path.display()
            )));
        }
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
            .map_err(|e| Error::Data(format!("{}: cannot read as safetensors: {e}", path.display())))?;
        Self::from_tensors(tensors, Extractor::Pretrained, device)
    }

    /// The fallback extractor: the documented random initialisation with `seed`.
    pub fn random(seed: u64, device: &Device) -> Result<Self> {
        let mut tensors = HashMap::new();
        for (name, shape) in parameter_shapes() {
            let count: usize = shape.iter().product();
            let fan_in: usize = shape[1..].iter().product();
            let values: Vec<f32> = (0..count as u64).map(|i| random_value(seed, &name, i, fan_in.max(1))).collect();
            tensors.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
        }
        Self::from_tensors(tensors, Extractor::Random { seed }, device)
    }

    /// The pretrained network when its weights are in `weights_dir`, else the random one with seed 0.
    pub fn pretrained_or_random(weights_dir: &Path, device: &Device) -> Result<Self> {
        if weights_dir.join(WEIGHTS_FILE).exists() {
            Self::pretrained(weights_dir, device)
        } else {
            Self::random(0, device)
        }
    }

    /// Builds the network from pytorch-fid's state dict (extra entries such as `num_batches_tracked` are
    /// ignored; a missing or misshapen one is an error naming it).
    pub fn from_tensors(tensors: HashMap<String, Tensor>, extractor: Extractor, device: &Device) -> Result<Self> {
        let get = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = tensors
                .get(name)
                .ok_or_else(|| Error::Data(format!("Inception weights lack {name}")))?
                .to_dtype(DType::F64)?;
            crate::error::expect_shape(name, &t, shape)?;
            Ok(t)
        };
        let mut convs = HashMap::new();
        for s in specs() {
            let weight = get(&format!("{}.conv.weight", s.name), &[s.c_out, s.c_in, s.kernel.0, s.kernel.1])?;
            let bn = |p: &str| get(&format!("{}.bn.{p}", s.name), &[s.c_out]);
            // y = gamma (conv(x) - mean) / sqrt(var + eps) + beta, folded in f64.
            let scale = (bn("weight")? / (bn("running_var")? + BN_EPS)?.sqrt()?)?;
            let bias = (bn("bias")? - (bn("running_mean")? * &scale)?)?;
            let weight = weight.broadcast_mul(&scale.reshape((s.c_out, 1, 1, 1))?)?;
            let weight = weight.to_dtype(DType::F32)?.to_device(device)?;
            let bias = bias.to_dtype(DType::F32)?.to_device(device)?;
            convs.insert(s.name, ConvUnit { weight, bias, stride: s.stride, padding: s.padding });
        }
        let fc_weight = get("fc.weight", &[CLASSES, POOL_DIM])?.to_dtype(DType::F32)?.t()?.contiguous()?;
        Ok(InceptionV3 { convs, fc_weight: fc_weight.to_device(device)?, extractor, device: device.clone() })
    }

    pub fn extractor(&self) -> &Extractor {
        &self.extractor
    }

    fn conv(&self, name: &str, x: &Tensor) -> Result<Tensor> {
        self.convs[name].forward(x)
    }

    /// Features of `images` (`[N, 1 or 3, H, W]`, values in [-1, 1]; grey is replicated to RGB), resized
    /// bilinearly to 299 x 299 as pytorch-fid does (`align_corners=False`, no antialiasing).
    pub fn features(&self, images: &Tensor) -> Result<InceptionFeatures> {
        let (n, c, _, _) = images.dims4()?;
        let x = match c {
            3 => images.clone(),
            1 => images.repeat((1, 3, 1, 1))?,
            _ => return Err(Error::Config(format!("Inception takes grey or RGB images, got {c} channels"))),
        };
        let x = resize_bilinear(&x.to_dtype(DType::F32)?.to_device(&self.device)?, INPUT_SIZE, INPUT_SIZE)?;
        let x = self.conv("Conv2d_1a_3x3", &x)?;
        let x = self.conv("Conv2d_2a_3x3", &x)?;
        let x = self.conv("Conv2d_2b_3x3", &x)?;
        let x = pool_3x3(&x, Pool3x3::Max, 2, 0)?;
        let x = self.conv("Conv2d_3b_1x1", &x)?;
        let x = self.conv("Conv2d_4a_3x3", &x)?;
        let mut x = pool_3x3(&x, Pool3x3::Max, 2, 0)?;
        for block in ["Mixed_5b", "Mixed_5c", "Mixed_5d"] {
            x = self.block_a(block, &x)?;
        }
        x = self.block_b(&x)?;
        let mut spatial = None;
        for block in ["Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"] {
            let (out, branch1x1) = self.block_c(block, &x)?;
            if block == "Mixed_6d" {
                spatial = Some(branch1x1.narrow(1, 0, 7)?.permute((0, 2, 3, 1))?.reshape((n, SPATIAL_DIM))?);
            }
            x = out;
        }
        x = self.block_d(&x)?;
        x = self.block_e("Mixed_7b", &x, Pool::Average)?;
        x = self.block_e("Mixed_7c", &x, Pool::Max)?;
        let pool = x.mean(D::Minus1)?.mean(D::Minus1)?;
        let logits = pool.matmul(&self.fc_weight)?;
        Ok(InceptionFeatures { pool, spatial: spatial.expect("Mixed_6d runs"), logits })
    }

    fn block_a(&self, block: &str, x: &Tensor) -> Result<Tensor> {
        let c = |name: &str, x: &Tensor| self.conv(&format!("{block}.{name}"), x);
        let b1 = c("branch1x1", x)?;
        let b5 = c("branch5x5_2", &c("branch5x5_1", x)?)?;
        let b3 = c("branch3x3dbl_3", &c("branch3x3dbl_2", &c("branch3x3dbl_1", x)?)?)?;
        let bp = c("branch_pool", &pool_3x3(x, Pool3x3::Average, 1, 1)?)?;
        Ok(Tensor::cat(&[b1, b5, b3, bp], 1)?)
    }

    fn block_b(&self, x: &Tensor) -> Result<Tensor> {
        let c = |name: &str, x: &Tensor| self.conv(&format!("Mixed_6a.{name}"), x);
        let b3 = c("branch3x3", x)?;
        let bd = c("branch3x3dbl_3", &c("branch3x3dbl_2", &c("branch3x3dbl_1", x)?)?)?;
        let bp = pool_3x3(x, Pool3x3::Max, 2, 0)?;
        Ok(Tensor::cat(&[b3, bd, bp], 1)?)
    }

    /// The block's output and its `branch1x1` (the sFID features are Mixed_6d's).
    fn block_c(&self, block: &str, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let c = |name: &str, x: &Tensor| self.conv(&format!("{block}.{name}"), x);
        let b1 = c("branch1x1", x)?;
        let b7 = c("branch7x7_3", &c("branch7x7_2", &c("branch7x7_1", x)?)?)?;
        let mut bd = c("branch7x7dbl_1", x)?;
        for i in 2..=5 {
            bd = c(&format!("branch7x7dbl_{i}"), &bd)?;
        }
        let bp = c("branch_pool", &pool_3x3(x, Pool3x3::Average, 1, 1)?)?;
        Ok((Tensor::cat(&[&b1, &b7, &bd, &bp], 1)?, b1))
    }

    fn block_d(&self, x: &Tensor) -> Result<Tensor> {
        let c = |name: &str, x: &Tensor| self.conv(&format!("Mixed_7a.{name}"), x);
        let b3 = c("branch3x3_2", &c("branch3x3_1", x)?)?;
        let mut b7 = c("branch7x7x3_1", x)?;
        for i in 2..=4 {
            b7 = c(&format!("branch7x7x3_{i}"), &b7)?;
        }
        let bp = pool_3x3(x, Pool3x3::Max, 2, 0)?;
        Ok(Tensor::cat(&[b3, b7, bp], 1)?)
    }

    fn block_e(&self, block: &str, x: &Tensor, pool: Pool) -> Result<Tensor> {
        let c = |name: &str, x: &Tensor| self.conv(&format!("{block}.{name}"), x);
        let b1 = c("branch1x1", x)?;
        let b3 = c("branch3x3_1", x)?;
        let b3 = Tensor::cat(&[c("branch3x3_2a", &b3)?, c("branch3x3_2b", &b3)?], 1)?;
        let bd = c("branch3x3dbl_2", &c("branch3x3dbl_1", x)?)?;
        let bd = Tensor::cat(&[c("branch3x3dbl_3a", &bd)?, c("branch3x3dbl_3b", &bd)?], 1)?;
        let pooled = match pool {
            Pool::Average => pool_3x3(x, Pool3x3::Average, 1, 1)?,
            // The FID graph's max pool (3x3, stride 1, padding 1).
            Pool::Max => pool_3x3(x, Pool3x3::Max, 1, 1)?,
        };
        let bp = c("branch_pool", &pooled)?;
        Ok(Tensor::cat(&[b1, b3, bd, bp], 1)?)
    }
}

enum Pool {
    Average,
    Max,
}

/// Bilinear resize of `[N, C, H, W]` as `torch.nn.functional.interpolate(mode="bilinear",
/// align_corners=False)`: two interpolation matrices, so it is exact and runs on any device.
pub fn resize_bilinear(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let rows = interpolation_matrix(h, out_h, x.device())?; // [out_h, h]
    let cols = interpolation_matrix(w, out_w, x.device())?.t()?; // [w, out_w]
    let y = x.reshape((n * c * h, w))?.matmul(&cols)?; // [(n c h), out_w]
    let y = y.reshape((n * c, h, out_w))?;
    let y = rows.unsqueeze(0)?.broadcast_as((n * c, out_h, h))?.contiguous()?.matmul(&y)?;
    Ok(y.reshape((n, c, out_h, out_w))?)
}

fn interpolation_matrix(from: usize, to: usize, device: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; to * from];
    let scale = from as f64 / to as f64;
    for o in 0..to {
        let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(from - 1);
        let i1 = (i0 + 1).min(from - 1);
        let frac = (src - i0 as f64) as f32;
        m[o * from + i0] += 1.0 - frac;
        m[o * from + i1] += frac;
    }
    Ok(Tensor::from_vec(m, (to, from), device)?)
}
