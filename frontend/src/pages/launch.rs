//! Launch forms for every job kind: fields with the presets and checks for the kinds RepDiff knows, the
//! parameters as JSON (editable) for all, and the server's own check on submit. `?kind=sample&checkpoint=12`
//! pre-fills a form; `?from=12` starts from run 12's parameters.

use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_router::hooks::{query_signal, use_navigate};
use repdiff_api::{Dataset, Experiment, Job, JobKind, JobPage, Preset, SubmitJob};
use serde_json::{Map, Value, json};

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
    pretrain_steps: Field,
    finetune_steps: Field,
    supervised_epochs: Field,
    pipeline_draws: Field,
    eval_samples: Field,
    class_samples: Field,
    side_by_side: Field,
    /// The pipeline's number of seeds (empty: one).
    seeds: Field,
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
            pretrain_steps: Field::new(""),
            finetune_steps: Field::new(""),
            supervised_epochs: Field::new(""),
            pipeline_draws: Field::new(""),
            eval_samples: Field::new(""),
            class_samples: Field::new(""),
            side_by_side: Field::new("2"),
            seeds: Field::new(""),
        }
    }

    /// The training schedule fields (left out when empty) into a run's parameters.
    fn schedule(&self, run: &mut Map<String, Value>, problems: &mut Vec<String>) {
        number(problems, run, "steps", "Steps", &self.steps, true, true);
        number(problems, run, "batch_size", "Batch size", &self.batch_size, true, true);
        number(problems, run, "learning_rate", "Learning rate", &self.learning_rate, true, false);
        number(problems, run, "seed", "Seed", &self.seed, false, true);
        number(problems, run, "checkpoint_every", "Checkpoint every", &self.checkpoint_every, true, true);
        self.precision(run);
    }

    /// `matmul_precision` when it is not the default (f32).
    fn precision(&self, out: &mut Map<String, Value>) {
        if self.matmul_precision.text() != "highest" {
            out.insert("matmul_precision".into(), json!(self.matmul_precision.text()));
        }
    }

    /// A training run's checkpoint evaluation (`eval`), when "Evaluate every" is set.
    fn checkpoint_eval(&self, out: &mut Map<String, Value>, problems: &mut Vec<String>) {
        if self.eval_every.text().is_empty() {
            return;
        }
        let mut eval = Map::new();
        number(problems, &mut eval, "every", "Evaluate every", &self.eval_every, true, true);
        number(problems, &mut eval, "num", "Samples per evaluation", &self.ckpt_num, true, true);
        eval.insert("extractor".into(), json!(self.extractor.text()));
        out.insert("eval".into(), Value::Object(eval));
    }

    /// A data source's parameters; a dataset's from `part` of its split when the split is on (the form's
    /// part when `part` is None).
    fn data_json(&self, source: &str, part: Option<&str>, problems: &mut Vec<String>) -> Value {
        match source {
            "toy" => {
                let mut toy = Map::new();
                number(problems, &mut toy, "n", "Toy images", &self.toy_n, true, true);
                json!({ "toy": toy })
            }
            "latents" => {
                if self.latents.text().is_empty() {
                    problems.push("Latents: pick an encode run's latents".into());
                }
                json!({ "latents": { "key": self.latents.text() } })
            }
            _ => {
                let id = self.dataset.text().parse::<i64>().ok();
                if id.is_none() {
                    problems.push("Dataset: pick one".into());
                }
                let mut dataset = json!({ "id": id, "window": self.window.text() });
                if self.split_on.get() {
                    dataset["split"] = self.split_json(part.unwrap_or(&self.part.text()), problems);
                }
                json!({ "dataset": dataset })
            }
        }
    }

    /// One `part` of the paper's split, from the split fields.
    fn split_json(&self, part: &str, problems: &mut Vec<String>) -> Value {
        let mut split = Map::new();
        number(problems, &mut split, "downstream_site", "Downstream site", &self.downstream_site, false, true);
        split.insert("part".into(), json!(part));
        number(problems, &mut split, "seed", "Split seed", &self.split_seed, false, true);
        Value::Object(split)
    }

    /// A baseline's labelled `train`, `validation` (chooses) and optional `test` data: a dataset's split
    /// parts, or the training source with an encode run's validation and test latents.
    fn labelled_parts(&self, out: &mut Map<String, Value>, problems: &mut Vec<String>) {
        if self.data.text() == "dataset" && self.split_on.get() {
            for (key, part) in [("train", "train"), ("validation", "validation"), ("test", "test")] {
                let source = self.data_json("dataset", Some(part), problems);
                out.insert(key.into(), source);
            }
        } else {
            let train = self.data_json(&self.data.text(), None, problems);
            out.insert("train".into(), train);
            if self.val_latents.text().is_empty() {
                problems.push("Validation latents: pick an encode run's (they choose what the baseline keeps)".into());
            }
            out.insert("validation".into(), json!({ "latents": { "key": self.val_latents.text() } }));
            if !self.test_latents.text().is_empty() {
                out.insert("test".into(), json!({ "latents": { "key": self.test_latents.text() } }));
            }
        }
    }

    /// The parameters of `kind`, or what is wrong with the fields.
    fn params(&self, kind: &str) -> Result<Value, Vec<String>> {
        let mut problems = Vec::new();
        let mut out = Map::new();
        match kind {
            "pretrain" => {
                let mut run = Map::new();
                run.insert("preset".into(), json!(self.preset.text()));
                run.insert("conditioning".into(), json!(self.conditioning.text()));
                self.schedule(&mut run, &mut problems);
                out.insert("run".into(), Value::Object(run));
                let data = self.data_json(&self.data.text(), None, &mut problems);
                out.insert("data".into(), data);
                self.checkpoint_eval(&mut out, &mut problems);
            }
            "finetune" => {
                match self.checkpoint.text().parse::<i64>() {
                    Ok(id) => {
                        out.insert("from".into(), json!({ "job": id }));
                    }
                    Err(_) => problems.push("Pre-trained run: pick a finished pretrain run".into()),
                }
                let mut run = Map::new();
                self.schedule(&mut run, &mut problems);
                out.insert("run".into(), Value::Object(run));
                number(&mut problems, &mut out, "label_dropout", "Label dropout", &self.label_dropout, false, false);
                if out.get("label_dropout").and_then(Value::as_f64).is_some_and(|d| d >= 1.0) {
                    problems.push("Label dropout: below 1".into());
                }
                let data = self.data_json(&self.data.text(), None, &mut problems);
                out.insert("data".into(), data);
                self.checkpoint_eval(&mut out, &mut problems);
            }
            "classify" => {
                match self.checkpoint.text().parse::<i64>() {
                    Ok(id) => {
                        out.insert("checkpoint".into(), json!({ "job": id }));
                    }
                    Err(_) => problems.push("Model: pick a finished class-conditional run".into()),
                }
                let validation = self.data_json(&self.data.text(), Some("validation"), &mut problems);
                out.insert("validation".into(), validation);
                if self.data.text() == "dataset" && self.split_on.get() {
                    let test = self.data_json("dataset", Some("test"), &mut problems);
                    out.insert("test".into(), test);
                } else if !self.test_latents.text().is_empty() {
                    out.insert("test".into(), json!({ "latents": { "key": self.test_latents.text() } }));
                }
                let timesteps: Result<Vec<usize>, _> =
                    self.timesteps.text().split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::parse).collect();
                match timesteps {
                    Ok(t) if !t.is_empty() && t.iter().all(|&t| t < 1000) => {
                        out.insert("timesteps".into(), json!(t));
                    }
                    _ => problems.push("Timesteps: whole numbers below 1000, separated by commas".into()),
                }
                number(&mut problems, &mut out, "draws", "Noise draws", &self.draws, true, true);
                if self.stopping.text() == "sequential" {
                    let mut stopping = Map::new();
                    number(&mut problems, &mut stopping, "alpha", "Error rate", &self.alpha, true, false);
                    if stopping.get("alpha").and_then(Value::as_f64).is_some_and(|a| a >= 1.0) {
                        problems.push("Error rate: below 1".into());
                    }
                    number(&mut problems, &mut stopping, "min_draws", "First look after", &self.min_draws, true, true);
                    stopping.insert("rule".into(), json!(self.stop_rule.text()));
                    out.insert("stopping".into(), Value::Object(stopping));
                    out.insert("measure_agreement".into(), json!(self.agreement.text() == "yes"));
                }
                out.insert("score".into(), json!(self.score.text()));
                number(&mut problems, &mut out, "seed", "Seed", &self.seed, false, true);
            }
            "sample" => {
                if self.references.text() != "none" {
                    let refs = self.data_json(&self.references.text(), None, &mut problems);
                    out.insert("references".into(), refs);
                }
                match self.checkpoint.text().parse::<i64>() {
                    Ok(id) => {
                        out.insert("checkpoint".into(), json!({ "job": id }));
                    }
                    Err(_) => problems.push("Checkpoint: pick a finished training run".into()),
                }
                number(&mut problems, &mut out, "num", "Samples", &self.num, true, true);
                let classes: Result<Vec<u32>, _> =
                    self.classes.text().split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::parse).collect();
                match classes {
                    Ok(c) => {
                        out.insert("classes".into(), json!(c));
                    }
                    Err(_) => problems.push("Classes: whole numbers separated by commas".into()),
                }
                number(&mut problems, &mut out, "guidance", "Guidance", &self.guidance, false, false);
                out.insert("sampler".into(), json!(self.sampler.text()));
                number(&mut problems, &mut out, "steps", "Sampling steps", &self.sample_steps, true, true);
                number(&mut problems, &mut out, "eta", "Eta", &self.eta, false, false);
                number(&mut problems, &mut out, "seed", "Seed", &self.seed, false, true);
                number(&mut problems, &mut out, "frames", "Trajectory frames", &self.frames, true, true);
                if out.get("frames").and_then(Value::as_i64).is_some_and(|f| !(2..=64).contains(&f)) {
                    problems.push("Trajectory frames: 2 to 64".into());
                }
            }
            "probe" if self.probe_features.text() == "dinov2" => {
                out.insert("features".into(), json!("dinov2"));
                number(&mut problems, &mut out, "dino_size", "DINOv2 input size", &self.dino_size, true, true);
                if out.get("dino_size").and_then(Value::as_u64).is_some_and(|s| s % 14 != 0) {
                    problems.push("DINOv2 input size: a multiple of 14 (224, 518)".into());
                }
                self.labelled_parts(&mut out, &mut problems);
                number(&mut problems, &mut out, "seed", "Seed", &self.seed, false, true);
            }
            "probe" => {
                match self.checkpoint.text().parse::<i64>() {
                    Ok(id) => {
                        out.insert("checkpoint".into(), json!({ "job": id }));
                    }
                    Err(_) => problems.push("Model: pick a finished representation-conditional pre-training".into()),
                }
                self.labelled_parts(&mut out, &mut problems);
                number(&mut problems, &mut out, "seed", "Seed", &self.seed, false, true);
            }
            "supervised" => {
                out.insert("architecture".into(), json!(self.architecture.text()));
                number(&mut problems, &mut out, "patch", "Patch", &self.patch, true, true);
                number(&mut problems, &mut out, "epochs", "Epochs", &self.epochs, true, true);
                number(&mut problems, &mut out, "batch_size", "Batch size", &self.batch_size, true, true);
                number(&mut problems, &mut out, "learning_rate", "Learning rate", &self.learning_rate, true, false);
                number(&mut problems, &mut out, "size", "Image size", &self.size, true, true);
                self.labelled_parts(&mut out, &mut problems);
                number(&mut problems, &mut out, "seed", "Seed", &self.seed, false, true);
            }
            "counterfactual" => {
                match self.checkpoint.text().parse::<i64>() {
                    Ok(id) => {
                        out.insert("checkpoint".into(), json!({ "job": id }));
                    }
                    Err(_) => problems.push("Model: pick a finished class-conditional run".into()),
                }
                let data = self.data_json(&self.data.text(), None, &mut problems);
                out.insert("data".into(), data);
                number(&mut problems, &mut out, "num", "Scans", &self.num, true, true);
                number(&mut problems, &mut out, "t", "Noise level t", &self.noise_t, true, true);
                if out.get("t").and_then(Value::as_i64).is_some_and(|t| t >= 1000) {
                    problems.push("Noise level t: below 1000".into());
                }
                number(&mut problems, &mut out, "steps", "DDIM steps", &self.sample_steps, true, true);
                number(&mut problems, &mut out, "guidance", "Guidance", &self.guidance, false, false);
                number(&mut problems, &mut out, "seed", "Seed", &self.seed, false, true);
            }
            "evaluate" => {
                let real = self.data_json(&self.data.text(), None, &mut problems);
                out.insert("real".into(), real);
                let ids: Result<Vec<i64>, _> =
                    self.models.text().split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::parse).collect();
                match ids {
                    Ok(ids) if !ids.is_empty() && ids.len() <= 8 => {
                        let models: Vec<Value> = ids.iter().map(|id| json!({ "checkpoint": { "job": id } })).collect();
                        out.insert("models".into(), json!(models));
                    }
                    _ => problems.push("Models: tick 1 to 8 finished training runs".into()),
                }
                number(&mut problems, &mut out, "num", "Samples per model", &self.eval_num, true, true);
                if out.get("num").and_then(Value::as_i64).is_some_and(|n| !(10..=10_000).contains(&n)) {
                    problems.push("Samples per model: 10 to 10000".into());
                }
                out.insert("sampler".into(), json!(self.sampler.text()));
                number(&mut problems, &mut out, "steps", "Sampling steps", &self.sample_steps, true, true);
                number(&mut problems, &mut out, "guidance", "Guidance", &self.guidance, false, false);
                number(&mut problems, &mut out, "seed", "Seed", &self.seed, false, true);
                number(&mut problems, &mut out, "histogram", "Histogram images", &self.histogram, false, true);
                number(&mut problems, &mut out, "max_real", "Real images", &self.max_real, true, true);
                out.insert("extractor".into(), json!(self.extractor.text()));
            }
            "encode" => {
                match self.dataset.text().parse::<i64>() {
                    Ok(id) => {
                        out.insert("dataset".into(), json!(id));
                    }
                    Err(_) => problems.push("Dataset: pick one".into()),
                }
                out.insert("autoencoder".into(), json!(self.autoencoder.text()));
                let windows: Vec<String> =
                    self.window.text().split(',').map(|w| w.trim().to_string()).filter(|w| !w.is_empty()).collect();
                out.insert("windows".into(), json!(windows));
                number(&mut problems, &mut out, "size", "Size", &self.size, true, true);
                if !out.contains_key("size") {
                    problems.push("Size: required".into());
                }
                number(&mut problems, &mut out, "channels", "Channels", &self.channels, true, true);
                if self.split_on.get() {
                    let split = self.split_json(&self.part.text(), &mut problems);
                    out.insert("split".into(), split);
                }
                out.insert("posterior".into(), json!(self.posterior.text()));
                number(&mut problems, &mut out, "seed", "Seed", &self.seed, false, true);
            }
            "reproduce" => {
                out.insert("preset".into(), json!(self.preset.text()));
                if self.pipeline_data.text() == "dataset" {
                    match self.dataset.text().parse::<i64>() {
                        Ok(id) => {
                            out.insert("dataset".into(), json!(id));
                        }
                        Err(_) => problems.push("Dataset: pick one".into()),
                    }
                } else {
                    number(&mut problems, &mut out, "phantoms", "Phantoms", &self.phantoms, true, true);
                }
                let p = &mut problems;
                number(p, &mut out, "downstream_site", "Downstream site", &self.pipeline_site, false, true);
                number(p, &mut out, "pretrain_steps", "Pre-training steps", &self.pretrain_steps, true, true);
                number(p, &mut out, "finetune_steps", "Fine-tuning steps", &self.finetune_steps, true, true);
                number(p, &mut out, "supervised_epochs", "Baseline epochs", &self.supervised_epochs, true, true);
                number(p, &mut out, "draws", "Noise draws", &self.pipeline_draws, true, true);
                number(p, &mut out, "eval_samples", "Samples for Table 5", &self.eval_samples, false, true);
                number(p, &mut out, "class_samples", "Samples per class", &self.class_samples, false, true);
                number(p, &mut out, "jobs", "Steps side by side", &self.side_by_side, true, true);
                number(p, &mut out, "seed", "Seed", &self.seed, false, true);
                number(p, &mut out, "seeds", "Seeds", &self.seeds, true, true);
                self.precision(&mut out);
            }
            "import" => {
                match self.dataset.text().parse::<i64>() {
                    Ok(id) => {
                        out.insert("dataset".into(), json!(id));
                    }
                    Err(_) => problems.push("Dataset: pick one".into()),
                }
                if self.path.text().is_empty() {
                    problems.push("Path: a file or folder under the server's import roots".into());
                }
                out.insert("path".into(), json!(self.path.text()));
                if !self.labels.text().is_empty() {
                    out.insert("labels".into(), json!(self.labels.text()));
                }
                number(&mut problems, &mut out, "site", "Site", &self.site, false, true);
            }
            _ => {}
        }
        if problems.is_empty() { Ok(Value::Object(out)) } else { Err(problems) }
    }
}

/// Parses an optional numeric field into `map[key]` (left out when empty), or says what is wrong.
fn number(
    problems: &mut Vec<String>,
    map: &mut Map<String, Value>,
    key: &str,
    label: &str,
    f: &Field,
    positive: bool,
    integer: bool,
) {
    let t = f.text();
    if t.is_empty() {
        return;
    }
    match t.parse::<f64>() {
        Ok(v) if integer && v.fract() != 0.0 => problems.push(format!("{label}: a whole number")),
        Ok(v) if positive && v <= 0.0 => problems.push(format!("{label}: more than 0")),
        Ok(v) if v < 0.0 => problems.push(format!("{label}: not negative")),
        Ok(v) => {
            map.insert(key.into(), if integer { json!(v as i64) } else { json!(v) });
        }
        Err(_) => problems.push(format!("{label}: {t:?} is not a number")),
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

    let tag_list = Memo::new(move |_| {
        let list: Vec<String> = tags.value.get().split(',').map(str::to_string).collect();
        repdiff_api::check_tags(&list)
    });
    let params = Memo::new(move |_| {
        let k = kind.get();
        if raw_mode.get() || !KNOWN.contains(&k.as_str()) {
            let text = raw.get();
            if text.trim().is_empty() {
                return Ok(json!({}));
            }
            serde_json::from_str::<Value>(&text).map_err(|e| vec![format!("Parameters: not JSON ({e})")])
        } else {
            form.params(&k)
        }
    });
    let edit_json = move |_| {
        if let Ok(p) = params.get_untracked() {
            raw.set(serde_json::to_string_pretty(&p).unwrap_or_default());
        }
        raw_mode.set(true);
    };
    let navigate = use_navigate();
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let (Ok(p), Ok(tags)) = (params.get_untracked(), tag_list.get_untracked()) else { return };
        let body = SubmitJob {
            kind: kind.get_untracked(),
            params: p,
            experiment_id: experiment.get_untracked().parse().ok(),
            priority: priority.text().parse().unwrap_or(0),
            max_attempts: attempts.text().parse().ok(),
            tags,
            publish_private: publish.get_untracked(),
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
                {text_input("Downstream site", "downstream_site", form.downstream_site, "0")}
                {with_part.then(|| choice("Part", "part", form.part, &["pretrain", "train", "validation", "test"]))}
                {text_input("Split seed", "split_seed", form.split_seed, "0")}
            </Show>
        }
    };
    // Where data comes from; a dataset's split fields pick a part unless `part_label` says what the split
    // stands for (the classifier takes validation and test).
    let source_fields = move |source: Field, part_label: Option<&'static str>| {
        move || match source.value.get().as_str() {
            "toy" => text_input("Toy images", "toy_n", form.toy_n, "64").into_any(),
            "latents" => latents_select("Latents", "latents", form.latents, "Pick an encode run").into_any(),
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
                    {choice("Source", "data", form.data, &["dataset", "latents", "toy"])}
                    {source_fields(form.data, Some("Its split: train, validation and test parts"))}
                </fieldset>
                {move || (!(form.data.value.get() == "dataset" && form.split_on.get())).then(|| view! {
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
                    {choice("Source", "data", form.data, &["dataset", "latents", "toy"])}
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
                    {choice("Reference images", "references", form.references, &["none", "dataset", "latents", "toy"])}
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
                    {choice("Source", "data", form.data, &["dataset", "latents", "toy"])}
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
                        text_input("Phantoms", "phantoms", form.phantoms, "600 (tiny-cpu) or 2,400 (paper), and more from the downstream site").into_any()
                    }}
                    {text_input("Downstream site", "pipeline_site", form.pipeline_site, "1")}
                    {text_input("Pre-training steps", "pretrain_steps", form.pretrain_steps, "preset's: 2,500, or 1,000 epochs (paper)")}
                    {text_input("Fine-tuning steps", "finetune_steps", form.finetune_steps, "preset's: 7,000, or 1,000 epochs (paper)")}
                    {text_input("Baseline epochs", "supervised_epochs", form.supervised_epochs, "preset's: 15 and 5, or 100")}
                    {text_input("Noise draws", "pipeline_draws", form.pipeline_draws, "preset's: 64, or 512 (paper)")}
                    {text_input("Samples for Table 5", "eval_samples", form.eval_samples, "preset's: 200, or 10,000; 0: none")}
                    {text_input("Samples per class (class fidelity)", "class_samples", form.class_samples, "preset's: 64, or 500; 0: none")}
                    {text_input("Steps side by side", "side_by_side", form.side_by_side, "2")}
                    {text_input("Seed", "seed", form.seed, "0")}
                    {text_input("Seeds", "seeds", form.seeds, "1; N runs seed, seed + 1, ... and reports the spread")}
                    {choice("Matrix products", "matmul_precision", form.matmul_precision, &["highest", "bf16"])}
                    <p class="muted small wide-row">"The paper's split (every other site pre-trains), unconditional and representation-conditional pre-training, fine-tuning of both, the diffusion classifier's timestep sweep on validation and its test result, class fidelity, generation metrics, counterfactuals, and the baselines (linear probes, a ViT and a ResNet from scratch). Finished steps survive a cancel or a lost worker: the next attempt goes on from them. tiny-cpu takes 15 to 30 minutes on two CPU cores. Matrix products: highest is f32 throughout; bf16 (bf16 operands, f32 sums) makes the training steps faster on CPUs with AVX512-BF16 or AMX and runs in f32 elsewhere."</p>
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
                    {choice("Source", "data", form.data, &["dataset", "latents", "toy"])}
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
                    {choice("Source", "data", form.data, &["latents", "dataset", "toy"])}
                    {source_fields(form.data, Some("Its split: validation here, test below"))}
                </fieldset>
                <fieldset><legend>"Test data (optional)"</legend>
                    {move || if form.data.value.get() == "dataset" && form.split_on.get() {
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
                    {choice("Source", "data", form.data, &["dataset", "latents", "toy"])}
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
            </fieldset>
            {fields}
            {move || tag_list.get().err().map(|problem| view! { <ul class="problems"><li>{format!("Tags: {problem}")}</li></ul> })}
            {move || params.get().err().map(|problems| view! {
                <ul class="problems">{problems.into_iter().map(|p| view! { <li>{p}</li> }).collect_view()}</ul>
            })}
            <ErrorBox error=error />
            <div class="inline">
                <button type="submit" disabled=move || busy.get() || params.with(Result::is_err) || tag_list.with(Result::is_err)>"Launch"</button>
                <button type="button" class="link" on:click=edit_json hidden=move || raw_mode.get()>"Edit as JSON"</button>
            </div>
            <details>
                <summary>"Parameters sent"</summary>
                <pre class="json">{move || params.get().ok().map(|p| serde_json::to_string_pretty(&p).unwrap_or_default())}</pre>
            </details>
        </form>
    }
}
