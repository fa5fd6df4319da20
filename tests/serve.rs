//! `repdiff serve` on its embedded defaults: with no DATABASE_URL it initialises and starts a private
//! PostgreSQL cluster from the local binaries, creates the first admin (with a generated password when
//! REPDIFF_PASSWORD is empty, as docker-compose.yml passes it unset), answers HTTP, and on SIGTERM stops
//! cleanly, cluster included; a second start reuses the cluster and the admin. And its worker slots run
//! in a child process: a job that aborts it ends with the cause while the API keeps serving.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

// The child is returned to the caller, which waits for it in `stop`.
#[allow(clippy::zombie_processes)]
fn start(data: &std::path::Path, password: &str) -> (Child, String, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_repdiff"))
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "0", "--data-dir"])
        .arg(data)
        .env_remove("DATABASE_URL")
        .env("REPDIFF_PASSWORD", password)
        .env("REPDIFF_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start repdiff serve");
    let mut lines = Vec::new();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("serve exited early ({:?}): {lines:?}", child.wait());
        }
        lines.push(line.trim().to_string());
        if let Some(rest) = line.strip_prefix("RepDiff on http://") {
            let address = rest.split_whitespace().next().unwrap().to_string();
            return (child, address, lines);
        }
    }
}

fn request(address: &str, method: &str, path: &str, json: &str) -> String {
    request_with(address, method, path, json, "")
}

/// A request with extra header lines (each ending in CRLF).
fn request_with(address: &str, method: &str, path: &str, json: &str, headers: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Type: application/json\r\n\
         {headers}Content-Length: {}\r\n\r\n{json}",
        json.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn get(address: &str, path: &str) -> String {
    request(address, "GET", path, "")
}

fn stop(mut child: Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn serve_starts_on_an_embedded_postgres_and_stops_cleanly() {
    let data = std::env::temp_dir().join(format!("repdiff-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let (child, address, lines) = start(&data, "");
    assert!(lines.iter().any(|l| l.contains("using the embedded PostgreSQL")), "{lines:?}");
    let created = lines.iter().find_map(|l| l.strip_prefix("Created the first user: admin / ")).expect("admin");
    let password = created.split_whitespace().next().unwrap();
    assert_eq!(password.len(), 20, "a generated password, not the empty REPDIFF_PASSWORD: {created}");
    let login = |password: &str| {
        let body = format!(r#"{{"username":"admin","password":"{password}"}}"#);
        request(&address, "POST", "/api/v1/auth/login", &body)
    };
    assert!(login(password).starts_with("HTTP/1.1 200"), "{}", login(password));
    assert!(login("first-quiet-harbour").starts_with("HTTP/1.1 401"));
    let health = get(&address, "/api/v1/health");
    assert!(health.starts_with("HTTP/1.1 200") && health.contains("\"status\":\"ok\""), "{health}");
    let jobs = get(&address, "/api/v1/jobs");
    assert!(jobs.starts_with("HTTP/1.1 401") && jobs.contains("unauthenticated"), "{jobs}");
    stop(child);
    // The cluster stopped with the server (its pid file is gone).
    assert!(!data.join("postgres/data/postmaster.pid").exists());

    let (child, address, lines) = start(&data, "first-quiet-harbour");
    assert!(!lines.iter().any(|l| l.contains("Created the first user")), "the admin exists already: {lines:?}");
    assert!(get(&address, "/api/v1/health").starts_with("HTTP/1.1 200"));
    stop(child);
    std::fs::remove_dir_all(&data).unwrap();
}

/// The JSON body of an HTTP/1.1 response (chunked or not).
fn body_json(response: &str) -> serde_json::Value {
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    let start = body.find(['{', '[']).unwrap_or(0);
    let end = body.rfind(['}', ']']).map(|e| e + 1).unwrap_or(body.len());
    serde_json::from_str(&body[start..end]).unwrap_or_else(|e| panic!("{e}: {response}"))
}

#[test]
fn a_job_that_aborts_its_worker_process_fails_with_the_cause_and_the_api_keeps_serving() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = runtime.block_on(common::TestDb::new("serve_abort"));
    let data = std::env::temp_dir().join(format!("repdiff-serve-abort-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let mut child = Command::new(env!("CARGO_BIN_EXE_repdiff"))
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "1", "--poll-secs", "0.2", "--data-dir"])
        .arg(&data)
        .env("DATABASE_URL", &db.url)
        .env("REPDIFF_PASSWORD", "first-quiet-harbour")
        .env("REPDIFF_TEST_HOOKS", "1")
        .env("REPDIFF_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start repdiff serve");
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let address = loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "serve exited early");
        if let Some(rest) = line.strip_prefix("RepDiff on http://") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let login =
        request(&address, "POST", "/api/v1/auth/login", r#"{"username":"admin","password":"first-quiet-harbour"}"#);
    let cookie =
        login.lines().find_map(|l| l.strip_prefix("set-cookie: ")).unwrap().split(';').next().unwrap().to_string();
    let headers = format!("Cookie: {cookie}\r\nOrigin: http://{address}\r\n");
    let submit = |params: &str| {
        let reply = request_with(
            &address,
            "POST",
            "/api/v1/jobs",
            &format!(r#"{{"kind":"noop","params":{params}}}"#),
            &headers,
        );
        assert!(reply.starts_with("HTTP/1.1 201"), "{reply}");
        body_json(&reply)["id"].as_i64().unwrap()
    };
    let wait = |id: i64| loop {
        let job = body_json(&request_with(&address, "GET", &format!("/api/v1/jobs/{id}"), "", &headers));
        if ["succeeded", "failed", "cancelled"].contains(&job["state"].as_str().unwrap_or_default()) {
            return job;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let aborted = wait(submit(r#"{"abort":true}"#));
    assert_eq!(aborted["state"], "failed", "{aborted}");
    let error = aborted["error"].as_str().unwrap();
    assert!(error.contains("SIGABRT") && error.contains("memory allocation of"), "{error}");
    assert_eq!(aborted["attempt"], 1, "an abort is not retried: {aborted}");
    // The server is up, and a new worker process takes the next job.
    assert!(get(&address, "/api/v1/health").starts_with("HTTP/1.1 200"));
    assert_eq!(wait(submit(r#"{"sleep_ms":10}"#))["state"], "succeeded");
    stop(child);
    runtime.block_on(db.drop());
    let _ = std::fs::remove_dir_all(&data);
}
