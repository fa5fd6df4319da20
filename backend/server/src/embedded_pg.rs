//! The embedded default database: with no `DATABASE_URL`, `repdiff serve` runs a private PostgreSQL
//! cluster under its data directory from this machine's PostgreSQL binaries. It listens on a Unix socket
//! in its own directory only (no TCP port to collide with or to expose), and is stopped when the server
//! stops. PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` user.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

pub struct EmbeddedPostgres {
    bin: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    run_as: Option<String>,
}

const DATABASE: &str = "repdiff";
const USER: &str = "repdiff";

/// The directory holding `initdb` and `pg_ctl`: `REPDIFF_PG_BIN`, then `pg_config --bindir`, then the
/// newest `/usr/lib/postgresql/<version>/bin`.
fn find_binaries() -> Result<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Ok(dir) = std::env::var("REPDIFF_PG_BIN") {
        let dir = PathBuf::from(dir);
        if has_tools(&dir) {
            return Ok(dir);
        }
        bail!("REPDIFF_PG_BIN={} has no initdb and pg_ctl", dir.display());
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_tools(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, dir)| has_tools(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir).context(
        "no DATABASE_URL and no local PostgreSQL to start one: install PostgreSQL (Debian: apt install postgresql) \
         or point DATABASE_URL at a server",
    )
}

fn is_root() -> bool {
    #[cfg(unix)]
    // SAFETY: geteuid has no preconditions.
    return unsafe { libc::geteuid() } == 0;
    #[cfg(not(unix))]
    false
}

impl EmbeddedPostgres {
    /// Initialises the cluster in `dir` if needed and starts it.
    pub fn start(dir: &Path) -> Result<EmbeddedPostgres> {
        let bin = find_binaries()?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let run_as = is_root().then(|| "postgres".to_string());
        let pg = EmbeddedPostgres { bin, data: dir.join("data"), socket_dir: dir.clone(), run_as };
        if let Some(user) = &pg.run_as {
            // The parent folders must be traversable by the cluster's user.
            pg.run(Command::new("chown").arg(user).arg(&dir), "chown")?;
            let reachable =
                Command::new("runuser").args(["-u", user, "--", "test", "-w"]).arg(&dir).status()?.success();
            if !reachable {
                bail!(
                    "running as root, the embedded PostgreSQL runs as the {user} user, who cannot reach {}: \
                     choose a --data-dir outside root's home, or set DATABASE_URL",
                    dir.display()
                );
            }
        }
        if !pg.data.join("PG_VERSION").exists() {
            tracing::info!("initialising a private PostgreSQL cluster in {}", pg.data.display());
            let mut initdb = pg.command("initdb");
            initdb.arg("-D").arg(&pg.data).args(["-U", USER, "--auth=trust", "-E", "UTF8", "--no-instructions"]);
            pg.run(&mut initdb, "initdb")?;
        }
        // A cluster left running by a killed server is reused as it is.
        let running = pg.command("pg_ctl").arg("status").arg("-D").arg(&pg.data).output()?.status.success();
        if !running {
            let options = format!("-c listen_addresses='' -c unix_socket_directories='{}'", pg.socket_dir.display());
            let mut start = pg.command("pg_ctl");
            start
                .arg("start")
                .arg("-w")
                .arg("-D")
                .arg(&pg.data)
                .arg("-l")
                .arg(dir.join("postgres.log"))
                .arg("-o")
                .arg(options);
            pg.run(&mut start, "pg_ctl start")
                .with_context(|| format!("see {}", dir.join("postgres.log").display()))?;
        }
        Ok(pg)
    }

    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    fn run(&self, command: &mut Command, what: &str) -> Result<()> {
        let out = command.output().with_context(|| format!("running {what}"))?;
        if !out.status.success() {
            bail!("{what} failed: {}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
        }
        Ok(())
    }

    /// The URL of the server's database (created on first use).
    pub async fn database_url(&self) -> Result<String> {
        let admin = format!("postgres://{USER}@localhost/postgres?host={}", self.socket_dir.display());
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
            .await
            .context("connecting to the embedded PostgreSQL")?;
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
            .bind(DATABASE)
            .fetch_optional(&mut conn)
            .await?;
        if exists.is_none() {
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {DATABASE}"))).execute(&mut conn).await?;
        }
        Ok(format!("postgres://{USER}@localhost/{DATABASE}?host={}", self.socket_dir.display()))
    }

    /// Stops the cluster (fast shutdown: open sessions are ended, data is safe).
    pub fn stop(&self) -> Result<()> {
        let mut stop = self.command("pg_ctl");
        stop.arg("stop").arg("-w").args(["-m", "fast"]).arg("-D").arg(&self.data);
        self.run(&mut stop, "pg_ctl stop")
    }
}
