//! `repdiff worker`: runs jobs from the queue until SIGINT/SIGTERM (then running jobs checkpoint and go
//! back to the queue for the next worker).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use repdiff_engine::imaging::deid::DeidKey;
use repdiff_server::embedded_pg::EmbeddedPostgres;
use repdiff_server::jobs::{self, JobSettings};
use repdiff_server::storage::Storage;
use repdiff_server::worker::{Worker, WorkerOptions};
use sqlx::PgPool;

#[derive(Args, Clone)]
pub struct WorkerArgs {
    /// PostgreSQL holding the job queue (the server's database).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Data directory: the artifact store (unless --store) and scratch space.
    #[arg(long, env = "REPDIFF_DATA", default_value = "repdiff-data")]
    pub data_dir: PathBuf,
    /// Artifact store shared by the server and all workers: a path, file:///path or s3://bucket/prefix.
    #[arg(long, env = "REPDIFF_STORE")]
    pub store: Option<String>,
    /// Jobs run at once by this process, each on its share of the CPU threads (RAYON_NUM_THREADS, default
    /// all cores) divided by this.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Only these job kinds (comma-separated); default all.
    #[arg(long, value_delimiter = ',')]
    pub kinds: Vec<String>,
    /// Lease of a claimed job; a worker that stops heartbeating loses its job after this.
    #[arg(long, default_value_t = 120.0)]
    pub lease_secs: f64,
    /// How often to look for jobs when no notification arrives.
    #[arg(long, default_value_t = 5.0)]
    pub poll_secs: f64,
    /// How often to look for jobs of dead workers.
    #[arg(long, default_value_t = 30.0)]
    pub rescue_secs: f64,
    /// Pretrained weights (SD VAE for decoding latent samples).
    #[arg(long, env = "REPDIFF_WEIGHTS", default_value = "model-weights")]
    pub weights_dir: PathBuf,
    /// Folders that `import` jobs may read scans from (comma-separated); none: no import jobs.
    #[arg(long, env = "REPDIFF_IMPORT_ROOTS", value_delimiter = ',')]
    pub import_root: Vec<PathBuf>,
    /// The DICOM de-identification key (created if missing); every server and worker of a deployment
    /// must share it so one patient's series always gets the same pseudonyms. Default DATA_DIR/deid.key.
    #[arg(long, env = "REPDIFF_DEID_KEY")]
    pub deid_key: Option<PathBuf>,
}

impl WorkerArgs {
    /// The database: `--database-url`, or the embedded cluster under the data directory (started here, to
    /// be stopped by the caller).
    pub async fn database(&self) -> Result<(PgPool, Option<EmbeddedPostgres>)> {
        let (url, embedded) = match &self.database_url {
            Some(url) => (url.clone(), None),
            None => {
                let dir = self.data_dir.join("postgres");
                let pg = tokio::task::block_in_place(|| EmbeddedPostgres::start(&dir))?;
                let url = pg.database_url().await?;
                println!("No DATABASE_URL: using the embedded PostgreSQL in {} ({url})", dir.display());
                (url, Some(pg))
            }
        };
        let pool = repdiff_server::db::connect(&url, 32).await.context("connecting to the database")?;
        Ok((pool, embedded))
    }

    pub fn storage(&self) -> Result<Storage> {
        let url = self.store.clone().unwrap_or_else(|| self.data_dir.join("artifacts").display().to_string());
        Storage::from_url(&url).with_context(|| format!("opening the artifact store {url}"))
    }

    pub fn options(&self) -> Result<WorkerOptions> {
        for (name, value) in
            [("--lease-secs", self.lease_secs), ("--poll-secs", self.poll_secs), ("--rescue-secs", self.rescue_secs)]
        {
            if !(value.is_finite() && value > 0.0) {
                bail!("{name} must be a positive number of seconds");
            }
        }
        let mut options = WorkerOptions::new(self.data_dir.join("scratch"));
        options.concurrency = self.concurrency.max(1);
        options.lease = Duration::from_secs_f64(self.lease_secs);
        options.poll_interval = Duration::from_secs_f64(self.poll_secs);
        options.rescue_interval = Duration::from_secs_f64(self.rescue_secs);
        Ok(options)
    }

    pub fn deid_key(&self) -> Result<DeidKey> {
        let path = self.deid_key.clone().unwrap_or_else(|| self.data_dir.join("deid.key"));
        DeidKey::load_or_create(&path).with_context(|| format!("the de-identification key {}", path.display()))
    }

    /// These settings as `repdiff worker`'s arguments, with `database_url` and `concurrency` (how `serve`
    /// starts its worker process).
    pub fn to_worker_args(&self, database_url: &str, concurrency: usize) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec!["worker".into(), "--database-url".into(), database_url.into()];
        let mut flag = |name: &str, value: std::ffi::OsString| {
            args.push(format!("--{name}").into());
            args.push(value);
        };
        flag("data-dir", self.data_dir.clone().into());
        if let Some(store) = &self.store {
            flag("store", store.into());
        }
        flag("concurrency", concurrency.to_string().into());
        if !self.kinds.is_empty() {
            flag("kinds", self.kinds.join(",").into());
        }
        flag("lease-secs", self.lease_secs.to_string().into());
        flag("poll-secs", self.poll_secs.to_string().into());
        flag("rescue-secs", self.rescue_secs.to_string().into());
        flag("weights-dir", self.weights_dir.clone().into());
        for root in &self.import_root {
            flag("import-root", root.clone().into());
        }
        if let Some(key) = &self.deid_key {
            flag("deid-key", key.clone().into());
        }
        args
    }

    pub fn registry(&self) -> Result<repdiff_server::worker::Registry> {
        let settings = JobSettings {
            weights_dir: self.weights_dir.clone(),
            import_roots: self.import_root.clone(),
            deid_key: std::sync::Arc::new(self.deid_key()?),
            ..JobSettings::default()
        };
        let registry = jobs::registry(&settings);
        if self.kinds.is_empty() { Ok(registry) } else { registry.only(&self.kinds).map_err(anyhow::Error::msg) }
    }
}

pub fn run(args: WorkerArgs) -> Result<()> {
    super::init_logging();
    let Some(url) = args.database_url.clone() else {
        bail!("repdiff worker needs the server's database: pass --database-url or set DATABASE_URL");
    };
    let registry = args.registry()?;
    let options = args.options()?;
    let storage = args.storage()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let pool = repdiff_server::db::connect(&url, (options.concurrency as u32 * 2 + 4).min(64))
            .await
            .context("connecting to the database")?;
        tracing::info!("artifacts in {}; {} job(s) at a time", storage.url(), options.concurrency);
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            super::shutdown_signal().await;
            tracing::info!("stopping: running jobs checkpoint and return to the queue (signal again to kill)");
            let _ = stop.send(true);
            super::shutdown_signal().await;
            std::process::exit(130);
        });
        Worker::new(pool, storage, registry, options).run(shutdown).await
    })
}
