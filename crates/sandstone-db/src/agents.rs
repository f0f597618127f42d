//! Managed Agents state: agents, environments, keys, sessions and work
//! items as JSON documents keyed by kind and id, and each session's events
//! in order. The agents crate keeps the working set in memory and writes
//! every change through, so a restart loses nothing.

use crate::{Result, SqliteStore};
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

fn parse(rows: Vec<String>) -> Vec<Value> {
    rows.iter()
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect()
}

impl AgentsStore for SqliteStore {
    fn put_doc<'a>(
        &'a self,
        kind: &'a str,
        id: &'a str,
        doc: &'a Value,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query("INSERT OR REPLACE INTO ma_docs (kind, id, doc) VALUES (?, ?, ?)")
                .bind(kind)
                .bind(id)
                .bind(doc.to_string())
                .execute(self.pool())
                .await?;
            Ok(())
        })
    }

    fn delete_doc<'a>(&'a self, kind: &'a str, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query("DELETE FROM ma_docs WHERE kind = ? AND id = ?")
                .bind(kind)
                .bind(id)
                .execute(self.pool())
                .await?;
            Ok(())
        })
    }

    fn load_docs<'a>(&'a self, kind: &'a str) -> BoxFuture<'a, Result<Vec<Value>>> {
        Box::pin(async move {
            let rows: Vec<String> =
                sqlx::query_scalar("SELECT doc FROM ma_docs WHERE kind = ? ORDER BY rowid")
                    .bind(kind)
                    .fetch_all(self.pool())
                    .await?;
            Ok(parse(rows))
        })
    }

    fn append_event<'a>(
        &'a self,
        session_id: &'a str,
        seq: i64,
        doc: &'a Value,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query("INSERT INTO ma_events (session_id, seq, doc) VALUES (?, ?, ?)")
                .bind(session_id)
                .bind(seq)
                .bind(doc.to_string())
                .execute(self.pool())
                .await?;
            Ok(())
        })
    }

    fn load_events<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, Result<Vec<Value>>> {
        Box::pin(async move {
            let rows: Vec<String> =
                sqlx::query_scalar("SELECT doc FROM ma_events WHERE session_id = ? ORDER BY seq")
                    .bind(session_id)
                    .fetch_all(self.pool())
                    .await?;
            Ok(parse(rows))
        })
    }

    fn delete_events<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query("DELETE FROM ma_events WHERE session_id = ?")
                .bind(session_id)
                .execute(self.pool())
                .await?;
            Ok(())
        })
    }
}
