//! What several kinds share: loading a [`DataSource`], what it and a checkpoint read, the engine's names for
//! the API's sampling and extractor choices, and the conversions from the API's specs to the engine's
//! configuration types (the engine knows nothing of the API; its types are its own).

use repdiff_api::jobs::{
    CheckpointRef, ConditioningKind, DataSource, ExtractorChoice, Invalid, MatmulPrecision, Part, RunOverrides,
    Sampler, Score, SplitSpec, SplitUnit, Stopping,
};
use repdiff_engine::autoencoder::{self, Autoencoder, Posterior};
use repdiff_engine::config::{DataSpace, Overrides, RunConfig};
use repdiff_engine::data::Dataset;
use repdiff_engine::diffusion::SamplerKind;
use repdiff_engine::imaging::{Channels, Window};
use repdiff_engine::latent_cache::{EncodeSpec, encode_dataset};
use repdiff_engine::manifest::Manifest;
use repdiff_engine::metrics::inception::InceptionV3;
use repdiff_engine::phantom::PngSet;

use crate::worker::{Input, JobContext, JobError};

/// The training data a job names, in the space of `config`'s model (a dataset is windowed and encoded by
/// the run's autoencoder at the model's input size).
pub(super) fn load_data(
    ctx: &mut JobContext,
    source: &DataSource,
    config: &RunConfig,
    weights_dir: &std::path::Path,
    device: &repdiff_engine::Device,
) -> Result<Dataset, JobError> {
    Ok(match source {
        DataSource::Toy { n, seed } => Dataset::toy_bars(*n, config.model.input_size, *seed, device)?,
        DataSource::Latents { key } => {
            let local = ctx.fetch(key, "data.safetensors")?;
            Dataset::from_latent_file(&local, device)?
        }
        DataSource::Dataset { .. } | DataSource::Phantoms { .. } => {
            let (name, copies) = match &config.data_space {
                DataSpace::Pixels => ("pixels".to_string(), config.model.in_channels),
                DataSpace::Latents { autoencoder, .. } => (autoencoder.clone(), 3),
            };
            let encoder = autoencoder::by_name(&name, copies, weights_dir, device)?;
            let (manifest, window, part) = slices_of(ctx, source)?.expect("a dataset or phantoms");
            let spec = EncodeSpec {
                channels: Channels::Window { window, copies },
                // The image side whose latent is the model's input (x8 for the SD VAE, x1 in pixels).
                size: config.model.input_size * (64 / encoder.latent_dims(64).1.max(1)),
                posterior: Posterior::Mean,
                seed: config.train.seed,
                part,
                batch_size: 16,
            };
            let local = ctx.scratch.join("latents.safetensors");
            let cancel = ctx.cancel.clone();
            encode_dataset(&manifest, &spec, encoder.as_ref(), &local, device, &cancel, &mut |done, total| {
                ctx.progress(done as u64, total as u64, "encoding scans");
            })?;
            Dataset::from_latent_file(&local, device)?
        }
    })
}

/// The slices a dataset or phantom source names, on disk: their manifest (a split's when the source names
/// a part), the window they are read through and the part. `None` for the toy set and latent files.
pub(super) fn slices_of(
    ctx: &mut JobContext,
    source: &DataSource,
) -> Result<Option<(std::path::PathBuf, Window, Option<repdiff_engine::manifest::Part>)>, JobError> {
    Ok(match source {
        DataSource::Dataset { id, window, split } => {
            let window = Window::parse(window.as_deref().unwrap_or("brain"))?;
            let manifest = fetch_scans(ctx, *id, split.as_ref())?;
            Some((manifest, window, split.as_ref().map(|s| part(s.reads()))))
        }
        DataSource::Phantoms { num, downstream, size, seed, split, slices_per_patient } => {
            let set = PngSet {
                slices_per_patient: *slices_per_patient,
                num: *num,
                downstream: *downstream,
                size: *size,
                marker_prob: repdiff_engine::phantom::MARKER_PROB,
                seed: *seed,
            };
            let dir = ctx.scratch.join("phantoms");
            ctx.progress(0, 1, "drawing the phantoms");
            let manifest = set.write(&dir, &Window::parse("brain")?)?;
            let path = match split {
                None => dir.join("manifest.csv"),
                Some(split) => split_manifest(ctx, &manifest, split, &dir)?,
            };
            Some((path, Window::parse("brain")?, split.as_ref().map(|s| part(s.reads()))))
        }
        DataSource::Toy { .. } | DataSource::Latents { .. } => None,
    })
}

/// Writes `manifest`'s split `split.csv` into `dir` (the slices named relative to it) and logs its summary.
fn split_manifest(
    ctx: &mut JobContext,
    manifest: &Manifest,
    split: &SplitSpec,
    dir: &std::path::Path,
) -> Result<std::path::PathBuf, JobError> {
    let unit = split_unit(split.unit);
    let parts = manifest.split(unit, split.downstream_site, repdiff_engine::manifest::PAPER_SPLIT, split.seed)?;
    let path = dir.join("split.csv");
    manifest.write_split_csv(&parts, &path)?;
    ctx.log("info", &manifest.summary(&parts, unit));
    Ok(path)
}

/// Downloads a dataset's slices ([`fetch_scans`]) and encodes them with `spec` (the part of the split it
/// names). Returns the local latent file.
pub fn encode_scans(
    ctx: &mut JobContext,
    dataset: i64,
    split: Option<&SplitSpec>,
    spec: &EncodeSpec,
    encoder: &dyn Autoencoder,
    device: &repdiff_engine::Device,
) -> Result<std::path::PathBuf, JobError> {
    let manifest_path = fetch_scans(ctx, dataset, split)?;
    let out = ctx.scratch.join("latents.safetensors");
    let cancel = ctx.cancel.clone();
    encode_dataset(&manifest_path, spec, encoder, &out, device, &cancel, &mut |done, total| {
        ctx.progress(done as u64, total as u64, "encoding scans");
    })?;
    Ok(out)
}

/// Downloads a dataset's slices into the scratch folder with their manifest (`manifest.csv`, or with a
/// split `split.csv` and its `part` column); returns the manifest's path.
pub fn fetch_scans(
    ctx: &mut JobContext,
    dataset: i64,
    split: Option<&SplitSpec>,
) -> Result<std::path::PathBuf, JobError> {
    let slices = ctx.block_on(crate::scans::slices_of(ctx.pool(), dataset))?;
    if slices.is_empty() {
        return Err(JobError::Permanent(format!("dataset {dataset} has no scans")));
    }
    let dir = ctx.scratch.join("dataset");
    let total = slices.len() as u64;
    let mut manifest = Manifest::default();
    for (i, slice) in slices.into_iter().enumerate() {
        ctx.fetch(&slice.key, &format!("dataset/{}", slice.record.file))?;
        manifest.records.push(slice.record);
        ctx.progress(i as u64 + 1, total, "fetching scans");
    }
    let manifest_path = match split {
        None => {
            let path = dir.join("manifest.csv");
            manifest.write_csv(&path)?;
            path
        }
        Some(split) => split_manifest(ctx, &manifest, split, &dir)?,
    };
    Ok(manifest_path)
}

/// What the engine refuses of a data source that its spec allows (a window it cannot read).
pub(super) fn check_data(field: &str, data: &DataSource) -> Result<(), Invalid> {
    match data {
        DataSource::Dataset { window: Some(w), .. } => {
            Window::parse(w).map(|_| ()).map_err(|e| Invalid::new(format!("{field}.dataset.window"), e.to_string()))
        }
        _ => Ok(()),
    }
}

/// What a data source reads from the store or the datasets.
pub(super) fn data_inputs(data: &DataSource) -> Vec<Input> {
    match data {
        DataSource::Latents { key } => vec![Input::Artifact(key.clone())],
        DataSource::Dataset { id, .. } => vec![Input::Dataset(*id)],
        DataSource::Toy { .. } | DataSource::Phantoms { .. } => Vec::new(),
    }
}

/// What a data source reads when the job needs its labels: a dataset's part must have no unlabelled slice.
pub(super) fn labelled_inputs(data: &DataSource) -> Vec<Input> {
    match data {
        DataSource::Dataset { id, split, .. } => vec![Input::LabelledDataset(*id, split.iter().cloned().collect())],
        other => data_inputs(other),
    }
}

/// Why data a job needs labels of has none (`what`: "the validation data"): its slices' labels are all
/// there or the data is unlabelled.
pub(super) fn no_labels(what: &str) -> JobError {
    JobError::Permanent(format!(
        "{what} has no labels (a dataset part with unlabelled slices is unlabelled data): label every slice it reads"
    ))
}

/// What a checkpoint reference reads.
pub(super) fn checkpoint_input(checkpoint: &CheckpointRef) -> Input {
    Input::Artifact(checkpoint.key())
}

/// The training job that published checkpoint `key` and the step it was at, for the gallery's filters
/// (none for a checkpoint uploaded by other means).
pub(super) fn checkpoint_origin(ctx: &JobContext, key: &str) -> Result<(Option<i64>, Option<i64>), JobError> {
    let source = ctx.block_on(
        sqlx::query!(r#"SELECT job_id, (meta->>'step')::bigint AS step FROM artifacts WHERE key = $1"#, key)
            .fetch_optional(ctx.pool()),
    )?;
    Ok(source.map_or((None, None), |s| (s.job_id, s.step)))
}

/// The engine's sampler and respacing for `steps` steps (`eta`: DDIM's noise scale).
pub fn sampler_kind(sampler: Sampler, steps: usize, eta: f64) -> (SamplerKind, String) {
    match sampler {
        Sampler::Ddpm => (SamplerKind::Ddpm, steps.to_string()),
        Sampler::Ddim => (SamplerKind::Ddim { eta }, format!("ddim{steps}")),
    }
}

/// Refuses the pretrained extractor when its weights are not in `weights_dir`.
pub fn check_extractor(field: &str, choice: ExtractorChoice, weights_dir: &std::path::Path) -> Result<(), Invalid> {
    let file = repdiff_engine::metrics::inception::WEIGHTS_FILE;
    if choice == ExtractorChoice::Pretrained && !weights_dir.join(file).exists() {
        return Err(Invalid::new(
            field,
            format!("the pretrained network needs {file} in the server's weights folder (or choose auto/random)"),
        ));
    }
    Ok(())
}

/// The Inception-v3 a choice names.
pub fn load_extractor(
    choice: ExtractorChoice,
    weights_dir: &std::path::Path,
    device: &repdiff_engine::Device,
) -> repdiff_engine::Result<InceptionV3> {
    match choice {
        ExtractorChoice::Auto => InceptionV3::pretrained_or_random(weights_dir, device),
        ExtractorChoice::Pretrained => InceptionV3::pretrained(weights_dir, device),
        ExtractorChoice::Random => InceptionV3::random(0, device),
    }
}

pub fn part(part: Part) -> repdiff_engine::manifest::Part {
    use repdiff_engine::manifest::Part as P;
    match part {
        Part::Pretrain => P::Pretrain,
        Part::Train => P::Train,
        Part::Validation => P::Validation,
        Part::Test => P::Test,
    }
}

pub fn split_unit(unit: SplitUnit) -> repdiff_engine::manifest::SplitUnit {
    match unit {
        SplitUnit::Patient => repdiff_engine::manifest::SplitUnit::Patient,
        SplitUnit::Slice => repdiff_engine::manifest::SplitUnit::Slice,
    }
}

pub fn matmul_precision(precision: MatmulPrecision) -> repdiff_engine::ops::MatmulPrecision {
    use repdiff_engine::ops::MatmulPrecision as M;
    match precision {
        MatmulPrecision::Highest => M::Highest,
        MatmulPrecision::High => M::High,
        MatmulPrecision::Bf16 => M::Bf16,
    }
}

pub fn score(score: Score) -> repdiff_engine::classify::Score {
    match score {
        Score::X0Mse => repdiff_engine::classify::Score::X0Mse,
        Score::EpsMse => repdiff_engine::classify::Score::EpsMse,
    }
}

pub fn stopping(stopping: &Stopping) -> repdiff_engine::classify::Stopping {
    use repdiff_api::jobs::Rule;
    use repdiff_engine::classify::Rule as R;
    repdiff_engine::classify::Stopping {
        alpha: stopping.alpha,
        min_draws: stopping.min_draws,
        rule: match stopping.rule {
            Rule::Predictive => R::Predictive,
            Rule::Confidence => R::Confidence,
        },
    }
}

/// A run's overrides as the engine's (a whole configuration parsed here).
pub fn overrides(run: &RunOverrides) -> Result<Overrides, String> {
    use repdiff_engine::config::ConditioningKind as C;
    let config = match &run.config {
        Some(value) => Some(
            serde_json::from_value::<RunConfig>(value.clone())
                .map_err(|e| format!("run.config is not a run configuration: {e}"))?,
        ),
        None => None,
    };
    Ok(Overrides {
        preset: run.preset.clone(),
        config,
        model: run.model.clone(),
        conditioning: run.conditioning.map(|c| match c {
            ConditioningKind::None => C::None,
            ConditioningKind::Class => C::Class,
            ConditioningKind::Representation => C::Representation,
        }),
        steps: run.steps,
        batch_size: run.batch_size,
        learning_rate: run.learning_rate,
        seed: run.seed,
        checkpoint_every: run.checkpoint_every,
        matmul_precision: run.matmul_precision.map(matmul_precision),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The API's limits are the engine's: a spec the API passes is one the engine takes.
    #[test]
    fn the_api_limits_are_the_engines() {
        assert_eq!(repdiff_api::jobs::MAX_STEPS, repdiff_engine::config::MAX_STEPS);
        assert_eq!(repdiff_api::jobs::MAX_BATCH, repdiff_engine::config::MAX_BATCH);
        assert_eq!(repdiff_api::jobs::MAX_SITE, repdiff_engine::manifest::MAX_SITE);
        assert_eq!(repdiff_api::jobs::DINO_PATCH, repdiff_engine::dino::PATCH);
        assert_eq!(repdiff_api::jobs::PRESETS.map(|p| RunConfig::preset(p).is_ok()), [true, true]);
    }

    /// The API's enums name the engine's values: each converts to the engine value of the same name.
    #[test]
    fn the_api_names_are_the_engines() {
        fn name<T: serde::Serialize>(value: &T) -> serde_json::Value {
            serde_json::to_value(value).unwrap()
        }
        for p in Part::ALL {
            assert_eq!(name(&p), serde_json::to_value(part(p)).unwrap());
        }
        for m in [MatmulPrecision::Highest, MatmulPrecision::High, MatmulPrecision::Bf16] {
            assert_eq!(name(&m), serde_json::to_value(matmul_precision(m)).unwrap());
        }
        for s in [Score::X0Mse, Score::EpsMse] {
            assert_eq!(name(&s), serde_json::to_value(score(s)).unwrap());
        }
        let api = repdiff_api::jobs::Stopping { alpha: 0.05, min_draws: 8, rule: repdiff_api::jobs::Rule::Confidence };
        assert_eq!(serde_json::to_value(api).unwrap(), serde_json::to_value(stopping(&api)).unwrap());
        let run = RunOverrides {
            preset: Some("tiny-cpu".into()),
            conditioning: Some(ConditioningKind::Representation),
            steps: Some(7),
            matmul_precision: Some(MatmulPrecision::Bf16),
            ..RunOverrides::default()
        };
        assert_eq!(serde_json::to_value(&run).unwrap(), serde_json::to_value(overrides(&run).unwrap()).unwrap());
    }
}
