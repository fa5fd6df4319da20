//! `probe`: the linear-probe baseline of the paper's Table 6 as a job. Logistic regression on frozen
//! features, fitted on `train`, its L2 strength chosen on `validation` (best F1), the `test` metrics with
//! bootstrap 95% intervals in the result. The features are a representation model's mean-pooled encoder
//! tokens (`"features": "encoder"`, the default, with its `checkpoint`) or DINOv2 ViT-S/14's of the images
//! (`"features": "dinov2"`, weights in the server's weights folder; datasets and the toy set are read as
//! grey pixels of `dino_size`).

use repdiff_api::jobs::{DataSource, Features, Invalid, ProbeParams};
use repdiff_engine::classify::{bootstrap, metrics};
use repdiff_engine::config::RunConfig;
use repdiff_engine::device::best_device;
use repdiff_engine::dino::{self, Dino};
use repdiff_engine::probe::{LAMBDAS, choose, encoder_features};
use repdiff_engine::sample::{Weights, load_model};

use super::inputs::{check_data, checkpoint_input, labelled_inputs, load_data, no_labels};
use crate::worker::{Input, JobContext, JobError, Task};

pub struct Probe {
    pub weights_dir: std::path::PathBuf,
}

impl Task for Probe {
    type Spec = ProbeParams;

    fn check(&self, p: &ProbeParams) -> Result<(), Invalid> {
        if p.features == Features::Dinov2 && !self.weights_dir.join(dino::WEIGHTS_FILE).exists() {
            return Err(Invalid::new(
                "features",
                format!(
                    "the dinov2 probe needs {} in the server's weights folder (see model-weights/README.md)",
                    dino::WEIGHTS_FILE
                ),
            ));
        }
        check_data("train", &p.train)?;
        check_data("validation", &p.validation)?;
        p.test.as_ref().map_or(Ok(()), |test| check_data("test", test))
    }

    fn reads(&self, p: &ProbeParams) -> Vec<Input> {
        let mut inputs: Vec<Input> = p.checkpoint.iter().map(checkpoint_input).collect();
        for source in [Some(&p.train), Some(&p.validation), p.test.as_ref()].into_iter().flatten() {
            inputs.extend(labelled_inputs(source));
        }
        inputs
    }

    fn run(&self, p: ProbeParams, ctx: &mut JobContext) -> Result<serde_json::Value, JobError> {
        let (device, device_note) = best_device();
        let extractor = match (&p.checkpoint, p.features) {
            (Some(checkpoint), Features::Encoder) => {
                let local = ctx.fetch(&checkpoint.key(), "checkpoint.safetensors")?;
                let weights = if p.raw_weights { Weights::Raw } else { Weights::Ema };
                let (model, config) = load_model(&local, weights, &device)?;
                if !config.model.is_representation() {
                    return Err(JobError::Permanent(
                        "the probe reads a representation encoder: give a representation-conditional pre-training"
                            .into(),
                    ));
                }
                Extractor::Encoder(Box::new(model), Box::new(config))
            }
            _ => {
                let mut pixels = RunConfig::preset("tiny-cpu")?;
                (pixels.model.input_size, pixels.model.in_channels) = (p.dino_size, 1);
                Extractor::Dino(Dino::pretrained(&self.weights_dir, p.dino_size, &device)?, Box::new(pixels))
            }
        };
        let features = |ctx: &mut JobContext, source: &DataSource, what: &str| -> Result<_, JobError> {
            let config = match &extractor {
                Extractor::Encoder(_, config) | Extractor::Dino(_, config) => config,
            };
            let data = load_data(ctx, source, config, &self.weights_dir, &device)?;
            let labels = data.labels.clone().ok_or_else(|| no_labels(&format!("the {what} data")))?;
            let features = match &extractor {
                Extractor::Encoder(model, _) => encoder_features(model, &data.samples, 64)?,
                Extractor::Dino(dino, _) => dino.features(&data.samples, 16).map_err(|e| {
                    JobError::Permanent(format!(
                        "the {what} data: {e} (DINOv2 reads images: a dataset, pixel latents or the toy set)"
                    ))
                })?,
            };
            Ok((features, labels))
        };
        let train = features(ctx, &p.train, "training")?;
        let validation = features(ctx, &p.validation, "validation")?;
        let classes = train.1.iter().chain(&validation.1).max().map_or(0, |&m| m as usize + 1).max(2);
        ctx.log(
            "info",
            &format!(
                "probing {} {} features on {} training and {} validation images, {device_note}",
                train.0.first().map_or(0, Vec::len),
                if p.features == Features::Dinov2 { "DINOv2" } else { "encoder" },
                train.1.len(),
                validation.1.len()
            ),
        );
        let (probe, val) = choose((&train.0, &train.1), (&validation.0, &validation.1), classes, &LAMBDAS)?;
        ctx.log("info", &format!("lambda {} chosen on validation (F1 {:.3})", probe.lambda, val.f1));
        let test = match &p.test {
            Some(source) => {
                let (x, y) = features(ctx, source, "test")?;
                let predicted = probe.predict(&x);
                let m = metrics(&y, &predicted, classes)?;
                let intervals = bootstrap(&y, &predicted, classes, 1000, 0.95, p.seed)?;
                ctx.log("info", &format!("test: accuracy {:.3}, F1 {:.3}", m.accuracy, m.f1));
                Some(serde_json::json!({ "metrics": m, "intervals": intervals, "predicted": predicted }))
            }
            None => None,
        };
        let features = match p.features {
            Features::Encoder => "encoder".to_string(),
            Features::Dinov2 => format!("dinov2-vits14-{}", p.dino_size),
        };
        Ok(serde_json::json!({ "features": features, "lambda": probe.lambda, "validation": val, "test": test }))
    }
}

/// What a probe measures the images with: a model's encoder (with the model's configuration, which says
/// how data sources are read), or DINOv2 (with the pixel configuration it reads them by).
enum Extractor {
    Encoder(Box<repdiff_engine::dit::Dit>, Box<RunConfig>),
    Dino(Dino, Box<RunConfig>),
}
