//! Publication to the edge: the change index, the change feed it serves, and
//! the pusher.
//!
//! Every applied write (a client's, or a derived view's) is recorded in the
//! [`ChangeIndex`] (the engine reports it through [`crate::engine::Observer`]),
//! one entry per key at its latest version, ordered by version. Two readers
//! use it:
//!
//! - the **pusher** ([`pusher`]) sends changed keys to the edge's
//!   publication endpoint in batches of at most
//!   [`MAX_BATCH_ITEMS`](prefold_core::publish::MAX_BATCH_ITEMS), with the
//!   object as it is when the batch is built, so a key changed many times in
//!   a second is sent once, latest version only. It never sends one key
//!   twice within a second (Workers KV's write rate per key), and keys the
//!   edge defers are sent again when it says. Failed pushes are retried with
//!   backoff; a push that is lost anyway is repaired by the feed;
//! - the **change feed** ([`ChangeIndex::feed`], served at
//!   [`CHANGES_PATH`](prefold_core::publish::CHANGES_PATH)) lists keys by
//!   version after a cursor. The edge's Cron Trigger reads it from a cursor
//!   kept in KV. Versions are the origin's clock in microseconds, so a
//!   cursor stays meaningful across restarts: the index is seeded from the
//!   warm load, and whatever changed after the cursor — pushed or not — is
//!   listed. The feed stops short of the last `--feed-horizon-ms` so a
//!   write that took its version just before a feed read, but was recorded
//!   just after, cannot fall behind a cursor.
//!
//! "Publish" means this and only this in the origin: making objects
//! visible at the edge. Views write their derived objects into the engine
//! ("materialize", see [`crate::views`]).

mod index;
pub(crate) mod pusher;

use prefold_core::publish::BatchWriter;
use prefold_core::Key;

use crate::base::metrics::counters;
use crate::base::Object;
pub(crate) use index::ChangeIndex;
pub(crate) use pusher::{PushSettings, Pusher};

counters! {
    /// Publication counters, for `/metrics`.
    pub(crate) struct PublishStats {
        pushed: counter("publish_pushed", "Objects the edge wrote to KV from pushes"),
        unchanged: counter("publish_unchanged", "Pushed objects KV already held"),
        deferred: counter("publish_deferred", "Pushed objects the edge deferred (KV's one write per second per key)"),
        failures: counter("publish_failures", "Push requests to the edge that failed (retried)"),
        dropped: counter("publish_dropped", "Pushes lost to fault injection"),
        feed_pages: counter("feed_pages", "Change feed pages served"),
        feed_items: counter("feed_items", "Objects listed by the change feed"),
    }
}

/// Adds an object's current version to a batch (a deletion as such): the
/// one encoding of pushes and feed pages.
pub(crate) fn add_to_batch(batch: &mut BatchWriter, key: &Key, object: &Object) {
    if object.tombstone {
        batch.push(key.as_str(), object.version, "", None);
    } else {
        batch.push(
            key.as_str(),
            object.version,
            object.content_type_str(),
            Some(&object.body),
        );
    }
}
