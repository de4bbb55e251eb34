//! Secrets from the environment (the token secret, the cluster secret).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// A secret. It never prints: `Debug` shows its length only, so a logged
/// configuration cannot leak it.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    /// The secret's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(s.as_bytes().into()))
    }
}
