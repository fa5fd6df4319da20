//! Checkpoints: one safetensors file holding named sections of tensors (`model.`, `ema.`, `optim.`, ...)
//! and string metadata (the full run config as JSON, the step, the RNG state). Writes are atomic (temp file
//! + rename) so a process killed while saving leaves the previous checkpoint intact.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use safetensors::SafeTensors;

use crate::config::RunConfig;
use crate::{Error, Result};

pub const FORMAT: &str = "repdiff-checkpoint-v1";

/// A checkpoint read back from disk.
pub struct Checkpoint {
    pub path: PathBuf,
    pub tensors: HashMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

/// Builds the tensor map and metadata of a checkpoint before writing it.
#[derive(Default)]
pub struct CheckpointWriter {
    tensors: BTreeMap<String, Tensor>,
    metadata: HashMap<String, String>,
}

impl CheckpointWriter {
    pub fn new(config: &RunConfig) -> Result<Self> {
        let mut writer = CheckpointWriter::default();
        writer.metadata.insert("format".into(), FORMAT.into());
        let json = serde_json::to_string(config).map_err(|e| Error::Config(e.to_string()))?;
        writer.metadata.insert("config".into(), json);
        Ok(writer)
    }

    pub fn section<'a>(&mut self, prefix: &str, tensors: impl IntoIterator<Item = (&'a String, &'a Tensor)>) {
        for (name, tensor) in tensors {
            self.tensors.insert(format!("{prefix}.{name}"), tensor.clone());
        }
    }

    pub fn meta(&mut self, key: &str, value: impl ToString) {
        self.metadata.insert(key.into(), value.to_string());
    }

    pub fn write(self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let tmp = path.with_extension("safetensors.tmp");
        safetensors::serialize_to_file(self.tensors.iter(), Some(self.metadata), &tmp)
            .map_err(|e| Error::checkpoint(&tmp, format!("cannot write: {e}")))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }
}

impl Checkpoint {
    pub fn read(path: &Path, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let corrupt = |e: String| Error::checkpoint(path, format!("not a readable safetensors file ({e})"));
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        if metadata.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(Error::checkpoint(
                path,
                format!("not a RepDiff checkpoint (no format = {FORMAT} in its metadata)"),
            ));
        }
        // Validates every tensor's offsets against the file length, so truncation is reported, not read.
        SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| corrupt(e.to_string()))?;
        Ok(Checkpoint { path: path.to_path_buf(), tensors, metadata })
    }

    pub fn config(&self) -> Result<RunConfig> {
        let json = self.meta("config")?;
        let config: RunConfig = serde_json::from_str(json)
            .map_err(|e| Error::checkpoint(&self.path, format!("config metadata is invalid: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    pub fn meta(&self, key: &str) -> Result<&str> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| Error::checkpoint(&self.path, format!("metadata has no {key:?}")))
    }

    pub fn meta_u64(&self, key: &str) -> Result<u64> {
        self.meta(key)?
            .parse()
            .map_err(|_| Error::checkpoint(&self.path, format!("metadata {key:?} is not an integer")))
    }

    pub fn has_section(&self, prefix: &str) -> bool {
        let dotted = format!("{prefix}.");
        self.tensors.keys().any(|k| k.starts_with(&dotted))
    }

    /// The tensors under `prefix.`, with the prefix removed.
    pub fn section(&self, prefix: &str) -> HashMap<String, Tensor> {
        let dotted = format!("{prefix}.");
        self.tensors
            .iter()
            .filter_map(|(k, t)| k.strip_prefix(&dotted).map(|rest| (rest.to_string(), t.clone())))
            .collect()
    }
}
