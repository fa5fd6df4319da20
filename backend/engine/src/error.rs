//! The engine's one error type. Every message names what was wrong (a shape, a tensor, a file), so a
//! user can act on it without reading the code.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error("shape mismatch for {what}: expected {expected}, got {got:?}")]
    Shape { what: String, expected: String, got: Vec<usize> },

    #[error("unknown model name {0:?}: expected DiT-{{S,B,L,XL}}/{{2,4,8}}, e.g. \"DiT-B/2\"")]
    UnknownModel(String),

    #[error("unknown preset {0:?}: expected one of tiny-cpu, paper")]
    UnknownPreset(String),

    #[error("invalid configuration: {0}")]
    Config(String),

    #[error("invalid timestep respacing {spec:?}: {reason}")]
    Respacing { spec: String, reason: String },

    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },

    #[error("parameter {name}: {reason}")]
    Param { name: String, reason: String },

    #[error("data: {0}")]
    Data(String),

    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("scan {path}: {reason}")]
    Scan { path: PathBuf, reason: String },

    #[error("image {path}: {source}")]
    Image { path: PathBuf, source: image::ImageError },

    #[error("cancelled at step {step}")]
    Cancelled { step: usize },

    #[error("training diverged at step {step}: loss is {loss}")]
    Diverged { step: usize, loss: f32 },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.into(), reason: reason.into() }
    }
}

/// Checks that `tensor` has exactly `expected` dims, naming `what` in the error.
pub fn expect_shape(what: &str, tensor: &candle_core::Tensor, expected: &[usize]) -> Result<()> {
    if tensor.dims() != expected {
        return Err(Error::Shape {
            what: what.to_string(),
            expected: format!("{expected:?}"),
            got: tensor.dims().to_vec(),
        });
    }
    Ok(())
}
