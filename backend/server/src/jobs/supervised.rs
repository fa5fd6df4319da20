//! `supervised`: the supervised baselines of the paper's Table 6 as a job. A ViT or ResNet trained from scratch on
//! `train` (cross-entropy, AdamW, flips), evaluated on `validation` after every epoch (charted as
//! `loss`, `val_accuracy`, `val_f1` over the epoch), the best epoch's weights kept and applied to `test`
//! with bootstrap 95% intervals. The result is a [`repdiff_api::SupervisedReport`]. No checkpoints: a
//! retried job trains again from the first epoch (a baseline's epochs are short).

use repdiff_engine::classify::{bootstrap, metrics};
use repdiff_engine::config::RunConfig;
use repdiff_engine::device::best_device;
use repdiff_engine::supervised::{Architecture, SupervisedOptions, predict, train_supervised};
use serde::{Deserialize, Serialize};

use super::train::{DataSource, data_inputs, load_data, validate_data};
use crate::worker::{Handler, Input, JobContext, JobError};

fn default_architecture() -> String {
    "vit-b".into()
}
fn default_patch() -> usize {
    2
}
fn default_epochs() -> usize {
    50
}
fn default_batch_size() -> usize {
    32
}
fn default_learning_rate() -> f64 {
    3e-4
}
fn default_size() -> usize {
    32
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisedParams {
    pub train: DataSource,
    pub validation: DataSource,
    #[serde(default)]
    pub test: Option<DataSource>,
    /// `vit-b` (the paper's), `vit-s`, `tiny`, `resnet-50` (the paper's) or `resnet-tiny`.
    #[serde(default = "default_architecture")]
    pub architecture: String,
    #[serde(default = "default_patch")]
    pub patch: usize,
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f64,
    #[serde(default)]
    pub seed: u64,
    /// Image side of dataset slices and the toy set (grey pixels; a latent file keeps its own shape).
    #[serde(default = "default_size")]
    pub size: usize,
}

pub struct Supervised {
    pub weights_dir: std::path::PathBuf,
}

impl Handler for Supervised {
    fn validate(&self, params: &serde_json::Value) -> Result<(), String> {
        let p: SupervisedParams = super::parse("supervised", params)?;
        Architecture::named(&p.architecture, p.size, 1, p.patch).map_err(|e| e.to_string())?;
        if !(1..=1000).contains(&p.epochs) || !(1..=1024).contains(&p.batch_size) {
            return Err("epochs must be 1 to 1000 and batch_size 1 to 1024".into());
        }
        super::finite_within("learning_rate", p.learning_rate, f64::MIN_POSITIVE, 1.0)?;
        if !(8..=512).contains(&p.size) {
            return Err("size must be 8 to 512 pixels".into());
        }
        validate_data(&p.train)?;
        validate_data(&p.validation)?;
        p.test.as_ref().map_or(Ok(()), validate_data)
    }

    fn reads(&self, params: &serde_json::Value) -> Vec<Input> {
        match serde_json::from_value::<SupervisedParams>(params.clone()) {
            Ok(p) => [Some(&p.train), Some(&p.validation), p.test.as_ref()]
                .into_iter()
                .flatten()
                .flat_map(data_inputs)
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    fn run(&self, ctx: &mut JobContext) -> Result<serde_json::Value, JobError> {
        let p: SupervisedParams = ctx.params()?;
        let (device, device_note) = best_device();
        // Datasets and the toy set are read as grey pixels of `size`; latent files as they are.
        let mut pixels = RunConfig::preset("tiny-cpu")?;
        pixels.model.input_size = p.size;
        pixels.model.in_channels = 1;
        let labelled = |ctx: &mut JobContext, source: &DataSource, what: &str| -> Result<_, JobError> {
            let data = load_data(ctx, source, &pixels, &self.weights_dir, &device)?;
            if data.labels.is_none() {
                return Err(JobError::Permanent(format!("the {what} data has no labels")));
            }
            Ok(data)
        };
        let train = labelled(ctx, &p.train, "training")?;
        let validation = labelled(ctx, &p.validation, "validation")?;
        let (_, c, h, w) = train.samples.dims4().map_err(repdiff_engine::Error::from)?;
        if h != w {
            return Err(JobError::Permanent(format!("square inputs only, not {h}x{w}")));
        }
        let architecture = Architecture::named(&p.architecture, h, c, p.patch)?;
        let options = SupervisedOptions {
            epochs: p.epochs,
            batch_size: p.batch_size,
            learning_rate: p.learning_rate,
            seed: p.seed,
            ..Default::default()
        };
        ctx.log(
            "info",
            &format!(
                "training {} from scratch on {} images of {c}x{h}x{w}, {} epochs, {device_note}",
                architecture.describe(),
                train.len(),
                p.epochs
            ),
        );
        let cancel = ctx.cancel.clone();
        let mut metric_error = None;
        let run = train_supervised(&architecture, &train, &validation, &options, &cancel, |e| {
            let step = e.epoch as u64;
            ctx.progress(step, p.epochs as u64, "epochs");
            for (name, value) in
                [("loss", e.loss), ("val_accuracy", e.validation.accuracy), ("val_f1", e.validation.f1)]
            {
                if let Err(err) = ctx.metric(name, step, value) {
                    metric_error.get_or_insert(err);
                }
            }
        })?;
        if let Some(err) = metric_error {
            return Err(err);
        }
        ctx.flush()?;
        let classes = train.num_classes().max(validation.num_classes()).max(2);
        let best = &run.history[run.best_epoch - 1];
        ctx.log("info", &format!("best validation epoch {} (F1 {:.3})", run.best_epoch, best.validation.f1));
        let test = match &p.test {
            Some(source) => {
                let data = labelled(ctx, source, "test")?;
                let truth = data.labels.clone().unwrap_or_default();
                let predicted = predict(run.model.as_ref(), &data.samples, 64)?;
                let m = metrics(&truth, &predicted, classes)?;
                let intervals = bootstrap(&truth, &predicted, classes, 1000, 0.95, p.seed)?;
                ctx.log("info", &format!("test: accuracy {:.3}, F1 {:.3}", m.accuracy, m.f1));
                Some(serde_json::json!({ "metrics": m, "intervals": intervals, "predicted": predicted }))
            }
            None => None,
        };
        Ok(serde_json::json!({
            "architecture": architecture.describe(),
            "parameters": run.vars.num_parameters(),
            "epochs": p.epochs,
            "best_epoch": run.best_epoch,
            "validation": best.validation,
            "test": test,
        }))
    }
}
