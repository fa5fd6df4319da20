//! DiT (Peebles & Xie 2022): a ViT over latent patches whose blocks are modulated by the timestep (and
//! class) embedding through adaLN-Zero. Parameter names equal the reference state-dict keys, so an official
//! checkpoint converted to safetensors loads unchanged (less its fixed `pos_embed` buffer).
//!
//! The representation-conditional model (the paper's Fig. 3) adds, under names of its own:
//! `rep_encoder.*` (a pre-norm ViT over the clean latent: `patch_embed.proj`, `blocks.{i}.{norm1, attn,
//! norm2, mlp}`, `norm`), `rep_to_map.{norm, linear}` (r -> LayerNorm -> Linear -> unpatchify, the map
//! concatenated to the noisy input, so `x_embedder.proj` takes 2C channels), and `blocks.{i}.rep_merge`
//! (the Linear from [tokens, r] back to the width at the head of every block).

use candle_core::{DType, Device, Tensor};

use crate::config::{Conditioning, ModelConfig};
use crate::error::expect_shape;
use crate::nn::{Init, Linear, ParamPath, Params, VarSet};
use crate::ops::{affine_layer_norm, attention, gated_residual, norm_modulate};
use crate::{Error, Result};

const NORM_EPS: f64 = 1e-6;
/// Width of the sinusoidal timestep features fed to the timestep MLP.
pub const TIMESTEP_FREQUENCIES: usize = 256;

/// Sinusoidal features of (possibly fractional) timesteps: `[cos(t f_i), sin(t f_i)]`, f_i = 10000^(-i/half).
/// The frequencies are computed in f32 exactly as the reference does, since at t ~ 1000 one ulp of a
/// frequency moves the phase by ~1e-4.
pub fn timestep_features(t: &Tensor, dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let log_period = -(10000f64.ln() as f32);
    let freqs: Vec<f32> = (0..half).map(|i| (log_period * i as f32 / half as f32).exp()).collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let args = t.to_dtype(DType::F32)?.unsqueeze(1)?.broadcast_mul(&freqs)?;
    Ok(Tensor::cat(&[args.cos()?, args.sin()?], 1)?)
}

/// The fixed 2-D sin-cos position embedding (MAE's), `[grid*grid, dim]`: the first half of each row encodes
/// the column index, the second half the row index.
pub fn sincos_pos_embed_2d(dim: usize, grid: usize, device: &Device) -> Result<Tensor> {
    let quarter = dim / 4;
    let omega: Vec<f64> = (0..quarter).map(|i| 1.0 / 10000f64.powf(i as f64 / quarter as f64)).collect();
    let mut values = Vec::with_capacity(grid * grid * dim);
    for row in 0..grid {
        for col in 0..grid {
            for pos in [col as f64, row as f64] {
                values.extend(omega.iter().map(|w| (pos * w).sin() as f32));
                values.extend(omega.iter().map(|w| (pos * w).cos() as f32));
            }
        }
    }
    Ok(Tensor::from_vec(values, (grid * grid, dim), device)?)
}

pub(crate) struct Attention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
}

impl Attention {
    pub(crate) fn new(path: &ParamPath, dim: usize, num_heads: usize) -> Result<Self> {
        Ok(Attention {
            qkv: Linear::new(&path.pp("qkv"), dim, 3 * dim, Init::XavierUniform, Init::Zeros)?,
            proj: Linear::new(&path.pp("proj"), dim, dim, Init::XavierUniform, Init::Zeros)?,
            num_heads,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.proj.forward(&attention(&self.qkv.forward(x)?, self.num_heads)?)
    }
}

struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn new(path: &ParamPath, dim: usize, hidden: usize) -> Result<Self> {
        Ok(Mlp {
            fc1: Linear::new(&path.pp("fc1"), dim, hidden, Init::XavierUniform, Init::Zeros)?,
            fc2: Linear::new(&path.pp("fc2"), hidden, dim, Init::XavierUniform, Init::Zeros)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // tanh-approximated GELU, as DiT uses.
        self.fc2.forward(&self.fc1.forward_gelu(x)?)
    }
}

/// adaLN-Zero: SiLU then a zero-initialised linear producing `chunks` modulation vectors.
struct AdaLn {
    linear: Linear,
    chunks: usize,
}

impl AdaLn {
    fn new(path: &ParamPath, dim: usize, chunks: usize) -> Result<Self> {
        let linear = Linear::new(&path.pp("adaLN_modulation.1"), dim, chunks * dim, Init::Zeros, Init::Zeros)?;
        Ok(AdaLn { linear, chunks })
    }

    fn forward(&self, c: &Tensor) -> Result<Vec<Tensor>> {
        Ok(self.linear.forward(&c.silu()?)?.chunk(self.chunks, 1)?)
    }
}

/// LayerNorm (eps 1e-6) with a learned scale and shift (the ViT encoder's and DINOv2's; DiT's own norms
/// have none).
pub(crate) struct AffineNorm {
    weight: Tensor,
    bias: Tensor,
}

impl AffineNorm {
    pub(crate) fn new(path: &ParamPath, dim: usize) -> Result<Self> {
        Ok(AffineNorm { weight: path.get("weight", &[dim], Init::Ones)?, bias: path.get("bias", &[dim], Init::Zeros)? })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        affine_layer_norm(x, &self.weight, &self.bias, NORM_EPS)
    }
}

/// A pre-norm transformer block of the representation encoder.
struct VitBlock {
    norm1: AffineNorm,
    attn: Attention,
    norm2: AffineNorm,
    mlp: Mlp,
}

impl VitBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.norm1.forward(x)?)?)?;
        Ok((&x + self.mlp.forward(&self.norm2.forward(&x)?)?)?)
    }
}

/// The ViT that encodes a clean latent into the representation r: `[N, tokens, hidden]`, one token per
/// DiT patch.
struct RepEncoder {
    patch_embed: Linear,
    blocks: Vec<VitBlock>,
    norm: AffineNorm,
}

impl RepEncoder {
    fn new(path: &ParamPath, config: &ModelConfig, depth: usize, heads: usize) -> Result<Self> {
        let dim = config.hidden_size;
        let patch_embed = Linear::conv_patch(&path.pp("patch_embed.proj"), dim, config.in_channels, config.patch_size)?;
        let blocks = (0..depth)
            .map(|i| {
                let b = path.pp("blocks").pp(i);
                Ok(VitBlock {
                    norm1: AffineNorm::new(&b.pp("norm1"), dim)?,
                    attn: Attention::new(&b.pp("attn"), dim, heads)?,
                    norm2: AffineNorm::new(&b.pp("norm2"), dim)?,
                    mlp: Mlp::new(&b.pp("mlp"), dim, config.mlp_hidden())?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RepEncoder { patch_embed, blocks, norm: AffineNorm::new(&path.pp("norm"), dim)? })
    }
}

/// Images `[N, C, H, W]` as patch tokens `[N, (H/p)*(W/p), C*p*p]`.
pub(crate) fn patchify(x: &Tensor, p: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (gh, gw) = (h / p, w / p);
    Ok(x.reshape(vec![n, c, gh, p, gw, p])?.permute(vec![0, 2, 4, 1, 3, 5])?.reshape((n, gh * gw, c * p * p))?)
}

/// A ViT classifier, the paper's supervised ViT baseline: the representation encoder's architecture
/// (patch embedding, fixed 2-D sin-cos positions, pre-norm blocks, final norm) over the input, its tokens
/// averaged, then a linear head. Parameters `encoder.*` and `head.*`; `config` gives the input, patch,
/// width, depth and heads (ViT-B is the DiT table's B: 12 blocks of width 768 with 12 heads).
pub struct VitClassifier {
    config: ModelConfig,
    encoder: RepEncoder,
    pos_embed: Tensor,
    head: Linear,
}

impl VitClassifier {
    pub fn new(config: &ModelConfig, classes: usize, params: &Params) -> Result<Self> {
        config.validate()?;
        let root = params.root();
        let encoder = RepEncoder::new(&root.pp("encoder"), config, config.depth, config.num_heads)?;
        let pos_embed = sincos_pos_embed_2d(config.hidden_size, config.grid_size(), params.device())?.unsqueeze(0)?;
        let head = Linear::new(&root.pp("head"), config.hidden_size, classes, Init::XavierUniform, Init::Zeros)?;
        Ok(VitClassifier { config: config.clone(), encoder, pos_embed, head })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Class logits `[N, classes]` of images `[N, C, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (c, h, w) = self.config.sample_dims();
        expect_shape("classifier input", x, &[x.dim(0).unwrap_or(0), c, h, w])?;
        let mut tokens =
            self.encoder.patch_embed.forward(&patchify(x, self.config.patch_size)?)?.broadcast_add(&self.pos_embed)?;
        for block in &self.encoder.blocks {
            tokens = block.forward(&tokens)?;
        }
        self.head.forward(&self.encoder.norm.forward(&tokens)?.mean(1)?)
    }
}

/// The parts of the representation-conditional model outside the DiT blocks.
struct RepParts {
    encoder: RepEncoder,
    map_norm: AffineNorm,
    map_linear: Linear,
}

struct DitBlock {
    attn: Attention,
    mlp: Mlp,
    ada_ln: AdaLn,
    /// Representation models: [tokens, r] (2D) -> D before the block.
    rep_merge: Option<Linear>,
}

impl DitBlock {
    fn new(path: &ParamPath, config: &ModelConfig) -> Result<Self> {
        let dim = config.hidden_size;
        let attn = Attention::new(&path.pp("attn"), dim, config.num_heads)?;
        let mlp = Mlp::new(&path.pp("mlp"), dim, config.mlp_hidden())?;
        let ada_ln = AdaLn::new(path, dim, 6)?;
        let rep_merge = match config.is_representation() {
            true => Some(Linear::new(&path.pp("rep_merge"), 2 * dim, dim, Init::XavierUniform, Init::Zeros)?),
            false => None,
        };
        Ok(DitBlock { attn, mlp, ada_ln, rep_merge })
    }

    fn forward(&self, x: &Tensor, c: &Tensor, rep: Option<&Tensor>) -> Result<Tensor> {
        let merged;
        let x = match (&self.rep_merge, rep) {
            (Some(merge), Some(r)) => {
                merged = merge.forward(&Tensor::cat(&[x, r], 2)?)?;
                &merged
            }
            _ => x,
        };
        let m = self.ada_ln.forward(c)?;
        let (shift_msa, scale_msa, gate_msa) = (&m[0], &m[1], &m[2]);
        let (shift_mlp, scale_mlp, gate_mlp) = (&m[3], &m[4], &m[5]);
        let attn = self.attn.forward(&norm_modulate(x, shift_msa, scale_msa, NORM_EPS)?)?;
        let x = gated_residual(x, &attn, gate_msa)?;
        let mlp = self.mlp.forward(&norm_modulate(&x, shift_mlp, scale_mlp, NORM_EPS)?)?;
        gated_residual(&x, &mlp, gate_mlp)
    }
}

struct FinalLayer {
    linear: Linear,
    ada_ln: AdaLn,
}

impl FinalLayer {
    fn new(path: &ParamPath, config: &ModelConfig) -> Result<Self> {
        let dim = config.hidden_size;
        let out = config.patch_size * config.patch_size * config.out_channels();
        Ok(FinalLayer {
            linear: Linear::new(&path.pp("linear"), dim, out, Init::Zeros, Init::Zeros)?,
            ada_ln: AdaLn::new(path, dim, 2)?,
        })
    }

    fn forward(&self, x: &Tensor, c: &Tensor) -> Result<Tensor> {
        let m = self.ada_ln.forward(c)?;
        self.linear.forward(&norm_modulate(x, &m[0], &m[1], NORM_EPS)?)
    }
}

/// The denoiser `eps_theta(x_t, t[, y])`. Output: `[N, out_channels, H, W]`, the predicted noise followed (with
/// learned sigma) by the variance interpolation values.
pub struct Dit {
    config: ModelConfig,
    patch_embed: Linear,
    pos_embed: Tensor,
    t_mlp_in: Linear,
    t_mlp_out: Linear,
    label_table: Option<Tensor>,
    blocks: Vec<DitBlock>,
    final_layer: FinalLayer,
    rep: Option<RepParts>,
}

impl Dit {
    /// Builds the model from `params` (fresh, with the reference initialisation, or loaded).
    pub fn new(config: &ModelConfig, params: &Params) -> Result<Self> {
        config.validate()?;
        let root = params.root();
        let dim = config.hidden_size;
        let patch_embed =
            Linear::conv_patch(&root.pp("x_embedder.proj"), dim, config.embed_channels(), config.patch_size)?;
        let pos_embed = sincos_pos_embed_2d(dim, config.grid_size(), params.device())?.unsqueeze(0)?;
        let t_path = root.pp("t_embedder.mlp");
        let t_init = Init::Normal { std: 0.02 };
        let t_mlp_in = Linear::new(&t_path.pp(0), TIMESTEP_FREQUENCIES, dim, t_init, Init::Zeros)?;
        let t_mlp_out = Linear::new(&t_path.pp(2), dim, dim, t_init, Init::Zeros)?;
        let label_table = match config.conditioning {
            Conditioning::None | Conditioning::Representation { .. } => None,
            Conditioning::Class { num_classes, dropout_prob } => {
                let rows = num_classes + usize::from(dropout_prob > 0.0);
                Some(root.pp("y_embedder.embedding_table").get("weight", &[rows, dim], Init::Normal { std: 0.02 })?)
            }
        };
        let blocks =
            (0..config.depth).map(|i| DitBlock::new(&root.pp("blocks").pp(i), config)).collect::<Result<Vec<_>>>()?;
        let final_layer = FinalLayer::new(&root.pp("final_layer"), config)?;
        let rep = match config.conditioning {
            Conditioning::Representation { encoder_depth, encoder_heads } => {
                let map = root.pp("rep_to_map");
                let map_out = config.patch_size * config.patch_size * config.in_channels;
                Some(RepParts {
                    encoder: RepEncoder::new(&root.pp("rep_encoder"), config, encoder_depth, encoder_heads)?,
                    map_norm: AffineNorm::new(&map.pp("norm"), dim)?,
                    map_linear: Linear::new(&map.pp("linear"), dim, map_out, Init::XavierUniform, Init::Zeros)?,
                })
            }
            _ => None,
        };
        Ok(Dit {
            config: config.clone(),
            patch_embed,
            pos_embed,
            t_mlp_in,
            t_mlp_out,
            label_table,
            blocks,
            final_layer,
            rep,
        })
    }

    /// A freshly initialised model and its variables.
    pub fn init(config: &ModelConfig, seed: u64, device: &Device) -> Result<(Self, VarSet)> {
        let params = Params::random(seed, device);
        let model = Dit::new(config, &params)?;
        Ok((model, params.finish()?))
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn patchify(&self, x: &Tensor) -> Result<Tensor> {
        patchify(x, self.config.patch_size)
    }

    /// Tokens `[N, grid*grid, p*p*c]` back to images `[N, c, H, W]`.
    fn unpatchify(&self, x: &Tensor, c: usize) -> Result<Tensor> {
        let n = x.dim(0)?;
        let (p, g) = (self.config.patch_size, self.config.grid_size());
        Ok(x.reshape(vec![n, g, g, p, p, c])?.permute(vec![0, 5, 1, 3, 2, 4])?.reshape((n, c, g * p, g * p))?)
    }

    /// The representation r of clean latents `z0` (`[N, C, H, W]`): `[N, tokens, hidden]`. Differentiable:
    /// in training the encoder learns through the denoiser's loss. At sampling, the representation of
    /// reference images, computed once for all steps.
    pub fn encode(&self, z0: &Tensor) -> Result<Tensor> {
        let rep = self
            .rep
            .as_ref()
            .ok_or_else(|| Error::Config("only a representation-conditional model encodes references".into()))?;
        let (c, h, w) = self.config.sample_dims();
        expect_shape("reference latent z0", z0, &[z0.dim(0).unwrap_or(0), c, h, w])?;
        let mut tokens = rep.encoder.patch_embed.forward(&self.patchify(z0)?)?.broadcast_add(&self.pos_embed)?;
        for block in &rep.encoder.blocks {
            tokens = block.forward(&tokens)?;
        }
        rep.encoder.norm.forward(&tokens)
    }

    /// The conditioning vector `c` = timestep embedding (+ label embedding).
    fn condition(&self, t: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        let t_emb =
            self.t_mlp_out.forward(&self.t_mlp_in.forward(&timestep_features(t, TIMESTEP_FREQUENCIES)?)?.silu()?)?;
        match (&self.label_table, labels) {
            (None, None) => Ok(t_emb),
            (Some(table), Some(labels)) => {
                let rows = table.dim(0)?;
                let ids = labels.to_dtype(DType::U32)?;
                if let Some(bad) = ids.to_vec1::<u32>()?.into_iter().find(|&id| id as usize >= rows) {
                    return Err(Error::Data(format!(
                        "class label {bad} is out of range: this model has {rows} label rows (classes + null)"
                    )));
                }
                Ok((t_emb + table.embedding(&ids)?)?)
            }
            (None, Some(_)) => Err(Error::Config("an unconditional model was given class labels".into())),
            (Some(_), None) => Err(Error::Config("a class-conditional model needs class labels".into())),
        }
    }

    /// `x`: `[N, C, H, W]` noisy inputs; `t`: `[N]` timesteps (any float/int dtype); `labels`: `[N]` class ids
    /// for a class-conditional model (the null class id drops the label).
    pub fn forward(&self, x: &Tensor, t: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        self.forward_with(x, t, labels, None)
    }

    /// [`Dit::forward`] for any model: `rep` is the representation ([`Dit::encode`]) that a
    /// representation-conditional model needs, `[N, tokens, hidden]`.
    pub fn forward_with(
        &self,
        x: &Tensor,
        t: &Tensor,
        labels: Option<&Tensor>,
        rep: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (c, h, w) = self.config.sample_dims();
        let n = x.dim(0).unwrap_or(0);
        expect_shape("DiT input x", x, &[n, c, h, w])?;
        expect_shape("DiT timesteps t", t, &[n])?;
        if let Some(labels) = labels {
            expect_shape("DiT class labels", labels, &[n])?;
        }
        let cond = self.condition(t, labels)?;
        let input = match (&self.rep, rep) {
            (None, None) => x.clone(),
            (Some(parts), Some(r)) => {
                expect_shape("representation r", r, &[n, self.config.num_patches(), self.config.hidden_size])?;
                let map = self.unpatchify(&parts.map_linear.forward(&parts.map_norm.forward(r)?)?, c)?;
                Tensor::cat(&[x, &map], 1)?
            }
            (None, Some(_)) => return Err(Error::Config("this model takes no representation".into())),
            (Some(_), None) => {
                return Err(Error::Config(
                    "a representation-conditional model needs a reference (the representation of a latent)".into(),
                ));
            }
        };
        let mut tokens = self.patch_embed.forward(&self.patchify(&input)?)?.broadcast_add(&self.pos_embed)?;
        for block in &self.blocks {
            tokens = block.forward(&tokens, &cond, rep)?;
        }
        self.unpatchify(&self.final_layer.forward(&tokens, &cond)?, self.config.out_channels())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Conditioning, ModelConfig};

    #[test]
    fn fresh_model_has_the_reference_initialisation() {
        let config =
            ModelConfig::dit("DiT-S/8", 32, 4, Conditioning::Class { num_classes: 3, dropout_prob: 0.1 }).unwrap();
        let (model, vars) = Dit::init(&config, 1, &Device::Cpu).unwrap();
        // adaLN-Zero and the zero final layer: the untrained model predicts exactly zero.
        let x = crate::rng::Rng::new(2).randn((2, 4, 32, 32), &Device::Cpu).unwrap();
        let t = Tensor::new(&[3f32, 900.0], &Device::Cpu).unwrap();
        let y = Tensor::new(&[0u32, 3], &Device::Cpu).unwrap();
        let out = model.forward(&x, &t, Some(&y)).unwrap();
        assert_eq!(out.dims(), &[2, 8, 32, 32]);
        assert_eq!(out.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        let stats = |name: &str| {
            let v = vars.get(name).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            let std = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
            (max, std)
        };
        // Xavier uniform: bound sqrt(6 / (fan_in + fan_out)), std bound / sqrt(3).
        let bound = (6.0f32 / (384.0 + 1152.0)).sqrt();
        let (max, std) = stats("blocks.0.attn.qkv.weight");
        assert!(max <= bound && max > 0.99 * bound && (std - bound / 3f32.sqrt()).abs() < 0.02 * bound, "{max} {std}");
        let (_, std) = stats("y_embedder.embedding_table.weight");
        assert!((std - 0.02).abs() < 0.002, "{std}");
        for zero in ["blocks.3.adaLN_modulation.1.weight", "final_layer.linear.weight", "blocks.0.attn.qkv.bias"] {
            assert_eq!(stats(zero).0, 0.0, "{zero}");
        }
        assert_eq!(vars.len(), 2 + 4 + 1 + 12 * 10 + 4);
    }

    #[test]
    fn position_embedding_encodes_column_then_row() {
        let pe = sincos_pos_embed_2d(8, 3, &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        // Token (row 1, col 2) = index 5: first half sin/cos of the column, second half of the row.
        assert!((pe[5][0] - 2f32.sin()).abs() < 1e-6 && (pe[5][2] - 2f32.cos()).abs() < 1e-6);
        assert!((pe[5][4] - 1f32.sin()).abs() < 1e-6 && (pe[5][6] - 1f32.cos()).abs() < 1e-6);
    }
}
