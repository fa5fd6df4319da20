//! RepDiff's REST API (`/api/v1`) as Rust types: what the server sends and accepts, and what the browser
//! frontend and other clients use. Serde only (plus OpenAPI schemas behind the `openapi` feature), so it
//! compiles to wasm32.
//!
//! Conventions: ids are integers; times are RFC 3339 UTC; every error is an [`ErrorBody`] whose `code` is
//! stable (clients branch on it) and whose `message` is for people.

pub mod jobs;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ErrorDetail {
    /// Stable: clients branch on it.
    pub code: ErrorCode,
    pub message: String,
    /// The parameter at fault, where one is (`run.steps`, `validation.toy.n`): a form marks that field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// What went wrong, for clients to branch on (the message is for people).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No session or token, or a wrong one.
    Unauthenticated,
    /// Signed in, but not allowed.
    Forbidden,
    /// No such thing, or not one the caller may see.
    NotFound,
    /// The body is not JSON.
    InvalidJson,
    /// The request is malformed or a value is out of range.
    InvalidRequest,
    /// A job's kind or parameters are not valid (`field` names the parameter where one is at fault).
    InvalidParams,
    /// The request conflicts with the current state (a name taken, a job already final).
    Conflict,
    PayloadTooLarge,
    UnsupportedMedia,
    MethodNotAllowed,
    /// Too many tries: wait (`Retry-After`).
    TooManyRequests,
    /// A server fault; the detail is in the server's log.
    Internal,
    /// The database is unreachable: retry.
    Unavailable,
}

impl ErrorCode {
    /// The code as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidParams => "invalid_params",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMedia => "unsupported_media",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads what is shared with the team.
    Viewer,
    /// Also uploads scans and runs jobs.
    Researcher,
    /// Also manages users.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Researcher => "researcher",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "researcher" => Some(Role::Researcher),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct User {
    pub id: i64,
    pub username: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Login {
    pub username: String,
    pub password: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct NewUser {
    pub username: String,
    pub password: String,
    pub role: Role,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct NewToken {
    /// What the token is for ("laptop", "CI").
    pub name: String,
}

/// An API token as listed (the secret is shown once, at creation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Token {
    pub id: i64,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CreatedToken {
    pub token: Token,
    /// Send as `Authorization: Bearer <secret>`. Not stored by the server: keep it.
    pub secret: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct NewExperiment {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Visible to the whole team, or (default) to its owner and members only. Shared, a run in it is
    /// shown to others only when the datasets it derives from are shared too (or it was published).
    #[serde(default)]
    pub shared: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Experiment {
    pub id: i64,
    pub owner: String,
    pub name: String,
    pub description: String,
    pub shared: bool,
    /// Users besides the owner who run jobs in it.
    pub members: Vec<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }

    /// The name in JSON and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(state: &str) -> Option<JobState> {
        match state {
            "queued" => Some(JobState::Queued),
            "running" => Some(JobState::Running),
            "succeeded" => Some(JobState::Succeeded),
            "failed" => Some(JobState::Failed),
            "cancelled" => Some(JobState::Cancelled),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SubmitJob {
    /// The kind and its parameters: `"kind": "sample", "params": {...}` (see [`jobs::JobSpec`]).
    #[serde(flatten)]
    pub spec: jobs::JobSpec,
    pub experiment_id: Option<i64>,
    /// Higher runs first (-100..=100; default 0).
    #[serde(default)]
    pub priority: i16,
    /// Attempts before the job fails for good (1..=20; default 3).
    pub max_attempts: Option<i32>,
    /// Labels for finding and comparing runs (see [`check_tags`]).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Show this run (its logs, metrics, samples and checkpoints) to everyone who sees its shared
    /// experiment even though it derives from a private dataset: the owner's explicit consent. Default
    /// false: such a run stays visible to its owner (and the dataset's) only.
    #[serde(default)]
    pub publish_private: bool,
    /// Jobs that must succeed first (ids of jobs the caller may see): the job is claimed only after them,
    /// and is cancelled if one of them fails or is cancelled (retrying that one queues it again).
    #[serde(default)]
    pub depends_on: Vec<i64>,
}

/// A change to a job: only the fields given change.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct JobPatch {
    /// The job's whole tag list (see [`check_tags`]).
    pub tags: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Progress {
    pub step: i64,
    pub total: i64,
    pub message: String,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Job {
    pub id: i64,
    pub kind: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub params: serde_json::Value,
    pub state: JobState,
    pub owner: Option<String>,
    pub experiment_id: Option<i64>,
    pub priority: i16,
    pub attempt: i32,
    pub max_attempts: i32,
    pub cancel_requested: bool,
    #[serde(default)]
    pub tags: Vec<String>,
    pub error: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub result: Option<serde_json::Value>,
    pub progress: Option<Progress>,
    /// The jobs it waits on (see [`SubmitJob::depends_on`]).
    #[serde(default)]
    pub depends_on: Vec<i64>,
    /// The pipeline (a `reproduce` job) this job is a stage of, and the stage's name in it
    /// (`seed-0/pretrain-rep`); `GET /jobs?pipeline=ID` lists a pipeline's stages.
    #[serde(default)]
    pub pipeline_id: Option<i64>,
    #[serde(default)]
    pub stage: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A page of jobs, newest first; pass `next_before` as `before` for the next page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct JobPage {
    pub jobs: Vec<Job>,
    pub next_before: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct LogLine {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub level: String,
    pub message: String,
}

/// One metric's points, ordered by step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct MetricSeries {
    pub name: String,
    pub steps: Vec<i64>,
    pub values: Vec<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Artifact {
    pub id: i64,
    pub job_id: Option<i64>,
    /// `checkpoint`, `sample_image`, `grid`, `samples`, `latents`, ...
    pub kind: String,
    /// The object's key in the store (the last part is its file name).
    pub key: String,
    pub media_type: String,
    pub size: i64,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub meta: serde_json::Value,
    /// Where to download it.
    pub url: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What the server-sent event stream of a job sends: the job whenever it changes (`event: job`), until it
/// is final.
pub type JobEvent = Job;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct JobKind {
    pub kind: String,
}

/// A named run configuration that `pretrain` jobs start from (`{"run": {"preset": name, ...}}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Preset {
    pub name: String,
    /// The whole configuration: model, diffusion, training (steps, batch size, learning rate, ...).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub config: serde_json::Value,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Health {
    pub status: String,
    pub version: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct NewDataset {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Visible to the whole team, or (default) to its owner only: scans are medical data.
    #[serde(default)]
    pub shared: bool,
    /// Keep uploaded files' names as the scans' names. Default false: each scan gets a pseudonym, as
    /// clinical exports are often named after the patient.
    #[serde(default)]
    pub keep_file_names: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Dataset {
    pub id: i64,
    pub owner: String,
    pub name: String,
    pub description: String,
    pub shared: bool,
    /// Whether scans keep their uploaded file names (else pseudonyms).
    pub keep_file_names: bool,
    /// Slices in it.
    pub scans: i64,
    /// Slices with any hematoma marker.
    pub hematoma: i64,
    /// Distinct (pseudonymous) patients its slices name.
    pub patients: i64,
    /// Distinct series its slices belong to (a DICOM series, a NIfTI volume, or as a labels file names them).
    pub series: i64,
    /// Slices uploaded without a label (no labels row): pre-training uses them, labelled jobs refuse them.
    pub unlabelled: i64,
    pub created_at: DateTime<Utc>,
}

/// One CT slice with its site and the four hematoma markers (the label is "any marker").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Scan {
    pub id: i64,
    pub dataset_id: i64,
    /// The scan's name: a pseudonym (`scan-` and 12 hex digits, shared by the slices of one file), or the
    /// uploaded file's name in a dataset that keeps names.
    pub source_name: String,
    /// Its index in a multi-slice file (NIfTI volume, multi-frame DICOM).
    pub slice_index: i32,
    /// dicom, nifti or image.
    pub format: String,
    pub rows: i32,
    pub columns: i32,
    /// hounsfield (CT values) or grey (an 8-bit picture).
    pub unit: String,
    pub site: i32,
    pub hypodensity: bool,
    pub margin_irregularity: bool,
    pub blend_sign: bool,
    pub fluid_level: bool,
    pub hematoma: bool,
    /// Whether a de-identified DICOM of it is stored.
    pub has_dicom: bool,
    /// The patient's pseudonym (`ANON-` and 16 hex digits), when the scan or its labels row names one.
    pub patient: Option<String>,
    /// The study's and the series' pseudonymous UIDs.
    pub study: Option<String>,
    pub series: Option<String>,
    /// Its number in the series (InstanceNumber, or its index in a volume from 1).
    pub instance: Option<i64>,
    /// Its position along the patient's axis, mm (ImagePositionPatient's z).
    pub position_mm: Option<f64>,
    /// False for a scan uploaded without a label: its markers say nothing until it is labelled.
    pub labelled: bool,
    /// The slice as a windowed PNG (`?window=brain&size=128`).
    pub image_url: String,
    pub created_at: DateTime<Utc>,
}

/// A label edit: only the fields given change.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ScanPatch {
    pub site: Option<i32>,
    pub hypodensity: Option<bool>,
    pub margin_irregularity: Option<bool>,
    pub blend_sign: Option<bool>,
    pub fluid_level: Option<bool>,
    /// Giving a marker labels the scan; `false` makes it unlabelled again.
    #[serde(default)]
    pub labelled: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RefusedFile {
    pub file: String,
    /// `unreadable` (not a scan RepDiff can read; the error says why) or `payload_too_large`.
    pub code: String,
    pub error: String,
}

/// What an upload did, file by file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct UploadReport {
    pub accepted: Vec<Scan>,
    pub refused: Vec<RefusedFile>,
    /// Slices already in the dataset (same content), not stored again.
    pub duplicates: usize,
}

/// Counts of one part of a split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SplitPart {
    /// pretrain, train, validation or test.
    pub part: String,
    /// Labelled slices without and with hematoma, and slices without a label.
    pub no_hematoma: i64,
    pub hematoma: i64,
    pub unlabelled: i64,
    /// Patients with slices in this part (a slice that names no patient, study or series counts as one).
    pub patients: i64,
    /// Of those, patients with a hematoma slice in this part.
    pub patients_with_hematoma: i64,
}

/// A dataset's split (the paper's tables 1 and 2): the downstream site's patients (or slices) 8:1:1 into
/// train/validation/test stratified by label, every other site's into pre-training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SplitSummary {
    /// None: a single-site design (pre-training reads the training part).
    pub downstream_site: Option<usize>,
    pub seed: u64,
    pub unit: jobs::SplitUnit,
    /// What the unit means for scores made from this split.
    pub caveat: String,
    /// Patients with slices in more than one of train, validation and test (0 for a patient split).
    pub patients_in_two_parts: i64,
    /// Slices that name no patient, study or series (each its own patient).
    pub slices_without_patient: i64,
    pub parts: Vec<SplitPart>,
}

/// One series of a dataset, its slices in order (instance number, then position, then upload).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Series {
    /// The series' pseudonymous UID; a scan that names no series is a series of its own, `scan-ID`.
    pub series: String,
    pub patient: Option<String>,
    pub study: Option<String>,
    pub site: i32,
    /// Slices, and of them with hematoma.
    pub slices: i64,
    pub hematoma: i64,
    /// Its scans' ids, in slice order: open one by one as a stack.
    pub scan_ids: Vec<i64>,
}

/// An edit of a dataset or an experiment: only the fields given change. Sharing a dataset makes its
/// scans visible to the whole team; sharing an experiment, its jobs and their outputs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ResourcePatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub shared: Option<bool>,
    /// Datasets only: keep the names of files uploaded from now on (see [`NewDataset`]).
    pub keep_file_names: Option<bool>,
}

/// One metric of a run, summarised for a comparison table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct MetricSummary {
    pub name: String,
    pub points: i64,
    pub last_step: i64,
    pub last: f64,
    pub min: f64,
    pub min_step: i64,
    pub max: f64,
    pub max_step: i64,
}

/// A job with its metrics summarised: a row of the runs table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Run {
    pub job: Job,
    pub metrics: Vec<MetricSummary>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RunPage {
    pub runs: Vec<Run>,
    pub next_before: Option<i64>,
}

/// Classification quality at one timestep: class 1 (haematoma) is the positive class of a two-class
/// problem; macro averages for more classes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ClassMetrics {
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// `confusion[truth][predicted]`.
    pub confusion: Vec<Vec<usize>>,
}

/// One timestep of a classifier sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SweepRow {
    pub t: usize,
    pub metrics: ClassMetrics,
    /// Mean model forward passes per image (noise draws x classes).
    pub forwards_per_image: f64,
}

/// Percentile bootstrap intervals of the metrics over the test images: `[low, high]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Intervals {
    /// Coverage, e.g. 0.95.
    pub level: f64,
    pub resamples: usize,
    pub accuracy: [f64; 2],
    pub precision: [f64; 2],
    pub recall: [f64; 2],
    pub f1: [f64; 2],
}

/// A sequentially stopped run against the fixed noise budget on the same test images and noise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Agreement {
    /// Draws per image of the fixed run.
    pub fixed_draws: usize,
    /// The fraction of images whose sequential decision is the fixed run's.
    pub agreement: f64,
    /// The sequential run's forward passes as a fraction of the fixed run's.
    pub forwards_fraction: f64,
    pub fixed_accuracy: f64,
    /// Other stopping rules and error rates replayed on the same draws.
    #[serde(default)]
    pub alternatives: Vec<StoppingAlternative>,
}

/// What a stopping rule at an error rate would have agreed with the fixed budget and spent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct StoppingAlternative {
    /// `predictive` (the budget's remaining draws cannot overturn the lead) or `confidence` (a
    /// Bonferroni-corrected t test).
    pub rule: String,
    pub alpha: f64,
    pub agreement: f64,
    pub forwards_fraction: f64,
    pub accuracy: f64,
}

/// The test data at the chosen timestep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TestResult {
    pub t: usize,
    pub metrics: ClassMetrics,
    /// Mean model forward passes per image (noise draws x classes).
    pub forwards_per_image: f64,
    #[serde(default)]
    pub intervals: Option<Intervals>,
    /// The predicted class of every test image, in the data's order.
    #[serde(default)]
    pub predicted: Vec<u32>,
    /// The noise draws every test image took.
    #[serde(default)]
    pub draws: Vec<usize>,
    #[serde(default)]
    pub agreement: Option<Agreement>,
}

/// The result of a `classify` job: the validation sweep, the timestep chosen on it (best F1), and the
/// test data at that timestep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ClassifyReport {
    pub chosen_t: usize,
    pub validation: Vec<SweepRow>,
    pub test: Option<TestResult>,
}

/// The test data of a `probe` job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ProbeTest {
    pub metrics: ClassMetrics,
    pub intervals: Intervals,
    pub predicted: Vec<u32>,
}

/// The result of a `probe` job: the L2 strength chosen on validation, its validation metrics, and the
/// test metrics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ProbeReport {
    /// What was probed: `encoder` (a representation model's) or `dinov2-vits14-<input size>`; empty in
    /// results from before DINOv2 (the encoder).
    #[serde(default)]
    pub features: String,
    pub lambda: f64,
    pub validation: ClassMetrics,
    pub test: Option<ProbeTest>,
}

/// The result of a `supervised` job: the baseline trained from scratch, its epoch chosen on validation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SupervisedReport {
    /// The network, in words (`a ViT (depth 12, width 768, 12 heads, patch 2)`).
    pub architecture: String,
    pub parameters: usize,
    pub epochs: usize,
    /// The epoch whose weights were kept (best validation F1, then accuracy).
    pub best_epoch: usize,
    /// Validation metrics at that epoch.
    pub validation: ClassMetrics,
    pub test: Option<ProbeTest>,
}

/// One generated set's metrics against the real images (an `evaluate` job's row of Table 5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct EvaluatedSet {
    /// The model's name (given, or its checkpoint).
    pub name: String,
    /// The checkpoint artifact the samples came from.
    pub checkpoint: String,
    pub generated: usize,
    /// Frechet distance of pool_3 features: FID when `pretrained`, else a random network's FD.
    pub fid: f64,
    /// Frechet distance of the spatial features: sFID when `pretrained`.
    pub sfid: f64,
    pub inception_score: f64,
    pub inception_score_std: f64,
    pub precision: f64,
    pub recall: f64,
    pub density: f64,
    pub coverage: f64,
}

/// One set's counts in a [`FeatureHistogram`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SetHistogram {
    pub name: String,
    pub counts: Vec<u32>,
    /// Histogram intersection with the real set (1: same distribution on the line; 0: disjoint).
    pub overlap: f64,
}

/// Real and generated features embedded together by 1-D t-SNE, counted per set in equal-width bins
/// (Figs. 7/9).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct FeatureHistogram {
    /// The t-SNE position at the centre of each bin.
    pub centres: Vec<f64>,
    /// The real set first, then each model.
    pub sets: Vec<SetHistogram>,
}

/// The result of an `evaluate` job: generation metrics of each model against the real images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct EvaluateReport {
    /// The feature extractor: `inception-v3` (pretrained: FID, sFID, IS) or a random network's label.
    pub extractor: String,
    pub pretrained: bool,
    /// Real images evaluated against.
    pub real: usize,
    pub results: Vec<EvaluatedSet>,
    #[serde(default)]
    pub histogram: Option<FeatureHistogram>,
}

/// The result of a `reproduce` job: the paper's whole pipeline's tables (`repdiff reproduce`'s
/// `table6.json`) and its Markdown report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ReproduceReport {
    /// The preset the pipeline ran (`tiny-cpu`, `paper`).
    pub preset: String,
    pub seed: u64,
    pub pretrain_steps: usize,
    pub finetune_steps: usize,
    /// Table 6: every method's test result (the diffusion classifiers first).
    pub table6: Vec<Table6Row>,
    /// Each fine-tuned model's class-conditional samples as the other model's classifier sorts them.
    #[serde(default)]
    pub class_fidelity: Vec<FidelityRow>,
    /// Table 5: both pre-trained models' generation metrics; none when left out.
    #[serde(default)]
    pub table5: Option<Vec<Table5Row>>,
    #[serde(default)]
    pub timings_s: Vec<StepTiming>,
    pub total_s: f64,
    /// The whole report as Markdown (the tables, the validation sweeps).
    #[serde(default)]
    pub markdown: String,
    /// A run over several seeds (`--seeds`): every method's test result per seed and its spread. The rest
    /// of the report is then the first seed's.
    #[serde(default)]
    pub across_seeds: Option<AcrossSeeds>,
}

/// One number measured once per seed: the values in the seeds' order, their mean and sample standard
/// deviation (0 for one seed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Spread {
    pub values: Vec<f64>,
    pub mean: f64,
    pub sd: f64,
}

impl Spread {
    pub fn new(values: Vec<f64>) -> Self {
        let n = values.len() as f64;
        let mean = if values.is_empty() { f64::NAN } else { values.iter().sum::<f64>() / n };
        let sd = if values.len() < 2 {
            0.0
        } else {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        };
        Spread { values, mean, sd }
    }

    /// Fractions as percentages, mean ± sd: `78.0 ± 6.5`.
    pub fn percent(&self) -> String {
        format!("{:.1} ± {:.1}", self.mean * 100.0, self.sd * 100.0)
    }

    /// Each value as a percentage in the seeds' order, `sign` with an explicit sign: `85.4 / 73.1 / 75.6`.
    pub fn percent_each(&self, sign: bool) -> String {
        let one = |v: &f64| if sign { format!("{:+.1}", v * 100.0) } else { format!("{:.1}", v * 100.0) };
        self.values.iter().map(one).collect::<Vec<_>>().join(" / ")
    }

    /// Mean ± sd with three decimals (generation metrics): `13.900 ± 9.200`.
    pub fn plain(&self) -> String {
        format!("{:.3} ± {:.3}", self.mean, self.sd)
    }
}

/// One Table 6 method over the seeds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SeedsRow {
    pub method: String,
    /// The diffusion classifier's timestep of each seed, chosen on its validation part.
    pub chosen_t: Vec<Option<usize>>,
    pub accuracy: Spread,
    pub f1: Spread,
}

/// The paper's comparison over the seeds: the representation-pre-trained diffusion classifier's test
/// accuracy minus the unconditionally pre-trained one's, seed by seed (a paired difference: both share
/// the seed's phantoms, split and noise).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct PairedDifference {
    pub difference: Spread,
    /// A 95% Student t interval of the mean difference (none for one seed).
    pub interval: Option<[f64; 2]>,
    /// In how many seeds the representation pre-training came out ahead.
    pub ahead: usize,
}

/// One pre-trained model's generation metrics (Table 5) over the seeds, in the order fid, sfid,
/// inception_score, precision, recall, density, coverage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SeedsTable5Row {
    pub name: String,
    pub extractor: String,
    pub metrics: Vec<Spread>,
}

/// `repdiff reproduce --seeds N`: the pipeline run once per seed, what each seed gave, and the spread.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AcrossSeeds {
    pub seeds: Vec<u64>,
    /// The methods every seed's Table 6 has, in its order.
    pub table6: Vec<SeedsRow>,
    pub classifier_difference: PairedDifference,
    #[serde(default)]
    pub table5: Vec<SeedsTable5Row>,
}

/// One method of Table 6 on the test part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Table6Row {
    pub method: String,
    /// The diffusion classifier's timestep, chosen on validation.
    #[serde(default)]
    pub chosen_t: Option<usize>,
    pub metrics: ClassMetrics,
    #[serde(default)]
    pub intervals: Option<Intervals>,
    #[serde(default)]
    pub forwards_per_image: Option<f64>,
    #[serde(default)]
    pub agreement: Option<Agreement>,
    /// A linear probe's regularisation, chosen on validation.
    #[serde(default)]
    pub lambda: Option<f64>,
}

/// How one judge classifier sorts one fine-tuned model's samples at one guidance scale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct FidelityRow {
    /// `rep` or `uncond`: the pre-training of the model that drew the samples, and of the judge's.
    pub samples_of: String,
    pub guidance: f64,
    pub judge: String,
    pub t: usize,
    /// Per class, the fraction of its samples the judge calls that class.
    pub samples_per_class: Vec<f64>,
    pub samples_confusion: Vec<Vec<usize>>,
    /// The same on the real test slices.
    pub real_test_per_class: Vec<f64>,
}

/// One pre-trained model's generation metrics in Table 5.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Table5Row {
    pub name: String,
    /// `inception-v3` (the field's FID) or a random network's label.
    pub extractor: String,
    pub real: usize,
    pub generated: usize,
    pub fid: f64,
    pub sfid: f64,
    pub inception_score: f64,
    pub precision: f64,
    pub recall: f64,
    pub density: f64,
    pub coverage: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct StepTiming {
    pub step: String,
    pub seconds: f64,
}

/// Checks the name of a dataset or an experiment (`what`): 1 to 200 characters, not only spaces.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.trim().is_empty() || name.chars().count() > 200 {
        Err(format!("{what} names are 1-200 characters, not only spaces"))
    } else {
        Ok(())
    }
}

/// Tidies a run's tags: trimmed, blanks dropped, duplicates dropped (first kept); each 1-40 characters
/// without commas, at most 20.
pub fn check_tags(tags: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for tag in tags {
        let tag = tag.trim();
        if tag.is_empty() || out.iter().any(|t| t == tag) {
            continue;
        }
        if tag.chars().count() > 40 || tag.contains(',') {
            return Err(format!("tag {tag:?}: tags are 1-40 characters without commas"));
        }
        out.push(tag.to_string());
    }
    if out.len() > 20 {
        return Err("at most 20 tags".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_tidied_and_checked() {
        let tags = ["  baseline ", "", "lr-sweep", "baseline"].map(String::from);
        assert_eq!(check_tags(&tags).unwrap(), ["baseline", "lr-sweep"]);
        assert!(check_tags(&["a,b".to_string()]).is_err());
        assert!(check_tags(&["x".repeat(41)]).is_err());
        let many: Vec<String> = (0..21).map(|i| format!("t{i}")).collect();
        assert!(check_tags(&many).is_err());
    }

    #[test]
    fn a_spread_is_the_sample_standard_deviation_and_prints_as_percentages() {
        let s = Spread::new(vec![0.854, 0.731, 0.756]);
        assert!((s.mean - 0.780_333).abs() < 1e-6);
        assert!((s.sd - 0.065_010_256).abs() < 1e-8, "{}", s.sd);
        assert_eq!(s.percent(), "78.0 ± 6.5");
        assert_eq!(s.percent_each(false), "85.4 / 73.1 / 75.6");
        assert_eq!(Spread::new(vec![0.064, -0.026]).percent_each(true), "+6.4 / -2.6");
        assert_eq!(Spread::new(vec![280.0]).plain(), "280.000 ± 0.000");
        assert!(Spread::new(Vec::new()).mean.is_nan());
    }
}
