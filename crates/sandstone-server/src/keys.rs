//! API keys (Sandbox0's `/api-keys`) and the teams they act in
//! (`/teams`): a key is made with a team, a role and an expiry, shown
//! once, stored only as hashes.
//!
//! Every request's key is verified here. A verification is cached (a map
//! read, so a check costs microseconds, not a database round trip) for
//! [`CACHE_TTL`]; expiry is checked against the clock on every request, and
//! a key deleted or deactivated on this node is dropped from the cache at
//! once, so only another node's change can take up to [`CACHE_TTL`] to
//! reach this one. Uses are counted in memory and written back every
//! [`USE_FLUSH`], not on each request.

use crate::lifecycle::random_hex;
use crate::{Caller, lock};
use sandstone_api::auth::{Action, Role};
use sandstone_api::timefmt::{now_us, rfc3339_ms};
use sandstone_api::{
    ApiKey, CreateApiKeyRequest, CreateTeamRequest, CreatedApiKey, CurrentKey, Team,
};
use sandstone_db::{ApiKeyRow, Store, TeamRow, token_hash};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a verification is trusted before the store is read again.
const CACHE_TTL: Duration = Duration::from_secs(2);
/// How often an open stream or WebSocket checks its key again.
const RECHECK: Duration = Duration::from_secs(5);
/// How often counted uses are written back.
const USE_FLUSH: Duration = Duration::from_secs(5);
/// Sandbox0's "never" (Go's zero time).
const NEVER: &str = "0001-01-01T00:00:00Z";
/// The longest key name.
const MAX_NAME: usize = 128;
/// The longest team name.
const MAX_TEAM_NAME: usize = 64;

/// Why a key does not let a request in. Unknown, expired and inactive
/// keys are told apart in the message only: all are 401.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("invalid API key")]
    Unknown,
    #[error("this API key expired at {0}")]
    Expired(String),
    #[error("this API key was deactivated")]
    Inactive,
    #[error("invalid field `{field}`: {why}")]
    Invalid { field: &'static str, why: String },
    #[error("API key {0} not found")]
    NotFound(String),
    #[error("team {0} not found")]
    NoTeam(String),
    #[error("team {0} exists")]
    TeamExists(String),
    #[error("only the installation's admins (admin keys of the default team) make teams")]
    NotOwner,
    #[error(transparent)]
    Db(#[from] sandstone_db::Error),
}

struct Cached {
    key: ApiKeyRow,
    at: Instant,
}

pub struct Keys {
    store: Arc<dyn Store>,
    /// By token hash.
    cache: Mutex<HashMap<String, Cached>>,
    /// Uses not yet written: by key id, (last use, count).
    uses: Mutex<HashMap<String, (i64, i64)>>,
}

/// How a key looks in a listing.
pub fn summary(k: &ApiKeyRow) -> ApiKey {
    ApiKey {
        id: k.id.clone(),
        name: k.name.clone(),
        scope: "team".into(),
        team_id: k.team_id.clone(),
        created_by: k.created_by.clone(),
        roles: vec![k.role],
        is_active: k.active,
        expires_at: expiry(k),
        last_used_at: k.last_used_at.map(rfc3339_ms),
        usage_count: k.usage_count.max(0) as u64,
        created_at: rfc3339_ms(k.created_at),
        updated_at: rfc3339_ms(k.updated_at),
    }
}

/// The calling key as `GET /api-keys/current` shows it.
pub fn current(k: &ApiKeyRow) -> CurrentKey {
    CurrentKey {
        id: k.id.clone(),
        team_id: k.team_id.clone(),
        created_by: k.created_by.clone(),
        scope: "team".into(),
        roles: vec![k.role],
        permissions: k.role.permissions().into_iter().map(String::from).collect(),
        is_active: k.active,
        expires_at: expiry(k),
    }
}

fn now_ms() -> i64 {
    now_us() / 1000
}

fn expiry(k: &ApiKeyRow) -> String {
    k.expires_at.map_or_else(|| NEVER.into(), rfc3339_ms)
}

/// `expires_in`: `never`, or a whole number of days, hours, minutes or
/// seconds.
fn lifetime(s: Option<&str>) -> Result<Option<Duration>, KeyError> {
    let s = match s.map(str::trim) {
        None | Some("" | "never") => return Ok(None),
        Some(s) => s,
    };
    let invalid = || KeyError::Invalid {
        field: "expires_in",
        why: format!(
            "{s:?} is not `never` or a whole number of days, hours, minutes or seconds (30d, 12h, 90m, 30s)"
        ),
    };
    let (n, unit) = s.split_at(s.len() - 1);
    let n: u64 = n.parse().ok().filter(|n| *n > 0).ok_or_else(invalid)?;
    let secs = match unit {
        "d" => n.checked_mul(86_400),
        "h" => n.checked_mul(3_600),
        "m" => n.checked_mul(60),
        "s" => Some(n),
        _ => None,
    }
    .filter(|s| *s <= 10 * 365 * 86_400)
    .ok_or_else(invalid)?;
    Ok(Some(Duration::from_secs(secs)))
}

impl Keys {
    pub fn new(store: Arc<dyn Store>) -> Arc<Keys> {
        Arc::new(Keys {
            store,
            cache: Mutex::default(),
            uses: Mutex::default(),
        })
    }

    /// The key `token` is, if it lets a request in now (a use of it).
    pub async fn verify(&self, token: &str) -> Result<ApiKeyRow, KeyError> {
        let key = self.check(token_hash(token)).await?;
        let now = now_ms();
        let mut uses = lock(&self.uses);
        let entry = uses.entry(key.id.clone()).or_insert((now, 0));
        *entry = (now, entry.1 + 1);
        Ok(key)
    }

    /// Resolves once `key` no longer lets requests in (deactivated,
    /// deleted, expired), looking every [`RECHECK`]; never for a call
    /// without one (the daemon's own, another node's). What a stream or
    /// WebSocket it opened ends with.
    pub async fn revoked(self: Arc<Self>, key: Option<ApiKeyRow>) -> KeyError {
        let Some(key) = key else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(RECHECK).await;
            match self.check(key.token_hash.clone()).await {
                Ok(_) | Err(KeyError::Db(_)) => {}
                Err(e) => {
                    tracing::warn!(target: "sandstone::audit", key = %key.id, reason = %e,
                        "open stream ended: its API key no longer lets requests in");
                    return e;
                }
            }
        }
    }

    /// What a request carries of its key, so that a connection it opens
    /// (a tunnel to another node, say) can end with the key.
    pub fn life(self: &Arc<Self>, key: &ApiKeyRow) -> KeyLife {
        KeyLife {
            keys: self.clone(),
            key: key.clone(),
        }
    }

    /// The key whose token hashes to `hash`, if it lets a request in now.
    async fn check(&self, hash: String) -> Result<ApiKeyRow, KeyError> {
        let cached = lock(&self.cache)
            .get(&hash)
            .filter(|c| c.at.elapsed() < CACHE_TTL)
            .map(|c| c.key.clone());
        let key = match cached {
            Some(k) => k,
            None => {
                let Some(k) = self.store.api_key_by_hash(&hash).await? else {
                    // Deleted on another node since it was cached.
                    lock(&self.cache).remove(&hash);
                    return Err(KeyError::Unknown);
                };
                lock(&self.cache).insert(
                    hash,
                    Cached {
                        key: k.clone(),
                        at: Instant::now(),
                    },
                );
                k
            }
        };
        usable(key)
    }

    /// The key of id `id`, if it lets requests in now (what an SSH key it
    /// registered acts with).
    pub async fn by_id(&self, id: &str) -> Result<ApiKeyRow, KeyError> {
        match self.store.api_key_by_id(id).await? {
            Some(key) => usable(key),
            None => Err(KeyError::Unknown),
        }
    }

    /// Makes a key for `by`; its token is in the answer only.
    pub async fn create(
        &self,
        by: &Caller,
        req: CreateApiKeyRequest,
    ) -> Result<CreatedApiKey, KeyError> {
        // Another team's is named only by the installation's admins; to
        // anyone else it does not exist.
        let team = match req.team_id.as_deref() {
            None => by.team.clone(),
            Some(t) if t == by.team => by.team.clone(),
            Some(t) if !by.owns_installation() => return Err(KeyError::NoTeam(t.to_string())),
            Some(t) => {
                self.store
                    .list_teams()
                    .await?
                    .into_iter()
                    .find(|x| x.id == t)
                    .ok_or_else(|| KeyError::NoTeam(t.to_string()))?
                    .id
            }
        };
        let name = req.name.trim();
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(KeyError::Invalid {
                field: "name",
                why: format!("1 to {MAX_NAME} bytes"),
            });
        }
        if req.scope.as_deref().is_some_and(|s| s != "team") {
            return Err(KeyError::Invalid {
                field: "scope",
                why: "only `team` keys exist here (there are no platform users)".into(),
            });
        }
        let role = match req.roles.as_slice() {
            [] => Role::Developer,
            [one] => *one,
            _ => {
                return Err(KeyError::Invalid {
                    field: "roles",
                    why: "one role: admin, developer or viewer".into(),
                });
            }
        };
        let now = now_ms();
        let expires_at = lifetime(req.expires_in.as_deref())?.map(|d| now + d.as_millis() as i64);
        let token = format!("s0_local_{}", random_hex(24));
        let row = ApiKeyRow {
            id: format!("key_{}", random_hex(8)),
            token_hash: token_hash(&token),
            name: name.to_string(),
            role,
            expires_at,
            active: true,
            created_by: by
                .key
                .as_ref()
                .map_or_else(|| "sandstone".to_string(), |k| k.id.clone()),
            created_at: now,
            updated_at: now,
            last_used_at: None,
            usage_count: 0,
            team_id: team,
        };
        self.store.insert_api_key(&row).await?;
        Ok(CreatedApiKey {
            id: row.id.clone(),
            name: row.name.clone(),
            scope: "team".into(),
            roles: vec![role],
            team_id: row.team_id.clone(),
            key: token,
            expires_at: expiry(&row),
            created_at: rfc3339_ms(now),
        })
    }

    /// The keys `by` sees: its team's (every team's for the
    /// installation's admins).
    pub async fn list(&self, by: &Caller) -> Result<Vec<ApiKey>, KeyError> {
        self.flush().await;
        Ok(self
            .store
            .list_api_keys()
            .await?
            .iter()
            .filter(|k| by.owns_installation() || k.team_id == by.team)
            .map(summary)
            .collect())
    }

    /// Fails with `NotFound` for a key `by` does not see.
    async fn check_visible(&self, by: &Caller, id: &str) -> Result<(), KeyError> {
        let visible = by.owns_installation()
            || self
                .store
                .list_api_keys()
                .await?
                .iter()
                .any(|k| k.id == id && k.team_id == by.team);
        if visible {
            Ok(())
        } else {
            tracing::warn!(target: "sandstone::audit", team = %by.team, object = id,
                "refused: an API key of another team");
            Err(KeyError::NotFound(id.to_string()))
        }
    }

    pub async fn delete(&self, by: &Caller, id: &str) -> Result<(), KeyError> {
        self.check_visible(by, id).await?;
        if !self.store.delete_api_key(id).await? {
            return Err(KeyError::NotFound(id.to_string()));
        }
        self.forget(id);
        Ok(())
    }

    pub async fn deactivate(&self, by: &Caller, id: &str) -> Result<(), KeyError> {
        self.check_visible(by, id).await?;
        if !self.store.deactivate_api_key(id, now_ms()).await? {
            return Err(KeyError::NotFound(id.to_string()));
        }
        self.forget(id);
        Ok(())
    }

    /// Makes a team (the installation's admins only).
    pub async fn create_team(&self, by: &Caller, req: CreateTeamRequest) -> Result<Team, KeyError> {
        if !by.owns_installation() {
            return Err(KeyError::NotOwner);
        }
        let name = req.name.trim();
        let valid = !name.is_empty()
            && name.len() <= MAX_TEAM_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            return Err(KeyError::Invalid {
                field: "name",
                why: format!("1 to {MAX_TEAM_NAME} letters, digits, `-`, `_` or `.`"),
            });
        }
        if req.slug.as_deref().is_some_and(|s| s != name) {
            return Err(KeyError::Invalid {
                field: "slug",
                why: "a team's slug is its name here".into(),
            });
        }
        let row = TeamRow {
            id: format!("team_{}", random_hex(8)),
            name: name.to_string(),
            created_at: now_ms(),
        };
        if !self.store.insert_team(&row).await? {
            return Err(KeyError::TeamExists(name.to_string()));
        }
        tracing::info!(team = %row.id, name = %row.name, "team created");
        Ok(team_view(&row))
    }

    /// The teams `by` sees: its own (every team for the installation's
    /// admins).
    pub async fn teams(&self, by: &Caller) -> Result<Vec<Team>, KeyError> {
        Ok(self
            .store
            .list_teams()
            .await?
            .iter()
            .filter(|t| by.owns_installation() || t.id == by.team)
            .map(team_view)
            .collect())
    }

    /// Drops `id` from the cache: this node refuses it from the next
    /// request.
    fn forget(&self, id: &str) {
        lock(&self.cache).retain(|_, c| c.key.id != id);
        lock(&self.uses).remove(id);
    }

    /// Writes the counted uses back.
    async fn flush(&self) {
        let uses = std::mem::take(&mut *lock(&self.uses));
        for (id, (at, n)) in uses {
            if let Err(e) = self.store.record_api_key_use(&id, at, n).await {
                tracing::warn!(key = %id, error = %e, "recording an API key's uses");
            }
        }
    }

    /// Writes uses back every [`USE_FLUSH`] while the daemon runs.
    pub fn spawn_flush(self: &Arc<Self>) {
        let keys = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(USE_FLUSH).await;
                keys.flush().await;
            }
        });
    }
}

fn team_view(t: &TeamRow) -> Team {
    Team {
        id: t.id.clone(),
        name: t.name.clone(),
        slug: t.name.clone(),
        owner_id: None,
        home_region_id: None,
        created_at: rfc3339_ms(t.created_at),
        updated_at: rfc3339_ms(t.created_at),
    }
}

/// `key`, unless it is deactivated or expired.
fn usable(key: ApiKeyRow) -> Result<ApiKeyRow, KeyError> {
    if !key.active {
        return Err(KeyError::Inactive);
    }
    if !key.valid_at(now_ms()) {
        return Err(KeyError::Expired(expiry(&key)));
    }
    Ok(key)
}

/// A request's key, for what outlives the request ([`Keys::life`]).
#[derive(Clone)]
pub struct KeyLife {
    keys: Arc<Keys>,
    key: ApiKeyRow,
}

impl KeyLife {
    /// Resolves once the key no longer lets requests in.
    pub async fn ended(self) {
        self.keys.revoked(Some(self.key)).await;
    }
}

/// What a request to the sandbox API does, as roles see it.
pub fn action(method: &axum::http::Method, path: &str) -> Action {
    use axum::http::Method;
    let read = method == Method::GET || method == Method::HEAD;
    if let Some(rest) = path.strip_prefix("/api-keys") {
        return if read && rest == "/current" {
            Action::Read
        } else {
            Action::ManageKeys
        };
    }
    // Listing teams shows a key its own; making one is an admin's.
    if path.starts_with("/teams") {
        return if read {
            Action::Read
        } else {
            Action::ManageKeys
        };
    }
    if path.starts_with("/api/v1/nodes/") && !read {
        return Action::ManageNodes;
    }
    // A context's or session's WebSocket takes input and signals: an
    // attachment to a process is running commands, whatever its method.
    let attaches =
        path.ends_with("/ws") && (path.contains("/contexts/") || path.contains("/sessions/"));
    if !read || attaches {
        return Action::Write;
    }
    // A file's bytes, a file watch, contexts (their output, their
    // terminal), the output log and execution sessions (their commands,
    // environments and output): what the sandbox holds.
    let tail = path.rsplit('/').next().unwrap_or_default();
    let contents = ((path.contains("/sandboxes/") || path.contains("/sandboxvolumes/"))
        && tail == "files")
        || path.contains("/contexts")
        || path.contains("/observability/logs")
        || path.contains("/sessions")
        || (path.contains("/files/") && tail == "watch");
    if contents {
        Action::ReadContents
    } else {
        Action::Read
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn lifetimes_are_days_hours_or_minutes() {
        assert_eq!(lifetime(None).unwrap(), None);
        assert_eq!(lifetime(Some("never")).unwrap(), None);
        assert_eq!(
            lifetime(Some("30d")).unwrap(),
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(
            lifetime(Some("90m")).unwrap(),
            Some(Duration::from_secs(5_400))
        );
        for bad in ["0d", "d", "30", "1y", "-1d", "99999d"] {
            assert!(lifetime(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn requests_are_classed_by_what_they_expose() {
        let get = |p: &str| action(&Method::GET, p);
        assert_eq!(get("/api/v1/sandboxes"), Action::Read);
        assert_eq!(get("/api/v1/sandboxes/sb-1/files/list"), Action::Read);
        assert_eq!(get("/api/v1/sandboxes/sb-1/files"), Action::ReadContents);
        assert_eq!(
            get("/api/v1/sandboxvolumes/vol-1/files"),
            Action::ReadContents
        );
        assert_eq!(get("/api/v1/sandboxvolumes/vol-1/files/list"), Action::Read);
        assert_eq!(
            get("/api/v1/sandboxes/sb-1/files/watch"),
            Action::ReadContents
        );
        for p in [
            "/api/v1/sandboxes/sb-1/contexts/c1/ws",
            "/api/v1/sandboxes/sb-1/sessions/ses_1/ws",
        ] {
            assert_eq!(get(p), Action::Write, "{p}");
        }
        assert_eq!(
            get("/api/v1/sandboxes/sb-1/sessions/ses_1/events/stream"),
            Action::ReadContents
        );
        assert_eq!(get("/api/v1/sandboxes/sb-1/contexts"), Action::ReadContents);
        for p in [
            "/api/v1/sandboxes/sb-1/observability/logs",
            "/api/v1/sandboxes/sb-1/sessions",
            "/api/v1/sandboxes/sb-1/sessions/ses_1/events",
        ] {
            assert_eq!(get(p), Action::ReadContents, "{p}");
        }
        assert_eq!(
            get("/api/v1/sandboxes/sb-1/observability/events"),
            Action::Read
        );
        assert_eq!(get("/api-keys/current"), Action::Read);
        assert_eq!(get("/api-keys"), Action::ManageKeys);
        assert_eq!(action(&Method::POST, "/api/v1/sandboxes"), Action::Write);
        assert_eq!(
            action(&Method::POST, "/api/v1/nodes/n1/drain"),
            Action::ManageNodes
        );
    }
}
