//! The Claude Managed Agents environment worker: claims work from a
//! `self_hosted` environment's queue and runs each session's tools inside
//! that session's own durable Sandstone sandbox.
//!
//! The control plane keeps the agent loop; this crate speaks its worker
//! protocol exactly as the official SDK worker does (`poll`, `lease`,
//! `runner`), and executes tools through the Sandstone daemon (`tools`,
//! `sandbox`), so no Anthropic credential ever enters a sandbox. What goes
//! over the wire is the typed model of `sandstone-agents-api`, the one the
//! control plane serves (`cma` parses every answer into it, naming the
//! field a body got wrong); failures are `thiserror` enums per module.

pub mod cma;
pub mod item;
pub mod lease;
pub mod memory;
pub mod memory_plan;
pub mod metrics;
pub mod poll;
pub mod runner;
pub mod sandbox;
pub mod secret;
pub mod skill_install;
pub mod spawn;
pub mod sse;
pub mod status;
pub mod tools;

use cma::Cma;
use metrics::Metrics;
use sandbox::SessionSandboxes;
use secret::Secret;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Everything `sandstone worker` is told.
pub struct Config {
    pub environment_id: String,
    /// Optional for `run` when the work secret carries a sessions token.
    pub environment_key: Option<Secret>,
    pub base_url: String,
    pub worker_id: String,
    /// `None` never stops a session for idleness.
    pub max_idle: Option<Duration>,
    pub sandstone_url: String,
    pub sandstone_token: Secret,
    pub template: String,
    pub network: Option<serde_json::Value>,
    pub custom_tools: tools::CustomTools,
    /// `None` disables memory stores.
    pub memory_sync_interval: Option<Duration>,
    /// Items served at once by one process.
    pub concurrency: usize,
    /// `poll --on-work`: a program each session item is handed to instead.
    pub on_work: Option<std::path::PathBuf>,
    /// The team whose sandboxes the sessions get, when `sandstone_token`
    /// is the daemon's own key (its `cloud` environments); an API key's
    /// sandboxes are always its own team's.
    pub team: Option<String>,
}

/// A worker process's shared state.
pub struct Worker {
    pub config: Config,
    pub cma: Cma,
    pub sandboxes: SessionSandboxes,
    pub metrics: Arc<Metrics>,
    /// Becomes `true` on SIGTERM/SIGINT.
    pub shutdown: watch::Receiver<bool>,
}

impl Worker {
    pub fn new(config: Config, shutdown: watch::Receiver<bool>) -> Worker {
        // Any daemon call ends, the longest tool call included.
        let mut client = sandstone_client::Client::with_timeouts(
            &config.sandstone_url,
            config.sandstone_token.expose(),
            Duration::from_secs(5),
            tools::MAX_TOOL_TIME + Duration::from_secs(60),
        );
        if let Some(team) = &config.team {
            client = client.for_team(team);
        }
        Worker {
            cma: Cma::new(&config.base_url),
            sandboxes: SessionSandboxes {
                client,
                template: config.template.clone(),
                network: config.network.clone(),
                environment: config.environment_id.clone(),
            },
            metrics: Arc::new(Metrics::new(&config.worker_id)),
            shutdown,
            config,
        }
    }
}

/// The official SDK's default worker id: `{hostname}-{12 hex}`.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "worker".into());
    format!("{host}-{}", sandstone_api::random_hex(6))
}

/// Resolves once the worker is shutting down (never, if the flag's sender
/// is gone). Returns nothing, so no watch guard lives across an await.
pub async fn shutting_down(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}
