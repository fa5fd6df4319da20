//! The OpenAPI 3 document at `/api/v1/openapi.json`, generated from the handlers' annotations and the
//! `repdiff-api` types, so it cannot drift from the code.

use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{artifacts, auth, datasets, experiments, jobs};

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("an API token from POST /api/v1/tokens"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(auth::SESSION_COOKIE))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "RepDiff API",
        description = "Representation-conditional latent diffusion for CT. Every endpoint except health, \
                       login and this document needs a session cookie or an API token. Errors are \
                       `{\"error\": {\"code\", \"message\"}}` with a stable code."
    ),
    paths(
        super::health,
        auth::login, auth::logout, auth::me, auth::list_users, auth::add_user,
        auth::list_tokens, auth::add_token, auth::revoke_token,
        jobs::job_kinds, jobs::presets, jobs::list_jobs, jobs::list_runs, jobs::submit_job, jobs::get_job, jobs::patch_job, jobs::cancel_job, jobs::retry_job,
        jobs::job_events, jobs::job_logs, jobs::job_metrics,
        artifacts::job_artifacts, artifacts::list_checkpoints, artifacts::list_samples, artifacts::get_artifact, artifacts::artifact_content,
        experiments::list_experiments, experiments::create_experiment, experiments::get_experiment, experiments::patch_experiment,
        datasets::list_datasets, datasets::create_dataset, datasets::get_dataset, datasets::patch_dataset, datasets::list_scans,
        datasets::upload_scans, datasets::split_summary, datasets::list_series, datasets::get_scan, datasets::patch_scan, datasets::scan_image, datasets::scan_dicom,
    ),
    components(schemas(repdiff_api::ErrorBody, repdiff_api::ErrorDetail, repdiff_api::JobState, repdiff_api::Role, artifacts::SampleKind)),
    modifiers(&Security),
    security(("token" = []), ("session" = [])),
    tags(
        (name = "auth", description = "users, sessions, API tokens"),
        (name = "jobs", description = "the job queue: submit, watch, cancel, retry"),
        (name = "artifacts", description = "files jobs produced"),
        (name = "experiments", description = "named groups of runs"),
        (name = "datasets", description = "datasets of CT slices: upload, browse, label"),
        (name = "meta", description = "health"),
    )
)]
pub struct ApiDoc;

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta", responses((status = 200, description = "this document")))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use repdiff_api::SubmitJob;
    use repdiff_api::jobs::*;
    use serde_json::{Value, json};
    use utoipa::OpenApi;

    /// Whether `value` is an instance of `schema` (the JSON Schema subset the document uses: `$ref`,
    /// `allOf`, `oneOf` (exactly one), `type` (one or several, `null` included), `enum`, `properties`,
    /// `required`, `additionalProperties: false`, `items`, `minimum`); the first mismatch otherwise.
    fn check(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            let name = reference.trim_start_matches("#/components/schemas/");
            return check(doc, &doc["components"]["schemas"][name], value, at);
        }
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            // The parts of a flattened struct: each sees the whole object, so none may forbid the others' keys.
            for part in all {
                check(doc, part, value, at)?;
            }
        }
        if let Some(one) = schema.get("oneOf").and_then(Value::as_array) {
            let matching = one.iter().filter(|s| check(doc, s, value, at).is_ok()).count();
            if matching != 1 {
                return Err(format!("{at}: {matching} of the {} alternatives match {value}", one.len()));
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            return Err(format!("{at}: {value} is not one of {allowed:?}"));
        }
        let types: Vec<&str> = match &schema["type"] {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let type_of = |v: &Value| match v {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        let actual = type_of(value);
        if !types.is_empty() && !types.iter().any(|t| *t == actual || (*t == "number" && actual == "integer")) {
            return Err(format!("{at}: a {actual} where the document says {types:?}"));
        }
        if let (Some(min), Some(v)) = (schema.get("minimum").and_then(Value::as_f64), value.as_f64())
            && v < min
        {
            return Err(format!("{at}: {v} is below the minimum {min}"));
        }
        if let Value::Object(members) = value {
            let properties = schema.get("properties").and_then(Value::as_object);
            for name in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str)
            {
                if !members.contains_key(name) {
                    return Err(format!("{at}: {name} is required"));
                }
            }
            for (name, member) in members {
                match properties.and_then(|p| p.get(name)) {
                    Some(property) => check(doc, property, member, &format!("{at}.{name}"))?,
                    None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                        return Err(format!("{at}: {name} is not a field the document knows"));
                    }
                    None => {}
                }
            }
        }
        if let (Value::Array(items), Some(item)) = (value, schema.get("items")) {
            for (i, v) in items.iter().enumerate() {
                check(doc, item, v, &format!("{at}.{i}"))?;
            }
        }
        Ok(())
    }

    fn submit(spec: JobSpec) -> Value {
        let body = SubmitJob {
            spec,
            experiment_id: Some(3),
            priority: 1,
            max_attempts: None,
            tags: vec!["sweep".into()],
            publish_private: false,
            depends_on: vec![1],
        };
        serde_json::to_value(body).unwrap()
    }

    /// Every kind's spec, as a client built from the API's types sends it.
    fn every_kind() -> Vec<JobSpec> {
        let toy = DataSource::Toy { n: 8, seed: 0 };
        let split = SplitSpec { downstream_site: Some(1), part: Part::Validation, seed: 0, unit: SplitUnit::Patient };
        let dataset = DataSource::Dataset { id: 4, window: Some("brain".into()), split: Some(split) };
        let latents = DataSource::Latents { key: "jobs/2/latents.safetensors".into() };
        let job = CheckpointRef::Job(1);
        let mut pretrain = PretrainParams::new(dataset.clone());
        pretrain.run.conditioning = Some(ConditioningKind::Representation);
        pretrain.run.matmul_precision = Some(MatmulPrecision::Bf16);
        pretrain.eval = Some(CheckpointEval::new(10));
        let mut classify = ClassifyParams::new(job.clone(), latents.clone());
        classify.stopping = Some(Stopping::default());
        vec![
            JobSpec::Noop(NoopParams::default()),
            JobSpec::Import(ImportParams::new(4, "scans".into())),
            JobSpec::Encode(EncodeParams::new(4, 256)),
            JobSpec::Pretrain(pretrain),
            JobSpec::Finetune(FinetuneParams::new(job.clone(), latents.clone())),
            JobSpec::Sample(SampleParams { frames: Some(4), ..SampleParams::new(job.clone()) }),
            JobSpec::Counterfactual(CounterfactualParams::new(job.clone(), toy.clone())),
            JobSpec::Classify(classify),
            JobSpec::Evaluate(EvaluateParams::new(toy.clone(), vec![ModelToEvaluate::new(job.clone())])),
            JobSpec::Probe(ProbeParams::new(Features::Dinov2, None, toy.clone(), latents)),
            JobSpec::Supervised(SupervisedParams::new(dataset, toy)),
            JobSpec::Reproduce(ReproduceParams { phantoms: Some(96), ..ReproduceParams::default() }),
        ]
    }

    #[test]
    fn the_document_shows_every_kind_and_validates_what_a_typed_client_sends() {
        let doc = serde_json::to_value(super::ApiDoc::openapi()).unwrap();
        let schema = json!({ "$ref": "#/components/schemas/SubmitJob" });
        let specs = every_kind();
        let kinds: Vec<&str> = specs.iter().map(JobSpec::kind).collect();
        assert_eq!(kinds.len(), JOB_KINDS.len());
        assert!(JOB_KINDS.iter().all(|k| kinds.contains(k)));
        for spec in specs {
            let body = submit(spec.clone());
            check(&doc, &schema, &body, "body").unwrap_or_else(|e| panic!("{}: {e}\n{body}", spec.kind()));
        }
    }

    #[test]
    fn the_document_refuses_what_the_server_refuses() {
        let doc = serde_json::to_value(super::ApiDoc::openapi()).unwrap();
        let schema = json!({ "$ref": "#/components/schemas/SubmitJob" });
        let sample = submit(JobSpec::Sample(SampleParams::new(CheckpointRef::Job(1))));
        let mut misspelt = sample.clone();
        misspelt["params"]["stpes"] = json!(10);
        let mut unknown_kind = sample.clone();
        unknown_kind["kind"] = json!("teleport");
        let mut wrong_type = sample.clone();
        wrong_type["params"]["num"] = json!("many");
        let mut wrong_source = sample;
        wrong_source["params"]["references"] = json!({ "toy": { "n": 8 }, "latents": { "key": "x" } });
        for bad in [misspelt, unknown_kind, wrong_type, wrong_source] {
            assert!(check(&doc, &schema, &bad, "body").is_err(), "{bad}");
            assert!(serde_json::from_value::<SubmitJob>(bad.clone()).is_err(), "{bad}");
        }
    }
}
