//! The daemon's own registry: images pushed to `/v2/` (with credentials
//! from `POST /api/v1/registry/credentials`, as Sandbox0 hands them out)
//! and then named in a template's `spec.mainContainer.image`. Pushed
//! blobs live in `sandstone_registry::Store`; a template of one is made
//! from the store directly (the pull never goes over the network to
//! ourselves). Push credentials are random, short-lived and kept only as
//! hashes, in memory: a restart revokes them.

use sandstone_api::Secret;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;

/// How long a push credential is good for.
pub const CREDENTIAL_TTL_MS: i64 = 60 * 60 * 1000;

/// The user name push credentials carry (the password is what counts).
pub const PUSH_USER: &str = "sandstone";

pub struct OwnRegistry {
    pub store: sandstone_registry::Store,
    /// The names (`host:port`) this daemon's registry answers to; the
    /// first is the one credentials tell pushers to use.
    hosts: Vec<String>,
    /// sha256 of each push password handed out → when it expires (unix
    /// milliseconds).
    tokens: Mutex<HashMap<[u8; 32], i64>>,
}

/// Push credentials, as handed out.
pub struct PushCredentials {
    pub registry: String,
    pub username: String,
    pub password: Secret,
    pub expires_at: i64,
}

impl OwnRegistry {
    pub fn new(store: sandstone_registry::Store, hosts: Vec<String>) -> OwnRegistry {
        OwnRegistry {
            store,
            hosts,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// Where pushers push (`host:port`).
    pub fn host(&self) -> &str {
        self.hosts.first().map_or("localhost", String::as_str)
    }

    /// Whether `registry` (`host[:port]` of an image reference) is this
    /// daemon's own.
    pub fn is_own(&self, registry: &str) -> bool {
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(registry))
    }

    /// New push credentials, good for [`CREDENTIAL_TTL_MS`].
    pub fn issue(&self, now_ms: i64) -> PushCredentials {
        let password = format!("srp_{}", super::random_hex(24));
        let expires_at = now_ms + CREDENTIAL_TTL_MS;
        let mut tokens = self
            .tokens
            .lock()
            .expect("lock poisoned: a holder panicked");
        tokens.retain(|_, exp| *exp > now_ms);
        tokens.insert(Sha256::digest(password.as_bytes()).into(), expires_at);
        PushCredentials {
            registry: self.host().to_string(),
            username: PUSH_USER.to_string(),
            password: Secret::new(password),
            expires_at,
        }
    }

    /// Whether `password` is a push credential handed out and not expired.
    pub fn accepts(&self, password: &str, now_ms: i64) -> bool {
        let hash: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        self.tokens
            .lock()
            .expect("lock poisoned: a holder panicked")
            .get(&hash)
            .is_some_and(|exp| *exp > now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_work_until_they_expire_and_only_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let r = OwnRegistry::new(
            sandstone_registry::Store::open(dir.path()).unwrap(),
            vec!["reg.example:7811".into(), "127.0.0.1:7811".into()],
        );
        let c = r.issue(1_000);
        assert_eq!(c.registry, "reg.example:7811");
        assert!(r.accepts(c.password.expose(), 1_001));
        assert!(!r.accepts(c.password.expose(), 1_000 + CREDENTIAL_TTL_MS));
        assert!(!r.accepts("srp_guess", 1_001));
        assert!(r.is_own("127.0.0.1:7811") && !r.is_own("127.0.0.1:7812"));
    }
}
