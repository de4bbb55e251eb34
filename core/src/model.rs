//! The model: declared entity types and the views derived from them.
//!
//! A model file is TOML. It declares entities (typed fields, references to
//! other entities, an optional routing field) and views (what is derived from
//! which entity, and how). The origin reads it at start and refuses to start
//! on any mistake, naming the file, line, column and field; the edge may read
//! it to pre-check writes. Everything here is pure: parse, validate, check a
//! document against its entity type.
//!
//! ```toml
//! [entity.order]
//! fields = { customer = "ref:customer", product = "ref:product", date = "date" }
//!
//! [view.order_page]
//! kind = "embed"
//! from = "order"
//! fields = ["date"]
//! embed = { customer = ["name", "country"], product = ["code", "name"] }
//! ```
//!
//! Field types: `string`, `int` (a JSON integer that fits i64), `number`,
//! `bool`, `date` (`YYYY-MM-DD`), `timestamp` (integer milliseconds since the
//! Unix epoch), `ref:{entity}` (the id of an entity that must exist when the
//! reference is written) and `weakref:{entity}` (may dangle). A trailing `?`
//! makes a field optional (absent or `null`). Undeclared fields are refused.
//! `id` is reserved: views add it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;

use serde_json::{Map, Value};
use thiserror::Error;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::key::Key;

/// The most items a page of a list, index or text view may hold.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// The shortest counter publication period: Workers KV takes about one write
/// per second per key.
pub const MIN_PUBLISH_MS: u64 = 1000;

/// A parsed and validated model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    entities: BTreeMap<String, Entity>,
    views: BTreeMap<String, View>,
}

/// One entity type.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    /// The type name: the first segment of its keys.
    pub name: String,
    /// Declared fields.
    pub fields: BTreeMap<String, Field>,
    /// The reference field whose value is the second key segment, so that
    /// the entity lives with the one it belongs to (`comment/{event}/{id}`).
    pub route: Option<String>,
}

/// One declared field.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// Its type.
    pub ty: FieldType,
    /// Whether it may be absent or `null`.
    pub optional: bool,
}

/// The type of a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldType {
    /// Any JSON string.
    String,
    /// A JSON integer within i64.
    Int,
    /// Any JSON number.
    Number,
    /// `true` or `false`.
    Bool,
    /// `YYYY-MM-DD`.
    Date,
    /// Integer milliseconds since the Unix epoch.
    Timestamp,
    /// The id of another entity.
    Ref {
        /// The referenced entity type.
        entity: String,
        /// Whether the referenced entity may be missing.
        dangling: bool,
    },
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldType::String => f.write_str("string"),
            FieldType::Int => f.write_str("int"),
            FieldType::Number => f.write_str("number"),
            FieldType::Bool => f.write_str("bool"),
            FieldType::Date => f.write_str("date"),
            FieldType::Timestamp => f.write_str("timestamp"),
            FieldType::Ref {
                entity,
                dangling: false,
            } => write!(f, "ref:{entity}"),
            FieldType::Ref {
                entity,
                dangling: true,
            } => write!(f, "weakref:{entity}"),
        }
    }
}

/// One view.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// The view's name: the first segment of its keys.
    pub name: String,
    /// What it derives.
    pub kind: ViewKind,
}

/// The kinds of view.
#[derive(Debug, Clone, PartialEq)]
pub enum ViewKind {
    /// One object per entity, with fields of the entities it references.
    Embed(Embed),
    /// Children of a parent, sorted, paged by cursor.
    List(List),
    /// count / sum / avg / min / max per group.
    Aggregate(Aggregate),
    /// A high-rate counter, published periodically.
    Counter(Counter),
    /// Equality plus range over entities, paged by cursor.
    Index(Index),
    /// Inverted lists per word.
    Text(Text),
    /// A membership set.
    Set(SetView),
}

impl ViewKind {
    /// The entity type it is derived from (none for counters).
    pub fn from(&self) -> Option<&str> {
        match self {
            ViewKind::Embed(v) => Some(&v.from),
            ViewKind::List(v) => Some(&v.from),
            ViewKind::Aggregate(v) => Some(&v.from),
            ViewKind::Counter(_) => None,
            ViewKind::Index(v) => Some(&v.from),
            ViewKind::Text(v) => Some(&v.from),
            ViewKind::Set(v) => Some(&v.from),
        }
    }

    /// The name used in the model file.
    pub fn name(&self) -> &'static str {
        match self {
            ViewKind::Embed(_) => "embed",
            ViewKind::List(_) => "list",
            ViewKind::Aggregate(_) => "aggregate",
            ViewKind::Counter(_) => "counter",
            ViewKind::Index(_) => "index",
            ViewKind::Text(_) => "text",
            ViewKind::Set(_) => "set",
        }
    }
}

/// `kind = "embed"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Embed {
    /// The entity each view object is made from (same id).
    pub from: String,
    /// Its own fields to copy.
    pub fields: Vec<String>,
    /// Per reference field of `from`: the referenced entity and the fields
    /// of it to embed.
    pub embed: Vec<Embedded>,
}

/// One embedded reference of an [`Embed`] view.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    /// The reference field of the view's entity.
    pub field: String,
    /// The entity type it references.
    pub entity: String,
    /// The fields of that entity to copy.
    pub fields: Vec<String>,
}

/// `kind = "list"`.
#[derive(Debug, Clone, PartialEq)]
pub struct List {
    /// The child entity.
    pub from: String,
    /// The field of the child naming its parent: the list's id.
    pub parent: String,
    /// The sort order, most significant first.
    pub order: Vec<SortField>,
    /// Fields of each child shown in the list.
    pub fields: Vec<String>,
    /// Items per page (and the largest `limit`).
    pub page_size: u32,
}

/// One component of a sort order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortField {
    /// The field.
    pub field: String,
    /// Largest first (`-field`).
    pub descending: bool,
}

/// `kind = "aggregate"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    /// The entity aggregated.
    pub from: String,
    /// The field whose value names the group: the view's id.
    pub group: String,
    /// The measures, by output name.
    pub measures: Vec<Measure>,
}

/// One measure of an aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measure {
    /// The output field.
    pub name: String,
    /// What is computed.
    pub func: MeasureFn,
    /// Over which field (`None` for a plain count of entities).
    pub field: Option<String>,
}

/// Aggregate functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeasureFn {
    /// Number of entities (or of present values, with a field).
    Count,
    /// Sum of the field.
    Sum,
    /// Mean of the present values.
    Avg,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
}

/// `kind = "counter"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    /// How often a changed counter is published.
    pub publish_ms: u64,
}

/// `kind = "index"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Index {
    /// The entity indexed.
    pub from: String,
    /// The equality field: the view's id.
    pub eq: String,
    /// The range field, in ascending order.
    pub range: String,
    /// Fields shown per entry.
    pub fields: Vec<String>,
    /// Items per page (and the largest `limit`).
    pub page_size: u32,
}

/// `kind = "text"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Text {
    /// The entity indexed.
    pub from: String,
    /// String fields whose words are indexed.
    pub fields: Vec<String>,
    /// Fields shown per match.
    pub show: Vec<String>,
    /// Items per page (and the largest `limit`).
    pub page_size: u32,
}

/// `kind = "set"`.
#[derive(Debug, Clone, PartialEq)]
pub struct SetView {
    /// The entity whose objects are the memberships.
    pub from: String,
    /// The field naming the set: the view's id.
    pub owner: String,
    /// The field naming the member.
    pub member: String,
    /// Whether each membership also puts the owner in the member's set.
    pub symmetric: bool,
}

/// A model file that cannot be used. Displays as `file:line:column: field: message`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{file}:{line}:{column}: {field}: {message}")]
pub struct ModelError {
    /// The file, as given.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// The dotted path of the offending field (`view.order_page.embed.product`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Why a document does not fit its entity type. Each is a 422 at the origin.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Violation {
    /// The body is not a JSON object.
    #[error("a `{entity}` must be a JSON object")]
    NotAnObject {
        /// The entity type.
        entity: String,
    },
    /// A field the model does not declare.
    #[error("`{entity}` has no field `{field}`")]
    UnknownField {
        /// The entity type.
        entity: String,
        /// The field.
        field: String,
    },
    /// A required field is absent or null.
    #[error("`{entity}.{field}` is required")]
    MissingField {
        /// The entity type.
        entity: String,
        /// The field.
        field: String,
    },
    /// A value of the wrong type.
    #[error("`{entity}.{field}` must be a {expected}")]
    WrongType {
        /// The entity type.
        entity: String,
        /// The field.
        field: String,
        /// The declared type.
        expected: String,
    },
    /// The key does not have the entity's shape.
    #[error("the key of a `{entity}` must look like `{shape}`")]
    KeyShape {
        /// The entity type.
        entity: String,
        /// The expected shape.
        shape: String,
    },
    /// The routing field does not match the key.
    #[error("`{entity}.{field}` is {value:?} but the key says {expected:?}")]
    RouteMismatch {
        /// The entity type.
        entity: String,
        /// The routing field.
        field: String,
        /// The value in the body.
        value: String,
        /// The key's second segment.
        expected: String,
    },
    /// A value that names a key (a reference, a group, a set) but cannot.
    #[error("`{entity}.{field}` = {value:?} cannot name a key: {reason}")]
    NotAKey {
        /// The entity type.
        entity: String,
        /// The field.
        field: String,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
    /// A reference to an entity that does not exist.
    #[error("`{entity}.{field}` refers to {target}, which does not exist")]
    Dangling {
        /// The entity type.
        entity: String,
        /// The field.
        field: String,
        /// The missing key.
        target: String,
    },
}

impl Model {
    /// Parses and validates a model file's text; `file` is only used in errors.
    pub fn parse(file: &str, text: &str) -> Result<Model, ModelError> {
        let cx = Cx { file, text };
        let root = DeTable::parse(text)
            .map_err(|e| cx.error(e.span().unwrap_or(0..0), "-", e.message().trim().to_owned()))?;
        let root = root.get_ref();
        for (k, v) in root.iter() {
            let name: &str = k.get_ref();
            if name != "entity" && name != "view" {
                return Err(cx.error(
                    k.span(),
                    name,
                    "unknown section; a model has `[entity.…]` and `[view.…]` tables".into(),
                ));
            }
            cx.table(v, name)?;
        }
        let mut model = Model::default();
        let empty = DeTable::new();
        let entities = match root.get("entity") {
            Some(v) => cx.table(v, "entity")?,
            None => &empty,
        };
        let views = match root.get("view") {
            Some(v) => cx.table(v, "view")?,
            None => &empty,
        };
        // Names first: references may point forward.
        let entity_names: BTreeSet<String> = entities
            .iter()
            .map(|(k, _)| k.get_ref().to_string())
            .collect();
        for (k, v) in entities.iter() {
            let entity = cx.entity(k, v, &entity_names)?;
            model.entities.insert(entity.name.clone(), entity);
        }
        for (k, v) in entities.iter() {
            cx.check_route(k, v, &model)?;
        }
        for (k, v) in views.iter() {
            let name: &str = k.get_ref();
            let path = format!("view.{name}");
            if model.entities.contains_key(name) {
                return Err(cx.error(
                    k.span(),
                    &path,
                    format!(
                        "`{name}` is already an entity; entities and views share the key space"
                    ),
                ));
            }
            let view = cx.view(k, v, &model)?;
            model.views.insert(view.name.clone(), view);
        }
        Ok(model)
    }

    /// The entity type of that name.
    pub fn entity(&self, name: &str) -> Option<&Entity> {
        self.entities.get(name)
    }

    /// The view of that name.
    pub fn view(&self, name: &str) -> Option<&View> {
        self.views.get(name)
    }

    /// Every entity type, by name.
    pub fn entities(&self) -> impl Iterator<Item = &Entity> {
        self.entities.values()
    }

    /// Every view, by name.
    pub fn views(&self) -> impl Iterator<Item = &View> {
        self.views.values()
    }

    /// Whether there is nothing declared.
    pub fn is_empty(&self) -> bool {
        self.entities.is_empty() && self.views.is_empty()
    }

    /// Checks a document written under `key` against its entity type: the
    /// key's shape, every field's presence and type, and that every value
    /// used as part of a key (references, routing, list parents, groups,
    /// index and set fields) can be one. Existence of referenced entities is
    /// not checked here (that needs the store): see [`Model::references`].
    pub fn check(&self, entity: &Entity, key: &Key, doc: &Value) -> Result<(), Violation> {
        let name = &entity.name;
        let segments: Vec<&str> = key.as_str().split('/').collect();
        let shape_ok = match &entity.route {
            None => segments.len() == 2,
            Some(_) => segments.len() == 3,
        };
        if !shape_ok {
            return Err(Violation::KeyShape {
                entity: name.clone(),
                shape: match &entity.route {
                    None => format!("{name}/{{id}}"),
                    Some(route) => format!("{name}/{{{route}}}/{{id}}"),
                },
            });
        }
        let Some(obj) = doc.as_object() else {
            return Err(Violation::NotAnObject {
                entity: name.clone(),
            });
        };
        if let Some(field) = obj.keys().find(|f| !entity.fields.contains_key(*f)) {
            return Err(Violation::UnknownField {
                entity: name.clone(),
                field: field.clone(),
            });
        }
        for (field, decl) in &entity.fields {
            let value = obj.get(field).filter(|v| !v.is_null());
            let Some(value) = value else {
                if decl.optional {
                    continue;
                }
                return Err(Violation::MissingField {
                    entity: name.clone(),
                    field: field.clone(),
                });
            };
            if !type_fits(&decl.ty, value) {
                return Err(Violation::WrongType {
                    entity: name.clone(),
                    field: field.clone(),
                    expected: decl.ty.to_string(),
                });
            }
            if let FieldType::Ref { entity: target, .. } = &decl.ty {
                let id = value.as_str().unwrap_or_default();
                self.ref_key(target, id)
                    .map_err(|reason| Violation::NotAKey {
                        entity: name.clone(),
                        field: field.clone(),
                        value: id.to_owned(),
                        reason,
                    })?;
            }
        }
        if let Some(route) = &entity.route {
            let value = obj.get(route).and_then(Value::as_str).unwrap_or_default();
            if value != segments[1] {
                return Err(Violation::RouteMismatch {
                    entity: name.clone(),
                    field: route.clone(),
                    value: value.to_owned(),
                    expected: segments[1].to_owned(),
                });
            }
        }
        self.check_view_ids(name, obj)
    }

    /// The values of a `name` document that views derived from it use as ids
    /// (list parents, groups, index and set fields) must each make a key of
    /// the view: checked at write time, so that deriving the view never
    /// meets an id it cannot store under.
    fn check_view_ids(&self, name: &str, obj: &Map<String, Value>) -> Result<(), Violation> {
        for view in self.views.values() {
            if view.kind.from() != Some(name) {
                continue;
            }
            let id_fields: Vec<&str> = match &view.kind {
                ViewKind::List(v) => vec![&v.parent],
                ViewKind::Aggregate(v) => vec![&v.group],
                ViewKind::Index(v) => vec![&v.eq],
                ViewKind::Set(v) => vec![&v.owner, &v.member],
                _ => vec![],
            };
            for field in id_fields {
                if let Some(value) = obj.get(field).and_then(scalar_id) {
                    if let Err(e) = Key::parse(&format!("{}/{value}", view.name)) {
                        return Err(Violation::NotAKey {
                            entity: name.to_owned(),
                            field: field.to_owned(),
                            value,
                            reason: e.to_string(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The key of entity `entity` with id `id`, if the id fits its shape.
    pub fn ref_key(&self, entity: &str, id: &str) -> Result<Key, String> {
        let key = Key::parse(&format!("{entity}/{id}")).map_err(|e| e.to_string())?;
        let want = match self.entities.get(entity).and_then(|e| e.route.as_ref()) {
            None => 2,
            Some(_) => 3,
        };
        if key.as_str().split('/').count() != want {
            return Err(format!("an id of `{entity}` has {} segment(s)", want - 1));
        }
        Ok(key)
    }

    /// The entities a document refers to and must exist (its `ref:` fields
    /// with a value), as (field, key).
    pub fn references(&self, entity: &Entity, doc: &Value) -> Vec<(String, Key)> {
        let mut out = Vec::new();
        for (field, decl) in &entity.fields {
            if let FieldType::Ref {
                entity: target,
                dangling: false,
            } = &decl.ty
            {
                if let Some(id) = doc.get(field).and_then(Value::as_str) {
                    if let Ok(key) = self.ref_key(target, id) {
                        out.push((field.clone(), key));
                    }
                }
            }
        }
        out
    }
}

/// A value used as an id segment: strings as they are, integers printed.
pub fn scalar_id(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn type_fits(ty: &FieldType, v: &Value) -> bool {
    match ty {
        FieldType::String | FieldType::Ref { .. } => v.is_string(),
        FieldType::Int => v.is_i64(),
        FieldType::Number => v.is_number(),
        FieldType::Bool => v.is_boolean(),
        FieldType::Timestamp => v.as_i64().is_some_and(|t| t >= 0),
        FieldType::Date => v.as_str().is_some_and(is_date),
    }
}

/// `YYYY-MM-DD` with a plausible month and day (the calendar is not checked
/// further: dates are compared as strings).
fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let digits = |r: Range<usize>| b[r.clone()].iter().all(u8::is_ascii_digit);
    if !(digits(0..4) && digits(5..7) && digits(8..10)) {
        return false;
    }
    let month = (b[5] - b'0') * 10 + (b[6] - b'0');
    let day = (b[8] - b'0') * 10 + (b[9] - b'0');
    (1..=12).contains(&month) && (1..=31).contains(&day)
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

/// Parsing context: turns spans into file positions.
struct Cx<'a> {
    file: &'a str,
    text: &'a str,
}

type Val<'i> = Spanned<DeValue<'i>>;

impl Cx<'_> {
    fn error(&self, span: Range<usize>, field: &str, message: String) -> ModelError {
        let at = span.start.min(self.text.len());
        let before = self.text.get(..at).unwrap_or_default();
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ModelError {
            file: self.file.to_owned(),
            line,
            column,
            field: field.to_owned(),
            message,
        }
    }

    /// The mistake every key that names fields of an entity can make.
    fn no_field(&self, span: Range<usize>, path: &str, entity: &Entity, field: &str) -> ModelError {
        self.error(
            span,
            path,
            format!("`{}` has no field `{field}`", entity.name),
        )
    }

    fn table<'v, 'i>(&self, v: &'v Val<'i>, path: &str) -> Result<&'v DeTable<'i>, ModelError> {
        v.get_ref().as_table().ok_or_else(|| {
            self.error(
                v.span(),
                path,
                format!("must be a table, not {}", v.get_ref().type_str()),
            )
        })
    }

    fn string(&self, v: &Val<'_>, path: &str) -> Result<String, ModelError> {
        v.get_ref().as_str().map(str::to_owned).ok_or_else(|| {
            self.error(
                v.span(),
                path,
                format!("must be a string, not {}", v.get_ref().type_str()),
            )
        })
    }

    fn strings(&self, v: &Val<'_>, path: &str) -> Result<Vec<(String, Range<usize>)>, ModelError> {
        let arr = v.get_ref().as_array().ok_or_else(|| {
            self.error(
                v.span(),
                path,
                format!(
                    "must be an array of strings, not {}",
                    v.get_ref().type_str()
                ),
            )
        })?;
        arr.iter()
            .enumerate()
            .map(|(i, item)| Ok((self.string(item, &format!("{path}[{i}]"))?, item.span())))
            .collect()
    }

    fn int(&self, v: &Val<'_>, path: &str) -> Result<i64, ModelError> {
        let bad = || self.error(v.span(), path, "must be an integer".into());
        let n = v.get_ref().as_integer().ok_or_else(bad)?;
        i64::from_str_radix(&n.as_str().replace('_', ""), n.radix()).map_err(|_| bad())
    }

    fn allow_keys(
        &self,
        table: &DeTable<'_>,
        path: &str,
        allowed: &[&str],
        what: &str,
    ) -> Result<(), ModelError> {
        for (k, _) in table.iter() {
            let key: &str = k.get_ref();
            if !allowed.contains(&key) {
                return Err(self.error(
                    k.span(),
                    &format!("{path}.{key}"),
                    format!(
                        "unknown key for {what}; expected one of: {}",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    fn required<'v, 'i>(
        &self,
        table: &'v DeTable<'i>,
        name: &str,
        path: &str,
        at: Range<usize>,
    ) -> Result<&'v Val<'i>, ModelError> {
        table
            .get(name)
            .ok_or_else(|| self.error(at, &format!("{path}.{name}"), "is required".into()))
    }

    fn entity(
        &self,
        k: &Spanned<toml::de::DeString<'_>>,
        v: &Val<'_>,
        names: &BTreeSet<String>,
    ) -> Result<Entity, ModelError> {
        let name: &str = k.get_ref();
        let path = format!("entity.{name}");
        check_type_name(self, name, &path, k.span())?;
        let table = self.table(v, &path)?;
        self.allow_keys(table, &path, &["fields", "route"], "an entity")?;
        let fields_v = self.required(table, "fields", &path, k.span())?;
        let fields_t = self.table(fields_v, &format!("{path}.fields"))?;
        if fields_t.is_empty() {
            return Err(self.error(
                fields_v.span(),
                &format!("{path}.fields"),
                "declares no field".into(),
            ));
        }
        let mut fields = BTreeMap::new();
        for (fk, fv) in fields_t.iter() {
            let field: &str = fk.get_ref();
            let fpath = format!("{path}.fields.{field}");
            if !is_identifier(field) {
                return Err(self.error(
                    fk.span(),
                    &fpath,
                    "a field name is lower-case letters, digits and `_`".into(),
                ));
            }
            if field == "id" {
                return Err(self.error(
                    fk.span(),
                    &fpath,
                    "`id` is reserved: views add the entity's id".into(),
                ));
            }
            let spec = self.string(fv, &fpath)?;
            let decl = parse_field_type(&spec).map_err(|m| self.error(fv.span(), &fpath, m))?;
            if let FieldType::Ref { entity, .. } = &decl.ty {
                if !names.contains(entity) {
                    return Err(self.error(
                        fv.span(),
                        &fpath,
                        format!("refers to `{entity}`, which is not a declared entity"),
                    ));
                }
            }
            fields.insert(field.to_owned(), decl);
        }
        let route = match table.get("route") {
            Some(r) => Some(self.string(r, &format!("{path}.route"))?),
            None => None,
        };
        Ok(Entity {
            name: name.to_owned(),
            fields,
            route,
        })
    }

    fn check_route(
        &self,
        k: &Spanned<toml::de::DeString<'_>>,
        v: &Val<'_>,
        model: &Model,
    ) -> Result<(), ModelError> {
        let name: &str = k.get_ref();
        let path = format!("entity.{name}.route");
        let (Some(entity), Some(table)) = (model.entities.get(name), v.get_ref().as_table()) else {
            return Ok(());
        };
        let (Some(route), Some(span)) = (&entity.route, table.get("route").map(Spanned::span))
        else {
            return Ok(());
        };
        match entity.fields.get(route) {
            Some(Field {
                ty: FieldType::Ref { entity: target, .. },
                optional: false,
            }) => match model.entities.get(target) {
                Some(t) if t.route.is_some() => Err(self.error(
                    span,
                    &path,
                    format!(
                        "routes by `{target}`, which is itself routed; route by a top-level entity"
                    ),
                )),
                _ => Ok(()),
            },
            Some(_) => Err(self.error(
                span,
                &path,
                format!("`{route}` must be a required `ref:` field"),
            )),
            None => Err(self.error(span, &path, format!("`{name}` has no field `{route}`"))),
        }
    }

    fn view(
        &self,
        k: &Spanned<toml::de::DeString<'_>>,
        v: &Val<'_>,
        model: &Model,
    ) -> Result<View, ModelError> {
        let name: &str = k.get_ref();
        let path = format!("view.{name}");
        check_type_name(self, name, &path, k.span())?;
        let t = self.table(v, &path)?;
        let kind_v = self.required(t, "kind", &path, k.span())?;
        let kind = self.string(kind_v, &format!("{path}.kind"))?;
        let (keys, parse): (&[&str], KindParser<'_, '_>) = match kind.as_str() {
            "embed" => (&["kind", "from", "fields", "embed"], ViewTable::embed),
            "list" => (
                &["kind", "from", "parent", "order", "fields", "page_size"],
                ViewTable::list,
            ),
            "aggregate" => (
                &["kind", "from", "group", "measures"],
                ViewTable::aggregate,
            ),
            "counter" => (&["kind", "publish_ms"], ViewTable::counter),
            "index" => (
                &["kind", "from", "eq", "range", "fields", "page_size"],
                ViewTable::index,
            ),
            "text" => (
                &["kind", "from", "fields", "show", "page_size"],
                ViewTable::text,
            ),
            "set" => (
                &["kind", "from", "owner", "member", "symmetric"],
                ViewTable::set,
            ),
            other => {
                return Err(self.error(
                    kind_v.span(),
                    &format!("{path}.kind"),
                    format!("unknown view kind `{other}`; expected embed, list, aggregate, counter, index, text or set"),
                ))
            }
        };
        self.allow_keys(t, &path, keys, &format!("a `{kind}` view"))?;
        let table = ViewTable {
            cx: self,
            t,
            path,
            at: k.span(),
            model,
        };
        Ok(View {
            name: name.to_owned(),
            kind: parse(&table)?,
        })
    }

    fn known_fields(
        &self,
        entity: &Entity,
        list: &[(String, Range<usize>)],
        path: &str,
    ) -> Result<Vec<String>, ModelError> {
        let mut out = Vec::new();
        for (f, span) in list {
            if !entity.fields.contains_key(f) {
                return Err(self.no_field(span.clone(), path, entity, f));
            }
            if out.contains(f) {
                return Err(self.error(span.clone(), path, format!("`{f}` is listed twice")));
            }
            out.push(f.clone());
        }
        Ok(out)
    }
}

/// Reads the table of one view kind, once its keys are known to fit it.
type KindParser<'a, 'i> = fn(&ViewTable<'a, 'i>) -> Result<ViewKind, ModelError>;

/// One `[view.*]` table being read: the model its entities and fields are
/// looked up in, and where its errors point.
struct ViewTable<'a, 'i> {
    cx: &'a Cx<'a>,
    t: &'a DeTable<'i>,
    /// `view.{name}`: every error's field starts with it.
    path: String,
    /// The view's name: an absent key has no span of its own, so its error
    /// points here.
    at: Range<usize>,
    model: &'a Model,
}

impl<'a, 'i> ViewTable<'a, 'i> {
    fn key_path(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    fn required(&self, key: &str) -> Result<&'a Val<'i>, ModelError> {
        self.cx.required(self.t, key, &self.path, self.at.clone())
    }

    /// The entity the view is derived from, named by `from`.
    fn from(&self) -> Result<&'a Entity, ModelError> {
        let fv = self.required("from")?;
        let path = self.key_path("from");
        let from = self.cx.string(fv, &path)?;
        self.model.entities.get(&from).ok_or_else(|| {
            self.cx.error(
                fv.span(),
                &path,
                format!("`{from}` is not a declared entity"),
            )
        })
    }

    /// A field of `entity`, named by the string at `key`.
    fn field_of(&self, entity: &Entity, key: &str) -> Result<String, ModelError> {
        let fv = self.required(key)?;
        let path = self.key_path(key);
        let f = self.cx.string(fv, &path)?;
        if !entity.fields.contains_key(&f) {
            return Err(self.cx.no_field(fv.span(), &path, entity, &f));
        }
        Ok(f)
    }

    /// Fields of `entity`, listed at `key`; an absent list is empty unless
    /// it is `required`.
    fn fields_of(
        &self,
        entity: &Entity,
        key: &str,
        required: bool,
    ) -> Result<Vec<String>, ModelError> {
        let path = self.key_path(key);
        let Some(fv) = self.t.get(key) else {
            if required {
                return Err(self.cx.error(self.at.clone(), &path, "is required".into()));
            }
            return Ok(Vec::new());
        };
        let list = self.cx.strings(fv, &path)?;
        self.cx.known_fields(entity, &list, &path)
    }

    fn page_size(&self) -> Result<u32, ModelError> {
        let Some(pv) = self.t.get("page_size") else {
            return Ok(20);
        };
        let path = self.key_path("page_size");
        let n = self.cx.int(pv, &path)?;
        u32::try_from(n)
            .ok()
            .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
            .ok_or_else(|| {
                self.cx.error(
                    pv.span(),
                    &path,
                    format!("must be between 1 and {MAX_PAGE_SIZE}"),
                )
            })
    }

    fn embed(&self) -> Result<ViewKind, ModelError> {
        let e = self.from()?;
        let fields = self.fields_of(e, "fields", false)?;
        let embed = match self.t.get("embed") {
            Some(ev) => self.embedded(e, ev)?,
            None => Vec::new(),
        };
        if fields.is_empty() && embed.is_empty() {
            return Err(self.cx.error(
                self.at.clone(),
                &self.path,
                "copies no field and embeds nothing".into(),
            ));
        }
        Ok(ViewKind::Embed(Embed {
            from: e.name.clone(),
            fields,
            embed,
        }))
    }

    /// The `embed` table: per reference field of `e`, the fields of the
    /// entity it references.
    fn embedded(&self, e: &Entity, ev: &Val<'_>) -> Result<Vec<Embedded>, ModelError> {
        let epath = self.key_path("embed");
        let mut embed = Vec::new();
        for (rk, rv) in self.cx.table(ev, &epath)?.iter() {
            let field: &str = rk.get_ref();
            let rpath = format!("{epath}.{field}");
            let target = match e.fields.get(field) {
                Some(Field {
                    ty: FieldType::Ref { entity, .. },
                    ..
                }) => entity,
                Some(_) => {
                    return Err(self.cx.error(
                        rk.span(),
                        &rpath,
                        format!("`{}.{field}` is not a reference", e.name),
                    ))
                }
                None => return Err(self.cx.no_field(rk.span(), &rpath, e, field)),
            };
            let target_e = self.model.entities.get(target).ok_or_else(|| {
                self.cx
                    .error(rk.span(), &rpath, format!("unknown entity `{target}`"))
            })?;
            let list = self.cx.strings(rv, &rpath)?;
            embed.push(Embedded {
                field: field.to_owned(),
                entity: target.clone(),
                fields: self.cx.known_fields(target_e, &list, &rpath)?,
            });
        }
        Ok(embed)
    }

    fn list(&self) -> Result<ViewKind, ModelError> {
        let e = self.from()?;
        let parent = self.field_of(e, "parent")?;
        let order = self.order(e)?;
        Ok(ViewKind::List(List {
            from: e.name.clone(),
            parent,
            order,
            fields: self.fields_of(e, "fields", true)?,
            page_size: self.page_size()?,
        }))
    }

    /// The `order` list: sortable fields of `e`, each ascending or, written
    /// `-field`, descending.
    fn order(&self, e: &Entity) -> Result<Vec<SortField>, ModelError> {
        let ov = self.required("order")?;
        let opath = self.key_path("order");
        let mut order = Vec::new();
        for (spec, span) in self.cx.strings(ov, &opath)? {
            let (descending, field) = match spec.strip_prefix('-') {
                Some(f) => (true, f.to_owned()),
                None => (false, spec.clone()),
            };
            match e.fields.get(&field) {
                Some(f) if sortable(&f.ty) => order.push(SortField { field, descending }),
                Some(f) => {
                    return Err(self.cx.error(
                        span,
                        &opath,
                        format!("`{field}` is a {} and cannot be sorted by", f.ty),
                    ))
                }
                None => return Err(self.cx.no_field(span, &opath, e, &field)),
            }
        }
        if order.is_empty() {
            return Err(self
                .cx
                .error(ov.span(), &opath, "needs at least one field".into()));
        }
        Ok(order)
    }

    fn aggregate(&self) -> Result<ViewKind, ModelError> {
        let e = self.from()?;
        let group = self.field_of(e, "group")?;
        let mv = self.required("measures")?;
        let mpath = self.key_path("measures");
        let mut measures = Vec::new();
        for (nk, nv) in self.cx.table(mv, &mpath)?.iter() {
            measures.push(self.measure(e, nk, nv, &mpath)?);
        }
        if measures.is_empty() {
            return Err(self
                .cx
                .error(mv.span(), &mpath, "declares no measure".into()));
        }
        Ok(ViewKind::Aggregate(Aggregate {
            from: e.name.clone(),
            group,
            measures,
        }))
    }

    /// One entry of `measures`: `name = "count"` or `name = "func:field"`,
    /// where all but `count` need a numeric field.
    fn measure(
        &self,
        e: &Entity,
        nk: &Spanned<toml::de::DeString<'_>>,
        nv: &Val<'_>,
        mpath: &str,
    ) -> Result<Measure, ModelError> {
        let mname: &str = nk.get_ref();
        let npath = format!("{mpath}.{mname}");
        if !is_identifier(mname) || mname == "id" {
            return Err(self.cx.error(
                nk.span(),
                &npath,
                "a measure name is lower-case letters, digits and `_`, and not `id`".into(),
            ));
        }
        let spec = self.cx.string(nv, &npath)?;
        let (func, field) = match spec.split_once(':') {
            Some((f, field)) => (f, Some(field.to_owned())),
            None => (spec.as_str(), None),
        };
        let func = match func {
            "count" => MeasureFn::Count,
            "sum" => MeasureFn::Sum,
            "avg" => MeasureFn::Avg,
            "min" => MeasureFn::Min,
            "max" => MeasureFn::Max,
            other => {
                return Err(self.cx.error(
                    nv.span(),
                    &npath,
                    format!(
                        "unknown function `{other}`; expected count, sum:F, avg:F, min:F or max:F"
                    ),
                ))
            }
        };
        match &field {
            None if func != MeasureFn::Count => {
                return Err(self
                    .cx
                    .error(nv.span(), &npath, "needs a field: `sum:F`".into()))
            }
            Some(f) => match e.fields.get(f) {
                Some(d)
                    if func == MeasureFn::Count
                        || matches!(d.ty, FieldType::Int | FieldType::Number) => {}
                Some(d) => {
                    return Err(self.cx.error(
                        nv.span(),
                        &npath,
                        format!("`{f}` is a {}, not a number", d.ty),
                    ))
                }
                None => return Err(self.cx.no_field(nv.span(), &npath, e, f)),
            },
            None => {}
        }
        Ok(Measure {
            name: mname.to_owned(),
            func,
            field,
        })
    }

    fn counter(&self) -> Result<ViewKind, ModelError> {
        let publish_ms = match self.t.get("publish_ms") {
            None => MIN_PUBLISH_MS,
            Some(pv) => {
                let path = self.key_path("publish_ms");
                let n = self.cx.int(pv, &path)?;
                u64::try_from(n).ok().filter(|n| *n >= MIN_PUBLISH_MS).ok_or_else(|| {
                    self.cx.error(pv.span(), &path, format!("must be at least {MIN_PUBLISH_MS}: Workers KV takes one write per second per key"))
                })?
            }
        };
        Ok(ViewKind::Counter(Counter { publish_ms }))
    }

    fn index(&self) -> Result<ViewKind, ModelError> {
        let e = self.from()?;
        let eq = self.field_of(e, "eq")?;
        let range = self.field_of(e, "range")?;
        if let Some(f) = e.fields.get(&range).filter(|f| !sortable(&f.ty)) {
            let span = self.t.get("range").map_or(self.at.clone(), Spanned::span);
            return Err(self.cx.error(
                span,
                &self.key_path("range"),
                format!("`{range}` is a {} and cannot be ranged over", f.ty),
            ));
        }
        Ok(ViewKind::Index(Index {
            from: e.name.clone(),
            eq,
            range,
            fields: self.fields_of(e, "fields", true)?,
            page_size: self.page_size()?,
        }))
    }

    fn text(&self) -> Result<ViewKind, ModelError> {
        let e = self.from()?;
        let fields = self.fields_of(e, "fields", true)?;
        if let Some(f) = fields
            .iter()
            .find(|f| e.fields.get(*f).is_some_and(|d| d.ty != FieldType::String))
        {
            let span = self.t.get("fields").map_or(self.at.clone(), Spanned::span);
            return Err(self.cx.error(
                span,
                &self.key_path("fields"),
                format!("`{f}` is not a string field"),
            ));
        }
        if fields.is_empty() {
            return Err(self.cx.error(
                self.at.clone(),
                &self.key_path("fields"),
                "needs at least one field".into(),
            ));
        }
        Ok(ViewKind::Text(Text {
            from: e.name.clone(),
            fields,
            show: self.fields_of(e, "show", false)?,
            page_size: self.page_size()?,
        }))
    }

    fn set(&self) -> Result<ViewKind, ModelError> {
        let e = self.from()?;
        let owner = self.field_of(e, "owner")?;
        let member = self.field_of(e, "member")?;
        let symmetric = match self.t.get("symmetric") {
            None => false,
            Some(sv) => sv.get_ref().as_bool().ok_or_else(|| {
                self.cx.error(
                    sv.span(),
                    &self.key_path("symmetric"),
                    "must be true or false".into(),
                )
            })?,
        };
        Ok(ViewKind::Set(SetView {
            from: e.name.clone(),
            owner,
            member,
            symmetric,
        }))
    }
}

fn sortable(ty: &FieldType) -> bool {
    !matches!(ty, FieldType::Bool)
}

fn check_type_name(
    cx: &Cx<'_>,
    name: &str,
    path: &str,
    span: Range<usize>,
) -> Result<(), ModelError> {
    if is_identifier(name) {
        Ok(())
    } else {
        Err(cx.error(
            span,
            path,
            "a type name is lower-case letters, digits and `_`".into(),
        ))
    }
}

fn parse_field_type(spec: &str) -> Result<Field, String> {
    let (base, optional) = match spec.strip_suffix('?') {
        Some(b) => (b, true),
        None => (spec, false),
    };
    let ty = match base {
        "string" => FieldType::String,
        "int" => FieldType::Int,
        "number" => FieldType::Number,
        "bool" => FieldType::Bool,
        "date" => FieldType::Date,
        "timestamp" => FieldType::Timestamp,
        other => match other.split_once(':') {
            Some(("ref", e)) if !e.is_empty() => FieldType::Ref {
                entity: e.to_owned(),
                dangling: false,
            },
            Some(("weakref", e)) if !e.is_empty() => FieldType::Ref {
                entity: e.to_owned(),
                dangling: true,
            },
            _ => {
                return Err(format!(
                    "unknown field type `{spec}`; expected string, int, number, bool, date, timestamp, ref:ENTITY or weakref:ENTITY, optionally ending in `?`"
                ))
            }
        },
    };
    Ok(Field { ty, optional })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    const ORDERS: &str = r#"
[entity.customer]
fields = { name = "string", country = "string" }

[entity.product]
fields = { code = "string", name = "string", description = "string?" }

[entity.order]
fields = { customer = "ref:customer", product = "ref:product", date = "date" }

[view.order_page]
kind = "embed"
from = "order"
fields = ["date"]
embed = { customer = ["name", "country"], product = ["code", "name"] }
"#;

    fn err(text: &str) -> ModelError {
        Model::parse("m.toml", text).unwrap_err()
    }

    #[test]
    fn the_orders_model_parses() {
        let m = Model::parse("m.toml", ORDERS).unwrap();
        let ViewKind::Embed(e) = &m.view("order_page").unwrap().kind else {
            panic!("not an embed")
        };
        assert_eq!(e.from, "order");
        assert_eq!(e.embed.len(), 2);
        assert_eq!(e.embed[1].entity, "product");
        assert_eq!(e.embed[1].fields, ["code", "name"]);
    }

    #[test]
    fn the_demo_model_parses() {
        let text = include_str!("../../scripts/demo/model.toml");
        let m = Model::parse("model.toml", text).unwrap();
        assert!(m.view("event_views").is_some());
        assert_eq!(m.entity("comment").unwrap().route.as_deref(), Some("event"));
    }

    #[test]
    fn errors_name_file_line_column_and_field() {
        let text = ORDERS.replace(
            r#"product = ["code", "name"]"#,
            r#"product = ["code", "title"]"#,
        );
        let e = err(&text);
        assert_eq!(e.file, "m.toml");
        assert_eq!(e.line, 15);
        assert_eq!(e.field, "view.order_page.embed.product");
        assert!(e.message.contains("no field `title`"), "{e}");
        assert!(e.to_string().starts_with("m.toml:15:"), "{e}");

        let e = err("[entity.a]\nfields = { x = \"strin\" }\n");
        assert_eq!(
            (e.line, e.column, e.field.as_str()),
            (2, 16, "entity.a.fields.x")
        );
        assert!(e.message.contains("unknown field type `strin`"));

        let e = err("[entity.a]\nfields = { x = \"ref:b\" }\n");
        assert!(
            e.message.contains("`b`, which is not a declared entity"),
            "{e}"
        );

        let e = err("[view.v]\nkind = \"list\"\nfrom = \"nope\"\n");
        assert_eq!((e.line, e.field.as_str()), (3, "view.v.from"));

        let e = err("[view.v]\nkind = \"counter\"\npublish_ms = 10\n");
        assert_eq!((e.line, e.field.as_str()), (3, "view.v.publish_ms"));

        let e = err("[view.v]\nkind = \"counter\"\ngroup = \"x\"\n");
        assert_eq!((e.line, e.field.as_str()), (3, "view.v.group"));
        assert!(e.message.contains("unknown key for a `counter` view"));

        let e = err("[entity.a]\nfields = { x = \"string\" \n");
        assert_eq!((e.line, e.field.as_str()), (2, "-"), "{e}");

        let e = err("[entitty.a]\n");
        assert_eq!((e.line, e.column, e.field.as_str()), (1, 2, "entitty"));

        let e = err("[entity.a]\nfields = { x = \"int\" }\n[view.a]\nkind = \"counter\"\n");
        assert!(e.message.contains("already an entity"), "{e}");

        let e = err("[entity.a]\nfields = { x = \"int\" }\n[view.v]\nkind = \"list\"\nfrom = \"a\"\nparent = \"x\"\norder = [\"-y\"]\nfields = []\n");
        assert_eq!((e.line, e.field.as_str()), (7, "view.v.order"));
        assert!(e.message.contains("no field `y`"));

        let e = err("[entity.a]\nroute = \"x\"\nfields = { x = \"int\" }\n");
        assert_eq!((e.line, e.field.as_str()), (2, "entity.a.route"));
    }

    #[test]
    fn documents_are_checked_against_their_type() {
        let m = Model::parse("m.toml", ORDERS).unwrap();
        let order = m.entity("order").unwrap();
        let key = Key::parse("order/o1").unwrap();
        let good = json!({"customer": "c1", "product": "p1", "date": "2026-12-01"});
        assert_eq!(m.check(order, &key, &good), Ok(()));
        let refs = m.references(order, &good);
        assert_eq!(refs[1].1.as_str(), "product/p1");

        let bad = |doc: Value| m.check(order, &key, &doc).unwrap_err();
        assert!(matches!(bad(json!([1])), Violation::NotAnObject { .. }));
        assert!(
            matches!(bad(json!({"customer": "c1", "product": "p1"})), Violation::MissingField { field, .. } if field == "date")
        );
        assert!(matches!(
            bad(json!({"customer": "c1", "product": "p1", "date": "2026-13-01"})),
            Violation::WrongType { .. }
        ));
        assert!(matches!(
            bad(json!({"customer": "c1", "product": 7, "date": "2026-12-01"})),
            Violation::WrongType { .. }
        ));
        assert!(matches!(
            bad(json!({"customer": "c1", "product": "p1", "date": "2026-12-01", "x": 1})),
            Violation::UnknownField { .. }
        ));
        assert!(matches!(
            bad(json!({"customer": "c 1", "product": "p1", "date": "2026-12-01"})),
            Violation::NotAKey { .. }
        ));
        assert!(matches!(
            m.check(order, &Key::parse("order/o1/x").unwrap(), &good),
            Err(Violation::KeyShape { .. })
        ));
        let product = m.entity("product").unwrap();
        let p = Key::parse("product/p1").unwrap();
        assert_eq!(
            m.check(
                product,
                &p,
                &json!({"code": "A", "name": "B", "description": null})
            ),
            Ok(())
        );
    }

    #[test]
    fn routed_entities_carry_their_route_in_the_key() {
        let m = Model::parse("model.toml", include_str!("../../scripts/demo/model.toml")).unwrap();
        let comment = m.entity("comment").unwrap();
        let doc = json!({"event": "e1", "author": "u1", "ts": 1, "seq": 1, "text": "hi"});
        assert_eq!(
            m.check(comment, &Key::parse("comment/e1/u1.1").unwrap(), &doc),
            Ok(())
        );
        assert!(matches!(
            m.check(comment, &Key::parse("comment/e2/u1.1").unwrap(), &doc),
            Err(Violation::RouteMismatch { .. })
        ));
        assert!(matches!(
            m.check(comment, &Key::parse("comment/e1").unwrap(), &doc),
            Err(Violation::KeyShape { .. })
        ));
        // A group value must be usable as a key segment.
        let event = m.entity("event").unwrap();
        let e = json!({"title": "t", "description": "d", "category": "live music", "date": "2026-12-01", "venue": "v1"});
        assert!(matches!(
            m.check(event, &Key::parse("event/e1").unwrap(), &e),
            Err(Violation::NotAKey { field, .. }) if field == "category"
        ));
    }
}
