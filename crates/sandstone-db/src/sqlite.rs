//! SQLite (WAL) backend.

use crate::{
    AuditRow, CredentialRow, Error, PendingOp, Result, SandboxRow, SandboxStatus, SnapshotRow,
    Store, token_hash,
};
use futures_util::future::BoxFuture;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::path::Path;

/// Schema versions, applied in order, each once.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE sandboxes (
        id TEXT PRIMARY KEY,
        template TEXT NOT NULL,
        status TEXT NOT NULL,
        config TEXT NOT NULL,
        slot INTEGER NOT NULL UNIQUE,
        pid INTEGER,
        generation INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE api_keys (
        token_hash TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );",
    "ALTER TABLE sandboxes ADD COLUMN pending_op TEXT;
    CREATE TABLE snapshots (
        id TEXT PRIMARY KEY,
        sandbox_id TEXT NOT NULL,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER
    );
    CREATE INDEX snapshots_by_sandbox ON snapshots (sandbox_id, created_at);",
    "CREATE TABLE audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        sandbox_id TEXT NOT NULL,
        time INTEGER NOT NULL,
        event TEXT NOT NULL,
        denied INTEGER NOT NULL
    );
    CREATE INDEX audit_by_sandbox ON audit (sandbox_id, seq);",
    "CREATE TABLE credential_sources (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        version INTEGER NOT NULL,
        sealed BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );",
    "ALTER TABLE snapshots ADD COLUMN template TEXT NOT NULL DEFAULT '';",
    // Managed Agents: resources as JSON documents, events in order.
    "CREATE TABLE ma_docs (
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        doc TEXT NOT NULL,
        PRIMARY KEY (kind, id)
    );
    CREATE TABLE ma_events (
        session_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        doc TEXT NOT NULL,
        PRIMARY KEY (session_id, seq)
    );",
    // Sandbox labels (config.metadata), kept by triggers in the same
    // transaction as the config, so finding a session's sandbox is an index
    // read instead of a scan of every sandbox's config.
    "CREATE TABLE sandbox_labels (
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        sandbox_id TEXT NOT NULL,
        PRIMARY KEY (key, value, sandbox_id)
    );
    CREATE TRIGGER sandbox_labels_insert AFTER INSERT ON sandboxes BEGIN
        INSERT INTO sandbox_labels
            SELECT key, value, NEW.id FROM json_each(NEW.config, '$.metadata');
    END;
    CREATE TRIGGER sandbox_labels_update AFTER UPDATE OF config ON sandboxes BEGIN
        DELETE FROM sandbox_labels WHERE sandbox_id = OLD.id;
        INSERT INTO sandbox_labels
            SELECT key, value, NEW.id FROM json_each(NEW.config, '$.metadata');
    END;
    CREATE TRIGGER sandbox_labels_delete AFTER DELETE ON sandboxes BEGIN
        DELETE FROM sandbox_labels WHERE sandbox_id = OLD.id;
    END;
    INSERT INTO sandbox_labels
        SELECT j.key, j.value, s.id FROM sandboxes s, json_each(s.config, '$.metadata') j;",
    // Why a sandbox is `failed` (its init died), shown with that status.
    "ALTER TABLE sandboxes ADD COLUMN status_reason TEXT;",
];

// Columns are named, never `*`: a cached statement's column list must not
// change under it when a migration adds a column.
macro_rules! sandbox_cols {
    () => {
        "id, template, status, config, slot, pid, generation, created_at, updated_at, pending_op, status_reason"
    };
}

macro_rules! credential_cols {
    () => {
        "name, kind, version, sealed, created_at, updated_at"
    };
}

fn row_to_credential(r: &sqlx::sqlite::SqliteRow) -> CredentialRow {
    CredentialRow {
        name: r.get("name"),
        kind: r.get("kind"),
        version: r.get("version"),
        sealed: r.get("sealed"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    }
}

macro_rules! snapshot_cols {
    () => {
        "id, sandbox_id, name, description, created_at, expires_at, template"
    };
}

pub struct SqliteStore {
    pool: SqlitePool,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl SqliteStore {
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub async fn open(path: &Path) -> Result<SqliteStore> {
        // It holds claims' environment variables, sessions and audit
        // records: owner-only from the first byte. SQLite gives the WAL
        // and shared-memory files the database file's mode.
        std::os::unix::fs::OpenOptionsExt::mode(
            std::fs::OpenOptions::new().append(true).create(true),
            0o600,
        )
        .open(path)
        .map_err(sqlx::Error::Io)?;
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        let store = SqliteStore { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
            .execute(&self.pool)
            .await?;
        let done: i64 = sqlx::query("SELECT COUNT(*) FROM schema_migrations")
            .fetch_one(&self.pool)
            .await?
            .get(0);
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(done as usize) {
            let mut tx = self.pool.begin().await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO schema_migrations (version) VALUES (?)")
                .bind(i as i64 + 1)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Ok(())
    }
}

fn row_to_sandbox(r: &sqlx::sqlite::SqliteRow) -> Result<SandboxRow> {
    let config: String = r.get("config");
    Ok(SandboxRow {
        id: r.get("id"),
        template: r.get("template"),
        status: r.get::<&str, _>("status").parse()?,
        config: serde_json::from_str(&config).map_err(|e| Error::Corrupt(e.to_string()))?,
        slot: r.get("slot"),
        pid: r.get("pid"),
        generation: r.get("generation"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
        pending_op: r
            .get::<Option<&str>, _>("pending_op")
            .map(str::parse)
            .transpose()?,
        status_reason: r.get("status_reason"),
    })
}

fn row_to_snapshot(r: &sqlx::sqlite::SqliteRow) -> SnapshotRow {
    SnapshotRow {
        id: r.get("id"),
        sandbox_id: r.get("sandbox_id"),
        name: r.get("name"),
        description: r.get("description"),
        created_at: r.get("created_at"),
        expires_at: r.get("expires_at"),
        template: r.get("template"),
    }
}

/// An UPDATE that touched no row names an unknown sandbox.
fn found(done: sqlx::sqlite::SqliteQueryResult) -> Result<()> {
    if done.rows_affected() == 0 {
        return Err(Error::NotFound);
    }
    Ok(())
}

impl Store for SqliteStore {
    fn insert_sandbox<'a>(&'a self, row: &'a SandboxRow) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO sandboxes (id, template, status, config, slot, pid, generation, created_at, updated_at, pending_op)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&row.id)
            .bind(&row.template)
            .bind(row.status.as_str())
            .bind(row.config.to_string())
            .bind(row.slot)
            .bind(row.pid)
            .bind(row.generation)
            .bind(row.created_at)
            .bind(row.updated_at)
            .bind(row.pending_op.map(PendingOp::as_str))
            .execute(&self.pool)
            .await?;
            Ok(())
        })
    }

    fn get_sandbox<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<SandboxRow>> {
        Box::pin(async move {
            let r = sqlx::query(concat!(
                "SELECT ",
                sandbox_cols!(),
                " FROM sandboxes WHERE id = ?"
            ))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(Error::NotFound)?;
            row_to_sandbox(&r)
        })
    }

    fn labeled_sandboxes<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<Vec<SandboxRow>>> {
        Box::pin(async move {
            sqlx::query(concat!(
                "SELECT ",
                sandbox_cols!(),
                " FROM sandboxes WHERE id IN
                    (SELECT sandbox_id FROM sandbox_labels WHERE key = ? AND value = ?)
                  ORDER BY created_at, id"
            ))
            .bind(key)
            .bind(value)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(row_to_sandbox)
            .collect()
        })
    }

    fn list_sandboxes(&self) -> BoxFuture<'_, Result<Vec<SandboxRow>>> {
        Box::pin(async move {
            sqlx::query(concat!(
                "SELECT ",
                sandbox_cols!(),
                " FROM sandboxes ORDER BY created_at, id"
            ))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(row_to_sandbox)
            .collect()
        })
    }

    fn set_status<'a>(
        &'a self,
        id: &'a str,
        status: SandboxStatus,
        pid: Option<i64>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let done = sqlx::query(
                "UPDATE sandboxes SET status = ?, pid = ?, updated_at = ? WHERE id = ?",
            )
            .bind(status.as_str())
            .bind(pid)
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
            found(done)
        })
    }

    fn set_running<'a>(
        &'a self,
        id: &'a str,
        pid: i64,
        generation: i64,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let done = sqlx::query(
                "UPDATE sandboxes SET status = ?, pid = ?, generation = ?, pending_op = NULL, status_reason = NULL, updated_at = ? WHERE id = ?",
            )
            .bind(SandboxStatus::Running.as_str())
            .bind(pid)
            .bind(generation)
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
            found(done)
        })
    }

    fn set_failed<'a>(&'a self, id: &'a str, reason: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let done = sqlx::query(
                "UPDATE sandboxes SET status = ?, pid = NULL, status_reason = ?, updated_at = ? WHERE id = ?",
            )
            .bind(SandboxStatus::Failed.as_str())
            .bind(reason)
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
            found(done)
        })
    }

    fn set_pending<'a>(&'a self, id: &'a str, op: Option<PendingOp>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let done = sqlx::query("UPDATE sandboxes SET pending_op = ? WHERE id = ?")
                .bind(op.map(PendingOp::as_str))
                .bind(id)
                .execute(&self.pool)
                .await?;
            found(done)
        })
    }

    fn insert_snapshot<'a>(&'a self, s: &'a SnapshotRow) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO snapshots (id, sandbox_id, name, description, created_at, expires_at, template) VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&s.id)
            .bind(&s.sandbox_id)
            .bind(&s.name)
            .bind(&s.description)
            .bind(s.created_at)
            .bind(s.expires_at)
            .bind(&s.template)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
    }

    fn get_snapshot<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<SnapshotRow>> {
        Box::pin(async move {
            let r = sqlx::query(concat!(
                "SELECT ",
                snapshot_cols!(),
                " FROM snapshots WHERE id = ?"
            ))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(Error::NotFound)?;
            Ok(row_to_snapshot(&r))
        })
    }

    fn list_snapshots<'a>(
        &'a self,
        sandbox_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<SnapshotRow>>> {
        Box::pin(async move {
            let rows = match sandbox_id {
                Some(id) => {
                    sqlx::query(concat!(
                        "SELECT ",
                        snapshot_cols!(),
                        " FROM snapshots WHERE sandbox_id = ? ORDER BY created_at, id"
                    ))
                    .bind(id)
                    .fetch_all(&self.pool)
                    .await?
                }
                None => {
                    sqlx::query(concat!(
                        "SELECT ",
                        snapshot_cols!(),
                        " FROM snapshots ORDER BY created_at, id"
                    ))
                    .fetch_all(&self.pool)
                    .await?
                }
            };
            Ok(rows.iter().map(row_to_snapshot).collect())
        })
    }

    fn delete_snapshot<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query("DELETE FROM snapshots WHERE id = ?")
                .bind(id)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn insert_audit<'a>(&'a self, rows: &'a [AuditRow]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            for r in rows {
                sqlx::query(
                    "INSERT INTO audit (sandbox_id, time, event, denied) VALUES (?, ?, ?, ?)",
                )
                .bind(&r.sandbox_id)
                .bind(r.time)
                .bind(r.event.to_string())
                .bind(r.denied)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn insert_credential<'a>(&'a self, c: &'a CredentialRow) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let done = sqlx::query(
                "INSERT INTO credential_sources (name, kind, version, sealed, created_at, updated_at)
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
            )
            .bind(&c.name)
            .bind(&c.kind)
            .bind(c.version)
            .bind(&c.sealed)
            .bind(c.created_at)
            .bind(c.updated_at)
            .execute(&self.pool)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn update_credential<'a>(
        &'a self,
        name: &'a str,
        sealed: &'a [u8],
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let done = sqlx::query(
                "UPDATE credential_sources SET sealed = ?, version = version + 1, updated_at = ? WHERE name = ?",
            )
            .bind(sealed)
            .bind(now_ms())
            .bind(name)
            .execute(&self.pool)
            .await?;
            found(done)
        })
    }

    fn get_credential<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<CredentialRow>> {
        Box::pin(async move {
            let r = sqlx::query(concat!(
                "SELECT ",
                credential_cols!(),
                " FROM credential_sources WHERE name = ?"
            ))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(Error::NotFound)?;
            Ok(row_to_credential(&r))
        })
    }

    fn list_credentials(&self) -> BoxFuture<'_, Result<Vec<CredentialRow>>> {
        Box::pin(async move {
            let rows = sqlx::query(concat!(
                "SELECT ",
                credential_cols!(),
                " FROM credential_sources ORDER BY name"
            ))
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.iter().map(row_to_credential).collect())
        })
    }

    fn delete_credential<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let done = sqlx::query("DELETE FROM credential_sources WHERE name = ?")
                .bind(name)
                .execute(&self.pool)
                .await?;
            found(done)
        })
    }

    fn list_audit<'a>(
        &'a self,
        sandbox_id: &'a str,
        after_seq: i64,
        denied_only: bool,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<(i64, serde_json::Value)>>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT seq, event FROM audit WHERE sandbox_id = ? AND seq > ? AND (denied = 1 OR ? = 0)
                 ORDER BY seq LIMIT ?",
            )
            .bind(sandbox_id)
            .bind(after_seq)
            .bind(denied_only)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|r| {
                    let text: String = r.get("event");
                    let v =
                        serde_json::from_str(&text).map_err(|e| Error::Corrupt(e.to_string()))?;
                    Ok((r.get::<i64, _>("seq"), v))
                })
                .collect()
        })
    }

    fn delete_audit<'a>(&'a self, sandbox_id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query("DELETE FROM audit WHERE sandbox_id = ?")
                .bind(sandbox_id)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn prune_audit(&self, before_ms: i64) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let done = sqlx::query("DELETE FROM audit WHERE time < ?")
                .bind(before_ms)
                .execute(&self.pool)
                .await?;
            Ok(done.rows_affected())
        })
    }

    fn set_config<'a>(
        &'a self,
        id: &'a str,
        config: &'a serde_json::Value,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let done = sqlx::query("UPDATE sandboxes SET config = ?, updated_at = ? WHERE id = ?")
                .bind(config.to_string())
                .bind(now_ms())
                .bind(id)
                .execute(&self.pool)
                .await?;
            found(done)
        })
    }

    fn delete_sandbox<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query("DELETE FROM sandboxes WHERE id = ?")
                .bind(id)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn used_slots(&self) -> BoxFuture<'_, Result<Vec<i64>>> {
        Box::pin(async move {
            Ok(sqlx::query("SELECT slot FROM sandboxes ORDER BY slot")
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect())
        })
    }

    fn add_api_key<'a>(&'a self, name: &'a str, token: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query("INSERT INTO api_keys (token_hash, name, created_at) VALUES (?, ?, ?)")
                .bind(token_hash(token))
                .bind(name)
                .bind(now_ms())
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn check_api_key<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            Ok(
                sqlx::query("SELECT name FROM api_keys WHERE token_hash = ?")
                    .bind(token_hash(token))
                    .fetch_optional(&self.pool)
                    .await?
                    .map(|r| r.get(0)),
            )
        })
    }

    fn count_api_keys(&self) -> BoxFuture<'_, Result<i64>> {
        Box::pin(async move {
            Ok(sqlx::query("SELECT COUNT(*) FROM api_keys")
                .fetch_one(&self.pool)
                .await?
                .get(0))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn labels_follow_the_config_through_insert_update_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db.sqlite"))
            .await
            .unwrap();
        let row = |id: &str, slot, session: &str| SandboxRow {
            id: id.into(),
            template: "host".into(),
            status: SandboxStatus::Running,
            config: serde_json::json!({"metadata": {"cma.session": session, "team": "a"}}),
            slot,
            pid: None,
            generation: 1,
            created_at: slot,
            updated_at: 1,
            pending_op: None,
            status_reason: None,
        };
        store.insert_sandbox(&row("sb-1", 1, "s1")).await.unwrap();
        store.insert_sandbox(&row("sb-2", 2, "s2")).await.unwrap();
        let ids = async |k: &str, v: &str| -> Vec<String> {
            let found = store.labeled_sandboxes(k, v).await.unwrap();
            found.into_iter().map(|r| r.id).collect()
        };
        assert_eq!(ids("cma.session", "s1").await, ["sb-1"]);
        assert_eq!(ids("team", "a").await, ["sb-1", "sb-2"]);
        let relabeled = serde_json::json!({"metadata": {"cma.session": "s3"}});
        store.set_config("sb-1", &relabeled).await.unwrap();
        assert!(ids("cma.session", "s1").await.is_empty());
        assert_eq!(ids("cma.session", "s3").await, ["sb-1"]);
        assert_eq!(ids("team", "a").await, ["sb-2"]);
        store.delete_sandbox("sb-2").await.unwrap();
        assert!(ids("team", "a").await.is_empty());
    }

    #[tokio::test]
    async fn an_unknown_status_or_pending_operation_is_corrupt_not_defaulted() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db.sqlite"))
            .await
            .unwrap();
        for (status, pending) in [("creating", None), ("paused", Some("stop"))] {
            sqlx::query("DELETE FROM sandboxes")
                .execute(store.pool())
                .await
                .unwrap();
            sqlx::query(
                "INSERT INTO sandboxes (id, template, status, config, slot, generation, created_at, updated_at, pending_op)
                 VALUES ('sb-1', 'host', ?, '{}', 1, 1, 1, 1, ?)",
            )
            .bind(status)
            .bind(pending)
            .execute(store.pool())
            .await
            .unwrap();
            let bad = pending.unwrap_or(status);
            assert!(
                matches!(store.get_sandbox("sb-1").await, Err(Error::Corrupt(m)) if m.contains(bad))
            );
            assert!(matches!(
                store.list_sandboxes().await,
                Err(Error::Corrupt(_))
            ));
        }
    }

    #[tokio::test]
    async fn sandboxes_and_keys_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let store = SqliteStore::open(&path).await.unwrap();
        let row = SandboxRow {
            id: "sb-1".into(),
            template: "host".into(),
            status: SandboxStatus::Running,
            config: serde_json::json!({"ttl": 5}),
            slot: 3,
            pid: Some(42),
            generation: 1,
            created_at: 1,
            updated_at: 1,
            pending_op: None,
            status_reason: None,
        };
        store.insert_sandbox(&row).await.unwrap();
        store
            .set_status("sb-1", SandboxStatus::Failed, None)
            .await
            .unwrap();
        assert!(matches!(
            store.set_status("nope", SandboxStatus::Paused, None).await,
            Err(Error::NotFound)
        ));
        store.add_api_key("admin", "secret-token").await.unwrap();
        drop(store);
        let store = SqliteStore::open(&path).await.unwrap();
        let back = store.get_sandbox("sb-1").await.unwrap();
        assert_eq!(back.status, SandboxStatus::Failed);
        assert_eq!(back.pid, None);
        assert_eq!(back.config["ttl"], 5);
        assert_eq!(store.used_slots().await.unwrap(), vec![3]);
        assert_eq!(
            store
                .check_api_key("secret-token")
                .await
                .unwrap()
                .as_deref(),
            Some("admin")
        );
        assert_eq!(store.check_api_key("wrong").await.unwrap(), None);
        store
            .set_pending("sb-1", Some(PendingOp::Pause))
            .await
            .unwrap();
        assert_eq!(
            store.get_sandbox("sb-1").await.unwrap().pending_op,
            Some(PendingOp::Pause)
        );
        store.set_running("sb-1", 7, 2).await.unwrap();
        let r = store.get_sandbox("sb-1").await.unwrap();
        assert_eq!(
            (r.status, r.pid, r.generation, r.pending_op),
            (SandboxStatus::Running, Some(7), 2, None)
        );
        let snap = crate::SnapshotRow {
            id: "snap-1".into(),
            sandbox_id: "sb-1".into(),
            name: "n".into(),
            description: String::new(),
            created_at: 5,
            expires_at: None,
            template: "host".into(),
        };
        store.insert_snapshot(&snap).await.unwrap();
        assert_eq!(
            store.list_snapshots(Some("sb-1")).await.unwrap(),
            vec![snap.clone()]
        );
        assert_eq!(store.get_snapshot("snap-1").await.unwrap(), snap);
        store.delete_snapshot("snap-1").await.unwrap();
        assert!(store.list_snapshots(None).await.unwrap().is_empty());
    }
}
