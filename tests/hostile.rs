//! Hostile and careless input, replayed against the application's router on a real PostgreSQL: each of the
//! failures an attacker and a careless user found (issue 37) gets a 4xx with a clear message, leaks no
//! identifier, and loses nothing silently. A job that aborts its worker process is `tests/serve.rs`'s (it
//! needs the `repdiff serve` binary).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use common::{App, Reply, multipart, password_of, upload_request, walk};
use serde_json::{Value, json};

/// Phantom CT slices as DICOM files (with made-up patient data inside), and their labels.csv.
fn phantoms(app: &App, n: usize) -> std::path::PathBuf {
    let dir = app.dir.join("phantoms");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_repdiff"))
        .args(["phantoms", "--format", "dicom", "-n", &n.to_string(), "--size", "32", "--seed", "9", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir
}

async fn dataset(app: &App, token: &str, body: Value) -> i64 {
    let reply = app.call("POST", "/api/v1/datasets", Some(token), Some(body)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&reply.body));
    reply.json()["id"].as_i64().unwrap()
}

async fn scan_count(app: &App, dataset: i64) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM scans WHERE dataset_id = $1")
        .bind(dataset)
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

/// This process's upload staging folders (the in-process server's).
fn staging_folders() -> Vec<String> {
    let prefix = format!("repdiff-upload-{}-", std::process::id());
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

fn slices_in_store(app: &App) -> usize {
    walk(&app.dir.join("store/datasets")).iter().filter(|p| p.extension().is_some_and(|e| e == "png")).count()
}

fn assert_invalid(reply: &Reply, needle: &str) {
    assert!(reply.status.is_client_error(), "{}: {}", reply.status, String::from_utf8_lossy(&reply.body));
    let message = reply.json()["error"]["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains(needle), "{message:?} does not say {needle:?}");
}

/// Uploads one after another in one test: each checks the staging folders this process leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_keep_no_identifier_and_lose_nothing_silently() {
    let app = App::configured("hostile_uploads", false, |c| c.labels_limit = 64 << 10).await;
    let ada = app.token("ada").await;
    let dir = phantoms(&app, 4);
    let file = |i: usize| std::fs::read(dir.join(format!("phantom_{i:05}.dcm"))).unwrap();
    let labels = std::fs::read_to_string(dir.join("labels.csv")).unwrap();
    let row = |i: usize| labels.lines().find(|l| l.starts_with(&format!("phantom_{i:05}.dcm"))).unwrap().to_string();
    let header = labels.lines().next().unwrap().to_string();

    // 1. A clinical export named after the patient: the name is kept nowhere.
    let d = dataset(&app, &ada, json!({ "name": "export" })).await;
    let named = "DOE^JOHN_PID4455667.dcm";
    let reply = app.send(upload_request(&ada, d, &[("files", Some(named), file(0))])).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", String::from_utf8_lossy(&reply.body));
    let listing = app.call("GET", &format!("/api/v1/datasets/{d}/scans"), Some(&ada), None).await;
    let dump: Vec<String> =
        sqlx::query_scalar("SELECT row_to_json(s)::text FROM scans s").fetch_all(&app.db.pool).await.unwrap();
    for (place, text) in
        [("the API", String::from_utf8_lossy(&listing.body).into_owned()), ("the scans table", dump.join("\n"))]
    {
        assert!(!text.contains("PID4455667") && !text.contains("DOE"), "the file name survived in {place}: {text}");
    }
    for stored in walk(&app.dir.join("store")) {
        assert!(!stored.to_string_lossy().contains("PID4455667"), "{}", stored.display());
    }
    // Keeping names is a dataset's explicit choice.
    let kept = dataset(&app, &ada, json!({ "name": "named", "keep_file_names": true })).await;
    let reply = app.send(upload_request(&ada, kept, &[("files", Some("series_a.dcm"), file(1))])).await;
    assert_eq!(reply.json()["accepted"][0]["source_name"], "series_a.dcm");

    // 2. Labels: every column is kept or refused by name; a row for no file of the upload, a value out of
    //    range, labels after the files: refused whole, nothing stored.
    let d = dataset(&app, &ada, json!({ "name": "labels" })).await;
    let with_name = format!("{header},patient_name\n{},DOE^JANE\n", row(0));
    let reply = app
        .send(upload_request(
            &ada,
            d,
            &[("labels", None, with_name.into_bytes()), ("files", Some("phantom_00000.dcm"), file(0))],
        ))
        .await;
    assert_invalid(&reply, "column \"patient_name\"");
    assert_invalid(&reply, "patient names are never stored");
    // A `patient` column groups slices, stored as a keyed pseudonym only (this DICOM's own PatientID wins).
    let named = dataset(&app, &ada, json!({ "name": "patients" })).await;
    let with_patient = format!("{header},patient\n{},PID4455667\n", row(0));
    let reply = app
        .send(upload_request(
            &ada,
            named,
            &[("labels", None, with_patient.into_bytes()), ("files", Some("phantom_00000.dcm"), file(0))],
        ))
        .await;
    let patient = reply.json()["accepted"][0]["patient"].as_str().unwrap_or_default().to_string();
    assert!(patient.starts_with("ANON-"), "{}", String::from_utf8_lossy(&reply.body));
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT row_to_json(s)::text FROM scans s").fetch_all(&app.db.pool).await.unwrap();
    assert!(!rows.iter().any(|r| r.contains("PID4455667")), "the labels file's patient id was stored");
    let stray = format!("{header}\n{}\n{}\n", row(0), row(1));
    let reply = app
        .send(upload_request(
            &ada,
            d,
            &[("labels", None, stray.into_bytes()), ("files", Some("phantom_00000.dcm"), file(0))],
        ))
        .await;
    assert_invalid(&reply, "phantom_00001.dcm");
    assert_eq!(scan_count(&app, d).await, 0, "a refused upload stored scans");
    let reply = app
        .send(upload_request(
            &ada,
            d,
            &[("files", Some("phantom_00000.dcm"), file(0)), ("labels", None, labels.clone().into_bytes())],
        ))
        .await;
    assert_invalid(&reply, "after files");
    for site in ["4294967297", "2147483648", "-1"] {
        let reply = app
            .send(upload_request(
                &ada,
                d,
                &[("site", None, site.as_bytes().to_vec()), ("files", Some("a.dcm"), file(0))],
            ))
            .await;
        assert_invalid(&reply, "site");
        let big = format!("{header}\nphantom_00000.dcm,{site},0,0,0,0,0\n");
        let reply = app
            .send(upload_request(
                &ada,
                d,
                &[("labels", None, big.into_bytes()), ("files", Some("phantom_00000.dcm"), file(0))],
            ))
            .await;
        assert!(reply.status.is_client_error(), "site {site}: {}", reply.status);
    }
    let reply = app
        .send(upload_request(&ada, d, &[("labels", None, vec![b'x'; 70 << 10]), ("files", Some("a.dcm"), file(0))]))
        .await;
    assert_eq!((reply.status, reply.error_code().as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"));
    // A file the labels name by another case is refused with the reason, not stored unlabelled.
    let upper = format!("{header}\n{}\n", row(0).replacen("phantom_00000.dcm", "PHANTOM_00000.DCM", 1));
    let parts = [
        ("labels", None, upper.into_bytes()),
        ("labels_scope", None, b"dataset".to_vec()),
        ("files", Some("phantom_00000.dcm"), file(0)),
    ];
    let report = app.send(upload_request(&ada, d, &parts)).await.json();
    assert_eq!(report["refused"][0]["code"], "unlabelled", "{report}");
    assert!(report["refused"][0]["error"].as_str().unwrap().contains("differs in case"), "{report}");
    assert_eq!(scan_count(&app, d).await, 0);
    // A broken file's reason names the file as sent, never a server path.
    let report = app
        .send(upload_request(&ada, d, &[("files", Some("broken.dcm"), b"DICM but not really".to_vec())]))
        .await
        .json();
    let reason = report["refused"][0]["error"].as_str().unwrap();
    assert!(!reason.contains("/tmp") && !reason.contains("repdiff-upload"), "{reason}");

    // 3. A NIfTI gzip bomb: a header that claims 600 MB of voxels in a few hundred bytes is refused before
    //    anything is decompressed.
    let report = app.send(upload_request(&ada, d, &[("files", Some("bomb.nii.gz"), nifti_bomb())])).await.json();
    assert_eq!(report["refused"][0]["code"], "unreadable", "{report}");
    assert!(report["refused"][0]["error"].as_str().unwrap().contains("MiB"), "{report}");

    // 4. A client that goes away mid-upload leaves no scan, no object and no staging folder: the files it
    //    sent before it went are not kept either (they land together or not at all).
    let before = slices_in_store(&app);
    let (content_type, body) = multipart(&[
        ("files", Some("phantom_00001.dcm"), file(1)),
        ("files", Some("phantom_00002.dcm"), file(2)),
        ("files", Some("phantom_00003.dcm"), file(3)),
    ]);
    // Everything but the closing boundary, then silence.
    let head = bytes::Bytes::from(body[..body.len() - 40].to_vec());
    let stream = futures_util::StreamExt::chain(
        futures_util::stream::iter([Ok::<_, std::io::Error>(head)]),
        futures_util::stream::pending(),
    );
    let request = Request::post(format!("/api/v1/datasets/{d}/scans"))
        .header(header::AUTHORIZATION, format!("Bearer {ada}"))
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from_stream(stream))
        .unwrap();
    let router = app.router.clone();
    let client = tokio::spawn(async move { tower::ServiceExt::oneshot(router, request).await });
    let started = Instant::now();
    while slices_in_store(&app) < before + 2 {
        assert!(started.elapsed() < Duration::from_secs(30), "the first files were never imported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!staging_folders().is_empty(), "the upload has its staging folder");
    // DICOM is de-identified in memory: no byte of a patient's name reaches the disk.
    for folder in staging_folders() {
        for staged in walk(&std::env::temp_dir().join(folder)) {
            let bytes = std::fs::read(&staged).unwrap_or_default();
            assert!(!bytes.windows(8).any(|w| w == b"PHANTOM^"), "raw DICOM on disk: {}", staged.display());
        }
    }
    client.abort();
    let _ = client.await;
    let started = Instant::now();
    while slices_in_store(&app) > before {
        assert!(started.elapsed() < Duration::from_secs(10), "objects of the dropped upload stayed in the store");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(scan_count(&app, d).await, 0, "scans of the dropped upload were recorded");
    assert_eq!(staging_folders(), Vec::<String>::new(), "raw files stayed in the staging folder");
    // Staging folders are private.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let probe = std::env::temp_dir().join(format!("repdiff-upload-999999999-{}", std::process::id()));
        std::fs::create_dir_all(&probe).unwrap();
        repdiff_server::http::datasets::remove_stale_staging();
        assert!(!probe.exists(), "a dead server's staging folder stayed");
        let reply = app.send(upload_request(&ada, d, &[("files", Some("phantom_00001.dcm"), file(1))])).await;
        assert_eq!(reply.status, StatusCode::OK);
        let _ = std::fs::Permissions::from_mode(0o700);
    }
    app.finish().await;
}

/// A NIfTI-1 header claiming 1024 x 1024 x 300 voxels of 16 bits (600 MiB), gzipped with no data after it.
fn nifti_bomb() -> Vec<u8> {
    let mut header = vec![0u8; 352];
    header[0..4].copy_from_slice(&348i32.to_le_bytes());
    for (i, d) in [3i16, 1024, 1024, 300, 1, 1, 1, 1].iter().enumerate() {
        header[40 + 2 * i..42 + 2 * i].copy_from_slice(&d.to_le_bytes());
    }
    header[70..72].copy_from_slice(&4i16.to_le_bytes()); // int16
    header[72..74].copy_from_slice(&16i16.to_le_bytes());
    for i in 0..8 {
        header[76 + 4 * i..80 + 4 * i].copy_from_slice(&1f32.to_le_bytes());
    }
    header[108..112].copy_from_slice(&352f32.to_le_bytes());
    header[344..348].copy_from_slice(b"n+1\0");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &header).unwrap();
    gz.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_job_parameters_are_refused_with_the_limit() {
    let app = App::new("hostile_bounds", false).await;
    let ada = app.token("ada").await;
    let pretrain = |run: Value, data: Value| json!({ "kind": "pretrain", "params": { "run": run, "data": data } });
    let toy = json!({ "toy": { "n": 64 } });
    for (job, needle) in [
        (pretrain(json!({}), json!({ "toy": { "n": 1_000_000_000_000u64 } })), "data.toy.n: is 1 to 1000000"),
        (pretrain(json!({ "batch_size": 1_000_000_000_000u64 }), toy.clone()), "run.batch_size: is 1 to 65536"),
        (pretrain(json!({ "steps": 1_000_000_000_000u64 }), toy.clone()), "run.steps: is 1 to 100000000"),
        (pretrain(json!({ "checkpoint_every": 0 }), toy.clone()), "run.checkpoint_every: is 1 to"),
        (pretrain(json!({ "learning_rate": 1e308 }), toy.clone()), "run.learning_rate: is a number in"),
        // Within every bound, too big together: refused with the estimate and the limit.
        (
            pretrain(
                json!({ "preset": "paper", "model": "DiT-XL/2", "batch_size": 60_000 }),
                json!({ "latents": { "key": "x" } }),
            ),
            "GiB of memory",
        ),
        (json!({ "kind": "encode", "params": { "dataset": 1, "size": 1_000_000 } }), "size: is 8 to 1024"),
        (json!({ "kind": "noop", "params": { "abort": true } }), "test hook"),
    ] {
        let reply = app.call("POST", "/api/v1/jobs", Some(&ada), Some(job.clone())).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{job}: {}", String::from_utf8_lossy(&reply.body));
        assert_invalid(&reply, needle);
    }
    // A fine-tune is estimated from its checkpoint's recorded configuration (DiT-XL/2 here) and its batch.
    let pretrain = app.call("POST", "/api/v1/jobs", Some(&ada), Some(json!({ "kind": "noop" }))).await.json();
    let mut config = repdiff_engine::config::RunConfig::preset("paper").unwrap();
    config.model =
        repdiff_engine::config::ModelConfig::dit("DiT-XL/2", 32, 4, config.model.conditioning.clone()).unwrap();
    sqlx::query("INSERT INTO artifacts (key, job_id, kind, media_type, size, meta) VALUES ('jobs/xl/checkpoint.safetensors', $1, 'checkpoint', 'application/octet-stream', 1, $2)")
        .bind(pretrain["id"].as_i64().unwrap())
        .bind(json!({ "step": 10, "total": 10, "config": config }))
        .execute(&app.db.pool)
        .await
        .unwrap();
    let finetune = |batch: u64| {
        json!({ "kind": "finetune", "params": { "from": { "key": "jobs/xl/checkpoint.safetensors" },
                "data": { "toy": { "n": 64 } }, "run": { "batch_size": batch } } })
    };
    assert_invalid(
        &app.call("POST", "/api/v1/jobs", Some(&ada), Some(finetune(60_000))).await,
        "fine-tuning this model at batch 60000",
    );
    assert_eq!(app.call("POST", "/api/v1/jobs", Some(&ada), Some(finetune(2))).await.status, StatusCode::CREATED);
    // The diffusion classifier's batch of a DiT-XL/2 on 64x64 latents (1,024 tokens) is estimated too.
    let mut config = repdiff_engine::config::RunConfig::preset("paper").unwrap();
    let class = repdiff_engine::config::Conditioning::Class { num_classes: 2, dropout_prob: 0.1 };
    config.model = repdiff_engine::config::ModelConfig::dit("DiT-XL/2", 64, 4, class).unwrap();
    sqlx::query("INSERT INTO artifacts (key, job_id, kind, media_type, size, meta) VALUES ('jobs/xl64/checkpoint.safetensors', $1, 'checkpoint', 'application/octet-stream', 1, $2)")
        .bind(pretrain["id"].as_i64().unwrap())
        .bind(json!({ "step": 10, "total": 10, "config": config }))
        .execute(&app.db.pool)
        .await
        .unwrap();
    let classify = |batch: u64| {
        json!({ "kind": "classify", "params": { "checkpoint": { "key": "jobs/xl64/checkpoint.safetensors" },
                "validation": { "toy": { "n": 8 } }, "batch_size": batch } })
    };
    assert_invalid(
        &app.call("POST", "/api/v1/jobs", Some(&ada), Some(classify(1024))).await,
        "classifying at batch 1024",
    );
    assert_eq!(app.call("POST", "/api/v1/jobs", Some(&ada), Some(classify(2))).await.status, StatusCode::CREATED);
    // NUL bytes and oversized numbers are the client's errors, not the server's.
    let mut tagged = json!({ "kind": "noop", "params": {}, "tags": ["a\u{0}b"] });
    assert_invalid(&app.call("POST", "/api/v1/jobs", Some(&ada), Some(tagged.clone())).await, "NUL");
    tagged["tags"] = json!([]);
    tagged["priority"] = json!(1u64 << 40);
    assert!(app.call("POST", "/api/v1/jobs", Some(&ada), Some(tagged)).await.status.is_client_error());
    assert_invalid(&app.call("POST", "/api/v1/datasets", Some(&ada), Some(json!({ "name": "x\u{0}y" }))).await, "NUL");
    let reply = app.call("GET", "/api/v1/jobs?kind=no%00op", Some(&ada), None).await;
    assert_invalid(&reply, "NUL");
    // Still serving.
    assert_eq!(app.call("GET", "/api/v1/health", None, None).await.status, StatusCode::OK);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_experiment_shows_nothing_made_from_a_private_dataset() {
    let app = App::new("hostile_sharing", false).await;
    let (ada, bob, val) = (app.token("ada").await, app.token("bob").await, app.token("val").await);
    let created = app.call("POST", "/api/v1/experiments", Some(&ada), Some(json!({ "name": "study" }))).await.json();
    assert_eq!(created["shared"], false, "experiments are private by default");
    let experiment = created["id"].as_i64().unwrap();
    app.call("PATCH", &format!("/api/v1/experiments/{experiment}"), Some(&ada), Some(json!({ "shared": true }))).await;
    let private = dataset(&app, &ada, json!({ "name": "private CT" })).await;
    let from_private = |publish: bool| {
        json!({ "kind": "pretrain", "experiment_id": experiment, "publish_private": publish,
                "params": { "data": { "dataset": { "id": private } } } })
    };
    let hidden = app.call("POST", "/api/v1/jobs", Some(&ada), Some(from_private(false))).await.json();
    let id = hidden["id"].as_i64().unwrap();
    assert_eq!(app.call("GET", &format!("/api/v1/jobs/{id}"), Some(&val), None).await.status, StatusCode::NOT_FOUND);
    let listed = app.call("GET", &format!("/api/v1/jobs?experiment_id={experiment}"), Some(&val), None).await.json();
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 0, "{listed}");
    // What derives from it stays hidden too: a checkpoint of that run, and a job reading it.
    let key = format!("jobs/{id}/checkpoint.safetensors");
    sqlx::query("INSERT INTO artifacts (key, job_id, kind, media_type, size, meta) VALUES ($1, $2, 'checkpoint', 'application/octet-stream', 1, '{}')")
        .bind(&key)
        .bind(id)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let sample = json!({ "kind": "sample", "experiment_id": experiment, "params": { "checkpoint": { "key": key } } });
    let derived = app.call("POST", "/api/v1/jobs", Some(&ada), Some(sample)).await.json();
    let uri = format!("/api/v1/jobs/{}", derived["id"]);
    assert_eq!(app.call("GET", &uri, Some(&val), None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.call("GET", &uri, Some(&ada), None).await.status, StatusCode::OK);
    assert!(app.call("GET", "/api/v1/checkpoints", Some(&val), None).await.json().as_array().unwrap().is_empty());
    // The owner may publish a run on purpose.
    let published = app.call("POST", "/api/v1/jobs", Some(&ada), Some(from_private(true))).await.json();
    assert_eq!(
        app.call("GET", &format!("/api/v1/jobs/{}", published["id"]), Some(&val), None).await.status,
        StatusCode::OK
    );
    // Only members run jobs in an experiment.
    let noop = json!({ "kind": "noop", "experiment_id": experiment });
    let reply = app.call("POST", "/api/v1/jobs", Some(&bob), Some(noop.clone())).await;
    assert_eq!((reply.status, reply.error_code().as_str()), (StatusCode::FORBIDDEN, "forbidden"));
    let path = format!("/api/v1/experiments/{experiment}/members/BOB");
    assert_eq!(app.call("PUT", &path, Some(&bob), None).await.status, StatusCode::FORBIDDEN);
    let members = app.call("PUT", &path, Some(&ada), None).await.json();
    assert_eq!(members["members"], json!(["bob"]));
    assert_eq!(app.call("POST", "/api/v1/jobs", Some(&bob), Some(noop)).await.status, StatusCode::CREATED);
    app.finish().await;
}

fn login_from(address: &str, username: &str, password: &str) -> Request<Body> {
    let mut request = Request::post("/api/v1/auth/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({ "username": username, "password": password }).to_string()))
        .unwrap();
    let address: SocketAddr = format!("{address}:40000").parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(address));
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_backs_off_guessers_without_locking_owners_out() {
    let app = App::new("hostile_sign_in", false).await;
    // Cookie-authenticated writes need the app's own Origin.
    let reply = app.send(login_from("10.0.0.1", "ada", &password_of("ada"))).await;
    let cookie = reply.headers[header::SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_string();
    let create = |origin: Option<&str>| {
        let mut request = Request::post("/api/v1/datasets")
            .header(header::COOKIE, cookie.clone())
            .header(header::HOST, "repdiff.test")
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(origin) = origin {
            request = request.header(header::ORIGIN, origin);
        }
        request.body(Body::from(json!({ "name": "csrf" }).to_string())).unwrap()
    };
    assert_eq!(app.send(create(Some("https://evil.example"))).await.status, StatusCode::FORBIDDEN);
    assert_eq!(app.send(create(None)).await.status, StatusCode::FORBIDDEN);
    assert_eq!(app.send(create(Some("http://repdiff.test"))).await.status, StatusCode::CREATED);

    // A guesser at one address waits longer and longer, also after a restart (a new router on the same
    // database); the owner, elsewhere, signs in.
    let restarted = repdiff_server::http::router(repdiff_server::http::AppState::new(
        app.db.pool.clone(),
        repdiff_server::storage::Storage::local(&app.dir.join("store")).unwrap(),
        repdiff_server::jobs::registry(&repdiff_server::jobs::JobSettings::default()),
        repdiff_server::http::HttpConfig::default(),
    ));
    for _ in 0..5 {
        assert_eq!(app.send(login_from("10.6.6.6", "val", "guess-guess-1")).await.status, StatusCode::UNAUTHORIZED);
    }
    let reply = app.send(login_from("10.6.6.6", "val", &password_of("val"))).await;
    assert_eq!((reply.status, reply.error_code().as_str()), (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"));
    assert!(reply.headers.contains_key(header::RETRY_AFTER));
    let reply =
        tower::ServiceExt::oneshot(restarted, login_from("10.6.6.6", "val", &password_of("val"))).await.unwrap();
    assert_eq!(reply.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(app.send(login_from("10.0.0.2", "val", &password_of("val"))).await.status, StatusCode::OK);
    // Spraying many usernames from one address is slowed too.
    for i in 0..20 {
        app.send(login_from("10.7.7.7", &format!("user{i}"), "guess-guess-1")).await;
    }
    assert_eq!(
        app.send(login_from("10.7.7.7", "ada", &password_of("ada"))).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );

    // Passwords: not a common one, not a run, not the username; usernames are case-insensitive.
    let root = app.token("root").await;
    for (username, password, needle) in [
        ("carol", "password123", "most common"),
        ("carol", "1234567890", "most common"),
        ("carol", "zzzzzzzzzzzz", "repeated"),
        ("carol", "carol-is-the-best", "username"),
    ] {
        let user = json!({ "username": username, "password": password, "role": "viewer" });
        assert_invalid(&app.call("POST", "/api/v1/users", Some(&root), Some(user)).await, needle);
    }
    let user = |name: &str| json!({ "username": name, "password": "a-harbour-of-quiet-sails", "role": "viewer" });
    assert_eq!(app.call("POST", "/api/v1/users", Some(&root), Some(user("Carol"))).await.status, StatusCode::CREATED);
    assert_eq!(app.call("POST", "/api/v1/users", Some(&root), Some(user("carol"))).await.status, StatusCode::CONFLICT);
    assert_eq!(app.send(login_from("10.0.0.3", "CAROL", "a-harbour-of-quiet-sails")).await.status, StatusCode::OK);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_stay_inside_their_roots() {
    let app = App::new("hostile_import", true).await;
    let ada = app.token("ada").await;
    let dir = phantoms(&app, 2);
    let imports = app.dir.join("imports");
    std::fs::copy(dir.join("phantom_00000.dcm"), imports.join("inside.dcm")).unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("/etc", imports.join("etc")).unwrap();
        std::os::unix::fs::symlink(dir.join("phantom_00001.dcm"), imports.join("outside.dcm")).unwrap();
        std::os::unix::fs::symlink(&imports, imports.join("loop")).unwrap();
    }
    let d = dataset(&app, &ada, json!({ "name": "imported" })).await;
    let import = |path: &str| json!({ "kind": "import", "params": { "dataset": d, "path": path } });
    // A path outside the roots and one that does not exist get the same answer.
    let outside = app.call("POST", "/api/v1/jobs", Some(&ada), Some(import("../../../../etc/passwd"))).await;
    let missing = app.call("POST", "/api/v1/jobs", Some(&ada), Some(import("no/such/folder"))).await;
    let message = |r: &Reply| r.json()["error"]["message"].as_str().unwrap().to_string();
    assert_eq!(
        message(&outside).replace("../../../../etc/passwd", "P"),
        message(&missing).replace("no/such/folder", "P"),
        "the answers tell which path exists"
    );
    let job = app.call("POST", "/api/v1/jobs", Some(&ada), Some(import("."))).await.json();
    let job = app.wait_final(&ada, job["id"].as_i64().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["files"], 1, "only the file inside the roots: {job}");
    let logs = app.call("GET", &format!("/api/v1/jobs/{}/logs", job["id"]), Some(&ada), None).await;
    let logs = String::from_utf8_lossy(&logs.body).into_owned();
    assert!(!logs.contains("/etc") && !logs.contains("passwd"), "{logs}");
    assert!(logs.contains("skipped"), "{logs}");
    app.finish().await;
}
