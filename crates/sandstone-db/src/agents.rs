//! Managed Agents state: agents, environments, keys, sessions and work
//! items as JSON documents keyed by kind and id, and each session's events
//! in order. The agents crate keeps the working set in memory and writes
//! every change through, so a restart loses nothing. A stored document that
//! is not JSON is an error naming its kind and id, never skipped: the
//! daemon refuses to start rather than forget a resource.

use crate::{Error, Result};
use futures_util::future::BoxFuture;
use serde_json::Value;

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
    fn append_event<'a>(
        &'a self,
        session_id: &'a str,
        seq: i64,
        doc: &'a Value,
    ) -> BoxFuture<'a, Result<()>>;
    /// A session's events, in order.
    fn load_events<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, Result<Vec<Value>>>;
    fn delete_events<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, Result<()>>;
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
