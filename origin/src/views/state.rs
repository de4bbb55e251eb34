//! The derivation state machine: what every view target holds, and how one
//! derivation message changes it.
//!
//! A *target* is one derived object (`order_page/o1`, `event_comments/e1`).
//! It holds *members*: the entities that contribute to it, each with the
//! version it was computed from and its contribution (the fields it shows,
//! its sort key, its measure values). A derivation message says "source S
//! is now this document, at version v" and is addressed to a target: the
//! message carries the document because the target may live on another
//! origin than its source, and only the source's owner can read it.
//!
//! Messages may be lost, repeated or reordered between origins, so each is
//! applied by its (source, version): an older version than the one held is
//! skipped, and so is the same version again unless forced (the rolling
//! regeneration, and deliveries a subscription asks for). A source that no
//! longer contributes leaves a version behind (`left`), so a delayed older
//! message cannot bring it back. A lost message is repaired by the rolling
//! regeneration.
//!
//! The reverse index maps each source to the targets here it is a member of,
//! and each referenced entity to the embed targets here whose own entity
//! points at it: what a target's own entity references is *subscribed to*
//! at the referenced entity's owner ([`super::fanout`]), which then sends
//! its changes here. Renaming `product/p1` reaches every `order_page` that
//! embeds it, on whichever origin each lives.
//!
//! Everything here is synchronous and deterministic: the actor in
//! [`super`] feeds it, and the property test compares it with a from-scratch
//! recomputation.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::ops::Bound;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use prefold_core::model::{scalar_id, MeasureFn, Model, View, ViewKind};
use prefold_core::Key;
use serde_json::{json, Map, Value};

/// A source entity as the engine holds it now.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// Its current version (of the object or its tombstone; 0 if never written).
    pub(crate) version: u64,
    /// Its document, unless deleted or absent.
    pub(crate) doc: Option<Arc<Value>>,
}

/// "Source is now `doc` at `version`; target may need it." Addressed by
/// `target`.
#[derive(Debug, Clone)]
pub(crate) struct Derivation {
    /// The derived object.
    pub(crate) target: Key,
    /// The entity that changed.
    pub(crate) source: Key,
    /// The source's version `doc` is.
    pub(crate) version: u64,
    /// The source's document at `version` (`None`: deleted or absent).
    pub(crate) doc: Option<Arc<Value>>,
    /// Apply even if this version is the one held (the rolling sweep, and
    /// what a subscription asks for); an older version is never applied.
    pub(crate) force: bool,
    /// Sent by the rolling regeneration or a resync: a change it makes is
    /// a repaired divergence, not a new write.
    pub(crate) repair: bool,
}

/// What a message did to its target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Effect {
    /// The target's content changed: render and publish it.
    pub(crate) changed: bool,
    /// Skipped by its version stamp.
    pub(crate) skipped: bool,
    /// References an embed target's own entity took up (`true`) or dropped
    /// (`false`): subscriptions to send to the referenced entities' owners.
    pub(crate) subscriptions: Vec<(Key, bool)>,
}

/// The words, longest accepted, of text views.
const MAX_WORD: usize = 64;
/// Terms of one text query.
pub(crate) const MAX_TERMS: usize = 8;
/// Words one query term may expand to (prefix and fuzzy matches).
const MAX_EXPANSIONS: usize = 16;

/// One component of a sort key.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum Scalar {
    Null,
    Int(i64),
    Float(f64),
    Str(String),
}

impl Scalar {
    fn of(v: Option<&Value>) -> Scalar {
        match v {
            Some(Value::String(s)) => Scalar::Str(s.clone()),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) => Scalar::Int(i),
                None => Scalar::Float(n.as_f64().unwrap_or(0.0)),
            },
            Some(Value::Bool(b)) => Scalar::Int(i64::from(*b)),
            _ => Scalar::Null,
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Scalar::Null => Value::Null,
            Scalar::Int(i) => json!(i),
            Scalar::Float(f) => json!(f),
            Scalar::Str(s) => json!(s),
        }
    }

    fn from_json(v: &Value) -> Option<Scalar> {
        Some(match v {
            Value::Null => Scalar::Null,
            Value::String(s) => Scalar::Str(s.clone()),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Scalar::Int(i),
                None => Scalar::Float(n.as_f64()?),
            },
            _ => return None,
        })
    }

    fn rank(&self) -> u8 {
        match self {
            Scalar::Null => 0,
            Scalar::Int(_) | Scalar::Float(_) => 1,
            Scalar::Str(_) => 2,
        }
    }

    fn total_cmp(&self, other: &Scalar) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        match (self, other) {
            (Scalar::Int(a), Scalar::Int(b)) => a.cmp(b),
            (Scalar::Str(a), Scalar::Str(b)) => a.cmp(b),
            (Scalar::Float(a), Scalar::Float(b)) => a.total_cmp(b),
            // i64 → f64 may round; only mixed int/float columns get here.
            #[allow(clippy::cast_precision_loss)]
            (Scalar::Int(a), Scalar::Float(b)) => (*a as f64).total_cmp(b),
            #[allow(clippy::cast_precision_loss)]
            (Scalar::Float(a), Scalar::Int(b)) => a.total_cmp(&(*b as f64)),
            _ => self.rank().cmp(&other.rank()).then(Ordering::Equal),
        }
    }
}

/// A sort key: components with their direction, then the source key, which
/// makes every entry unique (keep appending until the key is unique).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SortKey {
    parts: Vec<(bool, Scalar)>,
    key: String,
}

impl Eq for SortKey {}

impl Ord for SortKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        for ((desc, a), (_, b)) in self.parts.iter().zip(&other.parts) {
            let o = a.total_cmp(b);
            let o = if *desc { o.reverse() } else { o };
            if o.is_ne() {
                return o;
            }
        }
        self.parts
            .len()
            .cmp(&other.parts.len())
            .then_with(|| self.key.cmp(&other.key))
    }
}

impl PartialOrd for SortKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl SortKey {
    /// The opaque cursor naming this position.
    fn cursor(&self) -> String {
        let mut arr: Vec<Value> = self.parts.iter().map(|(_, s)| s.to_json()).collect();
        arr.push(Value::String(self.key.clone()));
        URL_SAFE_NO_PAD.encode(Value::Array(arr).to_string())
    }

    /// Decodes a cursor made by [`SortKey::cursor`] for a view whose sort
    /// directions are `dirs`.
    fn parse_cursor(cursor: &str, dirs: &[bool]) -> Option<SortKey> {
        let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
        let Value::Array(mut arr) = serde_json::from_slice(&bytes).ok()? else {
            return None;
        };
        let key = match arr.pop()? {
            Value::String(s) => s,
            _ => return None,
        };
        if arr.len() != dirs.len() {
            return None;
        }
        let parts = dirs
            .iter()
            .zip(&arr)
            .map(|(d, v)| Some((*d, Scalar::from_json(v)?)))
            .collect::<Option<Vec<_>>>()?;
        Some(SortKey { parts, key })
    }

    /// The smallest key whose first component is `value` (for range bounds).
    fn lowest(desc: bool, value: Scalar) -> SortKey {
        SortKey {
            parts: vec![(desc, value)],
            key: String::new(),
        }
    }
}

/// A number kept exactly: integer fields as integers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    fn of(v: Option<&Value>) -> Option<Num> {
        let n = v?.as_number()?;
        Some(match n.as_i64() {
            Some(i) => Num::Int(i),
            None => Num::Float(n.as_f64()?),
        })
    }

    fn key(self) -> OrdNum {
        OrdNum(self)
    }
}

/// Total order over [`Num`] for min/max multisets.
#[derive(Debug, Clone, Copy, PartialEq)]
struct OrdNum(Num);

impl Eq for OrdNum {}

impl Ord for OrdNum {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let f = |n: Num| match n {
            Num::Int(i) => Scalar::Int(i),
            Num::Float(f) => Scalar::Float(f),
        };
        f(self.0).total_cmp(&f(other.0))
    }
}

impl PartialOrd for OrdNum {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// What one source gives one target.
#[derive(Debug, Clone, PartialEq)]
enum Contribution {
    /// The entity an embed view is made from: its own fields, and the keys
    /// it references (one per embedded field, `None` if unset).
    Own {
        fields: Map<String, Value>,
        refs: Vec<Option<Key>>,
    },
    /// A referenced entity's embedded fields.
    Embedded(Map<String, Value>),
    /// An entry of a list, index or text view.
    Item {
        sort: SortKey,
        fields: Map<String, Value>,
    },
    /// An aggregate's inputs, one per measure (`None`: value absent).
    Values(Vec<Option<Num>>),
    /// A set member.
    Member(String),
}

#[derive(Debug, Clone)]
struct Member {
    version: u64,
    data: Contribution,
}

/// Running state of one aggregate measure.
#[derive(Debug, Clone, Default, PartialEq)]
struct MeasureState {
    n: u64,
    int_sum: i128,
    float_sum: f64,
    values: BTreeMap<OrdNum, u32>,
}

#[derive(Debug, Default)]
struct Target {
    members: HashMap<Key, Member>,
    /// List, index and text entries in order.
    order: BTreeSet<SortKey>,
    /// Aggregate measures, as in the view.
    measures: Vec<MeasureState>,
    /// Set members with their multiplicity.
    ids: HashMap<String, u32>,
}

/// Vocabulary of one text view: its words (sorted, for prefix matches) and
/// bigrams → words (for fuzzy matches).
#[derive(Debug, Default)]
struct Vocab {
    words: BTreeSet<String>,
    grams: HashMap<String, HashSet<String>>,
}

/// A page of a list, index or text view.
#[derive(Debug, Clone, Default)]
pub(crate) struct PageQuery {
    /// Items after this cursor.
    pub(crate) after: Option<String>,
    /// Items before this cursor.
    pub(crate) before: Option<String>,
    /// At most this many (capped at the view's page size).
    pub(crate) limit: Option<u32>,
    /// Index views: smallest range value, inclusive.
    pub(crate) from: Option<String>,
    /// Index views: largest range value, inclusive.
    pub(crate) to: Option<String>,
}

/// Why a query cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum QueryError {
    /// A malformed or foreign cursor, or a bad parameter.
    #[error("{0}")]
    Invalid(String),
    /// The view does not answer this query.
    #[error("{0}")]
    Unsupported(String),
}

/// Every view's derived state on this origin.
#[derive(Debug)]
pub(crate) struct ViewState {
    model: Arc<Model>,
    targets: HashMap<Key, Target>,
    rev: HashMap<Key, HashSet<Key>>,
    /// Referenced entity → the embed targets whose own entity points at it.
    refs: HashMap<Key, HashSet<Key>>,
    vocab: HashMap<String, Vocab>,
    /// Target → sources that stopped contributing, with the version at which
    /// they did: an older message from them must not bring them back.
    left: HashMap<Key, HashMap<Key, u64>>,
}

fn id_of(key: &Key) -> &str {
    key.as_str().split_once('/').map_or("", |(_, id)| id)
}

fn project(doc: &Value, fields: &[String]) -> Map<String, Value> {
    fields
        .iter()
        .filter_map(|f| {
            doc.get(f)
                .filter(|v| !v.is_null())
                .map(|v| (f.clone(), v.clone()))
        })
        .collect()
}

/// The normalized words of a text: lower-case ASCII letters and digits;
/// anything else separates words.
pub(crate) fn words(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty() && w.len() <= MAX_WORD)
        .map(str::to_ascii_lowercase)
        .collect()
}

/// The padded bigrams of a word. Two words within edit distance `k` share
/// at least `max(len) + 1 - 2(k + 1)` of them (the q-gram lemma), which for
/// the distances used here means at least one: the candidates of a fuzzy
/// match are the words sharing a bigram, then filtered by distance.
fn grams(word: &str) -> Vec<String> {
    let padded = format!("^{word}$");
    let b = padded.as_bytes();
    b.windows(2)
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect()
}

impl ViewState {
    /// Empty state for a model.
    pub(crate) fn new(model: Arc<Model>) -> ViewState {
        ViewState {
            model,
            targets: HashMap::new(),
            rev: HashMap::new(),
            refs: HashMap::new(),
            vocab: HashMap::new(),
            left: HashMap::new(),
        }
    }

    /// Number of live targets.
    pub(crate) fn target_count(&self) -> usize {
        self.targets.len()
    }

    /// Whether a target currently has state.
    pub(crate) fn has_target(&self, target: &Key) -> bool {
        self.targets.contains_key(target)
    }

    /// Every target with state.
    #[cfg(test)]
    pub(crate) fn target_keys(&self) -> impl Iterator<Item = &Key> {
        self.targets.keys()
    }

    /// The targets here that already hold `source`: those it is a member
    /// of, and the embed targets whose own entity references it.
    pub(crate) fn dependents(&self, source: &Key) -> impl Iterator<Item = &Key> {
        self.rev
            .get(source)
            .into_iter()
            .chain(self.refs.get(source))
            .flatten()
    }

    /// The targets `doc` (the document of `source`) names, wherever they
    /// live: what a change must reach besides the targets that held its
    /// previous version.
    pub(crate) fn named(&self, source: &Key, doc: &Value) -> BTreeSet<Key> {
        let mut out = BTreeSet::new();
        let kind = source.kind();
        for view in self.model.views() {
            if view.kind.from() != Some(kind) {
                continue;
            }
            let ids: Vec<String> = match &view.kind {
                ViewKind::Embed(_) => vec![id_of(source).to_owned()],
                ViewKind::List(v) => doc.get(&v.parent).and_then(scalar_id).into_iter().collect(),
                ViewKind::Index(v) => doc.get(&v.eq).and_then(scalar_id).into_iter().collect(),
                ViewKind::Aggregate(v) => {
                    doc.get(&v.group).and_then(scalar_id).into_iter().collect()
                }
                ViewKind::Text(v) => v
                    .fields
                    .iter()
                    .filter_map(|f| doc.get(f).and_then(Value::as_str))
                    .flat_map(words)
                    .collect(),
                ViewKind::Set(v) => {
                    let mut ids: Vec<String> =
                        doc.get(&v.owner).and_then(scalar_id).into_iter().collect();
                    if v.symmetric {
                        ids.extend(doc.get(&v.member).and_then(scalar_id));
                    }
                    ids
                }
                ViewKind::Counter(_) => vec![],
            };
            for id in ids {
                if let Ok(k) = Key::parse(&format!("{}/{id}", view.name)) {
                    out.insert(k);
                }
            }
        }
        out
    }

    /// Every embed target here with the keys its own entity references:
    /// the subscriptions this origin holds elsewhere.
    pub(crate) fn subscriptions(&self) -> impl Iterator<Item = (&Key, &Key)> {
        self.refs
            .iter()
            .flat_map(|(entity, targets)| targets.iter().map(move |t| (entity, t)))
    }

    /// The version of the own entity of an embed target (0 if none): what
    /// orders its subscriptions.
    pub(crate) fn own_version(&self, target: &Key) -> u64 {
        self.targets
            .get(target)
            .and_then(|t| {
                t.members.values().find_map(|m| match &m.data {
                    Contribution::Own { .. } => Some(m.version),
                    _ => None,
                })
            })
            .unwrap_or(0)
    }

    /// The sources of a target here, with the versions held.
    pub(crate) fn members_of(&self, target: &Key) -> Vec<(Key, u64)> {
        self.targets
            .get(target)
            .map(|t| {
                t.members
                    .iter()
                    .map(|(k, m)| (k.clone(), m.version))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether a message is older than what its target knows of its source
    /// (or the same version again, unless forced).
    fn is_stale(&self, d: &Derivation) -> bool {
        let held = self
            .targets
            .get(&d.target)
            .and_then(|t| t.members.get(&d.source))
            .map(|m| m.version)
            .or_else(|| self.left.get(&d.target)?.get(&d.source).copied());
        // Version 0 is "never written", older than anything held, except
        // from a repair: a source its owner no longer knows at all (its
        // tombstone forgotten) is gone, whatever was held.
        match held {
            Some(_) if d.version == 0 && d.doc.is_none() && d.repair => false,
            Some(v) => v > d.version || (v == d.version && !d.force),
            None => false,
        }
    }

    /// Handles one message.
    pub(crate) fn derive(&mut self, d: &Derivation) -> Effect {
        let model = self.model.clone();
        let Some(view) = model.view(d.target.kind()) else {
            return Effect::default();
        };
        if self.is_stale(d) {
            return Effect {
                skipped: true,
                ..Effect::default()
            };
        }
        let contribution = d
            .doc
            .as_deref()
            .and_then(|doc| self.contribution(view, &d.target, &d.source, doc));
        let left = contribution.is_none();
        let own = matches!(&view.kind, ViewKind::Embed(e) if d.source.kind() == e.from);
        let (old_refs, old_slots) = if own {
            (
                self.own_refs(&d.target, &d.source),
                self.own_slots(&d.target, &d.source),
            )
        } else {
            (HashSet::new(), Vec::new())
        };
        let mut changed = self.set_member(view, &d.target, &d.source, d.version, contribution);
        let mut subscriptions = Vec::new();
        if own {
            // The reference index follows what the own entity points at,
            // present or not: a referenced entity created later must still
            // find this target.
            let new_refs = self.own_refs(&d.target, &d.source);
            let slots_changed = self.own_slots(&d.target, &d.source) != old_slots;
            for k in old_refs.difference(&new_refs) {
                if let Some(set) = self.refs.get_mut(k) {
                    set.remove(&d.target);
                    if set.is_empty() {
                        self.refs.remove(k);
                    }
                }
                subscriptions.push((k.clone(), false));
            }
            for k in &new_refs {
                let new = self
                    .refs
                    .entry(k.clone())
                    .or_default()
                    .insert(d.target.clone());
                // Moved references, and the sweep, ask again for everything
                // embedded: which fields are shown of each may have changed.
                if new || slots_changed || d.force {
                    subscriptions.push((k.clone(), true));
                }
            }
            changed |= self.drop_unreferenced(view, &d.target, &d.source);
        }
        if left {
            let at = self
                .left
                .entry(d.target.clone())
                .or_default()
                .entry(d.source.clone())
                .or_insert(d.version);
            *at = (*at).max(d.version);
        } else if let Some(l) = self.left.get_mut(&d.target) {
            l.remove(&d.source);
            if l.is_empty() {
                self.left.remove(&d.target);
            }
        }
        subscriptions.sort();
        Effect {
            changed,
            skipped: false,
            subscriptions,
        }
    }

    /// The keys an embed target's own entity references now.
    fn own_refs(&self, target: &Key, own: &Key) -> HashSet<Key> {
        self.own_slots(target, own).into_iter().flatten().collect()
    }

    /// What an embed target's own entity references, field by field.
    fn own_slots(&self, target: &Key, own: &Key) -> Vec<Option<Key>> {
        match self.targets.get(target).and_then(|t| t.members.get(own)) {
            Some(Member {
                data: Contribution::Own { refs, .. },
                ..
            }) => refs.clone(),
            _ => Vec::new(),
        }
    }

    /// What `source` (with `doc`) contributes to `target`, if anything.
    fn contribution(
        &self,
        view: &View,
        target: &Key,
        source: &Key,
        doc: &Value,
    ) -> Option<Contribution> {
        let target_id = id_of(target);
        let from_kind = view.kind.from()?;
        match &view.kind {
            ViewKind::Embed(e) => {
                if source.kind() == from_kind {
                    if id_of(source) != target_id {
                        return None;
                    }
                    let refs = e
                        .embed
                        .iter()
                        .map(|emb| {
                            let id = doc.get(&emb.field).and_then(Value::as_str)?;
                            self.model.ref_key(&emb.entity, id).ok()
                        })
                        .collect();
                    return Some(Contribution::Own {
                        fields: project(doc, &e.fields),
                        refs,
                    });
                }
                // A referenced entity belongs while the view's own entity
                // points at it.
                let (_, refs) = own(self.targets.get(target)?)?;
                let mut fields: Vec<String> = Vec::new();
                for (emb, r) in e.embed.iter().zip(refs) {
                    if r.as_ref() == Some(source) {
                        fields.extend(
                            emb.fields
                                .iter()
                                .filter(|f| !fields.contains(f))
                                .cloned()
                                .collect::<Vec<_>>(),
                        );
                    }
                }
                if fields.is_empty() {
                    return None;
                }
                Some(Contribution::Embedded(project(doc, &fields)))
            }
            _ if source.kind() != from_kind => None,
            ViewKind::List(l) => {
                (doc.get(&l.parent).and_then(scalar_id)? == target_id).then(|| Contribution::Item {
                    sort: SortKey {
                        parts: l
                            .order
                            .iter()
                            .map(|s| (s.descending, Scalar::of(doc.get(&s.field))))
                            .collect(),
                        key: source.as_str().to_owned(),
                    },
                    fields: project(doc, &l.fields),
                })
            }
            ViewKind::Index(ix) => {
                (doc.get(&ix.eq).and_then(scalar_id)? == target_id).then(|| Contribution::Item {
                    sort: SortKey {
                        parts: vec![(false, Scalar::of(doc.get(&ix.range)))],
                        key: source.as_str().to_owned(),
                    },
                    fields: project(doc, &ix.fields),
                })
            }
            ViewKind::Text(t) => {
                let hit = t
                    .fields
                    .iter()
                    .filter_map(|f| doc.get(f).and_then(Value::as_str))
                    .any(|text| words(text).contains(target_id));
                hit.then(|| Contribution::Item {
                    sort: SortKey {
                        parts: vec![],
                        key: source.as_str().to_owned(),
                    },
                    fields: project(doc, &t.show),
                })
            }
            ViewKind::Aggregate(a) => {
                (doc.get(&a.group).and_then(scalar_id)? == target_id).then(|| {
                    Contribution::Values(
                        a.measures
                            .iter()
                            .map(|m| match &m.field {
                                None => Some(Num::Int(1)),
                                Some(f) => Num::of(doc.get(f)),
                            })
                            .collect(),
                    )
                })
            }
            ViewKind::Set(s) => {
                let owner = doc.get(&s.owner).and_then(scalar_id)?;
                let member = doc.get(&s.member).and_then(scalar_id)?;
                if owner == target_id {
                    Some(Contribution::Member(member))
                } else if s.symmetric && member == target_id {
                    Some(Contribution::Member(owner))
                } else {
                    None
                }
            }
            ViewKind::Counter(_) => None,
        }
    }

    /// Removes the embedded members of an embed target that its own entity
    /// no longer references (their subscriptions are dropped too, so no
    /// version is kept: a later reference asks for them afresh).
    fn drop_unreferenced(&mut self, view: &View, target: &Key, own: &Key) -> bool {
        let wanted = self.own_refs(target, own);
        let stale: Vec<Key> = self
            .targets
            .get(target)
            .map(|t| {
                t.members
                    .keys()
                    .filter(|k| *k != own && !wanted.contains(*k))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let mut changed = false;
        for k in stale {
            changed |= self.set_member(view, target, &k, 0, None);
        }
        changed
    }

    /// Replaces one member's contribution; returns whether the target's
    /// content changed.
    fn set_member(
        &mut self,
        view: &View,
        target: &Key,
        source: &Key,
        version: u64,
        new: Option<Contribution>,
    ) -> bool {
        let t = self
            .targets
            .entry(target.clone())
            .or_insert_with(|| Target {
                measures: match &view.kind {
                    ViewKind::Aggregate(a) => vec![MeasureState::default(); a.measures.len()],
                    _ => vec![],
                },
                ..Target::default()
            });
        let old = t.members.remove(source);
        let changed = old.as_ref().map(|m| &m.data) != new.as_ref();
        if let Some(old) = &old {
            unapply(t, &old.data);
        }
        match new {
            Some(data) => {
                apply(t, &data);
                t.members.insert(source.clone(), Member { version, data });
                if old.is_none() {
                    self.rev
                        .entry(source.clone())
                        .or_default()
                        .insert(target.clone());
                }
            }
            None => {
                if old.is_some() {
                    if let Some(set) = self.rev.get_mut(source) {
                        set.remove(target);
                        if set.is_empty() {
                            self.rev.remove(source);
                        }
                    }
                }
            }
        }
        let empty = t.members.is_empty();
        if empty {
            self.targets.remove(target);
        }
        if let ViewKind::Text(_) = view.kind {
            let word = id_of(target).to_owned();
            let vocab = self.vocab.entry(view.name.clone()).or_default();
            if empty {
                if vocab.words.remove(&word) {
                    for g in grams(&word) {
                        if let Some(set) = vocab.grams.get_mut(&g) {
                            set.remove(&word);
                            if set.is_empty() {
                                vocab.grams.remove(&g);
                            }
                        }
                    }
                }
            } else if vocab.words.insert(word.clone()) {
                for g in grams(&word) {
                    vocab.grams.entry(g).or_default().insert(word.clone());
                }
            }
        }
        changed
    }

    /// The bytes a target publishes (`None`: the target is empty). Embed
    /// views, the fan-out's hot path, are written straight to bytes; the
    /// others are rendered as JSON values first.
    pub(crate) fn render_bytes(&self, target: &Key) -> Option<Vec<u8>> {
        let view = self.model.view(target.kind())?;
        let ViewKind::Embed(e) = &view.kind else {
            return serde_json::to_vec(&self.render(target, false)?).ok();
        };
        let t = self.targets.get(target)?;
        let (fields, refs) = own(t)?;
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"{\"id\":");
        serde_json::to_writer(&mut out, id_of(target)).ok()?;
        for (k, v) in fields {
            out.push(b',');
            serde_json::to_writer(&mut out, k).ok()?;
            out.push(b':');
            serde_json::to_writer(&mut out, v).ok()?;
        }
        for (emb, r) in e.embed.iter().zip(refs) {
            out.push(b',');
            serde_json::to_writer(&mut out, &emb.field).ok()?;
            out.push(b':');
            let member = r.as_ref().and_then(|k| Some((k, t.members.get(k)?)));
            match member {
                Some((
                    k,
                    Member {
                        data: Contribution::Embedded(f),
                        ..
                    },
                )) => {
                    out.extend_from_slice(b"{\"id\":");
                    serde_json::to_writer(&mut out, id_of(k)).ok()?;
                    for field in &emb.fields {
                        if let Some(v) = f.get(field) {
                            out.push(b',');
                            serde_json::to_writer(&mut out, field).ok()?;
                            out.push(b':');
                            serde_json::to_writer(&mut out, v).ok()?;
                        }
                    }
                    out.push(b'}');
                }
                _ => out.extend_from_slice(b"null"),
            }
        }
        out.push(b'}');
        Some(out)
    }

    /// The object a target publishes: its whole state for small views, the
    /// first page for lists (`None`: the target is empty and its object is
    /// deleted). `full` renders every item (used by tests to compare state).
    pub(crate) fn render(&self, target: &Key, full: bool) -> Option<Value> {
        let view = self.model.view(target.kind())?;
        let t = self.targets.get(target)?;
        let id = id_of(target);
        match &view.kind {
            // One renderer for embed views: the bytes they publish.
            ViewKind::Embed(_) => serde_json::from_slice(&self.render_bytes(target)?).ok(),
            ViewKind::List(l) => Some(self.first_page(t, "id", id, l.page_size, full)),
            ViewKind::Index(ix) => Some(self.first_page(t, "id", id, ix.page_size, full)),
            ViewKind::Text(tx) => Some(self.first_page(t, "word", id, tx.page_size, full)),
            ViewKind::Aggregate(a) => {
                let mut out = Map::new();
                out.insert("id".into(), json!(id));
                for (m, s) in a.measures.iter().zip(&t.measures) {
                    out.insert(m.name.clone(), measure_value(m.func, s));
                }
                Some(Value::Object(out))
            }
            ViewKind::Set(_) => {
                let mut members: Vec<&String> = t.ids.keys().collect();
                members.sort();
                Some(json!({"id": id, "count": members.len(), "members": members}))
            }
            ViewKind::Counter(_) => None,
        }
    }

    fn first_page(&self, t: &Target, id_name: &str, id: &str, page_size: u32, full: bool) -> Value {
        let limit = if full { usize::MAX } else { page_size as usize };
        let items: Vec<Value> = t.order.iter().take(limit).map(|s| item(t, s)).collect();
        let mut out = Map::new();
        out.insert(id_name.into(), json!(id));
        out.insert("count".into(), json!(t.order.len()));
        let next = (t.order.len() > items.len())
            .then(|| {
                t.order
                    .iter()
                    .nth(items.len().saturating_sub(1))
                    .map(SortKey::cursor)
            })
            .flatten();
        out.insert("items".into(), Value::Array(items));
        out.insert("next".into(), next.map_or(Value::Null, Value::String));
        Value::Object(out)
    }

    /// A page of a list, index or text target: `{items, next, prev}`.
    pub(crate) fn page(&self, target: &Key, q: &PageQuery) -> Result<Value, QueryError> {
        let view = self
            .model
            .view(target.kind())
            .ok_or_else(|| QueryError::Unsupported("not a view".into()))?;
        let (dirs, page_size, ranged): (Vec<bool>, u32, bool) = match &view.kind {
            ViewKind::List(l) => (
                l.order.iter().map(|s| s.descending).collect(),
                l.page_size,
                false,
            ),
            ViewKind::Index(ix) => (vec![false], ix.page_size, true),
            ViewKind::Text(t) => (vec![], t.page_size, false),
            other => {
                return Err(QueryError::Unsupported(format!(
                    "a `{}` view has no pages",
                    other.name()
                )))
            }
        };
        if !ranged && (q.from.is_some() || q.to.is_some()) {
            return Err(QueryError::Invalid(
                "`from` and `to` apply to index views only".into(),
            ));
        }
        if q.after.is_some() && q.before.is_some() {
            return Err(QueryError::Invalid(
                "give `after` or `before`, not both".into(),
            ));
        }
        let limit = q.limit.unwrap_or(page_size);
        if limit == 0 || limit > page_size {
            return Err(QueryError::Invalid(format!(
                "`limit` must be between 1 and {page_size}"
            )));
        }
        let cursor = |c: &str| {
            SortKey::parse_cursor(c, &dirs)
                .ok_or_else(|| QueryError::Invalid("malformed cursor".into()))
        };
        let range_value = |s: &str| -> Scalar {
            match s.parse::<i64>() {
                Ok(i) => Scalar::Int(i),
                Err(_) => Scalar::Str(s.to_owned()),
            }
        };
        let lo = q
            .from
            .as_deref()
            .map(|f| SortKey::lowest(false, range_value(f)));
        let hi = q.to.as_deref().map(range_value);
        let within_hi = |s: &SortKey| match (&hi, s.parts.first()) {
            (Some(h), Some((_, v))) => v.total_cmp(h).is_le(),
            _ => true,
        };
        let within_lo = |s: &SortKey| lo.as_ref().is_none_or(|l| s >= l);
        let empty = Target::default();
        let t = self.targets.get(target).unwrap_or(&empty);
        let limit = limit as usize;
        let mut keys: Vec<&SortKey> = match &q.before {
            Some(c) => {
                let c = cursor(c)?;
                let mut v: Vec<&SortKey> = t
                    .order
                    .range((Bound::Unbounded, Bound::Excluded(&c)))
                    .rev()
                    .take_while(|s| within_lo(s))
                    .filter(|s| within_hi(s))
                    .take(limit)
                    .collect();
                v.reverse();
                v
            }
            None => {
                let start = match (&q.after, &lo) {
                    (Some(c), _) => Bound::Excluded(cursor(c)?),
                    (None, Some(l)) => Bound::Included(l.clone()),
                    (None, None) => Bound::Unbounded,
                };
                t.order
                    .range((start, Bound::Unbounded))
                    .filter(|s| within_lo(s))
                    .take_while(|s| within_hi(s))
                    .take(limit)
                    .collect()
            }
        };
        keys.truncate(limit);
        let next = keys.last().and_then(|last| {
            t.order
                .range((Bound::Excluded(*last), Bound::Unbounded))
                .next()
                .filter(|s| within_hi(s))
                .map(|_| last.cursor())
        });
        let prev = keys.first().and_then(|first| {
            t.order
                .range((Bound::Unbounded, Bound::Excluded(*first)))
                .next_back()
                .filter(|s| within_lo(s))
                .map(|_| first.cursor())
        });
        let items: Vec<Value> = keys.iter().map(|s| item(t, s)).collect();
        Ok(json!({
            "items": items,
            "next": next,
            "prev": prev,
        }))
    }

    /// Whether `member` is in a set target.
    pub(crate) fn is_member(&self, target: &Key, member: &str) -> Result<bool, QueryError> {
        match self.model.view(target.kind()).map(|v| &v.kind) {
            Some(ViewKind::Set(_)) => Ok(self
                .targets
                .get(target)
                .is_some_and(|t| t.ids.contains_key(member))),
            _ => Err(QueryError::Unsupported(
                "`member` applies to set views only".into(),
            )),
        }
    }

    /// A bounded AND query over a text view: every term must match a word
    /// exactly, by prefix (the last term, as typed so far) or within a small
    /// edit distance. Returns matches in key order. (One origin's answer;
    /// a cluster merges every origin's [`ViewState::search_parts`].)
    #[cfg(test)]
    pub(crate) fn search(
        &self,
        view_name: &str,
        q: &str,
        limit: Option<u32>,
    ) -> Result<Value, QueryError> {
        let (terms, limit) = search_terms(&self.model, view_name, q, limit)?;
        let parts = self.search_parts(view_name, &terms);
        Ok(merge_search(&terms, limit, vec![parts]))
    }

    /// What this origin's words of a text view say about each term: the
    /// candidates it has (the term itself, the first words it begins, the
    /// nearest words), and the entities each candidate word lists.
    pub(crate) fn search_parts(&self, view_name: &str, terms: &[String]) -> Vec<TermPart> {
        let empty = Vocab::default();
        let vocab = self.vocab.get(view_name).unwrap_or(&empty);
        terms
            .iter()
            .enumerate()
            .map(|(i, term)| {
                let mut part = candidates(vocab, term, i + 1 == terms.len());
                let words = part
                    .exact
                    .iter()
                    .chain(&part.prefix)
                    .chain(part.fuzzy.iter().map(|(_, w)| w));
                for w in words {
                    let Some(t) = Key::parse(&format!("{view_name}/{w}"))
                        .ok()
                        .and_then(|k| self.targets.get(&k))
                    else {
                        continue;
                    };
                    let hits = t
                        .members
                        .iter()
                        .map(|(k, m)| {
                            let fields = match &m.data {
                                Contribution::Item { fields, .. } => fields.clone(),
                                _ => Map::new(),
                            };
                            (k.to_string(), fields)
                        })
                        .collect();
                    part.hits.insert(w.clone(), hits);
                }
                part
            })
            .collect()
    }
}

/// One origin's candidates for one search term.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct TermPart {
    /// The term, if it is a word here.
    #[serde(default)]
    exact: Option<String>,
    /// The first words here that the (last) term begins, in order.
    #[serde(default)]
    prefix: Vec<String>,
    /// The nearest words here by edit distance, with it, nearest first
    /// (only where nothing here matches exactly or by prefix).
    #[serde(default)]
    fuzzy: Vec<(usize, String)>,
    /// Each candidate word's entities here, with their shown fields.
    #[serde(default)]
    hits: BTreeMap<String, Vec<Hit>>,
}

/// An entity a word lists: its key and the fields the text view shows.
type Hit = (String, Map<String, Value>);

/// Checks a text query: the view, the limit and the words. Returns the
/// normalized terms and the limit.
pub(crate) fn search_terms(
    model: &Model,
    view_name: &str,
    q: &str,
    limit: Option<u32>,
) -> Result<(Vec<String>, u32), QueryError> {
    let Some(ViewKind::Text(tv)) = model.view(view_name).map(|v| &v.kind) else {
        return Err(QueryError::Unsupported(
            "`_search` applies to text views only".into(),
        ));
    };
    let limit = limit.unwrap_or(tv.page_size);
    if limit == 0 || limit > tv.page_size {
        return Err(QueryError::Invalid(format!(
            "`limit` must be between 1 and {}",
            tv.page_size
        )));
    }
    let terms: Vec<String> = q
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    if terms.is_empty() {
        return Err(QueryError::Invalid("`q` has no words".into()));
    }
    if terms.len() > MAX_TERMS {
        return Err(QueryError::Invalid(format!(
            "at most {MAX_TERMS} words per query"
        )));
    }
    if let Some(t) = terms.iter().find(|t| t.len() > MAX_WORD) {
        return Err(QueryError::Invalid(format!(
            "the word {t:?} is longer than {MAX_WORD}"
        )));
    }
    Ok((terms, limit))
}

/// The answer to a text query from every origin's parts (one list of
/// [`TermPart`]s per origin, one part per term): each term expands as it
/// would over all the origins' words together, and the entities every
/// term matches are the answer.
pub(crate) fn merge_search(terms: &[String], limit: u32, parts: Vec<Vec<TermPart>>) -> Value {
    let mut matched = Map::new();
    let mut result: Option<BTreeSet<String>> = None;
    let mut fields: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for (i, term) in terms.iter().enumerate() {
        let of_term: Vec<&TermPart> = parts.iter().filter_map(|p| p.get(i)).collect();
        let mut expansions: Vec<String> = Vec::new();
        if of_term.iter().any(|p| p.exact.is_some()) {
            expansions.push(term.clone());
        }
        let prefix: BTreeSet<&String> = of_term.iter().flat_map(|p| &p.prefix).collect();
        expansions.extend(prefix.into_iter().take(MAX_EXPANSIONS).cloned());
        if expansions.is_empty() {
            let fuzzy: BTreeSet<&(usize, String)> = of_term.iter().flat_map(|p| &p.fuzzy).collect();
            expansions.extend(
                fuzzy
                    .into_iter()
                    .take(MAX_EXPANSIONS)
                    .map(|(_, w)| w.clone()),
            );
        }
        expansions.truncate(MAX_EXPANSIONS);
        let mut hits: BTreeSet<String> = BTreeSet::new();
        for w in &expansions {
            for p in &of_term {
                for (k, f) in p.hits.get(w).into_iter().flatten() {
                    hits.insert(k.clone());
                    fields.entry(k.clone()).or_insert_with(|| f.clone());
                }
            }
        }
        matched.insert(term.clone(), json!(expansions));
        result = Some(match result {
            None => hits,
            Some(r) => r.intersection(&hits).cloned().collect(),
        });
    }
    let keys = result.unwrap_or_default();
    let items: Vec<Value> = keys
        .iter()
        .take(limit as usize)
        .map(|k| {
            let mut o = Map::new();
            o.insert(
                "id".into(),
                json!(k.split_once('/').map_or("", |(_, id)| id)),
            );
            o.extend(fields.get(k).cloned().unwrap_or_default());
            Value::Object(o)
        })
        .collect();
    json!({"count": keys.len(), "items": items, "matched": matched})
}

/// One origin's candidates for a term: the term itself if known, the first
/// words it begins (the last term), and, when neither, the nearest words.
fn candidates(vocab: &Vocab, term: &str, last: bool) -> TermPart {
    let mut part = TermPart::default();
    if vocab.words.contains(term) {
        part.exact = Some(term.to_owned());
    }
    if last {
        part.prefix = vocab
            .words
            .range::<str, _>((Bound::Excluded(term), Bound::Unbounded))
            .take_while(|w| w.starts_with(term))
            .take(MAX_EXPANSIONS)
            .cloned()
            .collect();
    }
    if part.exact.is_none() && part.prefix.is_empty() {
        // Fuzzy: candidates share a bigram; accept one edit (a
        // transposition counts as one) for short words, two for long ones.
        let max = if term.len() <= 5 { 1 } else { 2 };
        let mut near: BTreeSet<&String> = BTreeSet::new();
        for g in grams(term) {
            if let Some(ws) = vocab.grams.get(&g) {
                near.extend(ws);
            }
        }
        let mut scored: Vec<(usize, String)> = near
            .into_iter()
            .map(|w| (strsim::osa_distance(term, w), w.clone()))
            .filter(|(d, _)| *d <= max)
            .collect();
        scored.sort();
        scored.truncate(MAX_EXPANSIONS);
        part.fuzzy = scored;
    }
    part
}

/// An embed target's own entity's fields and its references.
type OwnParts<'a> = (&'a Map<String, Value>, &'a Vec<Option<Key>>);

/// An embed target's own entity's fields and references. Only the entity
/// the view is made from contributes `Own`, so there is at most one.
fn own(t: &Target) -> Option<OwnParts<'_>> {
    t.members.values().find_map(|m| match &m.data {
        Contribution::Own { fields, refs } => Some((fields, refs)),
        _ => None,
    })
}

fn item(t: &Target, s: &SortKey) -> Value {
    let mut o = Map::new();
    let key = Key::parse(&s.key).ok();
    o.insert(
        "id".into(),
        json!(s.key.split_once('/').map_or("", |(_, id)| id)),
    );
    if let Some(Member {
        data: Contribution::Item { fields, .. },
        ..
    }) = key.as_ref().and_then(|k| t.members.get(k))
    {
        o.extend(fields.clone());
    }
    Value::Object(o)
}

fn apply(t: &mut Target, c: &Contribution) {
    match c {
        Contribution::Item { sort, .. } => {
            t.order.insert(sort.clone());
        }
        Contribution::Values(vals) => {
            for (m, v) in t.measures.iter_mut().zip(vals) {
                if let Some(v) = v {
                    m.n += 1;
                    match v {
                        Num::Int(i) => m.int_sum += i128::from(*i),
                        Num::Float(f) => m.float_sum += f,
                    }
                    *m.values.entry(v.key()).or_default() += 1;
                }
            }
        }
        Contribution::Member(id) => *t.ids.entry(id.clone()).or_default() += 1,
        Contribution::Own { .. } | Contribution::Embedded(_) => {}
    }
}

fn unapply(t: &mut Target, c: &Contribution) {
    match c {
        Contribution::Item { sort, .. } => {
            t.order.remove(sort);
        }
        Contribution::Values(vals) => {
            for (m, v) in t.measures.iter_mut().zip(vals) {
                if let Some(v) = v {
                    m.n -= 1;
                    match v {
                        Num::Int(i) => m.int_sum -= i128::from(*i),
                        Num::Float(f) => m.float_sum -= f,
                    }
                    if let Some(c) = m.values.get_mut(&v.key()) {
                        *c -= 1;
                        if *c == 0 {
                            m.values.remove(&v.key());
                        }
                    }
                }
            }
        }
        Contribution::Member(id) => {
            if let Some(c) = t.ids.get_mut(id) {
                *c -= 1;
                if *c == 0 {
                    t.ids.remove(id);
                }
            }
        }
        Contribution::Own { .. } | Contribution::Embedded(_) => {}
    }
}

fn num_json(n: Num) -> Value {
    match n {
        Num::Int(i) => json!(i),
        Num::Float(f) => json!(f),
    }
}

#[allow(clippy::cast_precision_loss)]
fn measure_value(func: MeasureFn, s: &MeasureState) -> Value {
    let sum = || -> Value {
        if s.float_sum == 0.0 {
            i64::try_from(s.int_sum).map_or_else(|_| json!(s.int_sum as f64), |i| json!(i))
        } else {
            json!(s.int_sum as f64 + s.float_sum)
        }
    };
    match func {
        MeasureFn::Count => json!(s.n),
        MeasureFn::Sum => sum(),
        MeasureFn::Avg if s.n == 0 => Value::Null,
        MeasureFn::Avg => json!((s.int_sum as f64 + s.float_sum) / s.n as f64),
        MeasureFn::Min => s
            .values
            .keys()
            .next()
            .map_or(Value::Null, |k| num_json(k.0)),
        MeasureFn::Max => s
            .values
            .keys()
            .next_back()
            .map_or(Value::Null, |k| num_json(k.0)),
    }
}
