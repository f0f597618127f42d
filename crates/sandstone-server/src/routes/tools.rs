//! The agent toolset: `POST /api/v1/sandboxes/{id}/tools/{name}`.
//!
//! The file tools (`read`, `write`, `edit`, `glob`, `grep`) run in the
//! sandbox's init, where every path resolves inside the sandbox. `bash`
//! runs here on a persistent bash REPL context of init (`agent-bash`), so
//! the shell keeps its cwd, variables and jobs between calls.
//!
//! Whatever the model did wrong (a missing field, a failed command, a path
//! outside the workdir) is a `ToolCallResult` with `is_error`, which the
//! model reads; only the caller's mistakes are HTTP errors.

use crate::AppState;
use crate::error::{ApiError, ApiResult, ok};
use crate::extract::JsonBody;
use crate::initclient::{InitConn, unreachable};
use crate::lifecycle::Runtime;
use crate::routes::contexts::running;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use sandstone_api as api;
use sandstone_init::proto::{ErrorCode, ProcKind, Request, Response as Init};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

const TOOLS: [&str; 6] = ["bash", "read", "write", "edit", "glob", "grep"];
const DEFAULT_WORKDIR: &str = "/workspace";
const MAX_PATH: usize = 4096;

/// The REPL context that is the agent's shell.
const BASH_CONTEXT: &str = "agent-bash";
/// Output kept per command: the last bytes, where errors usually are.
const BASH_OUTPUT_LIMIT: usize = 100 * 1024;
const BASH_DEFAULT_TIMEOUT_MS: u64 = 120_000;
/// The caller (often a model) picks `timeout_ms`; no command holds a
/// sandbox's shell longer than this.
const BASH_MAX_TIMEOUT_MS: u64 = 600_000;
/// How long past its own deadline init may take to report a timed-out
/// command before the daemon gives up on it.
const BASH_TIMEOUT_GRACE: Duration = Duration::from_secs(15);

pub async fn call(
    State(st): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    JsonBody(req): JsonBody<api::ToolCallRequest>,
) -> ApiResult<Response> {
    if !TOOLS.contains(&name.as_str()) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "invalid path parameter `name`: unknown tool {name:?} (bash, read, write, edit, glob or grep)"
            ),
        ));
    }
    let workdir = req
        .workdir
        .clone()
        .unwrap_or_else(|| DEFAULT_WORKDIR.into());
    check_path("workdir", &workdir)?;
    check_paths("allowed_roots", &req.allowed_roots)?;
    check_paths("read_only_roots", &req.read_only_roots)?;
    let rt = running(&st, &id).await?;
    let started = Instant::now();
    let result = if name == "bash" {
        bash(&rt, &id, &workdir, &req.input).await?
    } else {
        file_tool(&rt, &name, workdir, req).await?
    };
    st.metrics.observe(
        &format!("tool_{name}"),
        started.elapsed().as_secs_f64() * 1000.0,
    );
    Ok(ok(StatusCode::OK, result))
}

/// An absolute sandbox path of reasonable length.
fn check_path(field: &str, p: &str) -> ApiResult<()> {
    let problem = if !p.starts_with('/') {
        "must be an absolute path"
    } else if p.len() > MAX_PATH {
        "longer than 4096 bytes"
    } else if p.contains('\0') {
        "contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(ApiError::bad_request(format!(
        "invalid field `{field}`: {problem}"
    )))
}

fn check_paths(field: &str, paths: &[String]) -> ApiResult<()> {
    paths
        .iter()
        .enumerate()
        .try_for_each(|(i, p)| check_path(&format!("{field}[{i}]"), p))
}

async fn file_tool(
    rt: &Runtime,
    name: &str,
    workdir: String,
    req: api::ToolCallRequest,
) -> ApiResult<api::ToolCallResult> {
    let call = Request::Tool {
        name: name.to_string(),
        input: req.input,
        workdir,
        allowed_roots: req.allowed_roots,
        read_only_roots: req.read_only_roots,
    };
    match crate::initclient::call(&rt.socket, &call, &[]).await? {
        (Init::ToolResult { content, is_error }, _) => {
            Ok(api::ToolCallResult { content, is_error })
        }
        _ => Err(ApiError::internal("unexpected answer to a tool call")),
    }
}

fn text_result(text: impl Into<String>, is_error: bool) -> api::ToolCallResult {
    let text = text.into();
    // An empty text reads as the reference runner sends it.
    let text = if text.is_empty() {
        "(no output)".to_string()
    } else {
        text
    };
    api::ToolCallResult {
        content: vec![json!({"type": "text", "text": text})],
        is_error,
    }
}

fn tool_error(text: impl Into<String>) -> api::ToolCallResult {
    text_result(text, true)
}

/// One bash call: `{command, restart?, timeout_ms?}`.
#[derive(Debug, PartialEq)]
struct BashInput {
    command: Option<String>,
    restart: bool,
    timeout_ms: Option<u64>,
}

impl BashInput {
    fn parse(v: &Value) -> Result<BashInput, String> {
        let Some(fields) = v.as_object() else {
            return Err("bash: input must be an object".into());
        };
        let field = |k: &str| fields.get(k).filter(|v| !v.is_null());
        let command = match field("command") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err("bash: command must be a string".into()),
        };
        let restart = match field("restart") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err("bash: restart must be a boolean".into()),
        };
        let timeout_ms = match field("timeout_ms") {
            None => None,
            Some(v) => Some(
                v.as_u64()
                    .ok_or("bash: timeout_ms must be a non-negative integer")?,
            ),
        };
        Ok(BashInput {
            command,
            restart,
            timeout_ms,
        })
    }
}

/// Calls to one sandbox's shell run one at a time: a second command must
/// not be typed into a shell still running the first.
static BASH_LOCKS: LazyLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(Default::default);

fn bash_lock(sandbox: &str) -> Arc<tokio::sync::Mutex<()>> {
    let mut locks = BASH_LOCKS.lock().unwrap();
    // Clones are only made here, so a lock held by the map alone is idle
    // (and its sandbox possibly gone): forget it.
    locks.retain(|_, l| Arc::strong_count(l) > 1);
    locks.entry(sandbox.to_string()).or_default().clone()
}

async fn bash(
    rt: &Runtime,
    sandbox: &str,
    workdir: &str,
    input: &Value,
) -> ApiResult<api::ToolCallResult> {
    let input = match BashInput::parse(input) {
        Ok(i) => i,
        Err(message) => return Ok(tool_error(message)),
    };
    let lock = bash_lock(sandbox);
    if input.restart {
        // Kill first: a command still running holds the turn, and ending
        // it is what a restart is for. Removed again under the turn in
        // case a call started a shell in between.
        remove_shell(rt).await?;
        let _turn = lock.lock().await;
        remove_shell(rt).await?;
        return Ok(match start_shell(rt, workdir).await? {
            Ok(()) => text_result("bash session restarted", false),
            Err(message) => tool_error(message),
        });
    }
    let mut turn = Turn {
        socket: rt.socket.clone(),
        held: Some(lock.lock_owned().await),
        running: false,
    };
    let Some(command) = input.command.filter(|c| !c.is_empty()) else {
        return Ok(tool_error("bash: command is required"));
    };
    if command.contains('\0') {
        return Ok(tool_error("bash: command must not contain NUL bytes"));
    }
    if let Err(message) = ensure_shell(rt, workdir).await? {
        return Ok(tool_error(message));
    }
    let timeout_ms = input
        .timeout_ms
        .filter(|&ms| ms > 0)
        .unwrap_or(BASH_DEFAULT_TIMEOUT_MS)
        .min(BASH_MAX_TIMEOUT_MS);
    turn.running = true;
    let run = run_command(rt, &command, timeout_ms).await?;
    turn.running = false;
    let run = match run {
        Ok(run) => run,
        Err(message) => return Ok(tool_error(format!("bash: {message}"))),
    };
    if run.timed_out {
        // Init killed the interpreter; the next call starts a fresh one.
        remove_shell(rt).await?;
        let secs = timeout_ms as f64 / 1000.0;
        // `{:?}` prints 120.0 and 0.5 as Python's float formatting does.
        return Ok(tool_error(format!(
            "bash: bash command timed out after {secs:?}s"
        )));
    }
    Ok(text_result(run.output.render(), run.exit_code != Some(0)))
}

/// A request whose refusal by init is for the model to read (`Err`), while
/// losing init is the caller's error.
async fn ask(rt: &Runtime, req: &Request) -> ApiResult<Result<Init, (ErrorCode, String)>> {
    let mut conn = InitConn::connect(&rt.socket).await.map_err(unreachable)?;
    conn.send(req, &[]).await.map_err(unreachable)?;
    loop {
        match conn.recv().await.map_err(unreachable)? {
            (Init::Error { code, message }, _) => return Ok(Err((code, message))),
            (r, _) if r.is_terminal() => return Ok(Ok(r)),
            _ => {}
        }
    }
}

/// Starts the shell unless it is running; one that exited (`exit`, a
/// killed interpreter) is replaced.
async fn ensure_shell(rt: &Runtime, workdir: &str) -> ApiResult<Result<(), String>> {
    let get = Request::Get {
        id: BASH_CONTEXT.into(),
    };
    match ask(rt, &get).await? {
        Ok(Init::Proc { info }) if info.running => return Ok(Ok(())),
        Ok(_) => remove_shell(rt).await?,
        Err(_) => {}
    }
    start_shell(rt, workdir).await
}

async fn start_shell(rt: &Runtime, workdir: &str) -> ApiResult<Result<(), String>> {
    // Checked first: init would report a missing cwd as a missing `bash`.
    if let Err(reason) = check_workdir(rt, workdir).await? {
        return Ok(Err(format!("bash: {workdir}: {reason}")));
    }
    let mut env = rt.env.clone();
    // Programs that honour it print no colours or cursor movement.
    env.insert("TERM".into(), "dumb".into());
    let spawn = Request::Spawn {
        id: BASH_CONTEXT.into(),
        kind: ProcKind::Repl {
            language: "bash".into(),
        },
        cwd: Some(workdir.to_string()),
        env,
        pty: None,
        attach: false,
        timeout_ms: None,
    };
    Ok(ask(rt, &spawn)
        .await?
        .map(drop)
        .map_err(|(_, e)| format!("bash: cannot start a shell in {workdir}: {e}")))
}

/// Why the shell cannot start in `workdir`, worded as the file tools word it.
async fn check_workdir(rt: &Runtime, workdir: &str) -> ApiResult<Result<(), &'static str>> {
    let stat = Request::Stat {
        path: workdir.into(),
    };
    Ok(match ask(rt, &stat).await? {
        Ok(Init::Stat { info }) if info.kind == "dir" => Ok(()),
        // A symlink to a directory is as good as one.
        Ok(Init::Stat { info }) if info.kind == "symlink" => Ok(()),
        Ok(_) | Err((ErrorCode::NotADirectory, _)) => Err("not a directory"),
        Err((ErrorCode::NotFound, _)) => Err("no such file or directory"),
        Err((ErrorCode::PermissionDenied, _)) => Err("permission denied"),
        Err(_) => Ok(()),
    })
}

/// Removes the shell if there is one (killing its process group).
async fn remove_shell(rt: &Runtime) -> ApiResult<()> {
    let remove = Request::Remove {
        id: BASH_CONTEXT.into(),
    };
    ask(rt, &remove).await.map(drop)
}

struct CommandRun {
    output: Tail,
    exit_code: Option<i32>,
    timed_out: bool,
}

/// Runs one command in the shell: stdin is /dev/null (a command reading it
/// ends instead of hanging) and stderr joins stdout in order.
async fn run_command(
    rt: &Runtime,
    command: &str,
    timeout_ms: u64,
) -> ApiResult<Result<CommandRun, String>> {
    let exec = Request::Exec {
        id: BASH_CONTEXT.into(),
        code: format!("{{ {command}\n}} </dev/null 2>&1"),
        timeout_ms: Some(timeout_ms),
    };
    let mut conn = InitConn::connect(&rt.socket).await.map_err(unreachable)?;
    conn.send(&exec, &[]).await.map_err(unreachable)?;
    let mut output = Tail::new(BASH_OUTPUT_LIMIT);
    let deadline = Duration::from_millis(timeout_ms) + BASH_TIMEOUT_GRACE;
    let collect = async {
        loop {
            match conn.recv().await.map_err(unreachable)? {
                (Init::Output { .. }, bytes) => output.push(&bytes),
                (
                    Init::ExecDone {
                        exit_code,
                        timed_out,
                    },
                    _,
                ) => return Ok(Ok((exit_code, timed_out))),
                (Init::Error { message, .. }, _) => return Ok(Err(message)),
                _ => return Err(ApiError::internal("unexpected answer to exec")),
            }
        }
    };
    let done = match tokio::time::timeout(deadline, collect).await {
        Ok(done) => done?,
        // Init never reported the end: treat it as the timeout it is.
        Err(_) => Ok((None, true)),
    };
    Ok(done.map(|(exit_code, timed_out)| CommandRun {
        output,
        exit_code,
        timed_out,
    }))
}

/// A sandbox's turn at its shell. Dropped while a command runs (the
/// request's client went away), it removes the shell before letting the
/// next call in: nobody waits for that command's result any more, and it
/// would hold the shell until its timeout.
struct Turn {
    socket: std::path::PathBuf,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
    running: bool,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let Some(held) = self.held.take() else { return };
        if !self.running {
            return;
        }
        let socket = self.socket.clone();
        tokio::spawn(async move {
            let remove = Request::Remove {
                id: BASH_CONTEXT.into(),
            };
            let _ = crate::initclient::call(&socket, &remove, &[]).await;
            drop(held);
        });
    }
}

/// The last `cap` bytes of a stream, and whether earlier ones were dropped.
struct Tail {
    buf: VecDeque<u8>,
    cap: usize,
    dropped: bool,
}

impl Tail {
    fn new(cap: usize) -> Tail {
        Tail {
            buf: VecDeque::new(),
            cap,
            dropped: false,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let bytes = if bytes.len() > self.cap {
            self.dropped = true;
            &bytes[bytes.len() - self.cap..]
        } else {
            bytes
        };
        self.buf.extend(bytes);
        if self.buf.len() > self.cap {
            self.dropped = true;
            let excess = self.buf.len() - self.cap;
            self.buf.drain(..excess);
        }
    }

    /// The text the model reads.
    fn render(mut self) -> String {
        let dropped = self.dropped;
        render_output(self.buf.make_contiguous(), dropped)
    }
}

/// What the model reads of a command's output: text without terminal
/// escapes or trailing newlines, marked when its head was dropped.
fn render_output(tail: &[u8], dropped: bool) -> String {
    let text = strip_ansi(&String::from_utf8_lossy(tail));
    let text = text.trim_end_matches('\n');
    if dropped {
        format!("[output truncated]\n{text}")
    } else {
        text.to_string()
    }
}

/// Removes terminal escape sequences: CSI (`ESC [` … final byte), OSC
/// (`ESC ]` … BEL or `ESC \`) and the other `ESC` sequences (`ESC` with
/// optional intermediate bytes and a final byte, e.g. `ESC ( B`, `ESC =`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('[') => {
                chars.next();
                while chars.next_if(|c| ('0'..='?').contains(c)).is_some() {}
                while chars.next_if(|c| (' '..='/').contains(c)).is_some() {}
                chars.next_if(|c| ('@'..='~').contains(c));
            }
            Some(']') => {
                chars.next();
                while let Some(c) = chars.next() {
                    if c == '\x07' || (c == '\x1b' && chars.next_if_eq(&'\\').is_some()) {
                        break;
                    }
                }
            }
            _ => {
                while chars.next_if(|c| (' '..='/').contains(c)).is_some() {}
                chars.next_if(|c| ('0'..='~').contains(c));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_sequences_are_stripped() {
        assert_eq!(strip_ansi("\x1b[1;31mred\x1b[0m plain"), "red plain");
        assert_eq!(strip_ansi("a\x1b[?25lb\x1b[2Kc"), "abc");
        assert_eq!(strip_ansi("\x1b]0;title\x07text"), "text");
        assert_eq!(
            strip_ansi("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\"),
            "link"
        );
        assert_eq!(strip_ansi("\x1b(Bq\x1b=r\x1b7s"), "qrs");
        assert_eq!(strip_ansi("tail\x1b"), "tail");
        assert_eq!(strip_ansi("héllo ✓"), "héllo ✓");
    }

    #[test]
    fn output_is_trimmed_and_marked_when_truncated() {
        assert_eq!(render_output(b"hi\n\n", false), "hi");
        assert_eq!(render_output(b"  a\n b \n", false), "  a\n b ");
        assert_eq!(render_output(b"", false), "");
        assert_eq!(render_output(b"\x1b[32mok\x1b[0m\n", false), "ok");
        assert_eq!(render_output(b"end\n", true), "[output truncated]\nend");
        assert_eq!(render_output(b"\xffx", false), "\u{fffd}x");
    }

    #[test]
    fn the_tail_keeps_the_last_bytes() {
        let mut t = Tail::new(8);
        t.push(b"0123");
        t.push(b"4567");
        assert!(!t.dropped);
        t.push(b"89");
        assert!(t.dropped);
        assert_eq!(Vec::from(t.buf.clone()), b"23456789");
        t.push(b"abcdefghijkl");
        assert_eq!(Vec::from(t.buf.clone()), b"efghijkl");
    }

    #[test]
    fn a_large_output_keeps_exactly_100_kib() {
        let mut t = Tail::new(BASH_OUTPUT_LIMIT);
        for _ in 0..30 {
            t.push(&[b'x'; 64 * 1024]);
        }
        t.push(b"\nlast line\n");
        let text = t.render();
        assert!(text.starts_with("[output truncated]\nxxx"));
        assert!(text.ends_with("xxx\nlast line"));
        assert_eq!(
            text.len(),
            "[output truncated]\n".len() + BASH_OUTPUT_LIMIT - 1
        );
    }

    #[test]
    fn bash_input_is_checked() {
        let parse = |v: Value| BashInput::parse(&v);
        assert_eq!(
            parse(json!({"command": "ls", "timeout_ms": 500})),
            Ok(BashInput {
                command: Some("ls".into()),
                restart: false,
                timeout_ms: Some(500)
            })
        );
        assert_eq!(
            parse(json!({"restart": true, "command": null})),
            Ok(BashInput {
                command: None,
                restart: true,
                timeout_ms: None
            })
        );
        assert_eq!(
            parse(json!({"command": 1})),
            Err("bash: command must be a string".into())
        );
        assert_eq!(
            parse(json!({"command": "x", "timeout_ms": -1})),
            Err("bash: timeout_ms must be a non-negative integer".into())
        );
        assert_eq!(
            parse(json!("ls")),
            Err("bash: input must be an object".into())
        );
    }

    #[test]
    fn empty_texts_read_no_output() {
        let r = text_result("", true);
        assert_eq!(
            r.content,
            vec![json!({"type": "text", "text": "(no output)"})]
        );
        assert!(r.is_error);
    }

    #[test]
    fn timeouts_print_like_python_floats() {
        let msg = |ms: u64| format!("{:?}", ms as f64 / 1000.0);
        assert_eq!(msg(120_000), "120.0");
        assert_eq!(msg(500), "0.5");
        assert_eq!(msg(1234), "1.234");
    }

    #[test]
    fn tool_paths_must_be_absolute() {
        assert!(check_path("workdir", "/workspace").is_ok());
        let e = check_path("workdir", "rel").unwrap_err();
        assert_eq!(
            e.message,
            "invalid field `workdir`: must be an absolute path"
        );
        let roots = vec!["/ok".to_string(), "/a\0b".to_string()];
        let e = check_paths("allowed_roots", &roots).unwrap_err();
        assert_eq!(
            e.message,
            "invalid field `allowed_roots[1]`: contains a NUL byte"
        );
        let long = format!("/{}", "a".repeat(MAX_PATH));
        assert!(check_path("workdir", &long).is_err());
    }
}
