use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};

/// Largest header accepted (JSON). A tool result carries a base64 image or
/// PDF (up to 20 MiB raw, about 27 MiB encoded) in its header.
pub const MAX_HEADER: usize = 32 << 20;
/// Largest payload accepted (file bodies, input).
pub const MAX_PAYLOAD: usize = 256 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Ping,
    /// Readies PID 1 for a checkpoint of the sandbox's memory: every other
    /// connection is ended (CRIU cannot take a socket whose other end is
    /// outside; a request being served on one ends), and PID 1 made
    /// dumpable, so CRIU, with every capability in the sandbox's user
    /// namespace, may read it (`harden::GUARD` keeps the sandbox out
    /// meanwhile). Answered with `Ok`; the caller then closes this one too.
    Quiesce,
    /// The checkpoint is over (it failed, or it was taken and restored):
    /// PID 1 is made non-dumpable again.
    CheckpointDone,
    /// Starts a process context. With `attach`, the answer streams its output
    /// and ends with its exit (a synchronous run).
    Spawn {
        id: String,
        kind: ProcKind,
        cwd: Option<String>,
        env: BTreeMap<String, String>,
        pty: Option<PtySize>,
        attach: bool,
        timeout_ms: Option<u64>,
        /// A detached context's output is kept whole this long for its
        /// first reader (init's default grace when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hold_ms: Option<u64>,
        /// Supervised: started again when it exits, as this says (a
        /// `Remove` stops that; a `Restart` starts a new attempt now).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        restart: Option<RestartSpec>,
    },
    /// Runs code in a REPL context and streams its output until done.
    Exec {
        id: String,
        code: String,
        timeout_ms: Option<u64>,
    },
    /// Streams a context's buffered then live output until it exits.
    Attach {
        id: String,
    },
    /// Writes the payload to the context's stdin (or PTY).
    Input {
        id: String,
    },
    CloseStdin {
        id: String,
    },
    Signal {
        id: String,
        signal: i32,
    },
    Resize {
        id: String,
        size: PtySize,
    },
    Restart {
        id: String,
    },
    Remove {
        id: String,
    },
    Get {
        id: String,
    },
    List,
    /// Answered with `Chunk` frames and a final `Data`: a file of any size
    /// passes through init a bounded piece at a time.
    ReadFile {
        path: String,
    },
    /// Writes the payload to `path`, creating parent directories; with
    /// `append`, adds it to the end. Large files come as several requests,
    /// so no single payload makes init hold a whole file.
    WriteFile {
        path: String,
        mode: Option<u32>,
        #[serde(default)]
        append: bool,
    },
    Mkdir {
        path: String,
        recursive: bool,
    },
    RemovePath {
        path: String,
    },
    Move {
        from: String,
        to: String,
    },
    Stat {
        path: String,
    },
    ListDir {
        path: String,
    },
    Watch {
        path: String,
        recursive: bool,
    },
    /// Runs one file tool of the agent toolset (`read`, `write`, `edit`,
    /// `glob`, `grep`); paths are confined to `workdir` and
    /// `allowed_roots`, and `write`/`edit` refuse `read_only_roots`.
    Tool {
        name: String,
        input: serde_json::Value,
        workdir: String,
        allowed_roots: Vec<String>,
        read_only_roots: Vec<String>,
    },
    /// Unpacks the tar file `archive` under directory `root` (a volume's
    /// file helper only): regular files (replacing what is there),
    /// directories, symlinks and hard links; a device or FIFO entry stops
    /// it. Answered with `Untarred`.
    Untar {
        archive: String,
        root: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProcKind {
    /// One command; `argv[0]` is looked up in PATH.
    Cmd { argv: Vec<String> },
    /// A stateful interpreter (`bash` or `python`).
    Repl { language: String },
    /// An SFTP server on the context's stdin and stdout (init's own
    /// program in `sftp-server` mode): the SSH gateway's `sftp` subsystem.
    Sftp,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct PtySize {
    pub rows: u16,
    pub cols: u16,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
    Pty,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExitInfo {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
}

/// When a supervised context's command is started again.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    Never,
    /// After an exit with a code other than 0, or a signal.
    OnFailure,
    Always,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RestartSpec {
    pub policy: RestartPolicy,
    /// Restarts allowed within `window_ms`; one more and it has failed.
    pub max_restarts: u32,
    pub window_ms: u64,
    /// The first wait before a restart, doubled for each restart in the
    /// window, up to `max_backoff_ms`.
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

/// Where a supervised context stands.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SupervisedPhase {
    Running,
    /// Exited; waiting to be started again.
    Backoff,
    /// Exited, and its policy starts it no more (a success, or `never`).
    Exited,
    /// Exited too often within the window, or could not be started.
    Failed,
}

/// One run of a supervised context's command.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttemptInfo {
    /// 1 for the first.
    pub number: u64,
    pub pid: i32,
    /// Unix milliseconds.
    pub started_at: u64,
    pub finished_at: Option<u64>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SupervisionInfo {
    pub phase: SupervisedPhase,
    pub restart_count: u32,
    /// The latest attempts, oldest first (the current one last).
    pub attempts: Vec<AttemptInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcInfo {
    pub id: String,
    pub kind: ProcKind,
    pub pid: i32,
    pub running: bool,
    pub exit: Option<ExitInfo>,
    pub cwd: Option<String>,
    pub env: BTreeMap<String, String>,
    pub pty: bool,
    /// Unix milliseconds.
    pub created_at: u64,
    /// For a supervised context: its attempts and phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervision: Option<SupervisionInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileInfo {
    pub name: String,
    pub path: String,
    pub kind: sandstone_api::FileKind,
    pub size: u64,
    pub mode: u32,
    /// Unix seconds.
    pub modified: i64,
    pub link_target: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    NotFound,
    AlreadyExists,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    PermissionDenied,
    Busy,
    Io,
    /// A path a volume's file helper was given resolves outside the
    /// volume (`..` above its root, an absolute symlink, a symlink up).
    OutsideRoot,
}

impl From<std::io::ErrorKind> for ErrorCode {
    /// The code an I/O failure is reported with; kinds without one of
    /// their own are `io`.
    fn from(kind: std::io::ErrorKind) -> ErrorCode {
        use std::io::ErrorKind as K;
        match kind {
            K::NotFound => ErrorCode::NotFound,
            K::AlreadyExists => ErrorCode::AlreadyExists,
            K::InvalidInput => ErrorCode::InvalidArgument,
            K::PermissionDenied => ErrorCode::PermissionDenied,
            K::IsADirectory => ErrorCode::IsADirectory,
            K::NotADirectory => ErrorCode::NotADirectory,
            _ => ErrorCode::Io,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    Pong {
        version: String,
    },
    Ok,
    Error {
        code: ErrorCode,
        message: String,
    },
    Proc {
        info: ProcInfo,
    },
    Procs {
        procs: Vec<ProcInfo>,
    },
    /// Process output; the bytes are the payload.
    Output {
        stream: Stream,
    },
    /// This many bytes of the context's output were dropped (nobody read
    /// them in time) before the output that follows.
    Truncated {
        dropped_bytes: u64,
    },
    /// End of one REPL execution.
    ExecDone {
        exit_code: Option<i32>,
        timed_out: bool,
    },
    /// End of a process; for an attached run, with the context as it
    /// ended (`proc`), which saves its caller another request.
    Exit {
        info: ExitInfo,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proc: Option<Box<ProcInfo>>,
    },
    /// A piece of a file being read; the bytes are the payload.
    Chunk,
    /// The end of a file read (or, from older inits, the whole file).
    Data,
    Stat {
        info: FileInfo,
    },
    Entries {
        entries: Vec<FileInfo>,
    },
    /// A file watch event (`create`, `write`, `remove`, `rename`, `chmod`).
    Event {
        event: String,
        path: String,
    },
    /// The outcome of a tool: content blocks (`text`, `image`, `document`)
    /// and whether they describe an error the model should see.
    ToolResult {
        content: Vec<serde_json::Value>,
        is_error: bool,
    },
    /// What an `Untar` made.
    Untarred(UntarCounts),
}

/// Entries a tar import made, and the bytes of its regular files.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UntarCounts {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

/// What `sandstone-init volume-files` reads on its standard input: it
/// serves the file requests of the init protocol for one volume, chrooted
/// into it, as `uid`/`gid`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeHelperSpec {
    /// The volume's directory on the host.
    pub root: std::path::PathBuf,
    /// Where it listens (a host path, bound before the chroot).
    pub socket: std::path::PathBuf,
    pub uid: u32,
    pub gid: u32,
}

impl Response {
    /// Whether this frame ends the answer to a request.
    pub fn is_terminal(&self) -> bool {
        !matches!(
            self,
            Response::Output { .. }
                | Response::Event { .. }
                | Response::Truncated { .. }
                | Response::Chunk
        )
    }

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Response::Error {
            code,
            message: message.into(),
        }
    }
}

/// Encodes one frame.
pub fn encode<T: Serialize>(header: &T, payload: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).expect("header serializes");
    let mut out = Vec::with_capacity(8 + h.len() + payload.len());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    out
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A length in the prefix is past [`MAX_HEADER`] or [`MAX_PAYLOAD`].
    #[error("frame too large")]
    TooLarge,
    /// The header is not the JSON of the expected message.
    #[error(transparent)]
    Header(#[from] serde_json::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<FrameError> for std::io::Error {
    /// For readers that report every failure of the connection as I/O: a
    /// bad frame is `InvalidData`.
    fn from(e: FrameError) -> std::io::Error {
        match e {
            FrameError::Io(e) => e,
            FrameError::TooLarge => std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            FrameError::Header(e) => std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        }
    }
}

/// Splits the 8-byte prefix into (header length, payload length), refusing
/// sizes past the limits.
pub fn lengths(prefix: [u8; 8]) -> Result<(usize, usize), FrameError> {
    let [h0, h1, h2, h3, p0, p1, p2, p3] = prefix;
    let h = u32::from_be_bytes([h0, h1, h2, h3]) as usize;
    let p = u32::from_be_bytes([p0, p1, p2, p3]) as usize;
    if h > MAX_HEADER || p > MAX_PAYLOAD {
        return Err(FrameError::TooLarge);
    }
    Ok((h, p))
}

/// Writes one frame to a blocking writer.
pub fn write_frame<W: Write, T: Serialize>(
    w: &mut W,
    header: &T,
    payload: &[u8],
) -> std::io::Result<()> {
    w.write_all(&encode(header, payload))
}

/// Reads one frame from a blocking reader; `None` on a clean EOF.
pub fn read_frame<R: Read, T: serde::de::DeserializeOwned>(
    r: &mut R,
) -> Result<Option<(T, Vec<u8>)>, FrameError> {
    let mut prefix = [0u8; 8];
    match r.read_exact(&mut prefix) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let (hl, pl) = lengths(prefix)?;
    let mut buf = vec![0u8; hl + pl];
    r.read_exact(&mut buf)?;
    let payload = buf.split_off(hl);
    let header = serde_json::from_slice(&buf)?;
    Ok(Some((header, payload)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_with_binary_payload() {
        let req = Request::WriteFile {
            append: false,
            path: "/workspace/a".into(),
            mode: Some(0o600),
        };
        let payload = [0u8, 255, 10, 13];
        let bytes = encode(&req, &payload);
        let (back, p): (Request, Vec<u8>) = read_frame(&mut bytes.as_slice()).unwrap().unwrap();
        assert_eq!(back, req);
        assert_eq!(p, payload);
    }

    #[test]
    fn oversized_frames_are_refused() {
        let mut prefix = [0u8; 8];
        prefix[..4].copy_from_slice(&((MAX_HEADER as u32) + 1).to_be_bytes());
        assert!(matches!(lengths(prefix), Err(FrameError::TooLarge)));
        let e: std::io::Error = FrameError::TooLarge.into();
        assert_eq!(
            (e.kind(), e.to_string()),
            (std::io::ErrorKind::InvalidData, "frame too large".into())
        );
    }
}
