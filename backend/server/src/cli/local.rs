//! The queue on this machine, for a command that runs jobs without a server (`repdiff reproduce`): a data
//! folder laid out as `repdiff serve --data-dir` keeps one (embedded PostgreSQL, artifact store, scratch,
//! de-identification key); jobs are submitted to it as the API submits them and run by a worker in this
//! process, and their state changes, progress and log lines are printed as they come. Serving the same
//! folder later shows every run made here in the browser, with its curves, samples and artifacts.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use repdiff_api::{Job, JobState, NewUser, Role, SubmitJob};
use repdiff_server::embedded_pg::EmbeddedPostgres;
use repdiff_server::http::auth::{self, CurrentUser};
use repdiff_server::http::{AppState, HttpConfig};
use repdiff_server::queue::{self, Followed};
use repdiff_server::storage::Storage;
use repdiff_server::worker::Worker;
use sqlx::PgPool;

use super::worker::WorkerArgs;

/// The user that owns what a command imports here (datasets need an owner). Not an admin: `repdiff serve`
/// on the folder still makes the first admin, who sees everything.
const OWNER: &str = "cli";

/// `println!` for what happens to the jobs: a closed stdout (a pipe whose reader went away) is no reason
/// to stop them.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

pub struct Local {
    pub pool: PgPool,
    pub storage: Storage,
    pub args: WorkerArgs,
    embedded: Option<EmbeddedPostgres>,
}

/// How following a job ended.
pub enum Ended {
    /// It and its stages all ended; the job as it ended.
    Finished(Box<queue::Job>),
    /// SIGINT or SIGTERM: running jobs saved a checkpoint and went back to the queue.
    Interrupted,
}

impl Local {
    /// Opens (or creates) the data folder `args.data_dir`. A run killed earlier left its running jobs so in
    /// the folder's own database: they go back to the queue now, to resume from their last checkpoint.
    pub async fn open(args: WorkerArgs) -> Result<Local> {
        let storage = args.storage()?;
        let (pool, embedded) = args.database().await?;
        let local = Local { pool, storage, args, embedded };
        if local.embedded.is_some() {
            let released = queue::release_all(&local.pool).await?;
            if released > 0 {
                println!("{released} job(s) left running by an earlier run are back in the queue");
            }
        }
        Ok(local)
    }

    pub async fn close(self) -> Result<()> {
        self.pool.close().await;
        if let Some(pg) = self.embedded {
            tokio::task::block_in_place(|| pg.stop())?;
        }
        Ok(())
    }

    /// `name`, a user of the folder's database, as the API would see them signed in; none: the folder's
    /// own `cli` user (made on first use).
    pub async fn user(&self, name: Option<&str>) -> Result<CurrentUser> {
        let username = name.unwrap_or(OWNER);
        let found =
            sqlx::query!("SELECT id, role FROM users WHERE username = $1", username).fetch_optional(&self.pool).await?;
        let (id, role) = match found {
            Some(row) => (row.id, Role::parse(&row.role).context("a user's role")?),
            None if name.is_none() => {
                // Nobody signs in as it: its password is random and never shown.
                let new =
                    NewUser { username: OWNER.into(), password: super::random_password(), role: Role::Researcher };
                let user = auth::create_user(&self.pool, &new).await.map_err(|e| anyhow!(e.message))?;
                (user.id, user.role)
            }
            None => bail!("{username} is not a user of this data folder's database"),
        };
        Ok(CurrentUser { id, username: username.to_string(), role })
    }

    /// Submits `job` for `user` as `POST /api/v1/jobs` does, with its checks; with `key` used before by the
    /// user, finds the job that made instead (`false`).
    pub async fn submit(&self, user: &CurrentUser, job: &SubmitJob, key: &str) -> Result<(Job, bool)> {
        let config = HttpConfig { weights_dir: self.args.weights_dir.clone(), ..HttpConfig::default() };
        let state = AppState::new(self.pool.clone(), self.storage.clone(), self.args.registry()?, config);
        let submitted = repdiff_server::http::jobs::submit(&state, user, job, Some(key)).await;
        submitted.map_err(|e| anyhow!("{}", e.message))
    }

    /// Runs the queue's jobs on a worker in this process (`args.concurrency` at once) until job `id` and,
    /// for a pipeline, every stage of it have ended, printing what happens to them. SIGINT or SIGTERM stops
    /// it: running jobs stop at their next step, save a checkpoint and go back to the queue (a second
    /// signal exits at once).
    pub async fn follow(&self, id: i64) -> Result<Ended> {
        let registry = self.args.registry()?;
        let options = self.args.options()?;
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let worker =
            tokio::spawn(Worker::new(self.pool.clone(), self.storage.clone(), registry, options).run(shutdown));
        let mut printer = Printer::default();
        // Whatever ends the watch (the jobs' end, a signal, a lost database), the worker is stopped first:
        // its running jobs save their checkpoints and go back to the queue.
        let watched = watch(&self.pool, id, &mut printer).await;
        if let Ok(true) = watched {
            say!(
                "\ninterrupted: running stages stop at their next step and keep their checkpoints, finished ones \
                 are kept; the same command goes on from there (Ctrl-C again exits at once)"
            );
            tokio::spawn(async {
                super::shutdown_signal().await;
                std::process::exit(130);
            });
        }
        let _ = stop.send(true);
        worker.await.context("the worker panicked")??;
        let interrupted = watched?;
        printer.show(&self.pool, id).await?;
        if interrupted {
            return Ok(Ended::Interrupted);
        }
        let job = queue::get(&self.pool, id).await?.with_context(|| format!("job {id} is gone"))?;
        Ok(Ended::Finished(Box::new(job)))
    }
}

/// Runs `work` on the queue of the data folder `args` names, in a runtime of its own, and closes the queue
/// whatever happens; `work` says whether a signal interrupted it (the process then exits with 130).
pub fn on_local_queue(args: WorkerArgs, work: impl AsyncFnOnce(&Local) -> Result<bool>) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let interrupted = runtime.block_on(async {
        let local = Local::open(args).await?;
        let outcome = work(&local).await;
        local.close().await?;
        outcome
    })?;
    if interrupted {
        super::interrupt::mark_interrupted();
    }
    Ok(())
}

/// Prints what happens to job `id` and its stages until they have all ended (`false`) or a signal
/// comes (`true`).
async fn watch(pool: &PgPool, id: i64, printer: &mut Printer) -> Result<bool> {
    let signal = super::shutdown_signal();
    tokio::pin!(signal);
    loop {
        printer.show(pool, id).await?;
        if printer.all_final() {
            return Ok(false);
        }
        tokio::select! {
            _ = &mut signal => return Ok(true),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// What has been printed of the followed jobs.
#[derive(Default)]
struct Printer {
    seen: HashMap<i64, Seen>,
    last_log: i64,
    /// Stages (or the job) done, as last printed.
    done: Option<usize>,
}

struct Seen {
    state: JobState,
    progress: Option<(i64, i64, String)>,
    printed_at: Instant,
}

/// How often a running job's progress is printed between its phases (a phase: a new total) and its end.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

impl Printer {
    fn all_final(&self) -> bool {
        self.seen.values().all(|s| s.state.is_final())
    }

    async fn show(&mut self, pool: &PgPool, id: i64) -> Result<()> {
        let members = queue::followed(pool, id).await?;
        let first = self.seen.is_empty();
        let names: HashMap<i64, &str> = members.iter().map(|m| (m.id, m.name.as_str())).collect();
        // The jobs that started since the last look; a short one may have ended already. On the first look
        // only the running ones: what ended before this run is history.
        let fresh: Vec<i64> = members
            .iter()
            .filter(|m| {
                let before = self.seen.get(&m.id).map(|s| s.state);
                let started = m.state == JobState::Running || (!first && m.state.is_final() && m.seconds.is_some());
                started && before != Some(m.state) && before != Some(JobState::Running)
            })
            .map(|m| m.id)
            .collect();
        let mut logs = queue::followed_logs(pool, id, self.last_log).await?;
        self.last_log = logs.last().map_or(self.last_log, |(line, ..)| *line);
        if first {
            logs.clear();
        }
        let print_logs = |job: Option<i64>, logs: &[(i64, i64, String, String)]| {
            for (_, of, level, message) in logs {
                if job.is_some_and(|j| j != *of) || (job.is_none() && fresh.contains(of)) {
                    continue;
                }
                let name = names.get(of).copied().unwrap_or("?");
                match level.as_str() {
                    "info" => say!("[{name}] {message}"),
                    _ => say!("[{name}] {level}: {message}"),
                }
            }
        };
        // In the order things happened: what the jobs under way logged and how they ended; then each job
        // that started since, with its log lines (and its end).
        print_logs(None, &logs);
        for m in members.iter().filter(|m| !fresh.contains(&m.id)) {
            self.state_changed(m, first);
        }
        for m in members.iter().filter(|m| fresh.contains(&m.id)) {
            say!("[{}] started (job {})", m.name, m.id);
            print_logs(Some(m.id), &logs);
            self.state_changed(m, first);
        }
        for m in &members {
            self.progressed(m);
        }
        // A pipeline counts its stages.
        let stages: Vec<&Followed> = members.iter().filter(|m| m.id != id).collect();
        let done = stages.iter().filter(|m| m.state == JobState::Succeeded).count();
        if !stages.is_empty() && self.done != Some(done) {
            self.done = Some(done);
            say!("progress: {done}/{} stages done", stages.len());
        }
        Ok(())
    }

    /// Prints how `m` ended, or that it went back to the queue, if that happened since it was last seen
    /// (on the first look only what is under way: the rest is counted). Starts are printed by [`show`].
    fn state_changed(&mut self, m: &Followed, first: bool) {
        let before = self.seen.get(&m.id).map(|s| s.state);
        let seen = self.seen.entry(m.id).or_insert_with(|| Seen {
            state: m.state,
            progress: None,
            printed_at: Instant::now(),
        });
        seen.state = m.state;
        if before == Some(m.state) || (first && matches!(m.state, JobState::Queued | JobState::Succeeded)) {
            return;
        }
        let name = &m.name;
        let took = m.seconds.map(|s| format!(" in {s:.1} s")).unwrap_or_default();
        let error = m.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
        match m.state {
            JobState::Succeeded => say!("[{name}] done{took}"),
            JobState::Failed => say!("[{name}] failed{error}"),
            JobState::Cancelled => say!("[{name}] cancelled{error}"),
            JobState::Queued if before == Some(JobState::Running) => {
                say!("[{name}] back in the queue: it goes on from its last checkpoint")
            }
            JobState::Queued | JobState::Running => {}
        }
    }

    /// Prints a running job's progress: its first report, its last, and one every [`PROGRESS_EVERY`].
    fn progressed(&mut self, m: &Followed) {
        let Some(seen) = self.seen.get_mut(&m.id) else { return };
        let Some((step, total, message)) = m.progress.as_ref().filter(|_| m.state == JobState::Running) else {
            return;
        };
        if seen.progress.as_ref() == m.progress.as_ref() {
            return;
        }
        let new_phase = seen.progress.as_ref().is_none_or(|(_, last_total, _)| last_total != total);
        if new_phase || step == total || seen.printed_at.elapsed() >= PROGRESS_EVERY {
            say!("[{}] {step}/{total} {message}", m.name);
            seen.printed_at = Instant::now();
            seen.progress = m.progress.clone();
        }
    }
}
