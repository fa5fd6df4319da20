//! The job queue's guarantees, each provoked against a real PostgreSQL (one fresh database per test).
//! Time-dependent behaviour (leases, backoff) is driven by zero-length leases and by moving `run_after`,
//! never by sleeping.

use std::collections::HashMap;
use std::time::Duration;

use repdiff_server::queue::{self, JobState, Lease, NewJob, Outcome};

mod common;
use common::TestDb;

fn kinds(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

const LEASE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_workers_run_every_job_exactly_once() {
    let db = TestDb::new("race").await;
    let jobs = 300;
    for i in 0..jobs {
        queue::submit(&db.pool, &NewJob::new("noop", serde_json::json!({ "i": i }))).await.unwrap();
    }
    let mut workers = Vec::new();
    for w in 0..8 {
        let pool = db.pool.clone();
        workers.push(tokio::spawn(async move {
            let name = format!("worker-{w}");
            let mut ran = Vec::new();
            while let Some(job) = queue::claim(&pool, &name, &kinds(&["noop"]), LEASE).await.unwrap() {
                ran.push(job.id);
                let state =
                    queue::finish(&pool, job.id, &name, &Outcome::Succeeded(serde_json::json!(null))).await.unwrap();
                assert_eq!(state, Some(JobState::Succeeded));
            }
            ran
        }));
    }
    let mut runs: HashMap<i64, usize> = HashMap::new();
    let mut busy_workers = 0;
    for worker in workers {
        let ran = worker.await.unwrap();
        busy_workers += usize::from(!ran.is_empty());
        for id in ran {
            *runs.entry(id).or_default() += 1;
        }
    }
    assert_eq!(runs.len(), jobs, "every job ran");
    assert!(runs.values().all(|&n| n == 1), "no job ran twice");
    assert!(busy_workers > 1, "the work was shared");
    let succeeded: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'succeeded' AND attempt = 1")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(succeeded, jobs as i64);
    db.drop().await;
}

#[tokio::test]
async fn claims_go_by_priority_then_age_and_only_to_workers_of_the_kind() {
    let db = TestDb::new("order").await;
    let old = queue::submit(&db.pool, &NewJob::new("train", serde_json::json!({}))).await.unwrap();
    let newer = queue::submit(&db.pool, &NewJob::new("train", serde_json::json!({}))).await.unwrap();
    let urgent =
        queue::submit(&db.pool, &NewJob { priority: 5, ..NewJob::new("train", serde_json::json!({})) }).await.unwrap();
    let other = queue::submit(&db.pool, &NewJob::new("sample", serde_json::json!({}))).await.unwrap();
    let order: Vec<i64> = {
        let mut ids = Vec::new();
        while let Some(job) = queue::claim(&db.pool, "w", &kinds(&["train"]), LEASE).await.unwrap() {
            ids.push(job.id);
        }
        ids
    };
    assert_eq!(order, vec![urgent.id, old.id, newer.id]);
    let job = queue::claim(&db.pool, "w", &kinds(&["sample", "train"]), LEASE).await.unwrap().unwrap();
    assert_eq!(job.id, other.id);
    db.drop().await;
}

/// A job given back by a worker that shuts down (or found running when a private queue reopens) keeps
/// its place: it goes on before the jobs queued after it, without using an attempt.
#[tokio::test]
async fn a_released_job_keeps_its_place_and_its_attempts() {
    let db = TestDb::new("release").await;
    let first = queue::submit(&db.pool, &NewJob::new("train", serde_json::json!({}))).await.unwrap();
    let second = queue::submit(&db.pool, &NewJob::new("train", serde_json::json!({}))).await.unwrap();
    let claimed = queue::claim(&db.pool, "w", &kinds(&["train"]), LEASE).await.unwrap().unwrap();
    assert_eq!(claimed.id, first.id);
    assert_eq!(queue::release(&db.pool, first.id, "w").await.unwrap(), Some(JobState::Queued));
    let again = queue::claim(&db.pool, "w", &kinds(&["train"]), LEASE).await.unwrap().unwrap();
    assert_eq!((again.id, again.attempt), (first.id, 1));
    // Every running job at once, as `repdiff reproduce` does when it reopens its own queue.
    let other = queue::claim(&db.pool, "w", &kinds(&["train"]), LEASE).await.unwrap().unwrap();
    assert_eq!(other.id, second.id);
    assert_eq!(queue::release_all(&db.pool).await.unwrap(), 2);
    let mut order = Vec::new();
    while let Some(job) = queue::claim(&db.pool, "w", &kinds(&["train"]), LEASE).await.unwrap() {
        order.push((job.id, job.attempt));
    }
    assert_eq!(order, [(first.id, 1), (second.id, 1)]);
    db.drop().await;
}

#[tokio::test]
async fn an_idempotency_key_makes_one_job() {
    let db = TestDb::new("idem").await;
    let job =
        NewJob { idempotency_key: Some("upload-42".into()), ..NewJob::new("import", serde_json::json!({"a": 1})) };
    let first = queue::submit(&db.pool, &job).await.unwrap();
    let second = queue::submit(&db.pool, &job).await.unwrap();
    assert_eq!(first.id, second.id);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs").fetch_one(&db.pool).await.unwrap();
    assert_eq!(count, 1);
    db.drop().await;
}

#[tokio::test]
async fn a_job_whose_worker_stops_heartbeating_is_rescued_and_its_old_worker_is_ignored() {
    let db = TestDb::new("rescue").await;
    let job = queue::submit(&db.pool, &NewJob::new("train", serde_json::json!({}))).await.unwrap();
    // A zero lease: expired as soon as it is granted, as if the worker had died.
    let claimed = queue::claim(&db.pool, "dead", &kinds(&["train"]), Duration::ZERO).await.unwrap().unwrap();
    assert_eq!((claimed.id, claimed.attempt), (job.id, 1));
    // A live lease is left alone.
    let busy = queue::submit(&db.pool, &NewJob::new("other", serde_json::json!({}))).await.unwrap();
    queue::claim(&db.pool, "alive", &kinds(&["other"]), LEASE).await.unwrap().unwrap();

    assert_eq!(queue::rescue_expired(&db.pool).await.unwrap(), (1, 0));
    assert_eq!(queue::get(&db.pool, job.id).await.unwrap().unwrap().state, JobState::Queued);
    assert_eq!(queue::get(&db.pool, busy.id).await.unwrap().unwrap().state, JobState::Running);

    let again = queue::claim(&db.pool, "new", &kinds(&["train"]), LEASE).await.unwrap().unwrap();
    assert_eq!((again.id, again.attempt), (job.id, 2));
    // The dead worker comes back: it has lost the job and can neither renew nor finish it.
    assert_eq!(queue::heartbeat(&db.pool, job.id, "dead", LEASE).await.unwrap(), Lease::Lost);
    let late = queue::finish(&db.pool, job.id, "dead", &Outcome::Succeeded(serde_json::json!(1))).await.unwrap();
    assert_eq!(late, None);
    assert_eq!(queue::heartbeat(&db.pool, job.id, "new", LEASE).await.unwrap(), Lease::Held);
    let done = queue::finish(&db.pool, job.id, "new", &Outcome::Succeeded(serde_json::json!(2))).await.unwrap();
    assert_eq!(done, Some(JobState::Succeeded));
    assert_eq!(queue::get(&db.pool, job.id).await.unwrap().unwrap().result, Some(serde_json::json!(2)));

    // Out of attempts, a lost job fails with the reason.
    let last = queue::submit(&db.pool, &NewJob { max_attempts: 1, ..NewJob::new("train", serde_json::json!({})) })
        .await
        .unwrap();
    queue::claim(&db.pool, "dead", &kinds(&["train"]), Duration::ZERO).await.unwrap().unwrap();
    assert_eq!(queue::rescue_expired(&db.pool).await.unwrap(), (0, 1));
    let failed = queue::get(&db.pool, last.id).await.unwrap().unwrap();
    assert_eq!(failed.state, JobState::Failed);
    assert!(failed.error.unwrap().contains("stopped heartbeating"));
    db.drop().await;
}

#[tokio::test]
async fn failures_are_retried_after_a_growing_backoff_up_to_max_attempts() {
    let db = TestDb::new("retry").await;
    let job = queue::submit(&db.pool, &NewJob { max_attempts: 3, ..NewJob::new("flaky", serde_json::json!({})) })
        .await
        .unwrap();
    let mut delays = Vec::new();
    for attempt in 1..=3 {
        let claimed = queue::claim(&db.pool, "w", &kinds(&["flaky"]), LEASE).await.unwrap().unwrap();
        assert_eq!(claimed.attempt, attempt);
        let state = queue::finish(&db.pool, job.id, "w", &Outcome::Failed(format!("boom {attempt}"))).await.unwrap();
        let now = queue::get(&db.pool, job.id).await.unwrap().unwrap();
        if attempt < 3 {
            assert_eq!(state, Some(JobState::Queued));
            delays.push((now.run_after - chrono::Utc::now()).num_milliseconds());
            // Not runnable before its backoff; runnable once it has passed.
            assert!(queue::claim(&db.pool, "w", &kinds(&["flaky"]), LEASE).await.unwrap().is_none());
            sqlx::query("UPDATE jobs SET run_after = now() WHERE id = $1")
                .bind(job.id)
                .execute(&db.pool)
                .await
                .unwrap();
        } else {
            assert_eq!(state, Some(JobState::Failed));
            assert_eq!(now.error.as_deref(), Some("boom 3"));
        }
    }
    assert!((500..=1000).contains(&delays[0]) && (1500..=2000).contains(&delays[1]), "backoff {delays:?} ms");

    // A permanent failure is not retried; a user can still retry a failed job once more.
    let bad = queue::submit(&db.pool, &NewJob::new("bad", serde_json::json!({}))).await.unwrap();
    queue::claim(&db.pool, "w", &kinds(&["bad"]), LEASE).await.unwrap().unwrap();
    let state = queue::finish(&db.pool, bad.id, "w", &Outcome::FailedPermanently("invalid".into())).await.unwrap();
    assert_eq!(state, Some(JobState::Failed));
    let retried = queue::retry(&db.pool, job.id).await.unwrap().unwrap();
    assert_eq!((retried.state, retried.max_attempts), (JobState::Queued, 4));
    assert!(queue::retry(&db.pool, retried.id).await.unwrap().is_none(), "only final jobs are retried");
    db.drop().await;
}

#[tokio::test]
async fn cancelling_finishes_a_queued_job_and_asks_a_running_one() {
    let db = TestDb::new("cancel").await;
    let queued = queue::submit(&db.pool, &NewJob::new("train", serde_json::json!({}))).await.unwrap();
    let cancelled = queue::cancel(&db.pool, queued.id).await.unwrap().unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert!(queue::claim(&db.pool, "w", &kinds(&["train"]), LEASE).await.unwrap().is_none());

    let running = queue::submit(&db.pool, &NewJob::new("train", serde_json::json!({}))).await.unwrap();
    queue::claim(&db.pool, "w", &kinds(&["train"]), LEASE).await.unwrap().unwrap();
    let asked = queue::cancel(&db.pool, running.id).await.unwrap().unwrap();
    assert_eq!((asked.state, asked.cancel_requested), (JobState::Running, true));
    assert_eq!(queue::heartbeat(&db.pool, running.id, "w", LEASE).await.unwrap(), Lease::CancelRequested);
    // The worker stops through the engine's cancel token and reports it.
    let state = queue::finish(&db.pool, running.id, "w", &Outcome::Cancelled).await.unwrap();
    assert_eq!(state, Some(JobState::Cancelled));
    assert!(queue::cancel(&db.pool, 9_999).await.unwrap().is_none());
    db.drop().await;
}

#[tokio::test]
async fn submissions_notify_listening_workers() {
    let db = TestDb::new("notify").await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&db.pool).await.unwrap();
    listener.listen(queue::CHANNEL).await.unwrap();
    queue::submit(&db.pool, &NewJob::new("sample", serde_json::json!({}))).await.unwrap();
    let note = tokio::time::timeout(Duration::from_secs(10), listener.recv()).await.unwrap().unwrap();
    assert_eq!(note.payload(), "sample");
    drop(listener); // it holds a pool connection, which closing the pool would wait for
    db.drop().await;
}

#[tokio::test]
async fn progress_metrics_and_logs_are_rows() {
    let db = TestDb::new("progress").await;
    let job = queue::submit(&db.pool, &NewJob::new("train", serde_json::json!({}))).await.unwrap();
    queue::set_progress(&db.pool, job.id, 10, 100, "training").await.unwrap();
    queue::set_progress(&db.pool, job.id, 20, 100, "training").await.unwrap();
    let points: Vec<(String, i64, f64)> = (1..=3).map(|s| ("loss".to_string(), s, 1.0 / s as f64)).collect();
    queue::record_metrics(&db.pool, job.id, &points).await.unwrap();
    // A resumed job reports step 3 again: the new value replaces the old.
    queue::record_metrics(&db.pool, job.id, &[("loss".into(), 3, 0.25)]).await.unwrap();
    queue::log(&db.pool, job.id, "info", "started").await.unwrap();
    let step: i64 = sqlx::query_scalar("SELECT step FROM job_progress WHERE job_id = $1")
        .bind(job.id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(step, 20);
    let losses: Vec<f64> = sqlx::query_scalar("SELECT value FROM job_metrics WHERE job_id = $1 ORDER BY step")
        .bind(job.id)
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(losses, vec![1.0, 0.5, 0.25]);
    assert!(queue::log(&db.pool, job.id, "debug", "x").await.is_err(), "log levels are checked");
    db.drop().await;
}

/// A graph: `a` and `b` independent, `c` on both, `d` on `c`. Only what has its inputs done is claimable;
/// independent jobs run side by side; a failure cancels what waits on it, naming it, and its retry queues
/// them again.
#[tokio::test]
async fn a_job_runs_after_its_dependencies_and_a_failure_stops_what_waits_on_it() {
    let db = TestDb::new("dependencies").await;
    let pool = &db.pool;
    let new = |depends_on: Vec<i64>| NewJob { depends_on, ..NewJob::new("stage", serde_json::json!({})) };
    let a = queue::submit(pool, &new(vec![])).await.unwrap();
    let b = queue::submit(pool, &new(vec![])).await.unwrap();
    let c = queue::submit(pool, &new(vec![a.id, b.id])).await.unwrap();
    let d = queue::submit(pool, &new(vec![c.id])).await.unwrap();
    // A user's cancel is theirs: no retry upstream undoes it.
    let withdrawn = queue::submit(pool, &new(vec![c.id])).await.unwrap();
    queue::cancel(pool, withdrawn.id).await.unwrap();
    let stage = kinds(&["stage"]);
    let claim = |worker: &'static str| {
        let stage = stage.clone();
        async move { queue::claim(pool, worker, &stage, LEASE).await.unwrap().map(|j| j.id) }
    };
    let succeed = |id: i64, worker: &'static str| async move {
        queue::finish(pool, id, worker, &Outcome::Succeeded(serde_json::json!(null))).await.unwrap()
    };
    // The independent two at once, on two workers; nothing else is claimable meanwhile.
    let (first, second) = (claim("w1").await, claim("w2").await);
    assert_eq!((first, second), (Some(a.id), Some(b.id)));
    assert_eq!(claim("w3").await, None, "c waits on a and b");
    succeed(a.id, "w1").await;
    assert_eq!(claim("w3").await, None, "c still waits on b");
    succeed(b.id, "w2").await;
    assert_eq!(claim("w3").await, Some(c.id));
    assert_eq!(claim("w1").await, None, "d waits on c");

    // c fails for good: d can never run, and says why.
    let failed = queue::finish(pool, c.id, "w3", &Outcome::FailedPermanently("boom".into())).await.unwrap();
    assert_eq!(failed, Some(JobState::Failed));
    let blocked = queue::get(pool, d.id).await.unwrap().unwrap();
    assert_eq!(blocked.state, JobState::Cancelled);
    assert_eq!(blocked.error.as_deref(), Some(format!("waits on job #{}, which failed", c.id).as_str()));
    // A job submitted on a failed one is cancelled at once.
    let late = queue::submit(pool, &new(vec![a.id, c.id])).await.unwrap();
    assert_eq!(late.state, JobState::Cancelled);

    // Retrying c queues again what its failure cancelled (not what a user cancelled); they run after c.
    queue::retry(pool, c.id).await.unwrap().unwrap();
    for id in [d.id, late.id] {
        assert_eq!(queue::get(pool, id).await.unwrap().unwrap().state, JobState::Queued, "job {id}");
    }
    assert_eq!(queue::get(pool, withdrawn.id).await.unwrap().unwrap().state, JobState::Cancelled);
    assert_eq!(claim("w1").await, Some(c.id));
    assert_eq!(claim("w2").await, None);
    succeed(c.id, "w1").await;
    let mut after: Vec<i64> = Vec::new();
    while let Some(id) = claim("w2").await {
        after.push(id);
    }
    assert_eq!(after, vec![d.id, late.id]);
    db.drop().await;
}

/// Cancelling a graph's first job cancels the rest, down the graph; the rescuer's failure does the same.
#[tokio::test]
async fn cancelling_or_losing_a_job_carries_down_its_graph() {
    let db = TestDb::new("dependencies_cancel").await;
    let pool = &db.pool;
    let new = |depends_on: Vec<i64>, max_attempts: i32| NewJob {
        depends_on,
        max_attempts,
        ..NewJob::new("stage", serde_json::json!({}))
    };
    let root = queue::submit(pool, &new(vec![], 3)).await.unwrap();
    let middle = queue::submit(pool, &new(vec![root.id], 3)).await.unwrap();
    let leaf = queue::submit(pool, &new(vec![middle.id], 3)).await.unwrap();
    queue::cancel(pool, root.id).await.unwrap();
    let leaf_now = queue::get(pool, leaf.id).await.unwrap().unwrap();
    assert_eq!(leaf_now.state, JobState::Cancelled);
    assert_eq!(leaf_now.error.as_deref(), Some(format!("waits on job #{}, which was cancelled", middle.id).as_str()));

    // A job out of attempts after its worker died: what waits on it is cancelled too.
    let lost = queue::submit(pool, &new(vec![], 1)).await.unwrap();
    let waiting = queue::submit(pool, &new(vec![lost.id], 3)).await.unwrap();
    queue::claim(pool, "dead", &kinds(&["stage"]), Duration::ZERO).await.unwrap().unwrap();
    assert_eq!(queue::rescue_expired(pool).await.unwrap(), (0, 1));
    assert_eq!(queue::get(pool, waiting.id).await.unwrap().unwrap().state, JobState::Cancelled);
    // A dependency must be an earlier job: no graph has a cycle.
    let forward = queue::submit(pool, &new(vec![waiting.id + 100], 3)).await;
    assert!(forward.is_err(), "a job that does not exist yet cannot be depended on");
    db.drop().await;
}
