//! Managed Agents state: agents, environments, keys, sessions and work
//! items as JSON documents keyed by kind and id, and each session's events
//! in order. The agents crate keeps the working set in memory and writes
//! every change through, so a restart loses nothing. A stored document that
//! is not JSON is an error naming its kind and id, never skipped: the
//! daemon refuses to start rather than forget a resource.

use crate::{Error, Result, SqliteStore};
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

/// Parses stored documents; `what` names one row for the error.
fn parse(rows: Vec<(String, String)>, what: impl Fn(&str) -> String) -> Result<Vec<Value>> {
    rows.into_iter()
        .map(|(key, doc)| {
            serde_json::from_str(&doc)
                .map_err(|e| Error::Corrupt(format!("{}: not JSON: {e}", what(&key))))
        })
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
            let rows: Vec<(String, String)> =
                sqlx::query_as("SELECT id, doc FROM ma_docs WHERE kind = ? ORDER BY rowid")
                    .bind(kind)
                    .fetch_all(self.pool())
                    .await?;
            parse(rows, |id| format!("managed agents {kind} {id}"))
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
            let rows: Vec<(i64, String)> =
                sqlx::query_as("SELECT seq, doc FROM ma_events WHERE session_id = ? ORDER BY seq")
                    .bind(session_id)
                    .fetch_all(self.pool())
                    .await?;
            let rows = rows
                .into_iter()
                .map(|(seq, d)| (seq.to_string(), d))
                .collect();
            parse(rows, |seq| format!("event {seq} of session {session_id}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_document_that_is_not_json_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteStore::open(&dir.path().join("db.sqlite"))
            .await
            .unwrap();
        db.put_doc("agent", "agent_1@1", &serde_json::json!({"id": "agent_1"}))
            .await
            .unwrap();
        assert_eq!(db.load_docs("agent").await.unwrap().len(), 1);
        sqlx::query("INSERT INTO ma_docs (kind, id, doc) VALUES ('agent', 'agent_2@1', '{cut')")
            .execute(db.pool())
            .await
            .unwrap();
        let err = db.load_docs("agent").await.unwrap_err().to_string();
        assert!(err.contains("managed agents agent agent_2@1"), "{err}");
    }
}
