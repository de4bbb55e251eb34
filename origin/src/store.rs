//! Opening the object store named by the configuration.
//!
//! All backends go through the `object_store` crate, so the rest of the
//! origin sees one `Arc<dyn ObjectStore>` whatever is behind it.

use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::{ClientConfigKey, ObjectStore, RetryConfig};

use crate::config::{Config, StoreKind};
use crate::error::StoreError;
use crate::faults::FaultyStore;

/// Opens the configured store, creating the local directory if needed, and
/// wraps it for fault injection when `--fault-file` is given.
pub fn open(config: &Config) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let store = open_backend(config)?;
    Ok(match &config.fault_file {
        Some(control) => {
            tracing::warn!(control = %control.display(), "fault injection is ON: store operations obey the control file");
            Arc::new(FaultyStore::new(store, control.clone()))
        }
        None => store,
    })
}

fn open_backend(config: &Config) -> Result<Arc<dyn ObjectStore>, StoreError> {
    Ok(match config.store {
        StoreKind::Fs => {
            let dir = config.data.join("store");
            std::fs::create_dir_all(&dir)
                .map_err(|e| StoreError::Open(format!("{}: {e}", dir.display())))?;
            Arc::new(LocalFileSystem::new_with_prefix(&dir)?)
        }
        StoreKind::S3 => {
            // The flusher retries failed PUTs itself, with its own backoff,
            // and bounds each request by --store-timeout-ms. The client's
            // own retries (three minutes by default) would hold a whole
            // flush round inside one request, so they are kept short.
            let timeout = config.store_timeout();
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
