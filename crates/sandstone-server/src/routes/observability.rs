//! A sandbox's egress audit as Sandbox0 observability events
//! (`GET .../observability/events`): a page at a time, or with
//! `watch=true` as an NDJSON stream that follows new records.

use crate::AppState;
use crate::routes::error::{ApiError, ApiResult, ok};
use crate::routes::sandboxes::row;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use sandstone_api::observability::{
    self as obs, Actor, ActorKind, Event, EventSource, EventType, EventsPage, Integrity, Outcome,
    Phase, Producer, Resource, SignatureStatus, WatchLine,
};
use sandstone_api::timefmt::{now_ms, parse_rfc3339_us, rfc3339_ms};
use sandstone_db::AuditQuery;
use sandstone_egress::audit::{AuditEvent, Verdict};
use sandstone_egress::hint::{Denied, allow_hint};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::Duration;

/// The spec's page size bounds: larger values are capped, not refused.
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;
/// How often a watch looks for new records, and how long it stays quiet
/// before it says it is still there.
pub(crate) const WATCH_POLL: Duration = Duration::from_millis(500);
pub(crate) const WATCH_HEARTBEAT: Duration = Duration::from_secs(15);

/// What the query asks for. `None` in `query` means the filters exclude
/// every event Sandstone records (another source or event type, say), so
/// the answer is empty without a lookup.
struct Filter {
    query: Option<AuditQuery>,
    /// Filters the store cannot apply, checked on each event.
    action: Option<String>,
    operation_id: Option<String>,
    /// `event_id=`: the one record it names.
    exact: Option<i64>,
    watch: bool,
    /// Neither `cursor` nor `start_time` given: a watch starts now.
    from_now: bool,
}

pub(crate) fn bad(key: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!("invalid query parameter `{key}`: {why}"))
}

/// A query parameter that must be one of a spec enum's values.
pub(crate) fn enum_param<T: serde::de::DeserializeOwned>(
    q: &HashMap<String, String>,
    key: &str,
) -> ApiResult<Option<T>> {
    q.get(key)
        .map(|v| {
            serde_json::from_value(serde_json::Value::String(v.clone()))
                .map_err(|_| bad(key, &format!("{v:?} is not one of the spec's values")))
        })
        .transpose()
}

/// `limit=`: 1 or more; above [`MAX_LIMIT`] is capped, as the spec says.
pub(crate) fn limit_param(q: &HashMap<String, String>) -> ApiResult<i64> {
    match q.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n >= 1 => Ok(n.min(MAX_LIMIT)),
            _ => Err(bad("limit", "a positive integer")),
        },
    }
}

pub(crate) fn watch_param(q: &HashMap<String, String>) -> ApiResult<bool> {
    match q.get("watch").map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(bad("watch", "true or false")),
    }
}

pub(crate) fn time_param(q: &HashMap<String, String>, key: &str) -> ApiResult<Option<i64>> {
    q.get(key)
        .map(|v| {
            parse_rfc3339_us(v)
                .map(|us| us.div_euclid(1000))
                .ok_or_else(|| bad(key, "an RFC 3339 date-time"))
        })
        .transpose()
}

impl Filter {
    fn parse(q: &HashMap<String, String>, sandbox: &str) -> ApiResult<Filter> {
        let limit = limit_param(q)?;
        let cursor = q
            .get("cursor")
            .map(|v| {
                v.parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| bad("cursor", "not a cursor this server returned"))
            })
            .transpose()?;
        let watch = watch_param(q)?;
        let (since, until) = (time_param(q, "start_time")?, time_param(q, "end_time")?);
        if watch && until.is_some() {
            return Err(bad("end_time", "not supported with watch=true"));
        }
        let source: Option<EventSource> = enum_param(q, "source")?;
        let event_type: Option<EventType> = enum_param(q, "event_type")?;
        let outcome: Option<Outcome> = enum_param(q, "outcome")?;
        let actor_kind: Option<ActorKind> = enum_param(q, "actor_kind")?;
        // Any UUID is a fair question; one Sandstone never issued names no
        // record.
        let exact = q.get("event_id").map(|id| obs::event_seq(id).unwrap_or(-1));
        let denied = match outcome {
            None => None,
            Some(Outcome::Denied) => Some(true),
            Some(Outcome::Completed) => Some(false),
            Some(_) => return Ok(Filter::nothing(watch)),
        };
        let ours = source.is_none_or(|s| s == EventSource::Ctld)
            && event_type.is_none_or(|t| t == EventType::NetworkAudit)
            && actor_kind.is_none_or(|k| k == ActorKind::SandboxWorkload)
            && q.get("actor_id").is_none_or(|a| a == sandbox)
            && q.get("resource_type").is_none_or(|r| r == RESOURCE_TYPE);
        if !ours {
            return Ok(Filter::nothing(watch));
        }
        Ok(Filter {
            query: Some(AuditQuery {
                after_seq: cursor.unwrap_or(0),
                denied,
                since_ms: since.unwrap_or(i64::MIN),
                until_ms: until.unwrap_or(i64::MAX),
                limit,
            }),
            action: q.get("action").cloned(),
            operation_id: q.get("operation_id").cloned(),
            exact,
            watch,
            from_now: cursor.is_none() && since.is_none(),
        })
    }

    fn nothing(watch: bool) -> Filter {
        Filter {
            query: None,
            action: None,
            operation_id: None,
            exact: None,
            watch,
            from_now: true,
        }
    }

    fn admits(&self, e: &Event) -> bool {
        self.action.as_ref().is_none_or(|a| *a == e.action)
            && self
                .operation_id
                .as_ref()
                .is_none_or(|o| *o == e.operation_id)
    }
}

const RESOURCE_TYPE: &str = "sandbox";

/// Turns stored records into events, adding to each denial the change
/// that would allow it (computed against the current policy).
struct Renderer {
    sandbox: String,
    team: String,
    node: String,
    policy: Option<sandstone_egress::policy::CompiledPolicy>,
    operator: Option<sandstone_egress::OperatorRules>,
}

impl Renderer {
    fn new(st: &AppState, r: &sandstone_db::SandboxRow) -> Renderer {
        Renderer {
            sandbox: r.id.clone(),
            team: r.team_id.clone(),
            node: st.lifecycle.node.clone(),
            policy: st
                .lifecycle
                .effective_policy(r)
                .ok()
                .and_then(|p| p.compile().ok()),
            operator: st.lifecycle.operator_rules().cloned(),
        }
    }

    fn event(&self, seq: i64, mut record: serde_json::Value) -> Event {
        let payload_hash = hex::encode(Sha256::digest(record.to_string()));
        let audit = serde_json::from_value::<AuditEvent>(record.clone()).ok();
        let hint = audit.as_ref().and_then(|a| self.hint(a));
        if let Some(h) = hint {
            record["allow_hint"] = serde_json::json!(h);
        }
        record["seq"] = serde_json::json!(seq);
        let time = audit.as_ref().map_or(0, |a| a.time);
        let denied = audit.as_ref().is_some_and(|a| a.decision == Verdict::Deny);
        let action = audit
            .as_ref()
            .map_or("egress", |a| a.kind.action())
            .to_string();
        Event {
            event_id: obs::event_id(seq),
            schema_version: obs::SCHEMA_VERSION,
            team_id: self.team.clone(),
            sandbox_id: self.sandbox.clone(),
            region_id: "local".into(),
            cluster_id: self.node.clone(),
            occurred_at: rfc3339_ms(time),
            ingested_at: rfc3339_ms(time),
            source: EventSource::Ctld,
            event_type: EventType::NetworkAudit,
            phase: Phase::Result,
            outcome: if denied {
                Outcome::Denied
            } else {
                Outcome::Completed
            },
            actor: Actor {
                kind: ActorKind::SandboxWorkload,
                id: Some(self.sandbox.clone()),
            },
            action,
            resource: Resource {
                kind: RESOURCE_TYPE.into(),
                id: self.sandbox.clone(),
                subresource: Some("network".into()),
            },
            operation_id: format!("audit-{seq}"),
            producer: Producer {
                service: "sandstone-egress".into(),
                instance: Some(self.node.clone()),
                sequence: Some(seq),
            },
            integrity: Integrity {
                algorithm: "ed25519-sha256-v1".into(),
                payload_hash,
                signature: String::new(),
                signing_key_id: "0".repeat(64),
                signature_status: SignatureStatus::Unavailable,
            },
            attributes: record,
        }
    }

    fn hint(&self, a: &AuditEvent) -> Option<sandstone_egress::hint::AllowHint> {
        if a.decision != Verdict::Deny {
            return None;
        }
        let denied = Denied {
            name: a.dest_name.as_deref(),
            ip: a.dest_ip.as_deref().and_then(|ip| ip.parse().ok()),
            port: a.dest_port,
            dns: a.kind == sandstone_egress::audit::EventKind::Dns,
            stated: matches!(a.protocol.as_str(), "http" | "tls"),
        };
        allow_hint(
            &self.sandbox,
            self.policy.as_ref()?,
            self.operator.as_ref()?,
            &denied,
        )
    }
}

pub async fn events(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let r = row(&st, &id).await?;
    let filter = Filter::parse(&q, &id)?;
    let render = Renderer::new(&st, &r);
    if filter.watch {
        return Ok(watch(st, id, filter, render));
    }
    let Some(mut query) = filter.query.clone() else {
        return Ok(ok(
            StatusCode::OK,
            EventsPage {
                events: vec![],
                next_cursor: None,
            },
        ));
    };
    if let Some(seq) = filter.exact {
        query = AuditQuery {
            after_seq: seq - 1,
            ..AuditQuery::after(0, 1)
        };
    }
    let rows = st.lifecycle.store.list_audit(&id, &query).await?;
    // A full page may have more behind it; filters applied here can make a
    // page short without its being the last.
    let next_cursor = (filter.exact.is_none() && rows.len() as i64 == query.limit)
        .then(|| rows.last().map(|(seq, _)| seq.to_string()))
        .flatten();
    let events = rows
        .into_iter()
        .filter(|(seq, _)| filter.exact.is_none_or(|s| s == *seq))
        .map(|(seq, record)| render.event(seq, record))
        .filter(|e| filter.admits(e))
        .collect();
    Ok(ok(
        StatusCode::OK,
        EventsPage {
            events,
            next_cursor,
        },
    ))
}

/// How a followed stream frames what it says besides its source's own
/// records: a heartbeat and the reason it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Sandbox0's `watch=true` NDJSON lines (`WatchLine`).
    Ndjson,
    /// Server-sent events: every `data:` is a record, so a heartbeat and
    /// the end's reason are comments.
    Sse,
}

impl Framing {
    fn content_type(self) -> &'static str {
        match self {
            Framing::Ndjson => "application/x-ndjson",
            Framing::Sse => "text/event-stream",
        }
    }

    fn push_error(self, out: &mut String, error: String) {
        match self {
            Framing::Ndjson => push_line(out, &WatchLine::Error { error }),
            Framing::Sse => push_comment(out, &format!("error: {error}")),
        }
    }

    fn push_heartbeat(self, out: &mut String) {
        let time = rfc3339_ms(now_ms());
        match self {
            Framing::Ndjson => push_line(out, &WatchLine::Heartbeat { time }),
            Framing::Sse => push_comment(out, &format!("heartbeat {time}")),
        }
    }
}

/// An SSE comment: one line, whatever `text` holds.
fn push_comment(out: &mut String, text: &str) {
    out.push_str(": ");
    out.push_str(&text.replace(['\r', '\n'], " "));
    out.push_str("\n\n");
}

/// What a followed stream follows: each call says what is new.
pub(crate) trait WatchSource: Send + 'static {
    const FRAMING: Framing = Framing::Ndjson;

    /// The framed records of what came since the last call (empty:
    /// nothing yet), or why the stream must end.
    fn lines(&mut self) -> impl std::future::Future<Output = Result<String, String>> + Send;

    /// Waits, when there was nothing new, before the next look.
    fn idle(&mut self) -> impl std::future::Future<Output = ()> + Send {
        tokio::time::sleep(WATCH_POLL)
    }
}

/// Serves a followed stream of `source`: what it adds as it comes (looked
/// for again after each [`WatchSource::idle`]), a heartbeat when quiet for
/// [`WATCH_HEARTBEAT`], and the reason, then the end, when it fails or
/// sandbox `id` is gone. Runs until the client leaves.
pub(crate) fn watch_stream<S: WatchSource>(st: AppState, id: String, source: S) -> Response {
    let state = (st, id, source, tokio::time::Instant::now(), false);
    let lines = futures_util::stream::unfold(state, |mut w| async move {
        let (st, id, source, quiet_since, done) = &mut w;
        if *done {
            return None;
        }
        loop {
            let mut out = match source.lines().await {
                Ok(out) => out,
                Err(error) => {
                    *done = true;
                    let mut out = String::new();
                    S::FRAMING.push_error(&mut out, error);
                    out
                }
            };
            if out.is_empty() && quiet_since.elapsed() >= WATCH_HEARTBEAT {
                *done = push_quiet(S::FRAMING, &mut out, st, id).await;
            }
            if !out.is_empty() {
                *quiet_since = tokio::time::Instant::now();
                return Some((Ok::<_, std::convert::Infallible>(out), w));
            }
            source.idle().await;
        }
    });
    (
        [
            (header::CONTENT_TYPE, S::FRAMING.content_type()),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(lines),
    )
        .into_response()
}

/// The audit records a watch follows: each batch of events, then a
/// watermark to resume from.
struct AuditWatch {
    st: AppState,
    id: String,
    filter: Filter,
    render: Renderer,
    after: i64,
    since: i64,
}

impl WatchSource for AuditWatch {
    async fn lines(&mut self) -> Result<String, String> {
        let Some(q) = &self.filter.query else {
            return Ok(String::new());
        };
        let q = AuditQuery {
            after_seq: self.after,
            since_ms: self.since,
            ..q.clone()
        };
        let rows = self
            .st
            .lifecycle
            .store
            .list_audit(&self.id, &q)
            .await
            .map_err(|e| format!("reading the audit failed: {e}"))?;
        let mut out = String::new();
        if rows.is_empty() {
            return Ok(out);
        }
        for (seq, record) in rows {
            self.after = seq;
            let e = self.render.event(seq, record);
            if self.filter.admits(&e) {
                push_line(&mut out, &WatchLine::Event { data: Box::new(e) });
            }
        }
        push_watermark(&mut out, self.after.to_string());
        Ok(out)
    }
}

fn watch(st: AppState, id: String, filter: Filter, render: Renderer) -> Response {
    let since = match &filter.query {
        Some(q) if !filter.from_now => q.since_ms,
        _ => now_ms(),
    };
    let after = filter.query.as_ref().map_or(0, |q| q.after_seq);
    let source = AuditWatch {
        st: st.clone(),
        id: id.clone(),
        filter,
        render,
        after,
        since,
    };
    watch_stream(st, id, source)
}

/// What a watch that has been quiet says: a heartbeat, or, once the
/// sandbox is gone, why it ends. True when the watch is over.
async fn push_quiet(framing: Framing, out: &mut String, st: &AppState, id: &str) -> bool {
    if st.lifecycle.store.get_sandbox(id).await.is_err() {
        framing.push_error(out, format!("sandbox {id} was deleted"));
        return true;
    }
    framing.push_heartbeat(out);
    false
}

/// The place a watch can resume from (`cursor=`), after a batch.
pub(crate) fn push_watermark(out: &mut String, cursor: String) {
    let watermark = cursor.clone();
    push_line(out, &WatchLine::Watermark { watermark, cursor });
}

pub(crate) fn push_line(out: &mut String, line: &WatchLine) {
    if let Ok(text) = serde_json::to_string(line) {
        out.push_str(&text);
        out.push('\n');
    }
}
