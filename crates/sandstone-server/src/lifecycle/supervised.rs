//! Execution sessions (Sandbox0's `/sandboxes/{id}/sessions`): commands a
//! sandbox keeps running. PID 1 supervises each one's attempts (restart
//! policy, backoff, the limit within a window: `sandstone-init`'s
//! `supervise`), so supervision goes on while the daemon restarts. The
//! specs live in the volume (`sessions.json`), so they outlive pauses and
//! move with the sandbox; every runtime generation starts the sessions
//! whose desired state is `running`. A session runs as the init context
//! named by its id, and its output and exits are in the sandbox's log.

use super::logs;
use super::{Error, Lifecycle, Result, Runtime, internal};
use crate::initclient::InitError;
use sandstone_api::logs::{Kind, LogStream};
use sandstone_api::sessions::{
    Attempt, DesiredState, EventCursor, ExecutionSession, ExecutionSessionSpec, InputRequest,
    InputResponse, Phase, ResizeRequest, RestartPolicy, RuntimeRecovery, SessionEvent,
    SessionEventKind, SessionEventPage,
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
/// Input ids remembered per session, to tell a retry from new input.
const REMEMBERED_INPUTS: usize = 256;

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
        self.refuse_if_held(id, "start a session")?;
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
        match rt
            .socket
            .call(&Request::Restart { id: sid.into() }, &[])
            .await
        {
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

    /// `GET .../events`: the session's output (as it was read) and exits,
    /// from the sandbox's log, after `after` (0: the oldest kept).
    pub async fn session_events(
        &self,
        id: &str,
        sid: &str,
        after: i64,
        limit: usize,
    ) -> Result<SessionEventPage> {
        let row = self.row(id).await?;
        if !load(&self.storage.paths(id))?.contains_key(sid) {
            return Err(Error::not_found("session", sid));
        }
        let dir = logs::dir(&self.storage.paths(id));
        let context = sid.to_string();
        let read = logs::run(move || {
            if !logs::is_record_position(&dir, after)? {
                return Ok(None);
            }
            Ok(Some((
                logs::retained(&dir)?,
                logs::records(&dir, logs::Select::Context(&context), after, limit)?,
            )))
        })
        .await
        .map_err(internal)?;
        let Some(((earliest, latest), (records, _))) = read else {
            return Err(Error::Invalid(
                "invalid query parameter `after`: not a sequence number this server returned"
                    .into(),
            ));
        };
        if after > 0 && after < earliest {
            return Err(Error::Gone(format!(
                "events after {after} are no longer kept (the oldest kept is {earliest}); start again from 0"
            )));
        }
        let events = records
            .into_iter()
            .map(|r| event(sid, row.generation, r))
            .collect();
        Ok(SessionEventPage {
            events,
            cursor: EventCursor { earliest, latest },
        })
    }

    /// `POST .../inputs`: bytes for the current attempt's stdin (and its
    /// end, with `eof`). A retried `input_id` is not written twice (this
    /// daemon remembers the last ones of each session).
    pub async fn session_input(
        &self,
        id: &str,
        sid: &str,
        req: InputRequest,
    ) -> Result<InputResponse> {
        use base64::Engine;
        let session = self.session(id, sid).await?;
        let attempt_id = session.attempt.map(|a| a.id).unwrap_or_default();
        if req
            .expected_attempt_id
            .as_ref()
            .is_some_and(|want| *want != attempt_id)
        {
            return Err(Error::Conflict(format!(
                "the current attempt is {attempt_id:?}, not {:?}",
                req.expected_attempt_id.unwrap_or_default()
            )));
        }
        let data = match &req.data_base64 {
            Some(b) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| Error::Invalid(format!("invalid field `data_base64`: {e}")))?,
            None => Vec::new(),
        };
        if session.phase != Phase::Running {
            return Err(Error::Conflict(format!(
                "session {sid} is {:?}: no attempt takes input",
                session.phase
            )));
        }
        let key = (id.to_string(), sid.to_string());
        if crate::lock(&self.session_inputs)
            .get(&key)
            .is_some_and(|seen| seen.contains(&req.input_id))
        {
            return Ok(InputResponse {
                input_id: req.input_id,
                attempt_id,
                accepted: true,
                duplicate: true,
            });
        }
        let rt = self.runtime(id).ok_or_else(|| {
            Error::Conflict(format!("sandbox {id} is not running; resume it first"))
        })?;
        if !data.is_empty() {
            rt.socket
                .call(&Request::Input { id: sid.into() }, &data)
                .await?;
        }
        if req.eof {
            rt.socket
                .call(&Request::CloseStdin { id: sid.into() }, &[])
                .await?;
        }
        let mut seen = crate::lock(&self.session_inputs);
        let ids = seen.entry(key).or_default();
        ids.push_back(req.input_id.clone());
        while ids.len() > REMEMBERED_INPUTS {
            ids.pop_front();
        }
        Ok(InputResponse {
            input_id: req.input_id,
            attempt_id,
            accepted: true,
            duplicate: false,
        })
    }

    /// `POST .../signals`: to the current attempt's process group, when
    /// it is still the attempt the caller expects.
    pub async fn signal_session(
        &self,
        id: &str,
        sid: &str,
        signal: i32,
        expected_attempt: Option<&str>,
    ) -> Result<()> {
        let rt = self.expect_attempt(id, sid, expected_attempt).await?;
        let req = Request::Signal {
            id: sid.into(),
            signal,
        };
        rt.socket.call(&req, &[]).await?;
        Ok(())
    }

    /// `PUT .../terminal`: a `pty` session's new size, for its current
    /// attempt and the ones after it.
    pub async fn resize_session(&self, id: &str, sid: &str, req: &ResizeRequest) -> Result<()> {
        req.check().map_err(Error::Invalid)?;
        let rt = self
            .expect_attempt(id, sid, req.expected_attempt_id.as_deref())
            .await?;
        let req = Request::Resize {
            id: sid.into(),
            size: proto::PtySize {
                rows: req.rows as u16,
                cols: req.cols as u16,
            },
        };
        rt.socket.call(&req, &[]).await?;
        Ok(())
    }

    /// The running sandbox of session `sid`, once its current attempt is
    /// `expected` (when the caller names one): a request meant for an
    /// attempt since replaced must not reach the next.
    async fn expect_attempt(&self, id: &str, sid: &str, expected: Option<&str>) -> Result<Runtime> {
        let session = self.session(id, sid).await?;
        let rt = self.runtime(id).ok_or_else(|| {
            Error::Conflict(format!("sandbox {id} is not running; resume it first"))
        })?;
        let current = session.attempt.map(|a| a.id).unwrap_or_default();
        if let Some(want) = expected
            && want != current
        {
            return Err(Error::Conflict(format!(
                "the current attempt is {current:?}, not {want:?}"
            )));
        }
        Ok(rt)
    }

    /// Starts following session `sid`'s events after `after` (checked as
    /// `GET .../events` checks it): what `events/stream` and `ws` read.
    pub async fn follow_session(&self, id: &str, sid: &str, after: i64) -> Result<SessionFollow> {
        self.session_events(id, sid, after, 1).await?;
        let dir = logs::dir(&self.storage.paths(id));
        Ok(SessionFollow {
            waker: logs::Waker::new(&dir),
            id: id.to_string(),
            sid: sid.to_string(),
            after,
            dir,
            behind: false,
        })
    }

    /// The events logged since `f`'s last read; an error once the session
    /// or its sandbox is gone.
    pub async fn session_events_since(&self, f: &mut SessionFollow) -> Result<Vec<SessionEvent>> {
        let row = self.row(&f.id).await?;
        // Looked at before the read: what the session logged before it was
        // deleted is still delivered, and the end comes with the next read.
        let deleted = !load(&self.storage.paths(&f.id))?.contains_key(&f.sid);
        let (dir, sid, after) = (f.dir.clone(), f.sid.clone(), f.after);
        let read = logs::run(move || {
            let (earliest, _) = logs::retained(&dir)?;
            // Trimmed past the follower's place: what it missed is gone,
            // and it must hear so, as `GET .../events` says with a 410.
            if after > 0 && after < earliest {
                return Ok(None);
            }
            logs::records(&dir, logs::Select::Context(&sid), after, FOLLOW_BATCH).map(Some)
        })
        .await
        .map_err(internal)?;
        let Some((records, next)) = read else {
            return Err(Error::Gone(format!(
                "the events after {} are no longer kept; start again from 0",
                f.after
            )));
        };
        if deleted && records.is_empty() {
            return Err(Error::Gone(format!("session {} was deleted", f.sid)));
        }
        f.after = next;
        f.behind = records.len() == FOLLOW_BATCH;
        Ok(records
            .into_iter()
            .map(|r| event(&f.sid, row.generation, r))
            .collect())
    }

    pub async fn delete_session(&self, id: &str, sid: &str) -> Result<()> {
        let _guard = self.lock(id).await;
        self.refuse_if_held(id, "delete a session")?;
        let paths = self.storage.paths(id);
        let mut book = load(&paths)?;
        if book.remove(sid).is_none() {
            return Err(Error::not_found("session", sid));
        }
        crate::lock(&self.session_inputs).remove(&(id.to_string(), sid.to_string()));
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
        self.refuse_if_held(id, "change a session")?;
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
            cursor: {
                let (earliest, latest) =
                    logs::retained(&logs::dir(&self.storage.paths(id))).map_err(internal)?;
                EventCursor { earliest, latest }
            },
            created_at: rfc3339_ms(s.created_ms),
            updated_at: rfc3339_ms(s.updated_ms),
            last_activity_at: rfc3339_ms(last_activity),
        })
    }
}

/// Records a follower reads at once: a process printing faster than a
/// client reads is read a bounded piece at a time.
const FOLLOW_BATCH: usize = 1000;

/// A stream's place in a session's events, and what wakes it when PID 1
/// logs more.
pub struct SessionFollow {
    pub waker: logs::Waker,
    id: String,
    sid: String,
    after: i64,
    dir: PathBuf,
    /// The last read was a full batch: more is there already.
    behind: bool,
}

impl SessionFollow {
    /// Whether the last read left more to read at once.
    pub fn behind(&self) -> bool {
        self.behind
    }

    pub fn sandbox(&self) -> &str {
        &self.id
    }

    pub fn session(&self) -> &str {
        &self.sid
    }
}

/// A log record as a session event.
fn event(sid: &str, generation: i64, r: logs::Record) -> SessionEvent {
    use base64::Engine;
    let (kind, stream) = match r.kind {
        Kind::Stdout => (SessionEventKind::Output, Some(LogStream::Stdout)),
        Kind::Stderr => (SessionEventKind::Output, Some(LogStream::Stderr)),
        Kind::Pty => (SessionEventKind::Output, Some(LogStream::Pty)),
        Kind::Exit => (SessionEventKind::Exit, None),
    };
    let exit = kind == SessionEventKind::Exit;
    SessionEvent {
        seq: r.position,
        session_id: sid.to_string(),
        runtime_generation: generation,
        kind,
        stream,
        exit_code: exit
            .then(|| String::from_utf8_lossy(&r.data).parse().ok())
            .flatten(),
        data_base64: (!exit).then(|| base64::engine::general_purpose::STANDARD.encode(&r.data)),
        occurred_at: rfc3339_ms(r.at_ms),
    }
}

/// Starts (supervised) session `sid` in `rt`.
async fn start(rt: &Runtime, sid: &str, spec: &ExecutionSessionSpec) -> Result<()> {
    let _ = rt
        .socket
        .call(&Request::Remove { id: sid.into() }, &[])
        .await;
    let terminal = spec.terminal();
    let mut env: std::collections::BTreeMap<String, String> = rt
        .env
        .iter()
        .chain(&spec.env)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(t) = &terminal {
        env.entry("TERM".into()).or_insert_with(|| t.term.clone());
    }
    let req = Request::Spawn {
        id: sid.into(),
        kind: ProcKind::Cmd {
            argv: spec.command.clone(),
        },
        cwd: spec.cwd.clone(),
        env,
        // Checked to 1..=65535 by the spec's check.
        pty: terminal.map(|t| proto::PtySize {
            rows: t.rows as u16,
            cols: t.cols as u16,
        }),
        attach: false,
        timeout_ms: None,
        hold_ms: None,
        restart: Some(restart_spec(spec)),
    };
    rt.socket.call(&req, &[]).await?;
    Ok(())
}

/// Stops session `sid` in `rt` (gone already is fine).
async fn stop(rt: &Runtime, sid: &str) -> Result<()> {
    match rt
        .socket
        .call(&Request::Remove { id: sid.into() }, &[])
        .await
    {
        Ok(_)
        | Err(InitError::Refused {
            code: ErrorCode::NotFound,
            ..
        }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn proc_info(rt: &Runtime, sid: &str) -> Result<Option<ProcInfo>> {
    match rt.socket.call(&Request::Get { id: sid.into() }, &[]).await {
        Ok((Response::Proc { info }, _)) => Ok(Some(info)),
        Ok(_) => Ok(None),
        Err(InitError::Refused {
            code: ErrorCode::NotFound,
            ..
        }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
