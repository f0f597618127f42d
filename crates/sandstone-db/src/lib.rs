//! The metadata database: every durable record that is not file content.
//!
//! Sandboxes (with their status and pending operation, typed in [`state`]), snapshots, credential sources
//! (values sealed by [`secrets::Sealer`]), egress audit records and API keys
//! sit behind the [`Store`] trait; the Managed Agents control plane's
//! documents and session events behind [`agents::AgentsStore`]. Both traits
//! exist so a PostgreSQL backend can sit beside the embedded SQLite one.
//! File content (volumes, templates, snapshots' layers) lives on disk, in
//! `sandstone-volumes`.

pub mod agents;
pub mod secrets;
mod sqlite;
pub mod state;

pub use sqlite::SqliteStore;
pub use state::{PendingOp, SandboxStatus};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("not found")]
    NotFound,
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, Error>;

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
}

/// One egress audit record (a connection or a DNS answer), as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub sandbox_id: String,
    pub time: i64,
    pub denied: bool,
    pub event: serde_json::Value,
}

/// A credential source: metadata in the clear, the values sealed.
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialRow {
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
    /// The sandboxes whose `config.metadata` has `key` = `value`, found
    /// through an index.
    fn labeled_sandboxes<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<Vec<SandboxRow>>>;
    /// Records a state transition (after the operation succeeded).
    fn set_status<'a>(
        &'a self,
        id: &'a str,
        status: SandboxStatus,
        pid: Option<i64>,
    ) -> BoxFuture<'a, Result<()>>;
    fn set_config<'a>(
        &'a self,
        id: &'a str,
        config: &'a serde_json::Value,
    ) -> BoxFuture<'a, Result<()>>;
    /// Records a new running generation and clears the pending operation.
    fn set_running<'a>(
        &'a self,
        id: &'a str,
        pid: i64,
        generation: i64,
    ) -> BoxFuture<'a, Result<()>>;
    fn set_pending<'a>(&'a self, id: &'a str, op: Option<PendingOp>) -> BoxFuture<'a, Result<()>>;
    /// Records that the sandbox's runtime ended on its own, and why.
    fn set_failed<'a>(&'a self, id: &'a str, reason: &'a str) -> BoxFuture<'a, Result<()>>;
    fn insert_snapshot<'a>(&'a self, s: &'a SnapshotRow) -> BoxFuture<'a, Result<()>>;
    fn insert_audit<'a>(&'a self, rows: &'a [AuditRow]) -> BoxFuture<'a, Result<()>>;
    /// Inserts a new source; `false` when the name is taken.
    fn insert_credential<'a>(&'a self, c: &'a CredentialRow) -> BoxFuture<'a, Result<bool>>;
    /// Replaces a source's sealed values, bumping its version.
    fn update_credential<'a>(
        &'a self,
        name: &'a str,
        sealed: &'a [u8],
    ) -> BoxFuture<'a, Result<()>>;
    fn get_credential<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<CredentialRow>>;
    fn list_credentials(&self) -> BoxFuture<'_, Result<Vec<CredentialRow>>>;
    fn delete_credential<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Audit records of a sandbox after `after_seq`, oldest first, with
    /// their sequence numbers.
    fn list_audit<'a>(
        &'a self,
        sandbox_id: &'a str,
        after_seq: i64,
        denied_only: bool,
        limit: i64,
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
    fn delete_sandbox<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Slots in use, for allocating id ranges.
    fn used_slots(&self) -> BoxFuture<'_, Result<Vec<i64>>>;
    fn add_api_key<'a>(&'a self, name: &'a str, token: &'a str) -> BoxFuture<'a, Result<()>>;
    /// The key's name when `token` is a valid API key.
    fn check_api_key<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<String>>>;
    fn count_api_keys(&self) -> BoxFuture<'_, Result<i64>>;
}
