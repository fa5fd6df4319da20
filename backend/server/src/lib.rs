//! RepDiff's server side: the Postgres job queue, workers and their job kinds, artifact storage, and (to
//! come) the REST API. The `repdiff` binary (src/main.rs) is the command-line front end over this crate and
//! `repdiff-engine`.

pub mod artifacts;
pub mod db;
pub mod embedded_pg;
pub mod http;
pub mod jobs;
pub mod pipeline;
pub mod process;
pub mod queue;
pub mod scans;
pub mod storage;
pub mod supervisor;
pub mod worker;
