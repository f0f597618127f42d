//! One work item, start to end: lease first, then the session, its
//! sandbox, skills and memory, the tool runner, teardown, and the final
//! force-stop unless the lease went to someone else.

use crate::Worker;
use crate::cma::CmaError;
use crate::lease::{Lease, Target};
use crate::memory::{Memory, MemoryError};
use crate::runner::{RunEnd, Runner};
use crate::sandbox::OUTPUTS_DIR;
use crate::secret::{Secret, sessions_token};
use crate::skill_install::Installer;
use crate::tools::{Roots, ToolHost};
use sandstone_agents_api::{Session, WorkItem, WorkKind};
use std::time::Instant;

/// How an item ended, for logs and metrics.
#[derive(Debug)]
pub enum Outcome {
    Ran(RunEnd),
    Healthcheck,
    /// The session had already terminated.
    Terminated,
    Failed(ItemError),
}

/// Why an item could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ItemError {
    #[error("no credential: neither a work secret nor an environment key")]
    NoCredential,
    #[error("the session attaches memory stores but the work item carried no sessions token")]
    NoSessionsToken,
    #[error("session lookup: {0}")]
    Session(#[source] CmaError),
    #[error("sandbox: {0}")]
    Sandbox(#[source] sandstone_client::Error),
    #[error("repository {0}")]
    Repository(#[source] crate::sandbox::RepositoryError),
    #[error("memory: {0}")]
    Memory(#[source] MemoryError),
    /// A `file` resource could not be put in the sandbox.
    #[error("{0}")]
    File(String),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Ran(RunEnd::IdleTimeout) => "idle",
            Outcome::Ran(RunEnd::Terminated) | Outcome::Terminated => "terminated",
            Outcome::Ran(RunEnd::Lease(_)) => "lease_ended",
            Outcome::Ran(RunEnd::Cancelled) => "cancelled",
            Outcome::Ran(RunEnd::Fatal(_)) | Outcome::Failed(_) => "failed",
            Outcome::Healthcheck => "healthcheck",
        }
    }
}

/// Ids go into URL paths: only the characters the API's ids use.
pub fn plain_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The fields of a claimed item the worker needs.
pub struct Item {
    pub id: String,
    pub kind: WorkKind,
    pub session: String,
    pub secret: Option<String>,
    /// When the poll returned it (for the poll→ready figure).
    pub polled_at: Instant,
    /// What the session's sandbox gets when this item creates it.
    pub extras: crate::sandbox::SessionExtras,
}

impl Item {
    pub fn from_poll(w: &WorkItem) -> Option<Item> {
        if !plain_id(&w.id) || (w.data.kind == WorkKind::Session && !plain_id(&w.data.id)) {
            return None;
        }
        Some(Item {
            id: w.id.clone(),
            kind: w.data.kind.clone(),
            session: w.data.id.clone(),
            secret: w.secret.clone(),
            polled_at: Instant::now(),
            extras: Default::default(),
        })
    }
}

impl Worker {
    pub async fn handle(&self, item: Item) -> Outcome {
        let decoded = item.secret.as_deref().and_then(sessions_token);
        if item.secret.is_some() && decoded.is_none() {
            tracing::warn!(work = %item.id, "the work secret carries no readable sessions token; using the environment key");
        }
        let token = decoded
            .map(|t| (t, true))
            .or_else(|| self.config.environment_key.clone().map(|k| (k, false)));
        let Some((token, has_sessions_token)) = token else {
            tracing::error!(work = %item.id, "neither a work secret nor an environment key: cannot serve the item");
            return Outcome::Failed(ItemError::NoCredential);
        };
        self.metrics.item_started(&item.id, &item.session);
        let lease = Lease::start(Target {
            cma: self.cma.clone(),
            env: self.config.environment_id.clone(),
            work: item.id.clone(),
            token: token.clone(),
            metrics: self.metrics.clone(),
        });
        let outcome = if item.kind == WorkKind::Session {
            self.serve(&item, &token, has_sessions_token, &lease).await
        } else {
            self.healthcheck().await
        };
        let owns = still_ours(&lease);
        drop(lease);
        if owns {
            let env = &self.config.environment_id;
            if let Err(e) = self.cma.stop(env, &item.id, &token, true).await {
                tracing::warn!(work = %item.id, error = %e, "force-stop failed");
            }
        }
        tracing::info!(work = %item.id, session = %item.session, outcome = ?outcome, "item done");
        self.metrics.item_finished(&item.id, outcome.label());
        outcome
    }

    /// Healthcheck items probe what serving a session needs: the daemon.
    async fn healthcheck(&self) -> Outcome {
        match self.sandboxes.client.templates().await {
            Ok(_) => tracing::info!("healthcheck: sandstone daemon reachable"),
            Err(e) => tracing::warn!(error = %e, "healthcheck: sandstone daemon unreachable"),
        }
        Outcome::Healthcheck
    }

    async fn serve(
        &self,
        item: &Item,
        token: &Secret,
        has_sessions_token: bool,
        lease: &Lease,
    ) -> Outcome {
        let session = match self.cma.session(&item.session, token).await {
            Ok(s) => s,
            Err(e) => return Outcome::Failed(ItemError::Session(e)),
        };
        if session.is_over() {
            return Outcome::Terminated;
        }
        let wants_memory = session.has_memory() && self.config.memory_sync_interval.is_some();
        if wants_memory && !has_sessions_token {
            tracing::error!(work = %item.id, "the session attaches memory stores but the work item carried no sessions token");
            return Outcome::Failed(ItemError::NoSessionsToken);
        }
        let sandbox = match self.sandboxes.acquire(&item.session, &item.extras).await {
            Ok(s) => s,
            Err(crate::sandbox::AcquireError::Sandbox(e)) => {
                return Outcome::Failed(ItemError::Sandbox(e));
            }
            Err(crate::sandbox::AcquireError::Repository(e)) => {
                return Outcome::Failed(ItemError::Repository(e));
            }
            Err(e @ crate::sandbox::AcquireError::File { .. }) => {
                return Outcome::Failed(ItemError::File(e.to_string()));
            }
        };
        self.metrics.item_sandbox(&item.id, &sandbox.id);
        tracing::info!(work = %item.id, session = %item.session, sandbox = %sandbox.id,
            resumed = sandbox.resumed, ms = item.polled_at.elapsed().as_millis() as u64, "sandbox ready");
        let outcome = self
            .run_session(item, token, &session, &sandbox.id, wants_memory, lease)
            .await;
        if still_ours(lease) {
            self.sandboxes.release(&sandbox.id).await;
        }
        outcome
    }

    async fn run_session(
        &self,
        item: &Item,
        token: &Secret,
        session: &Session,
        sandbox: &str,
        wants_memory: bool,
        lease: &Lease,
    ) -> Outcome {
        let client = &self.sandboxes.client;
        let installer = Installer {
            cma: &self.cma,
            token,
            client,
            sandbox,
        };
        let skill_dirs = installer.install_all(session).await;
        let memory = if wants_memory {
            match Memory::mount(
                &self.cma,
                token,
                client,
                sandbox,
                session,
                self.config.memory_sync_interval,
            )
            .await
            {
                Ok(m) => Some(m),
                Err(e) => {
                    installer.remove(&skill_dirs).await;
                    return Outcome::Failed(ItemError::Memory(e));
                }
            }
        } else {
            None
        };
        let mut roots = Roots::default();
        roots.allowed.push(OUTPUTS_DIR.to_string());
        if let Some(m) = &memory {
            m.add_roots(&mut roots);
        }
        let host = ToolHost {
            client: client.clone(),
            sandbox: sandbox.to_string(),
            roots,
            custom: self.config.custom_tools.clone(),
            session: item.session.clone(),
        };
        let end = Runner {
            cma: &self.cma,
            session: &item.session,
            token,
            host: &host,
            lease,
            metrics: &self.metrics,
            memory: memory.as_ref(),
            max_idle: self.config.max_idle,
            shutdown: self.shutdown.clone(),
        }
        .run()
        .await;
        // A lost lease means another worker serves the session now, in this
        // same sandbox: its skills, mirrors and shell are not ours to touch.
        if still_ours(lease) {
            installer.remove(&skill_dirs).await;
            if let Some(m) = memory {
                // Nothing may write to the mirrors during their last sync.
                host.reset_shell().await;
                let clean = matches!(end, RunEnd::IdleTimeout | RunEnd::Terminated);
                m.teardown(clean).await;
            }
        }
        Outcome::Ran(end)
    }
}

/// Whether this worker still holds the item's lease.
fn still_ours(lease: &Lease) -> bool {
    lease.ended().is_none_or(|e| e.owns_item())
}
