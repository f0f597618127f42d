//! Process contexts: spawning, output capture and fan-out, the reaper.

use crate::proto::{ErrorCode, ExitInfo, ProcInfo, ProcKind, PtySize, Stream};
use crate::repl;
use sandstone_sys::fd::PollFd;
use sandstone_sys::process::{self, Exit, Pid};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Output kept per context for readers that attach later. Until a first
/// reader has replayed it (or [`FIRST_READER_GRACE`] passed) nothing is
/// dropped: when it is full, init stops reading the process's output and
/// the process waits. After that the newest bytes win and the dropped ones
/// are counted, so a replay says what it lacks.
const BUFFER_CAP: usize = 1 << 20;
/// How long output waits for its first reader before the oldest goes.
const FIRST_READER_GRACE: Duration = Duration::from_secs(10);
/// Events queued per subscriber (output chunks are up to 64 KiB): a
/// subscriber that falls further behind makes the process wait.
const QUEUE: usize = 16;
/// Exited contexts kept for a later get, list or attach; past it the
/// oldest are forgotten (a supervised one stays until it is removed).
/// What each keeps (its output, up to [`BUFFER_CAP`]; its list entry; a
/// pidfd while its group lives) must not grow with every command a
/// sandbox ever ran: the memory is charged to the sandbox, and every
/// descriptor init holds is one more that each spawn copies and closes.
/// The durable log keeps the output of the forgotten ones.
const KEPT_EXITED: usize = 64;

/// How far [`Proc::drain`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// Until the pipe is empty or output held for a first reader fills
    /// the buffer.
    UntilHeld,
    /// Until the pipe is empty: the process has exited.
    All,
}

#[derive(Debug, Clone)]
pub enum Event {
    Output(Stream, Arc<[u8]>),
    ExecDone(Option<i32>),
    Exit(ExitInfo),
    /// This many bytes of output were dropped before what follows.
    Truncated(u64),
}

#[derive(Default)]
struct Shared {
    buffer: VecDeque<(Stream, Arc<[u8]>)>,
    buffered: usize,
    /// Output dropped from the front of `buffer`.
    dropped: u64,
    /// While set, output is kept whole for a first replaying reader.
    hold_until: Option<Instant>,
    subscribers: Vec<(u64, SyncSender<Event>)>,
    next_subscriber: u64,
    exit: Option<ExitInfo>,
    timed_out: bool,
}

impl Shared {
    /// Drops the oldest output past the cap, unless it is held for a first
    /// reader (and even then past twice the cap, which only the last read
    /// after an exit can reach).
    fn trim(&mut self) {
        let cap = if self.hold_until.is_some() {
            2 * BUFFER_CAP
        } else {
            BUFFER_CAP
        };
        while self.buffered > cap && self.buffer.len() > 1 {
            if let Some((_, old)) = self.buffer.pop_front() {
                self.buffered -= old.len();
                self.dropped += old.len() as u64;
            }
        }
    }

    fn add_subscriber(&mut self) -> Receiver<Event> {
        let (tx, rx) = sync_channel(QUEUE);
        self.next_subscriber += 1;
        self.subscribers.push((self.next_subscriber, tx));
        rx
    }
}

pub struct Proc {
    pub id: String,
    pub kind: ProcKind,
    pub cwd: Option<String>,
    pub env: BTreeMap<String, String>,
    pub pty_size: Option<PtySize>,
    pub created_at: u64,
    pub pid: i32,
    /// How signals reach its process group.
    group: Mutex<Group>,
    /// Where input goes: the stdin pipe or the PTY master.
    input: Mutex<Option<File>>,
    /// The PTY master, for resize.
    pty: Option<File>,
    /// REPL code channel (fd 3 of the interpreter).
    pub code: Mutex<Option<File>>,
    /// Serialises REPL executions.
    pub exec_lock: Mutex<()>,
    shared: Mutex<Shared>,
    /// The exit status, from the reaper to the pump thread.
    exit_slot: Mutex<Option<ExitInfo>>,
    /// Woken by the reaper when the process exits, and when a first reader
    /// attaches to output that was held for it; closed once the pump is
    /// done (the pump polls its own clone of the handle).
    wake: Mutex<Option<Arc<OwnedFd>>>,
}

/// How signals reach a context's process group.
enum Group {
    /// Through a pidfd of its leader, opened before the reaper can collect
    /// it: a signal sent after the exit (a supervised context in backoff,
    /// say) reaches what is left of the group or nothing, never a newcomer
    /// that took the number.
    Pidfd(OwnedFd),
    /// By number: no pidfd could be opened at the spawn.
    Number,
    /// Nothing is left of it: the leader was reaped with no member
    /// remaining, so the number may already be another's.
    Gone,
}

/// The context table and pid index.
#[derive(Default)]
struct Table {
    by_id: HashMap<String, Arc<Proc>>,
    by_pid: HashMap<i32, Arc<Proc>>,
    /// Unsupervised contexts in the order they exited, at most
    /// [`KEPT_EXITED`].
    exited: VecDeque<Arc<Proc>>,
}

static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(Default::default);
/// Held while std spawns a child, so the reaper never steals the zombie std
/// itself waits for when exec fails.
static SPAWN_LOCK: Mutex<()> = Mutex::new(());

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn block_sigchld() {
    // Cannot fail: SIGCHLD is a valid signal and SIG_BLOCK a valid how.
    let _ = process::block_signal(libc::SIGCHLD);
    std::thread::Builder::new()
        .spawn(reaper)
        .expect("reaper thread at start");
}

fn reaper() {
    loop {
        // Cannot fail: SIGCHLD is blocked in every thread.
        let _ = process::wait_for_signal(libc::SIGCHLD);
        while let Ok(Some(pid)) = process::peek_ended_child() {
            let _guard = SPAWN_LOCK.lock().expect("lock poisoned");
            let Ok(Some(exit)) = process::try_wait(pid) else {
                continue;
            };
            let proc = TABLE
                .lock()
                .expect("lock poisoned")
                .by_pid
                .remove(&pid.as_raw());
            if let Some(p) = proc {
                p.exited(exit);
            }
        }
    }
}

fn eventfd() -> OwnedFd {
    sandstone_sys::fd::eventfd().expect("eventfd")
}

fn pipe() -> std::io::Result<(File, File)> {
    let (r, w) = sandstone_sys::fd::pipe(libc::O_CLOEXEC)?;
    Ok((File::from(r), File::from(w)))
}

fn open_pty(size: PtySize) -> std::io::Result<(File, File)> {
    let (master, slave) = sandstone_sys::term::open_pty()?;
    let master = File::from(master);
    set_winsize(&master, size);
    Ok((master, File::from(slave)))
}

fn set_winsize(f: &File, size: PtySize) {
    // A PTY master always takes a size.
    let _ = sandstone_sys::term::set_window_size(f.as_fd(), size.rows, size.cols);
}

pub struct SpawnRequest {
    pub id: String,
    pub kind: ProcKind,
    pub cwd: Option<String>,
    pub env: BTreeMap<String, String>,
    pub pty: Option<PtySize>,
    pub reader: FirstReader,
}

/// Who reads a context's output first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstReader {
    /// The caller reads the returned receiver to the end (a synchronous run).
    Attached,
    /// One attaches later: output is kept whole for it this long at most
    /// ([`FIRST_READER_GRACE`] unless the request said otherwise).
    Within(Duration),
}

impl FirstReader {
    /// A detached context's: held for a first reader for `hold_ms`, or the
    /// default grace.
    pub fn later(hold_ms: Option<u64>) -> Self {
        FirstReader::Within(hold_ms.map_or(FIRST_READER_GRACE, Duration::from_millis))
    }
}

/// What every process of this sandbox starts with unless its request
/// says otherwise, set once at start.
#[derive(Debug, Default)]
pub struct Defaults {
    /// Variables the daemon gives every process (an image's `Env`, where
    /// the CA bundle is).
    pub env: BTreeMap<String, String>,
    /// The working directory (an image's `WorkingDir`).
    pub cwd: Option<String>,
    /// The user (an image's `User`).
    pub account: Option<sandstone_runtime::account::Account>,
}

static DEFAULTS: std::sync::OnceLock<Defaults> = std::sync::OnceLock::new();

pub fn set_defaults(d: Defaults) {
    let _ = DEFAULTS.set(d);
}

fn defaults() -> &'static Defaults {
    DEFAULTS.get_or_init(Defaults::default)
}

/// Base environment of every process: a login-like PATH and HOME (the
/// user's), then the sandbox's variables.
fn base_env() -> BTreeMap<String, String> {
    let d = defaults();
    let home = d.account.as_ref().map_or("/root", |a| a.home.as_str());
    let mut env: BTreeMap<String, String> = [
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("HOME", home),
        ("LANG", "C.UTF-8"),
        ("TERM", "xterm-256color"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.extend(d.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// Init's own `oom_score_adj`, opened as it started (kept open, so each
/// start costs no open), and its value then.
static OOM_SCORE_ADJ: std::sync::OnceLock<(File, Vec<u8>)> = std::sync::OnceLock::new();

pub fn set_oom_score_adj_file(mut f: File) -> std::io::Result<()> {
    let mut base = Vec::new();
    f.read_to_end(&mut base)?;
    let _ = OOM_SCORE_ADJ.set((f, base.trim_ascii().to_vec()));
    Ok(())
}

/// Runs `fork` with init's `oom_score_adj` at 1000, so the child (and
/// everything it starts) is what the OOM killer takes before init. Nothing
/// in the sandbox may lower its own score (that needs CAP_SYS_RESOURCE),
/// and a score is inherited at fork: init raises its own for the
/// instant of the fork, then returns to the value it started with (never
/// below it, which the kernel allows without the capability). Callers hold
/// SPAWN_LOCK, so forks never overlap.
fn as_oom_victim<T>(fork: impl FnOnce() -> T) -> T {
    use std::os::unix::fs::FileExt;
    let Some((f, base)) = OOM_SCORE_ADJ.get() else {
        return fork();
    };
    if let Err(e) = f.write_all_at(b"1000", 0) {
        eprintln!("sandstone-init: cannot raise oom_score_adj for a workload: {e}");
    }
    let out = fork();
    if let Err(e) = f.write_all_at(base, 0) {
        eprintln!("sandstone-init: cannot restore its own oom_score_adj: {e}");
    }
    out
}

/// A workload's whole environment: the base, then its request's own.
fn child_env(own: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut env = base_env();
    env.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// Starts a plain command with [`sandstone_sys::process::spawn`] (in a new
/// session, as the fork path's `setsid`), with `ends` as its stdin, stdout and stderr. The program is
/// found as execvp would, with the child's PATH.
fn spawn_plain(
    program: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    cwd: &str,
    ends: &[File; 3],
) -> std::io::Result<i32> {
    use std::ffi::CString;
    let c = |s: &str| {
        CString::new(s).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "nul byte in the command")
        })
    };
    let path = resolve(program, env.get("PATH").map(String::as_str), Path::new(cwd))
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
    let argv = std::iter::once(program)
        .chain(args.iter().map(String::as_str))
        .map(c)
        .collect::<std::io::Result<Vec<_>>>()?;
    let env = env
        .iter()
        .map(|(k, v)| c(&format!("{k}={v}")))
        .collect::<std::io::Result<Vec<_>>>()?;
    let pid = process::spawn(&process::Spawn {
        program: &c(&path.to_string_lossy())?,
        argv: &argv,
        env: &env,
        cwd: &c(cwd)?,
        stdio: [ends[0].as_fd(), ends[1].as_fd(), ends[2].as_fd()],
    })?;
    Ok(pid.as_raw())
}

/// Where execvp would find `program`: itself when it names a path, else
/// the first executable file in `path` (relative entries from `cwd`).
fn resolve(program: &str, path: Option<&str>, cwd: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if program.contains('/') {
        return Some(program.into());
    }
    path.unwrap_or("/bin:/usr/bin")
        .split(':')
        .map(|dir| {
            cwd.join(if dir.is_empty() { "." } else { dir })
                .join(program)
        })
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Why a context could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("context {0} exists")]
    Exists(String),
    #[error("command is empty")]
    EmptyCommand,
    #[error(transparent)]
    Language(#[from] repl::UnsupportedLanguage),
    #[error("command not found: {0}")]
    CommandNotFound(String),
    /// The program exists but could not be started.
    #[error("{program}: {error}")]
    Exec {
        program: String,
        error: std::io::Error,
    },
    /// No thread could be made to read its output (the pids limit).
    #[error("cannot watch the process: {0}")]
    Watch(std::io::Error),
    /// Making its pipes or PTY.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl SpawnError {
    /// The code the daemon maps to an API status.
    pub fn code(&self) -> ErrorCode {
        match self {
            SpawnError::Exists(_) => ErrorCode::AlreadyExists,
            SpawnError::EmptyCommand | SpawnError::Language(_) => ErrorCode::InvalidArgument,
            SpawnError::CommandNotFound(_) => ErrorCode::NotFound,
            SpawnError::Exec { error: e, .. } | SpawnError::Watch(e) | SpawnError::Io(e) => {
                e.kind().into()
            }
        }
    }
}

/// Starts a context. The returned receiver is subscribed before the process
/// runs, so a synchronous caller sees every byte; it must be read, or
/// dropped (the process waits while it is full).
pub fn spawn(req: SpawnRequest) -> Result<(Arc<Proc>, Receiver<Event>), SpawnError> {
    if TABLE
        .lock()
        .expect("lock poisoned")
        .by_id
        .contains_key(&req.id)
    {
        return Err(SpawnError::Exists(req.id));
    }
    let (program, args) = match &req.kind {
        ProcKind::Cmd { argv } => {
            let (first, rest) = argv.split_first().ok_or(SpawnError::EmptyCommand)?;
            (first.clone(), rest.to_vec())
        }
        ProcKind::Repl { language } => repl::command(language)?,
        // Init's own program, whatever the sandbox's file system holds:
        // the link reaches it from any mount namespace.
        ProcKind::Sftp => ("/proc/self/exe".into(), vec!["sftp-server".into()]),
    };
    let env = child_env(&req.env);
    let mut cmd = Command::new(&program);
    cmd.args(&args).env_clear().envs(&env);
    let d = defaults();
    let cwd = req
        .cwd
        .clone()
        .or_else(|| d.cwd.clone())
        .unwrap_or_else(|| "/workspace".into());
    cmd.current_dir(&cwd);
    if let Some(a) = &d.account {
        // std also drops the supplementary groups when it changes the uid.
        std::os::unix::process::CommandExt::uid(&mut cmd, a.uid);
        std::os::unix::process::CommandExt::gid(&mut cmd, a.gid);
    }

    // A plain command (pipes, no PTY, no account to switch to, no REPL
    // pipes) starts with one posix_spawn; the rest fork through std.
    let plain =
        matches!(req.kind, ProcKind::Cmd { .. }) && req.pty.is_none() && d.account.is_none();
    let mut child_ends = None;
    let (out_r, err_r, pty_master, input) = if let Some(size) = req.pty {
        let (master, slave) = open_pty(size)?;
        cmd.stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        let input = master.try_clone()?;
        (master.try_clone()?, None, Some(master), input)
    } else {
        let (in_r, in_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        if plain {
            child_ends = Some([in_r, out_w, err_w]);
        } else {
            cmd.stdin(Stdio::from(in_r))
                .stdout(Stdio::from(out_w))
                .stderr(Stdio::from(err_w));
        }
        (out_r, Some(err_r), None, in_w)
    };
    let is_pty = pty_master.is_some();
    // The workload keeps 0-2 (and a REPL's protocol pipes at 3 and 4);
    // every other descriptor init holds is closed at exec.
    let mut first_private = 3;
    let (code_w, status_r) = match &req.kind {
        ProcKind::Repl { .. } => {
            let (code_r, code_w) = pipe()?;
            let (status_r, status_w) = pipe()?;
            let (cr, sw) = (code_r.as_raw_fd(), status_w.as_raw_fd());
            // Keep the pipe ends alive until spawn returns.
            let keep = (code_r, status_w);
            first_private = 5;
            // SAFETY: the hook runs between fork and exec and makes only
            // async-signal-safe calls (dup2), on descriptors `keep` holds
            // open until spawn returns.
            unsafe {
                cmd.pre_exec(move || {
                    sandstone_sys::fd::dup_to(cr, 3)?;
                    sandstone_sys::fd::dup_to(sw, 4)
                });
            }
            (Some((code_w, keep)), Some(status_r))
        }
        ProcKind::Cmd { .. } | ProcKind::Sftp => (None, None),
    };
    // SAFETY: the hook runs between fork and exec and makes only
    // async-signal-safe calls (setsid, ioctl, close_range), allocating
    // nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Own session: signals and timeouts address the whole group.
            // (A forked child leads no group, so setsid cannot fail.)
            let _ = process::setsid();
            if is_pty {
                // Best effort, as before: the PTY still carries the I/O.
                let _ = sandstone_sys::term::take_controlling_terminal();
            }
            sandstone_sys::fd::cloexec_from(first_private)?;
            Ok(())
        });
    }
    let (proc, rx) = {
        let _guard = SPAWN_LOCK.lock().expect("lock poisoned");
        let pid = as_oom_victim(|| {
            if let Some(ends) = child_ends {
                match spawn_plain(&program, &args, &env, &cwd, &ends) {
                    // A file the kernel cannot run (a script without
                    // `#!`): std's execvp hands it to /bin/sh.
                    Err(e) if e.raw_os_error() == Some(libc::ENOEXEC) => {
                        let [i, o, e] = ends;
                        cmd.stdin(i).stdout(o).stderr(e);
                    }
                    r => return r,
                }
            }
            let child = cmd.spawn()?;
            // The reaper owns the exit status; std must never wait on it.
            let pid = child.id() as i32;
            std::mem::forget(child);
            Ok(pid)
        })
        .map_err(|error| {
            if error.kind() == std::io::ErrorKind::NotFound {
                SpawnError::CommandNotFound(program.clone())
            } else {
                SpawnError::Exec {
                    program: program.clone(),
                    error,
                }
            }
        })?;
        let mut shared = Shared {
            hold_until: match req.reader {
                FirstReader::Attached => None,
                FirstReader::Within(grace) => Some(Instant::now() + grace),
            },
            ..Default::default()
        };
        let rx = shared.add_subscriber();
        let proc = Arc::new(Proc {
            id: req.id.clone(),
            kind: req.kind.clone(),
            cwd: Some(cwd),
            env: req.env.clone(),
            pty_size: req.pty,
            created_at: now_ms(),
            pid,
            // Still under SPAWN_LOCK, which the reaper takes to collect:
            // the child cannot have been reaped, so the pid is still its.
            group: Mutex::new(match process::pidfd_open(Pid::from_raw(pid)) {
                Ok(fd) => Group::Pidfd(fd),
                Err(_) => Group::Number,
            }),
            input: Mutex::new(Some(input)),
            pty: pty_master,
            code: Mutex::new(code_w.map(|(w, _keep)| w)),
            exec_lock: Mutex::new(()),
            shared: Mutex::new(shared),
            exit_slot: Mutex::new(None),
            wake: Mutex::new(Some(Arc::new(eventfd()))),
        });
        let mut t = TABLE.lock().expect("lock poisoned");
        t.by_id.insert(req.id.clone(), proc.clone());
        t.by_pid.insert(pid, proc.clone());
        (proc, rx)
    };
    let p = proc.clone();
    let out_stream = if is_pty { Stream::Pty } else { Stream::Stdout };
    let pumped = std::thread::Builder::new().spawn(move || {
        p.pump(out_r, out_stream, err_r, status_r);
        retire(p);
    });
    if let Err(e) = pumped {
        remove(&req.id);
        return Err(SpawnError::Watch(e));
    }
    Ok((proc, rx))
}

pub fn get(id: &str) -> Option<Arc<Proc>> {
    TABLE.lock().expect("lock poisoned").by_id.get(id).cloned()
}

pub fn list() -> Vec<Arc<Proc>> {
    let mut v: Vec<_> = TABLE
        .lock()
        .expect("lock poisoned")
        .by_id
        .values()
        .cloned()
        .collect();
    v.sort_by_key(|p| p.created_at);
    v
}

/// Forgets a context whose process has exited (its pid may be another
/// process's by now, so nothing is signalled).
pub fn forget_exited(id: &str) {
    let mut t = TABLE.lock().expect("lock poisoned");
    // Not `info()`: that asks the supervisor, whose lock a caller holds.
    let exited = |p: &Arc<Proc>| p.shared.lock().expect("lock poisoned").exit.is_some();
    if t.by_id.get(id).is_some_and(exited) {
        t.by_id.remove(id);
    }
}

/// Kills a context's process group and forgets it.
pub fn remove(id: &str) -> Option<Arc<Proc>> {
    let p = TABLE.lock().expect("lock poisoned").by_id.remove(id)?;
    p.kill();
    Some(p)
}

/// Called once `p`'s exit is published: lets go of what only a live
/// process needs, and forgets the oldest exited contexts past
/// [`KEPT_EXITED`].
fn retire(p: Arc<Proc>) {
    p.wake.lock().expect("lock poisoned").take();
    {
        let mut group = p.group.lock().expect("lock poisoned");
        // ESRCH: no process is left in the group (the reaped leader's
        // number is free for reuse). A group with members left keeps the
        // pidfd, and with it a way to reach them.
        let empty = process::kill_group(Pid::from_raw(p.pid), 0)
            .is_err_and(|e| e.raw_os_error() == Some(libc::ESRCH));
        if empty {
            *group = Group::Gone;
        }
    }
    // Asked with no lock of ours held (see `info`).
    if crate::supervise::info(&p.id).is_some() {
        return;
    }
    let mut t = TABLE.lock().expect("lock poisoned");
    t.exited.push_back(p);
    while t.exited.len() > KEPT_EXITED {
        let old = t.exited.pop_front().expect("longer than the bound");
        // Unless the id was removed, or taken again by a newer context.
        if t.by_id.get(&old.id).is_some_and(|p| Arc::ptr_eq(p, &old)) {
            t.by_id.remove(&old.id);
        }
    }
}

fn set_nonblocking(f: &File) {
    // A pipe or PTY we hold takes the flag.
    let _ = sandstone_sys::fd::set_nonblocking(f.as_fd());
}

impl Proc {
    pub fn info(&self) -> ProcInfo {
        let exit = self.shared.lock().expect("lock poisoned").exit.clone();
        // Asked with no lock of ours held: the supervisor takes this
        // process's locks while it holds its own.
        let supervision = crate::supervise::info(&self.id);
        ProcInfo {
            id: self.id.clone(),
            kind: self.kind.clone(),
            pid: self.pid,
            running: exit.is_none(),
            exit,
            cwd: self.cwd.clone(),
            env: self.env.clone(),
            pty: self.pty.is_some(),
            created_at: self.created_at,
            supervision,
        }
    }

    /// Subscribes to live events. Returns what came before, when `replay`
    /// is set (a [`Event::Truncated`] first if output was dropped), ending
    /// with the exit if the process already ended (the receiver then stays
    /// empty). A reader (one that replays, or a REPL execution reading
    /// live) releases output held for a first one.
    pub fn subscribe(&self, replay: bool) -> (Vec<Event>, Receiver<Event>) {
        let mut s = self.shared.lock().expect("lock poisoned");
        let mut before = Vec::new();
        if replay {
            if s.dropped > 0 {
                before.push(Event::Truncated(s.dropped));
            }
            before.extend(s.buffer.iter().map(|(st, b)| Event::Output(*st, b.clone())));
        }
        if s.hold_until.take().is_some() {
            s.trim();
            self.wake();
        }
        let rx = match &s.exit {
            Some(e) => {
                before.push(Event::Exit(e.clone()));
                sync_channel(0).1
            }
            None => s.add_subscriber(),
        };
        (before, rx)
    }

    /// How long the pump must stop reading output: it is held for a first
    /// reader and the buffer is full. `None` once it may read.
    fn paused_for_reader(&self) -> Option<Duration> {
        let mut s = self.shared.lock().expect("lock poisoned");
        let until = s.hold_until?;
        let now = Instant::now();
        if now >= until {
            s.hold_until = None;
            s.trim();
            return None;
        }
        (s.buffered >= BUFFER_CAP).then(|| until - now)
    }

    /// Hands `ev` to every subscriber. The sends happen outside the lock:
    /// a subscriber that is behind makes this (the pump, and so the
    /// process writing) wait, and never a reader of the table; one that
    /// went away is forgotten.
    fn publish(&self, ev: Event) {
        let subscribers = {
            let mut s = self.shared.lock().expect("lock poisoned");
            if let Event::Output(stream, bytes) = &ev {
                s.buffered += bytes.len();
                s.buffer.push_back((*stream, bytes.clone()));
                s.trim();
            }
            if let Event::Exit(e) = &ev {
                s.exit = Some(e.clone());
                std::mem::take(&mut s.subscribers)
            } else {
                s.subscribers.clone()
            }
        };
        let gone: Vec<u64> = subscribers
            .into_iter()
            .filter(|(_, tx)| tx.send(ev.clone()).is_err())
            .map(|(id, _)| id)
            .collect();
        if !gone.is_empty() {
            self.shared
                .lock()
                .expect("lock poisoned")
                .subscribers
                .retain(|(id, _)| !gone.contains(id));
        }
    }

    fn wake(&self) {
        if let Some(wake) = self.wake.lock().expect("lock poisoned").as_ref() {
            // Only a counter at its maximum refuses, and one wake is enough.
            let _ = sandstone_sys::fd::eventfd_signal(wake.as_fd());
        }
    }

    fn exited(&self, exit: Exit) {
        let timed_out = self.shared.lock().expect("lock poisoned").timed_out;
        let info = match exit {
            Exit::Signal(sig) => ExitInfo {
                exit_code: Some(128 + sig),
                signal: Some(sig),
                timed_out,
            },
            Exit::Code(code) => ExitInfo {
                exit_code: Some(code),
                signal: None,
                timed_out,
            },
        };
        *self.pending_exit() = Some(info);
        self.wake();
    }

    fn pending_exit(&self) -> std::sync::MutexGuard<'_, Option<ExitInfo>> {
        self.exit_slot.lock().expect("lock poisoned")
    }

    /// Reads the process's output (and REPL status) until it exits, then
    /// drains what is left and publishes the exit.
    fn pump(&self, out: File, out_stream: Stream, err: Option<File>, status: Option<File>) {
        let mut fds: Vec<(Option<File>, Source)> = vec![(Some(out), Source::Out(out_stream))];
        if let Some(e) = err {
            fds.push((Some(e), Source::Out(Stream::Stderr)));
        }
        if let Some(s) = status {
            fds.push((Some(s), Source::Status));
        }
        for f in fds.iter().filter_map(|(f, _)| f.as_ref()) {
            set_nonblocking(f);
        }
        let wake = self
            .wake
            .lock()
            .expect("lock poisoned")
            .clone()
            .expect("closed only once the pump is done");
        let mut status_buf = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // Output held for a first reader fills the buffer: read nothing
            // (the process waits on its pipe) until a reader comes or the
            // grace ends. The REPL status waits too: it must follow the
            // output written before it.
            let paused = self.paused_for_reader();
            let mut pollfds: Vec<PollFd> = fds
                .iter()
                .map(|(f, _)| {
                    PollFd::readable(match (f, paused) {
                        (Some(f), None) => Some(f.as_fd()),
                        _ => None,
                    })
                })
                .collect();
            pollfds.push(PollFd::readable(Some(wake.as_fd())));
            // Rounded up, so a wait never ends just before the grace does.
            let timeout =
                paused.map(|d| Duration::from_millis(d.as_millis().min(60_000) as u64 + 1));
            if !matches!(sandstone_sys::fd::poll(&mut pollfds, timeout), Ok(1..)) {
                continue;
            }
            // Output first: anything written before a status or exit must be
            // published before it.
            for (i, (slot, src)) in fds.iter_mut().enumerate() {
                if !pollfds[i].is_ready() || matches!(src, Source::Status) {
                    continue;
                }
                if let Source::Out(stream) = src
                    && !self.drain(slot, *stream, &mut buf, Drain::UntilHeld)
                {
                    *slot = None;
                }
            }
            for (i, (slot, src)) in fds.iter_mut().enumerate() {
                // Polled only while open: an event means the slot holds it.
                let Some(f) = slot.as_mut() else { continue };
                if !pollfds[i].is_ready() || !matches!(src, Source::Status) {
                    continue;
                }
                match f.read(&mut buf) {
                    Ok(0) => *slot = None,
                    Ok(n) => {
                        status_buf.extend_from_slice(&buf[..n]);
                        while let Some(pos) = status_buf.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = status_buf.drain(..=pos).collect();
                            let code = String::from_utf8_lossy(&line).trim().parse().ok();
                            self.publish(Event::ExecDone(code));
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => *slot = None,
                }
            }
            if pollfds.last().is_some_and(PollFd::is_ready) {
                // Resets the counter; it was ready, so there is one to read.
                let _ = sandstone_sys::fd::eventfd_clear(wake.as_fd());
                if self.pending_exit().is_none() {
                    continue; // a reader came for held output
                }
                for (slot, src) in fds.iter_mut() {
                    if let Source::Out(stream) = src {
                        // The last read may pass the cap (see `trim`).
                        self.drain(slot, *stream, &mut buf, Drain::All);
                    }
                }
                let info = self
                    .pending_exit()
                    .take()
                    .expect("exit recorded before wake");
                self.input.lock().expect("lock poisoned").take();
                self.code.lock().expect("lock poisoned").take();
                crate::logs::exit(&self.id, info.exit_code);
                self.publish(Event::Exit(info.clone()));
                crate::supervise::exited(&self.id, self.pid, &info);
                return;
            }
        }
    }

    /// Reads what is available; false once the descriptor is finished.
    /// `Drain::UntilHeld` also stops when output held for a first reader
    /// fills the buffer: a writer as fast as this loop (or one that runs
    /// while the pump waits for a core) never lets the pipe run dry, and
    /// reading on would push held output out of the buffer.
    fn drain(&self, slot: &mut Option<File>, stream: Stream, buf: &mut [u8], how: Drain) -> bool {
        let Some(f) = slot.as_mut() else { return false };
        loop {
            match f.read(buf) {
                Ok(0) => return false,
                Ok(n) => {
                    // One copy, shared by the log, the buffer and every reader.
                    let chunk: Arc<[u8]> = Arc::from(&buf[..n]);
                    crate::logs::output(&self.id, stream, chunk.clone());
                    self.publish(Event::Output(stream, chunk));
                    if how == Drain::UntilHeld && self.paused_for_reader().is_some() {
                        return true;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                // EIO is how a PTY master reports that the last slave closed.
                Err(_) => return false,
            }
        }
    }

    pub fn signal(&self, sig: i32) -> std::io::Result<()> {
        match &*self.group.lock().expect("lock poisoned") {
            Group::Pidfd(fd) => match process::signal_group_of(fd.as_fd(), sig) {
                // Before Linux 6.9 the flag is EINVAL.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.signal_by_number(sig),
                done => done,
            },
            Group::Number => self.signal_by_number(sig),
            Group::Gone => Err(std::io::Error::from_raw_os_error(libc::ESRCH)),
        }
    }

    fn signal_by_number(&self, sig: i32) -> std::io::Result<()> {
        let pid = Pid::from_raw(self.pid);
        process::kill_group(pid, sig).or_else(|_| process::kill(pid, sig))
    }

    pub fn kill(&self) {
        let _ = self.signal(libc::SIGKILL);
    }

    /// Kills the process group after a timeout and marks the exit as such.
    pub fn time_out(&self) {
        self.shared.lock().expect("lock poisoned").timed_out = true;
        self.kill();
    }

    pub fn write_input(&self, data: &[u8]) -> std::io::Result<()> {
        match self.input.lock().expect("lock poisoned").as_mut() {
            Some(f) => f.write_all(data),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "stdin is closed",
            )),
        }
    }

    pub fn close_input(&self) {
        if self.pty.is_none() {
            self.input.lock().expect("lock poisoned").take();
        }
    }

    pub fn resize(&self, size: PtySize) -> bool {
        match &self.pty {
            Some(m) => {
                set_winsize(m, size);
                true
            }
            None => false,
        }
    }
}

enum Source {
    Out(Stream),
    Status,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_as_execvp_finds_them() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let write = |name: &str, mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            let p = bin.join(name);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write("tool", 0o755);
        write("plain", 0o644);
        let here = dir.path();
        // A relative PATH entry is taken from the child's cwd; the first
        // executable file wins; a file without an x bit or a directory is
        // passed over.
        assert_eq!(
            resolve("tool", Some("/nonexistent:bin"), here),
            Some(bin.join("tool"))
        );
        assert_eq!(resolve("plain", Some("bin"), here), None);
        assert_eq!(resolve("bin", Some(":"), here), None);
        assert_eq!(resolve("sh", None, here), Some("/bin/sh".into()));
        // A name with a slash is a path, as it is.
        assert_eq!(resolve("./x", Some("bin"), here), Some("./x".into()));
        assert_eq!(resolve("", Some("bin"), here), None);
    }

    #[test]
    fn spawn_errors_keep_the_codes_and_texts_the_daemon_maps() {
        let cases = [
            (
                SpawnError::Exists("a".into()),
                ErrorCode::AlreadyExists,
                "context a exists",
            ),
            (
                SpawnError::EmptyCommand,
                ErrorCode::InvalidArgument,
                "command is empty",
            ),
            (
                repl::UnsupportedLanguage("ruby".into()).into(),
                ErrorCode::InvalidArgument,
                "unsupported REPL language: ruby (use bash or python)",
            ),
            (
                SpawnError::CommandNotFound("nope".into()),
                ErrorCode::NotFound,
                "command not found: nope",
            ),
            (
                SpawnError::Exec {
                    program: "x".into(),
                    error: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
                },
                ErrorCode::PermissionDenied,
                "x: permission denied",
            ),
        ];
        for (e, code, text) in cases {
            assert_eq!((e.code(), e.to_string()), (code, text.to_string()));
        }
    }
}
