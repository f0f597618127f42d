//! Supervised contexts: a command PID 1 starts again when it exits, as
//! its [`RestartSpec`] says, with a growing wait between attempts and a
//! limit on restarts within a window. PID 1 reaps every process, so it
//! learns of an exit at once and needs the daemon for nothing: supervision
//! goes on while the daemon restarts. (A pause ends the runtime; the
//! daemon starts what it supervises again in the next one.)

use crate::procs::{self, SpawnError, SpawnRequest};
use crate::proto::{
    AttemptInfo, ExitInfo, ProcKind, PtySize, RestartPolicy, RestartSpec, SupervisedPhase,
    SupervisionInfo,
};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Attempts remembered per context.
const KEPT_ATTEMPTS: usize = 20;
/// The shortest wait before a restart, whatever the spec says: a command
/// that dies at once must not spin PID 1.
const MIN_BACKOFF_MS: u64 = 100;

/// Attempt epochs, unique across every context: a wait for an attempt of a
/// context since removed and created again must not match the new one's.
static EPOCHS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_epoch() -> u64 {
    EPOCHS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// What starts each attempt.
#[derive(Clone)]
pub struct Command {
    pub kind: ProcKind,
    pub cwd: Option<String>,
    pub env: BTreeMap<String, String>,
    pub pty: Option<PtySize>,
}

struct Supervised {
    command: Command,
    spec: RestartSpec,
    phase: SupervisedPhase,
    attempts: VecDeque<AttemptInfo>,
    restart_count: u32,
    /// When each restart in the window happened.
    recent: VecDeque<Instant>,
    /// Bumped by every new attempt: a wait for one that was superseded
    /// (a replacement, a removal) starts nothing.
    epoch: u64,
}

static SUPERVISED: LazyLock<Mutex<HashMap<String, Supervised>>> = LazyLock::new(Default::default);

fn table() -> std::sync::MutexGuard<'static, HashMap<String, Supervised>> {
    SUPERVISED.lock().expect("lock poisoned")
}

/// Starts context `id` under supervision (its first attempt).
pub fn start(id: &str, command: Command, spec: RestartSpec) -> Result<(), SpawnError> {
    let mut t = table();
    let s = t.entry(id.to_string()).or_insert(Supervised {
        command,
        spec,
        phase: SupervisedPhase::Running,
        attempts: VecDeque::new(),
        restart_count: 0,
        recent: VecDeque::new(),
        epoch: next_epoch(),
    });
    let started = attempt(id, s);
    if started.is_err() {
        t.remove(id);
    }
    started
}

/// Starts the next attempt of `s` (the previous one has exited or was
/// removed); a failure to start is recorded as the attempt's end.
fn attempt(id: &str, s: &mut Supervised) -> Result<(), SpawnError> {
    s.epoch = next_epoch();
    let number = s.attempts.back().map_or(1, |a| a.number + 1);
    let spawned = procs::spawn(SpawnRequest {
        id: id.to_string(),
        kind: s.command.kind.clone(),
        cwd: s.command.cwd.clone(),
        env: s.command.env.clone(),
        pty: s.command.pty,
        reader: procs::FirstReader::later(None),
    });
    let now = procs::now_ms();
    let (pid, outcome) = match &spawned {
        Ok((p, _)) => (p.pid, None),
        Err(e) => (0, Some(e.to_string())),
    };
    s.attempts.push_back(AttemptInfo {
        number,
        pid,
        started_at: now,
        finished_at: outcome.as_ref().map(|_| now),
        exit_code: None,
        reason: outcome,
    });
    while s.attempts.len() > KEPT_ATTEMPTS {
        s.attempts.pop_front();
    }
    s.phase = if spawned.is_ok() {
        SupervisedPhase::Running
    } else {
        SupervisedPhase::Failed
    };
    spawned.map(|_| ())
}

/// A supervised context's terminal was resized: its next attempts start
/// at the new size.
pub fn resized(id: &str, size: PtySize) {
    if let Some(s) = table().get_mut(id)
        && s.command.pty.is_some()
    {
        s.command.pty = Some(size);
    }
}

/// Called by a context's pump once its process has exited: decides, by
/// the policy, whether and when it starts again.
pub fn exited(id: &str, pid: i32, exit: &ExitInfo) {
    let mut t = table();
    let Some(s) = t.get_mut(id) else { return };
    let Some(current) = s.attempts.back_mut().filter(|a| a.pid == pid) else {
        return; // an attempt already superseded
    };
    current.finished_at = Some(procs::now_ms());
    current.exit_code = exit.exit_code;
    current.reason = Some(match (exit.signal, exit.exit_code) {
        (Some(sig), _) => format!("killed by signal {sig}"),
        (None, Some(0)) => "exited".into(),
        (None, Some(c)) => format!("exited with code {c}"),
        (None, None) => "exited".into(),
    });
    let failed = exit.signal.is_some() || exit.exit_code != Some(0);
    let again = match s.spec.policy {
        RestartPolicy::Never => false,
        RestartPolicy::OnFailure => failed,
        RestartPolicy::Always => true,
    };
    if !again {
        s.phase = if failed {
            SupervisedPhase::Failed
        } else {
            SupervisedPhase::Exited
        };
        return;
    }
    let window = Duration::from_millis(s.spec.window_ms);
    while s.recent.front().is_some_and(|at| at.elapsed() > window) {
        s.recent.pop_front();
    }
    if s.recent.len() >= s.spec.max_restarts as usize {
        s.phase = SupervisedPhase::Failed;
        if let Some(a) = s.attempts.back_mut() {
            let why = a.reason.take().unwrap_or_default();
            a.reason = Some(format!(
                "{why}; {} restarts within {} s: not restarted",
                s.recent.len(),
                window.as_secs()
            ));
        }
        return;
    }
    let shift = s.recent.len().min(20) as u32;
    let wait = s
        .spec
        .initial_backoff_ms
        .saturating_mul(1u64 << shift)
        .min(s.spec.max_backoff_ms.max(s.spec.initial_backoff_ms))
        .max(MIN_BACKOFF_MS);
    s.phase = SupervisedPhase::Backoff;
    let epoch = s.epoch;
    let id = id.to_string();
    let spawned = std::thread::Builder::new()
        .name("supervise".into())
        .spawn(move || {
            std::thread::sleep(Duration::from_millis(wait));
            restart_after_wait(&id, epoch);
        });
    if spawned.is_err() {
        s.phase = SupervisedPhase::Failed;
    }
}

fn restart_after_wait(id: &str, epoch: u64) {
    let mut t = table();
    let Some(s) = t.get_mut(id).filter(|s| s.epoch == epoch) else {
        return;
    };
    procs::forget_exited(id);
    s.recent.push_back(Instant::now());
    s.restart_count += 1;
    let _ = attempt(id, s);
}

/// A new attempt now, in place of the current one (which is stopped).
/// `false` when `id` is not supervised.
pub fn replace(id: &str) -> Result<bool, SpawnError> {
    // A pending restart now starts nothing.
    let epoch = match table().get_mut(id) {
        Some(s) => {
            s.epoch = next_epoch();
            s.epoch
        }
        None => return Ok(false),
    };
    // Waited for without the supervisor's lock: the old process's exit
    // reaches `exited`, which takes it.
    if let Some(old) = procs::remove(id) {
        // Bounded: the old process group was sent SIGKILL.
        let (before, rx) = old.subscribe(false);
        if before.is_empty() {
            let _ = rx.recv_timeout(Duration::from_secs(5));
        }
    }
    let mut t = table();
    match t.get_mut(id).filter(|s| s.epoch == epoch) {
        Some(s) => {
            procs::forget_exited(id);
            s.restart_count += 1;
            attempt(id, s).map(|()| true)
        }
        // Removed, or replaced again, meanwhile: that call's outcome stands.
        None => Ok(true),
    }
}

/// Stops supervising `id` (its process is the caller's to stop).
pub fn stop(id: &str) {
    table().remove(id);
}

pub fn info(id: &str) -> Option<SupervisionInfo> {
    let t = table();
    let s = t.get(id)?;
    Some(SupervisionInfo {
        phase: s.phase,
        restart_count: s.restart_count,
        attempts: s.attempts.iter().cloned().collect(),
    })
}
