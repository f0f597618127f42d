//! Managed Agents state: agents, environments, keys and sessions as JSON
//! documents keyed by kind and id; each session's events in order; the
//! work queue as a table of its own (typed columns, so that any node can
//! claim, lease and expire items with one conditional statement); the
//! claim on driving a session's turn; and the wake-ups between nodes
//! sharing the database (PostgreSQL `LISTEN/NOTIFY`). A stored document
//! that is not JSON is an error naming its kind and id, never skipped.

use crate::{Error, Result};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use sandstone_agents_api::WorkItem;
use serde_json::Value;

/// The channel the control planes of one database wake each other on.
pub const CHANNEL: &str = "sandstone_agents";

/// A work item as stored: the public document and what only the servers
/// know. Every change is a compare-and-set on `version`, so of two nodes
/// changing one item, one wins and the other sees the new row.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkRow {
    pub item: WorkItem,
    /// Hash of the sessions token handed out with the last claim.
    pub token_hash: Option<String>,
    /// When a poll last claimed it (Unix ms): an un-acked claim goes to
    /// another poller after the poll's `reclaim_older_than_ms`.
    pub claimed_ms: Option<i64>,
    /// When its lease runs out (Unix ms), while a worker holds one.
    pub lease_expires_ms: Option<i64>,
    pub version: i64,
}

/// Notifications from the other nodes: each payload as published, or
/// `None` when the connection was lost and re-made (some may be lost:
/// the listener must look again at what it waits for).
pub type Notifications = BoxStream<'static, Result<Option<String>>>;

pub trait AgentsStore: Send + Sync {
    /// Inserts or replaces a document.
    fn put_doc<'a>(
        &'a self,
        kind: &'a str,
        id: &'a str,
        doc: &'a Value,
    ) -> BoxFuture<'a, Result<()>>;
    fn delete_doc<'a>(&'a self, kind: &'a str, id: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Every document of `kind`, in id order (callers key them by id).
    fn load_docs<'a>(&'a self, kind: &'a str) -> BoxFuture<'a, Result<Vec<Value>>>;
    /// One document, if it exists.
    fn get_doc<'a>(&'a self, kind: &'a str, id: &'a str) -> BoxFuture<'a, Result<Option<Value>>>;
    /// Appends an event at the end of a session's history and returns its
    /// sequence number: 0, 1, 2… with no gap, whichever node appends
    /// (two nodes racing for one number: the loser retries with the next).
    fn append_event<'a>(
        &'a self,
        session_id: &'a str,
        doc: &'a Value,
    ) -> BoxFuture<'a, Result<i64>>;
    /// A session's events after `after_seq` (-1: all), in order, with
    /// their sequence numbers.
    fn load_events<'a>(
        &'a self,
        session_id: &'a str,
        after_seq: i64,
    ) -> BoxFuture<'a, Result<Vec<(i64, Value)>>>;
    fn delete_events<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Inserts a new work item; `false` when its session has a live one
    /// (a unique index on live items decides, across nodes).
    fn insert_work<'a>(&'a self, row: &'a WorkRow) -> BoxFuture<'a, Result<bool>>;
    /// Claims the oldest queued item of `environment` not claimed since
    /// `reclaim_before_ms`, handing it `token_hash`: one statement, so two
    /// pollers (on any nodes) never claim one item.
    fn claim_work<'a>(
        &'a self,
        environment: &'a str,
        now_ms: i64,
        reclaim_before_ms: i64,
        token_hash: &'a str,
    ) -> BoxFuture<'a, Result<Option<WorkRow>>>;
    fn get_work<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<WorkRow>>>;
    /// The item a sessions token (by hash) was last handed out with.
    fn work_by_token<'a>(&'a self, token_hash: &'a str) -> BoxFuture<'a, Result<Option<WorkRow>>>;
    /// Items of an environment (`Some`) or live items of a session, newest
    /// first.
    fn list_work<'a>(&'a self, of: WorkOf<'a>) -> BoxFuture<'a, Result<Vec<WorkRow>>>;
    /// Items holding a lease that ran out by `now_ms`.
    fn expired_work(&self, now_ms: i64) -> BoxFuture<'_, Result<Vec<WorkRow>>>;
    /// Writes `row` if the stored one still has `row.version` (and bumps
    /// it); `false` if another change came first.
    fn replace_work<'a>(&'a self, row: &'a WorkRow) -> BoxFuture<'a, Result<bool>>;

    /// Takes (or renews) the claim of `owner` on driving `session`'s turn
    /// until `expires_ms`: `false` while another owner holds an unexpired
    /// one.
    fn claim_driver<'a>(
        &'a self,
        session: &'a str,
        owner: &'a str,
        now_ms: i64,
        expires_ms: i64,
    ) -> BoxFuture<'a, Result<bool>>;
    /// Lets `owner`'s claim on `session` go.
    fn release_driver<'a>(&'a self, session: &'a str, owner: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Publishes `payload` to the other nodes on [`CHANNEL`] (nothing to do
    /// on SQLite: one node).
    fn notify<'a>(&'a self, payload: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Listens on [`CHANNEL`]; `None` where there is nobody else (SQLite).
    fn listen(&self) -> BoxFuture<'_, Result<Option<Notifications>>>;
}

/// Which work items [`AgentsStore::list_work`] lists.
#[derive(Debug, Clone, Copy)]
pub enum WorkOf<'a> {
    Environment(&'a str),
    /// Only the live ones.
    LiveOfSession(&'a str),
}

/// Parses stored documents; `what` names one row for the error.
pub(crate) fn parse(
    rows: Vec<(String, String)>,
    what: impl Fn(&str) -> String,
) -> Result<Vec<Value>> {
    rows.into_iter()
        .map(|(key, doc)| {
            serde_json::from_str(&doc)
                .map_err(|e| Error::Corrupt(format!("{}: not JSON: {e}", what(&key))))
        })
        .collect()
}
