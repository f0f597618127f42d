//! The session tool runner: watches a session's events and answers the tool
//! calls this worker serves, one at a time, as the official SDK runner does.
//!
//! The live stream is opened before history is listed (it has no replay),
//! history is reconciled for calls still unanswered, and every call is
//! handled once, by event id, whether it came from history or the stream.

use crate::cma::{Cma, CmaError};
use crate::lease::{Lease, LeaseEnd};
use crate::memory::Memory;
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::sse::SseReader;
use crate::tools::{ToolHost, ToolUse};
use sandstone_agents_api::{
    ContentBlock, CustomToolResult, EvaluatedPermission, KnownEvent, SendEvents, SessionEvent,
    StopReasonKind, ThreadTerminated, ToolConfirmation, ToolResult, ToolUse as ToolUseEvent,
    Verdict,
};
use sandstone_api::ToolCallResult;
use serde_json::Value;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Why a run ended.
#[derive(Debug)]
pub enum RunEnd {
    /// The session terminated or was deleted.
    Terminated,
    /// Idle (not waiting on anyone) for `max_idle`.
    IdleTimeout,
    Lease(LeaseEnd),
    /// The control plane refused the stream or history (401, 403, 404…).
    Fatal(CmaError),
    /// The worker is shutting down.
    Cancelled,
}

pub struct Runner<'a> {
    pub cma: &'a Cma,
    pub session: &'a str,
    pub token: &'a Secret,
    pub host: &'a ToolHost,
    pub lease: &'a Lease,
    pub metrics: &'a Metrics,
    pub memory: Option<&'a Memory>,
    /// `None` never stops on idleness.
    pub max_idle: Option<Duration>,
    pub shutdown: watch::Receiver<bool>,
}

/// Bookkeeping over every event seen, from history or live.
#[derive(Default)]
struct Book {
    /// Calls queued, held, resolved or left to another client.
    seen: HashSet<String>,
    answered: HashSet<String>,
    /// Confirmation verdicts: `true` is allow.
    verdicts: HashMap<String, bool>,
    /// Calls waiting for a `user.tool_confirmation`.
    held: HashMap<String, ToolUse>,
    queue: VecDeque<ToolUse>,
    /// Terminated threads take no results; shared with the in-flight post.
    dead_threads: Arc<Mutex<HashSet<String>>>,
    idle_since: Option<Instant>,
    /// Every event id taken in: history replayed on a reconnect changes
    /// nothing (in particular, an old idle does not restart the countdown).
    events: HashSet<String>,
}

impl Book {
    /// Answers and verdicts first, so replaying history never re-runs a call
    /// that was answered later in it.
    fn learn(&mut self, history: &[SessionEvent]) {
        for ev in history {
            match ev.known() {
                Some(KnownEvent::UserToolResult(r)) => self.answer(&r.tool_use_id),
                Some(KnownEvent::UserCustomToolResult(r)) => self.answer(&r.custom_tool_use_id),
                Some(KnownEvent::UserToolConfirmation(c)) => {
                    self.verdicts
                        .insert(c.tool_use_id.clone(), c.result == Verdict::Allow);
                }
                Some(KnownEvent::SessionThreadStatusTerminated(t)) => self.thread_ended(t),
                _ => {}
            }
        }
    }

    fn thread_ended(&mut self, t: &ThreadTerminated) {
        if let Some(thread) = &t.session_thread_id {
            self.dead_threads
                .lock()
                .expect("the dead-thread set's lock is never poisoned")
                .insert(thread.clone());
        }
    }

    fn thread_dead(&self, call: &ToolUse) -> bool {
        call.thread.as_ref().is_some_and(|t| {
            self.dead_threads
                .lock()
                .expect("the dead-thread set's lock is never poisoned")
                .contains(t)
        })
    }

    fn answer(&mut self, id: &str) {
        self.answered.insert(id.to_string());
        self.held.remove(id);
        self.queue.retain(|c| c.id != id);
    }

    /// Takes in a history listing; `Some` when it shows the session ended.
    fn replay(&mut self, history: &[SessionEvent], host: &ToolHost) -> Option<RunEnd> {
        self.learn(history);
        history.iter().find_map(|ev| self.observe(ev, host))
    }

    /// Takes in one event (once); `Some` when it ends the run.
    fn observe(&mut self, ev: &SessionEvent, host: &ToolHost) -> Option<RunEnd> {
        if let Some(id) = &ev.id
            && !self.events.insert(id.clone())
        {
            return None;
        }
        match ev.known() {
            Some(KnownEvent::AgentToolUse(u)) => self.consider(ev, u, false, host),
            Some(KnownEvent::AgentCustomToolUse(u)) => self.consider(ev, u, true, host),
            Some(KnownEvent::UserToolResult(r)) => self.answer(&r.tool_use_id),
            Some(KnownEvent::UserCustomToolResult(r)) => self.answer(&r.custom_tool_use_id),
            Some(KnownEvent::UserToolConfirmation(c)) => self.confirm(c),
            Some(KnownEvent::SessionThreadStatusTerminated(t)) => self.thread_ended(t),
            Some(KnownEvent::SessionStatusTerminated(_) | KnownEvent::SessionDeleted(_)) => {
                return Some(RunEnd::Terminated);
            }
            _ => {}
        }
        self.track_idle(ev);
        None
    }

    /// An idle that waits on nobody starts the countdown; any later event
    /// except the neutral ones cancels it.
    fn track_idle(&mut self, ev: &SessionEvent) {
        match ev.known() {
            Some(KnownEvent::SessionStatusIdle(idle)) => {
                self.idle_since =
                    (idle.stop_reason.kind != StopReasonKind::RequiresAction).then(Instant::now);
            }
            Some(
                KnownEvent::UserToolConfirmation(_) | KnownEvent::SessionThreadStatusTerminated(_),
            ) => {}
            _ => self.idle_since = None,
        }
    }

    fn confirm(&mut self, c: &ToolConfirmation) {
        let id = &c.tool_use_id;
        // Unknown verdicts count as deny.
        let allow = c.result == Verdict::Allow;
        self.verdicts.insert(id.clone(), allow);
        if let Some(call) = self.held.remove(id) {
            if allow {
                self.queue.push_back(call);
            } else {
                tracing::info!(tool_use_id = %id, "call denied by the user; not run");
            }
        }
    }

    fn consider(&mut self, ev: &SessionEvent, u: &ToolUseEvent, custom: bool, host: &ToolHost) {
        let Some(call) = tool_use(ev, u, custom) else {
            return;
        };
        if !self.seen.insert(call.id.clone())
            || self.answered.contains(&call.id)
            || self.thread_dead(&call)
        {
            return;
        }
        if !host.serves(&call) {
            tracing::info!(tool = %call.name, tool_use_id = %call.id, "not served by this worker; left pending for its owner");
            return;
        }
        match &u.evaluated_permission {
            None | Some(EvaluatedPermission::Allow) => self.queue.push_back(call),
            // The server resolves denials itself.
            Some(EvaluatedPermission::Deny) => {}
            // `ask`, and anything unknown, waits for the user's verdict.
            Some(_) => match self.verdicts.get(&call.id) {
                Some(true) => self.queue.push_back(call),
                Some(false) => {}
                None => {
                    self.held.insert(call.id.clone(), call);
                }
            },
        }
    }

    fn idle_deadline(&self, max_idle: Option<Duration>, busy: bool) -> Option<Instant> {
        if busy || !self.held.is_empty() || !self.queue.is_empty() {
            return None;
        }
        Some(self.idle_since? + max_idle?)
    }
}

/// The call an `agent.tool_use` / `agent.custom_tool_use` event announces;
/// `None` for one without an id (never served, since it cannot be answered).
fn tool_use(ev: &SessionEvent, u: &ToolUseEvent, custom: bool) -> Option<ToolUse> {
    Some(ToolUse {
        id: ev.id.clone()?,
        name: u.name.clone(),
        input: u.input.clone().unwrap_or(Value::Null),
        custom,
        thread: u.session_thread_id.clone(),
        received: Instant::now(),
    })
}

/// How long a stream may stay silent (the daemon pings every 15 s) before
/// it is taken for a half-open connection and replaced.
const STREAM_SILENCE: Duration = Duration::from_secs(60);
/// How long a result already being posted may take to finish when the
/// run ends.
const FINISH_POST: Duration = Duration::from_secs(10);

/// The one call being served: it outlives stream reconnects.
struct InFlight<'f> {
    call: ToolUse,
    /// Set once the tool has finished and its result is being posted.
    posting: Arc<AtomicBool>,
    fut: Pin<Box<dyn Future<Output = ()> + Send + 'f>>,
}

/// The live stream, or when to try opening it again.
enum Stream {
    Open(SseReader),
    Closed { retry_at: Instant },
}

/// Reconnect delays: 0.5 s doubling to 10 s, reset by any event.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(500))
    }
}

impl Backoff {
    /// A closed stream to retry after the current delay, which then grows.
    fn closed(&mut self) -> Stream {
        let retry_at = Instant::now() + self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(10));
        Stream::Closed { retry_at }
    }
}

impl Runner<'_> {
    pub async fn run(&self) -> RunEnd {
        let mut book = Book::default();
        let mut running: Option<InFlight<'_>> = None;
        let mut stream = Stream::Closed {
            retry_at: Instant::now(),
        };
        let mut backoff = Backoff::default();
        let mut shutdown = self.shutdown.clone();
        loop {
            if running.is_none()
                && let Some(call) = book.queue.pop_front()
                && !book.thread_dead(&call)
            {
                running = Some(self.start(call));
            }
            let retry_at = match &stream {
                Stream::Open(_) => None,
                Stream::Closed { retry_at } => Some(*retry_at),
            };
            let deadline = book.idle_deadline(self.max_idle, running.is_some());
            tokio::select! {
                biased;
                _ = crate::shutting_down(&mut shutdown) => {
                    self.abandon(running.take(), true).await;
                    return RunEnd::Cancelled;
                }
                end = self.lease.wait_end() => {
                    if end.owns_item() {
                        self.abandon(running.take(), false).await;
                    }
                    return RunEnd::Lease(end);
                }
                _ = drive(&mut running) => {
                    let done = running.take().expect("a call was running");
                    book.answered.insert(done.call.id);
                    if let Some(m) = self.memory {
                        m.sync_if_due().await;
                    }
                }
                ev = next_event(&mut stream) => match ev {
                    Some(ev) => {
                        backoff = Backoff::default();
                        if let Some(end) = book.observe(&ev, self.host) {
                            return end;
                        }
                    }
                    None => {
                        tracing::debug!(session = self.session, "stream ended; reconnecting");
                        stream = backoff.closed();
                    }
                },
                r = self.reconnect(retry_at), if retry_at.is_some() => match r {
                    Ok((sse, history)) => {
                        if let Some(end) = book.replay(&history, self.host) {
                            return end;
                        }
                        stream = Stream::Open(sse);
                    }
                    Err(e) if e.is_fatal() => return RunEnd::Fatal(e),
                    Err(e) => {
                        tracing::debug!(session = self.session, error = %e, "stream failed; reconnecting");
                        stream = backoff.closed();
                    }
                },
                _ = sleep_until(deadline), if deadline.is_some() && retry_at.is_none() => {
                    tracing::info!(session = self.session, "idle for max-idle; ending the run");
                    return RunEnd::IdleTimeout;
                }
            }
        }
    }

    /// Opens the stream (at its retry time), then lists history: the
    /// stream has no replay, so this order loses nothing in between.
    async fn reconnect(
        &self,
        at: Option<Instant>,
    ) -> Result<(SseReader, Vec<SessionEvent>), CmaError> {
        sleep_until(at).await;
        let sse = self.cma.stream(self.session, self.token).await?;
        let history = self.cma.events(self.session, self.token).await?;
        Ok((SseReader::new(sse), history))
    }

    fn start(&self, call: ToolUse) -> InFlight<'_> {
        let posting = Arc::new(AtomicBool::new(false));
        InFlight {
            fut: Box::pin(self.serve(call.clone(), posting.clone())),
            call,
            posting,
        }
    }

    /// The run ends with a call in flight. A result already being posted
    /// gets a moment to land; a tool still running is stopped, and on
    /// shutdown the session is told why.
    async fn abandon(&self, running: Option<InFlight<'_>>, tell: bool) {
        let Some(mut f) = running else { return };
        if f.posting.load(Ordering::Acquire) {
            let _ = tokio::time::timeout(FINISH_POST, f.fut.as_mut()).await;
            return;
        }
        drop(f.fut);
        self.host.reset_shell_if(&f.call).await;
        if tell {
            let r = crate::tools::error(format!(
                "tool '{}' was cancelled: the worker is shutting down",
                f.call.name
            ));
            let _ = tokio::time::timeout(FINISH_POST, self.post(&f.call, r, FINISH_POST)).await;
        }
    }

    /// Runs one call and posts its result. Logs how long the tool ran and
    /// how long from the call reaching this worker to its result posted.
    async fn serve(&self, call: ToolUse, posting: Arc<AtomicBool>) {
        let started = Instant::now();
        tracing::debug!(session = self.session, tool = %call.name, tool_use_id = %call.id, "tool call");
        let result = self.host.run(&call).await;
        let took = started.elapsed();
        let outcome = if result.is_error { "error" } else { "ok" };
        self.metrics.tool_call(&call.name, outcome, took);
        posting.store(true, Ordering::Release);
        self.post(&call, result, self.lease.ttl()).await;
        tracing::info!(session = self.session, tool = %call.name, tool_use_id = %call.id, outcome,
            run_us = took.as_micros() as u64, total_us = call.received.elapsed().as_micros() as u64,
            "tool done");
    }

    /// Posts a result, retrying transient failures with jittered backoff
    /// for as long as `window` (the lease TTL) allows.
    async fn post(&self, call: &ToolUse, result: ToolCallResult, window: Duration) {
        let events = SendEvents {
            events: vec![result_event(call, result)],
            extra: Default::default(),
        };
        let give_up = Instant::now() + window;
        let mut delay = Duration::from_secs(1);
        loop {
            match self
                .cma
                .send_events(self.session, self.token, &events)
                .await
            {
                Ok(_) => return,
                // Already answered (a retry whose first try landed).
                Err(e) if e.status() == Some(409) => return,
                Err(e) if e.is_fatal() => {
                    tracing::warn!(tool_use_id = %call.id, error = %e, "result refused");
                    return;
                }
                Err(e) => {
                    let wait = jitter(delay);
                    if Instant::now() + wait > give_up {
                        tracing::warn!(tool_use_id = %call.id, error = %e, "result not posted within the lease window");
                        return;
                    }
                    tracing::debug!(tool_use_id = %call.id, error = %e, "posting result failed; retrying");
                    tokio::time::sleep(wait).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

/// The running call's completion; never, when none runs.
async fn drive(running: &mut Option<InFlight<'_>>) {
    match running {
        Some(f) => f.fut.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The stream's next event; `None` when it ended, broke or fell silent.
async fn next_event(stream: &mut Stream) -> Option<SessionEvent> {
    match stream {
        Stream::Open(sse) => tokio::time::timeout(STREAM_SILENCE, sse.next())
            .await
            .ok()
            .flatten(),
        Stream::Closed { .. } => std::future::pending().await,
    }
}

fn result_event(call: &ToolUse, r: ToolCallResult) -> SessionEvent {
    let content = Some(r.content.into_iter().map(block).collect());
    let is_error = Some(r.is_error);
    SessionEvent::new(if call.custom {
        KnownEvent::UserCustomToolResult(CustomToolResult {
            custom_tool_use_id: call.id.clone(),
            content,
            is_error,
            extra: Default::default(),
        })
    } else {
        KnownEvent::UserToolResult(ToolResult {
            tool_use_id: call.id.clone(),
            content,
            is_error,
            extra: Default::default(),
        })
    })
}

/// A tool result's content block (a type the model does not know passes
/// through); one that is not a block at all is reported in its place.
fn block(v: Value) -> ContentBlock {
    serde_json::from_value(v)
        .unwrap_or_else(|e| ContentBlock::text(format!("(a malformed content block: {e})")))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// A delay in `[d/2, d)`; clock nanoseconds are random enough to keep
/// workers that failed together from retrying together.
pub fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0) as f64
        / 1e9;
    d / 2 + d.mul_f64(nanos / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(v: Value) -> SessionEvent {
        serde_json::from_value(v).unwrap()
    }

    fn host(custom: &[&str]) -> ToolHost {
        ToolHost {
            client: sandstone_client::Client::new("http://127.0.0.1:1", "t"),
            sandbox: "sb".into(),
            roots: Default::default(),
            custom: Arc::new(
                custom
                    .iter()
                    .map(|n| (n.to_string(), vec!["true".to_string()]))
                    .collect(),
            ),
            session: "s".into(),
        }
    }

    fn call(id: &str, name: &str, perm: Option<&str>) -> SessionEvent {
        let mut v = json!({"type": "agent.tool_use", "id": id, "name": name, "input": {}});
        if let Some(p) = perm {
            v["evaluated_permission"] = json!(p);
        }
        ev(v)
    }

    fn queued(b: &Book) -> Vec<&str> {
        b.queue.iter().map(|c| c.id.as_str()).collect()
    }

    #[test]
    fn history_reconciles_to_the_calls_still_unanswered_once_each() {
        let h = host(&[]);
        let mut b = Book::default();
        let history = vec![
            call("e1", "bash", None),
            ev(json!({"type": "user.tool_result", "tool_use_id": "e1"})),
            call("e2", "read", Some("allow")),
        ];
        b.learn(&history);
        for ev in &history {
            b.observe(ev, &h);
        }
        assert_eq!(queued(&b), ["e2"]);
        // The same call again on the live stream is a duplicate.
        b.observe(&call("e2", "read", Some("allow")), &h);
        assert_eq!(queued(&b), ["e2"]);
    }

    #[test]
    fn ask_waits_for_allow_deny_never_runs_and_unknown_tools_stay_pending() {
        let h = host(&["lookup"]);
        let mut b = Book::default();
        b.observe(&call("a", "bash", Some("ask")), &h);
        b.observe(&call("d", "bash", Some("deny")), &h);
        b.observe(&call("u", "browser", None), &h);
        b.observe(&call("w", "write", Some("weird")), &h);
        b.observe(
            &ev(json!({"type": "agent.mcp_tool_use", "id": "m", "name": "x"})),
            &h,
        );
        b.observe(
            &ev(json!({"type": "agent.custom_tool_use", "id": "c", "name": "lookup", "input": {}})),
            &h,
        );
        b.observe(
            &ev(json!({"type": "agent.custom_tool_use", "id": "c2", "name": "other", "input": {}})),
            &h,
        );
        assert_eq!(queued(&b), ["c"]);
        b.observe(
            &ev(json!({"type": "user.tool_confirmation", "tool_use_id": "a", "result": "allow"})),
            &h,
        );
        b.observe(
            &ev(json!({"type": "user.tool_confirmation", "tool_use_id": "w", "result": "maybe"})),
            &h,
        );
        assert_eq!(queued(&b), ["c", "a"]);
        assert!(b.held.is_empty());
    }

    #[test]
    fn idle_counts_down_only_when_nobody_is_waited_on() {
        let h = host(&[]);
        let mut b = Book::default();
        let max = Some(Duration::from_secs(60));
        b.observe(
            &ev(json!({"type": "session.status_idle", "stop_reason": {"type": "requires_action"}})),
            &h,
        );
        assert!(b.idle_deadline(max, false).is_none());
        b.observe(
            &ev(json!({"type": "session.status_idle", "stop_reason": {"type": "end_turn"}})),
            &h,
        );
        assert!(b.idle_deadline(max, false).is_some());
        assert!(
            b.idle_deadline(max, true).is_none(),
            "a call in flight defers it"
        );
        assert!(
            b.idle_deadline(None, false).is_none(),
            "max-idle 0 disables it"
        );
        b.observe(
            &ev(json!({"type": "user.tool_confirmation", "tool_use_id": "zz", "result": "allow"})),
            &h,
        );
        assert!(
            b.idle_deadline(max, false).is_some(),
            "confirmations are neutral"
        );
        b.observe(&ev(json!({"type": "user.message", "content": []})), &h);
        assert!(b.idle_deadline(max, false).is_none());
        assert!(matches!(
            b.observe(&ev(json!({"type": "session.status_terminated"})), &h),
            Some(RunEnd::Terminated)
        ));
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let d = Duration::from_secs(4);
        let j = jitter(d);
        assert!(j >= d / 2 && j < d);
    }
}
