//! PostgreSQL backend: `--database-url postgres://…`, a database several
//! nodes may share. Its queries are `queries.rs`, shared with SQLite (see
//! the crate docs); what is its own is here: the URL (whose password
//! never shows), connecting with a clear reason when it fails, and the
//! schema in PostgreSQL's types.

use crate::appender::{Appender, EventWriter};
use crate::{Error, Result};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use std::time::Duration;

/// The driver `queries.rs` is compiled against here.
type Db = sqlx::Postgres;
/// The store `queries.rs` implements the traits for here.
type Backend = PgStore;

// The same file is `postgres::queries` / `sqlite::queries` too, on purpose:
// one text, compiled against each driver (see the crate docs).
#[allow(clippy::duplicate_mod)]
#[path = "queries.rs"]
mod queries;

/// The schema SQLite reached in its eight migrations, as one: every integer
/// BIGINT (so both backends decode `i64`), BYTEA, BOOLEAN, BIGSERIAL for the
/// audit sequence, and the label triggers as one plpgsql function. The
/// list only grows at the end, like SQLite's.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE sandboxes (
        id TEXT PRIMARY KEY,
        template TEXT NOT NULL,
        status TEXT NOT NULL,
        config TEXT NOT NULL,
        slot BIGINT NOT NULL UNIQUE,
        pid BIGINT,
        generation BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        pending_op TEXT,
        status_reason TEXT
    );
    CREATE TABLE api_keys (
        token_hash TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE snapshots (
        id TEXT PRIMARY KEY,
        sandbox_id TEXT NOT NULL,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT,
        template TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX snapshots_by_sandbox ON snapshots (sandbox_id, created_at);
    CREATE TABLE audit (
        seq BIGSERIAL PRIMARY KEY,
        sandbox_id TEXT NOT NULL,
        time BIGINT NOT NULL,
        event TEXT NOT NULL,
        denied BOOLEAN NOT NULL
    );
    CREATE INDEX audit_by_sandbox ON audit (sandbox_id, seq);
    CREATE TABLE credential_sources (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        version BIGINT NOT NULL,
        sealed BYTEA NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE TABLE ma_docs (
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        doc TEXT NOT NULL,
        PRIMARY KEY (kind, id)
    );
    CREATE TABLE ma_events (
        session_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        doc TEXT NOT NULL,
        PRIMARY KEY (session_id, seq)
    );
    CREATE TABLE sandbox_labels (
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        sandbox_id TEXT NOT NULL,
        PRIMARY KEY (key, value, sandbox_id)
    );
    -- Labels (config.metadata) kept in the same transaction as the config,
    -- as SQLite's three triggers do.
    CREATE FUNCTION sandbox_labels_sync() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP <> 'INSERT' THEN
            DELETE FROM sandbox_labels WHERE sandbox_id = OLD.id;
        END IF;
        IF TG_OP <> 'DELETE' AND jsonb_typeof(NEW.config::jsonb -> 'metadata') = 'object' THEN
            INSERT INTO sandbox_labels (key, value, sandbox_id)
                SELECT key, value, NEW.id FROM jsonb_each_text(NEW.config::jsonb -> 'metadata');
        END IF;
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER sandbox_labels_sync AFTER INSERT OR DELETE OR UPDATE OF config ON sandboxes
        FOR EACH ROW EXECUTE FUNCTION sandbox_labels_sync();",
    // #13: nodes sharing this database. A sandbox belongs to the node that
    // runs it; slots (host uid ranges, subnets in that node's own pool) are
    // per node, so the uniqueness moves from `slot` to `(node_id, slot)`.
    "CREATE TABLE nodes (
        id TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        capacity BIGINT NOT NULL,
        running BIGINT NOT NULL,
        templates TEXT NOT NULL,
        draining BOOLEAN NOT NULL DEFAULT false,
        lease_expires_at BIGINT NOT NULL,
        started_at BIGINT NOT NULL
    );
    ALTER TABLE sandboxes ADD COLUMN node_id TEXT;
    ALTER TABLE sandboxes DROP CONSTRAINT sandboxes_slot_key;
    ALTER TABLE sandboxes ADD CONSTRAINT sandboxes_node_slot UNIQUE (node_id, slot);
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
        SELECT id, doc::jsonb #>> '{doc,environment_id}', doc::jsonb #>> '{doc,data,id}',
            doc::jsonb #>> '{doc,state}', doc::jsonb #>> '{doc,created_at}',
            doc::jsonb ->> 'token_hash', NULL,
            CASE WHEN doc::jsonb #>> '{doc,state}' IN ('starting', 'active', 'stopping')
                THEN (extract(epoch FROM now()) * 1000)::bigint + 60000 END,
            0, (doc::jsonb -> 'doc')::text
        FROM ma_docs WHERE kind = 'work';
    DELETE FROM ma_docs WHERE kind = 'work';
    -- Every node learns of a document written on any node, in the writing
    -- transaction (delivered at its commit); the origin '-' is nobody's.
    CREATE FUNCTION ma_docs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE r RECORD;
    BEGIN
        IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
        PERFORM pg_notify('sandstone_agents', '- d ' || r.kind || ' ' || r.id);
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER ma_docs_notify AFTER INSERT OR UPDATE OR DELETE ON ma_docs
        FOR EACH ROW EXECUTE FUNCTION ma_docs_notify();",
    // #13: fencing. `epoch` rises each time a sandbox changes hands, and
    // every write of its owner is conditional on the epoch it read;
    // `checkpointed_at` is what a lost sandbox can go back to.
    "ALTER TABLE sandboxes ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE sandboxes ADD COLUMN checkpointed_at BIGINT;",
    // #16: API keys get an id, a role, an expiry, a switch and a use
    // count; the keys there were (the first start's) are admins.
    "ALTER TABLE api_keys ADD COLUMN id TEXT;
    ALTER TABLE api_keys ADD COLUMN role TEXT NOT NULL DEFAULT 'admin';
    ALTER TABLE api_keys ADD COLUMN expires_at BIGINT;
    ALTER TABLE api_keys ADD COLUMN active BOOLEAN NOT NULL DEFAULT TRUE;
    ALTER TABLE api_keys ADD COLUMN created_by TEXT NOT NULL DEFAULT '';
    ALTER TABLE api_keys ADD COLUMN updated_at BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE api_keys ADD COLUMN last_used_at BIGINT;
    ALTER TABLE api_keys ADD COLUMN usage_count BIGINT NOT NULL DEFAULT 0;
    UPDATE api_keys SET id = 'key_' || substr(token_hash, 1, 24), updated_at = created_at;
    CREATE UNIQUE INDEX api_keys_by_id ON api_keys (id);",
    // #16: teams. Keys, sandboxes, snapshots, credential sources and the
    // templates users make belong to one (a template with no team is
    // shared);
    // what there was belongs to `default`. A credential source's name is
    // unique within its team.
    "CREATE TABLE teams (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at BIGINT NOT NULL
    );
    INSERT INTO teams (id, name, created_at) VALUES ('default', 'default', 0);
    CREATE TABLE template_teams (
        template_id TEXT PRIMARY KEY,
        team_id TEXT NOT NULL
    );
    ALTER TABLE api_keys ADD COLUMN team_id TEXT NOT NULL DEFAULT 'default';
    ALTER TABLE sandboxes ADD COLUMN team_id TEXT NOT NULL DEFAULT 'default';
    ALTER TABLE snapshots ADD COLUMN team_id TEXT NOT NULL DEFAULT 'default';
    ALTER TABLE credential_sources ADD COLUMN team_id TEXT NOT NULL DEFAULT 'default';
    ALTER TABLE credential_sources DROP CONSTRAINT credential_sources_pkey;
    ALTER TABLE credential_sources ADD PRIMARY KEY (team_id, name);",
    // Preview grants: who may open a sandbox's loopback port through the
    // daemon, until when, on which runtime generation. Only hashes of the
    // one-time bootstrap token and of the cookie are kept.
    "CREATE TABLE preview_grants (
        id TEXT PRIMARY KEY,
        sandbox_id TEXT NOT NULL,
        port BIGINT NOT NULL,
        path TEXT NOT NULL,
        generation BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL,
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
        sealed BYTEA NOT NULL
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
        attempts BIGINT NOT NULL,
        last_status BIGINT,
        last_error TEXT,
        created_at BIGINT NOT NULL,
        next_attempt_at BIGINT NOT NULL,
        delivered_at BIGINT
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
/// Concurrent polls lock different items rather than wait for one.
const SKIP_LOCKED: &str = "FOR UPDATE SKIP LOCKED";

/// An UPDATE that matches nothing locks nothing here: no need to look
/// first.
const CLAIM_LOOKS_FIRST: bool = false;

/// `AgentsStore::append_event`: through the appender (`appender.rs`).
async fn append_event(store: &PgStore, session_id: String, doc: String) -> Result<i64> {
    store.events.append(session_id, doc).await
}

/// `AgentsStore::delete_events`: through the appender too, so it is
/// ordered with this node's appends.
async fn delete_events(store: &PgStore, session_id: String) -> Result<()> {
    store.events.delete(session_id).await
}

/// How the appender writes `ma_events` here. Other nodes may append to
/// the same session, so each batch reads the last numbers in its own
/// statement; when two nodes take the same number, the primary key lets
/// one through and the other's whole batch is tried again.
struct Events {
    writer: PgPool,
}

/// Tries of a batch that keeps meeting other nodes' appends.
const APPEND_TRIES: usize = 100;

impl EventWriter for Events {
    /// A batch's message to the server fits in one TLS record (16 KiB).
    /// sqlx leaves Nagle's algorithm on and hands the socket one record
    /// per write, so the second record of a message waits for the server
    /// to acknowledge the first, which it delays by 40 ms on loopback
    /// (measured: a 45-event batch took 43 ms, a 5-event one 1 ms).
    const BATCH_BYTES: usize = 12 << 10;
    /// While one batch waits for its commit's WAL flush, the next is
    /// written on another connection. Measured with `bench --store` (50
    /// sessions): p99 8.5–8.7 ms with one, 5.3–7.3 with two, 7.3–8.1 with
    /// four (smaller batches, more flushes).
    const IN_FLIGHT: usize = 2;

    async fn delete(&self, session_id: &str) -> Result<()> {
        queries::delete_events(&self.writer, session_id).await
    }

    /// One statement: the n-th event of a session in the batch takes the
    /// session's last number (as the statement's snapshot saw it) plus n.
    async fn append(&self, events: &[(&str, &str)]) -> Result<Vec<i64>> {
        let mut seen = std::collections::HashMap::<&str, i64>::new();
        let nth: Vec<i64> = events
            .iter()
            .map(|(s, _)| {
                let n = seen.entry(s).or_default();
                *n += 1;
                *n
            })
            .collect();
        let sessions: Vec<&str> = events.iter().map(|(s, _)| *s).collect();
        let docs: Vec<&str> = events.iter().map(|(_, d)| *d).collect();
        let mut tries = 0;
        let rows: Vec<(String, i64)> = loop {
            let r = match events {
                // Alone (a quiet moment): without arrays to decode.
                [(session, doc)] => {
                    sqlx::query_as(
                        "INSERT INTO ma_events (session_id, seq, doc)
                         SELECT $1, COALESCE(MAX(seq) + 1, 0), $2 FROM ma_events WHERE session_id = $1
                         RETURNING session_id, seq",
                    )
                    .bind(session)
                    .bind(doc)
                    .fetch_all(&self.writer)
                    .await
                }
                _ => {
                    sqlx::query_as(
                        "INSERT INTO ma_events (session_id, seq, doc)
                         SELECT v.session_id,
                                COALESCE((SELECT MAX(e.seq) FROM ma_events e WHERE e.session_id = v.session_id), -1) + v.nth,
                                v.doc
                         FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::TEXT[]) AS v(session_id, nth, doc)
                         RETURNING session_id, seq",
                    )
                    .bind(&sessions)
                    .bind(&nth)
                    .bind(&docs)
                    .fetch_all(&self.writer)
                    .await
                }
            };
            match r {
                Err(sqlx::Error::Database(e))
                    if e.is_unique_violation() && tries < APPEND_TRIES =>
                {
                    tries += 1;
                }
                r => break r?,
            }
        };
        // RETURNING promises no order: each session's first event took its
        // smallest number, and the n-th that plus n - 1.
        let mut first = std::collections::HashMap::<&str, i64>::new();
        for (s, seq) in &rows {
            let Some((s, _)) = seen.get_key_value(s.as_str()) else {
                continue;
            };
            let f = first.entry(s).or_insert(*seq);
            *f = (*f).min(*seq);
        }
        events
            .iter()
            .zip(&nth)
            .map(|((s, _), n)| {
                first.get(s).map(|f| f + n - 1).ok_or_else(|| {
                    Error::Corrupt(format!(
                        "appended events of session {s} came back without numbers"
                    ))
                })
            })
            .collect()
    }
}

async fn notify(store: &PgStore, payload: &str) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(crate::agents::CHANNEL)
        .bind(payload)
        .execute(&store.pool)
        .await?;
    Ok(())
}

/// A connection of its own (outside the pool's count) that `LISTEN`s;
/// sqlx re-makes it when it drops, and `try_recv` then answers `None`.
async fn listen(store: &PgStore) -> Result<Option<crate::agents::Notifications>> {
    let mut listener = sqlx::postgres::PgListener::connect_with(&store.pool).await?;
    listener.listen(crate::agents::CHANNEL).await?;
    let stream = futures_util::stream::unfold(listener, |mut l| async move {
        let next = l
            .try_recv()
            .await
            .map(|n| n.map(|n| n.payload().to_string()))
            .map_err(Error::from);
        Some((next, l))
    });
    Ok(Some(Box::pin(stream)))
}

/// Nodes starting together on one database: the first to take this lock
/// migrates, the others wait for its commit and find nothing left to do.
/// The key is any constant of ours ("sandston" as a big-endian i64).
const MIGRATION_LOCK: &str = "SELECT pg_advisory_xact_lock(8314047764815441774)";

/// How long the first connection may take before the start fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections per daemon; PostgreSQL's default limit is 100 for all
/// nodes together.
const MAX_CONNECTIONS: u32 = 10;

/// A `postgres://` (or `postgresql://`) URL. It shows itself — in `Debug`,
/// `Display` and every error — as `postgres://user@host:port/database`,
/// never with its password.
#[derive(Clone)]
pub struct PgUrl {
    /// Boxed: it is large, and a `PgUrl` is carried around in config.
    pub(crate) options: Box<PgConnectOptions>,
    shown: String,
    /// The password as written and decoded, scrubbed from the driver's
    /// messages.
    secrets: Vec<String>,
}

impl std::str::FromStr for PgUrl {
    type Err = Error;

    /// A malformed URL is an error that does not repeat it.
    fn from_str(s: &str) -> Result<PgUrl> {
        if !(s.starts_with("postgres://") || s.starts_with("postgresql://")) {
            return Err(Error::BadUrl(
                "must start with postgres:// or postgresql://".into(),
            ));
        }
        let url = url::Url::parse(s).map_err(|e| Error::BadUrl(format!("not a URL: {e}")))?;
        let written = url.password().into_iter().map(str::to_string).chain(
            url.query_pairs()
                .filter(|(k, _)| k == "password")
                .map(|(_, v)| v.into_owned()),
        );
        let mut secrets = Vec::new();
        for s in written.filter(|s| !s.is_empty()) {
            secrets.push(percent_decoded(&s));
            secrets.push(s);
        }
        let options = s
            .parse::<PgConnectOptions>()
            .map_err(|e| Error::BadUrl(scrub(&secrets, e.to_string())))?
            // Names the daemon in pg_stat_activity.
            .application_name("sandstone");
        let host = match options.get_socket() {
            Some(socket) => socket.display().to_string(),
            None => options.get_host().to_string(),
        };
        let user = options.get_username();
        let shown = format!(
            "postgres://{user}@{host}:{}/{}",
            options.get_port(),
            options.get_database().unwrap_or(user)
        );
        Ok(PgUrl {
            options: Box::new(options),
            shown,
            secrets,
        })
    }
}

impl PgUrl {
    /// `message` without the password.
    pub(crate) fn scrub(&self, message: String) -> String {
        scrub(&self.secrets, message)
    }
}

fn scrub(secrets: &[String], message: String) -> String {
    secrets
        .iter()
        .fold(message, |m, s| m.replace(s.as_str(), "***"))
}

/// `%XX` escapes decoded (an invalid escape is kept as written).
fn percent_decoded(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.as_bytes();
    while let Some((&b, rest)) = bytes.split_first() {
        if b == b'%'
            && let Some(byte) = rest.get(..2).and_then(|h| hex::decode(h).ok())
        {
            out.extend(byte);
            bytes = &rest[2..];
        } else {
            out.push(b);
            bytes = rest;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl std::fmt::Display for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PgUrl").field(&self.shown).finish()
    }
}

pub struct PgStore {
    pool: PgPool,
    /// The same pool: PostgreSQL takes concurrent writers itself.
    writer: PgPool,
    events: Appender,
}

impl PgStore {
    /// Connects and migrates. Any failure is an [`Error::Open`] naming the
    /// database (without the password) and why.
    pub async fn open(url: &PgUrl) -> Result<PgStore> {
        let fail = |what: &str, e: &dyn std::fmt::Display| Error::Open {
            target: url.shown.clone(),
            reason: url.scrub(format!("{what}: {e}")),
        };
        // One connection first, on its own: a pool retries a refused
        // connection until its timeout and then says only that it timed
        // out, where this says why.
        let mut conn =
            tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&url.options))
                .await
                .map_err(|_| {
                    let waited = format!("no answer in {} s", CONNECT_TIMEOUT.as_secs());
                    fail("cannot connect", &waited)
                })?
                .map_err(|e| fail("cannot connect", &e))?;
        queries::migrate(&mut conn, MIGRATIONS, Some(MIGRATION_LOCK))
            .await
            .map_err(|e| fail("cannot migrate", &e))?;
        conn.close().await.map_err(|e| fail("closing", &e))?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_lazy_with(PgConnectOptions::clone(&url.options));
        Ok(PgStore {
            events: Appender::spawn(Events {
                writer: pool.clone(),
            }),
            writer: pool.clone(),
            pool,
        })
    }
}

/// A fresh database on the server `SANDSTONE_TEST_DATABASE_URL` names,
/// opened as often as a test likes; `None` (with a printed line) without it.
#[cfg(test)]
struct Scratch(crate::testing::TestDatabase);

#[cfg(test)]
impl Scratch {
    async fn new() -> Option<Scratch> {
        let db = crate::testing::TestDatabase::create().await;
        if db.is_none() {
            let env = crate::testing::ENV;
            eprintln!("skipped on PostgreSQL: {env} is not set (CI sets it)");
        }
        db.map(Scratch)
    }

    async fn open(&self) -> PgStore {
        PgStore::open(self.0.url()).await.unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_never_shows_its_password() {
        let url: PgUrl = "postgres://sandstone:pa%2Fss@db.internal:6543/meta?sslmode=disable"
            .parse()
            .unwrap();
        assert_eq!(
            url.to_string(),
            "postgres://sandstone@db.internal:6543/meta"
        );
        assert_eq!(
            format!("{url:?}"),
            "PgUrl(\"postgres://sandstone@db.internal:6543/meta\")"
        );
        assert_eq!(url.scrub("pa/ss and pa%2Fss".into()), "*** and ***");
        // Given as a parameter: scrubbed too; no database: the user's.
        let url: PgUrl = "postgresql://u@h?password=hunter22".parse().unwrap();
        assert_eq!(url.to_string(), "postgres://u@h:5432/u");
        assert_eq!(url.scrub("x hunter22".into()), "x ***");
        for (bad, says) in [
            ("mysql://u:hunter22@h/db", "must start with postgres://"),
            ("postgres://u:hunter22@h:99999/db", "not a URL"),
            (
                "postgres://u:hunter22@h/db?sslmode=hunter22",
                "database URL",
            ),
        ] {
            let err = bad.parse::<PgUrl>().unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
            assert!(!err.contains("hunter22"), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn a_refused_connection_or_a_wrong_password_is_a_clear_error() {
        // Nothing listens on port 1 here.
        let url: PgUrl = "postgres://sandstone:hunter22@127.0.0.1:1/meta"
            .parse()
            .unwrap();
        let err = PgStore::open(&url).await.err().unwrap().to_string();
        assert!(
            err.starts_with("database postgres://sandstone@127.0.0.1:1/meta: cannot connect:"),
            "{err}"
        );
        assert!(!err.contains("hunter22"), "{err}");
        let Some(Scratch(db)) = Scratch::new().await else {
            return;
        };
        let mut wrong = url::Url::parse(db.url_string()).unwrap();
        wrong.set_password(Some("not-the-password")).unwrap();
        let wrong: PgUrl = wrong.as_str().parse().unwrap();
        let err = PgStore::open(&wrong).await.err().unwrap().to_string();
        assert!(err.contains("password authentication failed"), "{err}");
        assert!(err.contains(&db.url().to_string()), "{err}");
        assert!(!err.contains("not-the-password"), "{err}");
    }

    /// Debian's cluster (scripts/postgres.sh) has TLS on, with its own
    /// certificate: `require` encrypts without checking it.
    #[tokio::test]
    async fn sslmode_require_connects_over_tls() {
        let Some(Scratch(db)) = Scratch::new().await else {
            return;
        };
        let url = format!("{}?sslmode=require", db.url_string());
        let store = PgStore::open(&url.parse().unwrap()).await.unwrap();
        let ssl: bool =
            sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(&store.pool)
                .await
                .unwrap();
        assert!(ssl);
        // `verify-full` checks it: a self-signed certificate is refused.
        let url = format!("{}?sslmode=verify-full", db.url_string());
        let err = PgStore::open(&url.parse().unwrap()).await.err().unwrap();
        let err = err.to_string();
        assert!(
            err.contains("cannot connect") && err.contains("certificate"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn stores_migrating_one_database_at_once_all_succeed() {
        let Some(Scratch(db)) = Scratch::new().await else {
            return;
        };
        let opens = (0..4).map(|_| PgStore::open(db.url()));
        let stores = futures_util::future::join_all(opens).await;
        for s in &stores {
            assert!(s.is_ok(), "{:?}", s.as_ref().err());
        }
        let store = stores.into_iter().next().unwrap().unwrap();
        let versions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM schema_migrations")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(versions, MIGRATIONS.len() as i64);
    }

    /// Two nodes append to the same sessions at once, in batches: every
    /// event gets its own number, with no gap, and each number is the one
    /// its caller was told.
    #[tokio::test]
    async fn nodes_appending_to_one_session_at_once_get_distinct_numbers_without_gaps() {
        use crate::agents::AgentsStore;
        let Some(db) = Scratch::new().await else {
            return;
        };
        let (a, b) = (db.open().await, db.open().await);
        let doc = |node: &str, i: usize| serde_json::json!({"node": node, "i": i});
        let appends = (0..60).map(|i| {
            let (store, node) = if i % 2 == 0 { (&a, "a") } else { (&b, "b") };
            let session = if i % 3 == 0 { "t" } else { "s" };
            let d = doc(node, i);
            async move {
                (
                    session,
                    d.clone(),
                    store.append_event(session, &d).await.unwrap(),
                )
            }
        });
        let told = futures_util::future::join_all(appends).await;
        for session in ["s", "t"] {
            let stored = a.load_events(session, -1).await.unwrap();
            let mut numbers: Vec<i64> = stored.iter().map(|(n, _)| *n).collect();
            numbers.sort();
            let expected: Vec<i64> = (0..stored.len() as i64).collect();
            assert_eq!(numbers, expected, "{session}: no gap, no repeat");
            for (s, d, n) in told.iter().filter(|(s, ..)| *s == session) {
                assert!(stored.contains(&(*n, d.clone())), "{s}: event {n} is {d}");
            }
            assert_eq!(
                stored.len(),
                told.iter().filter(|(s, ..)| *s == session).count()
            );
        }
    }
}
