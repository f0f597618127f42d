//! `sandstone bench --store`: the metadata store under the load of busy
//! Managed Agents sessions, without a daemon: a scratch database (SQLite in
//! a temporary directory under `--store-dir`, or `--database-url`'s
//! PostgreSQL), many sessions appending their events at an agent's pace
//! while audit records arrive in batches and readers page through the
//! histories. The baseline, measured first in the same run, is one
//! session appending alone.

use anyhow::Result;
use sandstone_db::{AuditRow, Database, Location};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bench::{BenchArgs, Stats, row, stats};
use std::path::Path;

/// What one busy session does: an event every `EVENT_EVERY` (a streaming
/// agent's pace: a tool call, its result, a message), each about 600 bytes.
const EVENT_EVERY: Duration = Duration::from_millis(10);
/// How long the loaded phase lasts.
const LOADED_FOR: Duration = Duration::from_secs(8);

/// Runs `sandstone bench --store`.
pub async fn command(args: &BenchArgs, data_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(data_dir)?;
    let scratch = tempfile::Builder::new()
        .prefix("bench-store-")
        .tempdir_in(data_dir)?;
    let location = match &args.database_url {
        Some(url) => Location::Postgres(url.parse()?),
        None => Location::Sqlite(scratch.path().join("metadata.db")),
    };
    run(&location, args.sessions.max(1)).await
}

async fn run(location: &Location, sessions: usize) -> Result<()> {
    let db = location.open().await?;
    println!("sandstone bench --store: {location}, {sessions} busy sessions");
    let alone = appends(&db, "alone", 1, Duration::from_secs(3), false).await?;
    row("event append, 1 session (baseline)", &alone, "");
    let busy = appends(&db, "busy", sessions, LOADED_FOR, true).await?;
    row(
        &format!("event append, {sessions} sessions"),
        &busy,
        &format!(
            "p99 = {:.1}× baseline p99; max {:.1} ms",
            busy.p99 / alone.p99,
            busy.max
        ),
    );
    Ok(())
}

/// `sessions` tasks each appending an event every [`EVENT_EVERY`] for
/// `length`; with `load`, a task inserting audit batches (a busy egress
/// proxy's) and one reading histories back run beside them. The latency
/// of every append.
async fn appends(
    db: &Arc<dyn Database>,
    tag: &str,
    sessions: usize,
    length: Duration,
    load: bool,
) -> Result<Stats> {
    let until = Instant::now() + length;
    let padding = "x".repeat(500);
    let mut tasks = Vec::new();
    for s in 0..sessions {
        let (db, padding) = (db.clone(), padding.clone());
        let session = format!("sesn_bench_{tag}_{s}");
        // Sessions are not in step: each starts at its own point of the
        // period, as independent agents would.
        let phase = EVENT_EVERY.mul_f64(s as f64 / sessions as f64);
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::new();
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + phase, EVENT_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while Instant::now() < until {
                tick.tick().await;
                let doc = json!({"type": "agent.message", "content": [{"type": "text", "text": padding}]});
                let t = Instant::now();
                db.append_event(&session, &doc).await?;
                times.push(t.elapsed());

            }
            anyhow::Ok((session, times))
        }));
    }
    let mut side = Vec::new();
    if load {
        let audit_db = db.clone();
        side.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while Instant::now() < until {
                tick.tick().await;
                let rows: Vec<AuditRow> = (0..20)
                    .map(|i| AuditRow {
                        sandbox_id: "sb-bench-store".into(),
                        time: i,
                        denied: i % 5 == 0,
                        event: json!({"kind": "connect", "host": "api.example.test", "port": 443}),
                    })
                    .collect();
                audit_db.insert_audit(&rows).await?;
            }
            audit_db.delete_audit("sb-bench-store").await?;
            anyhow::Ok(())
        }));
        let reader = db.clone();
        let first = format!("sesn_bench_{tag}_0");
        side.push(tokio::spawn(async move {
            while Instant::now() < until {
                reader.load_events(&first, -1).await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            anyhow::Ok(())
        }));
    }
    let mut all = Vec::new();
    let mut sessions = Vec::new();
    for t in tasks {
        let (session, times) = t.await??;
        all.extend(times);
        sessions.push(session);
    }
    for t in side {
        t.await??;
    }
    // Only now: a deletion is a write, which the last appends would queue
    // behind.
    for s in sessions {
        db.delete_events(&s).await?;
    }
    Ok(stats(all))
}
