//! `repdiff serve` (REST API + frontend + an in-process worker) and `repdiff admin create`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use repdiff_api::{NewUser, Role};
use repdiff_server::http::{self, AppState, HttpConfig};
use repdiff_server::supervisor::{WorkerProcess, supervise};

use super::worker::WorkerArgs;

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "REPDIFF_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The frontend's built files; default `frontend/dist` when it exists.
    #[arg(long, env = "REPDIFF_STATIC")]
    static_dir: Option<PathBuf>,
    /// Jobs the server's own worker runs at once, each on its share of the CPU threads; 0 leaves all jobs
    /// to `repdiff worker` processes elsewhere. The server runs them in a supervised child process, so a
    /// job that crashes ends with its cause and the API stays up.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Mark the session cookie Secure (when served over HTTPS).
    #[arg(long)]
    secure_cookies: bool,
    /// Allow browser calls from these origins (CORS); default none.
    #[arg(long, value_delimiter = ',')]
    cors_origin: Vec<String>,
    #[command(flatten)]
    worker: WorkerArgs,
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Create a user (the first admin, typically). The password is read from REPDIFF_PASSWORD or stdin.
    Create {
        #[arg(long)]
        username: String,
        #[arg(long, value_parser = parse_role, default_value = "admin")]
        role: Role,
        #[command(flatten)]
        worker: WorkerArgs,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("{s:?} is not a role: viewer, researcher or admin"))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

pub fn serve(args: ServeArgs) -> Result<()> {
    super::init_logging();
    let registry = args.worker.registry()?;
    args.worker.options()?;
    let storage = args.worker.storage()?;
    let static_dir = args.static_dir.clone().or_else(|| {
        let default = PathBuf::from("frontend/dist");
        default.join("index.html").exists().then_some(default)
    });
    runtime()?.block_on(async move {
        let (pool, embedded) = args.worker.database().await?;
        let database_url = match &embedded {
            Some(pg) => pg.database_url().await?,
            None => args.worker.database_url.clone().unwrap_or_default(),
        };
        if http::auth::count_admins(&pool).await? == 0 {
            // Set but empty (docker-compose.yml passes `${REPDIFF_PASSWORD:-}`) counts as unset.
            let password = password_from_env().unwrap_or_else(super::random_password);
            let admin = NewUser { username: "admin".into(), password: password.clone(), role: Role::Admin };
            http::auth::create_user(&pool, &admin).await.map_err(|e| anyhow::anyhow!(e.message))?;
            println!("Created the first user: admin / {password}  (shown once; add users in the app or with `repdiff admin create`)");
        }
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let worker = (args.workers > 0).then(|| {
            let process = WorkerProcess {
                exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("repdiff")),
                args: args.worker.to_worker_args(&database_url, args.workers),
            };
            let (pool, handle, shutdown) = (pool.clone(), tokio::runtime::Handle::current(), shutdown.clone());
            std::thread::spawn(move || supervise(pool, process, handle, shutdown))
        });
        let config = HttpConfig {
            static_dir: static_dir.clone(),
            secure_cookies: args.secure_cookies,
            cors_origins: args.cors_origin.clone(),
            weights_dir: args.worker.weights_dir.clone(),
            ..HttpConfig::default()
        };
        http::datasets::remove_stale_staging();
        let deid_key = args.worker.deid_key()?;
        let state = AppState::new(pool.clone(), storage.clone(), registry, config).with_deid_key(deid_key);
        let app = http::router(state);
        let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
        println!(
            "RepDiff on http://{}  (API /api/v1, OpenAPI /api/v1/openapi.json{}; artifacts in {}; {} worker slot(s) in a child process)",
            listener.local_addr()?,
            match &static_dir {
                Some(dir) => format!(", frontend from {}", dir.display()),
                None => ", no frontend build found".into(),
            },
            storage.url(),
            args.workers
        );
        let mut stopping = shutdown.clone();
        http::serve(listener, app, async move {
            tokio::select! {
                _ = super::shutdown_signal() => {}
                _ = stopping.changed() => {}
            }
        })
        .await?;
        let _ = stop.send(true);
        if let Some(worker) = worker {
            tokio::task::spawn_blocking(move || worker.join())
                .await?
                .map_err(|_| anyhow::anyhow!("the worker supervisor panicked"))?;
        }
        pool.close().await;
        if let Some(pg) = embedded {
            tokio::task::block_in_place(|| pg.stop())?;
        }
        Ok(())
    })
}

/// REPDIFF_PASSWORD when it is set and not empty.
fn password_from_env() -> Option<String> {
    std::env::var("REPDIFF_PASSWORD").ok().filter(|p| !p.is_empty())
}

pub fn admin(command: AdminCommand) -> Result<()> {
    let AdminCommand::Create { username, role, worker } = command;
    let password = match password_from_env() {
        Some(p) => p,
        None => {
            eprintln!("Password for {username} (at least 10 characters), then Enter:");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    if password.is_empty() {
        bail!("no password given");
    }
    runtime()?.block_on(async move {
        let (pool, embedded) = worker.database().await?;
        let result = http::auth::create_user(&pool, &NewUser { username, password, role }).await;
        pool.close().await;
        if let Some(pg) = embedded {
            tokio::task::block_in_place(|| pg.stop())?;
        }
        let user = result.map_err(|e| anyhow::anyhow!(e.message))?;
        println!("Created {} ({}), id {}", user.username, user.role.as_str(), user.id);
        Ok(())
    })
}
