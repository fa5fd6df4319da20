//! The REST API end to end against a real PostgreSQL (one database per test), through the application's
//! router with an in-process worker: authentication and authorisation, the error shape for bad input,
//! and a pretrain → metrics → checkpoint → sample → images round trip.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::{App, TestDb, multipart, password_of, walk};
use repdiff_server::http::{self, AppState, HttpConfig};
use repdiff_server::jobs::{self, JobSettings};
use repdiff_server::storage::Storage;
use serde_json::{Value, json};
use tower::ServiceExt;

fn noop(sleep_ms: u64) -> Value {
    json!({ "kind": "noop", "params": { "sleep_ms": sleep_ms } })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_data_endpoint_needs_auth_and_users_see_only_what_they_may() {
    let app = App::new("api_auth", false).await;
    // No credentials, a wrong password, a made-up token: 401 with the error shape.
    for uri in [
        "/api/v1/jobs",
        "/api/v1/jobs/1",
        "/api/v1/experiments",
        "/api/v1/auth/me",
        "/api/v1/artifacts/1",
        "/api/v1/presets",
    ] {
        let reply = app.call("GET", uri, None, None).await;
        assert_eq!((reply.status, reply.error_code().as_str()), (StatusCode::UNAUTHORIZED, "unauthenticated"), "{uri}");
    }
    let wrong = app
        .call("POST", "/api/v1/auth/login", None, Some(json!({ "username": "ada", "password": "nope-nope-nope" })))
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let unknown = app
        .call("POST", "/api/v1/auth/login", None, Some(json!({ "username": "eve", "password": "nope-nope-nope" })))
        .await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.call("GET", "/api/v1/jobs", Some("rdt_0000"), None).await.status, StatusCode::UNAUTHORIZED);
    // Health and the OpenAPI document are public.
    assert_eq!(app.call("GET", "/api/v1/health", None, None).await.status, StatusCode::OK);
    let doc = app.call("GET", "/api/v1/openapi.json", None, None).await.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in ["/api/v1/jobs", "/api/v1/jobs/{id}/events", "/api/v1/artifacts/{id}/content", "/api/v1/auth/login"] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing from the OpenAPI document");
    }

    let (ada, bob, val, root) =
        (app.token("ada").await, app.token("bob").await, app.token("val").await, app.token("root").await);
    let me = app.call("GET", "/api/v1/auth/me", Some(&ada), None).await.json();
    assert_eq!((me["username"].as_str(), me["role"].as_str()), (Some("ada"), Some("researcher")));

    // A viewer may not run jobs or add users; a researcher may not add users.
    let reply = app.call("POST", "/api/v1/jobs", Some(&val), Some(noop(0))).await;
    assert_eq!((reply.status, reply.error_code().as_str()), (StatusCode::FORBIDDEN, "forbidden"));
    let new_user = json!({ "username": "mallory", "password": "long-enough-1", "role": "admin" });
    assert_eq!(
        app.call("POST", "/api/v1/users", Some(&ada), Some(new_user.clone())).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.call("POST", "/api/v1/users", Some(&root), Some(new_user.clone())).await.status,
        StatusCode::CREATED
    );
    assert_eq!(app.call("POST", "/api/v1/users", Some(&root), Some(new_user)).await.error_code(), "conflict");

    // Ada's private job (no experiment) is invisible to Bob and to the viewer: 404 everywhere, as if absent.
    let private = app.call("POST", "/api/v1/jobs", Some(&ada), Some(noop(0))).await;
    assert_eq!(private.status, StatusCode::CREATED);
    let id = private.json()["id"].as_i64().unwrap();
    for token in [&bob, &val] {
        for (method, uri) in [
            ("GET", format!("/api/v1/jobs/{id}")),
            ("GET", format!("/api/v1/jobs/{id}/logs")),
            ("GET", format!("/api/v1/jobs/{id}/metrics")),
            ("GET", format!("/api/v1/jobs/{id}/artifacts")),
            ("GET", format!("/api/v1/jobs/{id}/events")),
            ("POST", format!("/api/v1/jobs/{id}/cancel")),
        ] {
            let reply = app.call(method, &uri, Some(token), None).await;
            assert_eq!(
                (reply.status, reply.error_code().as_str()),
                (StatusCode::NOT_FOUND, "not_found"),
                "{method} {uri}"
            );
        }
        assert!(app.call("GET", "/api/v1/jobs", Some(token), None).await.json()["jobs"].as_array().unwrap().is_empty());
    }
    assert_eq!(app.call("GET", &format!("/api/v1/jobs/{id}"), Some(&root), None).await.status, StatusCode::OK);
    // Nor can Bob make a job wait on it (which would tell him it exists); Ada can, and the job says so.
    let mut waits = noop(0);
    waits["depends_on"] = json!([id]);
    let refused = app.call("POST", "/api/v1/jobs", Some(&bob), Some(waits.clone())).await;
    assert_eq!(refused.error_code(), "invalid_request");
    assert!(refused.json()["error"]["message"].as_str().unwrap().contains(&format!("no job {id} that you may see")));
    let after = app.call("POST", "/api/v1/jobs", Some(&ada), Some(waits)).await.json();
    assert_eq!(after["depends_on"], json!([id]));
    app.call("POST", &format!("/api/v1/jobs/{}/cancel", after["id"]), Some(&ada), None).await;
    // What the deployment refuses of a valid spec names its field too (the paper's 4-channel model on the
    // grey toy set; a window the engine cannot read).
    for (params, field) in [
        (json!({ "run": { "preset": "paper" }, "data": { "toy": { "n": 8 } } }), "data.toy"),
        (json!({ "data": { "dataset": { "id": 1, "window": "lung-ish" } } }), "data.dataset.window"),
    ] {
        let refused =
            app.call("POST", "/api/v1/jobs", Some(&ada), Some(json!({ "kind": "pretrain", "params": params }))).await;
        assert_eq!(
            (refused.error_code().as_str(), &refused.json()["error"]["field"]),
            ("invalid_params", &json!(field))
        );
    }
    // A job that reads what an unfinished job will write waits on that job by itself: sample from a
    // pre-training still queued. Bob may not (he cannot see it); cancelling the pre-training cancels it.
    let pretrain = json!({ "kind": "pretrain", "params": { "data": { "toy": { "n": 8 } } } });
    let pretrain = app.call("POST", "/api/v1/jobs", Some(&ada), Some(pretrain)).await.json();
    let sample = json!({ "kind": "sample", "params": { "checkpoint": { "job": pretrain["id"] } } });
    let refused = app.call("POST", "/api/v1/jobs", Some(&bob), Some(sample.clone())).await;
    assert_eq!(refused.error_code(), "invalid_params");
    let chained = app.call("POST", "/api/v1/jobs", Some(&ada), Some(sample)).await.json();
    assert_eq!((chained["state"].as_str(), &chained["depends_on"]), (Some("queued"), &json!([pretrain["id"]])));
    app.call("POST", &format!("/api/v1/jobs/{}/cancel", pretrain["id"]), Some(&ada), None).await;
    let chained = app.call("GET", &format!("/api/v1/jobs/{}", chained["id"]), Some(&ada), None).await.json();
    assert_eq!(chained["state"], "cancelled");
    assert_eq!(chained["error"], format!("waits on job #{}, which was cancelled", pretrain["id"]));

    // In a shared experiment everyone sees it, but only its owner (or an admin) may cancel it.
    let experiment = app
        .call("POST", "/api/v1/experiments", Some(&ada), Some(json!({ "name": "phantoms", "shared": true })))
        .await
        .json();
    let mut shared_job = noop(0);
    shared_job["experiment_id"] = experiment["id"].clone();
    let shared = app.call("POST", "/api/v1/jobs", Some(&ada), Some(shared_job)).await.json();
    let uri = format!("/api/v1/jobs/{}", shared["id"]);
    assert_eq!(app.call("GET", &uri, Some(&val), None).await.status, StatusCode::OK);
    assert_eq!(app.call("POST", &format!("{uri}/cancel"), Some(&bob), None).await.error_code(), "forbidden");
    // Making the experiment private hides its jobs from the others.
    let experiment_uri = format!("/api/v1/experiments/{}", experiment["id"]);
    assert_eq!(
        app.call("PATCH", &experiment_uri, Some(&bob), Some(json!({ "shared": false }))).await.error_code(),
        "forbidden"
    );
    app.call("PATCH", &experiment_uri, Some(&ada), Some(json!({ "shared": false }))).await;
    assert_eq!(app.call("GET", &uri, Some(&val), None).await.status, StatusCode::NOT_FOUND);
    app.call("PATCH", &experiment_uri, Some(&ada), Some(json!({ "shared": true }))).await;
    let cancelled = app.call("POST", &format!("{uri}/cancel"), Some(&ada), None).await.json();
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(app.call("POST", &format!("{uri}/cancel"), Some(&ada), None).await.error_code(), "conflict");
    let listed = app.call("GET", "/api/v1/jobs?state=cancelled", Some(&bob), None).await.json();
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1);

    // Guessing passwords from one address makes that address wait (even the right password is refused then).
    for _ in 0..5 {
        let wrong = json!({ "username": "val", "password": "guess-guess-guess" });
        assert_eq!(app.call("POST", "/api/v1/auth/login", None, Some(wrong)).await.status, StatusCode::UNAUTHORIZED);
    }
    let right = json!({ "username": "val", "password": password_of("val") });
    let reply = app.call("POST", "/api/v1/auth/login", None, Some(right)).await;
    assert_eq!((reply.status, reply.error_code().as_str()), (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"));
    // Checkpoints are listed by what one may see.
    assert!(app.call("GET", "/api/v1/checkpoints", Some(&bob), None).await.json().as_array().unwrap().is_empty());

    // A revoked token stops working.
    let tokens = app.call("GET", "/api/v1/tokens", Some(&bob), None).await.json();
    let token_id = tokens[0]["id"].as_i64().unwrap();
    assert_eq!(
        app.call("DELETE", &format!("/api/v1/tokens/{token_id}"), Some(&ada), None).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.call("DELETE", &format!("/api/v1/tokens/{token_id}"), Some(&bob), None).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.call("GET", "/api/v1/jobs", Some(&bob), None).await.status, StatusCode::UNAUTHORIZED);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_documented_error_and_the_server_keeps_serving() {
    let app = App::new("api_bad_input", false).await;
    let ada = app.token("ada").await;
    let post = |body: &str, content_type: &str| {
        Request::post("/api/v1/jobs")
            .header(header::AUTHORIZATION, format!("Bearer {ada}"))
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (post("{\"kind\": \"noop\", ", "application/json"), StatusCode::BAD_REQUEST, "invalid_json"),
        (post("{\"kind\": \"noop\"}", "text/plain"), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media"),
        (post("{\"kind\": 7}", "application/json"), StatusCode::UNPROCESSABLE_ENTITY, "invalid_params"),
        (post("{\"kind\": \"teleport\"}", "application/json"), StatusCode::UNPROCESSABLE_ENTITY, "invalid_params"),
        (
            post("{\"kind\": \"noop\", \"params\": {\"sleep\": 1}}", "application/json"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_params",
        ),
        (
            post("{\"kind\": \"pretrain\", \"params\": {\"data\": {\"toy\": {\"n\": 0}}}}", "application/json"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_params",
        ),
        (
            post(
                "{\"kind\": \"pretrain\", \"params\": {\"run\": {\"preset\": \"huge\"}, \"data\": {\"toy\": {\"n\": 8}}}}",
                "application/json",
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_params",
        ),
        // Reading another's artifact through a job's parameters is refused like a missing one.
        (
            post("{\"kind\": \"sample\", \"params\": {\"checkpoint\": {\"job\": 999}}}", "application/json"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_params",
        ),
        (
            post("{\"kind\": \"noop\", \"priority\": 1000}", "application/json"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
    ];
    for (request, status, code) in cases {
        let reply = app.send(request).await;
        assert_eq!(
            (reply.status, reply.error_code().as_str()),
            (status, code),
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    let huge = format!("{{\"kind\": \"noop\", \"params\": {{\"pad\": \"{}\"}}}}", "x".repeat(200 << 10));
    let reply = app.send(post(&huge, "application/json")).await;
    assert_eq!((reply.status, reply.error_code().as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"));
    for uri in [
        "/api/v1/jobs/424242",
        "/api/v1/jobs/abc",
        "/api/v1/artifacts/9",
        "/api/v1/experiments/3",
        "/api/v1/no-such-thing",
    ] {
        let reply = app.call("GET", uri, Some(&ada), None).await;
        assert_eq!((reply.status, reply.error_code().as_str()), (StatusCode::NOT_FOUND, "not_found"), "{uri}");
    }
    let reply = app.call("GET", "/api/v1/jobs?limit=0", Some(&ada), None).await;
    assert_eq!(reply.error_code(), "invalid_request");
    let reply = app.call("GET", "/api/v1/jobs?state=sleeping", Some(&ada), None).await;
    assert_eq!(reply.error_code(), "invalid_request");
    assert_eq!(app.call("DELETE", "/api/v1/jobs", Some(&ada), None).await.error_code(), "method_not_allowed");
    let blank = app.call("POST", "/api/v1/experiments", Some(&ada), Some(json!({ "name": "   " }))).await;
    assert_eq!((blank.status, blank.error_code().as_str()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"));
    let dataset = app.call("POST", "/api/v1/datasets", Some(&ada), Some(json!({ "name": "ct" }))).await.json();
    let long = json!({ "name": "x".repeat(201) });
    let reply = app.call("PATCH", &format!("/api/v1/datasets/{}", dataset["id"]), Some(&ada), Some(long)).await;
    assert_eq!(reply.error_code(), "invalid_request");
    assert_eq!(app.call("GET", "/api/v1/health", None, None).await.status, StatusCode::OK);

    // Submitting twice with one Idempotency-Key makes one job; the replay answers 200.
    let submit = || {
        Request::post("/api/v1/jobs")
            .header(header::AUTHORIZATION, format!("Bearer {ada}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", "run-1")
            .body(Body::from(noop(0).to_string()))
            .unwrap()
    };
    let (first, second) = (app.send(submit()).await, app.send(submit()).await);
    assert_eq!((first.status, second.status), (StatusCode::CREATED, StatusCode::OK));
    assert_eq!(first.json()["id"], second.json()["id"]);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pretrain_then_sample_through_the_api() {
    let app = App::new("api_e2e", true).await;
    let ada = app.token("ada").await;
    let mut config = repdiff_engine::config::RunConfig::preset("tiny-cpu").unwrap();
    let m = &mut config.model;
    (m.input_size, m.patch_size, m.hidden_size, m.depth, m.num_heads) = (16, 4, 32, 1, 2);
    (config.train.steps, config.train.batch_size, config.train.checkpoint_every) = (30, 8, 10);
    let submit = json!({ "kind": "pretrain", "params": { "run": { "config": config }, "data": { "toy": { "n": 32 } } },
                         "tags": [" tiny ", "toy", "tiny"] });
    let reply = app.call("POST", "/api/v1/jobs", Some(&ada), Some(submit)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&reply.body));
    let id = reply.json()["id"].as_i64().unwrap();
    assert_eq!(reply.json()["tags"], json!(["tiny", "toy"]));

    // Tags: changed by the owner, filtered on, checked.
    let tagged = app
        .call("PATCH", &format!("/api/v1/jobs/{id}"), Some(&ada), Some(json!({ "tags": ["baseline", "toy"] })))
        .await;
    assert_eq!(tagged.json()["tags"], json!(["baseline", "toy"]));
    let found = app.call("GET", "/api/v1/jobs?tag=baseline", Some(&ada), None).await.json();
    assert_eq!(found["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_i64().unwrap()).collect::<Vec<_>>(), [id]);
    let none = app.call("GET", "/api/v1/jobs?tag=tiny", Some(&ada), None).await.json();
    assert!(none["jobs"].as_array().unwrap().is_empty());
    let bad = app.call("PATCH", &format!("/api/v1/jobs/{id}"), Some(&ada), Some(json!({ "tags": ["a,b"] }))).await;
    assert_eq!(bad.error_code(), "invalid_request");

    // The presets a launch form starts from, in full, as the engine resolves them.
    let presets = app.call("GET", "/api/v1/presets", Some(&ada), None).await.json();
    let names: Vec<&str> = presets.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, repdiff_engine::config::PRESETS);
    let tiny = repdiff_engine::config::RunConfig::preset("tiny-cpu").unwrap();
    assert_eq!(presets[0]["config"]["train"]["steps"], json!(tiny.train.steps));
    assert_eq!(presets[0]["config"]["model"]["depth"], json!(tiny.model.depth));

    // The event stream follows the job to its end and then closes.
    let events = app.call("GET", &format!("/api/v1/jobs/{id}/events"), Some(&ada), None).await;
    assert_eq!(events.headers[header::CONTENT_TYPE], "text/event-stream");
    let text = String::from_utf8(events.body).unwrap();
    let last = text.lines().filter_map(|l| l.strip_prefix("data: ")).next_back().expect("at least one event");
    let job: Value = serde_json::from_str(last).unwrap();
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["progress"]["step"], 30);

    let job = app.wait_final(&ada, id, Duration::from_secs(60)).await;
    assert_eq!(job["result"]["step"], 30);
    let metrics = app.call("GET", &format!("/api/v1/jobs/{id}/metrics?name=loss"), Some(&ada), None).await.json();
    assert_eq!(metrics[0]["name"], "loss");
    assert_eq!(metrics[0]["steps"].as_array().unwrap().len(), 30);
    // The runs table: the loss's last value and its minimum, with their steps.
    let runs = app.call("GET", "/api/v1/runs?kind=pretrain", Some(&ada), None).await.json();
    let loss = runs["runs"][0]["metrics"].as_array().unwrap().iter().find(|m| m["name"] == "loss").unwrap().clone();
    let values = metrics[0]["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect::<Vec<_>>();
    let min = values.iter().cloned().fold(f64::INFINITY, f64::min);
    assert_eq!((loss["points"].as_i64(), loss["last_step"].as_i64()), (Some(30), Some(30)));
    assert_eq!((loss["last"].as_f64(), loss["min"].as_f64()), (values.last().copied(), Some(min)));
    assert_eq!(loss["min_step"].as_i64().unwrap() as usize, values.iter().position(|v| *v == min).unwrap() + 1);
    let logs = app.call("GET", &format!("/api/v1/jobs/{id}/logs"), Some(&ada), None).await.json();
    assert!(logs[0]["message"].as_str().unwrap().starts_with("attempt 1 of 3 on worker "), "{logs}");
    assert!(logs[1]["message"].as_str().unwrap().starts_with("training"), "{logs}");
    let checkpoints =
        app.call("GET", &format!("/api/v1/jobs/{id}/artifacts?kind=checkpoint"), Some(&ada), None).await.json();
    assert_eq!(checkpoints.as_array().unwrap().len(), 1);
    let content = app.call("GET", checkpoints[0]["url"].as_str().unwrap(), Some(&ada), None).await;
    assert_eq!(content.status, StatusCode::OK);
    assert_eq!(content.body.len() as i64, checkpoints[0]["size"].as_i64().unwrap());
    assert!(safetensors::SafeTensors::deserialize(&content.body).is_ok());

    let submit = json!({ "kind": "sample", "params": { "checkpoint": { "job": id }, "num": 3, "steps": 4 } });
    let reply = app.call("POST", "/api/v1/jobs", Some(&ada), Some(submit.clone())).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&reply.body));
    // Bob may not sample from Ada's private checkpoint.
    let bob = app.token("bob").await;
    assert_eq!(app.call("POST", "/api/v1/jobs", Some(&bob), Some(submit)).await.error_code(), "invalid_params");
    let sample_id = reply.json()["id"].as_i64().unwrap();
    let job = app.wait_final(&ada, sample_id, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let images = app
        .call("GET", &format!("/api/v1/jobs/{sample_id}/artifacts?kind=sample_image"), Some(&ada), None)
        .await
        .json();
    assert_eq!(images.as_array().unwrap().len(), 3);
    // The gallery's view: by source training job and checkpoint step.
    let gallery =
        app.call("GET", &format!("/api/v1/samples?from_job={id}&checkpoint_step=30"), Some(&ada), None).await.json();
    assert_eq!(gallery, images);
    let none =
        app.call("GET", &format!("/api/v1/samples?from_job={id}&checkpoint_step=10"), Some(&ada), None).await.json();
    assert!(none.as_array().unwrap().is_empty());
    assert!(app.call("GET", "/api/v1/samples", Some(&bob), None).await.json().as_array().unwrap().is_empty());
    for artifact in images.as_array().unwrap() {
        let png = app.call("GET", artifact["url"].as_str().unwrap(), Some(&ada), None).await;
        assert_eq!(png.headers[header::CONTENT_TYPE], "image/png");
        assert_eq!(image::load_from_memory(&png.body).unwrap().width(), 16);
        assert_eq!(
            app.call("GET", artifact["url"].as_str().unwrap(), Some(&bob), None).await.status,
            StatusCode::NOT_FOUND
        );
    }
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_training_run_measures_its_checkpoints_as_it_trains() {
    let app = App::new("api_ckpt_eval", true).await;
    let ada = app.token("ada").await;
    let mut config = repdiff_engine::config::RunConfig::preset("tiny-cpu").unwrap();
    let m = &mut config.model;
    (m.input_size, m.patch_size, m.hidden_size, m.depth, m.num_heads) = (16, 4, 32, 1, 2);
    (config.train.steps, config.train.batch_size, config.train.checkpoint_every) = (25, 8, 100);
    let params = |eval: Value| {
        json!({ "kind": "pretrain", "params": {
            "run": { "config": config, "conditioning": "representation" }, "data": { "toy": { "n": 16 } }, "eval": eval } })
    };
    for (bad, says) in [
        (json!({ "every": 0 }), "eval.every"),
        (json!({ "every": 10, "num": 3 }), "eval.num"),
        (json!({ "every": 10, "extractor": "pretrained" }), "pt_inception"),
        (json!({ "every": 10, "sampler": "euler" }), "unknown variant"),
    ] {
        let reply = app.call("POST", "/api/v1/jobs", Some(&ada), Some(params(bad))).await;
        assert_eq!(reply.error_code(), "invalid_params");
        assert!(String::from_utf8_lossy(&reply.body).contains(says), "{}", String::from_utf8_lossy(&reply.body));
    }

    // Measured at step 20 and at the last step, 25, though checkpoints are due only every 100.
    let eval = json!({ "every": 20, "num": 8, "max_real": 12, "steps": 4, "extractor": "random" });
    let reply = app.call("POST", "/api/v1/jobs", Some(&ada), Some(params(eval))).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&reply.body));
    let id = reply.json()["id"].as_i64().unwrap();
    let job = app.wait_final(&ada, id, Duration::from_secs(120)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["eval"]["real"], 12);
    assert_eq!(job["result"]["eval"]["extractor"], "random-inception-v3-seed0");
    assert_eq!(job["result"]["eval"]["pretrained"], false);
    let metrics = app.call("GET", &format!("/api/v1/jobs/{id}/metrics"), Some(&ada), None).await.json();
    let series = |name: &str| metrics.as_array().unwrap().iter().find(|m| m["name"] == name).cloned();
    // A random network's distances are never called FID.
    assert!(series("fid").is_none() && series("is").is_none());
    for name in ["fd_random", "sfd_random", "score_random", "precision", "recall", "density", "coverage"] {
        let s = series(name).unwrap_or_else(|| panic!("no {name} in {metrics}"));
        assert_eq!(s["steps"], json!([20, 25]), "{name}");
        let values: Vec<f64> = s["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert!(values.iter().all(|v| v.is_finite() && *v >= 0.0), "{name}: {values:?}");
    }
    let fd: Vec<f64> =
        series("fd_random").unwrap()["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(fd.iter().all(|v| *v > 0.0), "samples of a 25-step model are not the training images: {fd:?}");
    let logs = app.call("GET", &format!("/api/v1/jobs/{id}/logs"), Some(&ada), None).await.json();
    assert!(
        logs.as_array()
            .unwrap()
            .iter()
            .any(|l| l["message"].as_str().unwrap().starts_with("step 25, 8 samples against 12 training images")),
        "{logs}"
    );
    app.finish().await;
}

/// A job of any kind from the command line (`repdiff run SPEC.json`): the API's body, the API's checks,
/// the same task, the same result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_from_the_command_line_as_through_the_api() {
    let app = App::new("api_cli_run", true).await;
    let ada = app.token("ada").await;
    let part = |part: &str| {
        json!({ "phantoms": { "num": 60, "downstream": 150, "size": 32,
                              "split": { "downstream_site": 1, "part": part, "seed": 0 } } })
    };
    let job = json!({ "kind": "supervised", "params": {
        "train": part("train"), "validation": part("validation"), "test": part("test"),
        "architecture": "tiny", "epochs": 2, "size": 32 } });
    let reply = app.call("POST", "/api/v1/jobs", Some(&ada), Some(job.clone())).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&reply.body));
    let through_api = app.wait_final(&ada, reply.json()["id"].as_i64().unwrap(), Duration::from_secs(120)).await;
    assert_eq!(through_api["state"], "succeeded", "{through_api}");

    let (spec, data, out) = (app.dir.join("job.json"), app.dir.join("cli-data"), app.dir.join("cli-out"));
    std::fs::write(&spec, job.to_string()).unwrap();
    let run = |spec: PathBuf, out: Option<PathBuf>| {
        let (data, weights) = (data.clone(), app.dir.join("model-weights"));
        tokio::task::spawn_blocking(move || {
            let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_repdiff"));
            command.arg("run").arg(spec).arg("--data-dir").arg(data).arg("--weights-dir").arg(weights);
            if let Some(out) = out {
                command.arg("--out").arg(out);
            }
            let output = command.output().unwrap();
            let printed =
                format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
            (output.status.success(), printed)
        })
    };
    let (ok, printed) = run(spec.clone(), Some(out.clone())).await.unwrap();
    assert!(ok, "{printed}");
    assert!(printed.contains("[supervised] best validation epoch"), "the job's log lines: {printed}");
    let from_cli: Value = serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
    assert_eq!(from_cli, through_api["result"]);
    // The same spec again: the job is found, not run twice.
    let (ok, printed) = run(spec, None).await.unwrap();
    assert!(ok && printed.contains("submitted before with this spec, is succeeded"), "{printed}");
    // A spec the API refuses is refused the same way, naming the field.
    let bad = app.dir.join("bad.json");
    let mut wrong = job.clone();
    wrong["params"]["epochs"] = json!(0);
    std::fs::write(&bad, wrong.to_string()).unwrap();
    let reply = app.call("POST", "/api/v1/jobs", Some(&ada), Some(wrong)).await;
    let message = reply.json()["error"]["message"].as_str().unwrap().to_string();
    let (ok, printed) = run(bad, None).await.unwrap();
    assert!(!ok && printed.contains(&message), "{message} / {printed}");
    app.finish().await;
}

/// The whole paper pipeline as a graph of jobs, on phantoms, with every stage cut to a few steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_paper_pipeline_runs_as_a_graph_of_jobs_with_its_tables_as_the_result() {
    let app = App::new("api_reproduce", true).await;
    let ada = app.token("ada").await;
    let bad = json!({ "kind": "reproduce", "params": { "preset": "tiny-cpu", "draws": 0 } });
    let reply = app.call("POST", "/api/v1/jobs", Some(&ada), Some(bad)).await;
    assert_eq!(reply.error_code(), "invalid_params");
    // The field at fault is named, for a form to mark it.
    assert_eq!(reply.json()["error"]["field"], "draws");
    assert!(String::from_utf8_lossy(&reply.body).contains("draws: is 1 to 4096, got 0"));
    // A split with no downstream slices: refused before anything is queued.
    let nowhere = json!({ "kind": "reproduce", "params": { "phantoms": 96, "downstream_site": 13 } });
    let reply = app.call("POST", "/api/v1/jobs", Some(&ada), Some(nowhere)).await;
    assert_eq!(reply.json()["error"]["field"], "downstream_site", "{}", String::from_utf8_lossy(&reply.body));
    assert!(String::from_utf8_lossy(&reply.body).contains("no slice comes from the downstream site 13"));
    let queued = app.call("GET", "/api/v1/jobs", Some(&ada), None).await.json();
    assert_eq!(queued["jobs"].as_array().unwrap().len(), 0, "{queued}");

    let params = json!({ "phantoms": 96, "pretrain_steps": 4, "finetune_steps": 2, "draws": 2,
                         "supervised_epochs": 1, "eval_samples": 10, "class_samples": 2, "matmul_precision": "bf16" });
    let submit = json!({ "kind": "reproduce", "params": params.clone(), "tags": ["paper"] });
    let reply = app.call("POST", "/api/v1/jobs", Some(&ada), Some(submit)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&reply.body));
    let id = reply.json()["id"].as_i64().unwrap();
    // Its stages are ordinary jobs of their kinds, each waiting on the jobs whose outputs it reads.
    let page = app.call("GET", &format!("/api/v1/jobs?pipeline={id}&limit=200"), Some(&ada), None).await.json();
    let stages = page["jobs"].as_array().unwrap().clone();
    let by_name = |name: &str| -> Value {
        stages.iter().find(|j| j["stage"] == format!("seed-0/{name}")).unwrap_or_else(|| panic!("no {name}")).clone()
    };
    assert_eq!(stages.len(), 19, "{page}");
    assert!(stages.iter().all(|j| j["pipeline_id"] == id && j["tags"] == json!(["paper"])), "{page}");
    let pretrain = by_name("pretrain-rep");
    assert_eq!(pretrain["kind"], "pretrain");
    assert_eq!(pretrain["params"]["run"]["conditioning"], "representation");
    assert_eq!(pretrain["params"]["data"]["phantoms"]["split"]["part"], "pretrain");
    let finetune = by_name("finetune-rep");
    assert_eq!(finetune["params"]["from"], json!({ "job": pretrain["id"] }));
    assert_eq!(finetune["depends_on"], json!([pretrain["id"]]));
    let judged = by_name("class-fidelity-rep-g3");
    assert_eq!(judged["params"]["timestep_of"], by_name("classify-uncond")["id"]);
    // The training stages, and only they, run with the chosen matrix products.
    let mut with_bf16: Vec<String> = stages
        .iter()
        .filter(|j| j["params"].to_string().contains("bf16"))
        .map(|j| j["stage"].as_str().unwrap().to_string())
        .collect();
    with_bf16.sort();
    let expected =
        ["finetune-rep", "finetune-uncond", "pretrain-rep", "pretrain-uncond"].map(|s| format!("seed-0/{s}"));
    assert_eq!(with_bf16, expected);
    let pipeline = app.call("GET", &format!("/api/v1/jobs/{id}"), Some(&ada), None).await.json();
    let mut waits: Vec<i64> = stages.iter().map(|j| j["id"].as_i64().unwrap()).collect();
    waits.sort();
    assert_eq!(pipeline["depends_on"], json!(waits));

    let job = app.wait_final(&ada, id, Duration::from_secs(300)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let result = &job["result"];
    let methods: Vec<&str> =
        result["table6"].as_array().unwrap().iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(methods.len(), 5, "{methods:?}");
    assert!(methods[1].contains("representation-conditional"), "{methods:?}");
    assert!(result["table6"][1]["intervals"]["f1"][1].as_f64().is_some(), "{result}");
    assert_eq!(result["table5"].as_array().unwrap().len(), 2, "{result}");
    assert_eq!(result["class_fidelity"].as_array().unwrap().len(), 4, "{result}");
    assert!(result["markdown"].as_str().unwrap().starts_with("# Table 6 analogue"), "{result}");
    // The result is the documented type the run page shows, made of the stages' own results.
    let report: repdiff_api::ReproduceReport = serde_json::from_value(result.clone()).unwrap();
    assert_eq!(report.table6[0].chosen_t, report.class_fidelity[0].t.into());
    let classified =
        app.call("GET", &format!("/api/v1/jobs/{}", by_name("classify-rep")["id"]), Some(&ada), None).await;
    let classified: repdiff_api::ClassifyReport = serde_json::from_value(classified.json()["result"].clone()).unwrap();
    assert_eq!(report.table6[1].metrics, classified.test.unwrap().metrics);
    assert!(report.table5.as_ref().unwrap().iter().all(|r| r.generated == 10 && r.fid > 0.0));
    assert_eq!(report.timings_s.len(), 19);
    // The report and the counterfactual figure on the pipeline's page; each stage has its own artifacts.
    let artifacts = app.call("GET", &format!("/api/v1/jobs/{id}/artifacts"), Some(&ada), None).await.json();
    let kinds = |kind: &str| -> Vec<String> {
        artifacts
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["kind"] == kind)
            .map(|a| a["key"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(kinds("report"), [format!("jobs/{id}/table6.md")]);
    assert_eq!(kinds("figure"), [format!("jobs/{id}/counterfactuals.png")]);
    let checkpoints =
        app.call("GET", &format!("/api/v1/jobs/{}/artifacts?kind=checkpoint", pretrain["id"]), Some(&ada), None).await;
    assert_eq!(checkpoints.json().as_array().unwrap().len(), 1);

    // The command line runs the same graph for the same parameters, on a queue of its own, one stage at a
    // time as this app's worker does, and reports the same tables.
    let spec = app.dir.join("reproduce.json");
    std::fs::write(&spec, params.to_string()).unwrap();
    let (weights, out) = (app.dir.join("model-weights"), app.dir.join("cli"));
    let cli = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_repdiff"))
            .args(["reproduce", "--jobs", "1", "--spec"])
            .arg(spec)
            .arg("--weights-dir")
            .arg(weights)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let printed = format!("{}{}", String::from_utf8_lossy(&cli.stdout), String::from_utf8_lossy(&cli.stderr));
    assert!(cli.status.success(), "{printed}");
    let from_cli: repdiff_api::ReproduceReport =
        serde_json::from_str(&std::fs::read_to_string(app.dir.join("cli/table6.json")).unwrap()).unwrap();
    assert_eq!(from_cli.table6, report.table6);
    assert_eq!(from_cli.class_fidelity, report.class_fidelity);
    assert_eq!(from_cli.table5, report.table5);
    assert_eq!(
        (from_cli.preset.as_str(), from_cli.seed, from_cli.pretrain_steps, from_cli.finetune_steps),
        (report.preset.as_str(), report.seed, report.pretrain_steps, report.finetune_steps)
    );
    let steps = |r: &repdiff_api::ReproduceReport| r.timings_s.iter().map(|t| t.step.clone()).collect::<Vec<_>>();
    assert_eq!(steps(&from_cli), steps(&report));
    app.finish().await;
}

/// The pipeline on a team's own data: DICOM series uploaded to a dataset, their sites and markers with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_paper_pipeline_runs_on_an_uploaded_dataset() {
    let app = App::new("api_reproduce_dataset", true).await;
    let (ada, bob) = (app.token("ada").await, app.token("bob").await);
    let scans = app.dir.join("phantoms");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_repdiff"))
        .args(["phantoms", "--format", "dicom", "-n", "60", "--downstream", "200", "--size", "32", "--seed", "3"])
        .arg("--out")
        .arg(&scans)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dataset = app.call("POST", "/api/v1/datasets", Some(&ada), Some(json!({ "name": "ct" }))).await;
    let id = dataset.json()["id"].as_i64().unwrap();
    let names: Vec<String> = (0..260).map(|i| format!("phantom_{i:05}.dcm")).collect();
    let mut parts = vec![("labels", None, std::fs::read(scans.join("labels.csv")).unwrap())];
    parts.extend(names.iter().map(|n| ("files", Some(n.as_str()), std::fs::read(scans.join(n)).unwrap())));
    let reply = app.upload(&ada, id, &parts).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.json()["accepted"].as_array().unwrap().len(), 260);

    let params = json!({ "dataset": id, "pretrain_steps": 2, "finetune_steps": 2, "draws": 2,
                         "supervised_epochs": 1, "eval_samples": 0, "class_samples": 0 });
    // Another researcher may not run it on Ada's private dataset.
    let submit = json!({ "kind": "reproduce", "params": params });
    let refused = app.call("POST", "/api/v1/jobs", Some(&bob), Some(submit.clone())).await;
    assert_eq!(refused.error_code(), "invalid_params");
    assert!(String::from_utf8_lossy(&refused.body).contains(&format!("no dataset {id} that you may read")));
    let reply = app.call("POST", "/api/v1/jobs", Some(&ada), Some(submit)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&reply.body));
    let job = app.wait_final(&ada, reply.json()["id"].as_i64().unwrap(), Duration::from_secs(300)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let report: repdiff_api::ReproduceReport = serde_json::from_value(job["result"].clone()).unwrap();
    assert_eq!(report.table6.len(), 5);
    assert!(report.table5.is_none() && report.class_fidelity.is_empty());
    // The split came from the uploaded scans' sites: site 1's 50 patients (200 slices) are the downstream
    // task, split by patient: the test part is whole patients of four slices, about a tenth of them (the
    // floor of each label stratum's share goes to train and validation, the rest to test).
    let test: usize = report.table6[0].metrics.confusion.iter().flatten().sum();
    assert!(test.is_multiple_of(4) && (16..=40).contains(&test), "whole patients, about a tenth of site 1's: {test}");
    assert!(report.markdown.contains("split by patient: no patient has slices in two parts"), "{}", report.markdown);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn representation_pretraining_then_finetune_through_the_api() {
    let app = App::new("api_rep", true).await;
    let ada = app.token("ada").await;
    let mut config = repdiff_engine::config::RunConfig::preset("tiny-cpu").unwrap();
    let m = &mut config.model;
    (m.input_size, m.patch_size, m.hidden_size, m.depth, m.num_heads) = (16, 4, 32, 1, 2);
    (config.train.steps, config.train.batch_size, config.train.checkpoint_every) = (6, 8, 3);
    let toy = json!({ "toy": { "n": 16 } });
    let submit = json!({ "kind": "pretrain", "params": {
        "run": { "config": config, "conditioning": "representation" }, "data": toy } });
    let pre = app.call("POST", "/api/v1/jobs", Some(&ada), Some(submit)).await.json()["id"].as_i64().unwrap();
    let job = app.wait_final(&ada, pre, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["config"]["model"]["conditioning"]["kind"], "representation");

    // Sampling a representation model needs references; with them it draws variations.
    let sample = |refs: Option<Value>| {
        let mut params = json!({ "checkpoint": { "job": pre }, "num": 2, "steps": 3 });
        if let Some(r) = refs {
            params["references"] = r;
        }
        json!({ "kind": "sample", "params": params })
    };
    let id = app.call("POST", "/api/v1/jobs", Some(&ada), Some(sample(None))).await.json()["id"].as_i64().unwrap();
    let job = app.wait_final(&ada, id, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "failed");
    assert!(job["error"].as_str().unwrap().contains("references"), "{job}");
    let id = app.call("POST", "/api/v1/jobs", Some(&ada), Some(sample(Some(toy.clone())))).await.json()["id"]
        .as_i64()
        .unwrap();
    assert_eq!(app.wait_final(&ada, id, Duration::from_secs(60)).await["state"], "succeeded");

    // Fine-tune: bad parameters are refused before queueing; the transfer is reported and kept.
    let bad = json!({ "kind": "finetune", "params": { "from": { "job": pre }, "data": toy, "label_dropout": 1.5 } });
    assert_eq!(app.call("POST", "/api/v1/jobs", Some(&ada), Some(bad)).await.error_code(), "invalid_params");
    let submit =
        json!({ "kind": "finetune", "params": { "from": { "job": pre }, "data": toy, "run": { "steps": 4 } } });
    let ft = app.call("POST", "/api/v1/jobs", Some(&ada), Some(submit)).await.json()["id"].as_i64().unwrap();
    let job = app.wait_final(&ada, ft, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["step"], 4);
    // Depth 1: 1 encoder block (12) + patch embedding and norm (4), the map (4), one merge (2).
    assert_eq!(job["result"]["transfer"], json!({ "loaded": 19, "reshaped": 1, "dropped": 22, "new": 1 }));
    assert_eq!(job["result"]["config"]["model"]["conditioning"]["kind"], "class");
    let reports = app.call("GET", &format!("/api/v1/jobs/{ft}/artifacts?kind=report"), Some(&ada), None).await.json();
    let text = app.call("GET", reports[0]["url"].as_str().unwrap(), Some(&ada), None).await;
    assert!(String::from_utf8_lossy(&text.body).contains("reshaped  x_embedder.proj.weight"));
    // The zero-shot classifier on the fine-tuned model: a sweep on validation, the chosen t on test, with
    // sequential stopping measured against the fixed budget. A stopping rule that cannot hold is refused.
    let classify = |stopping: Value| {
        json!({ "kind": "classify", "params": { "checkpoint": { "job": ft }, "validation": { "toy": { "n": 8 } },
            "test": { "toy": { "n": 6, "seed": 3 } }, "timesteps": [100, 500], "draws": 4,
            "stopping": stopping, "measure_agreement": true } })
    };
    let bad = classify(json!({ "alpha": 0 }));
    assert_eq!(app.call("POST", "/api/v1/jobs", Some(&ada), Some(bad)).await.error_code(), "invalid_params");
    let submit = classify(json!({ "min_draws": 2 }));
    let id = app.call("POST", "/api/v1/jobs", Some(&ada), Some(submit)).await.json()["id"].as_i64().unwrap();
    let job = app.wait_final(&ada, id, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let report: repdiff_api::ClassifyReport = serde_json::from_value(job["result"].clone()).unwrap();
    assert!([100, 500].contains(&report.chosen_t));
    assert_eq!(report.validation.iter().map(|r| r.t).collect::<Vec<_>>(), [100, 500]);
    let test = report.test.unwrap();
    assert_eq!(test.t, report.chosen_t);
    assert_eq!(test.metrics.confusion.iter().flatten().sum::<usize>(), 6);
    assert_eq!(test.predicted.len(), 6);
    assert!(test.draws.iter().all(|d| [2, 4].contains(d)), "draws stop at a look: {:?}", test.draws);
    let forwards = test.draws.iter().sum::<usize>() as f64 * 2.0 / 6.0;
    assert!((test.forwards_per_image - forwards).abs() < 1e-9);
    let [lo, hi] = test.intervals.unwrap().accuracy;
    assert!(lo <= test.metrics.accuracy && test.metrics.accuracy <= hi);
    let agreement = test.agreement.unwrap();
    assert_eq!(agreement.fixed_draws, 4);
    assert!((agreement.forwards_fraction - forwards / 8.0).abs() < 1e-9);
    // Both rules at four error rates replayed on the same draws; the default rule at the default rate is
    // the run itself.
    assert_eq!(agreement.alternatives.len(), 8);
    let same = agreement.alternatives.iter().find(|p| p.rule == "predictive" && p.alpha == 0.01).unwrap();
    assert_eq!((same.agreement, same.forwards_fraction), (agreement.agreement, agreement.forwards_fraction));
    assert_eq!(agreement.alternatives.iter().filter(|p| p.rule == "confidence").count(), 4);
    let f1 = app.call("GET", &format!("/api/v1/jobs/{id}/metrics?name=val_f1"), Some(&ada), None).await.json();
    assert_eq!(f1[0]["steps"], json!([100, 500]), "the sweep is charted over t");
    // A model without classes cannot classify.
    let submit = json!({ "kind": "classify", "params": { "checkpoint": { "job": pre }, "validation": toy, "timesteps": [100], "draws": 1 } });
    let id = app.call("POST", "/api/v1/jobs", Some(&ada), Some(submit)).await.json()["id"].as_i64().unwrap();
    let job = app.wait_final(&ada, id, Duration::from_secs(60)).await;
    assert!(job["state"] == "failed" && job["error"].as_str().unwrap().contains("class-conditional"), "{job}");

    // The fine-tuned model samples both classes, here with their trajectories.
    let submit = json!({ "kind": "sample", "params": { "checkpoint": { "job": ft }, "num": 2, "classes": [0, 1],
        "steps": 3, "frames": 3 } });
    let id = app.call("POST", "/api/v1/jobs", Some(&ada), Some(submit)).await.json()["id"].as_i64().unwrap();
    let job = app.wait_final(&ada, id, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let traj = app.call("GET", &format!("/api/v1/jobs/{id}/artifacts?kind=trajectory"), Some(&ada), None).await.json();
    assert_eq!(traj[0]["meta"]["timesteps"], json!([668, 334, 0]), "{traj}");

    // The linear probe on the pre-trained encoder; a model without one is refused when it runs.
    let probe = |checkpoint: i64| {
        json!({ "kind": "probe", "params": { "checkpoint": { "job": checkpoint }, "train": { "toy": { "n": 12 } },
            "validation": { "toy": { "n": 8, "seed": 1 } }, "test": { "toy": { "n": 8, "seed": 2 } } } })
    };
    let id = app.call("POST", "/api/v1/jobs", Some(&ada), Some(probe(pre))).await.json()["id"].as_i64().unwrap();
    let job = app.wait_final(&ada, id, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(job["result"]["lambda"].as_f64().unwrap() > 0.0);
    assert_eq!(job["result"]["test"]["predicted"].as_array().unwrap().len(), 8);
    assert!(job["result"]["test"]["intervals"]["f1"][1].as_f64().is_some(), "{job}");
    let id = app.call("POST", "/api/v1/jobs", Some(&ada), Some(probe(ft))).await.json()["id"].as_i64().unwrap();
    let job = app.wait_final(&ada, id, Duration::from_secs(60)).await;
    assert!(job["state"] == "failed" && job["error"].as_str().unwrap().contains("representation encoder"), "{job}");

    // The probe on DINOv2's features: refused until the server has its weights (stand-in random ones here).
    let dino = |params: Value| {
        let mut p = json!({ "features": "dinov2", "dino_size": 28, "train": { "toy": { "n": 12 } },
            "validation": { "toy": { "n": 8, "seed": 1 } }, "test": { "toy": { "n": 8, "seed": 2 } } });
        p.as_object_mut().unwrap().extend(params.as_object().unwrap().clone());
        json!({ "kind": "probe", "params": p })
    };
    let refused = app.call("POST", "/api/v1/jobs", Some(&ada), Some(dino(json!({})))).await;
    assert_eq!(refused.error_code(), "invalid_params");
    assert!(String::from_utf8_lossy(&refused.body).contains("dinov2_vits14.safetensors"));
    repdiff_engine::dino::write_random_weights(&app.dir.join("model-weights"), 1).unwrap();
    for (bad, says) in
        [(json!({ "dino_size": 30 }), "multiple of 14"), (json!({ "checkpoint": { "job": pre } }), "no checkpoint")]
    {
        let refused = app.call("POST", "/api/v1/jobs", Some(&ada), Some(dino(bad))).await;
        assert!(String::from_utf8_lossy(&refused.body).contains(says), "{}", String::from_utf8_lossy(&refused.body));
    }
    let id = app.call("POST", "/api/v1/jobs", Some(&ada), Some(dino(json!({})))).await.json()["id"].as_i64().unwrap();
    let job = app.wait_final(&ada, id, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["features"], "dinov2-vits14-28");
    assert_eq!(job["result"]["test"]["predicted"].as_array().unwrap().len(), 8);

    // The supervised baseline: a tiny ViT from scratch, its epochs charted, the best one kept for test.
    let supervised = |architecture: &str| {
        json!({ "kind": "supervised", "params": { "train": { "toy": { "n": 16 } }, "validation": { "toy": { "n": 8, "seed": 1 } },
            "test": { "toy": { "n": 8, "seed": 2 } }, "architecture": architecture, "patch": 4, "size": 16, "epochs": 3 } })
    };
    let refused = app.call("POST", "/api/v1/jobs", Some(&ada), Some(supervised("resnet-9000"))).await;
    assert_eq!(refused.error_code(), "invalid_params");
    let id =
        app.call("POST", "/api/v1/jobs", Some(&ada), Some(supervised("tiny"))).await.json()["id"].as_i64().unwrap();
    let job = app.wait_final(&ada, id, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let report: repdiff_api::SupervisedReport = serde_json::from_value(job["result"].clone()).unwrap();
    assert!((1..=3).contains(&report.best_epoch) && report.architecture.starts_with("a ViT (depth 4"), "{report:?}");
    assert_eq!(report.test.unwrap().predicted.len(), 8);
    let f1 = app.call("GET", &format!("/api/v1/jobs/{id}/metrics?name=val_f1"), Some(&ada), None).await.json();
    assert_eq!(f1[0]["steps"], json!([1, 2, 3]), "validation F1 per epoch: {f1}");

    // Counterfactuals of toy scans under both classes; a model without classes has none.
    let counterfactual = |checkpoint: i64| {
        json!({ "kind": "counterfactual", "params": { "checkpoint": { "job": checkpoint }, "data": toy, "num": 3,
            "t": 300, "steps": 10 } })
    };
    let id =
        app.call("POST", "/api/v1/jobs", Some(&ada), Some(counterfactual(ft))).await.json()["id"].as_i64().unwrap();
    let job = app.wait_final(&ada, id, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["t"], 300);
    assert_eq!(job["result"]["mean_abs_difference"].as_array().unwrap().len(), 3);
    let figures = app.call("GET", &format!("/api/v1/jobs/{id}/artifacts?kind=figure"), Some(&ada), None).await.json();
    assert_eq!(figures.as_array().unwrap().len(), 3);
    let grid = app.call("GET", &format!("/api/v1/jobs/{id}/artifacts?kind=grid"), Some(&ada), None).await.json();
    assert_eq!(grid[0]["key"], format!("jobs/{id}/counterfactuals.png"));
    // The gallery finds them by the training run they came from, not among its samples.
    let rows =
        app.call("GET", &format!("/api/v1/samples?from_job={ft}&kind=counterfactual"), Some(&ada), None).await.json();
    assert_eq!(rows.as_array().unwrap().iter().map(|r| r["job_id"].as_i64().unwrap()).collect::<Vec<_>>(), [id; 3]);
    assert_eq!((rows[0]["meta"]["t"].as_i64(), rows[0]["meta"]["from_job"].as_i64()), (Some(300), Some(ft)));
    let samples = app.call("GET", &format!("/api/v1/samples?job={id}"), Some(&ada), None).await.json();
    assert!(samples.as_array().unwrap().is_empty(), "counterfactual rows are not samples");
    let unknown = app.call("GET", "/api/v1/samples?kind=figures", Some(&ada), None).await;
    assert_eq!(unknown.error_code(), "invalid_request");
    let id =
        app.call("POST", "/api/v1/jobs", Some(&ada), Some(counterfactual(pre))).await.json()["id"].as_i64().unwrap();
    let job = app.wait_final(&ada, id, Duration::from_secs(60)).await;
    assert!(job["state"] == "failed" && job["error"].as_str().unwrap().contains("class-conditional"), "{job}");

    // Generation metrics of both models against toy scans (the representation model varies them), with
    // the random extractor (no pretrained weights here), labelled as such.
    let evaluate = |num: usize| {
        json!({ "kind": "evaluate", "params": { "real": { "toy": { "n": 12, "seed": 5 } },
            "models": [{ "checkpoint": { "job": ft }, "name": "fine-tuned" }, { "checkpoint": { "job": pre } }],
            "num": num, "steps": 3, "histogram": 12, "max_real": 9 } })
    };
    let refused = app.call("POST", "/api/v1/jobs", Some(&ada), Some(evaluate(5))).await;
    assert_eq!(refused.error_code(), "invalid_params");
    let id = app.call("POST", "/api/v1/jobs", Some(&ada), Some(evaluate(10))).await.json()["id"].as_i64().unwrap();
    let job = app.wait_final(&ada, id, Duration::from_secs(120)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let report: repdiff_api::EvaluateReport = serde_json::from_value(job["result"].clone()).unwrap();
    assert!(!report.pretrained && report.extractor == "random-inception-v3-seed0", "{report:?}");
    assert_eq!(report.real, 9, "at most max_real of the 12 toy scans");
    assert_eq!(
        report.results.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["fine-tuned", &format!("#{pre} representation-conditional")],
        "an unnamed model is named by its run and kind, not its storage key"
    );
    for r in &report.results {
        assert_eq!(r.generated, 10);
        assert!(r.fid.is_finite() && r.fid > 0.0 && (0.0..=1.0).contains(&r.precision), "{r:?}");
    }
    let histogram = report.histogram.unwrap();
    assert_eq!(histogram.sets.iter().map(|s| s.counts.iter().sum::<u32>()).collect::<Vec<_>>(), [9, 10, 10]);
    app.finish().await;
}

/// Real scans are studies of patients: phantom patients uploaded as DICOM series (four slices each, with
/// made-up identifying data) come back grouped into series under pseudonyms, and the default split keeps
/// every patient in one part, stratified by the patients' labels; the per-slice split is there by name and
/// says what it leaks.
#[tokio::test]
async fn patients_upload_as_series_and_a_split_keeps_each_patient_in_one_part() {
    let app = App::new("api_patients", false).await;
    let ada = app.token("ada").await;
    let scans = app.dir.join("phantoms");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_repdiff"))
        .args([
            "phantoms",
            "--format",
            "dicom",
            "-n",
            "0",
            "--downstream",
            "200",
            "--size",
            "32",
            "--seed",
            "3",
            "--out",
        ])
        .arg(&scans)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = app.call("POST", "/api/v1/datasets", Some(&ada), Some(json!({ "name": "patients" }))).await.json()["id"]
        .as_i64()
        .unwrap();
    let mut parts = vec![("labels", None, std::fs::read(scans.join("labels.csv")).unwrap())];
    let names: Vec<String> = (0..200).map(|i| format!("phantom_{i:05}.dcm")).collect();
    for name in &names {
        parts.push(("files", Some(name.as_str()), std::fs::read(scans.join(name)).unwrap()));
    }
    let reply = app.upload(&ada, id, &parts).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.json()["accepted"].as_array().unwrap().len(), 200);

    // 50 patients, one series each, under pseudonyms; each series' slices in instance order; nothing of the
    // made-up identifying data in any reply, stored object or row.
    let dataset = app.call("GET", &format!("/api/v1/datasets/{id}"), Some(&ada), None).await.json();
    assert_eq!((dataset["patients"].as_i64(), dataset["series"].as_i64()), (Some(50), Some(50)), "{dataset}");
    let listed = app.call("GET", &format!("/api/v1/datasets/{id}/scans?limit=1000"), Some(&ada), None).await;
    let series = app.call("GET", &format!("/api/v1/datasets/{id}/series"), Some(&ada), None).await;
    let split_reply =
        app.call("GET", &format!("/api/v1/datasets/{id}/split?downstream_site=1"), Some(&ada), None).await;
    let stored: Vec<Vec<u8>> = walk(&app.dir.join("store")).iter().map(|p| std::fs::read(p).unwrap()).collect();
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT row_to_json(s)::text FROM scans s").fetch_all(&app.db.pool).await.unwrap();
    for needle in ["PHANTOM^", "PH-0003-", "Phantom site", "20260101"] {
        let found = |bytes: &[u8]| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
        for (what, bytes) in [("scans", &listed.body), ("series", &series.body), ("split", &split_reply.body)] {
            assert!(!found(bytes), "{needle:?} in GET {what}");
        }
        assert!(!stored.iter().any(|b| found(b)), "{needle:?} stored");
        assert!(!rows.iter().any(|r| r.contains(needle)), "{needle:?} in the scans table");
    }
    let listed = listed.json();
    let scan_by_id: std::collections::HashMap<i64, &Value> =
        listed.as_array().unwrap().iter().map(|s| (s["id"].as_i64().unwrap(), s)).collect();
    let series = series.json();
    assert_eq!(series.as_array().unwrap().len(), 50);
    for s in series.as_array().unwrap() {
        let ids: Vec<i64> = s["scan_ids"].as_array().unwrap().iter().map(|i| i.as_i64().unwrap()).collect();
        assert_eq!((s["slices"].as_i64(), ids.len()), (Some(4), 4), "{s}");
        let instances: Vec<i64> = ids.iter().map(|i| scan_by_id[i]["instance"].as_i64().unwrap()).collect();
        assert_eq!(instances, vec![1, 2, 3, 4], "{s}");
        let positions: Vec<f64> = ids.iter().map(|i| scan_by_id[i]["position_mm"].as_f64().unwrap()).collect();
        assert_eq!(positions, vec![0.0, 5.0, 10.0, 15.0]);
        let patient = s["patient"].as_str().unwrap();
        assert!(patient.len() == 21 && patient.starts_with("ANON-"), "{patient}");
        assert!(ids.iter().all(|i| scan_by_id[i]["patient"] == s["patient"] && scan_by_id[i]["series"] == s["series"]));
    }

    // The patient split: each patient in one part, patients stratified by their labels (only negative
    // slices, only positive, both): floor(0.8 n) of each stratum to train, floor(0.1 n) to validation.
    let mut labels: std::collections::HashMap<&str, usize> = Default::default();
    for scan in listed.as_array().unwrap() {
        *labels.entry(scan["patient"].as_str().unwrap()).or_default() |= if scan["hematoma"] == true { 2 } else { 1 };
    }
    let mut strata = [0usize; 4];
    for label in labels.values() {
        strata[*label] += 1;
    }
    let expected_train: usize = strata.iter().map(|n| n * 8 / 10).sum();
    let expected_validation: usize = strata.iter().map(|n| n / 10).sum();
    let split = split_reply.json();
    assert_eq!(
        (split["unit"].as_str(), split["patients_in_two_parts"].as_i64()),
        (Some("patient"), Some(0)),
        "{split}"
    );
    let patients = |split: &Value, part: &str| {
        split["parts"].as_array().unwrap().iter().find(|p| p["part"] == part).unwrap()["patients"].as_i64().unwrap()
    };
    assert_eq!(patients(&split, "train") as usize, expected_train, "{split} {strata:?}");
    assert_eq!(patients(&split, "validation") as usize, expected_validation, "{split} {strata:?}");
    let total: i64 = ["pretrain", "train", "validation", "test"].iter().map(|p| patients(&split, p)).sum();
    assert_eq!(total, 50, "every patient in exactly one part: {split}");
    assert!(split["caveat"].as_str().unwrap().contains("no patient has slices in two parts"));
    // A single-site design (no downstream site): every patient in train, validation or test.
    let single = app.call("GET", &format!("/api/v1/datasets/{id}/split"), Some(&ada), None).await.json();
    assert_eq!((single["downstream_site"].clone(), patients(&single, "pretrain")), (Value::Null, 0), "{single}");
    let total: i64 = ["train", "validation", "test"].iter().map(|p| patients(&single, p)).sum();
    assert_eq!((total, single["patients_in_two_parts"].as_i64()), (50, Some(0)), "{single}");
    // The paper's per-slice split of the same slices puts patients in two parts, and says so.
    let by_slice =
        app.call("GET", &format!("/api/v1/datasets/{id}/split?downstream_site=1&unit=slice"), Some(&ada), None).await;
    let by_slice = by_slice.json();
    assert!(by_slice["patients_in_two_parts"].as_i64().unwrap() > 5, "{by_slice}");
    assert!(by_slice["caveat"].as_str().unwrap().contains("slices of one patient may be in both"));
    assert_eq!(
        app.call("GET", &format!("/api/v1/datasets/{id}/split?downstream_site=1&unit=study"), Some(&ada), None)
            .await
            .error_code(),
        "invalid_request"
    );
    app.finish().await;
}

/// Scans uploaded without labels stay unlabelled (never "no hematoma"): pre-training takes them, a job
/// that learns or scores labels is refused naming how many lack one, and labelling them lifts it.
#[tokio::test]
async fn unlabelled_uploads_stay_unlabelled_and_labelled_jobs_refuse_them() {
    let app = App::new("api_unlabelled", false).await;
    let ada = app.token("ada").await;
    let id = app.call("POST", "/api/v1/datasets", Some(&ada), Some(json!({ "name": "unlabelled" }))).await.json()["id"]
        .as_i64()
        .unwrap();
    let mut parts = vec![("site", None, b"2".to_vec())];
    let names: Vec<String> = (0..3).map(|i| format!("slice{i}.png")).collect();
    for (i, name) in names.iter().enumerate() {
        let mut png = Vec::new();
        image::GrayImage::from_fn(16, 16, |x, y| image::Luma([(x * 7 + y * 3 + i as u32 * 40) as u8]))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        parts.push(("files", Some(name.as_str()), png));
    }
    let report = app.upload(&ada, id, &parts).await.json();
    let accepted = report["accepted"].as_array().unwrap();
    assert_eq!(accepted.len(), 3, "{report}");
    assert!(accepted.iter().all(|s| s["labelled"] == false && s["hematoma"] == false && s["site"] == 2), "{report}");
    let dataset = app.call("GET", &format!("/api/v1/datasets/{id}"), Some(&ada), None).await.json();
    assert_eq!((dataset["unlabelled"].as_i64(), dataset["hematoma"].as_i64()), (Some(3), Some(0)), "{dataset}");

    // A supervised baseline needs labels: refused, naming the dataset and the count.
    let data = json!({ "dataset": { "id": id } });
    let supervised = json!({ "kind": "supervised", "params": { "train": data, "validation": data, "size": 16 } });
    let refused = app.call("POST", "/api/v1/jobs", Some(&ada), Some(supervised.clone())).await;
    assert_eq!(refused.error_code(), "invalid_params");
    let message = refused.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains(&format!("dataset {id} has 3 unlabelled slices (of 3)")), "{message}");
    // So does a split part of it.
    let split = json!({ "dataset": { "id": id, "split": { "downstream_site": 2, "part": "test", "unit": "slice" } } });
    let with_split = json!({ "kind": "supervised", "params": { "train": split, "validation": split, "size": 16 } });
    let message = app.call("POST", "/api/v1/jobs", Some(&ada), Some(with_split)).await.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("unlabelled slices in the test part of its split"), "{message}");
    // Without a site design, pre-training reads the training part (and a probe would need its labels).
    let single = json!({ "dataset": { "id": id, "split": { "part": "pretrain", "unit": "slice" } } });
    let probe = json!({ "kind": "supervised", "params": { "train": single, "validation": split, "size": 16 } });
    let message = app.call("POST", "/api/v1/jobs", Some(&ada), Some(probe)).await.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("unlabelled slices in the train part of its split"), "{message}");
    // The paper's pipeline needs its downstream parts labelled (each seed's, read once for all).
    let reproduce = json!({ "kind": "reproduce", "params": { "dataset": id, "downstream_site": 2, "seeds": 2 } });
    let message = app.call("POST", "/api/v1/jobs", Some(&ada), Some(reproduce)).await.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("unlabelled slices in the train part of its split"), "{message}");
    // Unconditional pre-training takes unlabelled scans.
    let pretrain = json!({ "kind": "pretrain", "params": { "run": { "steps": 2 }, "data": data } });
    let reply = app.call("POST", "/api/v1/jobs", Some(&ada), Some(pretrain)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&reply.body));

    // Labelling: giving markers labels a scan; `labelled: false` takes it back; all labelled, the job runs.
    let ids: Vec<i64> = accepted.iter().map(|s| s["id"].as_i64().unwrap()).collect();
    for (k, scan) in ids.iter().enumerate() {
        let patched = app
            .call("PATCH", &format!("/api/v1/scans/{scan}"), Some(&ada), Some(json!({ "hypodensity": k == 0 })))
            .await
            .json();
        assert_eq!((patched["labelled"].as_bool(), patched["hematoma"].as_bool()), (Some(true), Some(k == 0)));
    }
    let uri = format!("/api/v1/scans/{}", ids[1]);
    let unlabel = app.call("PATCH", &uri, Some(&ada), Some(json!({ "labelled": false }))).await;
    assert_eq!(unlabel.json()["labelled"], false);
    let message =
        app.call("POST", "/api/v1/jobs", Some(&ada), Some(supervised.clone())).await.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
    assert!(message.contains("has 1 unlabelled slices (of 3)"), "{message}");
    app.call("PATCH", &format!("/api/v1/scans/{}", ids[1]), Some(&ada), Some(json!({ "fluid_level": false }))).await;
    let reply = app.call("POST", "/api/v1/jobs", Some(&ada), Some(supervised)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&reply.body));
    let dataset = app.call("GET", &format!("/api/v1/datasets/{id}"), Some(&ada), None).await.json();
    assert_eq!((dataset["unlabelled"].as_i64(), dataset["hematoma"].as_i64()), (Some(0), Some(1)), "{dataset}");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_label_browse_and_train_on_a_dataset() {
    let app = App::new("api_datasets", true).await;
    let (ada, bob) = (app.token("ada").await, app.token("bob").await);
    // Phantom CT series as DICOM, with made-up patient data and their labels.
    let scans = app.dir.join("phantoms");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_repdiff"))
        .args(["phantoms", "--format", "dicom", "-n", "8", "--size", "32", "--seed", "5", "--out"])
        .arg(&scans)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let dataset = app.call("POST", "/api/v1/datasets", Some(&ada), Some(json!({ "name": "phantoms" }))).await;
    assert_eq!(dataset.status, StatusCode::CREATED);
    let id = dataset.json()["id"].as_i64().unwrap();
    // A row for notes.dcm too, so that it is refused for what it is (not a scan), not for having no row.
    let mut labels_part = std::fs::read(scans.join("labels.csv")).unwrap();
    labels_part.extend_from_slice(b"notes.dcm,0,0,0,0,0,0\n");
    let mut parts = vec![("labels", None, labels_part)];
    let mut names: Vec<String> = (0..8).map(|i| format!("phantom_{i:05}.dcm")).collect();
    names.sort();
    for name in &names {
        parts.push(("files", Some(name.as_str()), std::fs::read(scans.join(name)).unwrap()));
    }
    parts.push(("files", Some("notes.dcm"), b"this is not a scan".to_vec()));
    parts.push(("files", Some("huge.dcm"), vec![0u8; 300 << 10]));
    parts.push(("files", Some(names[0].as_str()), std::fs::read(scans.join(&names[0])).unwrap()));
    let (content_type, body) = multipart(&parts);
    let upload = |token: &str, body: Vec<u8>| {
        Request::post(format!("/api/v1/datasets/{id}/scans"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, content_type.clone())
            .body(Body::from(body))
            .unwrap()
    };
    // Another researcher cannot upload to (or see) Ada's private dataset.
    assert_eq!(app.send(upload(&bob, body.clone())).await.error_code(), "not_found");
    let reply = app.send(upload(&ada, body)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", String::from_utf8_lossy(&reply.body));
    let report = reply.json();
    assert_eq!(report["accepted"].as_array().unwrap().len(), 8, "{report}");
    assert_eq!(report["duplicates"], 1, "the same slice twice is stored once");
    let refused = report["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 2);
    assert_eq!((refused[0]["file"].as_str(), refused[0]["code"].as_str()), (Some("notes.dcm"), Some("unreadable")));
    assert_eq!(
        (refused[1]["file"].as_str(), refused[1]["code"].as_str()),
        (Some("huge.dcm"), Some("payload_too_large"))
    );
    // A request over the upload limit is refused whole, with the error shape; the server carries on.
    let (_, body) = multipart(&(0..10).map(|_| ("files", Some("big.png"), vec![1u8; 250 << 10])).collect::<Vec<_>>());
    let reply = app.send(upload(&ada, body)).await;
    assert_eq!((reply.status, reply.error_code().as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"));

    // Labels came from labels.csv (the accepted scans are in the order of the files); the scans are named
    // by pseudonyms, and no file name is stored; the stored DICOM is de-identified.
    let labels = std::fs::read_to_string(scans.join("labels.csv")).unwrap();
    for (scan, name) in report["accepted"].as_array().unwrap().iter().zip(&names) {
        let row = labels.lines().find(|l| l.starts_with(name.as_str())).unwrap();
        let fields: Vec<&str> = row.split(',').collect();
        assert_eq!(scan["site"].as_i64().unwrap().to_string(), fields[1]);
        assert_eq!(scan["hypodensity"].as_bool().unwrap(), fields[2] == "1");
        assert_eq!((scan["unit"].as_str(), scan["has_dicom"].as_bool()), (Some("hounsfield"), Some(true)));
    }
    let listed = app.call("GET", &format!("/api/v1/datasets/{id}/scans"), Some(&ada), None).await;
    assert!(!String::from_utf8_lossy(&listed.body).contains("phantom_"), "a file name was stored");
    let listed = listed.json();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 8);
    for scan in listed {
        let name = scan["source_name"].as_str().unwrap();
        assert!(name.len() == 17 && name.starts_with("scan-"), "not a pseudonym: {name}");
    }
    for stored in walk(&app.dir.join("store/datasets")) {
        if stored.extension().is_some_and(|e| e == "dcm") {
            let bytes = std::fs::read(&stored).unwrap();
            assert!(!bytes.windows(8).any(|w| w == b"PHANTOM^"), "a patient name survived in {}", stored.display());
        }
    }
    let dataset = app.call("GET", &format!("/api/v1/datasets/{id}"), Some(&ada), None).await.json();
    assert_eq!(dataset["scans"], 8);
    let dicom = app.call("GET", &format!("/api/v1/scans/{}/dicom", listed[0]["id"]), Some(&ada), None).await;
    assert_eq!(dicom.headers[header::CONTENT_TYPE], "application/dicom");
    assert_eq!(&dicom.body[128..132], b"DICM");
    assert!(!dicom.body.windows(8).any(|w| w == b"PHANTOM^"));

    // Editing a label; Bob may neither see nor edit it.
    let scan = listed[0]["id"].as_i64().unwrap();
    let patched = app
        .call("PATCH", &format!("/api/v1/scans/{scan}"), Some(&ada), Some(json!({ "fluid_level": true, "site": 3 })))
        .await
        .json();
    assert_eq!(
        (patched["fluid_level"].as_bool(), patched["hematoma"].as_bool(), patched["site"].as_i64()),
        (Some(true), Some(true), Some(3))
    );
    assert_eq!(
        app.call("PATCH", &format!("/api/v1/scans/{scan}"), Some(&bob), Some(json!({ "site": 1 }))).await.error_code(),
        "not_found"
    );
    assert_eq!(
        app.call("PATCH", &format!("/api/v1/scans/{scan}"), Some(&ada), Some(json!({ "colour": 1 })))
            .await
            .error_code(),
        "invalid_request"
    );
    // The slice through a window, as a thumbnail.
    let image = app.call("GET", &format!("/api/v1/scans/{scan}/image?window=subdural&size=16"), Some(&ada), None).await;
    assert_eq!(image.headers[header::CONTENT_TYPE], "image/png");
    assert_eq!(image::load_from_memory(&image.body).unwrap().width(), 16);
    assert_eq!(
        app.call("GET", &format!("/api/v1/scans/{scan}/image?window=lung"), Some(&ada), None).await.error_code(),
        "invalid_request"
    );

    // The same series imported by a job from an import root: same labels, files named as in labels.csv.
    let batch = app.dir.join("imports/batch");
    std::fs::create_dir_all(&batch).unwrap();
    for entry in std::fs::read_dir(&scans).unwrap().flatten() {
        std::fs::copy(entry.path(), batch.join(entry.file_name())).unwrap();
    }
    let second = app.call("POST", "/api/v1/datasets", Some(&ada), Some(json!({ "name": "imported" }))).await.json();
    let import = |path: &str| {
        json!({ "kind": "import", "params": {
        "dataset": second["id"], "path": path, "labels": "batch/labels.csv" } })
    };
    for escape in ["../", "/etc"] {
        assert_eq!(
            app.call("POST", "/api/v1/jobs", Some(&ada), Some(import(escape))).await.error_code(),
            "invalid_params"
        );
    }
    assert_eq!(
        app.call("POST", "/api/v1/jobs", Some(&bob), Some(import("batch"))).await.error_code(),
        "invalid_params"
    );
    let job = app.call("POST", "/api/v1/jobs", Some(&ada), Some(import("batch"))).await.json();
    let job = app.wait_final(&ada, job["id"].as_i64().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!((job["result"]["files"].as_i64(), job["result"]["slices"].as_i64()), (Some(8), Some(8)), "{job}");
    let imported = app.call("GET", &format!("/api/v1/datasets/{}/scans", second["id"]), Some(&ada), None).await.json();
    for (a, b) in imported.as_array().unwrap().iter().zip(listed.iter()) {
        assert_eq!(a["source_name"], b["source_name"]);
    }
    assert_eq!(imported.as_array().unwrap().len(), 8);

    // Sharing: Bob sees the dataset once Ada shares it, but may not change it; unsharing hides it again.
    let uri = format!("/api/v1/datasets/{}", second["id"]);
    assert_eq!(app.call("GET", &uri, Some(&bob), None).await.status, StatusCode::NOT_FOUND);
    let shared =
        app.call("PATCH", &uri, Some(&ada), Some(json!({ "shared": true, "name": "imported CT" }))).await.json();
    assert_eq!((shared["shared"].as_bool(), shared["name"].as_str()), (Some(true), Some("imported CT")));
    assert_eq!(app.call("GET", &format!("{uri}/scans"), Some(&bob), None).await.json().as_array().unwrap().len(), 8);
    assert_eq!(app.call("PATCH", &uri, Some(&bob), Some(json!({ "shared": false }))).await.error_code(), "forbidden");
    app.call("PATCH", &uri, Some(&ada), Some(json!({ "shared": false }))).await;
    assert_eq!(app.call("GET", &uri, Some(&bob), None).await.status, StatusCode::NOT_FOUND);

    // Train on it (pixel space, 16x16 windowed slices); Bob may not train on Ada's data.
    let mut config = repdiff_engine::config::RunConfig::preset("tiny-cpu").unwrap();
    let m = &mut config.model;
    (m.input_size, m.patch_size, m.hidden_size, m.depth, m.num_heads) = (16, 4, 32, 1, 2);
    (config.train.steps, config.train.batch_size, config.train.checkpoint_every) = (10, 4, 10);
    let submit =
        json!({ "kind": "pretrain", "params": { "run": { "config": config }, "data": { "dataset": { "id": id } } } });
    assert_eq!(app.call("POST", "/api/v1/jobs", Some(&bob), Some(submit.clone())).await.error_code(), "invalid_params");
    let job = app.call("POST", "/api/v1/jobs", Some(&ada), Some(submit)).await.json();
    let job = app.wait_final(&ada, job["id"].as_i64().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["step"], 10);

    // The paper's split (one site downstream, slice by slice: eight slices of two patients are too few to
    // split by patient), and an encode job of its training part.
    let downstream = listed[7]["site"].as_i64().unwrap();
    let split = app
        .call("GET", &format!("/api/v1/datasets/{id}/split?downstream_site={downstream}&unit=slice"), Some(&ada), None)
        .await
        .json();
    let count = |part: &str| -> i64 {
        let p = split["parts"].as_array().unwrap().iter().find(|p| p["part"] == part).unwrap();
        p["hematoma"].as_i64().unwrap() + p["no_hematoma"].as_i64().unwrap()
    };
    let in_downstream = listed.iter().filter(|s| s["site"].as_i64() == Some(downstream)).count() as i64;
    assert_eq!(count("train") + count("validation") + count("test"), in_downstream, "{split}");
    assert_eq!(count("pretrain"), 8 - in_downstream, "{split}");
    let encode = json!({ "kind": "encode", "params": {
        "dataset": id, "size": 16, "split": { "downstream_site": downstream, "part": "train", "unit": "slice" } } });
    let job = app.call("POST", "/api/v1/jobs", Some(&ada), Some(encode)).await.json();
    let job = app.wait_final(&ada, job["id"].as_i64().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["slices"].as_i64(), Some(count("train")));
    assert_eq!(job["result"]["shape"], json!([1, 16, 16]));
    let train = json!({ "kind": "pretrain", "params": { "run": { "config": config },
        "data": { "latents": { "key": job["result"]["latents"] } } } });
    let job = app.call("POST", "/api/v1/jobs", Some(&ada), Some(train)).await.json();
    let job = app.wait_final(&ada, job["id"].as_i64().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_frontend_is_served_beside_the_api_and_responses_are_compressed() {
    let db = TestDb::new("api_static").await;
    let dir = std::env::temp_dir().join(format!("repdiff-api-static-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("dist/assets")).unwrap();
    std::fs::write(dir.join("dist/index.html"), "<!doctype html><title>RepDiff</title>").unwrap();
    std::fs::write(dir.join("dist/assets/app.js"), "console.log('repdiff');".repeat(100)).unwrap();
    let config = HttpConfig { static_dir: Some(dir.join("dist")), ..HttpConfig::default() };
    let storage = Storage::local(&dir.join("store")).unwrap();
    let router = http::router(AppState::new(db.pool.clone(), storage, jobs::registry(&JobSettings::default()), config));
    let get = |uri: &str, gzip: bool| {
        let mut request = Request::get(uri);
        if gzip {
            request = request.header(header::ACCEPT_ENCODING, "gzip");
        }
        router.clone().oneshot(request.body(Body::empty()).unwrap())
    };
    let index = get("/", false).await.unwrap();
    assert_eq!(index.status(), StatusCode::OK);
    // Client-side routes load the app, which routes them.
    let deep = get("/runs/12", false).await.unwrap();
    let body = axum::body::to_bytes(deep.into_body(), 1 << 20).await.unwrap();
    assert!(String::from_utf8_lossy(&body).contains("<title>RepDiff</title>"));
    let script = get("/assets/app.js", true).await.unwrap();
    assert_eq!(script.headers()[header::CONTENT_ENCODING], "gzip");
    // Unknown API paths stay JSON errors, not the app.
    let missing = get("/api/v1/nothing-here", false).await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(missing.headers()[header::CONTENT_TYPE], "application/json");
    let doc = get("/api/v1/openapi.json", true).await.unwrap();
    assert_eq!(doc.headers()[header::CONTENT_ENCODING], "gzip");
    db.drop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
