//! `supervised`: the supervised baselines of the paper's Table 6 as a job. A ViT or ResNet trained from scratch on
//! `train` (cross-entropy, AdamW, flips), evaluated on `validation` after every epoch (charted as
//! `loss`, `val_accuracy`, `val_f1` over the epoch), the best epoch's weights kept and applied to `test`
//! with bootstrap 95% intervals. The result is a [`repdiff_api::SupervisedReport`]. No checkpoints: a
//! retried job trains again from the first epoch (a baseline's epochs are short).

use repdiff_api::jobs::{DataSource, Invalid, SupervisedParams};
use repdiff_engine::classify::{bootstrap, metrics};
use repdiff_engine::config::RunConfig;
use repdiff_engine::device::best_device;
use repdiff_engine::supervised::{Architecture, SupervisedOptions, predict, train_supervised};

use super::inputs::{check_data, labelled_inputs, load_data, no_labels};
use crate::worker::{Input, JobContext, JobError, Task};

pub struct Supervised {
    pub weights_dir: std::path::PathBuf,
}

impl Task for Supervised {
    type Spec = SupervisedParams;

    fn check(&self, p: &SupervisedParams) -> Result<(), Invalid> {
        Architecture::named(&p.architecture, p.size, 1, p.patch)
            .map_err(|e| Invalid::new("architecture", e.to_string()))?;
        check_data("train", &p.train)?;
        check_data("validation", &p.validation)?;
        p.test.as_ref().map_or(Ok(()), |test| check_data("test", test))
    }

    fn reads(&self, p: &SupervisedParams) -> Vec<Input> {
        [Some(&p.train), Some(&p.validation), p.test.as_ref()].into_iter().flatten().flat_map(labelled_inputs).collect()
    }

    fn run(&self, p: SupervisedParams, ctx: &mut JobContext) -> Result<serde_json::Value, JobError> {
        let (device, device_note) = best_device();
        // Datasets and the toy set are read as grey pixels of `size`; latent files as they are.
        let mut pixels = RunConfig::preset("tiny-cpu")?;
        pixels.model.input_size = p.size;
        pixels.model.in_channels = 1;
        let labelled = |ctx: &mut JobContext, source: &DataSource, what: &str| -> Result<_, JobError> {
            let data = load_data(ctx, source, &pixels, &self.weights_dir, &device)?;
            if data.labels.is_none() {
                return Err(no_labels(&format!("the {what} data")));
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
