//! Launch forms for every job kind: fields with the presets and checks for the kinds RepDiff knows, the
//! parameters as JSON (editable) for all, and the server's own check on submit. `?kind=sample&checkpoint=12`
//! pre-fills a form; `?from=12` starts from run 12's parameters.

use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_router::hooks::{query_signal, use_navigate};
use std::str::FromStr;

use repdiff_api::jobs::{
    CheckpointEval, CheckpointRef, ClassifyParams, CounterfactualParams, DataSource, EncodeParams, EvaluateParams,
    Features, FinetuneParams, ImportParams, JobSpec, MatmulPrecision, ModelToEvaluate, Part, PretrainParams,
    ProbeParams, ReproduceParams, SampleParams, SplitSpec, Stopping, SupervisedParams,
};
use repdiff_api::{Dataset, Experiment, Job, JobKind, JobPage, Preset, SubmitJob};
use serde_json::Value;

use crate::api::{self, ApiError};
use crate::util::{ErrorBox, loaded};

/// A text field of a form and its check.
#[derive(Clone, Copy)]
struct Field {
    value: RwSignal<String>,
}

impl Field {
    fn new(v: &str) -> Self {
        Field { value: RwSignal::new(v.to_string()) }
    }
    fn text(&self) -> String {
        self.value.get().trim().to_string()
    }
}

/// Every field of every form; the kind picks which are used.
#[derive(Clone, Copy)]
struct Form {
    preset: Field,
    conditioning: Field,
    steps: Field,
    batch_size: Field,
    learning_rate: Field,
    seed: Field,
    checkpoint_every: Field,
    /// CPU matrix products of training: highest (f32) or bf16.
    matmul_precision: Field,
    data: Field,
    toy_n: Field,
    /// Synthetic phantoms: slices from random sites, more from site 1, their side and seed.
    phantom_num: Field,
    phantom_downstream: Field,
    phantom_size: Field,
    phantom_seed: Field,
    dataset: Field,
    window: Field,
    latents: Field,
    checkpoint: Field,
    num: Field,
    classes: Field,
    guidance: Field,
    sampler: Field,
    sample_steps: Field,
    eta: Field,
    autoencoder: Field,
    size: Field,
    channels: Field,
    split_on: RwSignal<bool>,
    downstream_site: Field,
    part: Field,
    split_seed: Field,
    split_unit: Field,
    posterior: Field,
    path: Field,
    labels: Field,
    site: Field,
    label_dropout: Field,
    timesteps: Field,
    draws: Field,
    score: Field,
    /// The test split's latents key (an encode run's), or empty for none.
    test_latents: Field,
    /// The validation split's latents key, for the probe.
    val_latents: Field,
    /// Where a representation model's reference images come from: none, dataset, latents or toy.
    references: Field,
    /// The classifier's noise budget: "fixed" or "sequential" (stop once decided).
    stopping: Field,
    /// What decides an image early: "predictive" or "confidence".
    stop_rule: Field,
    alpha: Field,
    min_draws: Field,
    /// "yes": also run the test data at the fixed budget and compare.
    agreement: Field,
    /// Trajectory frames per sample (empty: none).
    frames: Field,
    /// The noise level of counterfactuals.
    noise_t: Field,
    /// The training runs an evaluation samples from, comma-separated ids.
    models: Field,
    /// Samples per model of an evaluation.
    eval_num: Field,
    /// Images per set in the t-SNE histograms (0: none).
    histogram: Field,
    /// At most this many real images in an evaluation (empty: all).
    max_real: Field,
    /// auto, pretrained or random.
    extractor: Field,
    /// A training run's checkpoint evaluation: every this many steps (empty: none), with this many samples.
    eval_every: Field,
    ckpt_num: Field,
    /// The probe's features: encoder (a representation model's) or dinov2.
    probe_features: Field,
    dino_size: Field,
    /// The supervised baseline's network: vit-b, vit-s or tiny.
    architecture: Field,
    patch: Field,
    epochs: Field,
    /// The paper's pipeline: on phantoms or a dataset, and each stage's budget (empty: the preset's).
    pipeline_data: Field,
    phantoms: Field,
    pipeline_site: Field,
    /// The pipeline's phantoms as patients of this many slices (empty: independent slices).
    phantom_patient_slices: Field,
    pretrain_steps: Field,
    finetune_steps: Field,
    supervised_epochs: Field,
    pipeline_draws: Field,
    eval_samples: Field,
    class_samples: Field,
    /// The pipeline's number of seeds (empty: one).
    seeds: Field,
}

/// The schedule fields a pre-training's and a fine-tune's run share.
struct RunFields<'a> {
    steps: &'a mut Option<usize>,
    batch_size: &'a mut Option<usize>,
    learning_rate: &'a mut Option<f64>,
    seed: &'a mut Option<u64>,
    checkpoint_every: &'a mut Option<usize>,
    matmul_precision: &'a mut Option<MatmulPrecision>,
}

/// [`RunFields`] of a `RunOverrides` or a `FinetuneRun` (the same fields, two types).
macro_rules! run_fields {
    ($run:ident) => {
        RunFields {
            steps: &mut $run.steps,
            batch_size: &mut $run.batch_size,
            learning_rate: &mut $run.learning_rate,
            seed: &mut $run.seed,
            checkpoint_every: &mut $run.checkpoint_every,
            matmul_precision: &mut $run.matmul_precision,
        }
    };
}

impl Form {
    fn new() -> Self {
        Form {
            preset: Field::new("tiny-cpu"),
            conditioning: Field::new("none"),
            steps: Field::new(""),
            batch_size: Field::new(""),
            learning_rate: Field::new(""),
            seed: Field::new(""),
            checkpoint_every: Field::new(""),
            matmul_precision: Field::new("highest"),
            data: Field::new("dataset"),
            toy_n: Field::new("64"),
            phantom_num: Field::new("600"),
            phantom_downstream: Field::new("1500"),
            phantom_size: Field::new("64"),
            phantom_seed: Field::new("0"),
            dataset: Field::new(""),
            window: Field::new("brain"),
            latents: Field::new(""),
            checkpoint: Field::new(""),
            num: Field::new("16"),
            classes: Field::new(""),
            guidance: Field::new("1"),
            sampler: Field::new("ddim"),
            sample_steps: Field::new("50"),
            eta: Field::new("0"),
            autoencoder: Field::new("pixels"),
            size: Field::new("32"),
            channels: Field::new(""),
            split_on: RwSignal::new(false),
            downstream_site: Field::new("0"),
            part: Field::new("train"),
            split_seed: Field::new("0"),
            split_unit: Field::new("patient"),
            posterior: Field::new("sample"),
            path: Field::new(""),
            labels: Field::new(""),
            site: Field::new("0"),
            label_dropout: Field::new("0.1"),
            timesteps: Field::new("50,100,200,300,400,500,600,700,800,900"),
            draws: Field::new("64"),
            score: Field::new("x0_mse"),
            test_latents: Field::new(""),
            val_latents: Field::new(""),
            references: Field::new("none"),
            stopping: Field::new("fixed"),
            stop_rule: Field::new("predictive"),
            alpha: Field::new("0.01"),
            min_draws: Field::new("16"),
            agreement: Field::new("no"),
            frames: Field::new(""),
            noise_t: Field::new("500"),
            models: Field::new(""),
            eval_num: Field::new("256"),
            histogram: Field::new("500"),
            max_real: Field::new(""),
            extractor: Field::new("auto"),
            eval_every: Field::new(""),
            ckpt_num: Field::new(""),
            probe_features: Field::new("encoder"),
            dino_size: Field::new(""),
            architecture: Field::new("vit-b"),
            patch: Field::new("2"),
            epochs: Field::new("50"),
            pipeline_data: Field::new("phantoms"),
            phantoms: Field::new(""),
            pipeline_site: Field::new("1"),
            phantom_patient_slices: Field::new(""),
            pretrain_steps: Field::new(""),
            finetune_steps: Field::new(""),
            supervised_epochs: Field::new(""),
            pipeline_draws: Field::new(""),
            eval_samples: Field::new(""),
            class_samples: Field::new(""),
            seeds: Field::new(""),
        }
    }

    /// The training schedule fields (the preset's where empty) into `run`.
    fn schedule(&self, run: &mut RunFields<'_>, problems: &mut Vec<String>) {
        *run.steps = self.steps.number("Steps", problems).or(*run.steps);
        *run.batch_size = self.batch_size.number("Batch size", problems).or(*run.batch_size);
        *run.learning_rate = self.learning_rate.number("Learning rate", problems).or(*run.learning_rate);
        *run.seed = self.seed.number("Seed", problems).or(*run.seed);
        *run.checkpoint_every = self.checkpoint_every.number("Checkpoint every", problems).or(*run.checkpoint_every);
        *run.matmul_precision = self.precision();
    }

    /// `matmul_precision` when it is not the default (f32).
    fn precision(&self) -> Option<MatmulPrecision> {
        choice(&self.matmul_precision.text()).filter(|p| *p != MatmulPrecision::Highest)
    }

    /// A training run's checkpoint evaluation (`eval`), when "Evaluate every" is set.
    fn checkpoint_eval(&self, problems: &mut Vec<String>) -> Option<CheckpointEval> {
        let every = self.eval_every.number("Evaluate every", problems)?;
        let mut eval = CheckpointEval::new(every);
        set(&mut eval.num, self.ckpt_num.number("Samples per evaluation", problems));
        set(&mut eval.extractor, choice(&self.extractor.text()));
        Some(eval)
    }

    /// A data source; a dataset's `part` of its split when the split is on (the form's part when `part`
    /// is None).
    fn source(&self, source: &str, part: Option<Part>, problems: &mut Vec<String>) -> DataSource {
        match source {
            "toy" => DataSource::Toy { n: self.toy_n.number("Toy images", problems).unwrap_or(64), seed: 0 },
            "latents" => {
                if self.latents.text().is_empty() {
                    problems.push("Latents: pick an encode run's latents".into());
                }
                DataSource::Latents { key: self.latents.text() }
            }
            "phantoms" => DataSource::Phantoms {
                slices_per_patient: 1,
                num: self.phantom_num.number("Phantoms", problems).unwrap_or(600),
                downstream: self.phantom_downstream.number("Phantoms from site 1", problems).unwrap_or(0),
                size: self.phantom_size.number("Phantom size", problems).unwrap_or(64),
                seed: self.phantom_seed.number("Phantom seed", problems).unwrap_or(0),
                split: self.split_on.get().then(|| {
                    let part = part.or_else(|| choice(&self.part.text())).unwrap_or(Part::Train);
                    self.split(part, problems)
                }),
            },
            _ => {
                let window = Some(self.window.text()).filter(|w| !w.is_empty());
                let split = self.split_on.get().then(|| {
                    let part = part.or_else(|| choice(&self.part.text())).unwrap_or(Part::Train);
                    self.split(part, problems)
                });
                DataSource::Dataset { id: self.dataset_id(problems), window, split }
            }
        }
    }

    fn dataset_id(&self, problems: &mut Vec<String>) -> i64 {
        self.dataset.text().parse().unwrap_or_else(|_| {
            problems.push("Dataset: pick one".into());
            0
        })
    }

    /// One `part` of the paper's split, from the split fields.
    fn split(&self, part: Part, problems: &mut Vec<String>) -> SplitSpec {
        SplitSpec {
            downstream_site: self.downstream_site.number("Downstream site", problems),
            part,
            seed: self.split_seed.number("Split seed", problems).unwrap_or(0),
            unit: choice(&self.split_unit.text()).unwrap_or_default(),
        }
    }

    /// The run picked in the form's checkpoint field (`what` says which runs qualify).
    fn checkpoint(&self, what: &str, problems: &mut Vec<String>) -> CheckpointRef {
        CheckpointRef::Job(self.checkpoint.text().parse().unwrap_or_else(|_| {
            problems.push(format!("{what}: pick {}", what.to_lowercase()));
            0
        }))
    }

    /// Whether the data is a dataset's or the phantoms' split, whose parts the kind reads.
    fn split_parts(&self) -> bool {
        matches!(self.data.text().as_str(), "dataset" | "phantoms") && self.split_on.get()
    }

    /// A baseline's labelled train, validation (chooses) and optional test data: a dataset's split parts,
    /// or the training source with an encode run's validation and test latents.
    fn labelled_parts(&self, problems: &mut Vec<String>) -> (DataSource, DataSource, Option<DataSource>) {
        if self.split_parts() {
            let source = self.data.text();
            let [train, validation, test] =
                [Part::Train, Part::Validation, Part::Test].map(|part| self.source(&source, Some(part), problems));
            return (train, validation, Some(test));
        }
        let train = self.source(&self.data.text(), None, problems);
        if self.val_latents.text().is_empty() {
            problems.push("Validation latents: pick an encode run's (they choose what the baseline keeps)".into());
        }
        let validation = DataSource::Latents { key: self.val_latents.text() };
        (train, validation, self.test_latents())
    }

    /// An encode run's test latents, when picked.
    fn test_latents(&self) -> Option<DataSource> {
        Some(self.test_latents.text()).filter(|k| !k.is_empty()).map(|key| DataSource::Latents { key })
    }

    /// A comma-separated list of numbers (`label` names the field).
    fn list<T: FromStr>(field: &Field, label: &str, problems: &mut Vec<String>) -> Vec<T> {
        let parsed: Result<Vec<T>, _> =
            field.text().split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::parse).collect();
        parsed.unwrap_or_else(|_| {
            problems.push(format!("{label}: whole numbers separated by commas"));
            Vec::new()
        })
    }

    /// The spec of a `kind` job from the fields, or what is wrong with them: fields that do not parse, then
    /// the spec's own checks (the server's, in `repdiff_api::jobs`), each naming its field.
    fn spec(&self, kind: &str) -> Result<JobSpec, Vec<String>> {
        let mut problems = Vec::new();
        let p = &mut problems;
        let spec = match kind {
            "pretrain" => {
                let mut spec = PretrainParams::new(self.source(&self.data.text(), None, p));
                spec.run.preset = Some(self.preset.text());
                spec.run.conditioning = choice(&self.conditioning.text());
                let r = &mut spec.run;
                self.schedule(&mut run_fields!(r), p);
                spec.eval = self.checkpoint_eval(p);
                JobSpec::Pretrain(spec)
            }
            "finetune" => {
                let from = self.checkpoint("Pre-trained run", p);
                let mut spec = FinetuneParams::new(from, self.source(&self.data.text(), None, p));
                let r = &mut spec.run;
                self.schedule(&mut run_fields!(r), p);
                set(&mut spec.label_dropout, self.label_dropout.number("Label dropout", p));
                spec.eval = self.checkpoint_eval(p);
                JobSpec::Finetune(spec)
            }
            "classify" => {
                let checkpoint = self.checkpoint("Model", p);
                let validation = self.source(&self.data.text(), Some(Part::Validation), p);
                let mut spec = ClassifyParams::new(checkpoint, validation);
                spec.test = match self.split_parts() {
                    true => Some(self.source(&self.data.text(), Some(Part::Test), p)),
                    false => self.test_latents(),
                };
                spec.timesteps = Self::list(&self.timesteps, "Timesteps", p);
                set(&mut spec.draws, self.draws.number("Noise draws", p));
                if self.stopping.text() == "sequential" {
                    let mut stopping = Stopping::default();
                    set(&mut stopping.alpha, self.alpha.number("Error rate", p));
                    set(&mut stopping.min_draws, self.min_draws.number("First look after", p));
                    set(&mut stopping.rule, choice(&self.stop_rule.text()));
                    spec.stopping = Some(stopping);
                    spec.measure_agreement = self.agreement.text() == "yes";
                }
                set(&mut spec.score, choice(&self.score.text()));
                set(&mut spec.seed, self.seed.number("Seed", p));
                JobSpec::Classify(spec)
            }
            "sample" => {
                let mut spec = SampleParams::new(self.checkpoint("Checkpoint", p));
                if self.references.text() != "none" {
                    spec.references = Some(self.source(&self.references.text(), None, p));
                }
                set(&mut spec.num, self.num.number("Samples", p));
                spec.classes = Self::list(&self.classes, "Classes", p);
                set(&mut spec.guidance, self.guidance.number("Guidance", p));
                set(&mut spec.sampler, choice(&self.sampler.text()));
                set(&mut spec.steps, self.sample_steps.number("Sampling steps", p));
                set(&mut spec.eta, self.eta.number("Eta", p));
                set(&mut spec.seed, self.seed.number("Seed", p));
                spec.frames = self.frames.number("Trajectory frames", p);
                JobSpec::Sample(spec)
            }
            "probe" => {
                let features = choice(&self.probe_features.text()).unwrap_or_default();
                let checkpoint = (features == Features::Encoder).then(|| self.checkpoint("Model", p));
                let (train, validation, test) = self.labelled_parts(p);
                let mut spec = ProbeParams::new(features, checkpoint, train, validation);
                spec.test = test;
                if features == Features::Dinov2 {
                    set(&mut spec.dino_size, self.dino_size.number("DINOv2 input size", p));
                }
                set(&mut spec.seed, self.seed.number("Seed", p));
                JobSpec::Probe(spec)
            }
            "supervised" => {
                let (train, validation, test) = self.labelled_parts(p);
                let mut spec = SupervisedParams::new(train, validation);
                spec.test = test;
                spec.architecture = self.architecture.text();
                set(&mut spec.patch, self.patch.number("Patch", p));
                set(&mut spec.epochs, self.epochs.number("Epochs", p));
                set(&mut spec.batch_size, self.batch_size.number("Batch size", p));
                set(&mut spec.learning_rate, self.learning_rate.number("Learning rate", p));
                set(&mut spec.size, self.size.number("Image size", p));
                set(&mut spec.seed, self.seed.number("Seed", p));
                JobSpec::Supervised(spec)
            }
            "counterfactual" => {
                let checkpoint = self.checkpoint("Model", p);
                let mut spec = CounterfactualParams::new(checkpoint, self.source(&self.data.text(), None, p));
                set(&mut spec.num, self.num.number("Scans", p));
                set(&mut spec.t, self.noise_t.number("Noise level t", p));
                set(&mut spec.steps, self.sample_steps.number("DDIM steps", p));
                set(&mut spec.guidance, self.guidance.number("Guidance", p));
                set(&mut spec.seed, self.seed.number("Seed", p));
                JobSpec::Counterfactual(spec)
            }
            "evaluate" => {
                let ids: Vec<i64> = Self::list(&self.models, "Models", p);
                if ids.is_empty() {
                    p.push("Models: tick 1 to 8 finished training runs".into());
                }
                let models = ids.into_iter().map(|id| ModelToEvaluate::new(CheckpointRef::Job(id))).collect();
                let mut spec = EvaluateParams::new(self.source(&self.data.text(), None, p), models);
                set(&mut spec.num, self.eval_num.number("Samples per model", p));
                set(&mut spec.sampler, choice(&self.sampler.text()));
                set(&mut spec.steps, self.sample_steps.number("Sampling steps", p));
                set(&mut spec.guidance, self.guidance.number("Guidance", p));
                set(&mut spec.seed, self.seed.number("Seed", p));
                set(&mut spec.histogram, self.histogram.number("Histogram images", p));
                spec.max_real = self.max_real.number("Real images", p);
                set(&mut spec.extractor, choice(&self.extractor.text()));
                JobSpec::Evaluate(spec)
            }
            "encode" => {
                let size = self.size.number("Size", p).unwrap_or_else(|| {
                    p.push("Size: required".into());
                    0
                });
                let mut spec = EncodeParams::new(self.dataset_id(p), size);
                spec.autoencoder = self.autoencoder.text();
                spec.windows =
                    self.window.text().split(',').map(|w| w.trim().to_string()).filter(|w| !w.is_empty()).collect();
                spec.channels = self.channels.number("Channels", p);
                if self.split_on.get() {
                    let part = choice(&self.part.text()).unwrap_or(Part::Train);
                    spec.split = Some(self.split(part, p));
                }
                spec.posterior = choice(&self.posterior.text());
                set(&mut spec.seed, self.seed.number("Seed", p));
                JobSpec::Encode(spec)
            }
            "reproduce" => {
                let mut spec = ReproduceParams { preset: self.preset.text(), ..ReproduceParams::default() };
                if self.pipeline_data.text() == "dataset" {
                    spec.dataset = Some(self.dataset_id(p));
                } else {
                    spec.phantoms = self.phantoms.number("Phantoms", p);
                    spec.phantom_slices_per_patient = self.phantom_patient_slices.number("Slices per patient", p);
                }
                spec.downstream_site = self.pipeline_site.number("Downstream site", p);
                spec.split_unit = choice(&self.split_unit.text()).unwrap_or_default();
                spec.pretrain_steps = self.pretrain_steps.number("Pre-training steps", p);
                spec.finetune_steps = self.finetune_steps.number("Fine-tuning steps", p);
                spec.supervised_epochs = self.supervised_epochs.number("Baseline epochs", p);
                spec.draws = self.pipeline_draws.number("Noise draws", p);
                spec.eval_samples = self.eval_samples.number("Samples for Table 5", p);
                spec.class_samples = self.class_samples.number("Samples per class", p);
                set(&mut spec.seed, self.seed.number("Seed", p));
                spec.seeds = self.seeds.number("Seeds", p);
                spec.matmul_precision = self.precision();
                JobSpec::Reproduce(spec)
            }
            "import" => {
                let mut spec = ImportParams::new(self.dataset_id(p), self.path.text());
                spec.labels = Some(self.labels.text()).filter(|l| !l.is_empty());
                set(&mut spec.site, self.site.number("Site", p));
                JobSpec::Import(spec)
            }
            other => return Err(vec![format!("{other} jobs have no form: edit their parameters as JSON")]),
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        checked(spec)
    }
}

/// `spec`, or its first problem in the words of the form (the field's label where the form has one).
fn checked(spec: JobSpec) -> Result<JobSpec, Vec<String>> {
    match spec.validate() {
        Ok(()) => Ok(spec),
        Err(problem) => {
            // A list's item (`timesteps.2`) by its list's label and place.
            let (field, item) = match problem.field.rsplit_once('.') {
                Some((list, index)) if index.parse::<usize>().is_ok() => (list, index.parse::<usize>().ok()),
                _ => (problem.field.as_str(), None),
            };
            Err(vec![match (label_of(field), item) {
                (Some(label), Some(i)) => format!("{label} #{}: {}", i + 1, problem.message),
                (Some(label), None) => format!("{label}: {}", problem.message),
                (None, _) => problem.to_string(),
            }])
        }
    }
}

/// The form's label of a spec field, where it has one.
fn label_of(field: &str) -> Option<&'static str> {
    let last = field.rsplit('.').next().unwrap_or(field);
    Some(match (field, last) {
        (_, "n") if field.ends_with("toy.n") => "Toy images",
        (_, "num") if field.ends_with("phantoms.num") => "Phantoms",
        (_, "downstream") if field.ends_with("phantoms.downstream") => "Phantoms from site 1",
        (_, "size") if field.ends_with("phantoms.size") => "Phantom size",
        (_, "downstream_site") if field.contains("split") => "Downstream site",
        ("run.steps", _) => "Steps",
        ("run.batch_size" | "batch_size", _) => "Batch size",
        ("run.learning_rate" | "learning_rate", _) => "Learning rate",
        ("run.checkpoint_every", _) => "Checkpoint every",
        ("eval.every", _) => "Evaluate every",
        ("eval.num", _) => "Samples per evaluation",
        ("label_dropout", _) => "Label dropout",
        ("timesteps", _) => "Timesteps",
        ("draws", _) => "Noise draws",
        ("stopping.alpha", _) => "Error rate",
        ("stopping.min_draws", _) => "First look after",
        ("num", _) => "Samples",
        ("guidance", _) => "Guidance",
        ("steps", _) => "Sampling steps",
        ("eta", _) => "Eta",
        ("frames", _) => "Trajectory frames",
        ("t", _) => "Noise level t",
        ("dino_size", _) => "DINOv2 input size",
        ("patch", _) => "Patch",
        ("epochs", _) => "Epochs",
        ("size", _) => "Size",
        ("models", _) => "Models",
        ("histogram", _) => "Histogram images",
        ("max_real", _) => "Real images",
        ("phantoms", _) => "Phantoms",
        ("phantom_slices_per_patient", _) => "Slices per patient",
        ("split_unit", _) => "Split by",
        ("downstream_site", _) => "Downstream site",
        ("jobs", _) => "Steps side by side",
        ("seeds", _) => "Seeds",
        ("path", _) => "Path",
        ("site", _) => "Site",
        ("channels", _) => "Channels",
        ("windows", _) => "CT window",
        _ => return None,
    })
}

impl Field {
    /// The field as a number (None when empty), or a problem naming `label` when it is not one.
    fn number<T: FromStr>(&self, label: &str, problems: &mut Vec<String>) -> Option<T> {
        let text = self.text();
        if text.is_empty() {
            return None;
        }
        let parsed = text.parse::<T>().ok();
        if parsed.is_none() {
            let what = if text.parse::<f64>().is_ok() { "not a whole number of at least 0" } else { "not a number" };
            problems.push(format!("{label}: {text:?} is {what}"));
        }
        parsed
    }
}

/// A select's value as the API's enum of that name (`"ddim"` as `Sampler::Ddim`).
fn choice<T: serde::de::DeserializeOwned>(name: &str) -> Option<T> {
    serde_json::from_value(Value::String(name.to_string())).ok()
}

/// Sets `target` to `value` where the field gave one (the spec's default stays otherwise).
fn set<T>(target: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *target = value;
    }
}

const KNOWN: [&str; 11] = [
    "reproduce",
    "pretrain",
    "finetune",
    "classify",
    "probe",
    "supervised",
    "counterfactual",
    "sample",
    "evaluate",
    "encode",
    "import",
];

#[component]
pub fn Launch() -> impl IntoView {
    let (kind_q, set_kind_q) = query_signal::<String>("kind");
    let (from, _) = query_signal::<i64>("from");
    let (checkpoint_q, _) = query_signal::<i64>("checkpoint");
    let kind = Memo::new(move |_| kind_q.get().unwrap_or_else(|| "pretrain".into()));
    let form = Form::new();
    if let Some(c) = checkpoint_q.get_untracked() {
        form.checkpoint.value.set(c.to_string());
    }
    let raw_mode = RwSignal::new(false);
    let raw = RwSignal::new(String::new());
    let experiment = RwSignal::new(String::new());
    let publish = RwSignal::new(false);
    let priority = Field::new("0");
    let attempts = Field::new("3");
    // Runs this one waits on (ids, comma-separated): it starts once they all succeeded.
    let after = Field::new("");
    let tags = Field::new("");
    let error = RwSignal::new(None::<ApiError>);
    let busy = RwSignal::new(false);

    // `?from=ID`: that run's kind and parameters, as JSON to edit.
    if let Some(id) = from.get_untracked() {
        spawn_local(async move {
            match api::get::<Job>(&format!("/jobs/{id}")).await {
                Ok(job) => {
                    set_kind_q.set(Some(job.kind.clone()));
                    raw.set(serde_json::to_string_pretty(&job.params).unwrap_or_default());
                    raw_mode.set(true);
                    if let Some(e) = job.experiment_id {
                        experiment.set(e.to_string());
                    }
                    tags.value.set(job.tags.join(", "));
                    after.value.set(job.depends_on.iter().map(i64::to_string).collect::<Vec<_>>().join(", "));
                }
                Err(e) => error.set(Some(e)),
            }
        });
    }

    let kinds = LocalResource::new(|| api::get::<Vec<JobKind>>("/job-kinds"));
    let presets = LocalResource::new(|| api::get::<Vec<Preset>>("/presets"));
    // A value of the chosen preset's configuration (a path such as ["train", "steps"]), for placeholders.
    let preset_value = move |path: &'static [&'static str]| -> Option<String> {
        let chosen = form.preset.text();
        presets.with(|list| {
            let list = list.as_ref()?.as_ref().ok()?;
            let config = &list.iter().find(|p| p.name == chosen)?.config;
            let v = path.iter().try_fold(config, |v, k| v.get(*k))?;
            Some(match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        })
    };
    let preset_input = move |label: &'static str, name: &'static str, f: Field, path: &'static [&'static str]| {
        view! {
            <label>{label}
                <input name=name placeholder=move || preset_value(path).map(|v| format!("{v} (preset)")).unwrap_or_default()
                    prop:value=move || f.value.get() on:input=move |ev| f.value.set(event_target_value(&ev)) />
            </label>
        }
    };
    let preset_summary = move || {
        let get = |p| preset_value(p).unwrap_or_else(|| "?".into());
        format!(
            "{}: {}×{}×{} {}, depth {} width {} patch {}, {} steps of batch {}",
            form.preset.text(),
            get(&["model", "input_size"]),
            get(&["model", "input_size"]),
            get(&["model", "in_channels"]),
            get(&["data_space", "kind"]),
            get(&["model", "depth"]),
            get(&["model", "hidden_size"]),
            get(&["model", "patch_size"]),
            get(&["train", "steps"]),
            get(&["train", "batch_size"]),
        )
    };
    let datasets = LocalResource::new(|| api::get::<Vec<Dataset>>("/datasets"));
    let experiments = LocalResource::new(|| api::get::<Vec<Experiment>>("/experiments"));
    let trained = LocalResource::new(|| api::get::<JobPage>("/jobs?state=succeeded&limit=200"));
    let encoded = LocalResource::new(|| api::get::<JobPage>("/jobs?kind=encode&state=succeeded&limit=200"));

    let after_list = Memo::new(move |_| {
        after
            .text()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.trim_start_matches('#').parse::<i64>())
            .collect::<Result<Vec<i64>, _>>()
            .map_err(|_| "run ids separated by commas (12, 15)".to_string())
    });
    let tag_list = Memo::new(move |_| {
        let list: Vec<String> = tags.value.get().split(',').map(str::to_string).collect();
        repdiff_api::check_tags(&list)
    });
    // The job as the form (or the JSON editor) has it, checked as the server will check it.
    let spec = Memo::new(move |_| {
        let k = kind.get();
        if raw_mode.get() || !KNOWN.contains(&k.as_str()) {
            let text = raw.get();
            let value = match text.trim().is_empty() {
                true => Value::Null,
                false => {
                    serde_json::from_str::<Value>(&text).map_err(|e| vec![format!("Parameters: not JSON ({e})")])?
                }
            };
            checked(JobSpec::from_parts(&k, value).map_err(|e| vec![e])?)
        } else {
            form.spec(&k)
        }
    });
    let edit_json = move |_| {
        if let Ok(spec) = spec.get_untracked() {
            raw.set(serde_json::to_string_pretty(&spec.params()).unwrap_or_default());
        }
        raw_mode.set(true);
    };
    let navigate = use_navigate();
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let (Ok(spec), Ok(tags), Ok(depends_on)) =
            (spec.get_untracked(), tag_list.get_untracked(), after_list.get_untracked())
        else {
            return;
        };
        let body = SubmitJob {
            spec,
            experiment_id: experiment.get_untracked().parse().ok(),
            priority: priority.text().parse().unwrap_or(0),
            max_attempts: attempts.text().parse().ok(),
            tags,
            publish_private: publish.get_untracked(),
            depends_on,
        };
        busy.set(true);
        let navigate = navigate.clone();
        spawn_local(async move {
            match api::post::<_, Job>("/jobs", &body).await {
                Ok(job) => navigate(&format!("/runs/{}", job.id), Default::default()),
                Err(e) => error.set(Some(e)),
            }
            busy.set(false);
        });
    };

    let text_input = move |label: &'static str, name: &'static str, f: Field, hint: &'static str| {
        view! {
            <label>{label}
                <input name=name placeholder=hint prop:value=move || f.value.get() on:input=move |ev| f.value.set(event_target_value(&ev)) />
            </label>
        }
    };
    let choice = move |label: &'static str, name: &'static str, f: Field, options: &'static [&'static str]| {
        view! {
            <label>{label}
                <select name=name on:change=move |ev| f.value.set(event_target_value(&ev))>
                    {options.iter().map(|o| view! { <option value=*o selected=move || f.value.get() == *o>{*o}</option> }).collect_view()}
                </select>
            </label>
        }
    };
    // A training run's generation metrics per checkpoint.
    let eval_fields = move || {
        view! {
            <fieldset><legend>"Generation metrics per checkpoint (optional)"</legend>
                {text_input("Evaluate every", "eval_every", form.eval_every, "off, or a number of steps")}
                {text_input("Samples per evaluation", "ckpt_num", form.ckpt_num, "64")}
                {choice("Feature extractor", "extractor", form.extractor, &["auto", "pretrained", "random"])}
                <p class="muted small wide-row">"At each such step (and the last) the EMA weights draw samples that are measured against up to 500 training images: FID, sFID, IS, precision, recall, density and coverage, charted over training on the run page."</p>
            </fieldset>
        }
    };
    let dataset_select = move || {
        view! {
            <label>"Dataset"
                <select name="dataset" on:change=move |ev| form.dataset.value.set(event_target_value(&ev))>
                    <option value="">"Pick a dataset"</option>
                    {move || datasets.get().and_then(|d| d.ok()).unwrap_or_default().into_iter().map(|d| {
                        let id = d.id.to_string();
                        let is = id.clone();
                        view! { <option value=id selected=move || form.dataset.value.get() == is>{format!("{} ({} slices)", d.name, d.scans)}</option> }
                    }).collect_view()}
                </select>
            </label>
        }
    };

    // An encode run's latents artifact, into `field` (`empty`: the label of choosing none).
    let latents_select = move |label: &'static str, name: &'static str, field: Field, empty: &'static str| {
        view! {
            <label>{label}
                <select name=name on:change=move |ev| field.value.set(event_target_value(&ev))>
                    <option value="">{empty}</option>
                    {move || encoded.get().and_then(|p| p.ok()).map(|p| p.jobs).unwrap_or_default().into_iter().filter_map(|j| {
                        let key = j.result.as_ref()?.get("latents")?.as_str()?.to_string();
                        let is = key.clone();
                        Some(view! { <option value=key.clone() selected=move || field.value.get() == is>{format!("run #{}: {key}", j.id)}</option> })
                    }).collect_view()}
                </select>
            </label>
        }
    };
    // The fields of a data source (dataset and window, an encode run's latents, or the toy set).
    // The paper's split of a dataset: the downstream site and seed, and the part unless the form picks it.
    let split_fields = move |label: &'static str, with_part: bool| {
        view! {
            <label class="check wide-row"><input type="checkbox" name="split_on" prop:checked=form.split_on
                on:change=move |ev| form.split_on.set(event_target_checked(&ev)) />{label}</label>
            <Show when=move || form.split_on.get()>
                {text_input("Downstream site", "downstream_site", form.downstream_site, "empty: one site, no pre-training sites")}
                {with_part.then(|| choice("Part", "part", form.part, &["pretrain", "train", "validation", "test"]))}
                {text_input("Split seed", "split_seed", form.split_seed, "0")}
                {choice("Split by", "split_unit", form.split_unit, &["patient", "slice"])}
            </Show>
        }
    };
    // Where data comes from; a dataset's split fields pick a part unless `part_label` says what the split
    // stands for (the classifier takes validation and test).
    let source_fields = move |source: Field, part_label: Option<&'static str>| {
        move || match source.value.get().as_str() {
            "toy" => text_input("Toy images", "toy_n", form.toy_n, "64").into_any(),
            "latents" => latents_select("Latents", "latents", form.latents, "Pick an encode run").into_any(),
            "phantoms" => view! {
                {text_input("Phantoms", "phantom_num", form.phantom_num, "600, each from a random site")}
                {text_input("Phantoms from site 1", "phantom_downstream", form.phantom_downstream, "1500")}
                {text_input("Phantom size", "phantom_size", form.phantom_size, "64 pixels a side")}
                {text_input("Phantom seed", "phantom_seed", form.phantom_seed, "0")}
                {split_fields(part_label.unwrap_or("Only one part of the paper's split"), part_label.is_none())}
            }
            .into_any(),
            _ => view! {
                {dataset_select()}
                {text_input("CT window", "window", form.window, "brain")}
                {split_fields(part_label.unwrap_or("Only one part of the paper's split"), part_label.is_none())}
            }
            .into_any(),
        }
    };
    // A finished training run of one of `kinds`, into form.checkpoint.
    let run_select = move |label: &'static str, kinds: &'static [&'static str]| {
        view! {
            <label>{label}
                <select name="checkpoint" on:change=move |ev| form.checkpoint.value.set(event_target_value(&ev))>
                    <option value="">"Pick a finished training run"</option>
                    {move || trained.get().and_then(|p| p.ok()).map(|p| p.jobs).unwrap_or_default().into_iter().filter(|j| kinds.contains(&j.kind.as_str())).map(|j| {
                        let id = j.id.to_string();
                        let is = id.clone();
                        let result = j.result.clone().unwrap_or_default();
                        let step = result.get("step").and_then(Value::as_i64).unwrap_or(0);
                        let cond = result.pointer("/config/model/conditioning/kind").and_then(Value::as_str).unwrap_or("").to_string();
                        view! { <option value=id selected=move || form.checkpoint.value.get() == is>{format!("run #{} {} {cond} (step {step})", j.id, j.kind)}</option> }
                    }).collect_view()}
                </select>
            </label>
        }
    };
    // A baseline's labelled data: the training source and, without a split, validation and test latents.
    let labelled_fields = move || {
        view! {
                <fieldset><legend>"Training data"</legend>
                    {choice("Source", "data", form.data, &["dataset", "phantoms", "latents", "toy"])}
                    {source_fields(form.data, Some("Its split: train, validation and test parts"))}
                </fieldset>
                {move || (!(matches!(form.data.value.get().as_str(), "dataset" | "phantoms") && form.split_on.get())).then(|| view! {
                    <fieldset><legend>"Validation and test data"</legend>
                        {latents_select("Validation latents", "val_latents", form.val_latents, "Pick an encode run")}
                        {latents_select("Test latents", "test_latents", form.test_latents, "None")}
                    </fieldset>
                })}
        }
    };
    // Finished training runs as ticks, into form.models (comma-separated ids).
    let models_select = move || {
        view! {
            <div class="checklist wide-row" id="models">
                {move || trained.get().and_then(|p| p.ok()).map(|p| p.jobs).unwrap_or_default().into_iter()
                    .filter(|j| j.kind == "pretrain" || j.kind == "finetune").map(|j| {
                    let id = j.id.to_string();
                    let has = id.clone();
                    let cond = j.result.as_ref().and_then(|r| r.pointer("/config/model/conditioning/kind")).and_then(Value::as_str).unwrap_or("").to_string();
                    let toggle = move |ev: leptos::ev::Event| {
                        let on = event_target_checked(&ev);
                        let mut ids: Vec<String> = form.models.text().split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty() && *s != id).collect();
                        if on {
                            ids.push(id.clone());
                        }
                        form.models.value.set(ids.join(","));
                    };
                    view! {
                        <label class="check"><input type="checkbox" name="model" value=j.id.to_string()
                            prop:checked=move || form.models.text().split(',').any(|s| s.trim() == has) on:change=toggle />
                            {format!("run #{} {} {cond}", j.id, j.kind)}</label>
                    }
                }).collect_view()}
            </div>
        }
    };
    let fields = move || {
        if raw_mode.get() || !KNOWN.contains(&kind.get().as_str()) {
            return view! {
                <label class="wide">"Parameters (JSON)"
                    <textarea name="params" rows="14" spellcheck="false" prop:value=move || raw.get()
                        on:input=move |ev| raw.set(event_target_value(&ev))></textarea>
                </label>
                <button type="button" class="link" on:click=move |_| raw_mode.set(false)
                    hidden=move || !KNOWN.contains(&kind.get().as_str())>"Back to the form"</button>
            }
            .into_any();
        }
        match kind.get().as_str() {
            "pretrain" => view! {
                <fieldset><legend>"Model and schedule"</legend>
                    {choice("Preset", "preset", form.preset, &["tiny-cpu", "paper"])}
                    {choice("Conditioning", "conditioning", form.conditioning, &["none", "class", "representation"])}
                    {preset_input("Steps", "steps", form.steps, &["train", "steps"])}
                    {preset_input("Batch size", "batch_size", form.batch_size, &["train", "batch_size"])}
                    {preset_input("Learning rate", "learning_rate", form.learning_rate, &["train", "learning_rate"])}
                    {preset_input("Seed", "seed", form.seed, &["train", "seed"])}
                    {preset_input("Checkpoint every", "checkpoint_every", form.checkpoint_every, &["train", "checkpoint_every"])}
                    {choice("Matrix products", "matmul_precision", form.matmul_precision, &["highest", "bf16"])}
                    <p class="muted small wide-row">{preset_summary}</p>
                </fieldset>
                <fieldset><legend>"Data"</legend>
                    {choice("Source", "data", form.data, &["dataset", "phantoms", "latents", "toy"])}
                    {source_fields(form.data, None)}
                </fieldset>
                {eval_fields()}
            }
            .into_any(),
            "sample" => view! {
                <fieldset><legend>"Checkpoint"</legend>
                    {run_select("Training run", &["pretrain", "finetune"])}
                </fieldset>
                <fieldset><legend>"Sampling"</legend>
                    {text_input("Samples", "num", form.num, "16")}
                    {text_input("Classes", "classes", form.classes, "every class in turn, or 0,1")}
                    {text_input("Guidance scale", "guidance", form.guidance, "1")}
                    {choice("Sampler", "sampler", form.sampler, &["ddim", "ddpm"])}
                    {text_input("Steps", "sample_steps", form.sample_steps, "50")}
                    {text_input("Eta (DDIM)", "eta", form.eta, "0")}
                    {text_input("Seed", "seed", form.seed, "0")}
                    {text_input("Trajectory frames", "frames", form.frames, "none, or 8: x0 predictions along the way")}
                </fieldset>
                <fieldset><legend>"References (representation-conditional models)"</legend>
                    {choice("Reference images", "references", form.references, &["none", "dataset", "phantoms", "latents", "toy"])}
                    {move || (form.references.value.get() != "none").then(|| source_fields(form.references, None))}
                    <p class="muted small wide-row">"A representation model draws variations of reference images: sample i from reference i."</p>
                </fieldset>
            }
            .into_any(),
            "evaluate" => view! {
                <fieldset><legend>"Models (samples are drawn from each)"</legend>
                    {models_select()}
                    {text_input("Samples per model", "eval_num", form.eval_num, "256 (the paper: 10,000)")}
                    {choice("Sampler", "sampler", form.sampler, &["ddim", "ddpm"])}
                    {text_input("Steps", "sample_steps", form.sample_steps, "50")}
                    {text_input("Guidance scale", "guidance", form.guidance, "1")}
                    {text_input("Seed", "seed", form.seed, "0")}
                    <p class="muted small wide-row">"Representation-conditional models draw variations of the real images below."</p>
                </fieldset>
                <fieldset><legend>"Metrics"</legend>
                    {choice("Feature extractor", "extractor", form.extractor, &["auto", "pretrained", "random"])}
                    {text_input("Histogram images per set", "histogram", form.histogram, "500 (0: no t-SNE histogram)")}
                    <p class="muted small wide-row">"FID, sFID and IS need pytorch-fid's Inception weights on the server (auto uses them when present). Without them a fixed random Inception-v3 measures the same quantities, labelled as such."</p>
                </fieldset>
                <fieldset><legend>"Real images"</legend>
                    {choice("Source", "data", form.data, &["dataset", "phantoms", "latents", "toy"])}
                    {source_fields(form.data, None)}
                    {text_input("At most", "max_real", form.max_real, "all (evenly spaced through the set)")}
                </fieldset>
            }
            .into_any(),
            "probe" => view! {
                <fieldset><legend>"Linear probe (the Table 6 baseline)"</legend>
                    {choice("Features", "probe_features", form.probe_features, &["encoder", "dinov2"])}
                    {move || if form.probe_features.value.get() == "dinov2" {
                        text_input("DINOv2 input size", "dino_size", form.dino_size, "224 (518: its native size)").into_any()
                    } else {
                        run_select("Representation pre-training", &["pretrain"]).into_any()
                    }}
                    {text_input("Seed", "seed", form.seed, "0 (bootstrap resamples)")}
                    <p class="muted small wide-row">"Logistic regression on frozen features: the representation encoder's mean-pooled tokens, or DINOv2 ViT-S/14's (class and mean patch token; its weights must be on the server). The L2 strength is chosen on validation (best F1), the test metrics come with bootstrap 95% intervals."</p>
                </fieldset>
                {labelled_fields()}
            }
            .into_any(),
            "supervised" => view! {
                <fieldset><legend>"Supervised baseline (Table 6): a ViT or ResNet trained from scratch"</legend>
                    {choice("Architecture", "architecture", form.architecture, &["vit-b", "vit-s", "tiny", "resnet-50", "resnet-tiny"])}
                    {text_input("Patch (ViT)", "patch", form.patch, "2 (on 32x32 inputs, as DiT-B/2)")}
                    {text_input("Epochs", "epochs", form.epochs, "50")}
                    {text_input("Batch size", "batch_size", form.batch_size, "32")}
                    {text_input("Learning rate", "learning_rate", form.learning_rate, "0.0003")}
                    {text_input("Image size", "size", form.size, "32 (dataset slices and toy images)")}
                    {text_input("Seed", "seed", form.seed, "0")}
                    <p class="muted small wide-row">"Cross-entropy with AdamW and flips; the epoch with the best validation F1 is kept and applied to test, with bootstrap 95% intervals. Loss and validation metrics are charted per epoch."</p>
                </fieldset>
                {labelled_fields()}
            }
            .into_any(),
            "reproduce" => view! {
                <fieldset><legend>"The paper's whole pipeline: Tables 5 and 6 in one run"</legend>
                    {choice("Preset", "preset", form.preset, &["tiny-cpu", "paper"])}
                    {choice("Data", "pipeline_data", form.pipeline_data, &["phantoms", "dataset"])}
                    {move || if form.pipeline_data.value.get() == "dataset" {
                        dataset_select().into_any()
                    } else {
                        view! {
                            {text_input("Phantoms", "phantoms", form.phantoms, "600 (tiny-cpu) or 2,400 (paper), and more from the downstream site")}
                            {text_input("Slices per patient", "phantom_patient_slices", form.phantom_patient_slices, "1: independent slices; 8: patients of 8 nearly identical neighbours")}
                        }.into_any()
                    }}
                    {text_input("Downstream site", "pipeline_site", form.pipeline_site, "empty: one site, pre-training on the train part")}
                    {choice("Split by", "split_unit", form.split_unit, &["patient", "slice"])}
                    {text_input("Pre-training steps", "pretrain_steps", form.pretrain_steps, "preset's: 2,500, or 1,000 epochs (paper)")}
                    {text_input("Fine-tuning steps", "finetune_steps", form.finetune_steps, "preset's: 7,000, or 1,000 epochs (paper)")}
                    {text_input("Baseline epochs", "supervised_epochs", form.supervised_epochs, "preset's: 15 and 5, or 100")}
                    {text_input("Noise draws", "pipeline_draws", form.pipeline_draws, "preset's: 64, or 512 (paper)")}
                    {text_input("Samples for Table 5", "eval_samples", form.eval_samples, "preset's: 200, or 10,000; 0: none")}
                    {text_input("Samples per class (class fidelity)", "class_samples", form.class_samples, "preset's: 64, or 500; 0: none")}
                    {text_input("Seed", "seed", form.seed, "0")}
                    {text_input("Seeds", "seeds", form.seeds, "1; N runs seed, seed + 1, ... and reports the spread")}
                    {choice("Matrix products", "matmul_precision", form.matmul_precision, &["highest", "bf16"])}
                    <p class="muted small wide-row">"The paper's split (every other site pre-trains), unconditional and representation-conditional pre-training, fine-tuning of both, the diffusion classifier's timestep sweep on validation and its test result, class fidelity, generation metrics, counterfactuals, and the baselines (linear probes, a ViT and a ResNet from scratch). Each stage is a run of its own, queued with what it waits on: stages that do not wait on each other run at once on free workers, a stage whose worker is lost goes on from its last checkpoint on another, and this run writes the tables when every stage has finished. tiny-cpu takes 15 to 30 minutes on two CPU cores. Matrix products: highest is f32 throughout; bf16 (bf16 operands, f32 sums) makes the training steps faster on CPUs with AVX512-BF16 or AMX and runs in f32 elsewhere."</p>
                </fieldset>
            }
            .into_any(),
            "counterfactual" => view! {
                <fieldset><legend>"Counterfactuals (where the model puts the haematoma)"</legend>
                    {run_select("Class-conditional run", &["finetune", "pretrain"])}
                    {text_input("Scans", "num", form.num, "8")}
                    {text_input("Noise level t", "noise_t", form.noise_t, "500 of 1000")}
                    {text_input("DDIM steps", "sample_steps", form.sample_steps, "50")}
                    {text_input("Guidance scale", "guidance", form.guidance, "1; larger shows stronger differences")}
                    {text_input("Seed", "seed", form.seed, "0")}
                    <p class="muted small wide-row">"Each scan is noised to t and denoised under every class from the same noisy latent; the difference map shows what the model changes (red: brighter under the last class)."</p>
                </fieldset>
                <fieldset><legend>"Scans"</legend>
                    {choice("Source", "data", form.data, &["dataset", "phantoms", "latents", "toy"])}
                    {source_fields(form.data, None)}
                </fieldset>
            }
            .into_any(),
            "classify" => view! {
                <fieldset><legend>"Zero-shot diffusion classifier"</legend>
                    {run_select("Class-conditional run", &["finetune", "pretrain"])}
                    {text_input("Timesteps", "timesteps", form.timesteps, "50,100,...")}
                    {text_input("Noise draws", "draws", form.draws, "64 (the paper: 512)")}
                    {choice("Score", "score", form.score, &["x0_mse", "eps_mse"])}
                    {text_input("Seed", "seed", form.seed, "0")}
                    <p class="muted small wide-row">"Every class sees the same noise draws. The timestep with the best F1 on validation is applied to test, with bootstrap 95% intervals."</p>
                </fieldset>
                <fieldset><legend>"Noise budget"</legend>
                    {choice("Draws per image", "stopping", form.stopping, &["fixed", "sequential"])}
                    {move || (form.stopping.value.get() == "sequential").then(|| view! {
                        {choice("Stop when", "stop_rule", form.stop_rule, &["predictive", "confidence"])}
                        {text_input("Error rate", "alpha", form.alpha, "0.01")}
                        {text_input("First look after", "min_draws", form.min_draws, "16 draws")}
                        {choice("Compare with the fixed budget on test", "agreement", form.agreement, &["no", "yes"])}
                    })}
                    <p class="muted small wide-row">"Sequential: an image stops drawing noise once its class is decided, and the noise draws above are the most it gets. Predictive: the draws left in the budget are unlikely (the error rate) to overturn the leading class (a look every 16 draws). Confidence: a paired t test says unlimited draws would agree (looks at 16, 32, 64, ... draws). The comparison runs the whole budget on test and shows what both rules would spend."</p>
                </fieldset>
                <fieldset><legend>"Validation data (chooses the timestep)"</legend>
                    {choice("Source", "data", form.data, &["latents", "dataset", "phantoms", "toy"])}
                    {source_fields(form.data, Some("Its split: validation here, test below"))}
                </fieldset>
                <fieldset><legend>"Test data (optional)"</legend>
                    {move || if matches!(form.data.value.get().as_str(), "dataset" | "phantoms") && form.split_on.get() {
                        view! { <p class="muted small wide-row">"The test part of the dataset's split, classified at the chosen timestep."</p> }.into_any()
                    } else {
                        latents_select("Test latents", "test_latents", form.test_latents, "None").into_any()
                    }}
                </fieldset>
            }
            .into_any(),
            "finetune" => view! {
                <fieldset><legend>"Pre-trained model"</legend>
                    {run_select("Pre-trained run", &["pretrain"])}
                    {text_input("Label dropout", "label_dropout", form.label_dropout, "0.1")}
                    <p class="muted small wide-row">"The class-conditional model takes what the pre-trained one learnt about the noisy image; a representation model's encoder and merge layers are dropped, the label embedding is new. The run page shows the transfer table."</p>
                </fieldset>
                <fieldset><legend>"Schedule (unset: the pre-training's)"</legend>
                    {text_input("Steps", "steps", form.steps, "pre-training's")}
                    {text_input("Batch size", "batch_size", form.batch_size, "pre-training's")}
                    {text_input("Learning rate", "learning_rate", form.learning_rate, "pre-training's")}
                    {text_input("Seed", "seed", form.seed, "pre-training's")}
                    {text_input("Checkpoint every", "checkpoint_every", form.checkpoint_every, "pre-training's")}
                    {choice("Matrix products", "matmul_precision", form.matmul_precision, &["highest", "bf16"])}
                </fieldset>
                <fieldset><legend>"Labelled data"</legend>
                    {choice("Source", "data", form.data, &["dataset", "phantoms", "latents", "toy"])}
                    {source_fields(form.data, None)}
                </fieldset>
                {eval_fields()}
            }
            .into_any(),
            "encode" => view! {
                <fieldset><legend>"Input"</legend>
                    {dataset_select()}
                    {text_input("Windows", "windows", form.window, "brain, or three: brain,subdural,bone")}
                    {text_input("Size (pixels)", "size", form.size, "256 for the SD VAE")}
                    {text_input("Channels", "channels", form.channels, "1 or 3")}
                </fieldset>
                <fieldset><legend>"Autoencoder"</legend>
                    {choice("Autoencoder", "autoencoder", form.autoencoder, &["pixels", "sd-vae-ft-ema", "sd-vae-ft-mse"])}
                    {choice("Posterior", "posterior", form.posterior, &["sample", "mean"])}
                    {text_input("Seed", "seed", form.seed, "0")}
                </fieldset>
                <fieldset><legend>"Split"</legend>
                    {split_fields("Only one part of the paper's split", true)}
                </fieldset>
            }
            .into_any(),
            _ => view! {
                <fieldset><legend>"Import from the server's import roots"</legend>
                    {dataset_select()}
                    {text_input("Path", "path", form.path, "a file or folder under an import root")}
                    {text_input("Labels manifest", "labels", form.labels, "optional CSV/JSON under an import root")}
                    {text_input("Site", "site", form.site, "0")}
                </fieldset>
            }
            .into_any(),
        }
    };

    view! {
        <h1>"New run"</h1>
        <form class="launch" on:submit=submit>
            <fieldset><legend>"Job"</legend>
                <label>"Kind"
                    <select name="kind" on:change=move |ev| { raw_mode.set(false); set_kind_q.set(Some(event_target_value(&ev))); }>
                        {move || loaded(kinds.get(), move |ks: Vec<JobKind>| ks.into_iter().map(|k| {
                            let name = k.kind.clone();
                            view! { <option value=k.kind.clone() selected=move || kind.get() == name>{k.kind.clone()}</option> }
                        }).collect_view())}
                    </select>
                </label>
                <label>"Experiment"
                    <select name="experiment" on:change=move |ev| experiment.set(event_target_value(&ev))>
                        <option value="">"None"</option>
                        {move || experiments.get().and_then(|e| e.ok()).unwrap_or_default().into_iter().map(|e| {
                            let id = e.id.to_string();
                            let is = id.clone();
                            view! { <option value=id selected=move || experiment.get() == is>{e.name.clone()}</option> }
                        }).collect_view()}
                    </select>
                </label>
                <label class="check" title="A run made from a private dataset stays hidden from others in a shared experiment unless you publish it">
                    <input type="checkbox" name="publish_private" prop:checked=publish on:change=move |ev| publish.set(event_target_checked(&ev)) />
                    "Publish even if made from a private dataset"
                </label>
                {text_input("Priority", "priority", priority, "0")}
                {text_input("Attempts", "max_attempts", attempts, "3")}
                {text_input("Tags", "tags", tags, "baseline, lr-sweep")}
                {text_input("Run after", "after", after, "now, or run ids: 12, 15")}
            </fieldset>
            {fields}
            {move || tag_list.get().err().map(|problem| view! { <ul class="problems"><li>{format!("Tags: {problem}")}</li></ul> })}
            {move || after_list.get().err().map(|problem| view! { <ul class="problems"><li>{format!("Run after: {problem}")}</li></ul> })}
            {move || spec.get().err().map(|problems| view! {
                <ul class="problems">{problems.into_iter().map(|p| view! { <li>{p}</li> }).collect_view()}</ul>
            })}
            <ErrorBox error=error />
            <div class="inline">
                <button type="submit" disabled=move || busy.get() || spec.with(Result::is_err) || tag_list.with(Result::is_err) || after_list.with(Result::is_err)>"Launch"</button>
                <button type="button" class="link" on:click=edit_json hidden=move || raw_mode.get()>"Edit as JSON"</button>
            </div>
            <details>
                <summary>"Parameters sent"</summary>
                <pre class="json">{move || spec.get().ok().map(|s| serde_json::to_string_pretty(&s.params()).unwrap_or_default())}</pre>
            </details>
        </form>
    }
}
