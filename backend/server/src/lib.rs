//! RepDiff's server side: the Postgres job queue, workers and (to come) the REST API. The `repdiff`
//! binary (src/main.rs) is the command-line front end over this crate and `repdiff-engine`.

pub mod db;
pub mod queue;
