//! The training loop: batches drawn in a seeded epoch order, horizontal flips, label dropout, uniform
//! timesteps, the hybrid loss, AdamW, clipping, EMA, atomic checkpoints, progress and cancellation.
//! All randomness comes from one [`Rng`] saved in each checkpoint, so a resumed run continues exactly.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor};

use crate::checkpoint::{Checkpoint, CheckpointWriter};
use crate::config::{Conditioning, RunConfig};
use crate::data::Dataset;
use crate::diffusion::GaussianDiffusion;
use crate::dit::Dit;
use crate::nn::{Params, VarSet};
use crate::ops::with_matmul_precision;
use crate::optim::{AdamW, AdamWConfig, Ema};
use crate::rng::Rng;
use crate::{Error, Result};

/// Set from any thread; training and sampling loops check it before every step.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What one optimiser step measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// The step just completed (1-based).
    pub step: usize,
    pub loss: f32,
    pub mse: f32,
    pub vb: f32,
    pub grad_norm: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Finished,
    Cancelled,
}

#[derive(Clone, Debug)]
pub struct RunSummary {
    pub stop: StopReason,
    pub step: usize,
    pub steps_run: usize,
    pub seconds: f64,
    pub first_loss: Option<f32>,
    pub last_loss: Option<f32>,
}

pub struct Trainer {
    pub config: RunConfig,
    pub model: Dit,
    vars: VarSet,
    optimizer: AdamW,
    ema: Ema,
    diffusion: GaussianDiffusion,
    rng: Rng,
    step: usize,
    /// Sample order of the current epoch and the position in it.
    order: Vec<u32>,
    cursor: usize,
    device: Device,
}

fn adamw_config(config: &RunConfig) -> AdamWConfig {
    let t = &config.train;
    AdamWConfig {
        learning_rate: t.learning_rate,
        beta1: t.adam_beta1,
        beta2: t.adam_beta2,
        eps: t.adam_eps,
        weight_decay: t.weight_decay,
    }
}

impl Trainer {
    /// A fresh run: weights initialised from the config's seed.
    pub fn new(config: RunConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        let params = Params::random(config.train.seed, device);
        let model = Dit::new(&config.model, &params)?;
        Self::assemble(config, model, params.finish()?, device)
    }

    /// A run initialised from given model weights (e.g. a fine-tune), with fresh optimiser state.
    pub fn from_weights(
        config: RunConfig,
        weights: std::collections::HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let params = Params::loaded(weights, device);
        let model = Dit::new(&config.model, &params)?;
        Self::assemble(config, model, params.finish()?, device)
    }

    fn assemble(config: RunConfig, model: Dit, vars: VarSet, device: &Device) -> Result<Self> {
        let optimizer = AdamW::new(adamw_config(&config), &vars)?;
        let ema = Ema::new(config.train.ema_decay, config.train.ema_warmup, &vars)?;
        let diffusion = GaussianDiffusion::new(&config.diffusion, config.model.learn_sigma);
        // A stream separate from the initialisation's, so changing the architecture does not change the data order.
        let rng = Rng::derive(config.train.seed, 1);
        Ok(Trainer {
            config,
            model,
            vars,
            optimizer,
            ema,
            diffusion,
            rng,
            step: 0,
            order: Vec::new(),
            cursor: 0,
            device: device.clone(),
        })
    }

    /// Continues a run from a checkpoint written by [`Trainer::save`]: weights, EMA, optimiser moments, RNG,
    /// data order and step all restored.
    pub fn resume(path: &Path, device: &Device) -> Result<Self> {
        let ckpt = Checkpoint::read(path, device)?;
        let config = ckpt.config()?;
        if !ckpt.has_section("optim") {
            return Err(Error::checkpoint(
                path,
                "holds weights only (no optimiser state): use it to fine-tune or sample, not to resume",
            ));
        }
        let mut trainer = Self::from_weights(config, ckpt.section("model"), device)?;
        trainer.ema.load(&ckpt.section("ema"))?;
        trainer.optimizer.load_state(&ckpt.section("optim"), ckpt.meta_u64("optim_step")?)?;
        trainer.step = ckpt.meta_u64("step")? as usize;
        let rng: Vec<u64> = ckpt.meta("rng")?.split(',').filter_map(|s| s.parse().ok()).collect();
        let state: [u64; 4] =
            rng.try_into().map_err(|_| Error::checkpoint(path, "rng metadata is not four integers"))?;
        trainer.rng = Rng::from_state(state);
        trainer.cursor = ckpt.meta_u64("cursor")? as usize;
        if let Some(order) = ckpt.tensors.get("data.order") {
            trainer.order = order.to_vec1::<u32>()?;
        }
        Ok(trainer)
    }

    pub fn step(&self) -> usize {
        self.step
    }

    /// Where this run's bf16 products run, for its log: `None` unless it asks for them on the CPU.
    pub fn bf16_note(&self) -> Option<String> {
        (self.config.train.matmul_precision == crate::ops::MatmulPrecision::Bf16 && self.device.is_cpu())
            .then(|| format!("bf16 products: {}", crate::ops::bf16_note()))
    }

    pub fn vars(&self) -> &VarSet {
        &self.vars
    }

    pub fn diffusion(&self) -> &GaussianDiffusion {
        &self.diffusion
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let mut writer = CheckpointWriter::new(&self.config)?;
        writer.section("model", &self.vars.tensors()?);
        writer.section("ema", self.ema.weights());
        let (optim, optim_step) = self.optimizer.state()?;
        writer.section("optim", &optim);
        if !self.order.is_empty() {
            let order = Tensor::new(self.order.as_slice(), &Device::Cpu)?;
            writer.section("data", [(&"order".to_string(), &order)]);
        }
        writer.meta("step", self.step);
        writer.meta("optim_step", optim_step);
        writer.meta("cursor", self.cursor);
        let rng = self.rng.state().map(|s| s.to_string()).join(",");
        writer.meta("rng", rng);
        writer.meta("num_parameters", self.vars.num_parameters());
        writer.write(path)
    }

    fn check_data(&self, data: &Dataset) -> Result<()> {
        let (c, h, w) = data.sample_dims();
        let expected = self.config.model.sample_dims();
        if (c, h, w) != expected {
            return Err(Error::Data(format!(
                "samples are {c}x{h}x{w} (CxHxW) but the model expects {}x{}x{}",
                expected.0, expected.1, expected.2
            )));
        }
        if let Conditioning::Class { num_classes, .. } = self.config.model.conditioning {
            let labels = data
                .labels
                .as_ref()
                .ok_or_else(|| Error::Data("a class-conditional model needs labelled data".into()))?;
            if let Some(&bad) = labels.iter().find(|&&l| l as usize >= num_classes) {
                return Err(Error::Data(format!("label {bad} is out of range for a model of {num_classes} classes")));
            }
        }
        if !self.order.is_empty() && self.order.len() != data.len() {
            return Err(Error::Data(format!(
                "this run was trained on {} samples; the data now has {}",
                self.order.len(),
                data.len()
            )));
        }
        Ok(())
    }

    fn next_batch_indices(&mut self, n: usize, batch: usize) -> Vec<u32> {
        let mut indices = Vec::with_capacity(batch);
        while indices.len() < batch {
            if self.cursor >= self.order.len() {
                self.order = (0..n as u32).collect();
                self.rng.shuffle(&mut self.order);
                self.cursor = 0;
            }
            indices.push(self.order[self.cursor]);
            self.cursor += 1;
        }
        indices
    }

    /// One optimiser step on a batch drawn from `data`.
    pub fn train_step(&mut self, data: &Dataset) -> Result<StepStats> {
        self.check_data(data)?;
        let batch = self.config.train.batch_size;
        let indices = self.next_batch_indices(data.len(), batch);
        let index_tensor = Tensor::new(indices.as_slice(), data.samples.device())?;
        let mut x_start = data.samples.index_select(&index_tensor, 0)?.to_device(&self.device)?;
        if self.config.train.hflip {
            let flips: Vec<u8> = (0..batch).map(|_| u8::from(self.rng.bernoulli(0.5))).collect();
            let mask = Tensor::from_vec(flips, (batch, 1, 1, 1), &self.device)?.broadcast_as(x_start.shape())?;
            x_start = mask.where_cond(&x_start.flip(&[3])?, &x_start)?;
        }
        let labels = match self.config.model.conditioning {
            Conditioning::None | Conditioning::Representation { .. } => None,
            Conditioning::Class { num_classes, dropout_prob } => {
                let all = data.labels.as_ref().expect("checked in check_data");
                let ids: Vec<u32> = indices
                    .iter()
                    .map(|&i| {
                        if dropout_prob > 0.0 && self.rng.bernoulli(dropout_prob) {
                            num_classes as u32
                        } else {
                            all[i as usize]
                        }
                    })
                    .collect();
                Some(Tensor::new(ids.as_slice(), &self.device)?)
            }
        };
        let t: Vec<usize> = (0..batch).map(|_| self.rng.below(self.diffusion.num_steps())).collect();
        let noise = self.rng.randn(x_start.shape().clone(), &self.device)?;
        let x_t = self.diffusion.q_sample(&x_start, &t, &noise)?;
        let t_model = self.diffusion.model_timesteps(&t, &self.device)?;
        let (losses, loss_value, grads) = with_matmul_precision(self.config.train.matmul_precision, || {
            // The representation model sees the clean sample, and its encoder learns through this same loss.
            let rep = match self.config.model.is_representation() {
                true => Some(self.model.encode(&x_start)?),
                false => None,
            };
            let output = self.model.forward_with(&x_t, &t_model, labels.as_ref(), rep.as_ref())?;
            let losses = self.diffusion.training_losses(&output, &x_start, &x_t, &t, &noise)?;
            let loss = losses.loss.mean_all()?;
            let loss_value = loss.to_scalar::<f32>()?;
            if !loss_value.is_finite() {
                return Err(Error::Diverged { step: self.step + 1, loss: loss_value });
            }
            Ok((losses, loss_value, loss.backward()?))
        })?;
        let norm = self.optimizer.step(&self.vars, &grads, self.config.train.grad_clip_norm)?;
        self.ema.update(&self.vars, self.step as u64)?;
        self.step += 1;
        Ok(StepStats {
            step: self.step,
            loss: loss_value,
            mse: losses.mse.mean_all()?.to_scalar::<f32>()?,
            vb: losses.vb.mean_all()?.to_scalar::<f32>()?,
            grad_norm: norm,
        })
    }

    /// Trains until `until_step` (or cancellation), saving to `checkpoint` every `checkpoint_every` steps, on
    /// cancellation, and at the end. `on_step` sees every step's statistics.
    pub fn run(
        &mut self,
        data: &Dataset,
        until_step: usize,
        checkpoint: Option<&Path>,
        cancel: &CancelToken,
        mut on_step: impl FnMut(&StepStats),
    ) -> Result<RunSummary> {
        self.check_data(data)?;
        let started = Instant::now();
        let start_step = self.step;
        let (mut first_loss, mut last_loss) = (None, None);
        let every = self.config.train.checkpoint_every.max(1);
        let mut stop = StopReason::Finished;
        while self.step < until_step {
            if cancel.is_cancelled() {
                stop = StopReason::Cancelled;
                break;
            }
            let stats = self.train_step(data)?;
            first_loss.get_or_insert(stats.loss);
            last_loss = Some(stats.loss);
            on_step(&stats);
            if let Some(path) = checkpoint
                && self.step.is_multiple_of(every)
                && self.step < until_step
            {
                self.save(path)?;
            }
        }
        if let Some(path) = checkpoint
            && (self.step > start_step || stop == StopReason::Cancelled)
        {
            self.save(path)?;
        }
        Ok(RunSummary {
            stop,
            step: self.step,
            steps_run: self.step - start_step,
            seconds: started.elapsed().as_secs_f64(),
            first_loss,
            last_loss,
        })
    }
}
