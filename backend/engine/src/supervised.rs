//! The supervised baseline of the paper's Table 6: a ViT ([`VitClassifier`]) trained from scratch on the
//! downstream training part with cross-entropy, AdamW, gradient clipping and horizontal flips, evaluated
//! on validation after every epoch; the weights of the best epoch (F1, then accuracy) are kept, so the
//! test split never chooses anything.

use candle_core::{D, DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::classify::{Metrics, metrics};
use crate::config::ModelConfig;
use crate::data::Dataset;
use crate::dit::VitClassifier;
use crate::nn::{Params, VarSet};
use crate::optim::{AdamW, AdamWConfig, clip_grad_norm};
use crate::rng::Rng;
use crate::train::CancelToken;
use crate::{Error, Result};

/// How the baseline trains.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SupervisedOptions {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub seed: u64,
    pub hflip: bool,
}

impl Default for SupervisedOptions {
    fn default() -> Self {
        SupervisedOptions { epochs: 50, batch_size: 32, learning_rate: 3e-4, weight_decay: 0.05, seed: 0, hflip: true }
    }
}

/// One epoch: the mean training loss and the validation metrics after it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Epoch {
    pub epoch: usize,
    pub loss: f64,
    pub validation: Metrics,
}

/// A trained baseline: the model at its best validation epoch.
pub struct Supervised {
    pub model: VitClassifier,
    pub vars: VarSet,
    pub best_epoch: usize,
    pub history: Vec<Epoch>,
}

/// The predicted class of every image.
pub fn predict(model: &VitClassifier, samples: &Tensor, batch_size: usize) -> Result<Vec<u32>> {
    let n = samples.dim(0)?;
    let mut out = Vec::with_capacity(n);
    for start in (0..n).step_by(batch_size.max(1)) {
        let batch = samples.narrow(0, start, batch_size.max(1).min(n - start))?.detach();
        out.extend(model.forward(&batch)?.argmax(D::Minus1)?.to_dtype(DType::U32)?.to_vec1::<u32>()?);
    }
    Ok(out)
}

/// Trains a [`VitClassifier`] of architecture `config` on `train` (labelled), choosing the epoch on
/// `validation`. `on_epoch` sees every epoch as it ends.
pub fn train_vit(
    config: &ModelConfig,
    train: &Dataset,
    validation: &Dataset,
    options: &SupervisedOptions,
    cancel: &CancelToken,
    mut on_epoch: impl FnMut(&Epoch),
) -> Result<Supervised> {
    let (train_labels, val_labels) = match (&train.labels, &validation.labels) {
        (Some(t), Some(v)) => (t, v),
        _ => return Err(Error::Data("the supervised baseline needs labelled training and validation data".into())),
    };
    let classes = train.num_classes().max(validation.num_classes()).max(2);
    if options.epochs == 0 || options.batch_size == 0 || train.is_empty() {
        return Err(Error::Config("the supervised baseline needs epochs, a batch size and training images".into()));
    }
    let device = train.samples.device().clone();
    let params = Params::random(options.seed, &device);
    let model = VitClassifier::new(config, classes, &params)?;
    let vars = params.finish()?;
    let adam = AdamWConfig {
        learning_rate: options.learning_rate,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: options.weight_decay,
    };
    let mut optimizer = AdamW::new(adam, &vars)?;
    let mut rng = Rng::derive(options.seed, 0x5afe);
    let n = train.len();
    let mut best: Option<(f64, f64, usize, std::collections::HashMap<String, Tensor>)> = None;
    let mut history = Vec::with_capacity(options.epochs);
    for epoch in 1..=options.epochs {
        let mut order: Vec<u32> = (0..n as u32).collect();
        rng.shuffle(&mut order);
        let mut total = 0.0;
        let mut batches = 0;
        for chunk in order.chunks(options.batch_size) {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled { step: epoch - 1 });
            }
            let index = Tensor::new(chunk, &device)?;
            let mut x = train.samples.index_select(&index, 0)?;
            if options.hflip {
                let flips: Vec<u8> = chunk.iter().map(|_| u8::from(rng.bernoulli(0.5))).collect();
                let mask = Tensor::from_vec(flips, (chunk.len(), 1, 1, 1), &device)?.broadcast_as(x.shape())?;
                x = mask.where_cond(&x.flip(&[3])?, &x)?;
            }
            let y: Vec<u32> = chunk.iter().map(|&i| train_labels[i as usize]).collect();
            let y = Tensor::new(y.as_slice(), &device)?;
            let loss = candle_nn::loss::cross_entropy(&model.forward(&x)?, &y)?;
            let mut grads = loss.backward()?;
            clip_grad_norm(&vars, &mut grads, 1.0)?;
            optimizer.step(&vars, &grads)?;
            total += loss.to_scalar::<f32>()? as f64;
            batches += 1;
        }
        let validation_metrics = metrics(val_labels, &predict(&model, &validation.samples, 64)?, classes)?;
        let record = Epoch { epoch, loss: total / batches.max(1) as f64, validation: validation_metrics };
        on_epoch(&record);
        let score = (record.validation.f1, record.validation.accuracy);
        if best.as_ref().is_none_or(|b| score > (b.0, b.1)) {
            best = Some((score.0, score.1, epoch, vars.tensors()?.into_iter().collect()));
        }
        history.push(record);
    }
    let (_, _, best_epoch, weights) = best.expect("at least one epoch");
    vars.assign(&weights)?;
    Ok(Supervised { model, vars, best_epoch, history })
}
