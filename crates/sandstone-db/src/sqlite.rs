//! SQLite (WAL) backend: the database file in the data directory. Its
//! queries are `queries.rs`, shared with PostgreSQL (see the crate docs).

use crate::Result;
use crate::appender::{Appender, EventWriter};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::path::Path;

/// The driver `queries.rs` is compiled against here.
type Db = sqlx::Sqlite;
/// The store `queries.rs` implements the traits for here.
type Backend = SqliteStore;

// The same file is `postgres::queries` / `sqlite::queries` too, on purpose:
// one text, compiled against each driver (see the crate docs).
#[allow(clippy::duplicate_mod)]
#[path = "queries.rs"]
mod queries;

/// Existing databases were made by this list: it only grows at the end.
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
    // #13: the node registry and each sandbox's node. SQLite is one node's
    // own file, so `slot` stays UNIQUE on its own (PostgreSQL makes it
    // unique per node).
    "CREATE TABLE nodes (
        id TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        capacity INTEGER NOT NULL,
        running INTEGER NOT NULL,
        templates TEXT NOT NULL,
        draining INTEGER NOT NULL DEFAULT 0,
        lease_expires_at INTEGER NOT NULL,
        started_at INTEGER NOT NULL
    );
    ALTER TABLE sandboxes ADD COLUMN node_id TEXT;
    CREATE INDEX sandboxes_node ON sandboxes (node_id);",
    // The work queue in a table of its own, and the claim on driving a
    // session's turn, so that several nodes on one database (PostgreSQL)
    // claim, lease and expire with single conditional statements; items
    // kept as documents move over (a held lease gets a minute from now).
    "CREATE TABLE ma_work (
        id TEXT PRIMARY KEY,
        environment_id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at TEXT NOT NULL,
        token_hash TEXT,
        claimed_ms BIGINT,
        lease_expires_ms BIGINT,
        version BIGINT NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE UNIQUE INDEX ma_work_live_session ON ma_work (session_id) WHERE state <> 'stopped';
    CREATE INDEX ma_work_queued ON ma_work (environment_id, created_at) WHERE state = 'queued';
    CREATE INDEX ma_work_by_environment ON ma_work (environment_id, created_at);
    CREATE INDEX ma_work_leases ON ma_work (lease_expires_ms) WHERE lease_expires_ms IS NOT NULL;
    CREATE UNIQUE INDEX ma_work_token ON ma_work (token_hash);
    CREATE TABLE ma_drivers (
        session_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        expires_ms BIGINT NOT NULL
    );
    INSERT INTO ma_work
        SELECT id, json_extract(doc, '$.doc.environment_id'), json_extract(doc, '$.doc.data.id'),
            json_extract(doc, '$.doc.state'), json_extract(doc, '$.doc.created_at'),
            json_extract(doc, '$.token_hash'), NULL,
            CASE WHEN json_extract(doc, '$.doc.state') IN ('starting', 'active', 'stopping')
                THEN CAST(strftime('%s', 'now') AS INTEGER) * 1000 + 60000 END,
            0, json_extract(doc, '$.doc')
        FROM ma_docs WHERE kind = 'work';
    DELETE FROM ma_docs WHERE kind = 'work';",
    // #13: fencing. `epoch` rises each time a sandbox changes hands, and
    // every write of its owner is conditional on the epoch it read;
    // `checkpointed_at` is what a lost sandbox can go back to.
    "ALTER TABLE sandboxes ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sandboxes ADD COLUMN checkpointed_at INTEGER;",
    // #16: API keys get an id, a role, an expiry, a switch and a use
    // count; the keys there were (the first start's) are admins.
    "ALTER TABLE api_keys ADD COLUMN id TEXT;
    ALTER TABLE api_keys ADD COLUMN role TEXT NOT NULL DEFAULT 'admin';
    ALTER TABLE api_keys ADD COLUMN expires_at INTEGER;
    ALTER TABLE api_keys ADD COLUMN active INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE api_keys ADD COLUMN created_by TEXT NOT NULL DEFAULT '';
    ALTER TABLE api_keys ADD COLUMN updated_at INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE api_keys ADD COLUMN last_used_at INTEGER;
    ALTER TABLE api_keys ADD COLUMN usage_count INTEGER NOT NULL DEFAULT 0;
    UPDATE api_keys SET id = 'key_' || substr(token_hash, 1, 24), updated_at = created_at;
    CREATE UNIQUE INDEX api_keys_by_id ON api_keys (id);",
    // #16: teams. Keys, sandboxes, snapshots, credential sources and the
    // templates users make belong to one (a template with no team is
    // shared);
    // what there was belongs to `default`. A credential source's name is
    // unique within its team (SQLite cannot change a primary key in
    // place: the table is copied).
    "CREATE TABLE teams (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL
    );
    INSERT INTO teams (id, name, created_at) VALUES ('default', 'default', 0);
    CREATE TABLE template_teams (
        template_id TEXT PRIMARY KEY,
        team_id TEXT NOT NULL
    );
    ALTER TABLE api_keys ADD COLUMN team_id TEXT NOT NULL DEFAULT 'default';
    ALTER TABLE sandboxes ADD COLUMN team_id TEXT NOT NULL DEFAULT 'default';
    ALTER TABLE snapshots ADD COLUMN team_id TEXT NOT NULL DEFAULT 'default';
    CREATE TABLE team_credential_sources (
        team_id TEXT NOT NULL,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        version INTEGER NOT NULL,
        sealed BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (team_id, name)
    );
    INSERT INTO team_credential_sources
        SELECT 'default', name, kind, version, sealed, created_at, updated_at FROM credential_sources;
    DROP TABLE credential_sources;
    ALTER TABLE team_credential_sources RENAME TO credential_sources;",
    // Preview grants: who may open a sandbox's loopback port through the
    // daemon, until when, on which runtime generation. Only hashes of the
    // one-time bootstrap token and of the cookie are kept.
    "CREATE TABLE preview_grants (
        id TEXT PRIMARY KEY,
        sandbox_id TEXT NOT NULL,
        port INTEGER NOT NULL,
        path TEXT NOT NULL,
        generation INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        bootstrap_hash TEXT,
        cookie_hash TEXT
    );
    CREATE INDEX preview_grants_sandbox ON preview_grants (sandbox_id);",
    // #17: per-sandbox webhooks. The signing secret, sealed, apart from the
    // configuration (which callers see); each event's delivery with its
    // signed body, kept until delivered or given up, so a restart resumes
    // what was pending and the API shows what happened.
    "CREATE TABLE webhook_secrets (
        sandbox_id TEXT PRIMARY KEY,
        sealed BLOB NOT NULL
    );
    CREATE TABLE webhook_deliveries (
        event_id TEXT PRIMARY KEY,
        sandbox_id TEXT NOT NULL,
        team_id TEXT NOT NULL,
        node_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        url TEXT NOT NULL,
        body TEXT NOT NULL,
        signature TEXT,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        last_status INTEGER,
        last_error TEXT,
        created_at INTEGER NOT NULL,
        next_attempt_at INTEGER NOT NULL,
        delivered_at INTEGER
    );
    CREATE INDEX webhook_deliveries_due ON webhook_deliveries (node_id, state, next_attempt_at);
    CREATE INDEX webhook_deliveries_sandbox ON webhook_deliveries (sandbox_id, created_at);",
    // #20: SSH public keys, each registered by an API key (`/users/me`
    // is the calling key): it opens a shell in that key's team's
    // sandboxes while the key itself may. A fingerprint is registered
    // once in the installation, so a login names one owner.
    "CREATE TABLE ssh_keys (
        id TEXT PRIMARY KEY,
        api_key_id TEXT NOT NULL,
        team_id TEXT NOT NULL,
        name TEXT NOT NULL,
        public_key TEXT NOT NULL,
        key_type TEXT NOT NULL,
        fingerprint TEXT NOT NULL UNIQUE,
        comment TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE INDEX ssh_keys_by_api_key ON ssh_keys (api_key_id, created_at);",
    // #21: sandbox volumes, their snapshots, and the sandboxes that mount
    // them. Only one exclusive (read-write, RWO) mount per volume.
    "CREATE TABLE sandbox_volumes (
        id TEXT PRIMARY KEY,
        team_id TEXT NOT NULL,
        created_by TEXT NOT NULL,
        access_mode TEXT NOT NULL,
        size_bytes BIGINT,
        default_uid BIGINT NOT NULL,
        default_gid BIGINT NOT NULL,
        source_volume_id TEXT,
        node_id TEXT NOT NULL,
        epoch BIGINT NOT NULL,
        checkpointed_at BIGINT,
        metadata TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE INDEX sandbox_volumes_by_team ON sandbox_volumes (team_id, created_at);
    CREATE TABLE volume_snapshots (
        id TEXT PRIMARY KEY,
        volume_id TEXT NOT NULL,
        team_id TEXT NOT NULL,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        size_bytes BIGINT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX volume_snapshots_by_volume ON volume_snapshots (volume_id, created_at);
    CREATE TABLE volume_mounts (
        volume_id TEXT NOT NULL,
        sandbox_id TEXT NOT NULL,
        mount_point TEXT NOT NULL,
        read_only BOOLEAN NOT NULL,
        exclusive BOOLEAN NOT NULL,
        PRIMARY KEY (sandbox_id, mount_point)
    );
    CREATE INDEX volume_mounts_by_volume ON volume_mounts (volume_id);
    CREATE UNIQUE INDEX volume_mounts_one_writer ON volume_mounts (volume_id) WHERE exclusive;",
];
/// SQLite has one writer at a time: a claim needs no row lock.
const SKIP_LOCKED: &str = "";

/// An UPDATE takes the database's one write lock even when it matches
/// nothing; idle long-pollers would queue on it. A read (which WAL never
/// blocks) looks for a claimable item first.
const CLAIM_LOOKS_FIRST: bool = true;

/// Sessions whose next number the appender remembers; past this it starts
/// over (and asks the database again).
const KNOWN_SESSIONS: usize = 10_000;

/// `AgentsStore::append_event`: through the appender (`appender.rs`).
async fn append_event(store: &SqliteStore, session_id: String, doc: String) -> Result<i64> {
    store.events.append(session_id, doc).await
}

/// `AgentsStore::delete_events`: through the appender too, so it is
/// ordered with the appends and the numbers it remembers.
async fn delete_events(store: &SqliteStore, session_id: String) -> Result<()> {
    store.events.delete(session_id).await
}

/// How the appender writes `ma_events` here. One daemon owns the file, so
/// the next number of each session it has seen is known here, and an
/// append needs no query for it.
struct Events {
    writer: SqlitePool,
    /// Only the appender's one batch at a time (`IN_FLIGHT`) uses it.
    next: std::sync::Mutex<std::collections::HashMap<String, i64>>,
}

impl EventWriter for Events {
    /// No wire: a batch is bounded by its number of events only.
    const BATCH_BYTES: usize = usize::MAX;
    /// One writer connection, and the numbers remembered here.
    const IN_FLIGHT: usize = 1;

    async fn delete(&self, session_id: &str) -> Result<()> {
        self.next.lock().expect("lock poisoned").remove(session_id);
        queries::delete_events(&self.writer, session_id).await
    }

    /// One statement. A session not seen yet costs one query for its last
    /// number first; what is remembered changes only once the rows are in.
    async fn append(&self, events: &[(&str, &str)]) -> Result<Vec<i64>> {
        // Each session's next number: remembered, or asked for below.
        let mut next: std::collections::HashMap<String, i64> = {
            let known = self.next.lock().expect("lock poisoned");
            events
                .iter()
                .filter_map(|(s, _)| Some((s.to_string(), *known.get(*s)?)))
                .collect()
        };
        let unknown: std::collections::BTreeSet<&str> = events
            .iter()
            .map(|(s, _)| *s)
            .filter(|s| !next.contains_key(*s))
            .collect();
        if !unknown.is_empty() {
            let sql = format!(
                "SELECT session_id, MAX(seq) FROM ma_events WHERE session_id IN ({}) GROUP BY session_id",
                queries::placeholders(unknown.len(), 1)
            );
            // Built of placeholders only; every value is bound.
            let mut last = sqlx::query_as::<_, (String, i64)>(sqlx::AssertSqlSafe(sql));
            for s in &unknown {
                last = last.bind(*s);
            }
            next.extend(
                last.fetch_all(&self.writer)
                    .await?
                    .into_iter()
                    .map(|(s, seq)| (s, seq + 1)),
            );
        }
        let seqs: Vec<i64> = events
            .iter()
            .map(|(s, _)| {
                let n = next.entry(s.to_string()).or_insert(0);
                *n += 1;
                *n - 1
            })
            .collect();
        let rows: Vec<String> = (0..events.len())
            .map(|i| format!("({})", queries::placeholders(3, 3 * i + 1)))
            .collect();
        let sql = format!(
            "INSERT INTO ma_events (session_id, seq, doc) VALUES {}",
            rows.join(", ")
        );
        let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
        for ((session, doc), seq) in events.iter().zip(&seqs) {
            insert = insert.bind(*session).bind(*seq).bind(*doc);
        }
        insert.execute(&self.writer).await?;
        let mut known = self.next.lock().expect("lock poisoned");
        if known.len() + next.len() > KNOWN_SESSIONS {
            known.clear();
        }
        known.extend(next);
        Ok(seqs)
    }
}

/// One node: nobody to wake.
async fn notify(_: &SqliteStore, _: &str) -> Result<()> {
    Ok(())
}

async fn listen(_: &SqliteStore) -> Result<Option<crate::agents::Notifications>> {
    Ok(None)
}

/// How often the WAL is copied back into the database file, off the
/// writer's path.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Reads run on a pool; every write on the one `writer` connection, so
/// writers queue here in order instead of inside SQLite, whose busy
/// handler sleeps 1, 2, 5… 100 ms between retries (what made an append
/// wait up to a second under busy sessions). The writer never checkpoints
/// the WAL (a checkpoint copies pages and syncs the file, in the commit
/// that crosses the threshold); a task does, every [`CHECKPOINT_EVERY`],
/// on a reader, while writes go on.
pub struct SqliteStore {
    pool: SqlitePool,
    writer: SqlitePool,
    events: Appender,
    /// The checkpoint task, stopped with the store.
    checkpoints: tokio::task::AbortHandle,
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.checkpoints.abort();
    }
}

impl SqliteStore {
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
        // A file on this machine does not drop a connection: pinging each
        // one before use (a round trip to its worker thread) would only add
        // to every statement.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(opts.clone().pragma("wal_autocheckpoint", "0"))
            .await?;
        // One daemon owns the file: nothing to lock against.
        queries::migrate(&mut *writer.acquire().await?, MIGRATIONS, None).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(opts)
            .await?;
        let checkpoints = tokio::spawn(checkpoint_now_and_then(pool.clone())).abort_handle();
        let events = Appender::spawn(Events {
            writer: writer.clone(),
            next: Default::default(),
        });
        Ok(SqliteStore {
            pool,
            writer,
            events,
            checkpoints,
        })
    }
}

/// Copies the WAL back into the database file every [`CHECKPOINT_EVERY`].
/// PASSIVE: it waits for no reader or writer, and copies what no reader
/// still needs (the rest goes next time).
async fn checkpoint_now_and_then(pool: SqlitePool) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            tracing::warn!(error = %e, "cannot checkpoint the database's WAL");
        }
    }
}

/// A database file in a temporary directory, opened as often as a test
/// likes.
#[cfg(test)]
struct Scratch(tempfile::TempDir);

#[cfg(test)]
impl Scratch {
    async fn new() -> Option<Scratch> {
        Some(Scratch(tempfile::tempdir().unwrap()))
    }

    async fn open(&self) -> SqliteStore {
        SqliteStore::open(&self.0.path().join("db.sqlite"))
            .await
            .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SandboxStatus, Store};

    /// A data dir made before the work queue's migration (with the schema table
    /// as the first release made it) opens, is migrated forward and keeps
    /// its rows.
    #[tokio::test]
    async fn an_older_database_is_migrated_forward_with_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let opts = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let old = SqlitePoolOptions::new().connect_with(opts).await.unwrap();
        sqlx::raw_sql("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY)")
            .execute(&old)
            .await
            .unwrap();
        // As it was before the work queue got its table (the migration
        // with the most to carry forward); every later one runs too.
        let before = MIGRATIONS
            .iter()
            .position(|m| m.contains("CREATE TABLE ma_work"))
            .unwrap();
        for (i, sql) in MIGRATIONS[..before].iter().enumerate() {
            sqlx::raw_sql(*sql).execute(&old).await.unwrap();
            sqlx::query("INSERT INTO schema_migrations (version) VALUES (?)")
                .bind(i as i64 + 1)
                .execute(&old)
                .await
                .unwrap();
        }
        sqlx::raw_sql(
            "INSERT INTO sandboxes (id, template, status, config, slot, generation, created_at, updated_at)
             VALUES ('sb-old', 'host', 'paused', '{\"metadata\": {\"team\": \"a\"}}', 1, 1, 1, 1)",
        )
        .execute(&old)
        .await
        .unwrap();
        // A work item the queue kept as a document, with a lease held.
        let item = serde_json::json!({
            "type": "work", "id": "work_1", "environment_id": "env_1",
            "data": {"type": "session", "id": "sesn_1"}, "state": "active",
            "metadata": {}, "created_at": "2026-01-01T00:00:00.000000Z",
            "acknowledged_at": null, "started_at": null, "latest_heartbeat_at": null,
            "stop_requested_at": null, "stopped_at": null,
        });
        sqlx::query("INSERT INTO ma_docs (kind, id, doc) VALUES ('work', 'work_1', $1)")
            .bind(serde_json::json!({"doc": item, "token_hash": "abc"}).to_string())
            .execute(&old)
            .await
            .unwrap();
        old.close().await;

        let store = SqliteStore::open(&path).await.unwrap();
        let row = store.get_sandbox("sb-old").await.unwrap();
        assert_eq!(
            (row.status, row.status_reason.clone()),
            (SandboxStatus::Paused, None)
        );
        assert_eq!(store.labeled_sandboxes("team", "a").await.unwrap(), [row]);
        // The work item moved to its table, keyed by its token, with a
        // lease from now (the old one ran on the old process's clock).
        use crate::agents::AgentsStore;
        let w = store.work_by_token("abc").await.unwrap().unwrap();
        assert_eq!(
            (
                w.item.id.as_str(),
                w.item.state.as_str(),
                w.item.data.id.as_str()
            ),
            ("work_1", "active", "sesn_1")
        );
        assert!(w.lease_expires_ms.unwrap() > crate::now_ms());
        assert!(store.load_docs("work").await.unwrap().is_empty());
        let version: i64 = sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
    }
}
