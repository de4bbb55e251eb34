//! The write operations on one object, as pure functions of the current
//! version: replace, JSON merge patch, delete, append, increment.
//!
//! They run inside the key's partition worker, which is the only writer of
//! the key, so "read the current value, compute the next" needs no lock and
//! loses no update. Keeping them pure (no I/O, no clock) makes them easy to
//! test exhaustively.

use bytes::Bytes;
use serde_json::{Number, Value};

use super::object::Object;

/// One write to one key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    /// Replace the whole object (`PUT`).
    Put {
        /// Its media type (a JSON type).
        content_type: String,
        /// Its bytes (checked to be JSON).
        body: Bytes,
    },
    /// Apply an RFC 7386 JSON merge patch (`PATCH`).
    Patch(Value),
    /// Delete: leaves a tombstone (`DELETE`).
    Delete,
    /// Append a value to the array at a JSON pointer (created if absent).
    Append {
        /// RFC 6901 pointer to the array; `""` is the whole object.
        pointer: String,
        /// What to append.
        value: Value,
    },
    /// Add a number to the number at a JSON pointer (created as 0 if absent).
    Increment {
        /// RFC 6901 pointer to the number; `""` is the whole object.
        pointer: String,
        /// What to add (may be negative or fractional).
        delta: Number,
    },
}

/// The kinds of write, for counting them (`prefold_writes_total{op=…}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpKind {
    /// `PUT`.
    Put,
    /// `PATCH`.
    Patch,
    /// `DELETE`.
    Delete,
    /// `POST ?op=append`.
    Append,
    /// `POST ?op=increment` (also a counter view's increment).
    Increment,
}

impl OpKind {
    /// Every kind, in the order of [`OpKind::index`].
    pub(crate) const ALL: [OpKind; 5] = [
        OpKind::Put,
        OpKind::Patch,
        OpKind::Delete,
        OpKind::Append,
        OpKind::Increment,
    ];

    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            OpKind::Put => "put",
            OpKind::Patch => "patch",
            OpKind::Delete => "delete",
            OpKind::Append => "append",
            OpKind::Increment => "increment",
        }
    }

    /// The kind's position in [`OpKind::ALL`] (an index into per-kind
    /// counters).
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Why an operation cannot apply to the current object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OpError {
    /// `PATCH` or `DELETE` of an object that does not exist.
    NotFound,
    /// The operation does not fit what is there (e.g. appending to a string).
    Conflict(String),
}

/// The new content of a key after an operation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// A live object.
    Live {
        /// Media type.
        content_type: String,
        /// Bytes.
        body: Bytes,
        /// What the operation yields to the client: the new number of an
        /// increment, the new length of an appended array.
        result: Option<Value>,
    },
    /// A deletion.
    Deleted,
}

impl Op {
    /// What kind of write this is.
    pub(crate) fn kind(&self) -> OpKind {
        match self {
            Op::Put { .. } => OpKind::Put,
            Op::Patch(_) => OpKind::Patch,
            Op::Delete => OpKind::Delete,
            Op::Append { .. } => OpKind::Append,
            Op::Increment { .. } => OpKind::Increment,
        }
    }

    /// Computes the next content from the current object (`None` when the key
    /// has no live object).
    pub(crate) fn apply(&self, current: Option<&Object>) -> Result<Outcome, OpError> {
        match self {
            Op::Put { content_type, body } => Ok(Outcome::Live {
                content_type: content_type.clone(),
                body: body.clone(),
                result: None,
            }),
            Op::Delete => match current {
                Some(_) => Ok(Outcome::Deleted),
                None => Err(OpError::NotFound),
            },
            Op::Patch(patch) => {
                let current = current.ok_or(OpError::NotFound)?;
                let mut doc = parse(current)?;
                json_patch::merge(&mut doc, patch);
                live(current.content_type_str(), &doc, None)
            }
            Op::Append { pointer, value } => {
                let (ct, mut doc) = start(current)?;
                let slot = slot(&mut doc, pointer)?;
                let len = match slot {
                    Value::Null => {
                        *slot = Value::Array(vec![value.clone()]);
                        1
                    }
                    Value::Array(items) => {
                        items.push(value.clone());
                        items.len()
                    }
                    other => {
                        return Err(OpError::Conflict(format!(
                            "cannot append to {} at {pointer:?}",
                            kind(other)
                        )))
                    }
                };
                live(&ct, &doc, Some(Value::from(len)))
            }
            Op::Increment { pointer, delta } => {
                let (ct, mut doc) = start(current)?;
                let slot = slot(&mut doc, pointer)?;
                let next = match slot {
                    Value::Null => delta.clone(),
                    Value::Number(n) => add(n, delta).ok_or_else(|| {
                        OpError::Conflict(format!("{n} + {delta} is out of range"))
                    })?,
                    other => {
                        return Err(OpError::Conflict(format!(
                            "cannot increment {} at {pointer:?}",
                            kind(other)
                        )))
                    }
                };
                *slot = Value::Number(next.clone());
                live(&ct, &doc, Some(Value::Number(next)))
            }
        }
    }
}

fn parse(current: &Object) -> Result<Value, OpError> {
    // Stored objects were checked to be JSON when written.
    serde_json::from_slice(&current.body)
        .map_err(|_| OpError::Conflict("the current object is not JSON".to_owned()))
}

/// The document an append or increment starts from: the current one, or an
/// empty object when there is none.
fn start(current: Option<&Object>) -> Result<(String, Value), OpError> {
    match current {
        Some(c) => Ok((c.content_type_str().to_owned(), parse(c)?)),
        None => Ok((
            "application/json".to_owned(),
            Value::Object(Default::default()),
        )),
    }
}

fn live(content_type: &str, doc: &Value, result: Option<Value>) -> Result<Outcome, OpError> {
    let body = serde_json::to_vec(doc)
        .map_err(|e| OpError::Conflict(format!("cannot encode the result: {e}")))?;
    Ok(Outcome::Live {
        content_type: content_type.to_owned(),
        body: Bytes::from(body),
        result,
    })
}

/// The value a JSON pointer names, created as `null` if its parent object
/// exists and lacks the member.
fn slot<'a>(doc: &'a mut Value, pointer: &str) -> Result<&'a mut Value, OpError> {
    if pointer.is_empty() {
        return Ok(doc);
    }
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return Err(OpError::Conflict(format!(
            "{pointer:?} is not a JSON pointer (RFC 6901): it must start with `/`"
        )));
    };
    let member = last.replace("~1", "/").replace("~0", "~");
    match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => Ok(map.entry(member).or_insert(Value::Null)),
        Some(other) => Err(OpError::Conflict(format!(
            "{parent:?} is {}, not an object",
            kind(other)
        ))),
        None => Err(OpError::Conflict(format!("{parent:?} does not exist"))),
    }
}

fn add(a: &Number, b: &Number) -> Option<Number> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x.checked_add(y).map(Number::from);
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_i64()) {
        return x.checked_add_signed(y).map(Number::from);
    }
    Number::from_f64(a.as_f64()? + b.as_f64()?)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Object {
        Object::new(1, "application/json", Bytes::from(v.to_string()))
    }

    fn body(o: Outcome) -> (Value, Option<Value>) {
        match o {
            Outcome::Live { body, result, .. } => (serde_json::from_slice(&body).unwrap(), result),
            Outcome::Deleted => panic!("deleted"),
        }
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let cur = obj(json!({"a": "b", "c": {"d": "e", "f": "g"}}));
        let patch = Op::Patch(json!({"a": "z", "c": {"f": null}}));
        let (v, _) = body(patch.apply(Some(&cur)).unwrap());
        assert_eq!(v, json!({"a": "z", "c": {"d": "e"}}));
        assert_eq!(patch.apply(None), Err(OpError::NotFound));
    }

    #[test]
    fn delete_needs_an_object() {
        assert_eq!(
            Op::Delete.apply(Some(&obj(json!(1)))).unwrap(),
            Outcome::Deleted
        );
        assert_eq!(Op::Delete.apply(None), Err(OpError::NotFound));
    }

    #[test]
    fn append_creates_and_extends() {
        let op = Op::Append {
            pointer: "/comments".into(),
            value: json!({"t": 1}),
        };
        let (v, r) = body(op.apply(None).unwrap());
        assert_eq!(
            (v.clone(), r),
            (json!({"comments": [{"t": 1}]}), Some(json!(1)))
        );
        let (v, r) = body(op.apply(Some(&obj(v))).unwrap());
        assert_eq!(v["comments"].as_array().unwrap().len(), 2);
        assert_eq!(r, Some(json!(2)));
        let bad = obj(json!({"comments": "no"}));
        assert!(matches!(op.apply(Some(&bad)), Err(OpError::Conflict(_))));
    }

    #[test]
    fn increment_integers_floats_and_nested_paths() {
        let op = |p: &str, d: Number| Op::Increment {
            pointer: p.into(),
            delta: d,
        };
        let (v, r) = body(op("/views", 1.into()).apply(None).unwrap());
        assert_eq!((v, r), (json!({"views": 1}), Some(json!(1))));
        let cur = obj(json!({"s": {"n": 40, "a/b": 1.5}}));
        let (v, _) = body(op("/s/n", 2.into()).apply(Some(&cur)).unwrap());
        assert_eq!(v["s"]["n"], json!(42));
        let (v, _) = body(
            op("/s/a~1b", Number::from_f64(1.0).unwrap())
                .apply(Some(&cur))
                .unwrap(),
        );
        assert_eq!(v["s"]["a/b"], json!(2.5));
        let (v, _) = body(op("/s/n", (-50).into()).apply(Some(&cur)).unwrap());
        assert_eq!(v["s"]["n"], json!(-10));
        let max = obj(json!({"n": i64::MAX}));
        assert!(matches!(
            op("/n", 1.into()).apply(Some(&max)),
            Err(OpError::Conflict(_))
        ));
        let text = obj(json!({"n": "x"}));
        assert!(matches!(
            op("/n", 1.into()).apply(Some(&text)),
            Err(OpError::Conflict(_))
        ));
        assert!(matches!(
            op("/missing/n", 1.into()).apply(Some(&text)),
            Err(OpError::Conflict(_))
        ));
        assert!(matches!(
            op("n", 1.into()).apply(None),
            Err(OpError::Conflict(_))
        ));
        let (v, _) = body(op("", 5.into()).apply(Some(&obj(json!(1)))).unwrap());
        assert_eq!(v, json!(6));
    }
}
