//! The agent's `bash` tool: a persistent bash REPL context of init
//! (`agent-bash`) per running sandbox, so the shell keeps its cwd,
//! variables and jobs between calls. Calls take turns on the runtime's
//! [`Runtime::shell`] lock: a second command must not be typed into a
//! shell still running the first.
//!
//! What the model did wrong or what its command did is a [`ToolCallResult`]
//! the model reads; a [`ShellError`] means init could not be reached or
//! spoke out of turn.

use super::Runtime;
use crate::initclient::{InitError, InitSocket};
use sandstone_api::{FileKind, ToolCallResult};
use sandstone_init::proto::{ErrorCode, ProcKind, Request, Response as Init};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::time::Duration;

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

/// Why a bash call has no result.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    #[error("sandbox init unreachable: {0}")]
    Unreachable(#[from] std::io::Error),
    #[error("unexpected answer to {0}")]
    Unexpected(&'static str),
}

fn text_result(text: impl Into<String>, is_error: bool) -> ToolCallResult {
    let text = text.into();
    // An empty text reads as the reference runner sends it.
    let text = if text.is_empty() {
        "(no output)".to_string()
    } else {
        text
    };
    ToolCallResult {
        content: vec![json!({"type": "text", "text": text})],
        is_error,
    }
}

fn tool_error(text: impl Into<String>) -> ToolCallResult {
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

/// One `bash` call on the sandbox's shell, started in `workdir` if there
/// is none. The model's mistakes and failed commands are results with
/// `is_error`; only losing init is an error.
pub async fn call(
    rt: &Runtime,
    workdir: &str,
    input: &Value,
) -> Result<ToolCallResult, ShellError> {
    let input = match BashInput::parse(input) {
        Ok(i) => i,
        Err(message) => return Ok(tool_error(message)),
    };
    let lock = &rt.shell;
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
        held: Some(lock.clone().lock_owned().await),
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
async fn ask(
    socket: &InitSocket,
    req: &Request,
) -> Result<Result<Init, (ErrorCode, String)>, ShellError> {
    Ok(match socket.call(req, &[]).await {
        Ok((r, _)) => Ok(r),
        Err(InitError::Refused { code, message }) => Err((code, message)),
        Err(InitError::Unreachable(e)) => return Err(e.into()),
    })
}

/// Starts the shell unless it is running; one that exited (`exit`, a
/// killed interpreter) is replaced.
async fn ensure_shell(rt: &Runtime, workdir: &str) -> Result<Result<(), String>, ShellError> {
    let get = Request::Get {
        id: BASH_CONTEXT.into(),
    };
    match ask(&rt.socket, &get).await? {
        Ok(Init::Proc { info }) if info.running => return Ok(Ok(())),
        Ok(_) => remove_shell(rt).await?,
        Err(_) => {}
    }
    start_shell(rt, workdir).await
}

async fn start_shell(rt: &Runtime, workdir: &str) -> Result<Result<(), String>, ShellError> {
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
        hold_ms: None,
        restart: None,
    };
    Ok(ask(&rt.socket, &spawn)
        .await?
        .map(drop)
        .map_err(|(_, e)| format!("bash: cannot start a shell in {workdir}: {e}")))
}

/// Why the shell cannot start in `workdir`, worded as the file tools word it.
async fn check_workdir(
    rt: &Runtime,
    workdir: &str,
) -> Result<Result<(), &'static str>, ShellError> {
    let stat = Request::Stat {
        path: workdir.into(),
    };
    Ok(match ask(&rt.socket, &stat).await? {
        Ok(Init::Stat { info }) if info.kind == FileKind::Dir => Ok(()),
        // A symlink to a directory is as good as one.
        Ok(Init::Stat { info }) if info.kind == FileKind::Symlink => Ok(()),
        Ok(_) | Err((ErrorCode::NotADirectory, _)) => Err("not a directory"),
        Err((ErrorCode::NotFound, _)) => Err("no such file or directory"),
        Err((ErrorCode::PermissionDenied, _)) => Err("permission denied"),
        Err(_) => Ok(()),
    })
}

/// Removes the shell if there is one (killing its process group).
async fn remove_shell(rt: &Runtime) -> Result<(), ShellError> {
    let remove = Request::Remove {
        id: BASH_CONTEXT.into(),
    };
    ask(&rt.socket, &remove).await.map(drop)
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
) -> Result<Result<CommandRun, String>, ShellError> {
    let exec = Request::Exec {
        id: BASH_CONTEXT.into(),
        code: format!("{{ {command}\n}} </dev/null 2>&1"),
        timeout_ms: Some(timeout_ms),
    };
    let mut conn = rt.socket.connect().await?;
    conn.send(&exec, &[]).await?;
    let mut output = Tail::new(BASH_OUTPUT_LIMIT);
    let deadline = Duration::from_millis(timeout_ms) + BASH_TIMEOUT_GRACE;
    let collect = async {
        loop {
            match conn.recv().await? {
                (Init::Output { .. }, bytes) => output.push(&bytes),
                (
                    Init::ExecDone {
                        exit_code,
                        timed_out,
                    },
                    _,
                ) => return Ok(Ok((exit_code, timed_out))),
                (Init::Error { message, .. }, _) => return Ok(Err(message)),
                _ => return Err(ShellError::Unexpected("exec")),
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
    socket: InitSocket,
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
            // Best effort: an init that is gone took the shell with it.
            let _ = ask(&socket, &remove).await;
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
}
