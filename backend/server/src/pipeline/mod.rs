//! The paper's pipeline as a graph of queue jobs. A `reproduce` submission plans its stages per seed
//! (pre-trainings, fine-tunings, diffusion classifiers, class-fidelity samples and their judges, the
//! generation metrics, counterfactuals, linear probes, supervised baselines) as ordinary jobs of their own
//! kinds, each naming the jobs whose outputs it reads and depending on them; the `reproduce` job itself
//! waits on every stage and then writes the report ([`report`]). Independent stages run at once on any
//! workers; each is a run of its own with its curves, samples and artifacts; a failed stage cancels what
//! waits on it, and retrying it puts them back.

pub mod report;

use repdiff_api::jobs::{
    CheckpointRef, ClassifyParams, ConditioningKind, CounterfactualParams, DataSource, EvaluateParams, Features,
    FinetuneParams, Invalid, JobSpec, ModelToEvaluate, Part, PretrainParams, ProbeParams, ReproduceParams,
    RunOverrides, SampleParams, Sampler, SplitSpec, Stopping, SupervisedParams,
};
use repdiff_engine::manifest::{self, Manifest, SliceRecord};
use repdiff_engine::phantom::PngSet;
use sqlx::PgPool;

use crate::queue::{self, Job, NewJob};
use crate::worker::Registry;

/// What a preset runs.
pub struct Preset {
    pub phantoms: usize,
    pub downstream: usize,
    pub phantom_size: usize,
    pub autoencoder: &'static str,
    pub encode_size: usize,
    pub model_preset: &'static str,
    pub pretrain_steps: Option<usize>,
    pub finetune_steps: Option<usize>,
    /// Epochs when the steps are not given (the paper's 1,000), over the data of each stage.
    pub epochs: usize,
    pub timesteps: &'static str,
    pub draws: usize,
    /// The supervised baselines (`repdiff supervised --arch`) and the epochs of each.
    pub supervised: [(&'static str, usize); 2],
    pub vit_patch: usize,
    /// Samples per pre-trained model for the Table 5 analogue, how they are drawn, and at most how many
    /// pre-training images they are measured against.
    pub eval_samples: usize,
    pub eval_real: usize,
    pub eval_sampler: &'static str,
    pub eval_steps: usize,
    /// Samples per class from each fine-tuned model for the class-fidelity check, and how they are drawn:
    /// ancestral DDPM, not DDIM, whose samples of the unconditionally pre-trained tiny model the judges
    /// called positive far more often (docs/benchmarks.md, "Class fidelity and the sampler").
    pub class_samples: usize,
    pub class_sampler: &'static str,
    pub class_steps: usize,
}

pub fn preset(name: &str) -> Option<Preset> {
    Some(match name {
        "tiny-cpu" => Preset {
            phantoms: 600,
            downstream: 1500,
            phantom_size: 64,
            autoencoder: "pixels",
            encode_size: 32,
            model_preset: "tiny-cpu",
            pretrain_steps: Some(2500),
            finetune_steps: Some(7000),
            epochs: 0,
            timesteps: "50,100,150,200,300,500",
            draws: 64,
            supervised: [("tiny", 15), ("resnet-tiny", 5)],
            vit_patch: 4,
            eval_samples: 200,
            eval_real: 300,
            eval_sampler: "ddim",
            eval_steps: 50,
            class_samples: 64,
            class_sampler: "ddpm",
            class_steps: 100,
        },
        "paper" => Preset {
            phantoms: 2400,
            downstream: 1200,
            phantom_size: 256,
            autoencoder: "sd-vae-ft-ema",
            encode_size: 256,
            model_preset: "paper",
            pretrain_steps: None,
            finetune_steps: None,
            epochs: 1000,
            timesteps: "25,50,100,150,200,250,300,350,400,450,500,600,700,800,900",
            draws: 512,
            supervised: [("vit-b", 100), ("resnet-50", 100)],
            vit_patch: 2,
            eval_samples: 10_000,
            eval_real: 50_000,
            eval_sampler: "ddpm",
            eval_steps: 250,
            class_samples: 500,
            class_sampler: "ddpm",
            class_steps: 250,
        },
        _ => return None,
    })
}

/// One stage: a job of an ordinary kind, the id it will have, and the stages it waits on.
#[derive(Clone, Debug, PartialEq)]
pub struct Stage {
    pub id: i64,
    /// `seed-0/pretrain-rep`: unique in its pipeline.
    pub name: String,
    pub spec: JobSpec,
    pub after: Vec<i64>,
}

/// Slices per part of one seed's split, in [`Part::ALL`]'s order.
pub type PartSizes = [usize; 4];

/// The seeds a pipeline runs for.
pub fn seeds(p: &ReproduceParams) -> Vec<u64> {
    (0..p.seeds.unwrap_or(1) as u64).map(|i| p.seed + i).collect()
}

/// The preset's phantoms as `p` changes them: (random-site slices, downstream slices).
fn phantom_counts(p: &ReproduceParams, preset: &Preset) -> (usize, usize) {
    match p.phantoms {
        Some(n) => (n, n * preset.downstream / preset.phantoms),
        None => (preset.phantoms, preset.downstream),
    }
}

/// The slices (sites and markers) a seed's split is made of: the dataset's `records`, else the seed's
/// phantoms.
fn seed_records(p: &ReproduceParams, preset: &Preset, seed: u64, dataset: &[SliceRecord]) -> Vec<SliceRecord> {
    if p.dataset.is_some() {
        return dataset.to_vec();
    }
    let (num, downstream) = phantom_counts(p, preset);
    let set = PngSet {
        num,
        downstream,
        size: preset.phantom_size,
        marker_prob: repdiff_engine::phantom::MARKER_PROB,
        seed,
        slices_per_patient: p.phantom_slices_per_patient.unwrap_or(1),
    };
    let slices = set.slices();
    slices
        .iter()
        .map(|s| SliceRecord { site: s.site, markers: s.markers, origin: set.origin(s), ..SliceRecord::default() })
        .collect()
}

/// Each seed's part sizes; refuses a split without validation or test slices (nothing to choose or test
/// on), naming the field at fault.
pub fn part_sizes(p: &ReproduceParams, dataset: &[SliceRecord]) -> Result<Vec<PartSizes>, Invalid> {
    let preset = preset(&p.preset).ok_or_else(|| Invalid::new("preset", "unknown"))?;
    let field = if p.dataset.is_some() { "downstream_site" } else { "phantoms" };
    seeds(p)
        .into_iter()
        .map(|seed| {
            let records = seed_records(p, &preset, seed, dataset);
            let parts = Manifest { records }
                .split(crate::jobs::split_unit(p.split_unit), p.downstream_site, manifest::PAPER_SPLIT, seed)
                .map_err(|e| Invalid::new("downstream_site", e.to_string()))?;
            let count = |part: manifest::Part| parts.iter().filter(|&&x| x == part).count();
            let sizes = manifest::Part::ALL.map(count);
            for (i, name) in [(2, "validation"), (3, "test")] {
                if sizes[i] == 0 {
                    return Err(Invalid::new(
                        field,
                        format!(
                            "seed {seed}: {} gives no {name} slices; the split needs at least ten {}s per label there",
                            p.downstream_site.map_or("the dataset".to_string(), |s| format!("site {s}")),
                            p.split_unit.name()
                        ),
                    ));
                }
            }
            if p.downstream_site.is_none() {
                // Without a site design, pre-training reads the training part.
                return Ok([sizes[1], sizes[1], sizes[2], sizes[3]]);
            }
            if sizes[0] == 0 {
                return Err(Invalid::new(
                    "downstream_site",
                    "every slice is of the downstream site: none pre-trains (leave the site out for a single-site design)",
                ));
            }
            Ok(sizes)
        })
        .collect()
}

/// Plans the stages of pipeline `p` (with `sizes` from [`part_sizes`]; `dino`: DINOv2's weights are at
/// hand), each with the next id of `ids` (ascending: a stage's dependencies are earlier stages).
pub fn plan(p: &ReproduceParams, sizes: &[PartSizes], dino: bool, ids: &mut dyn Iterator<Item = i64>) -> Vec<Stage> {
    let preset = preset(&p.preset).expect("a validated preset");
    let mut stages = Vec::new();
    for (seed, sizes) in seeds(p).into_iter().zip(sizes) {
        let mut add = |name: &str, spec: JobSpec, after: &[i64]| -> i64 {
            let id = ids.next().expect("enough ids");
            stages.push(Stage { id, name: format!("seed-{seed}/{name}"), spec, after: after.to_vec() });
            id
        };
        let data = |part: Part| -> DataSource {
            let split = Some(SplitSpec { downstream_site: p.downstream_site, part, seed, unit: p.split_unit });
            match p.dataset {
                Some(id) => DataSource::Dataset { id, window: None, split },
                None => {
                    let (num, downstream) = phantom_counts(p, &preset);
                    let slices_per_patient = p.phantom_slices_per_patient.unwrap_or(1);
                    DataSource::Phantoms { num, downstream, size: preset.phantom_size, seed, split, slices_per_patient }
                }
            }
        };
        let epochs_steps = |part: usize| preset.epochs.max(1) * sizes[part].div_ceil(16).max(1);
        let pretrain_steps = p.pretrain_steps.or(preset.pretrain_steps).unwrap_or_else(|| epochs_steps(0));
        let finetune_steps = p.finetune_steps.or(preset.finetune_steps).unwrap_or_else(|| epochs_steps(1));
        let draws = p.draws.unwrap_or(preset.draws);
        let timesteps: Vec<usize> = preset.timesteps.split(',').map(|t| t.parse().expect("a preset's")).collect();
        let mut pretrained = [0; 2];
        let mut finetuned = [0; 2];
        let mut classifier = [0; 2];
        // The longest chain (the representation model's) first; the baselines that need no diffusion model
        // last, to fill the gaps.
        for (i, (mode, conditioning)) in MODES.into_iter().enumerate() {
            let run = RunOverrides {
                preset: Some(preset.model_preset.to_string()),
                conditioning: Some(conditioning),
                steps: Some(pretrain_steps),
                checkpoint_every: Some((pretrain_steps / 10).max(1)),
                seed: Some(seed),
                matmul_precision: p.matmul_precision,
                ..RunOverrides::default()
            };
            let spec = PretrainParams { run, ..PretrainParams::new(data(Part::Pretrain)) };
            pretrained[i] = add(&format!("pretrain-{mode}"), JobSpec::Pretrain(spec), &[]);
        }
        for (i, (mode, _)) in MODES.into_iter().enumerate() {
            let mut spec = FinetuneParams::new(CheckpointRef::Job(pretrained[i]), data(Part::Train));
            spec.run.steps = Some(finetune_steps);
            spec.run.matmul_precision = p.matmul_precision;
            finetuned[i] = add(&format!("finetune-{mode}"), JobSpec::Finetune(spec), &[pretrained[i]]);
        }
        for (i, (mode, _)) in MODES.into_iter().enumerate() {
            let spec = ClassifyParams {
                test: Some(data(Part::Test)),
                timesteps: timesteps.clone(),
                draws,
                seed,
                stopping: Some(Stopping::default()),
                measure_agreement: true,
                ..ClassifyParams::new(CheckpointRef::Job(finetuned[i]), data(Part::Validation))
            };
            classifier[i] = add(&format!("classify-{mode}"), JobSpec::Classify(spec), &[finetuned[i]]);
        }
        // Class fidelity: each fine-tuned model samples both classes, without guidance and with
        // classifier-free guidance, and the other model's diffusion classifier, which never saw that model,
        // sorts them at the timestep it chose on real validation slices.
        let class_samples = p.class_samples.unwrap_or(preset.class_samples);
        for (mode, judge) in report::FIDELITY_PAIRS.into_iter().filter(|_| class_samples > 0) {
            let (m, j) = (mode_index(mode), mode_index(judge));
            for guidance in report::CLASS_GUIDANCE {
                let name = report::fidelity_name(mode, guidance);
                let spec = SampleParams {
                    num: 2 * class_samples,
                    classes: vec![0, 1],
                    guidance,
                    sampler: preset.class_sampler.parse().expect("a preset's sampler"),
                    steps: preset.class_steps,
                    seed,
                    ..SampleParams::new(CheckpointRef::Job(finetuned[m]))
                };
                let samples = add(&format!("class-samples-{name}"), JobSpec::Sample(spec), &[finetuned[m]]);
                let key = format!("jobs/{samples}/samples.safetensors");
                let spec = ClassifyParams {
                    timestep_of: Some(classifier[j]),
                    timesteps: Vec::new(),
                    draws,
                    seed,
                    stopping: Some(Stopping::default()),
                    ..ClassifyParams::new(CheckpointRef::Job(finetuned[j]), DataSource::Latents { key })
                };
                let after = [samples, classifier[j], finetuned[j]];
                add(&format!("class-fidelity-{name}"), JobSpec::Classify(spec), &after);
            }
        }
        // Generation metrics of both pre-trained models against the pre-training images (Table 5).
        let eval_samples = p.eval_samples.unwrap_or(preset.eval_samples);
        if eval_samples > 0 {
            let models = MODES
                .into_iter()
                .enumerate()
                .rev()
                .map(|(i, (mode, conditioning))| ModelToEvaluate {
                    name: Some(format!("pretrain-{mode}")),
                    references: (conditioning == ConditioningKind::Representation).then(|| data(Part::Pretrain)),
                    ..ModelToEvaluate::new(CheckpointRef::Job(pretrained[i]))
                })
                .collect();
            let spec = EvaluateParams {
                num: eval_samples,
                sampler: preset.eval_sampler.parse::<Sampler>().expect("a preset's sampler"),
                steps: preset.eval_steps,
                max_real: Some(preset.eval_real),
                seed,
                ..EvaluateParams::new(data(Part::Pretrain), models)
            };
            add("evaluate", JobSpec::Evaluate(spec), &[pretrained[1], pretrained[0]]);
        }
        // Counterfactuals of test scans under the representation-pre-trained classifier.
        let spec = CounterfactualParams {
            num: 8,
            t: 500,
            seed,
            ..CounterfactualParams::new(CheckpointRef::Job(finetuned[0]), data(Part::Test))
        };
        add("counterfactuals", JobSpec::Counterfactual(spec), &[finetuned[0]]);
        // The baselines on the same three parts: the linear probes (on the representation encoder; on
        // DINOv2's features of the images when its weights are at hand) and networks trained from scratch.
        let probe = |features, checkpoint| ProbeParams {
            test: Some(data(Part::Test)),
            seed,
            ..ProbeParams::new(features, checkpoint, data(Part::Train), data(Part::Validation))
        };
        let spec = probe(Features::Encoder, Some(CheckpointRef::Job(pretrained[0])));
        add("probe", JobSpec::Probe(spec), &[pretrained[0]]);
        if dino {
            add("probe-dinov2", JobSpec::Probe(probe(Features::Dinov2, None)), &[]);
        }
        for (architecture, epochs) in preset.supervised {
            let spec = SupervisedParams {
                test: Some(data(Part::Test)),
                architecture: architecture.to_string(),
                patch: preset.vit_patch,
                epochs: p.supervised_epochs.unwrap_or(epochs),
                seed,
                size: preset.encode_size,
                ..SupervisedParams::new(data(Part::Train), data(Part::Validation))
            };
            add(&format!("supervised-{architecture}"), JobSpec::Supervised(spec), &[]);
        }
    }
    stages
}

/// The two pre-trainings, the representation model's first.
pub const MODES: [(&str, ConditioningKind); 2] =
    [("rep", ConditioningKind::Representation), ("uncond", ConditioningKind::None)];

fn mode_index(mode: &str) -> usize {
    MODES.iter().position(|(m, _)| *m == mode).expect("a mode")
}

/// Why a pipeline was not submitted.
#[derive(Debug)]
pub enum Refused {
    /// A parameter (of the pipeline, or of a stage: `seed-0/pretrain-rep: run.steps ...`).
    Invalid(Invalid),
    Db(sqlx::Error),
}

impl From<sqlx::Error> for Refused {
    fn from(e: sqlx::Error) -> Self {
        Refused::Db(e)
    }
}

impl From<Invalid> for Refused {
    fn from(e: Invalid) -> Self {
        Refused::Invalid(e)
    }
}

/// Submits pipeline `job` (a `reproduce` job) with its stages, in one transaction: the stages first, each
/// with the pipeline's owner, experiment, priority and attempts, waiting on the stages it reads and on
/// `job.depends_on`; then the pipeline's job, waiting on them all. With an idempotency key used before,
/// returns that pipeline (`false`).
pub async fn submit(pool: &PgPool, registry: &Registry, job: &NewJob, dino: bool) -> Result<(Job, bool), Refused> {
    let p: ReproduceParams =
        serde_json::from_value(job.params.clone()).map_err(|e| Invalid::new("params", e.to_string()))?;
    p.validate()?;
    let dataset = match p.dataset {
        Some(id) => crate::scans::slices_of(pool, id).await?.into_iter().map(|s| s.record).collect(),
        None => Vec::new(),
    };
    let sizes = part_sizes(&p, &dataset)?;
    // Planned once to count the ids to reserve (planning is pure and takes microseconds), then with them:
    // a stage's spec names the ids of the stages it reads.
    let n = plan(&p, &sizes, dino, &mut (1..)).len();
    let mut tx = pool.begin().await?;
    if let Some(key) = &job.idempotency_key {
        let earlier =
            sqlx::query_scalar!("SELECT id FROM jobs WHERE idempotency_key = $1", key).fetch_optional(&mut *tx).await?;
        if let Some(id) = earlier {
            let found = queue::get(pool, id).await?.ok_or(sqlx::Error::RowNotFound)?;
            return Ok((found, false));
        }
    }
    let ids = queue::reserve_ids(&mut tx, n as i64 + 1).await?;
    let pipeline_id = ids[n];
    let pipeline = NewJob { id: Some(pipeline_id), depends_on: Vec::new(), ..job.clone() };
    let (created, _) = queue::insert(&mut tx, &pipeline).await?;
    let stages = plan(&p, &sizes, dino, &mut ids.into_iter());
    for stage in &stages {
        let params = stage.spec.params();
        let kind = stage.spec.kind();
        let handler = registry
            .get(kind)
            .ok_or_else(|| Invalid::new(stage.name.clone(), format!("this deployment runs no {kind} jobs")))?;
        handler.validate(&params).map_err(|e| e.within(&stage.name))?;
        handler.admit(&params, &Default::default()).map_err(|message| Invalid::new(stage.name.clone(), message))?;
        let mut depends_on = [stage.after.clone(), job.depends_on.clone()].concat();
        depends_on.sort_unstable();
        depends_on.dedup();
        let new = NewJob {
            kind: kind.to_string(),
            params,
            priority: job.priority,
            max_attempts: job.max_attempts,
            idempotency_key: None,
            owner_id: job.owner_id,
            experiment_id: job.experiment_id,
            depends_on,
            id: Some(stage.id),
            stage_of: Some((pipeline_id, stage.name.clone())),
        };
        queue::insert(&mut tx, &new).await?;
    }
    let all: Vec<i64> = stages.iter().map(|s| s.id).collect();
    queue::add_dependencies(&mut tx, pipeline_id, &all).await?;
    tx.commit().await?;
    Ok((queue::get(pool, created.id).await?.unwrap_or(created), true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use repdiff_api::jobs::SplitUnit;

    fn params(json: serde_json::Value) -> ReproduceParams {
        serde_json::from_value(json).unwrap()
    }

    fn names(stages: &[Stage]) -> Vec<&str> {
        stages.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn a_seed_plans_every_stage_of_the_paper_each_after_what_it_reads() {
        let p = params(serde_json::json!({ "phantoms": 96, "pretrain_steps": 40 }));
        let sizes = part_sizes(&p, &[]).unwrap();
        let stages = plan(&p, &sizes, false, &mut (100..));
        assert_eq!(stages.len(), 19, "{:?}", names(&stages));
        // Ids in order, every dependency an earlier stage, names unique.
        assert!(stages.windows(2).all(|w| w[0].id < w[1].id));
        for stage in &stages {
            assert!(stage.after.iter().all(|a| stages.iter().any(|s| s.id == *a && s.id < stage.id)), "{}", stage.name);
            stage.spec.validate().unwrap_or_else(|e| panic!("{}: {e}", stage.name));
        }
        let mut unique = names(&stages);
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), stages.len());
        let find = |name: &str| stages.iter().find(|s| s.name == format!("seed-0/{name}")).unwrap();
        let JobSpec::Pretrain(pretrain) = &find("pretrain-rep").spec else { panic!() };
        assert_eq!(pretrain.run.steps, Some(40));
        assert_eq!(pretrain.run.checkpoint_every, Some(4));
        assert_eq!(pretrain.run.conditioning, Some(ConditioningKind::Representation));
        let JobSpec::Finetune(finetune) = &find("finetune-rep").spec else { panic!() };
        assert_eq!(finetune.from, CheckpointRef::Job(find("pretrain-rep").id));
        // A judge classifies the other model's samples at the timestep it chose on real slices.
        let judged = find("class-fidelity-rep-g3");
        let JobSpec::Classify(classify) = &judged.spec else { panic!() };
        assert_eq!(classify.timestep_of, Some(find("classify-uncond").id));
        assert_eq!(classify.checkpoint, CheckpointRef::Job(find("finetune-uncond").id));
        let samples = find("class-samples-rep-g3").id;
        assert_eq!(classify.validation, DataSource::Latents { key: format!("jobs/{samples}/samples.safetensors") });
        assert!(judged.after.contains(&samples) && judged.after.contains(&find("classify-uncond").id));
        // The baselines wait on nothing: they fill the gaps.
        assert!(find("supervised-tiny").after.is_empty());
    }

    #[test]
    fn what_is_left_out_is_not_planned_and_dinov2_and_seeds_add_stages() {
        let p = params(serde_json::json!({ "phantoms": 96, "eval_samples": 0, "class_samples": 0, "seeds": 2 }));
        let sizes = part_sizes(&p, &[]).unwrap();
        let stages = plan(&p, &sizes, true, &mut (1..));
        // Per seed: 2 pre-trainings, 2 fine-tunings, 2 classifiers, counterfactuals, 2 probes, 2 baselines.
        assert_eq!(stages.len(), 2 * 11, "{:?}", names(&stages));
        assert!(names(&stages).contains(&"seed-1/probe-dinov2"));
        // Each seed draws its own phantoms and split.
        let JobSpec::Pretrain(second) = &stages[11].spec else { panic!() };
        let DataSource::Phantoms { seed, split: Some(split), .. } = &second.data else { panic!() };
        assert_eq!((*seed, split.seed), (1, 1));
    }

    #[test]
    fn phantoms_as_patients_reach_every_stage_and_the_split_counts_whole_patients() {
        let by = |unit: &str| {
            params(serde_json::json!({ "phantoms": 400, "phantom_slices_per_patient": 8, "split_unit": unit }))
        };
        let (patient, slice) = (by("patient"), by("slice"));
        let stages = plan(&patient, &part_sizes(&patient, &[]).unwrap(), false, &mut (1..));
        for stage in &stages {
            if let JobSpec::Pretrain(PretrainParams {
                data: DataSource::Phantoms { slices_per_patient, split, .. },
                ..
            }) = &stage.spec
            {
                assert_eq!((*slices_per_patient, split.as_ref().map(|s| s.unit)), (8, Some(SplitUnit::Patient)));
            }
        }
        // Split by patient, no phantom patient is in two parts; split by slice, the same phantoms leak.
        let records = seed_records(&patient, &preset("tiny-cpu").unwrap(), 0, &[]);
        let split = |p: &ReproduceParams| {
            Manifest { records: records.clone() }
                .split(crate::jobs::split_unit(p.split_unit), p.downstream_site, manifest::PAPER_SPLIT, 0)
                .unwrap()
        };
        let manifest = Manifest { records: records.clone() };
        assert_eq!(manifest.patients_in_two_parts(&split(&patient)), 0);
        assert!(manifest.patients_in_two_parts(&split(&slice)) > 0, "the per-slice split leaks");
    }

    #[test]
    fn the_paper_preset_counts_its_steps_in_epochs_of_each_part() {
        let p = params(serde_json::json!({ "preset": "paper", "phantoms": 240 }));
        let sizes = part_sizes(&p, &[]).unwrap();
        let stages = plan(&p, &sizes, false, &mut (1..));
        let JobSpec::Pretrain(pretrain) = &stages[0].spec else { panic!() };
        assert_eq!(pretrain.run.steps, Some(1000 * sizes[0][0].div_ceil(16)));
        let JobSpec::Finetune(finetune) = &stages[2].spec else { panic!() };
        assert_eq!(finetune.run.steps, Some(1000 * sizes[0][1].div_ceil(16)));
    }

    #[test]
    fn a_split_without_downstream_slices_is_refused_by_field() {
        let p = params(serde_json::json!({ "phantoms": 96, "downstream_site": 13 }));
        assert_eq!(part_sizes(&p, &[]).unwrap_err().field, "downstream_site");
        // A dataset whose downstream site has a handful of slices has no validation part.
        let few: Vec<SliceRecord> =
            (0..6).map(|i| SliceRecord { site: 1 + (i % 2), ..SliceRecord::default() }).collect();
        let p = params(serde_json::json!({ "dataset": 3 }));
        let refused = part_sizes(&p, &few).unwrap_err();
        assert_eq!(refused.field, "downstream_site");
        assert!(refused.message.contains("no validation slices"), "{refused}");
    }
}
