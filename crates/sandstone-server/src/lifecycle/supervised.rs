//! Execution sessions (Sandbox0's `/sandboxes/{id}/sessions`): commands a
//! sandbox keeps running. PID 1 supervises each one's attempts (restart
//! policy, backoff, the limit within a window: `sandstone-init`'s
//! `supervise`), so supervision goes on while the daemon restarts. The
//! specs live in the volume (`sessions.json`), so they outlive pauses and
//! move with the sandbox; every runtime generation starts the sessions
//! whose desired state is `running`. A session runs as the init context
//! named by its id, and its output and exits are in the sandbox's log.

use super::{Error, Lifecycle, Result, Runtime, internal};
use crate::initclient::{self, InitError};
use sandstone_api::sessions::{
    Attempt, DesiredState, EventCursor, ExecutionSession, ExecutionSessionSpec, Phase,
    RestartPolicy, RuntimeRecovery,
};
use sandstone_api::timefmt::{now_ms, rfc3339_ms};
use sandstone_init::proto::{self, ErrorCode, ProcInfo, ProcKind, Request, Response};
use sandstone_volumes::SandboxPaths;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A session as the volume keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    spec: ExecutionSessionSpec,
    spec_version: i64,
    created_ms: i64,
    updated_ms: i64,
}

type Book = BTreeMap<String, Stored>;

/// Sessions a sandbox may have at once.
const MAX_SESSIONS: usize = 64;

fn file(paths: &SandboxPaths) -> PathBuf {
    paths.data.join("sessions.json")
}

fn load(paths: &SandboxPaths) -> Result<Book> {
    match std::fs::read(file(paths)) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(internal),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Book::new()),
        Err(e) => Err(internal(e)),
    }
}

/// Written beside, then renamed: a crash leaves the old book or the new.
fn save(paths: &SandboxPaths, book: &Book) -> Result<()> {
    let path = file(paths);
    let tmp = path.with_extension("json.partial");
    let bytes = serde_json::to_vec(book).map_err(internal)?;
    std::fs::write(&tmp, bytes).map_err(internal)?;
    std::fs::rename(&tmp, &path).map_err(internal)
}

impl From<InitError> for Error {
    fn from(e: InitError) -> Error {
        match e {
            InitError::Unreachable(io) => Error::InitUnreachable(io),
            InitError::Refused { code, message } => match code {
                ErrorCode::NotFound | ErrorCode::InvalidArgument | ErrorCode::PermissionDenied => {
                    Error::Invalid(message)
                }
                ErrorCode::AlreadyExists | ErrorCode::Busy => Error::Conflict(message),
                _ => Error::Internal(message),
            },
        }
    }
}

fn restart_spec(spec: &ExecutionSessionSpec) -> proto::RestartSpec {
    let r = &spec.lifecycle.restart;
    proto::RestartSpec {
        policy: match r.policy {
            RestartPolicy::Never => proto::RestartPolicy::Never,
            RestartPolicy::OnFailure => proto::RestartPolicy::OnFailure,
            RestartPolicy::Always => proto::RestartPolicy::Always,
        },
        max_restarts: r.max_restarts,
        window_ms: u64::from(r.window_seconds) * 1000,
        initial_backoff_ms: u64::from(r.initial_backoff_ms),
        max_backoff_ms: u64::from(r.max_backoff_ms),
    }
}

impl Lifecycle {
    pub async fn create_session(
        &self,
        id: &str,
        spec: ExecutionSessionSpec,
    ) -> Result<ExecutionSession> {
        spec.check().map_err(Error::Invalid)?;
        let _guard = self.lock(id).await;
        let row = self.row(id).await?;
        let paths = self.storage.paths(id);
        let mut book = load(&paths)?;
        if book.len() >= MAX_SESSIONS {
            return Err(Error::Conflict(format!(
                "sandbox {id} has {MAX_SESSIONS} sessions already; delete one first"
            )));
        }
        let sid = format!("ses_{}", sandstone_api::random_hex(8));
        let now = now_ms();
        let stored = Stored {
            spec,
            spec_version: 1,
            created_ms: now,
            updated_ms: now,
        };
        if let Some(rt) = self.runtime(id)
            && stored.spec.lifecycle.desired_state == DesiredState::Running
        {
            // Started before it is kept: a command that cannot start is
            // the caller's 400, and nothing is left of it.
            start(&rt, &sid, &stored.spec).await?;
        }
        book.insert(sid.clone(), stored);
        save(&paths, &book)?;
        self.describe(id, row.generation, &sid, &book[&sid]).await
    }

    pub async fn sessions(&self, id: &str) -> Result<Vec<ExecutionSession>> {
        let row = self.row(id).await?;
        let book = load(&self.storage.paths(id))?;
        let mut out = Vec::with_capacity(book.len());
        for (sid, s) in &book {
            out.push(self.describe(id, row.generation, sid, s).await?);
        }
        Ok(out)
    }

    pub async fn session(&self, id: &str, sid: &str) -> Result<ExecutionSession> {
        let row = self.row(id).await?;
        let book = load(&self.storage.paths(id))?;
        let s = book
            .get(sid)
            .ok_or_else(|| Error::not_found("session", sid))?;
        self.describe(id, row.generation, sid, s).await
    }

    /// `PUT .../sessions/{sid}`: a new spec; a running session starts a
    /// new attempt with it.
    pub async fn replace_session(
        &self,
        id: &str,
        sid: &str,
        spec: ExecutionSessionSpec,
    ) -> Result<ExecutionSession> {
        spec.check().map_err(Error::Invalid)?;
        self.change_session(id, sid, |s| {
            s.spec = spec;
            true
        })
        .await
    }

    /// `PUT .../desired-state`.
    pub async fn set_session_state(
        &self,
        id: &str,
        sid: &str,
        state: DesiredState,
    ) -> Result<ExecutionSession> {
        self.change_session(id, sid, |s| {
            let changed = s.spec.lifecycle.desired_state != state;
            s.spec.lifecycle.desired_state = state;
            changed
        })
        .await
    }

    /// `POST .../attempts`: a new attempt now. One that is running is
    /// replaced only when the caller says so.
    pub async fn new_attempt(
        &self,
        id: &str,
        sid: &str,
        replace_current: bool,
    ) -> Result<ExecutionSession> {
        let _guard = self.lock(id).await;
        let row = self.row(id).await?;
        let book = load(&self.storage.paths(id))?;
        let s = book
            .get(sid)
            .ok_or_else(|| Error::not_found("session", sid))?;
        let rt = self.runtime(id).ok_or_else(|| {
            Error::Conflict(format!("sandbox {id} is not running; resume it first"))
        })?;
        if s.spec.lifecycle.desired_state == DesiredState::Stopped {
            return Err(Error::Conflict(format!(
                "session {sid} is stopped; set its desired state to running"
            )));
        }
        let running = matches!(proc_info(&rt, sid).await?, Some(p) if p.running);
        if running && !replace_current {
            return Err(Error::Conflict(format!(
                "session {sid} has a running attempt; set replace_current to replace it"
            )));
        }
        match initclient::call(&rt.socket, &Request::Restart { id: sid.into() }, &[]).await {
            Ok(_) => {}
            // Gone from init (it never started in this runtime): start it.
            Err(InitError::Refused {
                code: ErrorCode::NotFound,
                ..
            }) => start(&rt, sid, &s.spec).await?,
            Err(e) => return Err(e.into()),
        }
        self.describe(id, row.generation, sid, s).await
    }

    pub async fn signal_session(&self, id: &str, sid: &str, signal: i32) -> Result<()> {
        let book = load(&self.storage.paths(id))?;
        if !book.contains_key(sid) {
            return Err(Error::not_found("session", sid));
        }
        let rt = self.runtime(id).ok_or_else(|| {
            Error::Conflict(format!("sandbox {id} is not running; resume it first"))
        })?;
        let req = Request::Signal {
            id: sid.into(),
            signal,
        };
        initclient::call(&rt.socket, &req, &[]).await?;
        Ok(())
    }

    pub async fn delete_session(&self, id: &str, sid: &str) -> Result<()> {
        let _guard = self.lock(id).await;
        let paths = self.storage.paths(id);
        let mut book = load(&paths)?;
        if book.remove(sid).is_none() {
            return Err(Error::not_found("session", sid));
        }
        if let Some(rt) = self.runtime(id) {
            stop(&rt, sid).await?;
        }
        save(&paths, &book)
    }

    /// Applies `change` to a session's spec; when it says the process
    /// must follow, the running runtime starts or stops it.
    async fn change_session(
        &self,
        id: &str,
        sid: &str,
        change: impl FnOnce(&mut Stored) -> bool,
    ) -> Result<ExecutionSession> {
        let _guard = self.lock(id).await;
        let row = self.row(id).await?;
        let paths = self.storage.paths(id);
        let mut book = load(&paths)?;
        let s = book
            .get_mut(sid)
            .ok_or_else(|| Error::not_found("session", sid))?;
        let before = s.clone();
        let follow = change(s);
        s.spec_version += 1;
        s.updated_ms = now_ms();
        if follow && let Some(rt) = self.runtime(id) {
            stop(&rt, sid).await?;
            if s.spec.lifecycle.desired_state == DesiredState::Running
                && let Err(e) = start(&rt, sid, &s.spec).await
            {
                // Nothing changes: the old spec runs again, as it was.
                if before.spec.lifecycle.desired_state == DesiredState::Running {
                    start(&rt, sid, &before.spec).await?;
                }
                return Err(e);
            }
        }
        save(&paths, &book)?;
        self.describe(id, row.generation, sid, &book[sid]).await
    }

    /// Starts a new runtime's sessions: those whose desired state is
    /// `running`; a `runtime_recovery: stop` one becomes `stopped` instead
    /// (it ended with the runtime before). Failures are logged, not fatal: the
    /// sandbox is up, and the session reads as failed.
    pub(crate) async fn start_sessions(&self, id: &str, rt: &Runtime) {
        let paths = self.storage.paths(id);
        let mut book = match load(&paths) {
            Ok(b) if !b.is_empty() => b,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "execution sessions not read");
                return;
            }
        };
        let mut changed = false;
        for (sid, s) in book.iter_mut() {
            if s.spec.lifecycle.desired_state != DesiredState::Running {
                continue;
            }
            if s.spec.lifecycle.runtime_recovery == RuntimeRecovery::Stop {
                s.spec.lifecycle.desired_state = DesiredState::Stopped;
                s.updated_ms = now_ms();
                changed = true;
                continue;
            }
            if let Err(e) = start(rt, sid, &s.spec).await {
                tracing::warn!(sandbox = %id, session = %sid, error = %e, "execution session did not start");
            }
        }
        if changed && let Err(e) = save(&paths, &book) {
            tracing::warn!(sandbox = %id, error = %e, "execution sessions not saved");
        }
    }

    async fn describe(
        &self,
        id: &str,
        generation: i64,
        sid: &str,
        s: &Stored,
    ) -> Result<ExecutionSession> {
        let running_sandbox = self.runtime(id);
        let info = match &running_sandbox {
            Some(rt) => proc_info(rt, sid).await?,
            None => None,
        };
        let desired = s.spec.lifecycle.desired_state;
        let sup = info.as_ref().and_then(|p| p.supervision.as_ref());
        let phase = match (desired, &running_sandbox, sup) {
            (DesiredState::Stopped, _, _) => Phase::Stopped,
            (DesiredState::Running, None, _) => Phase::Paused,
            (DesiredState::Running, Some(_), None) => Phase::Pending,
            (DesiredState::Running, Some(_), Some(sup)) => match sup.phase {
                proto::SupervisedPhase::Running => Phase::Running,
                proto::SupervisedPhase::Backoff => Phase::Backoff,
                proto::SupervisedPhase::Exited => Phase::Exited,
                proto::SupervisedPhase::Failed => Phase::Failed,
            },
        };
        let attempt = sup.and_then(|sup| sup.attempts.last()).map(|a| Attempt {
            id: format!("{sid}.{generation}.{}", a.number),
            number: a.number as i64,
            runtime_generation: generation,
            pid: (a.pid > 0).then_some(a.pid),
            started_at: Some(rfc3339_ms(a.started_at as i64)),
            finished_at: a.finished_at.map(|t| rfc3339_ms(t as i64)),
            exit_code: a.exit_code,
            reason: a.reason.clone(),
        });
        let last_activity = sup
            .and_then(|sup| sup.attempts.last())
            .map(|a| a.finished_at.unwrap_or(a.started_at) as i64)
            .unwrap_or(s.updated_ms)
            .max(s.updated_ms);
        Ok(ExecutionSession {
            id: sid.to_string(),
            spec: s.spec.clone(),
            spec_version: s.spec_version,
            phase,
            runtime_generation: generation,
            attempt,
            restart_count: sup.map_or(0, |sup| sup.restart_count as i32),
            cursor: EventCursor {
                earliest: 0,
                latest: 0,
            },
            created_at: rfc3339_ms(s.created_ms),
            updated_at: rfc3339_ms(s.updated_ms),
            last_activity_at: rfc3339_ms(last_activity),
        })
    }
}

/// Starts (supervised) session `sid` in `rt`.
async fn start(rt: &Runtime, sid: &str, spec: &ExecutionSessionSpec) -> Result<()> {
    let _ = initclient::call(&rt.socket, &Request::Remove { id: sid.into() }, &[]).await;
    let req = Request::Spawn {
        id: sid.into(),
        kind: ProcKind::Cmd {
            argv: spec.command.clone(),
        },
        cwd: spec.cwd.clone(),
        env: rt
            .env
            .iter()
            .chain(&spec.env)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        pty: None,
        attach: false,
        timeout_ms: None,
        restart: Some(restart_spec(spec)),
    };
    initclient::call(&rt.socket, &req, &[]).await?;
    Ok(())
}

/// Stops session `sid` in `rt` (gone already is fine).
async fn stop(rt: &Runtime, sid: &str) -> Result<()> {
    match initclient::call(&rt.socket, &Request::Remove { id: sid.into() }, &[]).await {
        Ok(_)
        | Err(InitError::Refused {
            code: ErrorCode::NotFound,
            ..
        }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn proc_info(rt: &Runtime, sid: &str) -> Result<Option<ProcInfo>> {
    match initclient::call(&rt.socket, &Request::Get { id: sid.into() }, &[]).await {
        Ok((Response::Proc { info }, _)) => Ok(Some(info)),
        Ok(_) => Ok(None),
        Err(InitError::Refused {
            code: ErrorCode::NotFound,
            ..
        }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
