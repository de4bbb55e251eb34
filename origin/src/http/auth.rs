//! Who may call: write tokens on every write, cluster tokens on the
//! cluster's own calls (`prefold_core::auth` verifies both).

use axum::http::{header, HeaderMap, Uri};
use prefold_core::auth::{authorize_cluster, authorize_write, AuthError};
use prefold_core::Key;

use super::{key_of, ApiError, AppState};

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// The key of a write, once its token allows it here: the key must parse
/// (400), the token must be valid and cover the key (401/403), and this
/// origin must own it (421: a write of another origin's key gets here only
/// when it was forwarded already). Nothing of the body has been read yet.
pub(super) fn write_key(state: &AppState, uri: &Uri, headers: &HeaderMap) -> Result<Key, ApiError> {
    let key = key_of(uri)?;
    let settings = &state.0.settings;
    if let Some(secret) = &settings.token_secret {
        authorize_write(
            secret.bytes(),
            bearer(headers),
            &key,
            settings.clock.unix_secs(),
        )?;
    }
    settings.ownership.check(&key)?;
    Ok(key)
}

/// Checks a cluster call's token. Without a cluster secret nothing passes.
pub(super) fn check_cluster(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let settings = &state.0.settings;
    let secret = settings.cluster_secret.as_ref().ok_or(AuthError::Missing)?;
    authorize_cluster(secret.bytes(), bearer(headers), settings.clock.unix_secs())?;
    Ok(())
}
