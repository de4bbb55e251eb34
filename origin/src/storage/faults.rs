//! Fault injection for tests and drills: an [`ObjectStore`] wrapper that fails,
//! hangs or slows down operations on demand.
//!
//! [`FaultyStore`] wraps the real store and, before every operation, re-reads a
//! small *control file* that says which operations to break and how. Fault
//! tests start real `prefold-origin` processes and rewrite that file while
//! they run, so a store outage, a hung backend or a slow backend can be
//! switched on and off without restarting anything. It exists only for tests
//! and operational drills: the origin never wraps its store in a
//! `FaultyStore` unless the operator passes `--fault-file`, and a missing or
//! empty control file injects nothing.
//!
//! # Control file
//!
//! The file holds directives `OP=FAULT`, separated by whitespace, commas or
//! newlines. `#` starts a comment that runs to the end of the line, so lines
//! starting with `#` are comments.
//!
//! `OP` is one of:
//!
//! | `OP`     | operations                                                        |
//! |----------|-------------------------------------------------------------------|
//! | `put`    | `put_opts`, `put_multipart_opts` (only the call that starts the upload) |
//! | `get`    | `get_opts` (so also `get`, `get_range`, `head`), `get_ranges`     |
//! | `list`   | `list`, `list_with_offset`, `list_with_delimiter`                 |
//! | `delete` | `delete_stream` (so also `delete`)                                |
//! | `all`    | every operation without a directive of its own, including `copy_opts` and `rename_opts` |
//! | `derive` | not a store operation: view derivation messages; `derive=drop` (or `error`) loses them, as a lost event would |
//! | `push`   | not a store operation: pushes to the edge; `push=drop` loses them (the edge's scheduled pull must repair it) |
//!
//! `FAULT` is one of:
//!
//! - `error`: fail at once with `object_store::Error::Generic { store: "faulty", .. }`
//!   (a listing yields one error; a delete yields one error per location);
//! - `hang`: never complete (a stream never yields);
//! - `delay:MS`: sleep `MS` milliseconds, then run the operation normally;
//! - `none`: no fault; exempts an operation from `all`.
//!
//! A later directive for the same `OP` overrides an earlier one. An
//! unparsable directive is ignored with a warning. The file is read on every
//! operation; if it is missing there are no faults, and if it cannot be read
//! for another reason there are no faults and a warning is logged.
//!
//! ```text
//! # the store is down for writes, reads are slow, deletes still work
//! all=error, get=delay:250
//! delete=none
//! ```
//!
//! Faults apply when an operation starts: the body of a successful `get` and
//! the parts of a started multipart upload are not affected.

use std::fmt;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, Error, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// The `store` name carried by every injected [`Error::Generic`].
const STORE: &str = "faulty";

/// An [`ObjectStore`] that injects the faults named in a control file before
/// forwarding each operation to the store it wraps.
///
/// See the [module documentation](self) for the control file's grammar.
#[derive(Debug)]
pub(crate) struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    control: Arc<PathBuf>,
}

impl FaultyStore {
    /// Wraps `inner`, taking faults from the file at `control` (re-read on
    /// every operation; it need not exist).
    pub(crate) fn new(inner: Arc<dyn ObjectStore>, control: PathBuf) -> FaultyStore {
        FaultyStore {
            inner,
            control: Arc::new(control),
        }
    }

    /// Reads the control file and injects the fault for `op`, if any.
    async fn inject(&self, op: StoreOp) -> Result<()> {
        inject(&self.control, op).await
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

/// The operation classes a directive can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StoreOp {
    Put,
    Get,
    List,
    Delete,
    /// Copy and rename: only `all` applies.
    Other,
}

impl StoreOp {
    fn name(self) -> &'static str {
        match self {
            StoreOp::Put => "put",
            StoreOp::Get => "get",
            StoreOp::List => "list",
            StoreOp::Delete => "delete",
            StoreOp::Other => "copy/rename",
        }
    }
}

/// What to do to an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Forward normally (`none`; overrides `all`).
    Pass,
    /// Fail at once.
    Error,
    /// Never complete.
    Hang,
    /// Sleep, then forward.
    Delay(Duration),
}

/// The parsed control file: a fault per operation class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Faults {
    put: Option<Fault>,
    get: Option<Fault>,
    list: Option<Fault>,
    delete: Option<Fault>,
    all: Option<Fault>,
    /// View derivation messages (`derive=drop`); `all` does not apply.
    derive: Option<Fault>,
    /// Pushes to the edge (`push=drop`); `all` does not apply.
    push: Option<Fault>,
}

impl Faults {
    /// The fault for `op`: its own directive, else `all`, else none.
    fn for_op(&self, op: StoreOp) -> Option<Fault> {
        let own = match op {
            StoreOp::Put => self.put,
            StoreOp::Get => self.get,
            StoreOp::List => self.list,
            StoreOp::Delete => self.delete,
            StoreOp::Other => None,
        };
        match own.or(self.all) {
            None | Some(Fault::Pass) => None,
            Some(fault) => Some(fault),
        }
    }
}

/// Parses a control file. Unparsable directives are ignored with a warning.
fn parse(spec: &str) -> Faults {
    let mut faults = Faults::default();
    let directives = spec
        .lines()
        .map(|line| line.split_once('#').map_or(line, |(before, _)| before))
        .flat_map(|line| line.split(|c: char| c == ',' || c.is_whitespace()))
        .filter(|directive| !directive.is_empty());
    for directive in directives {
        match parse_directive(&mut faults, directive) {
            Some((slot, fault)) => *slot = Some(fault),
            None => tracing::warn!(directive, "ignoring unparsable fault directive"),
        }
    }
    faults
}

/// Parses one `OP=FAULT` directive into the slot of `faults` it sets and the
/// fault to put there.
fn parse_directive<'f>(
    faults: &'f mut Faults,
    directive: &str,
) -> Option<(&'f mut Option<Fault>, Fault)> {
    let (op, fault) = directive.split_once('=')?;
    let slot = match op {
        "put" => &mut faults.put,
        "get" => &mut faults.get,
        "list" => &mut faults.list,
        "delete" => &mut faults.delete,
        "all" => &mut faults.all,
        "derive" => &mut faults.derive,
        "push" => &mut faults.push,
        _ => return None,
    };
    let fault = match fault {
        "none" => Fault::Pass,
        "error" | "drop" => Fault::Error,
        "hang" => Fault::Hang,
        _ => {
            let ms = fault.strip_prefix("delay:")?;
            // Digits only: `u64::from_str` would also accept a leading `+`.
            if ms.is_empty() || !ms.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Fault::Delay(Duration::from_millis(ms.parse().ok()?))
        }
    };
    Some((slot, fault))
}

/// Whether the control file says to drop view derivation messages
/// (`derive=drop`): the lost event the rolling regeneration must repair.
pub(crate) fn drops_derivations(control: &FsPath) -> bool {
    matches!(load(control).derive, Some(Fault::Error))
}

/// Whether the control file says to lose pushes to the edge (`push=drop`).
pub(crate) fn drops_pushes(control: &FsPath) -> bool {
    matches!(load(control).push, Some(Fault::Error))
}

/// Reads the control file; missing means no faults.
fn load(control: &FsPath) -> Faults {
    match std::fs::read_to_string(control) {
        Ok(spec) => parse(&spec),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Faults::default(),
        Err(e) => {
            tracing::warn!(
                control = %control.display(),
                error = %e,
                "cannot read the fault control file; injecting no faults"
            );
            Faults::default()
        }
    }
}

/// The error an `error` fault returns.
fn fault_error(op: StoreOp) -> Error {
    Error::Generic {
        store: STORE,
        source: format!("injected {} fault", op.name()).into(),
    }
}

/// Reads the control file and injects the fault for `op`: returns an error,
/// never returns, or returns after the delay. `Ok(())` means forward.
async fn inject(control: &FsPath, op: StoreOp) -> Result<()> {
    let Some(fault) = load(control).for_op(op) else {
        return Ok(());
    };
    tracing::debug!(op = op.name(), ?fault, "injecting store fault");
    match fault {
        Fault::Pass => Ok(()),
        Fault::Error => Err(fault_error(op)),
        Fault::Hang => std::future::pending().await,
        Fault::Delay(delay) => {
            tokio::time::sleep(delay).await;
            Ok(())
        }
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inject(StoreOp::Put).await?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inject(StoreOp::Put).await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inject(StoreOp::Get).await?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inject(StoreOp::Get).await?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let inner = Arc::clone(&self.inner);
        let control = Arc::clone(&self.control);
        stream::once(async move {
            match inject(&control, StoreOp::Delete).await {
                Ok(()) => inner.delete_stream(locations),
                // One error per location, as a failing backend would report.
                Err(_) => locations.map(|_| Err(fault_error(StoreOp::Delete))).boxed(),
            }
        })
        .flatten()
        .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let inner = Arc::clone(&self.inner);
        let control = Arc::clone(&self.control);
        let prefix = prefix.cloned();
        stream::once(async move {
            match inject(&control, StoreOp::List).await {
                Ok(()) => inner.list(prefix.as_ref()),
                Err(e) => stream::iter([Err(e)]).boxed(),
            }
        })
        .flatten()
        .boxed()
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let inner = Arc::clone(&self.inner);
        let control = Arc::clone(&self.control);
        let prefix = prefix.cloned();
        let offset = offset.clone();
        stream::once(async move {
            match inject(&control, StoreOp::List).await {
                Ok(()) => inner.list_with_offset(prefix.as_ref(), &offset),
                Err(e) => stream::iter([Err(e)]).boxed(),
            }
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inject(StoreOp::List).await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inject(StoreOp::Other).await?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inject(StoreOp::Other).await?;
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use futures::TryStreamExt;
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;
    use tokio::time::{timeout, Instant};

    /// A fresh in-memory store behind a `FaultyStore` whose control file
    /// (not yet created) is `control.txt` in the returned directory.
    fn store() -> (FaultyStore, tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let control = dir.path().join("control.txt");
        let store = FaultyStore::new(Arc::new(InMemory::new()), control.clone());
        (store, dir, control)
    }

    fn path(s: &str) -> Path {
        Path::from(s)
    }

    async fn put(store: &FaultyStore, key: &str, body: &'static [u8]) -> Result<PutResult> {
        store.put(&path(key), PutPayload::from_static(body)).await
    }

    async fn get(store: &FaultyStore, key: &str) -> Result<Bytes> {
        store.get(&path(key)).await?.bytes().await
    }

    async fn list(store: &FaultyStore) -> Result<Vec<ObjectMeta>> {
        store.list(None).try_collect().await
    }

    fn assert_injected<T: fmt::Debug>(result: Result<T>, op: &str) {
        match result {
            Err(Error::Generic { store, source }) => {
                assert_eq!(store, "faulty");
                assert_eq!(source.to_string(), format!("injected {op} fault"));
            }
            other => panic!("expected an injected {op} fault, got {other:?}"),
        }
    }

    #[test]
    fn parse_empty_and_comments() {
        assert_eq!(parse(""), Faults::default());
        assert_eq!(parse("  \n\t, ,\n"), Faults::default());
        assert_eq!(parse("# put=error\n  # get=hang"), Faults::default());
    }

    #[test]
    fn parse_directives() {
        let faults = parse(
            "put=error, get=hang\nlist=delay:25 delete=none\n\nall=error push=drop # trailing",
        );
        assert_eq!(
            faults,
            Faults {
                put: Some(Fault::Error),
                get: Some(Fault::Hang),
                list: Some(Fault::Delay(Duration::from_millis(25))),
                delete: Some(Fault::Pass),
                all: Some(Fault::Error),
                derive: None,
                push: Some(Fault::Error),
            }
        );
    }

    #[test]
    fn parse_later_overrides_earlier() {
        let faults = parse("put=error\nput=delay:5,put=hang");
        assert_eq!(faults.put, Some(Fault::Hang));
        assert_eq!(parse("put=error put=none").for_op(StoreOp::Put), None);
    }

    #[test]
    fn parse_ignores_bad_directives() {
        for bad in [
            "put",
            "put=",
            "=error",
            "put=err",
            "PUT=error",
            "copy=error",
            "put=delay",
            "put=delay:",
            "put=delay:abc",
            "put=delay:-5",
            "put=delay:+5",
            "put=delay:99999999999999999999999",
            "put==error",
            "put=error=hang",
        ] {
            assert_eq!(parse(bad), Faults::default(), "{bad:?}");
        }
        let faults = parse("bogus get=error put=sometimes");
        assert_eq!(
            faults,
            Faults {
                get: Some(Fault::Error),
                ..Faults::default()
            }
        );
    }

    #[test]
    fn all_applies_where_no_specific_directive() {
        let faults = parse("all=error get=delay:10 delete=none");
        assert_eq!(faults.for_op(StoreOp::Put), Some(Fault::Error));
        assert_eq!(faults.for_op(StoreOp::List), Some(Fault::Error));
        assert_eq!(faults.for_op(StoreOp::Other), Some(Fault::Error));
        assert_eq!(
            faults.for_op(StoreOp::Get),
            Some(Fault::Delay(Duration::from_millis(10)))
        );
        assert_eq!(faults.for_op(StoreOp::Delete), None);
        // Copy and rename are only touched by `all`.
        assert_eq!(parse("put=error get=error").for_op(StoreOp::Other), None);
    }

    #[tokio::test]
    async fn no_control_file_means_no_faults() {
        let (store, _dir, control) = store();
        assert!(!control.exists());
        put(&store, "a", b"one").await.unwrap();
        assert_eq!(get(&store, "a").await.unwrap(), "one");
        assert_eq!(list(&store).await.unwrap().len(), 1);
        store.delete(&path("a")).await.unwrap();
        assert!(list(&store).await.unwrap().is_empty());
        assert!(store.to_string().starts_with("FaultyStore("));
    }

    #[tokio::test]
    async fn put_error_fails_puts_only_and_recovers() {
        let (store, _dir, control) = store();
        put(&store, "a", b"one").await.unwrap();

        std::fs::write(&control, "put=error\n").unwrap();
        assert_injected(put(&store, "a", b"two").await, "put");
        assert_injected(store.put_multipart(&path("b")).await.map(|_| ()), "put");
        assert_eq!(get(&store, "a").await.unwrap(), "one");
        assert_eq!(list(&store).await.unwrap().len(), 1);

        std::fs::write(&control, "").unwrap();
        put(&store, "a", b"three").await.unwrap();
        assert_eq!(get(&store, "a").await.unwrap(), "three");
    }

    #[tokio::test]
    async fn get_error_fails_gets_and_recovers() {
        let (store, _dir, control) = store();
        put(&store, "a", b"one").await.unwrap();

        std::fs::write(&control, "# reads are down\nget=error").unwrap();
        assert_injected(get(&store, "a").await, "get");
        assert_injected(store.head(&path("a")).await, "get");
        assert_injected(store.get_ranges(&path("a"), &[0..1, 2..3]).await, "get");
        put(&store, "b", b"two").await.unwrap();

        std::fs::remove_file(&control).unwrap();
        assert_eq!(get(&store, "a").await.unwrap(), "one");
        assert_eq!(get(&store, "b").await.unwrap(), "two");
    }

    #[tokio::test]
    async fn delete_error_fails_deletes() {
        let (store, _dir, control) = store();
        put(&store, "a", b"one").await.unwrap();
        std::fs::write(&control, "delete=error").unwrap();
        assert_injected(store.delete(&path("a")).await, "delete");
        assert_eq!(get(&store, "a").await.unwrap(), "one");
        std::fs::write(&control, "").unwrap();
        store.delete(&path("a")).await.unwrap();
    }

    #[tokio::test]
    async fn put_hang_never_completes() {
        let (store, _dir, control) = store();
        std::fs::write(&control, "put=hang").unwrap();
        let hung = timeout(Duration::from_millis(50), put(&store, "a", b"one")).await;
        assert!(hung.is_err(), "put completed: {hung:?}");
        // Other operations are unaffected.
        assert!(list(&store).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn list_hang_never_yields() {
        let (store, _dir, control) = store();
        put(&store, "a", b"one").await.unwrap();
        std::fs::write(&control, "list=hang").unwrap();
        let hung = timeout(Duration::from_millis(50), list(&store)).await;
        assert!(hung.is_err(), "list completed: {hung:?}");
        let hung = timeout(Duration::from_millis(50), store.list_with_delimiter(None)).await;
        assert!(hung.is_err(), "list_with_delimiter completed: {hung:?}");
    }

    #[tokio::test]
    async fn delay_delays_then_forwards() {
        let (store, _dir, control) = store();
        std::fs::write(&control, "put=delay:60, get=delay:40").unwrap();
        let start = Instant::now();
        put(&store, "a", b"one").await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(60));
        let start = Instant::now();
        assert_eq!(get(&store, "a").await.unwrap(), "one");
        assert!(start.elapsed() >= Duration::from_millis(40));
    }

    #[tokio::test]
    async fn all_error_fails_everything_including_list() {
        let (store, _dir, control) = store();
        put(&store, "a", b"one").await.unwrap();
        std::fs::write(&control, "all=error").unwrap();
        assert_injected(put(&store, "b", b"two").await, "put");
        assert_injected(get(&store, "a").await, "get");
        assert_injected(list(&store).await, "list");
        assert_injected(
            store
                .list_with_offset(None, &path("0"))
                .try_collect::<Vec<_>>()
                .await,
            "list",
        );
        assert_injected(store.list_with_delimiter(None).await, "list");
        assert_injected(store.delete(&path("a")).await, "delete");
        assert_injected(store.copy(&path("a"), &path("c")).await, "copy/rename");
        assert_injected(store.rename(&path("a"), &path("c")).await, "copy/rename");

        // A specific directive exempts its op from `all`.
        std::fs::write(&control, "all=error\nget=none").unwrap();
        assert_eq!(get(&store, "a").await.unwrap(), "one");
        assert_injected(put(&store, "b", b"two").await, "put");

        std::fs::write(&control, "").unwrap();
        store.copy(&path("a"), &path("c")).await.unwrap();
        assert_eq!(get(&store, "c").await.unwrap(), "one");
    }

    #[tokio::test]
    async fn unreadable_control_file_means_no_faults() {
        let (store, dir, _control) = store();
        // A directory where the file should be: read_to_string fails, not NotFound.
        let store = FaultyStore::new(Arc::clone(&store.inner), dir.path().to_path_buf());
        put(&store, "a", b"one").await.unwrap();
        assert_eq!(get(&store, "a").await.unwrap(), "one");
    }
}
