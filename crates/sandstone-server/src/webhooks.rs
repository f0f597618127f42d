//! Per-sandbox webhooks (`config.webhook`): the daemon, never the sandbox,
//! POSTs each sandbox's lifecycle events and, with `watch_dir`, its file
//! changes to the operator's receiver, signed as Sandbox0's SDKs verify
//! (`sandstone_api::webhooks`).
//!
//! The lifecycle only [`Webhooks::emit`]s: the event is signed and handed
//! to a bounded queue without waiting (a full queue records the event as
//! `dropped`, it never holds the operation up). One task per daemon
//! ([`Webhooks::spawn`]) records each delivery in the metadata database
//! and sends it, a bounded number at a time, each attempt under a timeout;
//! a failure is retried with exponential backoff ([`retry_delay`]) until
//! `give_up_after` from the event. Deliveries are rows (pending ones are
//! picked up again after a restart), queryable through
//! `GET /api/v1/sandboxes/{id}/webhook/deliveries`.
//!
//! The secret is sealed with the installation's key in its own table (the
//! stored configuration, which callers see, never holds it), kept in memory
//! as a [`Secret`] (which never prints), and used only to sign.

use crate::initclient;
use crate::lifecycle::config_of;
use crate::lifecycle::logs;
use sandstone_agents::Outbound;
use sandstone_agents::outbound::{Denied, Guarded, check_url};
use sandstone_api::Secret;
use sandstone_api::timefmt::{now_ms, rfc3339_ms};
use sandstone_api::webhooks::{EventPayload, EventType, SIGNATURE_HEADER, WebhookEvent, sign};
use sandstone_api::{WebhookConfig, random_hex};
use sandstone_db::secrets::Sealer;
use sandstone_db::webhooks::{AttemptOutcome, DeliveryRow, DeliveryState, WebhookStore};
use sandstone_db::{SandboxRow, Store};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};

/// Events waiting to be recorded; past this, new ones are `dropped`.
const QUEUE: usize = 1024;
/// Attempts in flight at once: a slow receiver holds one slot, not the rest.
const IN_FLIGHT: usize = 16;
/// The longest wait between two attempts of one delivery.
const MAX_DELAY: Duration = Duration::from_secs(3600);
/// The longest the delivery task sleeps without looking again.
const IDLE: Duration = Duration::from_secs(1);
/// How long finished deliveries stay listed.
/// How long a quiet watch of a sandbox's exits waits before it looks
/// again (a write to the log wakes it sooner).
const EXIT_POLL: Duration = Duration::from_secs(1);
const KEEP_FINISHED: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Store(#[from] sandstone_db::Error),
    /// The sealed secret does not open with this installation's key (the
    /// key changed, or the row was altered).
    #[error("the webhook secret of sandbox {0} does not open with this installation's key")]
    Unsealable(String),
}

/// How deliveries are attempted (`serve --webhook-*`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// One attempt's limit, connecting included.
    pub timeout: Duration,
    /// The wait after the first failed attempt; each next one doubles it,
    /// up to an hour.
    pub retry_base: Duration,
    /// No attempt starts later than this after the event: the delivery is
    /// `failed` then.
    pub give_up_after: Duration,
}

impl Default for Settings {
    /// Sandbox0's: retried for up to 24 hours.
    fn default() -> Self {
        Settings {
            timeout: Duration::from_secs(10),
            retry_base: Duration::from_secs(1),
            give_up_after: Duration::from_secs(24 * 3600),
        }
    }
}

/// What happened to a sandbox, with what its event carries.
#[derive(Debug, Clone)]
pub enum Happened {
    Ready {
        generation: i64,
    },
    Paused,
    Resumed {
        generation: i64,
    },
    Killed {
        reason: String,
    },
    Deleted,
    FileChanged {
        event: String,
        path: String,
    },
    ProcessEnded {
        process_id: String,
        exit_code: Option<i32>,
        generation: i64,
    },
}

impl Happened {
    fn event(self) -> (EventType, EventPayload) {
        let lifecycle = |status: &str, generation| EventPayload::Lifecycle {
            status: status.into(),
            runtime_generation: generation,
        };
        match self {
            Happened::Ready { generation } => {
                (EventType::Ready, lifecycle("running", Some(generation)))
            }
            Happened::Paused => (EventType::Paused, lifecycle("paused", None)),
            Happened::Resumed { generation } => {
                (EventType::Resumed, lifecycle("running", Some(generation)))
            }
            Happened::Killed { reason } => (EventType::Killed, EventPayload::Killed { reason }),
            Happened::Deleted => (EventType::Deleted, lifecycle("deleted", None)),
            Happened::ProcessEnded {
                process_id,
                exit_code,
                generation,
            } => (
                if exit_code == Some(0) {
                    EventType::ProcessExited
                } else {
                    EventType::ProcessCrashed
                },
                EventPayload::Process {
                    process_id,
                    exit_code,
                    runtime_generation: generation,
                },
            ),
            Happened::FileChanged { event, path } => (
                EventType::FileModified,
                EventPayload::File {
                    path,
                    event_type: event,
                },
            ),
        }
    }
}

/// Where a watch of exits starts: the place kept by the last watch of
/// this sandbox, else the log's last record (exits from now on).
async fn start_of_exits(dir: &std::path::Path, saved: &std::path::Path) -> std::io::Result<i64> {
    let (dir, saved) = (dir.to_path_buf(), saved.to_path_buf());
    logs::run(move || {
        let kept = std::fs::read_to_string(&saved)
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok());
        match kept {
            Some(p) if logs::is_record_position(&dir, p)? => Ok(p),
            _ => logs::last_position(&dir),
        }
    })
    .await
}

/// Checks a claim's `config.webhook`; the message names the field.
pub fn check(hook: &WebhookConfig) -> Result<(), String> {
    let url = url::Url::parse(&hook.url)
        .map_err(|e| format!("invalid field `config.webhook.url`: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(
            "invalid field `config.webhook.url`: must be an http or https URL with a host".into(),
        );
    }
    // Credentials in a URL end up in logs and listings; a receiver checks
    // the signature instead.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "invalid field `config.webhook.url`: must not carry a user or password (the receiver verifies the signature instead)"
                .into(),
        );
    }
    if hook.url.len() > 2048 {
        return Err("invalid field `config.webhook.url`: at most 2048 bytes".into());
    }
    if hook
        .secret
        .as_ref()
        .is_some_and(|s| s.expose().len() > 1024)
    {
        return Err("invalid field `config.webhook.secret`: at most 1024 bytes".into());
    }
    if let Some(dir) = &hook.watch_dir {
        let parts: Vec<&str> = dir.strip_prefix('/').unwrap_or("").split('/').collect();
        let clean = dir.starts_with('/')
            && dir.len() <= 1024
            && parts
                .iter()
                .all(|p| !p.is_empty() && *p != "." && *p != ".." && !p.contains('\0'));
        if !clean || matches!(parts[0], "proc" | "sys" | "dev") {
            return Err(format!(
                "invalid field `config.webhook.watch_dir`: {dir:?} is not an absolute path in the sandbox (plain components, no . or .., not / itself nor under /proc, /sys or /dev)"
            ));
        }
    }
    Ok(())
}

/// The wait before the attempt after `failed` failed ones: `retry_base`
/// doubled each time, at most [`MAX_DELAY`].
pub fn retry_delay(settings: &Settings, failed: i64) -> Duration {
    let doublings = u32::try_from(failed.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(30);
    settings
        .retry_base
        .saturating_mul(1 << doublings)
        .min(MAX_DELAY)
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq)]
enum Attempt {
    Delivered {
        status: u16,
    },
    /// No answer, 408, 429 or a 5xx: worth another try.
    Retry {
        status: Option<u16>,
        error: String,
    },
    /// An answer a retry would not change (another 4xx, a redirect).
    Refused {
        status: u16,
    },
    /// The operator's egress rules deny the receiver's address.
    Denied,
}

impl Attempt {
    fn of_status(status: u16) -> Attempt {
        match status {
            200..=299 => Attempt::Delivered { status },
            408 | 429 | 500..=599 => Attempt::Retry {
                status: Some(status),
                error: format!("the receiver answered HTTP {status}"),
            },
            _ => Attempt::Refused { status },
        }
    }
}

/// The row's next state after attempt number `attempts` (at `now`).
fn outcome(
    settings: &Settings,
    d: &DeliveryRow,
    attempts: i64,
    now: i64,
    attempt: Attempt,
) -> AttemptOutcome {
    let base = AttemptOutcome {
        state: DeliveryState::Failed,
        attempts,
        last_status: None,
        last_error: None,
        next_attempt_at: now,
        delivered_at: None,
    };
    match attempt {
        Attempt::Delivered { status } => AttemptOutcome {
            state: DeliveryState::Delivered,
            last_status: Some(status.into()),
            delivered_at: Some(now),
            ..base
        },
        Attempt::Refused { status } => AttemptOutcome {
            last_status: Some(status.into()),
            last_error: Some(format!("the receiver answered HTTP {status}; not retried")),
            ..base
        },
        Attempt::Denied => AttemptOutcome {
            last_error: Some(
                "the operator's egress rules deny the receiver's address; not retried".into(),
            ),
            ..base
        },
        Attempt::Retry { status, error } => {
            let next = now.saturating_add(retry_delay(settings, attempts).as_millis() as i64);
            let deadline = d
                .created_at
                .saturating_add(settings.give_up_after.as_millis() as i64);
            if next > deadline {
                AttemptOutcome {
                    last_status: status.map(i64::from),
                    last_error: Some(format!("{error}; gave up after {attempts} attempts")),
                    ..base
                }
            } else {
                AttemptOutcome {
                    state: DeliveryState::Pending,
                    last_status: status.map(i64::from),
                    last_error: Some(error),
                    next_attempt_at: next,
                    ..base
                }
            }
        }
    }
}

/// What a failed send came to. The listing says only what kind of
/// failure it was: its details (which address refused, what a resolver
/// said) would map the receiver's network for whoever reads deliveries.
fn failed(settings: &Settings, e: &reqwest::Error) -> Attempt {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<Denied>().is_some() {
            return Attempt::Denied;
        }
        source = s.source();
    }
    let error = if e.is_timeout() {
        format!(
            "the receiver did not answer within {} ms",
            settings.timeout.as_millis()
        )
    } else if e.is_connect() {
        "the receiver could not be reached".into()
    } else {
        "the request to the receiver failed".into()
    };
    Attempt::Retry {
        status: None,
        error,
    }
}

pub struct Webhooks {
    store: Arc<dyn WebhookStore>,
    sealer: Arc<Sealer>,
    /// The node whose deliveries this daemon sends.
    node: String,
    settings: Settings,
    /// The operator's rules for addresses callers name.
    outbound: Outbound,
    client: reqwest::Client,
    queue: mpsc::Sender<DeliveryRow>,
    /// The delivery task takes it at [`Webhooks::spawn`].
    queued: Mutex<Option<mpsc::Receiver<DeliveryRow>>>,
    /// Events the full queue turned away, to be recorded as `dropped`
    /// (bounded too: past it they are only logged).
    overflow: Mutex<Vec<DeliveryRow>>,
    /// Each sandbox's secret as last read (`None`: unsigned).
    secrets: Mutex<HashMap<String, Option<Secret>>>,
}

impl Webhooks {
    pub fn new(
        store: Arc<dyn WebhookStore>,
        sealer: Arc<Sealer>,
        node: String,
        settings: Settings,
        outbound: Outbound,
    ) -> anyhow::Result<Webhooks> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            // A name is judged as it is resolved, and only what the
            // operator's rules allow is dialled: by this client, never by
            // a proxy from the environment that would resolve it unjudged.
            .dns_resolver(Arc::new(Guarded(outbound.clone())))
            .no_proxy()
            // A redirect would carry the signed body somewhere the
            // operator did not name.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("sandstone/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let (queue, queued) = mpsc::channel(QUEUE);
        Ok(Webhooks {
            store,
            sealer,
            node,
            settings,
            outbound,
            client,
            queue,
            queued: Mutex::new(Some(queued)),
            overflow: Mutex::new(Vec::new()),
            secrets: Mutex::new(HashMap::new()),
        })
    }

    fn secrets(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<Secret>>> {
        self.secrets
            .lock()
            .expect("lock poisoned: a holder panicked")
    }

    /// Keeps a new sandbox's secret, sealed (before its row exists, so no
    /// event of it is ever signed without it).
    pub async fn remember(
        &self,
        sandbox: &str,
        hook: Option<&WebhookConfig>,
    ) -> Result<(), WebhookError> {
        let Some(hook) = hook else {
            return Ok(());
        };
        let secret = hook.secret.clone().filter(|s| !s.expose().is_empty());
        if let Some(s) = &secret {
            let sealed = self.sealer.seal(s.expose().as_bytes());
            self.store.put_webhook_secret(sandbox, &sealed).await?;
        }
        self.secrets().insert(sandbox.to_string(), secret);
        Ok(())
    }

    /// Gives a fork its parent's secret (its configuration names the
    /// same receiver).
    pub async fn copy_secret(&self, from: &str, to: &str) -> Result<(), WebhookError> {
        if let Some(sealed) = self.store.webhook_secret(from).await? {
            self.store.put_webhook_secret(to, &sealed).await?;
        }
        Ok(())
    }

    /// Drops a deleted sandbox's secret (its pending deliveries are signed
    /// already).
    pub async fn forget(&self, sandbox: &str) -> Result<(), WebhookError> {
        self.secrets().remove(sandbox);
        self.store.delete_webhook_secret(sandbox).await?;
        Ok(())
    }

    async fn secret(&self, sandbox: &str) -> Result<Option<Secret>, WebhookError> {
        if let Some(s) = self.secrets().get(sandbox) {
            return Ok(s.clone());
        }
        let secret = match self.store.webhook_secret(sandbox).await? {
            Some(sealed) => {
                let plain = self
                    .sealer
                    .open(&sealed)
                    .ok_or_else(|| WebhookError::Unsealable(sandbox.to_string()))?;
                let text = String::from_utf8(plain)
                    .map_err(|_| WebhookError::Unsealable(sandbox.to_string()))?;
                Some(Secret::new(text))
            }
            None => None,
        };
        self.secrets().insert(sandbox.to_string(), secret.clone());
        Ok(secret)
    }

    /// Queues the event of `what` for sandbox `row`'s receiver, if it has
    /// one. Never waits for the receiver, nor for room in the queue.
    pub async fn emit(&self, row: &SandboxRow, what: Happened) {
        let Some(hook) = config_of(row).webhook else {
            return;
        };
        let (event_type, payload) = what.event();
        let now = now_ms();
        let event = WebhookEvent {
            event_id: format!("evt_{}", random_hex(16)),
            event_type,
            timestamp: rfc3339_ms(now),
            sandbox_id: row.id.clone(),
            team_id: row.team_id.clone(),
            payload,
        };
        let body = match serde_json::to_string(&event) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(sandbox = %row.id, error = %e, "webhook event not encoded");
                return;
            }
        };
        let mut d = DeliveryRow {
            event_id: event.event_id,
            sandbox_id: row.id.clone(),
            team_id: row.team_id.clone(),
            node_id: self.node.clone(),
            event_type: event_type.as_str().into(),
            url: hook.url,
            signature: None,
            body,
            state: DeliveryState::Pending,
            attempts: 0,
            last_status: None,
            last_error: None,
            created_at: now,
            next_attempt_at: now,
            delivered_at: None,
        };
        match self.secret(&row.id).await {
            Ok(secret) => d.signature = secret.map(|s| sign(s.expose(), d.body.as_bytes())),
            Err(e) => {
                // Unsigned, a receiver would rightly refuse it.
                d.state = DeliveryState::Failed;
                d.last_error = Some(e.to_string());
            }
        }
        if let Err(mpsc::error::TrySendError::Full(mut d)) = self.queue.try_send(d) {
            tracing::warn!(sandbox = %d.sandbox_id, event = %d.event_id, "webhook queue full: event dropped");
            d.state = DeliveryState::Dropped;
            d.last_error = Some("the daemon's webhook queue was full".into());
            let mut overflow = self
                .overflow
                .lock()
                .expect("lock poisoned: a holder panicked");
            if overflow.len() < QUEUE {
                overflow.push(d);
            }
        }
    }

    /// Sends `file.modified` for each change under sandbox `id`'s
    /// `watch_dir`, made first if missing (as the files API would), for
    /// as long as the runtime generation behind `socket` lives.
    pub fn watch_files(self: &Arc<Self>, store: Arc<dyn Store>, id: String, socket: PathBuf) {
        let hooks = self.clone();
        tokio::spawn(async move {
            let Ok(row) = store.get_sandbox(&id).await else {
                return;
            };
            let Some(dir) = config_of(&row).webhook.and_then(|h| h.watch_dir) else {
                return;
            };
            let mkdir = sandstone_init::proto::Request::Mkdir {
                path: dir.clone(),
                recursive: true,
            };
            let started = match initclient::call(&socket, &mkdir, &[]).await {
                Ok(_) => initclient::Watch::start(&socket, dir, true).await,
                Err(e) => Err(e),
            };
            let mut watch = match started {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(sandbox = %id, error = %e, "webhook watch_dir not watched");
                    return;
                }
            };
            while let Some((event, path)) = watch.next().await {
                hooks
                    .emit(&row, Happened::FileChanged { event, path })
                    .await;
            }
        });
    }

    /// Emits a `process.exited` or `process.crashed` event for each exit
    /// PID 1 logs in sandbox `id`, from now until its init (`init`, a
    /// pidfd) dies or the runtime is paused. The place reached is kept in
    /// the volume (`webhook-exits.pos`), so exits logged while the daemon
    /// was down are reported once it is back.
    pub fn watch_exits(
        self: &Arc<Self>,
        store: Arc<dyn Store>,
        id: String,
        log_dir: PathBuf,
        init: Option<Arc<std::os::fd::OwnedFd>>,
    ) {
        let hooks = self.clone();
        tokio::spawn(async move {
            let has_hook = store
                .get_sandbox(&id)
                .await
                .is_ok_and(|row| config_of(&row).webhook.is_some());
            // A descriptor of its own: the init watch registers the shared
            // one, and epoll takes each descriptor once.
            let Some(Ok(init)) = init.filter(|_| has_hook).map(|fd| fd.try_clone()) else {
                return;
            };
            // SAFETY: the AsyncFd owns the duplicate, so it stays open (and
            // the same descriptor) for as long as it is registered.
            let Ok(init) = (unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    init,
                    tokio::io::Interest::READABLE,
                )
            }) else {
                return;
            };
            let saved = log_dir.with_file_name("webhook-exits.pos");
            let mut after = match start_of_exits(&log_dir, &saved).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(sandbox = %id, error = %e, "process exits not watched");
                    return;
                }
            };
            let mut waker = logs::Waker::new(&log_dir);
            let mut ended = false;
            loop {
                let dir = log_dir.clone();
                let read =
                    logs::run(move || logs::records(&dir, logs::Select::Exits, after, 100)).await;
                let (exits, next) = match read {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(sandbox = %id, error = %e, "process exits not read");
                        return;
                    }
                };
                if !exits.is_empty() {
                    // Read now: the generation a resume started.
                    let Ok(row) = store.get_sandbox(&id).await else {
                        return;
                    };
                    for exit in exits {
                        let exit_code = std::str::from_utf8(&exit.data)
                            .ok()
                            .and_then(|t| t.parse().ok());
                        let what = Happened::ProcessEnded {
                            process_id: exit.context,
                            exit_code,
                            generation: row.generation,
                        };
                        hooks.emit(&row, what).await;
                    }
                } else if ended {
                    // Init is gone and the log read once more after it.
                    return;
                }
                if next != after {
                    after = next;
                    if let Err(e) = std::fs::write(&saved, after.to_string()) {
                        tracing::warn!(sandbox = %id, error = %e, "process exit position not kept");
                    }
                }
                tokio::select! {
                    _ = waker.wait(EXIT_POLL) => {}
                    _ = init.readable() => ended = true,
                }
            }
        });
    }

    /// A sandbox's deliveries, newest first.
    pub async fn deliveries(
        &self,
        sandbox: &str,
        limit: i64,
    ) -> sandstone_db::Result<Vec<DeliveryRow>> {
        self.store.list_deliveries(sandbox, limit).await
    }

    /// Starts the delivery task (once).
    pub fn spawn(self: &Arc<Self>) {
        let Some(queued) = self
            .queued
            .lock()
            .expect("lock poisoned: a holder panicked")
            .take()
        else {
            return;
        };
        tokio::spawn(self.clone().deliver(queued));
    }

    async fn deliver(self: Arc<Self>, mut queued: mpsc::Receiver<DeliveryRow>) {
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        // Attempts send their event's id once their outcome is recorded;
        // an id leaves `in_flight` only then, and only here, before the
        // next read of what is due: a read made while an attempt ran may
        // still show its delivery pending, and must not start it again.
        let (finished, mut ended) = mpsc::unbounded_channel::<String>();
        let mut in_flight: HashSet<String> = HashSet::new();
        let mut pruned_at = 0;
        loop {
            while let Ok(id) = ended.try_recv() {
                in_flight.remove(&id);
            }
            while let Ok(d) = queued.try_recv() {
                self.record(&d).await;
            }
            let dropped = std::mem::take(
                &mut *self
                    .overflow
                    .lock()
                    .expect("lock poisoned: a holder panicked"),
            );
            for d in &dropped {
                self.record(d).await;
            }
            let now = now_ms();
            match self
                .store
                .due_deliveries(&self.node, now, 4 * IN_FLIGHT as i64)
                .await
            {
                Ok(due) => {
                    for d in due {
                        if in_flight.contains(&d.event_id) {
                            continue;
                        }
                        let Ok(slot) = slots.clone().try_acquire_owned() else {
                            break;
                        };
                        in_flight.insert(d.event_id.clone());
                        let (hooks, finished) = (self.clone(), finished.clone());
                        tokio::spawn(async move {
                            let id = d.event_id.clone();
                            hooks.attempt(d).await;
                            drop(slot);
                            let _ = finished.send(id);
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "webhook deliveries not read"),
            }
            if now - pruned_at > 3_600_000 {
                pruned_at = now;
                let before = now - KEEP_FINISHED.as_millis() as i64;
                if let Err(e) = self.store.prune_deliveries(before).await {
                    tracing::warn!(error = %e, "old webhook deliveries not pruned");
                }
            }
            // Until the next one is due (those due now are in flight or
            // waiting for a slot: an attempt's end wakes this), something
            // new comes, or an attempt ends.
            let wait = match self.store.next_delivery_at(&self.node).await {
                Ok(Some(at)) if at > now_ms() => {
                    Duration::from_millis((at - now_ms()) as u64).min(IDLE)
                }
                _ => IDLE,
            };
            tokio::select! {
                d = queued.recv() => match d {
                    Some(d) => self.record(&d).await,
                    None => return,
                },
                Some(id) = ended.recv() => {
                    in_flight.remove(&id);
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn record(&self, d: &DeliveryRow) {
        if let Err(e) = self.store.insert_delivery(d).await {
            tracing::error!(sandbox = %d.sandbox_id, event = %d.event_id, error = %e, "webhook delivery not recorded");
        }
    }

    async fn attempt(&self, d: DeliveryRow) {
        let attempt = match check_url(&self.outbound, &d.url) {
            Ok(()) => self.send(&d).await,
            Err(e) => {
                tracing::warn!(target: "sandstone::audit", sandbox = %d.sandbox_id, event = %d.event_id,
                    error = %e, "webhook to a denied address not sent");
                Attempt::Denied
            }
        };
        let attempts = d.attempts + 1;
        let next = outcome(&self.settings, &d, attempts, now_ms(), attempt);
        tracing::debug!(sandbox = %d.sandbox_id, event = %d.event_id, state = next.state.as_str(), attempts, "webhook attempt");
        if let Err(e) = self.store.record_attempt(&d.event_id, &next).await {
            tracing::error!(sandbox = %d.sandbox_id, event = %d.event_id, error = %e, "webhook attempt not recorded");
        }
    }

    async fn send(&self, d: &DeliveryRow) -> Attempt {
        let mut req = self
            .client
            .post(&d.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(d.body.clone());
        if let Some(sig) = &d.signature {
            req = req.header(SIGNATURE_HEADER, sig);
        }
        match req.send().await {
            Ok(resp) => Attempt::of_status(resp.status().as_u16()),
            Err(e) => {
                let attempt = failed(&self.settings, &e);
                let e = e.without_url();
                if attempt == Attempt::Denied {
                    tracing::warn!(target: "sandstone::audit", sandbox = %d.sandbox_id, event = %d.event_id,
                        error = ?e, "webhook to a denied address not sent");
                } else {
                    tracing::debug!(sandbox = %d.sandbox_id, event = %d.event_id, error = ?e, "webhook not delivered");
                }
                attempt
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            timeout: Duration::from_secs(1),
            retry_base: Duration::from_millis(100),
            give_up_after: Duration::from_secs(10),
        }
    }

    fn delivery() -> DeliveryRow {
        DeliveryRow {
            event_id: "evt_1".into(),
            sandbox_id: "sb-1".into(),
            team_id: "default".into(),
            node_id: "n".into(),
            event_type: "sandbox.paused".into(),
            url: "http://127.0.0.1:9/".into(),
            body: "{}".into(),
            signature: None,
            state: DeliveryState::Pending,
            attempts: 0,
            last_status: None,
            last_error: None,
            created_at: 1_000,
            next_attempt_at: 1_000,
            delivered_at: None,
        }
    }

    #[test]
    fn backoff_doubles_from_the_base_up_to_an_hour() {
        let s = settings();
        let ms: Vec<u128> = (1..=5).map(|n| retry_delay(&s, n).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600]);
        assert_eq!(retry_delay(&s, 40), MAX_DELAY);
        assert_eq!(retry_delay(&s, i64::MAX), MAX_DELAY);
        let default = Settings::default();
        assert_eq!(retry_delay(&default, 1), Duration::from_secs(1));
        assert_eq!(
            retry_delay(&default, 13),
            MAX_DELAY,
            "4096 s is past the cap"
        );
    }

    #[test]
    fn attempts_retry_until_the_deadline_and_refusals_are_final() {
        let s = settings();
        let d = delivery();
        let ok = outcome(&s, &d, 1, 2_000, Attempt::of_status(204));
        assert_eq!(ok.state, DeliveryState::Delivered);
        assert_eq!((ok.last_status, ok.delivered_at), (Some(204), Some(2_000)));

        let retry = outcome(&s, &d, 3, 2_000, Attempt::of_status(503));
        assert_eq!(retry.state, DeliveryState::Pending);
        assert_eq!(retry.next_attempt_at, 2_400, "third failure waits 4 × base");
        assert_eq!(
            retry.last_error.as_deref(),
            Some("the receiver answered HTTP 503")
        );
        for status in [408, 429] {
            assert_eq!(
                Attempt::of_status(status),
                Attempt::Retry {
                    status: Some(status),
                    error: format!("the receiver answered HTTP {status}"),
                }
            );
        }

        // Past created_at + give_up_after: failed, with why.
        let late = outcome(
            &s,
            &d,
            7,
            10_900,
            Attempt::Retry {
                status: None,
                error: "connection refused".into(),
            },
        );
        assert_eq!(late.state, DeliveryState::Failed);
        assert_eq!(
            late.last_error.as_deref(),
            Some("connection refused; gave up after 7 attempts")
        );

        for status in [301, 400, 404] {
            let refused = outcome(&s, &d, 1, 2_000, Attempt::of_status(status));
            assert_eq!(refused.state, DeliveryState::Failed);
            assert_eq!(refused.last_status, Some(status.into()));
        }
    }

    #[test]
    fn webhook_configs_are_checked_naming_the_field() {
        let hook = |url: &str, dir: Option<&str>| WebhookConfig {
            url: url.into(),
            secret: Some(Secret::new("s")),
            watch_dir: dir.map(str::to_string),
        };
        assert!(
            check(&hook(
                "https://hooks.example.com/x?y=1",
                Some("/workspace/out")
            ))
            .is_ok()
        );
        assert!(check(&hook("http://127.0.0.1:8080/", None)).is_ok());
        for (url, dir, field) in [
            ("ftp://example.com/", None, "config.webhook.url"),
            ("not a url", None, "config.webhook.url"),
            ("https://user:pw@example.com/", None, "config.webhook.url"),
            ("https://user@example.com/", None, "config.webhook.url"),
            (
                "https://example.com/",
                Some("workspace"),
                "config.webhook.watch_dir",
            ),
            (
                "https://example.com/",
                Some("/"),
                "config.webhook.watch_dir",
            ),
            (
                "https://example.com/",
                Some("/workspace/../etc"),
                "config.webhook.watch_dir",
            ),
            (
                "https://example.com/",
                Some("/proc/1"),
                "config.webhook.watch_dir",
            ),
        ] {
            let err = check(&hook(url, dir)).unwrap_err();
            assert!(err.contains(&format!("`{field}`")), "{url} {dir:?}: {err}");
            assert!(!err.contains("pw@"), "{err}");
        }
    }
}
