//! Fine-tuning by weight transfer (the paper's Sec. 2.2): a class-conditional DiT starts from a
//! pre-trained unconditional or representation-conditional one. What the pre-trained model learnt about
//! the noisy image is kept; what only served the pre-training is dropped; the label embedding is new:
//!
//! - from a representation model, only the input projection's weights for the noisy-latent channels
//!   (the first C of its 2C), every block's attention, MLP and modulation, the timestep embedder and the
//!   final layer; the encoder (`rep_encoder.*`), its map (`rep_to_map.*`) and the per-block merge Linears
//!   (`blocks.{i}.rep_merge.*`) are dropped;
//! - from an unconditional model, everything;
//! - `y_embedder.embedding_table.weight` is new (the reference initialisation, from the run's seed).
//!
//! Every parameter's fate is returned as a [`TransferTable`], which also prints.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::checkpoint::Checkpoint;
use crate::config::{ModelConfig, RunConfig};
use crate::dit::Dit;
use crate::nn::Params;
use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Copied as it is.
    Loaded,
    /// Cut to the fine-tuned model's shape: the source had shape `from`.
    Reshaped { from: Vec<usize> },
    /// In the source only.
    Dropped,
    /// In the fine-tuned model only: freshly initialised.
    New,
}

impl Action {
    fn word(&self) -> &'static str {
        match self {
            Action::Loaded => "loaded",
            Action::Reshaped { .. } => "reshaped",
            Action::Dropped => "dropped",
            Action::New => "new",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TransferRow {
    pub name: String,
    pub action: Action,
    /// The parameter's shape in the fine-tuned model (in the source, for dropped ones).
    pub shape: Vec<usize>,
}

/// What happened to every parameter, ordered by name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TransferTable {
    pub rows: Vec<TransferRow>,
}

impl TransferTable {
    pub fn count(&self, word: &str) -> usize {
        self.rows.iter().filter(|r| r.action.word() == word).count()
    }

    pub fn get(&self, name: &str) -> Option<&TransferRow> {
        self.rows.iter().find(|r| r.name == name)
    }
}

impl fmt::Display for TransferTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(9);
        writeln!(f, "{:<9} {:<width$} shape", "action", "parameter")?;
        for row in &self.rows {
            let shape = match &row.action {
                Action::Reshaped { from } => format!("{from:?} -> {:?}", row.shape),
                _ => format!("{:?}", row.shape),
            };
            writeln!(f, "{:<9} {:<width$} {shape}", row.action.word(), row.name)?;
        }
        write!(
            f,
            "{} loaded, {} reshaped, {} dropped, {} new",
            self.count("loaded"),
            self.count("reshaped"),
            self.count("dropped"),
            self.count("new")
        )
    }
}

/// The fine-tuned model's complete weights and how each came to be.
pub struct Transfer {
    pub weights: HashMap<String, Tensor>,
    pub table: TransferTable,
}

/// Checks that a checkpoint of `source` can start a fine-tune of `target` (same DiT, class-conditional
/// target), saying every difference.
pub fn check_compatible(source: &ModelConfig, target: &ModelConfig) -> Result<()> {
    if target.num_classes().is_none() {
        return Err(Error::Config("fine-tuning builds a class-conditional model: give it classes".into()));
    }
    let mut differences = Vec::new();
    let mut differ = |what: &str, a: String, b: String| {
        if a != b {
            differences.push(format!("{what} {a} vs {b}"));
        }
    };
    differ("input size", source.input_size.to_string(), target.input_size.to_string());
    differ("channels", source.in_channels.to_string(), target.in_channels.to_string());
    differ("patch size", source.patch_size.to_string(), target.patch_size.to_string());
    differ("hidden size", source.hidden_size.to_string(), target.hidden_size.to_string());
    differ("depth", source.depth.to_string(), target.depth.to_string());
    differ("heads", source.num_heads.to_string(), target.num_heads.to_string());
    differ("mlp ratio", source.mlp_ratio.to_string(), target.mlp_ratio.to_string());
    differ("learned sigma", source.learn_sigma.to_string(), target.learn_sigma.to_string());
    if differences.is_empty() {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "the pre-trained model does not fit the fine-tuned one (checkpoint vs fine-tune): {}",
            differences.join(", ")
        )))
    }
}

/// Builds the weights of `target` from a pre-trained model's `source` weights (of config `source_model`).
/// New parameters get the reference initialisation drawn from `seed`.
pub fn transfer(
    source: &HashMap<String, Tensor>,
    source_model: &ModelConfig,
    target: &ModelConfig,
    seed: u64,
    device: &Device,
) -> Result<Transfer> {
    check_compatible(source_model, target)?;
    let fresh = Params::random(seed, device);
    Dit::new(target, &fresh)?;
    let fresh = fresh.finish()?;
    let channels = target.in_channels;
    let mut weights = HashMap::new();
    let mut rows = Vec::new();
    for (name, var) in fresh.iter() {
        let shape = var.dims().to_vec();
        let (value, action) = match source.get(name) {
            Some(s) if s.dims() == shape.as_slice() => (s.to_device(device)?, Action::Loaded),
            // The representation model's input projection sees [noisy latent, map]: keep the first C.
            Some(s) if name == "x_embedder.proj.weight" && s.dims().len() == 4 && s.dim(1)? == 2 * channels => (
                s.narrow(1, 0, channels)?.contiguous()?.to_device(device)?,
                Action::Reshaped { from: s.dims().to_vec() },
            ),
            _ => (var.as_tensor().clone(), Action::New),
        };
        weights.insert(name.clone(), value);
        rows.push(TransferRow { name: name.clone(), action, shape });
    }
    for (name, tensor) in source {
        if fresh.get(name).is_none() {
            rows.push(TransferRow { name: name.clone(), action: Action::Dropped, shape: tensor.dims().to_vec() });
        }
    }
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Transfer { weights, table: TransferTable { rows } })
}

/// [`transfer`] from a training checkpoint's EMA weights (its raw weights with `raw`). Returns the
/// pre-training's run configuration too.
pub fn from_checkpoint(
    path: &Path,
    target: &ModelConfig,
    seed: u64,
    raw: bool,
    device: &Device,
) -> Result<(Transfer, RunConfig)> {
    let ckpt = Checkpoint::read(path, device)?;
    let source_config = ckpt.config()?;
    let section = if raw { "model" } else { "ema" };
    if !ckpt.has_section(section) {
        return Err(Error::checkpoint(path, format!("has no {section} weights")));
    }
    let transfer = transfer(&ckpt.section(section), &source_config.model, target, seed, device)
        .map_err(|e| Error::checkpoint(path, e.to_string()))?;
    Ok((transfer, source_config))
}
