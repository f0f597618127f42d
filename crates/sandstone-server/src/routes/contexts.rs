//! Process contexts: `/api/v1/sandboxes/{id}/contexts...`.

use crate::AppState;
use crate::error::{ApiError, ApiResult, ok};
use crate::extract::JsonBody;
use crate::initclient::{InitConn, InitError};
use crate::lifecycle::{Runtime, random_hex};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use sandstone_api as api;
use sandstone_api::timefmt::rfc3339_ms;
use sandstone_init::proto::{
    ExitInfo, ProcInfo, ProcKind, PtySize, Request, Response as Init, Stream,
};
use serde_json::json;

/// The runtime of the sandbox (resumed first when paused with
/// auto_resume), or a clear 404/409.
pub async fn running(st: &AppState, id: &str) -> ApiResult<Runtime> {
    Ok(st.lifecycle.ensure_running(id).await?)
}

fn state_of(exit: &ExitInfo) -> &'static str {
    if exit.timed_out {
        "timed_out"
    } else if exit.signal.is_some() {
        "killed"
    } else {
        "exited"
    }
}

fn context_response(p: &ProcInfo) -> api::ContextResponse {
    let (kind, alias, state) = match &p.kind {
        // An SSH session's file transfer shows as the command it is.
        ProcKind::Cmd { .. } | ProcKind::Sftp => ("cmd", None, None),
        ProcKind::Repl { language } => ("repl", Some(language.clone()), None::<String>),
    };
    api::ContextResponse {
        id: p.id.clone(),
        kind: kind.into(),
        alias,
        running: p.running,
        paused: false,
        created_at: rfc3339_ms(p.created_at as i64),
        cwd: p.cwd.clone(),
        env_vars: p.env.clone(),
        exit_code: p.exit.as_ref().and_then(|e| e.exit_code),
        signal: p.exit.as_ref().and_then(|e| e.signal),
        state: state.or_else(|| Some(p.exit.as_ref().map_or("running", state_of).to_string())),
        ..Default::default()
    }
}

fn kind_of(req: &api::CreateContextRequest) -> ApiResult<ProcKind> {
    match req.kind.as_str() {
        "cmd" => {
            let argv = req
                .cmd
                .as_ref()
                .map(|c| c.command.clone())
                .unwrap_or_default();
            if argv.is_empty() || argv[0].is_empty() {
                return Err(ApiError::bad_request(
                    "invalid field `cmd.command`: a non-empty argv array is required",
                ));
            }
            if argv.iter().any(|a| a.contains('\0')) {
                return Err(ApiError::bad_request(
                    "invalid field `cmd.command`: arguments cannot contain NUL",
                ));
            }
            Ok(ProcKind::Cmd { argv })
        }
        "repl" => {
            let spec = req.repl.as_ref();
            if let Some(field) = [
                ("input", spec.is_some_and(|r| r.input.is_some())),
                ("repl_config", spec.is_some_and(|r| r.repl_config.is_some())),
            ]
            .into_iter()
            .find_map(|(f, set)| set.then_some(f))
            {
                return Err(ApiError::bad_request(format!(
                    "invalid field `repl.{field}`: not supported by Sandstone yet (the built-in python and bash REPLs)"
                )));
            }
            if req.wait_until_done {
                return Err(ApiError::bad_request(
                    "invalid field `wait_until_done`: a REPL context runs until deleted; send it input through the context's WebSocket or input call",
                ));
            }
            let language = req
                .repl
                .as_ref()
                .and_then(|r| r.alias.clone())
                .unwrap_or_else(|| "python".into());
            if !matches!(
                language.as_str(),
                "python" | "python3" | "bash" | "shell" | "sh"
            ) {
                return Err(ApiError::bad_request(format!(
                    "invalid field `repl.alias`: {language:?} is not supported (python or bash)"
                )));
            }
            Ok(ProcKind::Repl { language })
        }
        other => Err(ApiError::bad_request(format!(
            "invalid field `type`: {other:?} (cmd or repl)"
        ))),
    }
}

/// The most a synchronous run's output may take in the JSON response,
/// counted as rendered (a NUL byte is six: `\u0000`); the rest is dropped
/// and the response says so, so a chatty command cannot grow the daemon or
/// its response.
const MAX_RENDERED: usize = 16 << 20;

/// Collected output of a synchronous run, each byte kept once: the
/// streams apart (`stdout`, `stderr`) for pipes, or as they came
/// (`output_raw`) for a PTY and a REPL.
struct Collected {
    raw: Vec<u8>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    split: bool,
    /// Rendered bytes still allowed.
    room: usize,
    truncated: bool,
}

/// How many leading bytes of `bytes` fit in `room` rendered bytes, and
/// what they take. Counted as serde_json writes a string: `"`, `\` and
/// the short escapes take 2, other control characters 6, and a byte that
/// is not valid UTF-8 (as far as this chunk shows) 3, as U+FFFD.
fn fitting(bytes: &[u8], room: usize) -> (usize, usize) {
    let (mut n, mut used) = (0, 0);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            let cost = match c {
                '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
                '\0'..='\u{1f}' => 6,
                c => c.len_utf8(),
            };
            if used + cost > room {
                return (n, used);
            }
            used += cost;
            n += c.len_utf8();
        }
        for _ in chunk.invalid() {
            if used + 3 > room {
                return (n, used);
            }
            used += 3;
            n += 1;
        }
    }
    (n, used)
}

impl Collected {
    fn new(split: bool) -> Self {
        Collected {
            raw: Vec::new(),
            stdout: Vec::new(),
            stderr: Vec::new(),
            split,
            room: MAX_RENDERED,
            truncated: false,
        }
    }

    /// Keeps what fits; once something did not, nothing after it either,
    /// so what is kept is always a prefix of the output.
    fn push(&mut self, stream: Stream, bytes: &[u8]) {
        if self.truncated {
            return;
        }
        let (n, used) = fitting(bytes, self.room);
        self.room -= used;
        self.truncated = n < bytes.len();
        let into = match (self.split, stream) {
            (false, _) => &mut self.raw,
            (true, Stream::Stderr) => &mut self.stderr,
            (true, _) => &mut self.stdout,
        };
        into.extend_from_slice(&bytes[..n]);
    }
}

/// The bytes as text, in place when they are valid UTF-8.
fn into_text(b: Vec<u8>) -> String {
    String::from_utf8(b).unwrap_or_else(|e| text(e.as_bytes()))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Sends `req` and gathers output frames until the terminal frame.
async fn run_collect(
    rt: &Runtime,
    req: &Request,
    mut out: Collected,
) -> ApiResult<(Init, Collected)> {
    let mut conn = rt.socket.connect().await.map_err(InitError::Unreachable)?;
    conn.send(req, &[]).await.map_err(InitError::Unreachable)?;
    loop {
        match conn.recv().await.map_err(InitError::Unreachable)? {
            (Init::Output { stream }, bytes) => out.push(stream, &bytes),
            (Init::Truncated { .. }, _) => out.truncated = true,
            (Init::Error { code, message }, _) => {
                rt.socket.keep(conn);
                return Err(InitError::Refused { code, message }.into());
            }
            (terminal, _) => {
                rt.socket.keep(conn);
                return Ok((terminal, out));
            }
        }
    }
}

pub async fn create(
    State(st): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<api::CreateContextRequest>,
) -> ApiResult<Response> {
    let kind = kind_of(&req)?;
    crate::limits::env_vars("env_vars", &req.env_vars)?;
    if req.idle_timeout_sec.is_some_and(|s| s > 0) {
        return Err(ApiError::bad_request(
            "invalid field `idle_timeout_sec`: not supported by Sandstone yet (ttl_sec bounds a context's life)",
        ));
    }
    // An hour bounds how long a client that never attaches can make a
    // process wait for it.
    if req.hold_output_sec.is_some_and(|s| s > 3600) {
        return Err(ApiError::bad_request(
            "invalid field `hold_output_sec`: at most 3600",
        ));
    }
    let rt = running(&st, &id).await?;
    let ctx_id = format!("ctx-{}", random_hex(6));
    let started = std::time::Instant::now();
    let attach = req.wait_until_done && matches!(kind, ProcKind::Cmd { .. });
    let pty = req.pty_size.is_some();
    let spawn = Request::Spawn {
        id: ctx_id.clone(),
        kind,
        cwd: req.cwd.clone(),
        // The sandbox's env_vars, overridden by the context's.
        env: rt
            .env
            .iter()
            .chain(&req.env_vars)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        pty: req.pty_size.map(|s| PtySize {
            rows: s.rows,
            cols: s.cols,
        }),
        attach,
        restart: None,
        timeout_ms: req
            .timeout_sec
            .or(req.ttl_sec.filter(|s| *s > 0))
            .map(|s| s.saturating_mul(1000)),
        hold_ms: req.hold_output_sec.map(|s| s * 1000),
    };
    if !attach {
        let (resp, _) = rt.socket.call(&spawn, &[]).await?;
        let Init::Proc { info } = resp else {
            return Err(ApiError::internal("unexpected answer to spawn"));
        };
        st.metrics
            .observe("context", started.elapsed().as_secs_f64() * 1000.0);
        return Ok(ok(StatusCode::CREATED, context_response(&info)));
    }
    let oom_before = rt.oom.read();
    let (terminal, out) = run_collect(&rt, &spawn, Collected::new(!pty)).await?;
    let Init::Exit { info: exit, proc } = terminal else {
        return Err(ApiError::internal("unexpected answer to a synchronous run"));
    };
    let oom_killed = rt.oom.read() > oom_before;
    st.metrics
        .observe("exec", started.elapsed().as_secs_f64() * 1000.0);
    // An init started by an older daemon answers without the context.
    let info = match proc {
        Some(info) => *info,
        None => get_info(&rt, &ctx_id).await?,
    };
    let mut resp = context_response(&info);
    // Sandbox0's fields: `output_raw` is a PTY's output, `stdout` and
    // `stderr` a pipe's; each byte is sent once.
    if pty {
        resp.output_raw = Some(into_text(out.raw));
    } else {
        resp.stdout = Some(into_text(out.stdout));
        resp.stderr = Some(into_text(out.stderr));
    }
    resp.exit_code = exit.exit_code;
    resp.signal = exit.signal;
    resp.oom_killed = oom_killed;
    resp.output_truncated = out.truncated;
    resp.state = Some(
        if oom_killed {
            "oom_killed"
        } else {
            state_of(&exit)
        }
        .into(),
    );
    resp.running = false;
    Ok(ok(StatusCode::CREATED, resp))
}

async fn get_info(rt: &Runtime, ctx: &str) -> ApiResult<ProcInfo> {
    match rt
        .socket
        .call(&Request::Get { id: ctx.into() }, &[])
        .await?
    {
        (Init::Proc { info }, _) => Ok(info),
        _ => Err(ApiError::internal("unexpected answer to get")),
    }
}

pub async fn list(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let rt = running(&st, &id).await?;
    let (resp, _) = rt.socket.call(&Request::List, &[]).await?;
    let Init::Procs { procs } = resp else {
        return Err(ApiError::internal("unexpected answer to list"));
    };
    let contexts = procs.iter().map(context_response).collect();
    Ok(ok(StatusCode::OK, api::ContextList { contexts }))
}

pub async fn get(
    State(st): State<AppState>,
    Path((id, ctx)): Path<(String, String)>,
) -> ApiResult<Response> {
    let rt = running(&st, &id).await?;
    let info = get_info(&rt, &ctx).await?;
    Ok(ok(StatusCode::OK, context_response(&info)))
}

pub async fn delete(
    State(st): State<AppState>,
    Path((id, ctx)): Path<(String, String)>,
) -> ApiResult<Response> {
    let rt = running(&st, &id).await?;
    rt.socket.call(&Request::Remove { id: ctx }, &[]).await?;
    Ok(ok(StatusCode::OK, json!({"deleted": true})))
}

pub async fn restart(
    State(st): State<AppState>,
    Path((id, ctx)): Path<(String, String)>,
) -> ApiResult<Response> {
    let rt = running(&st, &id).await?;
    match rt.socket.call(&Request::Restart { id: ctx }, &[]).await? {
        (Init::Proc { info }, _) => Ok(ok(StatusCode::OK, context_response(&info))),
        _ => Err(ApiError::internal("unexpected answer to restart")),
    }
}

pub async fn exec(
    State(st): State<AppState>,
    Path((id, ctx)): Path<(String, String)>,
    JsonBody(req): JsonBody<api::ExecRequest>,
) -> ApiResult<Response> {
    if req.data.contains('\0') {
        return Err(ApiError::bad_request(
            "invalid field `data`: NUL bytes are not allowed",
        ));
    }
    let rt = running(&st, &id).await?;
    let started = std::time::Instant::now();
    let exec = Request::Exec {
        id: ctx,
        code: req.data,
        timeout_ms: req.timeout_sec.map(|s| s.saturating_mul(1000)),
    };
    // A REPL's output is what its caller reads as `output_raw` (the
    // Sandbox0 SDK's `run`), both streams as they came.
    let (terminal, out) = run_collect(&rt, &exec, Collected::new(false)).await?;
    let Init::ExecDone {
        exit_code,
        timed_out,
    } = terminal
    else {
        return Err(ApiError::internal("unexpected answer to exec"));
    };
    st.metrics
        .observe("exec", started.elapsed().as_secs_f64() * 1000.0);
    Ok(ok(
        StatusCode::OK,
        api::ExecResponse {
            output_raw: into_text(out.raw),
            exit_code,
            state: if timed_out { "timed_out" } else { "completed" }.into(),
            output_truncated: out.truncated,
        },
    ))
}

pub async fn input(
    State(st): State<AppState>,
    Path((id, ctx)): Path<(String, String)>,
    JsonBody(req): JsonBody<api::InputRequest>,
) -> ApiResult<Response> {
    let rt = running(&st, &id).await?;
    rt.socket
        .call(&Request::Input { id: ctx }, req.data.as_bytes())
        .await?;
    Ok(ok(StatusCode::OK, json!({"written": true})))
}

/// `INT`, `SIGINT`, `2` → signal number.
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = s.trim_start_matches("SIG");
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "WINCH" => libc::SIGWINCH,
        _ => return None,
    })
}

pub async fn signal(
    State(st): State<AppState>,
    Path((id, ctx)): Path<(String, String)>,
    JsonBody(req): JsonBody<api::SignalRequest>,
) -> ApiResult<Response> {
    let sig = parse_signal(&req.signal).ok_or_else(|| {
        ApiError::bad_request(format!(
            "invalid field `signal`: {:?} is not a signal",
            req.signal
        ))
    })?;
    let rt = running(&st, &id).await?;
    rt.socket
        .call(
            &Request::Signal {
                id: ctx,
                signal: sig,
            },
            &[],
        )
        .await?;
    Ok(ok(StatusCode::OK, json!({"signaled": true})))
}

pub async fn resize(
    State(st): State<AppState>,
    Path((id, ctx)): Path<(String, String)>,
    JsonBody(size): JsonBody<api::PtySize>,
) -> ApiResult<Response> {
    if size.rows == 0 || size.cols == 0 {
        return Err(ApiError::bad_request(
            "invalid field `rows`/`cols`: must be positive",
        ));
    }
    let rt = running(&st, &id).await?;
    let req = Request::Resize {
        id: ctx,
        size: PtySize {
            rows: size.rows,
            cols: size.cols,
        },
    };
    rt.socket.call(&req, &[]).await?;
    Ok(ok(StatusCode::OK, json!({"resized": true})))
}

/// WebSocket: replays and streams a context's output; accepts input,
/// resize and signal frames.
pub async fn ws(
    State(st): State<AppState>,
    Path((id, ctx)): Path<(String, String)>,
    axum::Extension(by): axum::Extension<crate::Caller>,
    upgrade: WebSocketUpgrade,
) -> ApiResult<Response> {
    let rt = running(&st, &id).await?;
    let mut conn = rt.socket.connect().await.map_err(InitError::Unreachable)?;
    conn.send(&Request::Attach { id: ctx.clone() }, &[])
        .await
        .map_err(InitError::Unreachable)?;
    Ok(crate::routes::accept_ws(&st, &by, upgrade, move |socket| {
        pump_ws(socket, conn, rt, ctx)
    }))
}

/// Bytes at the end of `b` that begin a UTF-8 character they do not
/// finish.
fn incomplete_tail(b: &[u8]) -> usize {
    for back in 1..=b.len().min(3) {
        let byte = b[b.len() - back];
        if byte & 0xC0 != 0x80 {
            let len = match byte {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF7 => 4,
                _ => 1,
            };
            return if len > back { back } else { 0 };
        }
    }
    0
}

/// A stream's output as text messages: a character split across two
/// chunks waits for its end instead of becoming two U+FFFD.
#[derive(Default)]
struct Utf8Stream {
    carry: Vec<u8>,
}

impl Utf8Stream {
    fn decode(&mut self, bytes: &[u8]) -> String {
        self.carry.extend_from_slice(bytes);
        let rest = self
            .carry
            .split_off(self.carry.len() - incomplete_tail(&self.carry));
        into_text(std::mem::replace(&mut self.carry, rest))
    }
}

fn source_name(stream: Stream) -> &'static str {
    match stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
        Stream::Pty => "pty",
    }
}

async fn pump_ws(mut socket: WebSocket, mut conn: InitConn, rt: Runtime, ctx: String) {
    let mut streams: [(Stream, Utf8Stream); 3] =
        [Stream::Stdout, Stream::Stderr, Stream::Pty].map(|s| (s, Utf8Stream::default()));
    loop {
        tokio::select! {
            frame = conn.recv() => {
                let msg = match frame {
                    Ok((Init::Output { stream }, bytes)) => {
                        let Some((_, utf8)) = streams.iter_mut().find(|(s, _)| *s == stream) else { continue };
                        json!({"type": "output", "source": source_name(stream), "data": utf8.decode(&bytes)})
                    }
                    Ok((Init::Truncated { dropped_bytes }, _)) => json!({"type": "truncated", "dropped_bytes": dropped_bytes}),
                    Ok((Init::Exit { info, .. }, _)) => {
                        for (stream, utf8) in &mut streams {
                            if !utf8.carry.is_empty() {
                                let rest = json!({"type": "output", "source": source_name(*stream), "data": text(&std::mem::take(&mut utf8.carry))});
                                let _ = socket.send(Message::Text(rest.to_string().into())).await;
                            }
                        }
                        let done = json!({"type": "done", "exit_code": info.exit_code, "state": state_of(&info)});
                        let _ = socket.send(Message::Text(done.to_string().into())).await;
                        let _ = socket.send(Message::Close(None)).await;
                        return;
                    }
                    Ok((Init::Error { message, .. }, _)) => json!({"type": "error", "error": message}),
                    _ => return,
                };
                if socket.send(Message::Text(msg.to_string().into())).await.is_err() {
                    return;
                }
            }
            incoming = socket.recv() => {
                let Some(Ok(Message::Text(t))) = incoming else {
                    if matches!(incoming, Some(Ok(_))) { continue; }
                    return;
                };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) else { continue };
                let req = match v["type"].as_str() {
                    Some("input") => Some((Request::Input { id: ctx.clone() }, v["data"].as_str().unwrap_or("").as_bytes().to_vec())),
                    Some("resize") => Some((Request::Resize { id: ctx.clone(), size: PtySize {
                        rows: v["rows"].as_u64().unwrap_or(24) as u16, cols: v["cols"].as_u64().unwrap_or(80) as u16 } }, vec![])),
                    Some("signal") => v["signal"].as_str().and_then(parse_signal)
                        .map(|signal| (Request::Signal { id: ctx.clone(), signal }, vec![])),
                    _ => None,
                };
                if let Some((req, payload)) = req
                    && let Err(e) = rt.socket.call(&req, &payload).await {
                        let err = json!({"type": "error", "error": e.to_string()});
                        let _ = socket.send(Message::Text(err.to_string().into())).await;
                    }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_counts_what_json_renders() {
        // NUL renders as \u0000, a quote as \", a valid é as itself, a
        // stray continuation byte as U+FFFD.
        assert_eq!(fitting(b"\0\0\0", 13), (2, 12));
        assert_eq!(fitting(b"a\"b", 3), (2, 3));
        assert_eq!(fitting("é".as_bytes(), 2), (2, 2));
        assert_eq!(fitting(b"\x80x", 4), (2, 4));
        let mut c = Collected::new(true);
        c.room = 10;
        c.push(Stream::Stdout, b"12345");
        c.push(Stream::Stderr, b"\0");
        c.push(Stream::Stdout, b"6");
        assert!(c.truncated, "the NUL did not fit");
        assert_eq!(
            (c.stdout.as_slice(), c.stderr.as_slice()),
            (&b"12345"[..], &b""[..])
        );
        let rendered = serde_json::to_string(&into_text(vec![0u8; 100])).unwrap();
        assert_eq!(fitting(&[0u8; 100], usize::MAX).1 + 2, rendered.len());
    }

    #[test]
    fn a_character_split_across_chunks_arrives_whole() {
        let euro = "€".as_bytes();
        let mut s = Utf8Stream::default();
        assert_eq!(s.decode(&[b'a', euro[0]]), "a");
        assert_eq!(s.decode(&euro[1..2]), "");
        assert_eq!(s.decode(&[euro[2], b'b']), "€b");
        assert_eq!(s.decode(b"\xffz"), "\u{fffd}z");
    }
}
