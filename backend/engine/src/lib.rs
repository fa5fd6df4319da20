//! RepDiff's engine: everything that computes (models, diffusion, training, sampling, images), on candle.
//! It knows nothing of HTTP, SQL or jobs; every entry point takes a [`candle_core::Device`].

pub mod autoencoder;
pub mod checkpoint;
pub mod classify;
pub mod config;
pub mod data;
pub mod dataset;
pub mod device;
pub mod diffusion;
pub mod dino;
pub mod dit;
pub mod error;
pub mod explain;
pub mod finetune;
pub mod imaging;
pub mod latent_cache;
pub mod manifest;
pub mod metrics;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod phantom;
pub mod probe;
pub mod rng;
pub mod sample;
pub mod supervised;
pub mod train;

pub use candle_core::{DType, Device, Tensor};
pub use error::{Error, Result};
