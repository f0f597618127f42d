//! The metadata database: every durable record that is not file content.
//!
//! Sandboxes (with their status and pending operation, typed in [`state`]), snapshots, credential sources
//! (values sealed by [`secrets::Sealer`]), egress audit records and API keys
//! sit behind the [`Store`] trait; the Managed Agents control plane's
//! documents and session events behind [`agents::AgentsStore`]; webhook
//! secrets and deliveries behind [`webhooks::WebhookStore`]; the SSH
//! gateway's public keys behind [`ssh_keys::SshKeyStore`]; sandbox volumes,
//! their snapshots and mounts behind [`volumes::VolumeStore`]. A
//! [`Database`] is all five. File content (volumes, templates, snapshots'
//! layers) lives on disk, in `sandstone-volumes`.
//!
//! # Two backends, one set of queries
//!
//! [`Location`] picks the backend: [`SqliteStore`] (WAL, a file in the data
//! directory: one machine with no flags) or [`PgStore`] (`--database-url
//! postgres://…`: every table in a PostgreSQL database several nodes can
//! share). What really differs between them is small and stays in each
//! backend's module: how it connects, its migration list (column types,
//! `AUTOINCREMENT` vs `BIGSERIAL`, SQLite's trigger bodies vs a plpgsql
//! trigger function) and how concurrent starts are kept from migrating
//! twice.
//!
//! Every query is written once, in `queries.rs`, which is compiled as a child
//! module of each backend (`#[path]`) against that backend's sqlx driver
//! (`Db`) and store type (`Backend`). So each copy is ordinary monomorphic
//! code on its driver: the SQLite path runs exactly the calls it ran before
//! (no `Any` driver converting every argument and row), rustfmt and the
//! compiler see plain Rust with errors on its own lines, and there are no
//! generic bounds to carry. The alternatives were worse here: a
//! `macro_rules!` body is not formatted and its errors point at the call;
//! code generic over `sqlx::Database` needs a higher-ranked bound for every
//! bound and decoded type and for both executors, repeated on every impl,
//! and sqlx has no trait for `rows_affected`.
//!
//! The SQL both engines accept: `$N` placeholders (sqlx-sqlite maps `$N` to
//! the N-th argument), `INSERT … ON CONFLICT … DO UPDATE/NOTHING` (never
//! `INSERT OR REPLACE`), no `rowid` (documents come back in id order; their
//! readers key them by id), booleans bound as booleans and tested as
//! `(denied OR NOT $3)` (an INTEGER 0/1 column on SQLite, BOOLEAN on
//! PostgreSQL), integers as `BIGINT` on PostgreSQL so both decode to `i64`,
//! JSON kept as the TEXT it was written as (no query looks inside, except
//! the label triggers, which each backend writes in its own dialect).
//!
//! Migrations are append-only lists, one per backend, applied in order in
//! one transaction (a failed start leaves the schema as it was). SQLite's
//! list is the one existing data directories were made with, so they keep
//! opening. On PostgreSQL the transaction first takes an advisory lock
//! (`pg_advisory_xact_lock`): nodes starting together migrate once, the
//! others wait and then find nothing to do.
//!
//! A PostgreSQL URL holds a password: [`PgUrl`] shows itself (in `Debug`,
//! `Display` and every error) as `postgres://user@host:port/db`, and the
//! password is scrubbed from the driver's messages.

pub mod agents;
mod appender;
mod postgres;
pub mod secrets;
mod sqlite;
pub mod ssh_keys;
pub mod state;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod volumes;
pub mod webhooks;

pub use postgres::{PgStore, PgUrl};
pub use sqlite::SqliteStore;
pub use state::{PendingOp, SandboxStatus};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("not found")]
    NotFound,
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The database URL is not one this build can use; the message never
    /// holds the URL (it may carry a password).
    #[error("database URL: {0}")]
    BadUrl(String),
    /// The database could not be opened or migrated at start; `target` is
    /// the URL without its password.
    #[error("database {target}: {reason}")]
    Open { target: String, reason: String },
    /// A write under an ownership epoch that has moved on: the sandbox was
    /// taken over by another node, or marked lost, since the writer read it.
    #[error(
        "sandbox {sandbox} is no longer this node's to change (it now belongs to node {} under epoch {epoch})",
        node.as_deref().unwrap_or("none")
    )]
    Fenced {
        sandbox: String,
        node: Option<String>,
        epoch: i64,
    },
    /// A task of the store that a request needed has stopped (the store is
    /// being dropped).
    #[error("database: {0} has stopped")]
    Closed(&'static str),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Whether the database could not be reached (down, restarting, cut
    /// off, out of connections): the operation may succeed later, and
    /// nothing was written.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Error::Db(
                sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::WorkerCrashed
            )
        )
    }
}

/// The durable identity of a sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SandboxRow {
    pub id: String,
    pub template: String,
    pub status: SandboxStatus,
    /// The claim's configuration, as sent (JSON).
    pub config: serde_json::Value,
    /// Index of the host uid/gid range the sandbox maps root to.
    pub slot: i64,
    /// PID 1's host pid while running.
    pub pid: Option<i64>,
    pub generation: i64,
    /// Unix milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
    /// A lifecycle operation that started and has not finished: after a
    /// crash, the daemon rolls it forward or back.
    pub pending_op: Option<PendingOp>,
    /// Why the sandbox is `failed`, when it is.
    pub status_reason: Option<String>,
    /// The node that runs it (and alone may change it). `None` only on rows
    /// from before nodes existed, until a node adopts them at start.
    pub node_id: Option<String>,
    /// The fencing number of its ownership: raised each time the sandbox
    /// changes hands (taken over, or marked lost), so a write of a node that
    /// read an older epoch changes nothing ([`Fence`]).
    pub epoch: i64,
    /// When its volume was last checkpointed to the object store (Unix
    /// milliseconds): what a lost sandbox resumes from.
    pub checkpointed_at: Option<i64>,
    /// The team it belongs to (a fork's is its parent's).
    pub team_id: String,
}

impl SandboxRow {
    /// The right to change this row as read: its owner under its epoch.
    pub fn fence(&self) -> Fence {
        Fence {
            sandbox: self.id.clone(),
            node: self.node_id.clone(),
            epoch: self.epoch,
        }
    }
}

/// Who may write a sandbox's row: the node that owned it under the epoch it
/// read. Every write of a sandbox's owner carries one; a write under a fence
/// that no longer holds changes nothing and is [`Error::Fenced`].
#[derive(Debug, Clone, PartialEq)]
pub struct Fence {
    pub sandbox: String,
    pub node: Option<String>,
    pub epoch: i64,
}

/// A node (`sandstone serve`) as it last announced itself in the database
/// it shares with the others.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeRecord {
    pub id: String,
    /// Where the other nodes reach its API (`--advertise-url`).
    pub url: String,
    /// How many sandboxes it will run at once.
    pub capacity: i64,
    /// How many it runs (as of its last renewal).
    pub running: i64,
    /// The templates it can start.
    pub templates: Vec<String>,
    /// Set by `sandstone node drain`: no new sandboxes are placed on it.
    pub draining: bool,
    /// Unix milliseconds until which its lease holds: a node that stops
    /// renewing it is dead to the others once this has passed.
    pub lease_expires_at: i64,
    pub started_at: i64,
}

impl NodeRecord {
    /// Whether its lease still holds at `now_ms` (by the reader's clock:
    /// nodes' clocks are assumed NTP-synchronised, well inside a TTL).
    pub fn live_at(&self, now_ms: i64) -> bool {
        self.lease_expires_at > now_ms
    }

    /// Running sandboxes per unit of capacity: placement picks the least.
    pub fn load(&self) -> f64 {
        self.running as f64 / self.capacity.max(1) as f64
    }
}

/// One egress audit record (a connection or a DNS answer), as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub sandbox_id: String,
    pub time: i64,
    pub denied: bool,
    pub event: serde_json::Value,
}

/// Which of a sandbox's audit records to list: those after `after_seq`,
/// oldest first, at most `limit`.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditQuery {
    pub after_seq: i64,
    /// `Some(true)`: denials only; `Some(false)`: what was allowed.
    pub denied: Option<bool>,
    /// Unix milliseconds, both ends included.
    pub since_ms: i64,
    pub until_ms: i64,
    pub limit: i64,
}

impl AuditQuery {
    /// Everything after `after_seq`, a page of `limit`.
    pub fn after(after_seq: i64, limit: i64) -> AuditQuery {
        AuditQuery {
            after_seq,
            denied: None,
            since_ms: i64::MIN,
            until_ms: i64::MAX,
            limit,
        }
    }
}

/// A credential source: metadata in the clear, the values sealed.
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialRow {
    pub team_id: String,
    pub name: String,
    pub kind: String,
    pub version: i64,
    /// Sealed JSON of the source's values ([`secrets::Sealer`]).
    pub sealed: Vec<u8>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A read-only snapshot of a sandbox's volume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnapshotRow {
    pub id: String,
    pub sandbox_id: String,
    pub name: String,
    pub description: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    /// The source sandbox's template: the layer is only valid on it.
    pub template: String,
    /// Its sandbox's team.
    pub team_id: String,
}

/// An API key as stored: its token only as a hash. Times in ms.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRow {
    pub id: String,
    pub token_hash: String,
    pub name: String,
    pub role: sandstone_api::auth::Role,
    /// `None`: it never expires.
    pub expires_at: Option<i64>,
    pub active: bool,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_used_at: Option<i64>,
    pub usage_count: i64,
    pub team_id: String,
}

/// A tenant: its keys see only its sandboxes and credential sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamRow {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

/// A preview grant: who may open a sandbox's loopback `port` through the
/// daemon until `expires_ms`, while its runtime is `generation`. Only
/// hashes of its secrets are kept: the one-time bootstrap token's (gone
/// once used) and the cookie's (set by that use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewRow {
    pub id: String,
    pub sandbox_id: String,
    pub port: u16,
    pub path: String,
    pub generation: i64,
    pub expires_ms: i64,
    pub bootstrap_hash: Option<String>,
    pub cookie_hash: Option<String>,
}

/// The team everything made before teams belongs to, and the first
/// start's admin key.
pub const DEFAULT_TEAM: &str = "default";

impl ApiKeyRow {
    /// Whether it lets a request in at `now`.
    pub fn valid_at(&self, now: i64) -> bool {
        self.active && self.expires_at.is_none_or(|t| now < t)
    }
}

/// SHA-256 of an API token, hex: the only form a token is stored in.
pub fn token_hash(token: &str) -> String {
    sha256_hex(token.as_bytes())
}

/// Lowercase hex SHA-256 (also the memory API's `content_sha256`).
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

pub trait Store: Send + Sync {
    fn insert_sandbox<'a>(&'a self, row: &'a SandboxRow) -> BoxFuture<'a, Result<()>>;
    fn get_sandbox<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<SandboxRow>>;
    fn list_sandboxes(&self) -> BoxFuture<'_, Result<Vec<SandboxRow>>>;
    /// The sandboxes `node` runs, oldest first.
    fn node_sandboxes<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Vec<SandboxRow>>>;
    /// The node a sandbox belongs to: `Err(NotFound)` for no such sandbox.
    fn sandbox_node<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<String>>>;
    /// Moves a sandbox to node `to` with slot `slot` (slots are per node)
    /// and raises its epoch, if `from` still holds: `false` when another
    /// node moved it first.
    fn move_sandbox<'a>(
        &'a self,
        from: &'a Fence,
        to: &'a str,
        slot: i64,
    ) -> BoxFuture<'a, Result<bool>>;
    /// Marks `lost` (raising their epochs, so nothing the node writes later
    /// under the old ones counts) the running and failed sandboxes of
    /// `node`, whose lease ran out: their files are on that node only. The
    /// pid stays: if the node returns before anyone takes one over, it
    /// re-adopts what still runs. Returns how many.
    fn mark_lost<'a>(&'a self, node: &'a str, reason: &'a str) -> BoxFuture<'a, Result<u64>>;
    /// Records a completed checkpoint of the sandbox's volume (`None`: its
    /// files have changed since the last one and an upload failed, so a
    /// paused sandbox has no checkpoint of them).
    fn set_checkpointed<'a>(&'a self, f: &'a Fence, at: Option<i64>) -> BoxFuture<'a, Result<()>>;
    /// Gives every sandbox without a node to `node` (rows from before
    /// nodes existed); returns how many.
    fn adopt_unowned<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<u64>>;
    /// Records a node's announcement: its address, load and templates and
    /// a lease until `lease_expires_at`. Never changes `draining`.
    fn announce_node<'a>(&'a self, node: &'a NodeRecord) -> BoxFuture<'a, Result<()>>;
    /// Every node that ever announced itself, by id.
    fn list_nodes(&self) -> BoxFuture<'_, Result<Vec<NodeRecord>>>;
    /// Sets or clears a node's `draining` flag: `Err(NotFound)` for no such node.
    fn set_draining<'a>(&'a self, node: &'a str, draining: bool) -> BoxFuture<'a, Result<()>>;
    /// The sandboxes whose `config.metadata` has `key` = `value`, found
    /// through an index.
    fn labeled_sandboxes<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<Vec<SandboxRow>>>;
    // The writes of a sandbox's owner: each under the [`Fence`] of the row
    // it read, [`Error::Fenced`] when that no longer holds.
    /// Records a state transition (after the operation succeeded).
    fn set_status<'a>(
        &'a self,
        f: &'a Fence,
        status: SandboxStatus,
        pid: Option<i64>,
    ) -> BoxFuture<'a, Result<()>>;
    fn set_config<'a>(
        &'a self,
        f: &'a Fence,
        config: &'a serde_json::Value,
    ) -> BoxFuture<'a, Result<()>>;
    /// Records a new running generation and clears the pending operation.
    fn set_running<'a>(
        &'a self,
        f: &'a Fence,
        pid: i64,
        generation: i64,
    ) -> BoxFuture<'a, Result<()>>;
    fn set_pending<'a>(&'a self, f: &'a Fence, op: Option<PendingOp>) -> BoxFuture<'a, Result<()>>;
    /// Records that the sandbox's runtime ended on its own, and why.
    fn set_failed<'a>(&'a self, f: &'a Fence, reason: &'a str) -> BoxFuture<'a, Result<()>>;
    fn insert_snapshot<'a>(&'a self, s: &'a SnapshotRow) -> BoxFuture<'a, Result<()>>;
    fn insert_audit<'a>(&'a self, rows: &'a [AuditRow]) -> BoxFuture<'a, Result<()>>;
    /// Inserts a new source; `false` when the name is taken.
    fn insert_credential<'a>(&'a self, c: &'a CredentialRow) -> BoxFuture<'a, Result<bool>>;
    /// Replaces a source's sealed values, bumping its version.
    fn update_credential<'a>(
        &'a self,
        team: &'a str,
        name: &'a str,
        sealed: &'a [u8],
    ) -> BoxFuture<'a, Result<()>>;
    /// A source of `team` by name (names are unique within a team).
    fn get_credential<'a>(
        &'a self,
        team: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<CredentialRow>>;
    fn list_credentials<'a>(&'a self, team: &'a str) -> BoxFuture<'a, Result<Vec<CredentialRow>>>;
    fn delete_credential<'a>(&'a self, team: &'a str, name: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Inserts a team; `false` when its id or name is taken.
    fn insert_team<'a>(&'a self, team: &'a TeamRow) -> BoxFuture<'a, Result<bool>>;
    fn list_teams(&self) -> BoxFuture<'_, Result<Vec<TeamRow>>>;
    fn insert_preview<'a>(&'a self, p: &'a PreviewRow) -> BoxFuture<'a, Result<()>>;
    fn preview<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<PreviewRow>>>;
    /// Uses a grant's bootstrap token once: true when `bootstrap_hash` was
    /// its unused token and it had not expired at `now_ms`; the cookie
    /// whose hash is `cookie_hash` then opens it.
    fn bootstrap_preview<'a>(
        &'a self,
        id: &'a str,
        bootstrap_hash: &'a str,
        cookie_hash: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool>>;
    /// Moves a grant's expiry; false when there is no such grant.
    fn renew_preview<'a>(&'a self, id: &'a str, expires_ms: i64) -> BoxFuture<'a, Result<bool>>;
    /// Revokes one grant; false when there was none.
    fn delete_preview<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool>>;
    /// Removes a sandbox's grants (it is gone).
    fn delete_previews<'a>(&'a self, sandbox_id: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Records that `team` made template `template` (by its id); a
    /// template's first team stays its team.
    fn set_template_team<'a>(
        &'a self,
        template: &'a str,
        team: &'a str,
    ) -> BoxFuture<'a, Result<()>>;
    /// The team of a template a user made; `None` for a shared one.
    fn template_team<'a>(&'a self, template: &'a str) -> BoxFuture<'a, Result<Option<String>>>;
    /// Every template's team, by template id (shared ones are absent).
    fn template_teams(&self) -> BoxFuture<'_, Result<std::collections::HashMap<String, String>>>;
    fn delete_template_team<'a>(&'a self, template: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Audit records of a sandbox that `q` selects, oldest first, with
    /// their sequence numbers.
    fn list_audit<'a>(
        &'a self,
        sandbox_id: &'a str,
        q: &'a AuditQuery,
    ) -> BoxFuture<'a, Result<Vec<(i64, serde_json::Value)>>>;
    /// Drops a deleted sandbox's records.
    fn delete_audit<'a>(&'a self, sandbox_id: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Drops records older than `before_ms`; returns how many.
    fn prune_audit(&self, before_ms: i64) -> BoxFuture<'_, Result<u64>>;
    fn get_snapshot<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<SnapshotRow>>;
    fn list_snapshots<'a>(
        &'a self,
        sandbox_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<SnapshotRow>>>;
    fn delete_snapshot<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Deletes the row (done when it is already gone).
    fn delete_sandbox<'a>(&'a self, f: &'a Fence) -> BoxFuture<'a, Result<()>>;
    /// Slots `node`'s sandboxes hold (those without a node count too:
    /// they are adopted by the first node to start).
    fn used_slots<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Vec<i64>>>;
    fn insert_api_key<'a>(&'a self, key: &'a ApiKeyRow) -> BoxFuture<'a, Result<()>>;
    /// The key whose token hashes to `hash` ([`token_hash`]), live or not.
    fn api_key_by_hash<'a>(&'a self, hash: &'a str) -> BoxFuture<'a, Result<Option<ApiKeyRow>>>;
    fn api_key_by_id<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<ApiKeyRow>>>;
    fn list_api_keys(&self) -> BoxFuture<'_, Result<Vec<ApiKeyRow>>>;
    /// `false` when there was no such key.
    fn delete_api_key<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool>>;
    /// Marks the key inactive at `at`; `false` when there was no such key.
    fn deactivate_api_key<'a>(&'a self, id: &'a str, at: i64) -> BoxFuture<'a, Result<bool>>;
    /// Records `uses` more uses of the key, the last at `at`.
    fn record_api_key_use<'a>(
        &'a self,
        id: &'a str,
        at: i64,
        uses: i64,
    ) -> BoxFuture<'a, Result<()>>;
    fn count_api_keys(&self) -> BoxFuture<'_, Result<i64>>;
}

/// Every store: what the daemon opens at start.
pub trait Database:
    Store + agents::AgentsStore + webhooks::WebhookStore + ssh_keys::SshKeyStore + volumes::VolumeStore
{
}

impl<T> Database for T where
    T: Store
        + agents::AgentsStore
        + webhooks::WebhookStore
        + ssh_keys::SshKeyStore
        + volumes::VolumeStore
{
}

/// Where the metadata lives.
#[derive(Debug, Clone)]
pub enum Location {
    /// The embedded database: one file, one daemon.
    Sqlite(PathBuf),
    /// A PostgreSQL database that several nodes may share.
    Postgres(PgUrl),
}

impl Location {
    /// Opens (creating and migrating as needed) the database.
    pub async fn open(&self) -> Result<Arc<dyn Database>> {
        let db: Arc<dyn Database> = match self {
            Location::Sqlite(path) => Arc::new(SqliteStore::open(path).await?),
            Location::Postgres(url) => Arc::new(PgStore::open(url).await?),
        };
        Ok(db)
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "sqlite {}", path.display()),
            Location::Postgres(url) => write!(f, "{url}"),
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
