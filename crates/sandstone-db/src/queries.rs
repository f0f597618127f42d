//! Every query, written once in the SQL both engines accept (see the crate
//! docs). This file is a child module of `sqlite` and of `postgres`: each
//! compiles it against its own `Db` (the sqlx driver) and `Backend` (its
//! store, which holds a `pool` for reads and a `writer` for every statement
//! that writes), so neither pays for the other.

use super::{Backend, Db};
use crate::agents::{AgentsStore, Notifications, WorkOf, WorkRow, parse};
use crate::ssh_keys::{SshKeyRow, SshKeyStore};
use crate::volumes::{VolumeMountRow, VolumeRow, VolumeSnapshotRow, VolumeStore};
use crate::webhooks::{AttemptOutcome, DeliveryRow, WebhookStore};
use crate::{
    ApiKeyRow, AuditQuery, AuditRow, CredentialRow, Error, Fence, NodeRecord, PendingOp,
    PreviewRow, Result, SandboxRow, SandboxStatus, SnapshotRow, Store, TeamRow, now_ms,
};
use futures_util::future::BoxFuture;
use serde_json::Value;
use sqlx::Row as _;

/// Deletes a session's events (each backend's appender does, in order
/// with its appends).
pub(super) async fn delete_events(pool: &sqlx::Pool<super::Db>, session_id: &str) -> Result<()> {
    sqlx::query("DELETE FROM ma_events WHERE session_id = $1")
        .bind(session_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Audit rows per INSERT: four parameters each, well inside both engines'
/// limits (SQLite 32766, PostgreSQL 65535).
const AUDIT_ROWS_PER_INSERT: usize = 500;

/// `count` numbered parameters from `$first`: "$1, $2, $3".
pub(super) fn placeholders(count: usize, first: usize) -> String {
    (first..first + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

type Row = <Db as sqlx::Database>::Row;
type Connection = <Db as sqlx::Database>::Connection;

/// Applies the migrations `list` has beyond those recorded, in order, in
/// one transaction; `lock` (a statement) first keeps concurrent starts on a
/// shared database from migrating twice.
pub(super) async fn migrate(
    conn: &mut Connection,
    list: &[&'static str],
    lock: Option<&'static str>,
) -> Result<()> {
    use sqlx::Connection as _;
    let mut tx = conn.begin().await?;
    if let Some(lock) = lock {
        sqlx::raw_sql(lock).execute(&mut *tx).await?;
    }
    sqlx::raw_sql("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)")
        .execute(&mut *tx)
        .await?;
    let done: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM schema_migrations")
        .fetch_one(&mut *tx)
        .await?;
    for (i, sql) in list.iter().enumerate().skip(done as usize) {
        sqlx::raw_sql(*sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO schema_migrations (version) VALUES ($1)")
            .bind(i as i64 + 1)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

// Columns are named, never `*`: a cached statement's column list must not
// change under it when a migration adds a column.
macro_rules! sandbox_cols {
    () => {
        "id, template, status, config, slot, pid, generation, created_at, updated_at, pending_op, status_reason, node_id, epoch, checkpointed_at, team_id"
    };
}

macro_rules! credential_cols {
    () => {
        "team_id, name, kind, version, sealed, created_at, updated_at"
    };
}

macro_rules! api_key_cols {
    () => {
        "id, token_hash, name, role, expires_at, active, created_by, created_at, updated_at, last_used_at, usage_count, team_id"
    };
}

macro_rules! snapshot_cols {
    () => {
        "id, sandbox_id, name, description, created_at, expires_at, template, team_id"
    };
}

fn row_to_sandbox(r: &Row) -> Result<SandboxRow> {
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
        node_id: r.get("node_id"),
        epoch: r.get("epoch"),
        checkpointed_at: r.get("checkpointed_at"),
        team_id: r.get("team_id"),
    })
}

fn row_to_node(r: &Row) -> Result<NodeRecord> {
    let templates: String = r.get("templates");
    Ok(NodeRecord {
        id: r.get("id"),
        url: r.get("url"),
        capacity: r.get("capacity"),
        running: r.get("running"),
        templates: serde_json::from_str(&templates).map_err(|e| Error::Corrupt(e.to_string()))?,
        draining: r.get("draining"),
        lease_expires_at: r.get("lease_expires_at"),
        started_at: r.get("started_at"),
    })
}

fn row_to_snapshot(r: &Row) -> SnapshotRow {
    SnapshotRow {
        id: r.get("id"),
        sandbox_id: r.get("sandbox_id"),
        name: r.get("name"),
        description: r.get("description"),
        created_at: r.get("created_at"),
        expires_at: r.get("expires_at"),
        template: r.get("template"),
        team_id: r.get("team_id"),
    }
}

fn row_to_api_key(r: &Row) -> Result<ApiKeyRow> {
    let role: String = r.get("role");
    Ok(ApiKeyRow {
        id: r.get("id"),
        token_hash: r.get("token_hash"),
        name: r.get("name"),
        role: role.parse().map_err(Error::Corrupt)?,
        expires_at: r.get("expires_at"),
        active: r.get("active"),
        created_by: r.get("created_by"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
        last_used_at: r.get("last_used_at"),
        usage_count: r.get("usage_count"),
        team_id: r.get("team_id"),
    })
}

fn row_to_credential(r: &Row) -> CredentialRow {
    CredentialRow {
        team_id: r.get("team_id"),
        name: r.get("name"),
        kind: r.get("kind"),
        version: r.get("version"),
        sealed: r.get("sealed"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    }
}

/// An UPDATE that touched no row names an unknown record.
macro_rules! work_cols {
    () => {
        "token_hash, claimed_ms, lease_expires_ms, version, doc"
    };
}

fn row_to_work(r: &Row) -> Result<WorkRow> {
    let doc: String = r.get("doc");
    let item = serde_json::from_str(&doc)
        .map_err(|e| Error::Corrupt(format!("work item: not a work item: {e}")))?;
    Ok(WorkRow {
        item,
        token_hash: r.get("token_hash"),
        claimed_ms: r.get("claimed_ms"),
        lease_expires_ms: r.get("lease_expires_ms"),
        version: r.get("version"),
    })
}

/// The claim: the oldest claimable item, locked (on PostgreSQL, skipping
/// rows another poller has locked this instant, so that concurrent polls
/// take different items instead of queueing on one), then marked claimed
/// in the same statement.
fn claim_sql() -> &'static str {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "UPDATE ma_work SET claimed_ms = $2, token_hash = $4, version = version + 1
             WHERE id = (SELECT id FROM ma_work
                 WHERE environment_id = $1 AND state = 'queued'
                   AND (claimed_ms IS NULL OR claimed_ms <= $3)
                 ORDER BY created_at, id LIMIT 1 {})
             RETURNING {}",
            super::SKIP_LOCKED,
            work_cols!()
        )
    });
    &SQL
}

fn found(done: <Db as sqlx::Database>::QueryResult) -> Result<()> {
    if done.rows_affected() == 0 {
        return Err(Error::NotFound);
    }
    Ok(())
}

/// The condition every write of a sandbox's owner carries: the row is still
/// the node's under the epoch it read (binds `$N` and `$N+1`).
macro_rules! owned_by {
    ($n:literal, $m:literal) => {
        concat!(
            " AND node_id IS NOT DISTINCT FROM $",
            $n,
            " AND epoch = $",
            $m
        )
    };
}

impl Backend {
    /// After a fenced write changed nothing: [`Error::Fenced`] when the row
    /// is still there (another node took it, or it was marked lost),
    /// [`Error::NotFound`] when it is gone.
    async fn owned(&self, done: <Db as sqlx::Database>::QueryResult, f: &Fence) -> Result<()> {
        if done.rows_affected() > 0 {
            return Ok(());
        }
        let row: Option<(Option<String>, i64)> =
            sqlx::query_as("SELECT node_id, epoch FROM sandboxes WHERE id = $1")
                .bind(&f.sandbox)
                .fetch_optional(&self.pool)
                .await?;
        match row {
            None => Err(Error::NotFound),
            Some((node, epoch)) => Err(Error::Fenced {
                sandbox: f.sandbox.clone(),
                node,
                epoch,
            }),
        }
    }
}

impl Store for Backend {
    fn insert_sandbox<'a>(&'a self, row: &'a SandboxRow) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO sandboxes (id, template, status, config, slot, pid, generation, created_at, updated_at, pending_op, node_id, team_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
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
            .bind(&row.node_id)
            .bind(&row.team_id)
            .execute(&self.writer)
            .await?;
            Ok(())
        })
    }

    fn get_sandbox<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<SandboxRow>> {
        Box::pin(async move {
            let r = sqlx::query(concat!(
                "SELECT ",
                sandbox_cols!(),
                " FROM sandboxes WHERE id = $1"
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
                    (SELECT sandbox_id FROM sandbox_labels WHERE key = $1 AND value = $2)
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

    fn node_sandboxes<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Vec<SandboxRow>>> {
        Box::pin(async move {
            sqlx::query(concat!(
                "SELECT ",
                sandbox_cols!(),
                " FROM sandboxes WHERE node_id = $1 ORDER BY created_at, id"
            ))
            .bind(node)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(row_to_sandbox)
            .collect()
        })
    }

    fn sandbox_node<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            sqlx::query_scalar("SELECT node_id FROM sandboxes WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
                .ok_or(Error::NotFound)
        })
    }

    fn move_sandbox<'a>(
        &'a self,
        from: &'a Fence,
        to: &'a str,
        slot: i64,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let done = sqlx::query(concat!(
                "UPDATE sandboxes SET node_id = $1, slot = $2, pid = NULL, epoch = epoch + 1, updated_at = $3
                 WHERE id = $4",
                owned_by!(5, 6)
            ))
            .bind(to)
            .bind(slot)
            .bind(now_ms())
            .bind(&from.sandbox)
            .bind(&from.node)
            .bind(from.epoch)
            .execute(&self.writer)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn adopt_unowned<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let done = sqlx::query("UPDATE sandboxes SET node_id = $1 WHERE node_id IS NULL")
                .bind(node)
                .execute(&self.writer)
                .await?;
            Ok(done.rows_affected())
        })
    }

    fn announce_node<'a>(&'a self, n: &'a NodeRecord) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let templates =
                serde_json::to_string(&n.templates).map_err(|e| Error::Corrupt(e.to_string()))?;
            sqlx::query(
                "INSERT INTO nodes (id, url, capacity, running, templates, draining, lease_expires_at, started_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (id) DO UPDATE SET url = $2, capacity = $3, running = $4,
                     templates = $5, lease_expires_at = $7, started_at = $8",
            )
            .bind(&n.id)
            .bind(&n.url)
            .bind(n.capacity)
            .bind(n.running)
            .bind(templates)
            .bind(n.draining)
            .bind(n.lease_expires_at)
            .bind(n.started_at)
            .execute(&self.writer)
            .await?;
            Ok(())
        })
    }

    fn list_nodes(&self) -> BoxFuture<'_, Result<Vec<NodeRecord>>> {
        Box::pin(async move {
            sqlx::query(
                "SELECT id, url, capacity, running, templates, draining, lease_expires_at, started_at
                 FROM nodes ORDER BY id",
            )
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(row_to_node)
            .collect()
        })
    }

    fn set_draining<'a>(&'a self, node: &'a str, draining: bool) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            found(
                sqlx::query("UPDATE nodes SET draining = $1 WHERE id = $2")
                    .bind(draining)
                    .bind(node)
                    .execute(&self.writer)
                    .await?,
            )
        })
    }

    fn set_status<'a>(
        &'a self,
        f: &'a Fence,
        status: SandboxStatus,
        pid: Option<i64>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let done = sqlx::query(concat!(
                "UPDATE sandboxes SET status = $1, pid = $2, updated_at = $3 WHERE id = $4",
                owned_by!(5, 6)
            ))
            .bind(status.as_str())
            .bind(pid)
            .bind(now_ms())
            .bind(&f.sandbox)
            .bind(&f.node)
            .bind(f.epoch)
            .execute(&self.writer)
            .await?;
            self.owned(done, f).await
        })
    }

    fn set_running<'a>(
        &'a self,
        f: &'a Fence,
        pid: i64,
        generation: i64,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let done = sqlx::query(concat!(
                "UPDATE sandboxes SET status = $1, pid = $2, generation = $3, pending_op = NULL, status_reason = NULL, updated_at = $4 WHERE id = $5",
                owned_by!(6, 7)
            ))
            .bind(SandboxStatus::Running.as_str())
            .bind(pid)
            .bind(generation)
            .bind(now_ms())
            .bind(&f.sandbox)
            .bind(&f.node)
            .bind(f.epoch)
            .execute(&self.writer)
            .await?;
            self.owned(done, f).await
        })
    }

    fn set_failed<'a>(&'a self, f: &'a Fence, reason: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let done = sqlx::query(concat!(
                "UPDATE sandboxes SET status = $1, pid = NULL, status_reason = $2, updated_at = $3 WHERE id = $4",
                owned_by!(5, 6)
            ))
            .bind(SandboxStatus::Failed.as_str())
            .bind(reason)
            .bind(now_ms())
            .bind(&f.sandbox)
            .bind(&f.node)
            .bind(f.epoch)
            .execute(&self.writer)
            .await?;
            self.owned(done, f).await
        })
    }

    fn set_pending<'a>(&'a self, f: &'a Fence, op: Option<PendingOp>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let done = sqlx::query(concat!(
                "UPDATE sandboxes SET pending_op = $1 WHERE id = $2",
                owned_by!(3, 4)
            ))
            .bind(op.map(PendingOp::as_str))
            .bind(&f.sandbox)
            .bind(&f.node)
            .bind(f.epoch)
            .execute(&self.writer)
            .await?;
            self.owned(done, f).await
        })
    }

    fn set_checkpointed<'a>(&'a self, f: &'a Fence, at: Option<i64>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let done = sqlx::query(concat!(
                "UPDATE sandboxes SET checkpointed_at = $1 WHERE id = $2",
                owned_by!(3, 4)
            ))
            .bind(at)
            .bind(&f.sandbox)
            .bind(&f.node)
            .bind(f.epoch)
            .execute(&self.writer)
            .await?;
            self.owned(done, f).await
        })
    }

    fn mark_lost<'a>(&'a self, node: &'a str, reason: &'a str) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let done = sqlx::query(
                "UPDATE sandboxes SET status = $1, status_reason = $2,
                     pending_op = NULL, epoch = epoch + 1, updated_at = $3
                 WHERE node_id = $4 AND status IN ($5, $6)",
            )
            .bind(SandboxStatus::Lost.as_str())
            .bind(reason)
            .bind(now_ms())
            .bind(node)
            .bind(SandboxStatus::Running.as_str())
            .bind(SandboxStatus::Failed.as_str())
            .execute(&self.writer)
            .await?;
            Ok(done.rows_affected())
        })
    }

    fn insert_snapshot<'a>(&'a self, s: &'a SnapshotRow) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO snapshots (id, sandbox_id, name, description, created_at, expires_at, template, team_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&s.id)
            .bind(&s.sandbox_id)
            .bind(&s.name)
            .bind(&s.description)
            .bind(s.created_at)
            .bind(s.expires_at)
            .bind(&s.template)
            .bind(&s.team_id)
            .execute(&self.writer)
            .await?;
            Ok(())
        })
    }

    fn get_snapshot<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<SnapshotRow>> {
        Box::pin(async move {
            let r = sqlx::query(concat!(
                "SELECT ",
                snapshot_cols!(),
                " FROM snapshots WHERE id = $1"
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
                        " FROM snapshots WHERE sandbox_id = $1 ORDER BY created_at, id"
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
            sqlx::query("DELETE FROM snapshots WHERE id = $1")
                .bind(id)
                .execute(&self.writer)
                .await?;
            Ok(())
        })
    }

    fn insert_audit<'a>(&'a self, rows: &'a [AuditRow]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            // A statement per chunk, not per row: one round trip each, and
            // the writer held for less.
            let mut tx = self.writer.begin().await?;
            for chunk in rows.chunks(AUDIT_ROWS_PER_INSERT) {
                let values: Vec<String> = (0..chunk.len())
                    .map(|i| format!("({})", placeholders(4, 4 * i + 1)))
                    .collect();
                let sql = format!(
                    "INSERT INTO audit (sandbox_id, time, event, denied) VALUES {}",
                    values.join(", ")
                );
                // Built of placeholders only; every value is bound.
                let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
                for r in chunk {
                    insert = insert
                        .bind(&r.sandbox_id)
                        .bind(r.time)
                        .bind(r.event.to_string())
                        .bind(r.denied);
                }
                insert.execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn insert_credential<'a>(&'a self, c: &'a CredentialRow) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let done = sqlx::query(
                "INSERT INTO credential_sources (team_id, name, kind, version, sealed, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (team_id, name) DO NOTHING",
            )
            .bind(&c.team_id)
            .bind(&c.name)
            .bind(&c.kind)
            .bind(c.version)
            .bind(&c.sealed)
            .bind(c.created_at)
            .bind(c.updated_at)
            .execute(&self.writer)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn update_credential<'a>(
        &'a self,
        team: &'a str,
        name: &'a str,
        sealed: &'a [u8],
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let done = sqlx::query(
                "UPDATE credential_sources SET sealed = $1, version = version + 1, updated_at = $2 WHERE team_id = $3 AND name = $4",
            )
            .bind(sealed)
            .bind(now_ms())
            .bind(team)
            .bind(name)
            .execute(&self.writer)
            .await?;
            found(done)
        })
    }

    fn get_credential<'a>(
        &'a self,
        team: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<CredentialRow>> {
        Box::pin(async move {
            let r = sqlx::query(concat!(
                "SELECT ",
                credential_cols!(),
                " FROM credential_sources WHERE team_id = $1 AND name = $2"
            ))
            .bind(team)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(Error::NotFound)?;
            Ok(row_to_credential(&r))
        })
    }

    fn list_credentials<'a>(&'a self, team: &'a str) -> BoxFuture<'a, Result<Vec<CredentialRow>>> {
        Box::pin(async move {
            let rows = sqlx::query(concat!(
                "SELECT ",
                credential_cols!(),
                " FROM credential_sources WHERE team_id = $1 ORDER BY name"
            ))
            .bind(team)
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.iter().map(row_to_credential).collect())
        })
    }

    fn insert_team<'a>(&'a self, t: &'a TeamRow) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let done = sqlx::query(
                "INSERT INTO teams (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(&t.id)
            .bind(&t.name)
            .bind(t.created_at)
            .execute(&self.writer)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn insert_preview<'a>(&'a self, p: &'a PreviewRow) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO preview_grants (id, sandbox_id, port, path, generation, expires_ms, bootstrap_hash, cookie_hash)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&p.id)
            .bind(&p.sandbox_id)
            .bind(i64::from(p.port))
            .bind(&p.path)
            .bind(p.generation)
            .bind(p.expires_ms)
            .bind(&p.bootstrap_hash)
            .bind(&p.cookie_hash)
            .execute(&self.writer)
            .await?;
            Ok(())
        })
    }

    fn preview<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<PreviewRow>>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT id, sandbox_id, port, path, generation, expires_ms, bootstrap_hash, cookie_hash
                 FROM preview_grants WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
            row.map(|r| {
                let port: i64 = r.get("port");
                Ok(PreviewRow {
                    id: r.get("id"),
                    sandbox_id: r.get("sandbox_id"),
                    port: u16::try_from(port)
                        .map_err(|_| Error::Corrupt(format!("preview {id}: port {port}")))?,
                    path: r.get("path"),
                    generation: r.get("generation"),
                    expires_ms: r.get("expires_ms"),
                    bootstrap_hash: r.get("bootstrap_hash"),
                    cookie_hash: r.get("cookie_hash"),
                })
            })
            .transpose()
        })
    }

    fn bootstrap_preview<'a>(
        &'a self,
        id: &'a str,
        bootstrap_hash: &'a str,
        cookie_hash: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let done = sqlx::query(
                "UPDATE preview_grants SET bootstrap_hash = NULL, cookie_hash = $3
                 WHERE id = $1 AND bootstrap_hash = $2 AND expires_ms > $4",
            )
            .bind(id)
            .bind(bootstrap_hash)
            .bind(cookie_hash)
            .bind(now_ms)
            .execute(&self.writer)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn renew_preview<'a>(&'a self, id: &'a str, expires_ms: i64) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let done = sqlx::query("UPDATE preview_grants SET expires_ms = $2 WHERE id = $1")
                .bind(id)
                .bind(expires_ms)
                .execute(&self.writer)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn delete_preview<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let done = sqlx::query("DELETE FROM preview_grants WHERE id = $1")
                .bind(id)
                .execute(&self.writer)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn delete_previews<'a>(&'a self, sandbox_id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query("DELETE FROM preview_grants WHERE sandbox_id = $1")
                .bind(sandbox_id)
                .execute(&self.writer)
                .await?;
            Ok(())
        })
    }

    fn list_teams(&self) -> BoxFuture<'_, Result<Vec<TeamRow>>> {
        Box::pin(async move {
            let rows =
                sqlx::query("SELECT id, name, created_at FROM teams ORDER BY created_at, id")
                    .fetch_all(&self.pool)
                    .await?;
            Ok(rows
                .iter()
                .map(|r| TeamRow {
                    id: r.get("id"),
                    name: r.get("name"),
                    created_at: r.get("created_at"),
                })
                .collect())
        })
    }

    fn set_template_team<'a>(
        &'a self,
        template: &'a str,
        team: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO template_teams (template_id, team_id) VALUES ($1, $2)
                 ON CONFLICT (template_id) DO NOTHING",
            )
            .bind(template)
            .bind(team)
            .execute(&self.writer)
            .await?;
            Ok(())
        })
    }

    fn template_team<'a>(&'a self, template: &'a str) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            Ok(
                sqlx::query_scalar("SELECT team_id FROM template_teams WHERE template_id = $1")
                    .bind(template)
                    .fetch_optional(&self.pool)
                    .await?,
            )
        })
    }

    fn template_teams(&self) -> BoxFuture<'_, Result<std::collections::HashMap<String, String>>> {
        Box::pin(async move {
            let rows: Vec<(String, String)> =
                sqlx::query_as("SELECT template_id, team_id FROM template_teams")
                    .fetch_all(&self.pool)
                    .await?;
            Ok(rows.into_iter().collect())
        })
    }

    fn delete_template_team<'a>(&'a self, template: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query("DELETE FROM template_teams WHERE template_id = $1")
                .bind(template)
                .execute(&self.writer)
                .await?;
            Ok(())
        })
    }

    fn delete_credential<'a>(&'a self, team: &'a str, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let done =
                sqlx::query("DELETE FROM credential_sources WHERE team_id = $1 AND name = $2")
                    .bind(team)
                    .bind(name)
                    .execute(&self.writer)
                    .await?;
            found(done)
        })
    }

    fn list_audit<'a>(
        &'a self,
        sandbox_id: &'a str,
        q: &'a AuditQuery,
    ) -> BoxFuture<'a, Result<Vec<(i64, Value)>>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT seq, event FROM audit WHERE sandbox_id = $1 AND seq > $2
                 AND (NOT $3 OR denied = $4) AND time >= $5 AND time <= $6
                 ORDER BY seq LIMIT $7",
            )
            .bind(sandbox_id)
            .bind(q.after_seq)
            .bind(q.denied.is_some())
            .bind(q.denied.unwrap_or(false))
            .bind(q.since_ms)
            .bind(q.until_ms)
            .bind(q.limit)
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
            sqlx::query("DELETE FROM audit WHERE sandbox_id = $1")
                .bind(sandbox_id)
                .execute(&self.writer)
                .await?;
            Ok(())
        })
    }

    fn prune_audit(&self, before_ms: i64) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let done = sqlx::query("DELETE FROM audit WHERE time < $1")
                .bind(before_ms)
                .execute(&self.writer)
                .await?;
            Ok(done.rows_affected())
        })
    }

    fn set_config<'a>(&'a self, f: &'a Fence, config: &'a Value) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let done = sqlx::query(concat!(
                "UPDATE sandboxes SET config = $1, updated_at = $2 WHERE id = $3",
                owned_by!(4, 5)
            ))
            .bind(config.to_string())
            .bind(now_ms())
            .bind(&f.sandbox)
            .bind(&f.node)
            .bind(f.epoch)
            .execute(&self.writer)
            .await?;
            self.owned(done, f).await
        })
    }

    fn delete_sandbox<'a>(&'a self, f: &'a Fence) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let done = sqlx::query(concat!(
                "DELETE FROM sandboxes WHERE id = $1",
                owned_by!(2, 3)
            ))
            .bind(&f.sandbox)
            .bind(&f.node)
            .bind(f.epoch)
            .execute(&self.writer)
            .await?;
            match self.owned(done, f).await {
                // Deleting what is already gone is done.
                Err(Error::NotFound) => Ok(()),
                other => other,
            }
        })
    }

    fn used_slots<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Vec<i64>>> {
        Box::pin(async move {
            Ok(sqlx::query_scalar(
                "SELECT slot FROM sandboxes WHERE node_id = $1 OR node_id IS NULL ORDER BY slot",
            )
            .bind(node)
            .fetch_all(&self.pool)
            .await?)
        })
    }

    fn insert_api_key<'a>(&'a self, k: &'a ApiKeyRow) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query(concat!(
                "INSERT INTO api_keys (",
                api_key_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            ))
            .bind(&k.id)
            .bind(&k.token_hash)
            .bind(&k.name)
            .bind(k.role.as_str())
            .bind(k.expires_at)
            .bind(k.active)
            .bind(&k.created_by)
            .bind(k.created_at)
            .bind(k.updated_at)
            .bind(k.last_used_at)
            .bind(k.usage_count)
            .bind(&k.team_id)
            .execute(&self.writer)
            .await?;
            Ok(())
        })
    }

    fn api_key_by_hash<'a>(&'a self, hash: &'a str) -> BoxFuture<'a, Result<Option<ApiKeyRow>>> {
        Box::pin(async move {
            let r = sqlx::query(concat!(
                "SELECT ",
                api_key_cols!(),
                " FROM api_keys WHERE token_hash = $1"
            ))
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
            r.as_ref().map(row_to_api_key).transpose()
        })
    }

    fn api_key_by_id<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<ApiKeyRow>>> {
        Box::pin(async move {
            let r = sqlx::query(concat!(
                "SELECT ",
                api_key_cols!(),
                " FROM api_keys WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
            r.as_ref().map(row_to_api_key).transpose()
        })
    }

    fn list_api_keys(&self) -> BoxFuture<'_, Result<Vec<ApiKeyRow>>> {
        Box::pin(async move {
            let rows = sqlx::query(concat!(
                "SELECT ",
                api_key_cols!(),
                " FROM api_keys ORDER BY created_at, id"
            ))
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(row_to_api_key).collect()
        })
    }

    fn delete_api_key<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let r = sqlx::query("DELETE FROM api_keys WHERE id = $1")
                .bind(id)
                .execute(&self.writer)
                .await?;
            Ok(r.rows_affected() > 0)
        })
    }

    fn deactivate_api_key<'a>(&'a self, id: &'a str, at: i64) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let r = sqlx::query("UPDATE api_keys SET active = $1, updated_at = $2 WHERE id = $3")
                .bind(false)
                .bind(at)
                .bind(id)
                .execute(&self.writer)
                .await?;
            Ok(r.rows_affected() > 0)
        })
    }

    fn record_api_key_use<'a>(
        &'a self,
        id: &'a str,
        at: i64,
        uses: i64,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query(
                "UPDATE api_keys SET last_used_at = $1, usage_count = usage_count + $2 WHERE id = $3",
            )
            .bind(at)
            .bind(uses)
            .bind(id)
            .execute(&self.writer)
            .await?;
            Ok(())
        })
    }

    fn count_api_keys(&self) -> BoxFuture<'_, Result<i64>> {
        Box::pin(async move {
            Ok(sqlx::query_scalar("SELECT COUNT(*) FROM api_keys")
                .fetch_one(&self.pool)
                .await?)
        })
    }
}

impl AgentsStore for Backend {
    fn put_doc<'a>(
        &'a self,
        kind: &'a str,
        id: &'a str,
        doc: &'a Value,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO ma_docs (kind, id, doc) VALUES ($1, $2, $3)
                 ON CONFLICT (kind, id) DO UPDATE SET doc = excluded.doc",
            )
            .bind(kind)
            .bind(id)
            .bind(doc.to_string())
            .execute(&self.writer)
            .await?;
            Ok(())
        })
    }

    fn delete_doc<'a>(&'a self, kind: &'a str, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query("DELETE FROM ma_docs WHERE kind = $1 AND id = $2")
                .bind(kind)
                .bind(id)
                .execute(&self.writer)
                .await?;
            Ok(())
        })
    }

    fn load_docs<'a>(&'a self, kind: &'a str) -> BoxFuture<'a, Result<Vec<Value>>> {
        Box::pin(async move {
            let rows: Vec<(String, String)> =
                sqlx::query_as("SELECT id, doc FROM ma_docs WHERE kind = $1 ORDER BY id")
                    .bind(kind)
                    .fetch_all(&self.pool)
                    .await?;
            parse(rows, |id| format!("managed agents {kind} {id}"))
        })
    }

    fn get_doc<'a>(&'a self, kind: &'a str, id: &'a str) -> BoxFuture<'a, Result<Option<Value>>> {
        Box::pin(async move {
            let row: Option<(String, String)> =
                sqlx::query_as("SELECT id, doc FROM ma_docs WHERE kind = $1 AND id = $2")
                    .bind(kind)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
            Ok(parse(row.into_iter().collect(), |id| {
                format!("managed agents {kind} {id}")
            })?
            .pop())
        })
    }

    fn append_event<'a>(
        &'a self,
        session_id: &'a str,
        doc: &'a Value,
    ) -> BoxFuture<'a, Result<i64>> {
        Box::pin(super::append_event(
            self,
            session_id.to_string(),
            doc.to_string(),
        ))
    }

    fn load_events<'a>(
        &'a self,
        session_id: &'a str,
        after_seq: i64,
    ) -> BoxFuture<'a, Result<Vec<(i64, Value)>>> {
        Box::pin(async move {
            let rows: Vec<(i64, String)> = sqlx::query_as(
                "SELECT seq, doc FROM ma_events WHERE session_id = $1 AND seq > $2 ORDER BY seq",
            )
            .bind(session_id)
            .bind(after_seq)
            .fetch_all(&self.pool)
            .await?;
            rows.into_iter()
                .map(|(seq, doc)| {
                    serde_json::from_str(&doc).map(|d| (seq, d)).map_err(|e| {
                        Error::Corrupt(format!(
                            "event {seq} of session {session_id}: not JSON: {e}"
                        ))
                    })
                })
                .collect()
        })
    }

    fn delete_events<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(super::delete_events(self, session_id.to_string()))
    }

    fn insert_work<'a>(&'a self, row: &'a WorkRow) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let done = sqlx::query(
                "INSERT INTO ma_work (id, environment_id, session_id, state, created_at,
                     token_hash, claimed_ms, lease_expires_ms, version, doc)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT DO NOTHING",
            )
            .bind(&row.item.id)
            .bind(&row.item.environment_id)
            .bind(&row.item.data.id)
            .bind(row.item.state.as_str())
            .bind(&row.item.created_at)
            .bind(&row.token_hash)
            .bind(row.claimed_ms)
            .bind(row.lease_expires_ms)
            .bind(row.version)
            .bind(json_of(&row.item)?)
            .execute(&self.writer)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn claim_work<'a>(
        &'a self,
        environment: &'a str,
        now_ms: i64,
        reclaim_before_ms: i64,
        token_hash: &'a str,
    ) -> BoxFuture<'a, Result<Option<WorkRow>>> {
        Box::pin(async move {
            if super::CLAIM_LOOKS_FIRST {
                let any: Option<i64> = sqlx::query_scalar(
                    "SELECT 1 FROM ma_work WHERE environment_id = $1 AND state = 'queued'
                       AND (claimed_ms IS NULL OR claimed_ms <= $2) LIMIT 1",
                )
                .bind(environment)
                .bind(reclaim_before_ms)
                .fetch_optional(&self.pool)
                .await?;
                if any.is_none() {
                    return Ok(None);
                }
            }
            let row = sqlx::query(claim_sql())
                .bind(environment)
                .bind(now_ms)
                .bind(reclaim_before_ms)
                .bind(token_hash)
                .fetch_optional(&self.writer)
                .await?;
            row.as_ref().map(row_to_work).transpose()
        })
    }

    fn get_work<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<WorkRow>>> {
        Box::pin(async move {
            let row = sqlx::query(concat!(
                "SELECT ",
                work_cols!(),
                " FROM ma_work WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(row_to_work).transpose()
        })
    }

    fn work_by_token<'a>(&'a self, token_hash: &'a str) -> BoxFuture<'a, Result<Option<WorkRow>>> {
        Box::pin(async move {
            let row = sqlx::query(concat!(
                "SELECT ",
                work_cols!(),
                " FROM ma_work WHERE token_hash = $1"
            ))
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(row_to_work).transpose()
        })
    }

    fn list_work<'a>(&'a self, of: WorkOf<'a>) -> BoxFuture<'a, Result<Vec<WorkRow>>> {
        Box::pin(async move {
            let q = match of {
                WorkOf::Environment(env) => sqlx::query(concat!(
                    "SELECT ",
                    work_cols!(),
                    " FROM ma_work WHERE environment_id = $1 ORDER BY created_at DESC, id DESC"
                ))
                .bind(env),
                WorkOf::LiveOfSession(session) => sqlx::query(concat!(
                    "SELECT ",
                    work_cols!(),
                    " FROM ma_work WHERE session_id = $1 AND state <> 'stopped'
                     ORDER BY created_at DESC, id DESC"
                ))
                .bind(session),
            };
            q.fetch_all(&self.pool)
                .await?
                .iter()
                .map(row_to_work)
                .collect()
        })
    }

    fn expired_work(&self, now_ms: i64) -> BoxFuture<'_, Result<Vec<WorkRow>>> {
        Box::pin(async move {
            sqlx::query(concat!(
                "SELECT ",
                work_cols!(),
                " FROM ma_work WHERE lease_expires_ms <= $1
                   AND state IN ('starting', 'active', 'stopping')"
            ))
            .bind(now_ms)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(row_to_work)
            .collect()
        })
    }

    fn replace_work<'a>(&'a self, row: &'a WorkRow) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let done = sqlx::query(
                "UPDATE ma_work SET state = $2, token_hash = $3, claimed_ms = $4,
                     lease_expires_ms = $5, doc = $6, version = version + 1
                 WHERE id = $1 AND version = $7",
            )
            .bind(&row.item.id)
            .bind(row.item.state.as_str())
            .bind(&row.token_hash)
            .bind(row.claimed_ms)
            .bind(row.lease_expires_ms)
            .bind(json_of(&row.item)?)
            .bind(row.version)
            .execute(&self.writer)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn claim_driver<'a>(
        &'a self,
        session: &'a str,
        owner: &'a str,
        now_ms: i64,
        expires_ms: i64,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let done = sqlx::query(
                "INSERT INTO ma_drivers (session_id, owner, expires_ms) VALUES ($1, $2, $4)
                 ON CONFLICT (session_id) DO UPDATE
                 SET owner = excluded.owner, expires_ms = excluded.expires_ms
                 WHERE ma_drivers.owner = excluded.owner OR ma_drivers.expires_ms <= $3",
            )
            .bind(session)
            .bind(owner)
            .bind(now_ms)
            .bind(expires_ms)
            .execute(&self.writer)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn release_driver<'a>(&'a self, session: &'a str, owner: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query("DELETE FROM ma_drivers WHERE session_id = $1 AND owner = $2")
                .bind(session)
                .bind(owner)
                .execute(&self.writer)
                .await?;
            Ok(())
        })
    }

    fn notify<'a>(&'a self, payload: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(super::notify(self, payload))
    }

    fn listen(&self) -> BoxFuture<'_, Result<Option<Notifications>>> {
        Box::pin(super::listen(self))
    }
}

fn json_of(item: &sandstone_agents_api::WorkItem) -> Result<String> {
    serde_json::to_string(item).map_err(|e| Error::Corrupt(format!("work item {}: {e}", item.id)))
}

/// Compiled once per backend too: every test runs on SQLite, and on
/// PostgreSQL when `SANDSTONE_TEST_DATABASE_URL` is set (skipped with a
/// printed line when it is not).
macro_rules! delivery_cols {
    () => {
        "event_id, sandbox_id, team_id, node_id, event_type, url, body, signature, state, attempts, last_status, last_error, created_at, next_attempt_at, delivered_at"
    };
}

fn row_to_delivery(r: &Row) -> Result<DeliveryRow> {
    Ok(DeliveryRow {
        event_id: r.get("event_id"),
        sandbox_id: r.get("sandbox_id"),
        team_id: r.get("team_id"),
        node_id: r.get("node_id"),
        event_type: r.get("event_type"),
        url: r.get("url"),
        body: r.get("body"),
        signature: r.get("signature"),
        state: r.get::<&str, _>("state").parse()?,
        attempts: r.get("attempts"),
        last_status: r.get("last_status"),
        last_error: r.get("last_error"),
        created_at: r.get("created_at"),
        next_attempt_at: r.get("next_attempt_at"),
        delivered_at: r.get("delivered_at"),
    })
}

macro_rules! ssh_key_cols {
    () => {
        "id, api_key_id, team_id, name, public_key, key_type, fingerprint, comment, created_at, updated_at"
    };
}

fn row_to_ssh_key(r: &Row) -> SshKeyRow {
    SshKeyRow {
        id: r.get("id"),
        api_key_id: r.get("api_key_id"),
        team_id: r.get("team_id"),
        name: r.get("name"),
        public_key: r.get("public_key"),
        key_type: r.get("key_type"),
        fingerprint: r.get("fingerprint"),
        comment: r.get("comment"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    }
}

impl SshKeyStore for Backend {
    fn insert_ssh_key<'a>(&'a self, k: &'a SshKeyRow) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let done = sqlx::query(concat!(
                "INSERT INTO ssh_keys (",
                ssh_key_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (fingerprint) DO NOTHING"
            ))
            .bind(&k.id)
            .bind(&k.api_key_id)
            .bind(&k.team_id)
            .bind(&k.name)
            .bind(&k.public_key)
            .bind(&k.key_type)
            .bind(&k.fingerprint)
            .bind(&k.comment)
            .bind(k.created_at)
            .bind(k.updated_at)
            .execute(&self.writer)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn list_ssh_keys<'a>(&'a self, api_key_id: &'a str) -> BoxFuture<'a, Result<Vec<SshKeyRow>>> {
        Box::pin(async move {
            let rows = sqlx::query(concat!(
                "SELECT ",
                ssh_key_cols!(),
                " FROM ssh_keys WHERE api_key_id = $1 ORDER BY created_at, id"
            ))
            .bind(api_key_id)
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.iter().map(row_to_ssh_key).collect())
        })
    }

    fn delete_ssh_key<'a>(
        &'a self,
        api_key_id: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let r = sqlx::query("DELETE FROM ssh_keys WHERE api_key_id = $1 AND id = $2")
                .bind(api_key_id)
                .bind(id)
                .execute(&self.writer)
                .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    fn ssh_key_by_fingerprint<'a>(
        &'a self,
        fingerprint: &'a str,
    ) -> BoxFuture<'a, Result<Option<SshKeyRow>>> {
        Box::pin(async move {
            let r = sqlx::query(concat!(
                "SELECT ",
                ssh_key_cols!(),
                " FROM ssh_keys WHERE fingerprint = $1"
            ))
            .bind(fingerprint)
            .fetch_optional(&self.pool)
            .await?;
            Ok(r.as_ref().map(row_to_ssh_key))
        })
    }
}

macro_rules! volume_cols {
    () => {
        "id, team_id, created_by, access_mode, size_bytes, default_uid, default_gid, source_volume_id, node_id, epoch, checkpointed_at, metadata, created_at, updated_at"
    };
}

macro_rules! volume_snapshot_cols {
    () => {
        "id, volume_id, team_id, name, description, size_bytes, created_at"
    };
}

fn row_to_volume(r: &Row) -> Result<VolumeRow> {
    let mode: String = r.get("access_mode");
    Ok(VolumeRow {
        id: r.get("id"),
        team_id: r.get("team_id"),
        created_by: r.get("created_by"),
        access_mode: mode.parse().map_err(Error::Corrupt)?,
        size_bytes: r.get("size_bytes"),
        default_uid: r.get("default_uid"),
        default_gid: r.get("default_gid"),
        source_volume_id: r.get("source_volume_id"),
        node_id: r.get("node_id"),
        epoch: r.get("epoch"),
        checkpointed_at: r.get("checkpointed_at"),
        metadata: serde_json::from_str(r.get::<&str, _>("metadata"))
            .map_err(|e| Error::Corrupt(format!("volume metadata: {e}")))?,
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    })
}

fn row_to_volume_snapshot(r: &Row) -> VolumeSnapshotRow {
    VolumeSnapshotRow {
        id: r.get("id"),
        volume_id: r.get("volume_id"),
        team_id: r.get("team_id"),
        name: r.get("name"),
        description: r.get("description"),
        size_bytes: r.get("size_bytes"),
        created_at: r.get("created_at"),
    }
}

fn row_to_mount(r: &Row) -> VolumeMountRow {
    VolumeMountRow {
        volume_id: r.get("volume_id"),
        sandbox_id: r.get("sandbox_id"),
        mount_point: r.get("mount_point"),
        read_only: r.get("read_only"),
        exclusive: r.get("exclusive"),
    }
}

impl VolumeStore for Backend {
    fn insert_volume<'a>(&'a self, v: &'a VolumeRow) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query(concat!(
                "INSERT INTO sandbox_volumes (",
                volume_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
            ))
            .bind(&v.id)
            .bind(&v.team_id)
            .bind(&v.created_by)
            .bind(v.access_mode.as_str())
            .bind(v.size_bytes)
            .bind(v.default_uid)
            .bind(v.default_gid)
            .bind(&v.source_volume_id)
            .bind(&v.node_id)
            .bind(v.epoch)
            .bind(v.checkpointed_at)
            .bind(serde_json::to_string(&v.metadata).map_err(|e| Error::Corrupt(e.to_string()))?)
            .bind(v.created_at)
            .bind(v.updated_at)
            .execute(&self.writer)
            .await?;
            Ok(())
        })
    }

    fn get_volume<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<VolumeRow>>> {
        Box::pin(async move {
            let r = sqlx::query(concat!(
                "SELECT ",
                volume_cols!(),
                " FROM sandbox_volumes WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
            r.as_ref().map(row_to_volume).transpose()
        })
    }

    fn list_volumes<'a>(&'a self, team: &'a str) -> BoxFuture<'a, Result<Vec<VolumeRow>>> {
        Box::pin(async move {
            let rows = sqlx::query(concat!(
                "SELECT ",
                volume_cols!(),
                " FROM sandbox_volumes WHERE team_id = $1 ORDER BY created_at, id"
            ))
            .bind(team)
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(row_to_volume).collect()
        })
    }

    fn delete_volume<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<VolumeMountRow>>> {
        Box::pin(async move {
            let mut tx = self.writer.begin().await?;
            let mounts = sqlx::query(
                "SELECT volume_id, sandbox_id, mount_point, read_only, exclusive FROM volume_mounts WHERE volume_id = $1 ORDER BY sandbox_id",
            )
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
            if !mounts.is_empty() {
                return Ok(mounts.iter().map(row_to_mount).collect());
            }
            sqlx::query("DELETE FROM volume_snapshots WHERE volume_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM sandbox_volumes WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Vec::new())
        })
    }

    fn insert_volume_snapshot<'a>(&'a self, s: &'a VolumeSnapshotRow) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query(concat!(
                "INSERT INTO volume_snapshots (",
                volume_snapshot_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
            ))
            .bind(&s.id)
            .bind(&s.volume_id)
            .bind(&s.team_id)
            .bind(&s.name)
            .bind(&s.description)
            .bind(s.size_bytes)
            .bind(s.created_at)
            .execute(&self.writer)
            .await?;
            Ok(())
        })
    }

    fn get_volume_snapshot<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<VolumeSnapshotRow>>> {
        Box::pin(async move {
            let r = sqlx::query(concat!(
                "SELECT ",
                volume_snapshot_cols!(),
                " FROM volume_snapshots WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
            Ok(r.as_ref().map(row_to_volume_snapshot))
        })
    }

    fn list_volume_snapshots<'a>(
        &'a self,
        volume_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<VolumeSnapshotRow>>> {
        Box::pin(async move {
            let rows = sqlx::query(concat!(
                "SELECT ",
                volume_snapshot_cols!(),
                " FROM volume_snapshots WHERE volume_id = $1 ORDER BY created_at, id"
            ))
            .bind(volume_id)
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.iter().map(row_to_volume_snapshot).collect())
        })
    }

    fn delete_volume_snapshot<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let r = sqlx::query("DELETE FROM volume_snapshots WHERE id = $1")
                .bind(id)
                .execute(&self.writer)
                .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    fn claim_mounts<'a>(
        &'a self,
        mounts: &'a [VolumeMountRow],
    ) -> BoxFuture<'a, Result<std::result::Result<(), String>>> {
        Box::pin(async move {
            let mut tx = self.writer.begin().await?;
            for m in mounts {
                // Any unique index: the primary key, or one writer per
                // `RWO` volume.
                let done = sqlx::query(
                    "INSERT INTO volume_mounts (volume_id, sandbox_id, mount_point, read_only, exclusive)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                )
                .bind(&m.volume_id)
                .bind(&m.sandbox_id)
                .bind(&m.mount_point)
                .bind(m.read_only)
                .bind(m.exclusive)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    return Ok(Err(m.volume_id.clone()));
                }
            }
            tx.commit().await?;
            Ok(Ok(()))
        })
    }

    fn release_mounts<'a>(&'a self, sandbox_id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query("DELETE FROM volume_mounts WHERE sandbox_id = $1")
                .bind(sandbox_id)
                .execute(&self.writer)
                .await?;
            Ok(())
        })
    }

    fn set_volume_checkpointed<'a>(
        &'a self,
        id: &'a str,
        node: &'a str,
        epoch: i64,
        at: i64,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let r = sqlx::query(
                "UPDATE sandbox_volumes SET checkpointed_at = $1 WHERE id = $2 AND node_id = $3 AND epoch = $4",
            )
            .bind(at)
            .bind(id)
            .bind(node)
            .bind(epoch)
            .execute(&self.writer)
            .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    fn move_volume<'a>(
        &'a self,
        id: &'a str,
        from: &'a str,
        epoch: i64,
        to: &'a str,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let r = sqlx::query(
                "UPDATE sandbox_volumes SET node_id = $1, epoch = epoch + 1, updated_at = $2
                 WHERE id = $3 AND node_id = $4 AND epoch = $5",
            )
            .bind(to)
            .bind(now_ms())
            .bind(id)
            .bind(from)
            .bind(epoch)
            .execute(&self.writer)
            .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    fn volume_mounts<'a>(
        &'a self,
        volume_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<VolumeMountRow>>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT volume_id, sandbox_id, mount_point, read_only, exclusive FROM volume_mounts WHERE volume_id = $1 ORDER BY sandbox_id",
            )
            .bind(volume_id)
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.iter().map(row_to_mount).collect())
        })
    }

    fn team_volume_mounts<'a>(
        &'a self,
        team: &'a str,
    ) -> BoxFuture<'a, Result<Vec<VolumeMountRow>>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT m.volume_id, m.sandbox_id, m.mount_point, m.read_only, m.exclusive
                 FROM volume_mounts m JOIN sandbox_volumes v ON v.id = m.volume_id
                 WHERE v.team_id = $1 ORDER BY m.volume_id, m.sandbox_id",
            )
            .bind(team)
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.iter().map(row_to_mount).collect())
        })
    }
}

impl WebhookStore for Backend {
    fn put_webhook_secret<'a>(
        &'a self,
        sandbox: &'a str,
        sealed: &'a [u8],
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO webhook_secrets (sandbox_id, sealed) VALUES ($1, $2)
                 ON CONFLICT (sandbox_id) DO UPDATE SET sealed = excluded.sealed",
            )
            .bind(sandbox)
            .bind(sealed)
            .execute(&self.writer)
            .await?;
            Ok(())
        })
    }

    fn webhook_secret<'a>(&'a self, sandbox: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move {
            Ok(
                sqlx::query_scalar("SELECT sealed FROM webhook_secrets WHERE sandbox_id = $1")
                    .bind(sandbox)
                    .fetch_optional(&self.pool)
                    .await?,
            )
        })
    }

    fn delete_webhook_secret<'a>(&'a self, sandbox: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query("DELETE FROM webhook_secrets WHERE sandbox_id = $1")
                .bind(sandbox)
                .execute(&self.writer)
                .await?;
            Ok(())
        })
    }

    fn insert_delivery<'a>(&'a self, d: &'a DeliveryRow) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query(concat!(
                "INSERT INTO webhook_deliveries (",
                delivery_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
                 ON CONFLICT (event_id) DO NOTHING"
            ))
            .bind(&d.event_id)
            .bind(&d.sandbox_id)
            .bind(&d.team_id)
            .bind(&d.node_id)
            .bind(&d.event_type)
            .bind(&d.url)
            .bind(&d.body)
            .bind(&d.signature)
            .bind(d.state.as_str())
            .bind(d.attempts)
            .bind(d.last_status)
            .bind(&d.last_error)
            .bind(d.created_at)
            .bind(d.next_attempt_at)
            .bind(d.delivered_at)
            .execute(&self.writer)
            .await?;
            Ok(())
        })
    }

    fn due_deliveries<'a>(
        &'a self,
        node: &'a str,
        now: i64,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<DeliveryRow>>> {
        Box::pin(async move {
            sqlx::query(concat!(
                "SELECT ",
                delivery_cols!(),
                " FROM webhook_deliveries
                 WHERE node_id = $1 AND state = 'pending' AND next_attempt_at <= $2
                 ORDER BY next_attempt_at, event_id LIMIT $3"
            ))
            .bind(node)
            .bind(now)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(row_to_delivery)
            .collect()
        })
    }

    fn next_delivery_at<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Option<i64>>> {
        Box::pin(async move {
            Ok(sqlx::query_scalar(
                "SELECT MIN(next_attempt_at) FROM webhook_deliveries
                 WHERE node_id = $1 AND state = 'pending'",
            )
            .bind(node)
            .fetch_one(&self.pool)
            .await?)
        })
    }

    fn record_attempt<'a>(
        &'a self,
        event_id: &'a str,
        o: &'a AttemptOutcome,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let done = sqlx::query(
                "UPDATE webhook_deliveries SET state = $2, attempts = $3, last_status = $4,
                     last_error = $5, next_attempt_at = $6, delivered_at = $7
                 WHERE event_id = $1",
            )
            .bind(event_id)
            .bind(o.state.as_str())
            .bind(o.attempts)
            .bind(o.last_status)
            .bind(&o.last_error)
            .bind(o.next_attempt_at)
            .bind(o.delivered_at)
            .execute(&self.writer)
            .await?;
            found(done)
        })
    }

    fn list_deliveries<'a>(
        &'a self,
        sandbox: &'a str,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<DeliveryRow>>> {
        Box::pin(async move {
            sqlx::query(concat!(
                "SELECT ",
                delivery_cols!(),
                " FROM webhook_deliveries WHERE sandbox_id = $1
                 ORDER BY created_at DESC, event_id DESC LIMIT $2"
            ))
            .bind(sandbox)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(row_to_delivery)
            .collect()
        })
    }

    fn prune_deliveries(&self, before_ms: i64) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let done = sqlx::query(
                "DELETE FROM webhook_deliveries WHERE state <> 'pending' AND created_at < $1",
            )
            .bind(before_ms)
            .execute(&self.writer)
            .await?;
            Ok(done.rows_affected())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Scratch;
    use super::*;

    fn sandbox(id: &str, slot: i64, config: Value) -> SandboxRow {
        SandboxRow {
            id: id.into(),
            template: "host".into(),
            status: SandboxStatus::Running,
            config,
            slot,
            pid: None,
            generation: 1,
            created_at: slot,
            updated_at: 1,
            pending_op: None,
            status_reason: None,
            node_id: Some("node-a".into()),
            epoch: 0,
            checkpointed_at: None,
            team_id: "team_a".into(),
        }
    }

    /// The fence of a row as stored now.
    async fn fence(store: &Backend, id: &str) -> Fence {
        store.get_sandbox(id).await.unwrap().fence()
    }

    #[tokio::test]
    async fn labels_follow_the_config_through_insert_update_and_delete() {
        let Some(scratch) = Scratch::new().await else {
            return;
        };
        let store = scratch.open().await;
        let labeled = |id, slot, session: &str| {
            let config = serde_json::json!({"metadata": {"cma.session": session, "team": "a"}});
            sandbox(id, slot, config)
        };
        store
            .insert_sandbox(&labeled("sb-1", 1, "s1"))
            .await
            .unwrap();
        store
            .insert_sandbox(&labeled("sb-2", 2, "s2"))
            .await
            .unwrap();
        // No metadata: no labels.
        let bare = sandbox("sb-3", 3, serde_json::json!({"ttl": 5}));
        store.insert_sandbox(&bare).await.unwrap();
        let ids = async |k: &str, v: &str| -> Vec<String> {
            let found = store.labeled_sandboxes(k, v).await.unwrap();
            found.into_iter().map(|r| r.id).collect()
        };
        assert_eq!(ids("cma.session", "s1").await, ["sb-1"]);
        assert_eq!(ids("team", "a").await, ["sb-1", "sb-2"]);
        let relabeled = serde_json::json!({"metadata": {"cma.session": "s3"}});
        store
            .set_config(&fence(&store, "sb-1").await, &relabeled)
            .await
            .unwrap();
        assert!(ids("cma.session", "s1").await.is_empty());
        assert_eq!(ids("cma.session", "s3").await, ["sb-1"]);
        assert_eq!(ids("team", "a").await, ["sb-2"]);
        store
            .delete_sandbox(&fence(&store, "sb-2").await)
            .await
            .unwrap();
        assert!(ids("team", "a").await.is_empty());
        // The labels live in their own table, found by the index.
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sandbox_labels")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(rows, 1);
    }

    #[tokio::test]
    async fn an_unknown_status_or_pending_operation_is_corrupt_not_defaulted() {
        let Some(scratch) = Scratch::new().await else {
            return;
        };
        let store = scratch.open().await;
        for (status, pending) in [("creating", None), ("paused", Some("stop"))] {
            sqlx::query("DELETE FROM sandboxes")
                .execute(&store.pool)
                .await
                .unwrap();
            sqlx::query(
                "INSERT INTO sandboxes (id, template, status, config, slot, generation, created_at, updated_at, pending_op)
                 VALUES ('sb-1', 'host', $1, '{}', 1, 1, 1, 1, $2)",
            )
            .bind(status)
            .bind(pending)
            .execute(&store.pool)
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

    /// Nodes announce themselves; a re-announcement renews the lease and
    /// load but keeps `draining`; sandboxes belong to nodes, and rows from
    /// before nodes go to the first node that adopts them.
    #[tokio::test]
    async fn nodes_announce_drain_and_own_sandboxes() {
        let Some(scratch) = Scratch::new().await else {
            return;
        };
        let store = scratch.open().await;
        let mut a = NodeRecord {
            id: "node-a".into(),
            url: "http://127.0.0.1:1".into(),
            capacity: 10,
            running: 1,
            templates: vec!["host".into(), "default".into()],
            draining: false,
            lease_expires_at: 5_000,
            started_at: 1_000,
        };
        store.announce_node(&a).await.unwrap();
        store.set_draining("node-a", true).await.unwrap();
        a.running = 4;
        a.lease_expires_at = 9_000;
        store.announce_node(&a).await.unwrap();
        let nodes = store.list_nodes().await.unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].running, 4);
        assert_eq!(nodes[0].templates, ["host", "default"]);
        assert!(nodes[0].draining, "a renewal must not undo a drain");
        assert!(nodes[0].live_at(8_999) && !nodes[0].live_at(9_000));
        assert!(matches!(
            store.set_draining("node-z", true).await,
            Err(Error::NotFound)
        ));

        let mine = sandbox("sb-a", 1, serde_json::json!({}));
        let mut theirs = sandbox("sb-b", 5, serde_json::json!({}));
        theirs.node_id = Some("node-b".into());
        let mut old = sandbox("sb-old", 2, serde_json::json!({}));
        old.node_id = None;
        for row in [&mine, &theirs, &old] {
            store.insert_sandbox(row).await.unwrap();
        }
        assert_eq!(
            store.sandbox_node("sb-b").await.unwrap().as_deref(),
            Some("node-b")
        );
        assert!(matches!(
            store.sandbox_node("sb-none").await,
            Err(Error::NotFound)
        ));
        assert_eq!(store.used_slots("node-b").await.unwrap(), vec![2, 5]);
        assert_eq!(store.adopt_unowned("node-a").await.unwrap(), 1);
        let ids = |rows: Vec<SandboxRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(
            ids(store.node_sandboxes("node-a").await.unwrap()),
            ["sb-a", "sb-old"]
        );
        assert_eq!(ids(store.node_sandboxes("node-b").await.unwrap()), ["sb-b"]);
        // A move is a compare-and-set on the owner and its epoch: the
        // second one, under the fence both read, loses.
        let read = fence(&store, "sb-b").await;
        assert!(store.move_sandbox(&read, "node-a", 9).await.unwrap());
        assert!(!store.move_sandbox(&read, "node-c", 10).await.unwrap());
        let moved = store.get_sandbox("sb-b").await.unwrap();
        assert_eq!(
            (moved.node_id.as_deref(), moved.slot, moved.epoch),
            (Some("node-a"), 9, read.epoch + 1)
        );
    }

    /// Fencing: once a sandbox changed hands (moved, or marked lost), no
    /// write under the fence its old owner read changes it, and each says
    /// why; the new owner's writes go through.
    #[tokio::test]
    async fn writes_under_an_old_epoch_change_nothing() {
        let Some(scratch) = Scratch::new().await else {
            return;
        };
        let store = scratch.open().await;
        for (id, slot) in [("sb-run", 1), ("sb-paused", 2), ("sb-failed", 3)] {
            store
                .insert_sandbox(&sandbox(id, slot, serde_json::json!({})))
                .await
                .unwrap();
        }
        let old = fence(&store, "sb-paused").await;
        store
            .set_status(&old, SandboxStatus::Paused, None)
            .await
            .unwrap();
        let failed = fence(&store, "sb-failed").await;
        store.set_failed(&failed, "init died").await.unwrap();
        let stale = fence(&store, "sb-run").await;
        // node-a's lease ran out: its running and failed sandboxes are lost,
        // its paused one is not (it has a complete checkpoint).
        assert_eq!(
            store.mark_lost("node-a", "node-a is gone").await.unwrap(),
            2
        );
        let lost = store.get_sandbox("sb-run").await.unwrap();
        assert_eq!(
            (lost.status, lost.epoch, lost.status_reason.as_deref()),
            (SandboxStatus::Lost, 1, Some("node-a is gone"))
        );
        assert_eq!(
            store.get_sandbox("sb-failed").await.unwrap().status,
            SandboxStatus::Lost
        );
        assert_eq!(
            store.get_sandbox("sb-paused").await.unwrap().status,
            SandboxStatus::Paused
        );
        // Every write of the old owner under its old epoch is refused.
        let fenced = |r: Result<()>| matches!(r, Err(Error::Fenced { epoch: 1, .. }));
        assert!(fenced(
            store.set_status(&stale, SandboxStatus::Paused, None).await
        ));
        assert!(fenced(store.set_running(&stale, 9, 5).await));
        assert!(fenced(store.set_failed(&stale, "x").await));
        assert!(fenced(
            store.set_pending(&stale, Some(PendingOp::Pause)).await
        ));
        assert!(fenced(store.set_checkpointed(&stale, Some(5)).await));
        assert!(fenced(
            store
                .set_config(&stale, &serde_json::json!({"ttl": 1}))
                .await
        ));
        assert!(fenced(store.delete_sandbox(&stale).await));
        assert!(!store.move_sandbox(&stale, "node-b", 1).await.unwrap());
        assert_eq!(store.get_sandbox("sb-run").await.unwrap(), lost);
        // The node that takes it over writes under the new epoch.
        assert!(
            store
                .move_sandbox(&lost.fence(), "node-b", 1)
                .await
                .unwrap()
        );
        let taken = fence(&store, "sb-run").await;
        assert_eq!((taken.node.as_deref(), taken.epoch), (Some("node-b"), 2));
        store.set_checkpointed(&taken, Some(77)).await.unwrap();
        store.set_running(&taken, 9, 5).await.unwrap();
        let now = store.get_sandbox("sb-run").await.unwrap();
        assert_eq!(
            (now.status, now.checkpointed_at, now.generation),
            (SandboxStatus::Running, Some(77), 5)
        );
        // A write for a sandbox that is gone is not found, not fenced.
        store.delete_sandbox(&taken).await.unwrap();
        assert!(matches!(
            store.set_status(&taken, SandboxStatus::Paused, None).await,
            Err(Error::NotFound)
        ));
    }

    #[tokio::test]
    async fn sandboxes_and_keys_round_trip_and_survive_reopen() {
        let Some(scratch) = Scratch::new().await else {
            return;
        };
        let store = scratch.open().await;
        let mut row = sandbox("sb-1", 3, serde_json::json!({"ttl": 5}));
        row.pid = Some(42);
        store.insert_sandbox(&row).await.unwrap();
        assert_eq!(store.get_sandbox("sb-1").await.unwrap(), row);
        store
            .set_status(&row.fence(), SandboxStatus::Failed, None)
            .await
            .unwrap();
        let nope = Fence {
            sandbox: "nope".into(),
            ..row.fence()
        };
        assert!(matches!(
            store.set_status(&nope, SandboxStatus::Paused, None).await,
            Err(Error::NotFound)
        ));
        assert!(matches!(
            store.get_sandbox("nope").await,
            Err(Error::NotFound)
        ));
        let key = ApiKeyRow {
            id: "key_1".into(),
            token_hash: crate::token_hash("secret-token"),
            name: "ci".into(),
            role: sandstone_api::auth::Role::Viewer,
            expires_at: Some(5_000),
            active: true,
            created_by: "key_0".into(),
            created_at: 1_000,
            updated_at: 1_000,
            last_used_at: None,
            usage_count: 0,
            team_id: "team_a".into(),
        };
        store.insert_api_key(&key).await.unwrap();
        drop(store);
        let store = scratch.open().await;
        let back = store.get_sandbox("sb-1").await.unwrap();
        assert_eq!(back.status, SandboxStatus::Failed);
        assert_eq!(back.team_id, "team_a");
        assert_eq!(back.pid, None);
        assert_eq!(back.config["ttl"], 5);
        assert_eq!(store.used_slots("node-a").await.unwrap(), vec![3]);
        assert!(store.used_slots("node-b").await.unwrap().is_empty());
        assert_eq!(store.count_api_keys().await.unwrap(), 1);
        let hash = crate::token_hash("secret-token");
        assert_eq!(
            store.api_key_by_hash(&hash).await.unwrap(),
            Some(key.clone())
        );
        assert_eq!(store.api_key_by_hash("wrong").await.unwrap(), None);
        store.record_api_key_use("key_1", 2_000, 3).await.unwrap();
        assert!(store.deactivate_api_key("key_1", 2_500).await.unwrap());
        let used = store.api_key_by_hash(&hash).await.unwrap().unwrap();
        assert_eq!(
            (
                used.last_used_at,
                used.usage_count,
                used.active,
                used.updated_at
            ),
            (Some(2_000), 3, false, 2_500)
        );
        assert_eq!(store.list_api_keys().await.unwrap().len(), 1);
        assert!(store.delete_api_key("key_1").await.unwrap());
        assert!(!store.delete_api_key("key_1").await.unwrap());
        assert!(!store.deactivate_api_key("key_1", 3_000).await.unwrap());
        let f = row.fence();
        store.set_pending(&f, Some(PendingOp::Pause)).await.unwrap();
        assert_eq!(
            store.get_sandbox("sb-1").await.unwrap().pending_op,
            Some(PendingOp::Pause)
        );
        store.set_failed(&f, "init died").await.unwrap();
        let r = store.get_sandbox("sb-1").await.unwrap();
        assert_eq!(
            (r.status, r.status_reason.as_deref()),
            (SandboxStatus::Failed, Some("init died"))
        );
        store.set_running(&f, 7, 2).await.unwrap();
        let r = store.get_sandbox("sb-1").await.unwrap();
        assert_eq!(
            (r.status, r.pid, r.generation, r.pending_op, r.status_reason),
            (SandboxStatus::Running, Some(7), 2, None, None)
        );
        let snap = SnapshotRow {
            id: "snap-1".into(),
            sandbox_id: "sb-1".into(),
            name: "n".into(),
            description: String::new(),
            created_at: 5,
            expires_at: Some(9),
            template: "host".into(),
            team_id: "team_a".into(),
        };
        store.insert_snapshot(&snap).await.unwrap();
        assert_eq!(
            store.list_snapshots(Some("sb-1")).await.unwrap(),
            vec![snap.clone()]
        );
        assert!(store.list_snapshots(Some("sb-2")).await.unwrap().is_empty());
        assert_eq!(store.get_snapshot("snap-1").await.unwrap(), snap);
        store.delete_snapshot("snap-1").await.unwrap();
        assert!(store.list_snapshots(None).await.unwrap().is_empty());
        store.delete_sandbox(&f).await.unwrap();
        assert!(store.list_sandboxes().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn credentials_keep_their_sealed_bytes_and_versions() {
        let Some(scratch) = Scratch::new().await else {
            return;
        };
        let store = scratch.open().await;
        let c = CredentialRow {
            team_id: "team_a".into(),
            name: "github".into(),
            kind: "static_headers".into(),
            version: 1,
            // Every byte value, as sealed data has.
            sealed: (0..=255).collect(),
            created_at: 1,
            updated_at: 1,
        };
        assert!(store.insert_credential(&c).await.unwrap());
        assert!(!store.insert_credential(&c).await.unwrap(), "name taken");
        // The same name in another team is another source.
        let other = CredentialRow {
            team_id: "team_b".into(),
            sealed: b"b".to_vec(),
            ..c.clone()
        };
        assert!(store.insert_credential(&other).await.unwrap());
        assert_eq!(store.get_credential("team_a", "github").await.unwrap(), c);
        store
            .update_credential("team_a", "github", b"\0new")
            .await
            .unwrap();
        let back = store.get_credential("team_a", "github").await.unwrap();
        assert_eq!((back.version, &back.sealed[..]), (2, &b"\0new"[..]));
        assert_eq!(
            store.get_credential("team_b", "github").await.unwrap(),
            other
        );
        assert!(matches!(
            store.update_credential("team_a", "gitlab", b"x").await,
            Err(Error::NotFound)
        ));
        assert!(matches!(
            store.get_credential("team_c", "github").await,
            Err(Error::NotFound)
        ));
        assert_eq!(store.list_credentials("team_a").await.unwrap(), vec![back]);
        store.delete_credential("team_a", "github").await.unwrap();
        assert!(matches!(
            store.delete_credential("team_a", "github").await,
            Err(Error::NotFound)
        ));
        assert!(store.list_credentials("team_a").await.unwrap().is_empty());
        assert_eq!(store.list_credentials("team_b").await.unwrap(), vec![other]);
    }

    #[tokio::test]
    async fn teams_have_unique_names_and_the_default_team_exists() {
        let Some(scratch) = Scratch::new().await else {
            return;
        };
        let store = scratch.open().await;
        let t = TeamRow {
            id: "team_1".into(),
            name: "research".into(),
            created_at: 5,
        };
        assert!(store.insert_team(&t).await.unwrap());
        let dup = TeamRow {
            id: "team_2".into(),
            ..t.clone()
        };
        assert!(!store.insert_team(&dup).await.unwrap(), "name taken");
        let ids: Vec<String> = store
            .list_teams()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ids, [crate::DEFAULT_TEAM, "team_1"]);
    }

    #[tokio::test]
    async fn audit_records_page_in_order_filter_denied_and_prune() {
        let Some(scratch) = Scratch::new().await else {
            return;
        };
        let store = scratch.open().await;
        let rec = |sandbox: &str, time, denied| AuditRow {
            sandbox_id: sandbox.into(),
            time,
            denied,
            event: serde_json::json!({"time": time, "denied": denied}),
        };
        let rows = [
            rec("sb-1", 10, false),
            rec("sb-1", 20, true),
            rec("sb-2", 30, true),
            rec("sb-1", 40, false),
        ];
        store.insert_audit(&rows).await.unwrap();
        let times = |v: Vec<(i64, Value)>| -> Vec<i64> {
            v.iter().map(|(_, e)| e["time"].as_i64().unwrap()).collect()
        };
        let all = store
            .list_audit("sb-1", &AuditQuery::after(0, 100))
            .await
            .unwrap();
        assert_eq!(times(all.clone()), [10, 20, 40]);
        let after_first = store
            .list_audit("sb-1", &AuditQuery::after(all[0].0, 1))
            .await
            .unwrap();
        assert_eq!(times(after_first), [20]);
        let only = |denied| AuditQuery {
            denied: Some(denied),
            ..AuditQuery::after(0, 100)
        };
        assert_eq!(
            times(store.list_audit("sb-1", &only(true)).await.unwrap()),
            [20]
        );
        assert_eq!(
            times(store.list_audit("sb-1", &only(false)).await.unwrap()),
            [10, 40]
        );
        let window = AuditQuery {
            since_ms: 15,
            until_ms: 40,
            ..AuditQuery::after(0, 100)
        };
        assert_eq!(
            times(store.list_audit("sb-1", &window).await.unwrap()),
            [20, 40]
        );
        assert_eq!(store.prune_audit(25).await.unwrap(), 2);
        assert_eq!(
            times(
                store
                    .list_audit("sb-1", &AuditQuery::after(0, 100))
                    .await
                    .unwrap()
            ),
            [40]
        );
        store.delete_audit("sb-2").await.unwrap();
        assert!(
            store
                .list_audit("sb-2", &AuditQuery::after(0, 100))
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn documents_are_replaced_in_place_and_events_kept_in_order() {
        let Some(scratch) = Scratch::new().await else {
            return;
        };
        let store = scratch.open().await;
        let doc = |v: i64| serde_json::json!({"id": "agent_1", "version": v});
        store.put_doc("agent", "agent_1", &doc(1)).await.unwrap();
        store.put_doc("agent", "agent_0", &doc(0)).await.unwrap();
        store.put_doc("agent", "agent_1", &doc(2)).await.unwrap();
        store.put_doc("session", "s", &doc(3)).await.unwrap();
        assert_eq!(store.load_docs("agent").await.unwrap(), [doc(0), doc(2)]);
        store.delete_doc("agent", "agent_0").await.unwrap();
        assert_eq!(store.load_docs("agent").await.unwrap(), [doc(2)]);
        assert_eq!(
            store.get_doc("agent", "agent_1").await.unwrap(),
            Some(doc(2))
        );
        assert_eq!(store.get_doc("agent", "agent_0").await.unwrap(), None);
        // Sequence numbers are the store's: 0, 1, 2… per session, also
        // when appends race (as two nodes would).
        let docs: Vec<Value> = (0..20).map(doc).collect();
        let appends = docs.iter().map(|d| store.append_event("s", d));
        let mut seqs = futures_util::future::try_join_all(appends).await.unwrap();
        seqs.sort();
        assert_eq!(seqs, (0..20).collect::<Vec<i64>>());
        assert_eq!(store.append_event("t", &doc(0)).await.unwrap(), 0);
        let after = store.load_events("s", 16).await.unwrap();
        assert_eq!(after.iter().map(|e| e.0).collect::<Vec<_>>(), [17, 18, 19]);
        store.delete_events("s").await.unwrap();
        assert!(store.load_events("s", -1).await.unwrap().is_empty());
        // After a deletion the numbers start again at 0, also when appends
        // of the session and others are asked for together with it.
        let (one, two) = (doc(1), doc(2));
        let (deleted, seqs) = tokio::join!(
            store.delete_events("t"),
            futures_util::future::try_join_all([
                store.append_event("s", &one),
                store.append_event("t", &one),
                store.append_event("s", &two),
            ])
        );
        deleted.unwrap();
        let seqs = seqs.unwrap();
        // Two appends in flight at once have no order between them (on
        // PostgreSQL they run on two connections), only distinct numbers.
        let mut of_s = [seqs[0], seqs[2]];
        of_s.sort();
        assert_eq!(of_s, [0, 1], "{seqs:?}");
        let t: Vec<i64> = store
            .load_events("t", -1)
            .await
            .unwrap()
            .iter()
            .map(|e| e.0)
            .collect();
        // The append of `t` came after its deletion, or before it (and was
        // deleted). On PostgreSQL a deletion that commits while the append's
        // statement runs leaves the append numbered from before it: the
        // number is then 1, not 0, but it is the one the append answered.
        assert!(
            t.is_empty() && seqs[1] == 1 || t == [seqs[1]],
            "{t:?} {seqs:?}"
        );
    }

    #[tokio::test]
    async fn an_ssh_key_is_registered_once_and_removed_only_by_its_owner() {
        let Some(scratch) = Scratch::new().await else {
            return;
        };
        let store = scratch.open().await;
        let key = |id: &str, owner: &str, fingerprint: &str| SshKeyRow {
            id: id.into(),
            api_key_id: owner.into(),
            team_id: "team_a".into(),
            name: "laptop".into(),
            public_key: "ssh-ed25519 AAAA".into(),
            key_type: "ssh-ed25519".into(),
            fingerprint: fingerprint.into(),
            comment: "me@laptop".into(),
            created_at: 1,
            updated_at: 1,
        };
        assert!(
            store
                .insert_ssh_key(&key("k1", "ak1", "SHA256:a"))
                .await
                .unwrap()
        );
        // The same key again, by anyone: refused.
        assert!(
            !store
                .insert_ssh_key(&key("k2", "ak2", "SHA256:a"))
                .await
                .unwrap()
        );
        assert!(
            store
                .insert_ssh_key(&key("k3", "ak1", "SHA256:b"))
                .await
                .unwrap()
        );
        let ids = async |owner: &str| -> Vec<String> {
            let rows = store.list_ssh_keys(owner).await.unwrap();
            rows.into_iter().map(|k| k.id).collect()
        };
        assert_eq!(ids("ak1").await, ["k1", "k3"]);
        assert!(ids("ak2").await.is_empty());
        let found = store.ssh_key_by_fingerprint("SHA256:b").await.unwrap();
        assert_eq!(found, Some(key("k3", "ak1", "SHA256:b")));
        assert!(!store.delete_ssh_key("ak2", "k1").await.unwrap());
        assert!(store.delete_ssh_key("ak1", "k1").await.unwrap());
        assert!(
            store
                .ssh_key_by_fingerprint("SHA256:a")
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn an_rwo_volume_has_one_writer_and_a_mounted_volume_stays() {
        use sandstone_api::volumes::AccessMode;
        let Some(scratch) = Scratch::new().await else {
            return;
        };
        let store = scratch.open().await;
        let volume = VolumeRow {
            id: "vol-1".into(),
            team_id: "team_a".into(),
            created_by: "ak1".into(),
            access_mode: AccessMode::ReadWriteOnce,
            size_bytes: Some(1 << 30),
            default_uid: 0,
            default_gid: 0,
            source_volume_id: None,
            node_id: "node-a".into(),
            epoch: 0,
            checkpointed_at: None,
            metadata: [("cma.session".to_string(), "s1".to_string())].into(),
            created_at: 1,
            updated_at: 1,
        };
        store.insert_volume(&volume).await.unwrap();
        assert_eq!(
            store.get_volume("vol-1").await.unwrap(),
            Some(volume.clone())
        );
        // Moved once at epoch 0; a second move from the old owner fails,
        // and so does its late checkpoint record.
        assert!(
            store
                .move_volume("vol-1", "node-a", 0, "node-b")
                .await
                .unwrap()
        );
        assert!(
            !store
                .move_volume("vol-1", "node-a", 0, "node-c")
                .await
                .unwrap()
        );
        assert!(
            !store
                .set_volume_checkpointed("vol-1", "node-a", 0, 5)
                .await
                .unwrap()
        );
        assert!(
            store
                .set_volume_checkpointed("vol-1", "node-b", 1, 5)
                .await
                .unwrap()
        );
        let moved = store.get_volume("vol-1").await.unwrap().unwrap();
        assert_eq!(
            (moved.node_id.as_str(), moved.epoch, moved.checkpointed_at),
            ("node-b", 1, Some(5))
        );
        let mount = |sandbox: &str, point: &str, exclusive| VolumeMountRow {
            volume_id: "vol-1".into(),
            sandbox_id: sandbox.into(),
            mount_point: point.into(),
            read_only: false,
            exclusive,
        };
        let other = VolumeMountRow {
            volume_id: "vol-2".into(),
            ..mount("sb-2", "/data", false)
        };
        assert_eq!(
            store
                .claim_mounts(&[mount("sb-1", "/workspace", true)])
                .await
                .unwrap(),
            Ok(())
        );
        // A second writer is refused, and nothing of its claim is kept.
        let second = [other.clone(), mount("sb-2", "/workspace", true)];
        assert_eq!(
            store.claim_mounts(&second).await.unwrap(),
            Err("vol-1".into())
        );
        assert!(store.volume_mounts("vol-2").await.unwrap().is_empty());
        assert_eq!(
            store.team_volume_mounts("team_a").await.unwrap(),
            [mount("sb-1", "/workspace", true)]
        );
        assert!(store.team_volume_mounts("team_b").await.unwrap().is_empty());
        // Mounted: not deleted, and the mounts are named.
        let held = store.delete_volume("vol-1").await.unwrap();
        assert_eq!(held, [mount("sb-1", "/workspace", true)]);
        store.release_mounts("sb-1").await.unwrap();
        assert_eq!(store.claim_mounts(&second).await.unwrap(), Ok(()));
        store.release_mounts("sb-2").await.unwrap();
        let snap = VolumeSnapshotRow {
            id: "vs-1".into(),
            volume_id: "vol-1".into(),
            team_id: "team_a".into(),
            name: "before".into(),
            description: String::new(),
            size_bytes: 5,
            created_at: 2,
        };
        store.insert_volume_snapshot(&snap).await.unwrap();
        assert_eq!(store.list_volume_snapshots("vol-1").await.unwrap(), [snap]);
        assert!(store.delete_volume("vol-1").await.unwrap().is_empty());
        assert!(store.get_volume("vol-1").await.unwrap().is_none());
        assert!(store.get_volume_snapshot("vs-1").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_document_that_is_not_json_is_an_error_naming_it() {
        let Some(scratch) = Scratch::new().await else {
            return;
        };
        let db = scratch.open().await;
        db.put_doc("agent", "agent_1@1", &serde_json::json!({"id": "agent_1"}))
            .await
            .unwrap();
        assert_eq!(db.load_docs("agent").await.unwrap().len(), 1);
        sqlx::query("INSERT INTO ma_docs (kind, id, doc) VALUES ('agent', 'agent_2@1', '{cut')")
            .execute(&db.pool)
            .await
            .unwrap();
        let err = db.load_docs("agent").await.unwrap_err().to_string();
        assert!(err.contains("managed agents agent agent_2@1"), "{err}");
    }

    #[tokio::test]
    async fn webhook_secrets_and_deliveries_round_trip() {
        use crate::webhooks::{AttemptOutcome, DeliveryRow, DeliveryState, WebhookStore};
        let Some(scratch) = Scratch::new().await else {
            return;
        };
        let store = scratch.open().await;
        let sealed: Vec<u8> = (0..=255).collect();
        store.put_webhook_secret("sb-1", &sealed).await.unwrap();
        store
            .put_webhook_secret("sb-1", &sealed[1..])
            .await
            .unwrap();
        assert_eq!(
            store.webhook_secret("sb-1").await.unwrap().as_deref(),
            Some(&sealed[1..])
        );
        store.delete_webhook_secret("sb-1").await.unwrap();
        assert_eq!(store.webhook_secret("sb-1").await.unwrap(), None);

        let delivery = |id: &str, node: &str, at: i64| DeliveryRow {
            event_id: id.into(),
            sandbox_id: "sb-1".into(),
            team_id: "default".into(),
            node_id: node.into(),
            event_type: "sandbox.paused".into(),
            url: "http://127.0.0.1:9/hook".into(),
            body: format!("{{\"event_id\":\"{id}\"}}"),
            signature: Some("ab".repeat(32)),
            state: DeliveryState::Pending,
            attempts: 0,
            last_status: None,
            last_error: None,
            created_at: at,
            next_attempt_at: at,
            delivered_at: None,
        };
        let (a, b, c) = (
            delivery("evt_a", "n1", 10),
            delivery("evt_b", "n1", 5),
            delivery("evt_c", "n2", 1),
        );
        for d in [&a, &b, &c] {
            store.insert_delivery(d).await.unwrap();
        }
        // A second insert of an id keeps the first.
        store
            .insert_delivery(&delivery("evt_a", "n1", 99))
            .await
            .unwrap();
        assert_eq!(store.next_delivery_at("n1").await.unwrap(), Some(5));
        assert_eq!(store.next_delivery_at("n3").await.unwrap(), None);
        assert_eq!(
            store.due_deliveries("n1", 10, 10).await.unwrap(),
            vec![b.clone(), a.clone()]
        );
        assert_eq!(
            store.due_deliveries("n1", 9, 10).await.unwrap(),
            vec![b.clone()]
        );
        let retry = AttemptOutcome {
            state: DeliveryState::Pending,
            attempts: 1,
            last_status: Some(500),
            last_error: Some("HTTP 500".into()),
            next_attempt_at: 50,
            delivered_at: None,
        };
        store.record_attempt("evt_b", &retry).await.unwrap();
        let done = AttemptOutcome {
            state: DeliveryState::Delivered,
            attempts: 1,
            last_status: Some(204),
            last_error: None,
            next_attempt_at: 10,
            delivered_at: Some(11),
        };
        store.record_attempt("evt_a", &done).await.unwrap();
        assert!(matches!(
            store.record_attempt("evt_x", &done).await,
            Err(Error::NotFound)
        ));
        assert_eq!(store.due_deliveries("n1", 20, 10).await.unwrap(), vec![]);
        assert_eq!(store.next_delivery_at("n1").await.unwrap(), Some(50));
        let listed = store.list_deliveries("sb-1", 10).await.unwrap();
        let ids: Vec<&str> = listed.iter().map(|d| d.event_id.as_str()).collect();
        assert_eq!(ids, ["evt_a", "evt_b", "evt_c"], "newest first");
        assert_eq!(listed[0].state, DeliveryState::Delivered);
        assert_eq!(listed[0].delivered_at, Some(11));
        assert_eq!(listed[1].last_status, Some(500));
        assert_eq!(listed[1].attempts, 1);
        // Only finished deliveries are pruned.
        assert_eq!(store.prune_deliveries(100).await.unwrap(), 1);
        assert_eq!(store.list_deliveries("sb-1", 10).await.unwrap().len(), 2);
    }
}
