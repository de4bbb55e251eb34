//! The cluster as this origin sees it: who owns which key ([`Membership`]),
//! how to call another origin ([`Peers`]), and the ordered, batched,
//! retried message links between origins ([`link`]).
//!
//! It sits beside the engine: neither knows the other. The view engine
//! addresses its messages through it, and the HTTP layer asks it where a
//! key lives. With no origin list (one origin), every key is owned here
//! and nothing is ever sent.

pub(crate) mod link;

use std::time::Duration;

use bytes::Bytes;
use prefold_core::auth::mint_cluster;
use prefold_core::{Key, Origin, OriginList};
use thiserror::Error;

use crate::base::{Clock, Secret};

/// Why a call to another origin failed. None of it reaches a client: the
/// caller retries, or answers 503.
#[derive(Debug, Error)]
pub(crate) enum PeerError {
    /// This origin has no cluster secret, so it cannot authenticate.
    #[error("no cluster secret is configured")]
    NoSecret,
    /// Connecting, sending or reading failed, or the call timed out.
    #[error("calling {origin}: {source}")]
    Transport {
        /// The origin called.
        origin: String,
        /// What failed.
        source: reqwest::Error,
    },
    /// The origin answered with an error status (or, with 200, with a body
    /// that does not fit the call).
    #[error("{origin} answered {status}")]
    Status {
        /// The origin called.
        origin: String,
        /// Its status.
        status: u16,
    },
}

/// Which keys this origin owns.
#[derive(Debug, Clone, Default)]
pub(crate) struct Membership {
    origins: Option<OriginList>,
    me: Option<String>,
}

impl Membership {
    /// This origin is `me` in `origins` (or, without a list, owns every key).
    pub(crate) fn new(origins: Option<OriginList>, me: Option<String>) -> Membership {
        Membership { origins, me }
    }

    /// This origin's name (`None` when it is the only one).
    pub(crate) fn me(&self) -> Option<&str> {
        self.me.as_deref()
    }

    /// The owner of a key when it is another origin.
    pub(crate) fn other_owner(&self, key: &Key) -> Option<&Origin> {
        self.other_owner_of(key.routing_part())
    }

    /// [`Membership::other_owner`] for a routing part.
    pub(crate) fn other_owner_of(&self, routing_part: &str) -> Option<&Origin> {
        match (&self.origins, &self.me) {
            (Some(list), Some(me)) => Some(list.owner_of(routing_part)).filter(|o| o.name != *me),
            _ => None,
        }
    }

    /// The other origins.
    pub(crate) fn peers(&self) -> impl Iterator<Item = &Origin> {
        let me = self.me.clone();
        self.origins
            .iter()
            .flat_map(|l| l.origins())
            .filter(move |o| Some(&o.name) != me.as_ref())
    }

    /// An origin by name.
    pub(crate) fn origin(&self, name: &str) -> Option<&Origin> {
        self.origins
            .as_ref()?
            .origins()
            .iter()
            .find(|o| o.name == name)
    }
}

/// How this origin calls the others: one connection pool, cluster tokens.
#[derive(Debug, Clone)]
pub(crate) struct Peers {
    http: reqwest::Client,
    secret: Option<Secret>,
    clock: Clock,
}

/// How long one call to another origin may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

impl Peers {
    /// Calls signed with `secret` (without one, every call fails).
    pub(crate) fn new(secret: Option<Secret>, clock: Clock) -> Peers {
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default();
        Peers {
            http,
            secret,
            clock,
        }
    }

    /// The clock tokens are minted by (and cluster messages stamped with).
    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }

    /// `POST {origin}{path}` with a JSON body; the answer's body.
    pub(crate) async fn post(
        &self,
        origin: &Origin,
        path: &str,
        body: Bytes,
    ) -> Result<Bytes, PeerError> {
        let secret = self.secret.as_ref().ok_or(PeerError::NoSecret)?;
        let token = mint_cluster(secret.bytes(), self.clock.unix_secs());
        let transport = |source| PeerError::Transport {
            origin: origin.name.clone(),
            source,
        };
        let resp = self
            .http
            .post(format!("{}{path}", origin.url))
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(PeerError::Status {
                origin: origin.name.clone(),
                status: status.as_u16(),
            });
        }
        resp.bytes().await.map_err(transport)
    }
}

/// The path origins answer "which of these keys exist" at.
pub(crate) const EXISTS_PATH: &str = "/_prefold/exists";

/// The body of a `POST /_prefold/exists`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExistsQuery {
    /// The keys asked about (the receiver owns them).
    pub(crate) keys: Vec<String>,
}

/// The answer: one flag per key, in order.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExistsAnswer {
    /// Whether each key holds an object (not a tombstone).
    pub(crate) exists: Vec<bool>,
}

/// The cluster: membership and the way to call the other origins.
#[derive(Debug, Clone)]
pub(crate) struct Cluster {
    /// Who owns which key.
    pub(crate) membership: Membership,
    /// Calls to the other origins.
    pub(crate) peers: Peers,
}

impl Cluster {
    /// Asks `origin` which of `keys` (which it owns) exist: one call for
    /// all of them.
    pub(crate) async fn exists(
        &self,
        origin: &Origin,
        keys: &[Key],
    ) -> Result<Vec<bool>, PeerError> {
        let query = ExistsQuery {
            keys: keys.iter().map(ToString::to_string).collect(),
        };
        let body = Bytes::from(serde_json::to_vec(&query).unwrap_or_default());
        let answer = self.peers.post(origin, EXISTS_PATH, body).await?;
        let answer: ExistsAnswer =
            serde_json::from_slice(&answer).map_err(|_| PeerError::Status {
                origin: origin.name.clone(),
                status: 200,
            })?;
        if answer.exists.len() != keys.len() {
            return Err(PeerError::Status {
                origin: origin.name.clone(),
                status: 200,
            });
        }
        Ok(answer.exists)
    }
}
