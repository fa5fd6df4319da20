//! Artifact storage (scans, latents, checkpoints, samples, reports) through the `object_store` crate: a
//! local directory by default, an S3-compatible bucket (feature `s3`) when workers run on several machines.
//! The database holds each artifact's key and metadata; the bytes live here.
//!
//! The engine reads and writes files, so jobs move artifacts between the store and a local scratch folder:
//! [`Storage::download`] and [`Storage::upload`] stream in chunks (checkpoints are gigabytes) and never
//! leave a half-written file under its final name.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("artifact {0} does not exist")]
    NotFound(String),
    #[error("invalid artifact key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error("storage {url}: {reason}")]
    Config { url: String, reason: String },
    #[error("artifact store: {0}")]
    Store(#[from] object_store::Error),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

pub type Result<T> = std::result::Result<T, StorageError>;

fn io_error(path: &Path, source: std::io::Error) -> StorageError {
    StorageError::Io { path: path.display().to_string(), source }
}

/// Chunk size of streamed uploads (also the part size of S3 multipart uploads, which must be >= 5 MiB).
const CHUNK: usize = 8 << 20;

/// Where artifacts live. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    url: String,
}

impl Storage {
    /// A directory on this machine (created if missing).
    pub fn local(root: &Path) -> Result<Storage> {
        std::fs::create_dir_all(root).map_err(|e| io_error(root, e))?;
        let root = root.canonicalize().map_err(|e| io_error(root, e))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(&root)?.with_automatic_cleanup(true);
        Ok(Storage { store: Arc::new(store), url: format!("file://{}", root.display()) })
    }

    /// `file:///path`, a plain path, or (with the `s3` feature) `s3://bucket/prefix`, configured from the
    /// usual `AWS_*` environment variables (`AWS_ENDPOINT` for MinIO and other S3-compatible stores).
    pub fn from_url(url: &str) -> Result<Storage> {
        if let Some(path) = url.strip_prefix("file://") {
            return Storage::local(Path::new(path));
        }
        if url.starts_with("s3://") {
            return Self::s3(url);
        }
        if url.contains("://") {
            return Err(StorageError::Config {
                url: url.into(),
                reason: "unsupported scheme: use a path, file:///path or s3://bucket/prefix".into(),
            });
        }
        Storage::local(Path::new(url))
    }

    #[cfg(feature = "s3")]
    fn s3(url: &str) -> Result<Storage> {
        let rest = &url["s3://".len()..];
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        // HTTPS through rustls with ring (the build's only provider); an error only says one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket).build()?;
        let store: Arc<dyn ObjectStore> = if prefix.trim_matches('/').is_empty() {
            Arc::new(store)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(store, prefix.trim_matches('/')))
        };
        Ok(Storage { store, url: url.into() })
    }

    #[cfg(not(feature = "s3"))]
    fn s3(url: &str) -> Result<Storage> {
        Err(StorageError::Config {
            url: url.into(),
            reason: "this build has no S3 support: it was built with `--no-default-features`; rebuild repdiff with `--features s3`".into(),
        })
    }

    /// Where the store is, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn key(key: &str) -> Result<Key> {
        let invalid = |reason: &str| StorageError::InvalidKey { key: key.into(), reason: reason.into() };
        if key.is_empty() || key.starts_with('/') || key.ends_with('/') {
            return Err(invalid("keys are relative paths like jobs/12/checkpoint.safetensors"));
        }
        Key::parse(key).map_err(|e| invalid(&e.to_string()))
    }

    fn not_found(key: &str, error: object_store::Error) -> StorageError {
        match error {
            object_store::Error::NotFound { .. } => StorageError::NotFound(key.into()),
            other => StorageError::Store(other),
        }
    }

    pub async fn put_bytes(&self, key: &str, bytes: impl Into<Bytes>) -> Result<()> {
        self.store.put(&Self::key(key)?, PutPayload::from_bytes(bytes.into())).await?;
        Ok(())
    }

    pub async fn get_bytes(&self, key: &str) -> Result<Bytes> {
        let result = self.store.get(&Self::key(key)?).await.map_err(|e| Self::not_found(key, e))?;
        Ok(result.bytes().await?)
    }

    /// Removes the object (nothing when there is none).
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&Self::key(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The object's size, or `None` if it does not exist.
    pub async fn size(&self, key: &str) -> Result<Option<u64>> {
        match self.store.head(&Self::key(key)?).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The object as a stream of chunks (for HTTP downloads).
    pub async fn stream(
        &self,
        key: &str,
    ) -> Result<(u64, futures_util::stream::BoxStream<'static, object_store::Result<Bytes>>)> {
        let result = self.store.get(&Self::key(key)?).await.map_err(|e| Self::not_found(key, e))?;
        Ok((result.meta.size, result.into_stream()))
    }

    /// Streams a local file into the store under `key`; returns its size. Readers see the old object or
    /// the whole new one, never a part.
    pub async fn upload(&self, local: &Path, key: &str) -> Result<u64> {
        let key = Self::key(key)?;
        let mut file = tokio::fs::File::open(local).await.map_err(|e| io_error(local, e))?;
        let size = file.metadata().await.map_err(|e| io_error(local, e))?.len();
        if size as usize <= CHUNK {
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes).await.map_err(|e| io_error(local, e))?;
            self.store.put(&key, PutPayload::from(bytes)).await?;
            return Ok(size);
        }
        let mut upload = WriteMultipart::new_with_chunk_size(self.store.put_multipart(&key).await?, CHUNK);
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match file.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    upload.abort().await.ok();
                    return Err(io_error(local, e));
                }
            };
            // At most a few chunks in flight: memory stays bounded whatever the file's size.
            upload.wait_for_capacity(4).await?;
            upload.write(&buf[..n]);
        }
        upload.finish().await?;
        Ok(size)
    }

    /// Streams the object `key` to a local file (written beside it, then renamed into place).
    pub async fn download(&self, key: &str, local: &Path) -> Result<u64> {
        let result = self.store.get(&Self::key(key)?).await.map_err(|e| Self::not_found(key, e))?;
        if let Some(dir) = local.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.map_err(|e| io_error(dir, e))?;
        }
        let partial = local.with_extension("partial");
        let mut file = tokio::fs::File::create(&partial).await.map_err(|e| io_error(&partial, e))?;
        let mut stream = result.into_stream();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            size += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(|e| io_error(&partial, e))?;
        }
        file.flush().await.map_err(|e| io_error(&partial, e))?;
        drop(file);
        tokio::fs::rename(&partial, local).await.map_err(|e| io_error(local, e))?;
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small and multipart (larger than one chunk) objects round-trip byte for byte; bad keys are refused.
    async fn round_trip(storage: &Storage, dir: &Path) {
        storage.put_bytes("a/b.txt", &b"hello"[..]).await.unwrap();
        assert_eq!(&storage.get_bytes("a/b.txt").await.unwrap()[..], b"hello");
        assert_eq!(storage.size("a/b.txt").await.unwrap(), Some(5));
        assert_eq!(storage.size("a/missing").await.unwrap(), None);
        assert!(matches!(storage.get_bytes("a/missing").await, Err(StorageError::NotFound(_))));

        // Larger than one chunk: goes through the multipart path, and comes back byte for byte.
        let big: Vec<u8> = (0..CHUNK * 2 + 12345).map(|i| (i * 31 % 251) as u8).collect();
        let local = dir.join("big.bin");
        std::fs::write(&local, &big).unwrap();
        assert_eq!(storage.upload(&local, "jobs/1/big.bin").await.unwrap(), big.len() as u64);
        let back = dir.join("back/big.bin");
        assert_eq!(storage.download("jobs/1/big.bin", &back).await.unwrap(), big.len() as u64);
        assert!(std::fs::read(&back).unwrap() == big);

        for bad in ["", "/abs", "dir/", "a/../b"] {
            assert!(matches!(storage.put_bytes(bad, &b"x"[..]).await, Err(StorageError::InvalidKey { .. })), "{bad}");
        }
    }

    #[tokio::test]
    async fn round_trips_small_and_chunked_files_and_refuses_bad_keys() {
        let dir = std::env::temp_dir().join(format!("repdiff-storage-{}", std::process::id()));
        let storage = Storage::local(&dir.join("store")).unwrap();
        round_trip(&storage, &dir).await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// An S3 store opens with its HTTPS client ready (rustls on ring, the build's one crypto provider),
    /// touching no network until it is used.
    #[cfg(feature = "s3")]
    #[test]
    fn an_s3_store_opens_with_an_https_client() {
        let storage = Storage::from_url("s3://some-bucket/runs").unwrap();
        assert_eq!(storage.url(), "s3://some-bucket/runs");
    }

    /// The same against an S3-compatible store: `REPDIFF_TEST_S3_URL` (`s3://bucket/prefix`, the bucket
    /// existing) and the `AWS_*` variables of `from_url`. scripts/test-s3 runs it against a local moto server.
    #[cfg(feature = "s3")]
    #[tokio::test]
    #[ignore = "needs an S3-compatible server: scripts/test-s3 starts one and runs this test"]
    async fn round_trips_through_an_s3_compatible_store() {
        let url = std::env::var("REPDIFF_TEST_S3_URL").expect(
            "set REPDIFF_TEST_S3_URL=s3://bucket/prefix and AWS_ENDPOINT etc. (see scripts/test-s3) for S3 tests",
        );
        let prefix = format!("{}/run-{}", url.trim_end_matches('/'), std::process::id());
        let storage = Storage::from_url(&prefix).unwrap();
        let dir = std::env::temp_dir().join(format!("repdiff-storage-s3-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        round_trip(&storage, &dir).await;
        // Objects live under the prefix: another prefix in the same bucket does not see them.
        let other = Storage::from_url(&format!("{prefix}-other")).unwrap();
        assert_eq!(other.size("a/b.txt").await.unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
