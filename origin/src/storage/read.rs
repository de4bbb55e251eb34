//! The one way a stored record is read and decoded: by the engine after an
//! eviction, by the warm load, by the flusher checking what it would
//! replace, and by failover reads.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, UpdateVersion};
use prefold_core::envelope::object_path;
use prefold_core::Key;

use super::StoreError;
use crate::base::{Object, Slot};

/// A record as the store holds it, with the store's version tag of it.
pub(crate) struct Record {
    /// What a conditional `Update` of this record names.
    pub(crate) tag: UpdateVersion,
    /// The encoded envelope.
    pub(crate) bytes: Bytes,
}

impl Record {
    /// The object in the record.
    pub(crate) fn decode(self, key: &Key) -> Result<Object, StoreError> {
        decode(key, self.bytes)
    }
}

/// Decodes a record of `key`, sharing the body with the record's buffer.
pub(crate) fn decode(key: &Key, record: Bytes) -> Result<Object, StoreError> {
    Object::decode(record).map_err(|source| StoreError::Corrupt {
        key: key.to_string(),
        source,
    })
}

/// The record at `path`, or `None` if the store has none.
pub(crate) async fn read_record(
    store: &dyn ObjectStore,
    path: &Path,
) -> Result<Option<Record>, StoreError> {
    match store.get(path).await {
        Ok(result) => {
            let tag = UpdateVersion {
                e_tag: result.meta.e_tag.clone(),
                version: result.meta.version.clone(),
            };
            let bytes = result.bytes().await?;
            Ok(Some(Record { tag, bytes }))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The version of a key the store holds, tombstone or not (`None` if it
/// holds none).
pub(crate) async fn read_object(store: &dyn ObjectStore, key: &Key) -> Result<Slot, StoreError> {
    let path = Path::from(object_path(key));
    match read_record(store, &path).await? {
        Some(record) => Ok(Some(Arc::new(record.decode(key)?))),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use object_store::memory::InMemory;
    use object_store::PutPayload;

    #[tokio::test]
    async fn reads_absent_live_and_corrupt_records() {
        let store = InMemory::new();
        let key = Key::parse("t/1").unwrap();
        assert!(read_object(&store, &key).await.unwrap().is_none());
        let live = Object::new(9, "application/json", Bytes::from_static(b"[1]"));
        let path = Path::from(object_path(&key));
        store
            .put(&path, PutPayload::from(live.encode().unwrap()))
            .await
            .unwrap();
        assert_eq!(*read_object(&store, &key).await.unwrap().unwrap(), live);
        store
            .put(&path, PutPayload::from_static(b"garbage"))
            .await
            .unwrap();
        assert!(matches!(
            read_object(&store, &key).await,
            Err(StoreError::Corrupt { .. })
        ));
    }
}
