//! Opening the object store named by the configuration.
//!
//! All backends go through the `object_store` crate, so the rest of the
//! origin sees one `Arc<dyn ObjectStore>` whatever is behind it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::{ClientConfigKey, ObjectStore, RetryConfig};

use super::faults::FaultyStore;
use super::StoreError;

/// Which object store backs the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// Files under `{data}/store` (the embedded default).
    Fs,
    /// Any S3-compatible service, configured by `AWS_*` variables.
    S3,
    /// Process memory only: nothing survives a restart (tests, demos).
    Memory,
}

/// What opening the store needs to know.
#[derive(Debug, Clone)]
pub(crate) struct StoreSettings {
    /// The backend.
    pub(crate) kind: StoreKind,
    /// The embedded store's root (`{data}/store`), for [`StoreKind::Fs`].
    pub(crate) root: PathBuf,
    /// Longest wait for one store request.
    pub(crate) timeout: Duration,
    /// Wrap the store for fault injection, obeying this control file.
    pub(crate) fault_file: Option<PathBuf>,
}

/// Opens the configured store, creating the local directory if needed, and
/// wraps it for fault injection when a fault file is given.
pub(crate) fn open(settings: &StoreSettings) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let store = open_backend(settings)?;
    Ok(match &settings.fault_file {
        Some(control) => {
            tracing::warn!(control = %control.display(), "fault injection is ON: store operations obey the control file");
            Arc::new(FaultyStore::new(store, control.clone()))
        }
        None => store,
    })
}

fn open_backend(settings: &StoreSettings) -> Result<Arc<dyn ObjectStore>, StoreError> {
    Ok(match settings.kind {
        StoreKind::Fs => {
            let dir = &settings.root;
            std::fs::create_dir_all(dir).map_err(StoreError::io("creating", dir))?;
            Arc::new(LocalFileSystem::new_with_prefix(dir)?)
        }
        StoreKind::S3 => {
            // The flusher retries failed PUTs itself, with its own backoff,
            // and bounds each request by --store-timeout-ms. The client's
            // own retries (three minutes by default) would hold a whole
            // flush round inside one request, so they are kept short.
            let timeout = settings.timeout;
            let retry = RetryConfig {
                max_retries: 2,
                retry_timeout: timeout,
                ..RetryConfig::default()
            };
            Arc::new(
                AmazonS3Builder::from_env()
                    .with_retry(retry)
                    .with_config(
                        AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                        format!("{}ms", timeout.as_millis()),
                    )
                    .build()?,
            )
        }
        StoreKind::Memory => Arc::new(InMemory::new()),
    })
}
