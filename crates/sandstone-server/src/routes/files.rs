//! Files: `/api/v1/sandboxes/{id}/files...`. Paths resolve inside the
//! sandbox (init does the I/O after pivot_root); relative paths are relative
//! to /workspace.

use crate::AppState;
use crate::error::{ApiError, ApiResult, ok};
use crate::extract::JsonBody;
use crate::initclient::{self, InitConn, InitError, InitSocket};
use crate::lifecycle::random_hex;
use crate::routes::contexts::running;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use sandstone_api as api;
use sandstone_api::timefmt::rfc3339_ms;
use sandstone_init::proto::{FileInfo, Request, Response as Init};
use serde_json::json;
use std::collections::HashMap;

const MAX_PATH: usize = 4096;

/// Validates a path parameter and makes it absolute (a relative one is
/// under /workspace).
pub fn sandbox_path(field: &str, raw: Option<&String>) -> ApiResult<String> {
    let p = checked_path(field, raw)?;
    Ok(if p.starts_with('/') {
        p.clone()
    } else {
        format!("/workspace/{p}")
    })
}

/// A path parameter of a volume's files: relative to the volume's root,
/// as an absolute one is.
pub fn volume_path(field: &str, raw: Option<&String>) -> ApiResult<String> {
    let p = checked_path(field, raw)?;
    Ok(if p.starts_with('/') {
        p.clone()
    } else {
        format!("/{p}")
    })
}

fn checked_path<'a>(field: &str, raw: Option<&'a String>) -> ApiResult<&'a String> {
    let p = raw.ok_or_else(|| ApiError::bad_request(format!("missing `{field}`")))?;
    if p.is_empty() {
        return Err(ApiError::bad_request(format!(
            "invalid `{field}`: empty path"
        )));
    }
    if p.len() > MAX_PATH {
        return Err(ApiError::bad_request(format!(
            "invalid `{field}`: longer than {MAX_PATH} bytes"
        )));
    }
    if p.contains('\0') {
        return Err(ApiError::bad_request(format!(
            "invalid `{field}`: contains a NUL byte"
        )));
    }
    Ok(p)
}

/// The validated `path` query parameter and the sandbox's init.
async fn target(
    st: &AppState,
    id: &str,
    q: &HashMap<String, String>,
) -> ApiResult<(String, InitSocket)> {
    let path = sandbox_path("path", q.get("path"))?;
    Ok((path, running(st, id).await?.socket))
}

pub(crate) fn flag(q: &HashMap<String, String>, key: &str) -> bool {
    q.get(key).is_some_and(|v| v == "true" || v == "1")
}

fn to_api(f: &FileInfo) -> api::FileInfo {
    api::FileInfo {
        name: f.name.clone(),
        path: f.path.clone(),
        kind: f.kind,
        size: f.size,
        mode: format!("{:04o}", f.mode),
        mod_time: rfc3339_ms(f.modified * 1000),
        is_link: f.kind == api::FileKind::Symlink,
        link_target: f.link_target.clone(),
    }
}

/// The most a file read answered as base64 JSON may be: the reply is held
/// whole (4/3 of it), where a binary read streams.
const MAX_JSON_READ: usize = 32 << 20;

/// Whether the caller asked for the base64 JSON reply (the spec: `Accept`
/// or `Content-Type` is `application/json`).
pub(crate) fn wants_json(headers: &axum::http::HeaderMap) -> bool {
    [header::ACCEPT, header::CONTENT_TYPE].iter().any(|h| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/json"))
    })
}

fn json_content(bytes: &[u8]) -> Response {
    use base64::Engine as _;
    ok(
        StatusCode::OK,
        api::FileContent {
            content: base64::engine::general_purpose::STANDARD.encode(bytes),
            encoding: api::FileEncoding::Base64,
        },
    )
}

pub async fn read(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    let (path, socket) = target(&st, &id, &q).await?;
    read_at(&st, &socket, path, wants_json(&headers)).await
}

/// A file's bytes, streamed, or base64 in JSON when `json`.
pub(crate) async fn read_at(
    st: &AppState,
    socket: &InitSocket,
    path: String,
    json: bool,
) -> ApiResult<Response> {
    let started = std::time::Instant::now();
    let mut conn = socket.connect().await.map_err(InitError::Unreachable)?;
    conn.send(&Request::ReadFile { path }, &[])
        .await
        .map_err(InitError::Unreachable)?;
    // The first frame decides the status (a missing file is a 404); the
    // rest streams, a chunk at a time, so neither init nor the daemon holds
    // the file.
    let first = match conn.recv().await.map_err(InitError::Unreachable)? {
        (Init::Error { code, message }, _) => {
            return Err(InitError::Refused { code, message }.into());
        }
        (Init::Chunk, bytes) => Some(Bytes::from(bytes)),
        (Init::Data, bytes) => {
            st.metrics
                .observe("file_read", started.elapsed().as_secs_f64() * 1000.0);
            if json {
                return Ok(json_content(&bytes));
            }
            return Ok(
                ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
            );
        }
        _ => return Err(ApiError::internal("unexpected answer to a file read")),
    };
    st.metrics
        .observe("file_read", started.elapsed().as_secs_f64() * 1000.0);
    if json {
        let mut all = first.map(Vec::from).unwrap_or_default();
        loop {
            match conn.recv().await.map_err(InitError::Unreachable)? {
                (Init::Chunk, bytes) => all.extend_from_slice(&bytes),
                (Init::Data, _) => return Ok(json_content(&all)),
                (Init::Error { code, message }, _) => {
                    return Err(InitError::Refused { code, message }.into());
                }
                _ => return Err(ApiError::internal("unexpected frame in a file read")),
            }
            if all.len() > MAX_JSON_READ {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "file_too_large",
                    format!(
                        "the file is over {} MiB: read it as application/octet-stream",
                        MAX_JSON_READ >> 20
                    ),
                ));
            }
        }
    }
    let rest = futures_util::stream::unfold((conn, first), |(mut conn, pending)| async move {
        if let Some(b) = pending {
            return Some((Ok(b), (conn, None)));
        }
        match conn.recv().await {
            Ok((Init::Chunk, bytes)) => Some((Ok(Bytes::from(bytes)), (conn, None))),
            Ok((Init::Data, _)) => None,
            // A failure after the status went out can only cut the body
            // short: the client sees an incomplete transfer, never a
            // silently shorter file.
            Ok((Init::Error { message, .. }, _)) => {
                Some((Err(std::io::Error::other(message)), (conn, None)))
            }
            Ok(_) => Some((
                Err(std::io::Error::other("unexpected frame in a file read")),
                (conn, None),
            )),
            Err(e) => Some((Err(e), (conn, None))),
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        axum::body::Body::from_stream(rest),
    )
        .into_response())
}

/// The most of an upload the daemon gathers before passing it to init.
const WRITE_CHUNK: usize = 4 << 20;

pub async fn write(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: axum::body::Body,
) -> ApiResult<Response> {
    let (path, socket) = target(&st, &id, &q).await?;
    write_at(&st, &socket, path, &q, body).await
}

/// Writes a file (or with `mkdir`, makes a directory) at `path`.
pub(crate) async fn write_at(
    st: &AppState,
    socket: &InitSocket,
    path: String,
    q: &HashMap<String, String>,
    body: axum::body::Body,
) -> ApiResult<Response> {
    st.lifecycle.check_free_space()?;
    if flag(q, "mkdir") {
        let req = Request::Mkdir {
            path,
            recursive: flag(q, "recursive"),
        };
        socket.call(&req, &[]).await?;
        return Ok(ok(StatusCode::CREATED, json!({"created": true})));
    }
    let mode = match q.get("mode") {
        None => None,
        Some(m) => Some(
            u32::from_str_radix(m, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "invalid query parameter `mode`: {m:?} is not an octal mode"
                    ))
                })?,
        ),
    };
    let started = std::time::Instant::now();
    write_in_chunks(socket, path, mode, body).await?;
    st.metrics
        .observe("file_write", started.elapsed().as_secs_f64() * 1000.0);
    Ok(ok(StatusCode::OK, json!({"written": true})))
}

/// Passes an upload to init in pieces of at most [`WRITE_CHUNK`] bytes as it
/// arrives, so neither the daemon nor init holds the whole file. One that
/// fits in a piece is written in one request; a larger one goes to a
/// temporary file beside the target, renamed over it only once complete, so
/// a failed or abandoned upload leaves the old file as it was.
pub(crate) async fn write_in_chunks(
    socket: &InitSocket,
    path: String,
    mode: Option<u32>,
    body: axum::body::Body,
) -> ApiResult<()> {
    let mut conn = socket.connect().await.map_err(InitError::Unreachable)?;
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut end = fill(&mut stream, &mut buf).await?;
    if end {
        return write_piece(&mut conn, &path, mode, false, &buf).await;
    }
    let temp = TempUpload {
        socket: socket.clone(),
        path: Some(format!("{path}.sandstone-upload-{}", random_hex(6))),
    };
    let tmp = temp.path.clone().unwrap_or_default();
    let mut append = false;
    loop {
        while buf.len() >= WRITE_CHUNK || (end && !buf.is_empty()) {
            let n = buf.len().min(WRITE_CHUNK);
            write_piece(&mut conn, &tmp, mode, append, &buf[..n]).await?;
            buf.drain(..n);
            append = true;
        }
        if end {
            break;
        }
        end = fill(&mut stream, &mut buf).await?;
    }
    let req = Request::Move {
        from: tmp,
        to: path,
    };
    conn.send(&req, &[]).await.map_err(InitError::Unreachable)?;
    expect_ok(&mut conn, "a file move").await?;
    temp.keep();
    Ok(())
}

/// Reads the body into `buf` until it holds a whole piece; true at its end.
async fn fill(stream: &mut axum::body::BodyDataStream, buf: &mut Vec<u8>) -> ApiResult<bool> {
    use futures_util::StreamExt;
    while buf.len() < WRITE_CHUNK {
        match stream.next().await {
            None => return Ok(true),
            Some(piece) => buf
                .extend_from_slice(&piece.map_err(|e| {
                    ApiError::bad_request(format!("reading the request body: {e}"))
                })?),
        }
    }
    Ok(false)
}

async fn write_piece(
    conn: &mut InitConn,
    path: &str,
    mode: Option<u32>,
    append: bool,
    bytes: &[u8],
) -> ApiResult<()> {
    let req = Request::WriteFile {
        path: path.to_string(),
        mode,
        append,
    };
    conn.send(&req, bytes)
        .await
        .map_err(InitError::Unreachable)?;
    expect_ok(conn, "a file write").await
}

async fn expect_ok(conn: &mut InitConn, what: &str) -> ApiResult<()> {
    match conn.recv().await.map_err(InitError::Unreachable)? {
        (Init::Ok, _) => Ok(()),
        (Init::Error { code, message }, _) => Err(InitError::Refused { code, message }.into()),
        _ => Err(ApiError::internal(format!("unexpected answer to {what}"))),
    }
}

/// A temporary upload removed when dropped unless kept: the handler may end
/// at any await (a client gone mid-body drops it), so the removal is
/// spawned from `Drop` rather than awaited on the error paths.
struct TempUpload {
    socket: crate::initclient::InitSocket,
    path: Option<String>,
}

impl TempUpload {
    fn keep(mut self) {
        self.path = None;
    }
}

impl Drop for TempUpload {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let socket = self.socket.clone();
            tokio::spawn(async move {
                let _ = socket.call(&Request::RemovePath { path }, &[]).await;
            });
        }
    }
}

pub async fn remove(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let (path, socket) = target(&st, &id, &q).await?;
    remove_at(&socket, path).await
}

pub(crate) async fn remove_at(socket: &InitSocket, path: String) -> ApiResult<Response> {
    socket.call(&Request::RemovePath { path }, &[]).await?;
    Ok(ok(StatusCode::OK, json!({"deleted": true})))
}

pub async fn stat(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let (path, socket) = target(&st, &id, &q).await?;
    stat_at(&socket, path).await
}

pub(crate) async fn stat_at(socket: &InitSocket, path: String) -> ApiResult<Response> {
    match socket.call(&Request::Stat { path }, &[]).await? {
        (Init::Stat { info }, _) => Ok(ok(StatusCode::OK, to_api(&info))),
        _ => Err(ApiError::internal("unexpected answer to stat")),
    }
}

pub async fn list(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let (path, socket) = target(&st, &id, &q).await?;
    list_at(&socket, path).await
}

pub(crate) async fn list_at(socket: &InitSocket, path: String) -> ApiResult<Response> {
    match socket.call(&Request::ListDir { path }, &[]).await? {
        (Init::Entries { entries }, _) => Ok(ok(
            StatusCode::OK,
            api::FileList {
                entries: entries.iter().map(to_api).collect(),
            },
        )),
        _ => Err(ApiError::internal("unexpected answer to list")),
    }
}

pub async fn rename(
    State(st): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<api::MoveRequest>,
) -> ApiResult<Response> {
    let from = sandbox_path("source", Some(&req.source))?;
    let to = sandbox_path("destination", Some(&req.destination))?;
    let rt = running(&st, &id).await?;
    move_at(&rt.socket, from, to).await
}

pub(crate) async fn move_at(socket: &InitSocket, from: String, to: String) -> ApiResult<Response> {
    socket.call(&Request::Move { from, to }, &[]).await?;
    Ok(ok(StatusCode::OK, json!({"moved": true})))
}

/// WebSocket file watch: `{"action":"subscribe","path","recursive"}` →
/// `{"type":"subscribed","watch_id"}`, then `{"type":"event",...}` frames.
pub async fn watch(
    State(st): State<AppState>,
    Path(id): Path<String>,
    axum::Extension(by): axum::Extension<crate::Caller>,
    upgrade: WebSocketUpgrade,
) -> ApiResult<Response> {
    let rt = running(&st, &id).await?;
    Ok(crate::routes::accept_ws(&st, &by, upgrade, move |socket| {
        watch_ws(socket, rt.socket.path().to_path_buf())
    }))
}

async fn watch_ws(socket: WebSocket, init_socket: std::path::PathBuf) {
    watch_with(socket, init_socket, sandbox_path).await
}

/// Serves a watch WebSocket whose paths `resolve` makes absolute.
pub(crate) async fn watch_with(
    mut socket: WebSocket,
    init_socket: std::path::PathBuf,
    resolve: fn(&str, Option<&String>) -> ApiResult<String>,
) {
    let Some(Ok(Message::Text(t))) = socket.recv().await else {
        return;
    };
    let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
    let reply_err =
        |e: String| Message::Text(json!({"type": "error", "error": e}).to_string().into());
    let path = match resolve("path", v["path"].as_str().map(str::to_string).as_ref()) {
        Ok(p) if v["action"] == "subscribe" => p,
        Ok(_) => {
            return drop(
                socket
                    .send(reply_err("first message must be a subscribe action".into()))
                    .await,
            );
        }
        Err(e) => return drop(socket.send(reply_err(e.message)).await),
    };
    let watch_id = format!("w-{}", crate::lifecycle::random_hex(4));
    let recursive = v["recursive"].as_bool().unwrap_or(false);
    let mut watch = match initclient::Watch::start(&init_socket, path, recursive).await {
        Ok(w) => w,
        Err(e) => return drop(socket.send(reply_err(e.to_string())).await),
    };
    let subscribed = json!({"type": "subscribed", "watch_id": watch_id});
    if socket
        .send(Message::Text(subscribed.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            ev = watch.next() => match ev {
                Some((event, path)) => {
                    let m = json!({"type": "event", "watch_id": watch_id, "event": event, "path": path});
                    if socket.send(Message::Text(m.to_string().into())).await.is_err() { return; }
                }
                None => return,
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(_))) | Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
