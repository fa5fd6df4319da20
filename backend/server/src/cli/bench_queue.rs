//! `repdiff bench --queue N`: job-queue throughput on no-op jobs in a scratch database, with the raw
//! claim/finish loop and with the worker runtime (heartbeats, LISTEN, spawn_blocking). Prints a Markdown
//! table for docs/benchmarks.md.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use repdiff_server::jobs::{self, JobSettings};
use repdiff_server::queue::{self, NewJob, Outcome};
use repdiff_server::storage::Storage;
use repdiff_server::worker::{Worker, WorkerOptions};
use sqlx::{Connection, PgConnection, PgPool};

/// Runs the benchmark against the PostgreSQL server of `admin_url` (a scratch database is created there
/// and dropped).
pub fn run(admin_url: &str, jobs: usize, workers: usize) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let name = format!("repdiff_bench_{}", std::process::id());
        let mut admin = PgConnection::connect(admin_url).await.context("connecting to PostgreSQL")?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await?;
        let url = match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => anyhow::bail!("the database URL must name a database"),
        };
        let result = measure(&url, jobs, workers).await;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
            .execute(&mut admin)
            .await?;
        result
    })
}

async fn submit_all(pool: &PgPool, jobs: usize) -> Result<()> {
    for _ in 0..jobs {
        queue::submit(pool, &NewJob::new("noop", serde_json::json!({}))).await?;
    }
    Ok(())
}

async fn wait_all_done(pool: &PgPool) -> Result<()> {
    loop {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state <> 'succeeded'").fetch_one(pool).await?;
        if left == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn measure(url: &str, jobs: usize, workers: usize) -> Result<()> {
    let pool = repdiff_server::db::connect(url, (workers as u32 * 2 + 4).min(100)).await?;
    println!(
        "Job queue: {jobs} no-op jobs, {workers} concurrent workers, PostgreSQL {}\n",
        server_version(&pool).await?
    );
    println!("| path | jobs | workers | seconds | jobs/s |");
    println!("|---|---|---|---|---|");

    let started = Instant::now();
    submit_all(&pool, jobs).await?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "| submit (one INSERT + NOTIFY each, sequential) | {jobs} | 1 | {seconds:.2} | {:.0} |",
        jobs as f64 / seconds
    );

    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let (id, kinds) = (format!("bench-{w}"), vec!["noop".to_string()]);
            while let Some(job) = queue::claim(&pool, &id, &kinds, Duration::from_secs(60)).await? {
                queue::finish(&pool, job.id, &id, &Outcome::Succeeded(serde_json::Value::Null)).await?;
            }
            Ok::<_, sqlx::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("| claim + finish (raw queue calls) | {jobs} | {workers} | {seconds:.2} | {:.0} |", jobs as f64 / seconds);

    sqlx::query("DELETE FROM jobs").execute(&pool).await?;
    submit_all(&pool, jobs).await?;
    let dir = std::env::temp_dir().join(format!("repdiff-bench-queue-{}", std::process::id()));
    let storage = Storage::local(&dir.join("store"))?;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let mut running = Vec::new();
    for w in 0..workers {
        let mut options = WorkerOptions::new(dir.join("scratch"));
        options.id = format!("bench-worker-{w}-{}", std::process::id());
        options.poll_interval = Duration::from_millis(50);
        let registry =
            jobs::registry(&JobSettings::default()).only(&["noop".to_string()]).map_err(anyhow::Error::msg)?;
        running.push(tokio::spawn(Worker::new(pool.clone(), storage.clone(), registry, options).run(shutdown.clone())));
    }
    wait_all_done(&pool).await?;
    let seconds = started.elapsed().as_secs_f64();
    stop.send(true)?;
    for worker in running {
        worker.await??;
    }
    println!(
        "| worker runtime (claim, heartbeat task, handler thread, finish) | {jobs} | {workers} | {seconds:.2} | {:.0} |",
        jobs as f64 / seconds
    );
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn server_version(pool: &PgPool) -> Result<String> {
    Ok(sqlx::query_scalar("SHOW server_version").fetch_one(pool).await?)
}
