use serde_json::json;

use super::*;

/// The smallest valid parameters of every kind.
fn minimal(kind: &str) -> serde_json::Value {
    let toy = json!({ "toy": { "n": 8 } });
    match kind {
        "import" => json!({ "dataset": 1, "path": "scans" }),
        "encode" => json!({ "dataset": 1, "size": 32 }),
        "pretrain" => json!({ "data": toy }),
        "finetune" => json!({ "from": { "job": 1 }, "data": toy }),
        "sample" => json!({ "checkpoint": { "job": 1 } }),
        "counterfactual" => json!({ "checkpoint": { "job": 1 }, "data": toy }),
        "classify" => json!({ "checkpoint": { "job": 1 }, "validation": toy }),
        "evaluate" => json!({ "real": toy, "models": [{ "checkpoint": { "key": "jobs/1/checkpoint.safetensors" } }] }),
        "probe" => json!({ "checkpoint": { "job": 1 }, "train": toy, "validation": toy }),
        "supervised" => json!({ "train": toy, "validation": toy, "architecture": "tiny" }),
        "reproduce" | "noop" => json!({}),
        other => panic!("no example of {other}"),
    }
}

#[test]
fn every_kind_parses_validates_and_round_trips_through_its_stored_parameters() {
    for kind in JOB_KINDS {
        let spec = JobSpec::from_parts(kind, minimal(kind)).unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(spec.kind(), kind);
        spec.validate().unwrap_or_else(|e| panic!("{kind}: {e}"));
        let stored = spec.params();
        assert!(!stored.to_string().contains("null"), "{kind}: {stored}");
        assert_eq!(JobSpec::from_parts(kind, stored).unwrap(), spec, "{kind}");
    }
}

#[test]
fn stored_parameters_carry_the_defaults_the_job_ran_with() {
    let spec = JobSpec::from_parts("sample", json!({ "checkpoint": { "job": 4 } })).unwrap();
    let stored = spec.params();
    assert_eq!(stored["steps"], 50);
    assert_eq!(stored["sampler"], "ddim");
    assert_eq!(stored["guidance"], 1.0);
    assert!(stored.get("frames").is_none() && stored.get("references").is_none());
}

#[test]
fn a_submission_is_its_kind_and_parameters_beside_the_queue_fields() {
    let submit: crate::SubmitJob = serde_json::from_value(json!({
        "kind": "classify",
        "params": { "checkpoint": { "job": 2 }, "validation": { "latents": { "key": "v.safetensors" } }, "draws": 32 },
        "priority": 5,
        "tags": ["sweep"],
    }))
    .unwrap();
    let JobSpec::Classify(classify) = &submit.spec else { panic!("{:?}", submit.spec) };
    assert_eq!((classify.draws, classify.batch_size, submit.priority), (32, 16, 5));
    // Serialized, it reads back the same: what a client built is what the server gets.
    let again: crate::SubmitJob = serde_json::from_value(serde_json::to_value(&submit).unwrap()).unwrap();
    assert_eq!(again.spec, submit.spec);
    // `params` may be left out where every field has a default.
    let noop: crate::SubmitJob = serde_json::from_value(json!({ "kind": "noop" })).unwrap();
    assert_eq!(noop.spec, JobSpec::Noop(NoopParams::default()));
}

#[test]
fn unknown_kinds_and_misspelt_fields_are_refused_with_the_kind_named() {
    let unknown = JobSpec::from_parts("trian", json!({})).unwrap_err();
    assert!(unknown.contains("unknown job kind \"trian\"") && unknown.contains("pretrain"), "{unknown}");
    let misspelt = JobSpec::from_parts("sample", json!({ "checkpoint": { "job": 1 }, "stpes": 10 })).unwrap_err();
    assert!(misspelt.contains("sample job") && misspelt.contains("stpes"), "{misspelt}");
    let missing = JobSpec::from_parts("sample", json!({})).unwrap_err();
    assert!(missing.contains("checkpoint"), "{missing}");
    let through_submit =
        serde_json::from_value::<crate::SubmitJob>(json!({ "kind": "sample", "params": { "num": 3 } }));
    assert!(through_submit.unwrap_err().to_string().contains("missing field `checkpoint`"));
}

#[test]
fn a_problem_names_its_field_down_to_the_nested_source() {
    let cases = [
        ("classify", json!({ "checkpoint": { "job": 1 }, "validation": { "toy": { "n": 0 } } }), "validation.toy.n"),
        ("pretrain", json!({ "data": { "toy": { "n": 8 } }, "run": { "steps": 0 } }), "run.steps"),
        ("pretrain", json!({ "data": { "toy": { "n": 8 } }, "run": { "model": "DiT-M/3" } }), "run.model"),
        ("pretrain", json!({ "data": { "toy": { "n": 8 } }, "run": { "learning_rate": 1e308 } }), "run.learning_rate"),
        (
            "finetune",
            json!({ "from": { "job": 1 }, "data": { "toy": { "n": 8 } }, "eval": { "every": 0 } }),
            "eval.every",
        ),
        ("sample", json!({ "checkpoint": { "job": 1 }, "frames": 65 }), "frames"),
        ("sample", json!({ "checkpoint": { "job": 1 }, "eta": 2.0 }), "eta"),
        ("sample", json!({ "checkpoint": { "key": " " } }), "checkpoint.key"),
        ("encode", json!({ "dataset": 1, "size": 30, "autoencoder": "sd-vae-ft-ema" }), "size"),
        ("encode", json!({ "dataset": 1, "size": 32, "windows": ["brain", "bone", "subdural"] }), "windows"),
        (
            "encode",
            json!({ "dataset": 1, "size": 32, "split": { "downstream_site": 4294967297u64, "part": "test" } }),
            "split.downstream_site",
        ),
        ("evaluate", json!({ "real": { "toy": { "n": 8 } }, "models": [] }), "models"),
        (
            "evaluate",
            json!({ "real": { "toy": { "n": 8 } }, "models": [{ "checkpoint": { "job": 1 }, "references": { "latents": { "key": "" } } }] }),
            "models.0.references.latents.key",
        ),
        (
            "classify",
            json!({ "checkpoint": { "job": 1 }, "validation": { "toy": { "n": 8 } }, "timesteps": [10, 1000] }),
            "timesteps.1",
        ),
        (
            "classify",
            json!({ "checkpoint": { "job": 1 }, "validation": { "toy": { "n": 8 } }, "stopping": { "alpha": 1.0 } }),
            "stopping.alpha",
        ),
        (
            "probe",
            json!({ "features": "dinov2", "dino_size": 100, "train": { "toy": { "n": 8 } }, "validation": { "toy": { "n": 8 } } }),
            "dino_size",
        ),
        (
            "supervised",
            json!({ "architecture": "vit-b", "size": 30, "patch": 4, "train": { "toy": { "n": 8 } }, "validation": { "toy": { "n": 8 } } }),
            "patch",
        ),
        ("reproduce", json!({ "dataset": 1, "phantoms": 100 }), "phantoms"),
        ("reproduce", json!({ "preset": "huge" }), "preset"),
        ("import", json!({ "dataset": 1, "path": "" }), "path"),
        ("noop", json!({ "sleep_ms": 4_000_000 }), "sleep_ms"),
    ];
    for (kind, params, field) in cases {
        let spec = JobSpec::from_parts(kind, params.clone()).unwrap_or_else(|e| panic!("{kind} {params}: {e}"));
        let problem = spec.validate().expect_err(&format!("{kind} {params} is invalid"));
        assert_eq!(problem.field, field, "{kind} {params}: {problem}");
        assert!(problem.to_string().starts_with(&format!("{field}: ")), "{problem}");
    }
}

#[test]
fn model_names_follow_the_dit_family() {
    for name in ["DiT-S/2", "DiT-B/4", "DiT-L/8", "DiT-XL/2"] {
        assert!(check_model_name(name).is_ok(), "{name}");
    }
    for name in ["DiT-B", "DiT-B/3", "dit-b/2", "ViT-B/2", ""] {
        assert!(check_model_name(name).is_err(), "{name}");
    }
}

/// A constructor's defaults are the ones a submission that leaves the fields out gets.
#[test]
fn constructors_give_the_defaults_of_a_submission() {
    let toy = DataSource::Toy { n: 8, seed: 0 };
    let job = CheckpointRef::Job(1);
    let built = [
        JobSpec::Import(ImportParams::new(1, "scans".into())),
        JobSpec::Encode(EncodeParams::new(1, 32)),
        JobSpec::Pretrain(PretrainParams::new(toy.clone())),
        JobSpec::Finetune(FinetuneParams::new(job.clone(), toy.clone())),
        JobSpec::Sample(SampleParams::new(job.clone())),
        JobSpec::Counterfactual(CounterfactualParams::new(job.clone(), toy.clone())),
        JobSpec::Classify(ClassifyParams::new(job.clone(), toy.clone())),
        JobSpec::Evaluate(EvaluateParams::new(
            toy.clone(),
            vec![ModelToEvaluate::new(CheckpointRef::Key("jobs/1/checkpoint.safetensors".into()))],
        )),
        JobSpec::Probe(ProbeParams::new(Features::Encoder, Some(job.clone()), toy.clone(), toy.clone())),
        JobSpec::Supervised(SupervisedParams {
            architecture: "tiny".into(),
            ..SupervisedParams::new(toy.clone(), toy)
        }),
        JobSpec::Reproduce(ReproduceParams::default()),
        JobSpec::Noop(NoopParams::default()),
    ];
    for spec in built {
        assert_eq!(JobSpec::from_parts(spec.kind(), minimal(spec.kind())).unwrap(), spec, "{}", spec.kind());
    }
    let eval: CheckpointEval = serde_json::from_value(json!({ "every": 5 })).unwrap();
    assert_eq!(CheckpointEval::new(5), eval);
}
