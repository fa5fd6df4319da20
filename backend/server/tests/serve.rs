//! `repdiff serve` on its embedded defaults: with no DATABASE_URL it initialises and starts a private
//! PostgreSQL cluster from the local binaries, creates the first admin, answers HTTP, and on SIGTERM stops
//! cleanly, cluster included; a second start reuses the cluster and the admin.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

// The child is returned to the caller, which waits for it in `stop`.
#[allow(clippy::zombie_processes)]
fn start(data: &std::path::Path) -> (Child, String, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_repdiff"))
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "0", "--data-dir"])
        .arg(data)
        .env_remove("DATABASE_URL")
        .env("REPDIFF_PASSWORD", "first-admin-password")
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

fn get(address: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
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
    let (child, address, lines) = start(&data);
    assert!(lines.iter().any(|l| l.contains("using the embedded PostgreSQL")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("admin / first-admin-password")), "{lines:?}");
    let health = get(&address, "/api/v1/health");
    assert!(health.starts_with("HTTP/1.1 200") && health.contains("\"status\":\"ok\""), "{health}");
    let jobs = get(&address, "/api/v1/jobs");
    assert!(jobs.starts_with("HTTP/1.1 401") && jobs.contains("unauthenticated"), "{jobs}");
    stop(child);
    // The cluster stopped with the server (its pid file is gone).
    assert!(!data.join("postgres/data/postmaster.pid").exists());

    let (child, address, lines) = start(&data);
    assert!(!lines.iter().any(|l| l.contains("Created the first user")), "the admin exists already: {lines:?}");
    assert!(get(&address, "/api/v1/health").starts_with("HTTP/1.1 200"));
    stop(child);
    std::fs::remove_dir_all(&data).unwrap();
}
