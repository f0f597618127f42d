//! Execution sessions (`/sandboxes/{id}/sessions…`, Sandbox0's supervised
//! processes): HTTP in, `lifecycle::supervised` calls out.

use crate::AppState;
use crate::extract::JsonBody;
use crate::lifecycle::{Lifecycle, SessionFollow};
use crate::routes::error::{ApiError, ApiResult, ok};
use crate::routes::observability::{
    Framing, WATCH_HEARTBEAT, WATCH_POLL, WatchSource, watch_stream,
};
use crate::routes::sandboxes::row;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use sandstone_api::sessions::{
    AttemptRequest, DesiredStateRequest, ExecutionSessionList, ExecutionSessionSpec, InputRequest,
    ResizeRequest, SignalRequest, WsMessage, WsRequest, signal_number,
};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

pub async fn list(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    row(&st, &id).await?;
    let sessions = st.lifecycle.sessions(&id).await?;
    Ok(ok(StatusCode::OK, ExecutionSessionList { sessions }))
}

pub async fn create(
    State(st): State<AppState>,
    Path(id): Path<String>,
    JsonBody(spec): JsonBody<ExecutionSessionSpec>,
) -> ApiResult<Response> {
    row(&st, &id).await?;
    let s = st.lifecycle.create_session(&id, spec).await?;
    Ok(ok(StatusCode::CREATED, s))
}

pub async fn get(
    State(st): State<AppState>,
    Path((id, sid)): Path<(String, String)>,
) -> ApiResult<Response> {
    row(&st, &id).await?;
    Ok(ok(StatusCode::OK, st.lifecycle.session(&id, &sid).await?))
}

pub async fn replace(
    State(st): State<AppState>,
    Path((id, sid)): Path<(String, String)>,
    JsonBody(spec): JsonBody<ExecutionSessionSpec>,
) -> ApiResult<Response> {
    row(&st, &id).await?;
    let s = st.lifecycle.replace_session(&id, &sid, spec).await?;
    Ok(ok(StatusCode::OK, s))
}

pub async fn delete(
    State(st): State<AppState>,
    Path((id, sid)): Path<(String, String)>,
) -> ApiResult<Response> {
    row(&st, &id).await?;
    st.lifecycle.delete_session(&id, &sid).await?;
    Ok(ok(StatusCode::OK, json!({"deleted": true})))
}

pub async fn desired_state(
    State(st): State<AppState>,
    Path((id, sid)): Path<(String, String)>,
    JsonBody(req): JsonBody<DesiredStateRequest>,
) -> ApiResult<Response> {
    row(&st, &id).await?;
    let s = st.lifecycle.set_session_state(&id, &sid, req.state).await?;
    Ok(ok(StatusCode::OK, s))
}

pub async fn attempts(
    State(st): State<AppState>,
    Path((id, sid)): Path<(String, String)>,
    // An empty body is `{}`: the defaults.
    JsonBody(req): JsonBody<AttemptRequest>,
) -> ApiResult<Response> {
    row(&st, &id).await?;
    let s = st
        .lifecycle
        .new_attempt(&id, &sid, req.replace_current)
        .await?;
    Ok(ok(StatusCode::CREATED, s))
}

pub async fn signals(
    State(st): State<AppState>,
    Path((id, sid)): Path<(String, String)>,
    JsonBody(req): JsonBody<SignalRequest>,
) -> ApiResult<Response> {
    row(&st, &id).await?;
    let signal = signal_number(&req.signal).ok_or_else(|| {
        ApiError::bad_request(format!(
            "invalid field `signal`: {:?} is not a signal name (TERM, SIGKILL, …) or number",
            req.signal
        ))
    })?;
    st.lifecycle
        .signal_session(&id, &sid, signal, req.expected_attempt_id.as_deref())
        .await?;
    Ok(ok(StatusCode::ACCEPTED, json!({"accepted": true})))
}

/// `PUT .../terminal`: a `pty` session's size.
pub async fn terminal(
    State(st): State<AppState>,
    Path((id, sid)): Path<(String, String)>,
    JsonBody(req): JsonBody<ResizeRequest>,
) -> ApiResult<Response> {
    row(&st, &id).await?;
    st.lifecycle.resize_session(&id, &sid, &req).await?;
    Ok(ok(StatusCode::OK, json!({"resized": true})))
}

/// `after=`, else a `Last-Event-ID` header (an SSE client reconnecting),
/// else 0: every event still kept.
fn after_param(q: &HashMap<String, String>, last_event_id: Option<&str>) -> ApiResult<i64> {
    let (name, value) = match (q.get("after"), last_event_id) {
        (Some(v), _) => ("query parameter `after`", v.as_str()),
        (None, Some(v)) => ("header `Last-Event-ID`", v),
        (None, None) => return Ok(0),
    };
    value
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid {name}: a sequence number this server returned"
            ))
        })
}

/// `GET .../events/stream`: the session's events as server-sent events,
/// what is kept and then what comes, each with its `seq` as its id.
pub async fn events_stream(
    State(st): State<AppState>,
    Path((id, sid)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    row(&st, &id).await?;
    let last = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("invalid"));
    let after = after_param(&q, last)?;
    let follow = st.lifecycle.follow_session(&id, &sid, after).await?;
    let source = EventStream {
        lifecycle: st.lifecycle.clone(),
        follow,
    };
    Ok(watch_stream(st, id, source))
}

struct EventStream {
    lifecycle: Arc<Lifecycle>,
    follow: SessionFollow,
}

impl WatchSource for EventStream {
    const FRAMING: Framing = Framing::Sse;

    async fn lines(&mut self) -> Result<String, String> {
        let events = self
            .lifecycle
            .session_events_since(&mut self.follow)
            .await
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        for e in events {
            let data = serde_json::to_string(&e).map_err(|e| e.to_string())?;
            out.push_str(&format!("id: {}\ndata: {data}\n\n", e.seq));
        }
        Ok(out)
    }

    async fn idle(&mut self) {
        self.follow.waker.wait(WATCH_POLL).await
    }
}

/// `GET .../ws`: an attachment to the session. It sends the session's
/// events (what is kept after `after`, then what comes) and takes input,
/// signals and resizes, answering each; closing it stops nothing.
pub async fn ws(
    State(st): State<AppState>,
    Path((id, sid)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    axum::Extension(by): axum::Extension<crate::Caller>,
    upgrade: WebSocketUpgrade,
) -> ApiResult<Response> {
    row(&st, &id).await?;
    let after = after_param(&q, None)?;
    let follow = st.lifecycle.follow_session(&id, &sid, after).await?;
    let lc = st.lifecycle.clone();
    Ok(crate::routes::accept_ws(&st, &by, upgrade, move |socket| {
        attach(socket, lc, follow)
    }))
}

async fn attach(mut socket: WebSocket, lc: Arc<Lifecycle>, mut follow: SessionFollow) {
    let send = async |socket: &mut WebSocket, m: &WsMessage| {
        let text = serde_json::to_string(m).unwrap_or_default();
        socket.send(Message::Text(text.into())).await.is_ok()
    };
    let mut quiet_since = tokio::time::Instant::now();
    loop {
        match lc.session_events_since(&mut follow).await {
            Ok(events) => {
                for event in events {
                    if !send(&mut socket, &WsMessage::Event { event }).await {
                        return;
                    }
                    quiet_since = tokio::time::Instant::now();
                }
            }
            Err(e) => {
                let error = e.to_string();
                send(
                    &mut socket,
                    &WsMessage::Error {
                        request_id: None,
                        error,
                    },
                )
                .await;
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
        }
        if quiet_since.elapsed() >= WATCH_HEARTBEAT {
            if socket
                .send(Message::Ping(Default::default()))
                .await
                .is_err()
            {
                return;
            }
            quiet_since = tokio::time::Instant::now();
        }
        let wait = if follow.behind() {
            std::time::Duration::ZERO
        } else {
            WATCH_POLL
        };
        tokio::select! {
            _ = follow.waker.wait(wait) => {}
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let answer = request(&lc, &follow, &text).await;
                    if !send(&mut socket, &answer).await {
                        return;
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// Carries out one WebSocket request: its ack, or its error.
async fn request(lc: &Lifecycle, f: &SessionFollow, text: &str) -> WsMessage {
    let req = match serde_json::from_str::<WsRequest>(text) {
        Ok(req) => req,
        Err(e) => {
            // Its id, when that much of it can be read.
            let request_id = serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| v["request_id"].as_str().map(str::to_string));
            let error = format!("invalid request: {e}");
            return WsMessage::Error { request_id, error };
        }
    };
    let (id, sid) = (f.sandbox(), f.session());
    let (request_id, done) = match req {
        WsRequest::Input { request_id, body } => {
            let done = lc.session_input(id, sid, body).await.map(|_| ());
            (request_id, done)
        }
        WsRequest::Signal { request_id, body } => {
            let done = match signal_number(&body.signal) {
                Some(n) => {
                    lc.signal_session(id, sid, n, body.expected_attempt_id.as_deref())
                        .await
                }
                None => Err(crate::lifecycle::Error::Invalid(format!(
                    "invalid field `signal`: {:?} is not a signal name or number",
                    body.signal
                ))),
            };
            (request_id, done)
        }
        WsRequest::Resize { request_id, body } => {
            (request_id, lc.resize_session(id, sid, &body).await)
        }
    };
    match done {
        Ok(()) => WsMessage::Ack { request_id },
        Err(e) => WsMessage::Error {
            request_id,
            error: e.to_string(),
        },
    }
}

pub async fn events(
    State(st): State<AppState>,
    Path((id, sid)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    row(&st, &id).await?;
    let after = match q.get("after") {
        None => 0,
        Some(v) => v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::bad_request(
                "invalid query parameter `after`: a sequence number this server returned",
            )
        })?,
    };
    let limit = match q.get("limit") {
        None => 1000,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| ApiError::bad_request("invalid query parameter `limit`: 1 to 10000"))?,
    };
    let page = st.lifecycle.session_events(&id, &sid, after, limit).await?;
    Ok(ok(StatusCode::OK, page))
}

pub async fn inputs(
    State(st): State<AppState>,
    Path((id, sid)): Path<(String, String)>,
    JsonBody(req): JsonBody<InputRequest>,
) -> ApiResult<Response> {
    row(&st, &id).await?;
    if req.input_id.is_empty() || req.input_id.len() > 256 {
        return Err(ApiError::bad_request(
            "invalid field `input_id`: 1 to 256 bytes",
        ));
    }
    let r = st.lifecycle.session_input(&id, &sid, req).await?;
    Ok(ok(StatusCode::ACCEPTED, r))
}
