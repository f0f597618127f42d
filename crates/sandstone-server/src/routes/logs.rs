//! `GET /sandboxes/{id}/observability/logs`: the sandbox's durable log
//! (`lifecycle::logs`) as Sandbox0's log entries, a page at a time or,
//! with `watch=true`, as an NDJSON stream that follows new output.

use crate::AppState;
use crate::lifecycle::logs::{self, Line, LogQuery};
use crate::routes::error::{ApiError, ApiResult, ok};
use crate::routes::observability::{
    WATCH_POLL, WatchSource, bad, enum_param, limit_param, push_line, push_watermark, time_param,
    watch_param, watch_stream,
};
use crate::routes::sandboxes::row;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use sandstone_api::logs::{Cursor, LogEntry, LogPage};
use sandstone_api::observability::WatchLine;
use sandstone_api::timefmt::rfc3339_ms;
use std::collections::HashMap;
use std::path::PathBuf;

/// Who the entries are about (the same for every line of a sandbox).
struct Names {
    sandbox: String,
    team: String,
    node: String,
}

impl Names {
    fn entry(&self, l: Line) -> LogEntry {
        let mut attributes = serde_json::Map::new();
        if l.stream.is_none() {
            attributes.insert("event".into(), "exit".into());
            if let Ok(code) = l.text.parse::<i64>() {
                attributes.insert("exit_code".into(), code.into());
            }
        }
        LogEntry {
            team_id: self.team.clone(),
            sandbox_id: self.sandbox.clone(),
            region_id: "local".into(),
            cluster_id: self.node.clone(),
            context_id: l.context,
            occurred_at: rfc3339_ms(l.at_ms),
            // PID 1 writes a line as it reads it: ingestion is occurrence.
            ingested_at: rfc3339_ms(l.at_ms),
            stream: l.stream,
            message: match l.stream {
                Some(_) => l.text,
                None => format!("[exited: {}]", l.text),
            },
            cursor: l.cursor.to_string(),
            attributes,
        }
    }
}

fn parse(q: &HashMap<String, String>) -> ApiResult<(LogQuery, bool)> {
    let watch = watch_param(q)?;
    let end_ms = time_param(q, "end_time")?;
    if watch && end_ms.is_some() {
        return Err(bad("end_time", "not supported with watch=true"));
    }
    let after = q
        .get("cursor")
        .map(|c| {
            c.parse::<Cursor>()
                .map_err(|()| bad("cursor", "not a cursor this server returned"))
        })
        .transpose()?;
    let context = q.get("context_id").cloned();
    if context.as_deref().is_some_and(str::is_empty) {
        return Err(bad("context_id", "must not be empty"));
    }
    Ok((
        LogQuery {
            start_ms: time_param(q, "start_time")?,
            end_ms,
            context,
            stream: enum_param(q, "stream")?,
            after,
            limit: limit_param(q)? as usize,
        },
        watch,
    ))
}

/// Reads off the async threads, a few at a time ([`logs::run`]).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> ApiResult<T> {
    logs::run(f)
        .await
        .map_err(|e| ApiError::internal(format!("the log: {e}")))
}

async fn read(dir: PathBuf, q: LogQuery) -> ApiResult<(Vec<Line>, Cursor)> {
    blocking(move || logs::read(&dir, &q)).await
}

pub async fn logs(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let r = row(&st, &id).await?;
    let (query, watching) = parse(&q)?;
    let names = Names {
        sandbox: r.id.clone(),
        team: r.team_id.clone(),
        node: st.lifecycle.node.clone(),
    };
    let dir = st.lifecycle.log_dir(&id);
    if let Some(c) = query.after {
        let d = dir.clone();
        if !blocking(move || logs::is_record_start(&d, c.seq, c.offset)).await? {
            return Err(bad("cursor", "not a cursor this server returned"));
        }
    }
    if watching {
        return watch(st, id, dir, query, names).await;
    }
    let (lines, next) = read(dir, query).await?;
    Ok(ok(
        StatusCode::OK,
        LogPage {
            logs: lines.into_iter().map(|l| names.entry(l)).collect(),
            next_cursor: next.to_string(),
        },
    ))
}

/// The log a `watch=true` stream follows: each batch of entries, then a
/// watermark to resume from (`cursor=`).
struct LogWatch {
    dir: PathBuf,
    query: LogQuery,
    names: Names,
    waker: logs::Waker,
}

impl WatchSource for LogWatch {
    async fn idle(&mut self) {
        self.waker.wait(WATCH_POLL).await
    }

    async fn lines(&mut self) -> Result<String, String> {
        let (lines, next) = read(self.dir.clone(), self.query.clone())
            .await
            .map_err(|e| format!("reading the log failed: {}", e.message))?;
        self.query.after = Some(next);
        let mut out = String::new();
        if lines.is_empty() {
            return Ok(out);
        }
        for l in lines {
            let data = Box::new(self.names.entry(l));
            push_line(&mut out, &WatchLine::Log { data });
        }
        // Once caught up, the position is what counts.
        self.query.start_ms = None;
        push_watermark(&mut out, next.to_string());
        Ok(out)
    }
}

/// `watch=true`: from now, unless a cursor or `start_time` says where.
async fn watch(
    st: AppState,
    id: String,
    dir: PathBuf,
    mut query: LogQuery,
    names: Names,
) -> ApiResult<Response> {
    if query.after.is_none() && query.start_ms.is_none() {
        let d = dir.clone();
        query.after = Some(blocking(move || logs::end(&d)).await?);
    }
    let waker = logs::Waker::new(&dir);
    Ok(watch_stream(
        st,
        id,
        LogWatch {
            dir,
            query,
            names,
            waker,
        },
    ))
}
