//! `cloud` environments: the daemon runs their sessions itself. Work queued
//! for one is claimed by this node at once and handed to the [`Executor`]
//! the daemon registered, which serves it in-process exactly as a
//! `sandstone worker` serves a self-hosted item (the same code), so nothing
//! polls between the control plane and the sandboxes.
//!
//! The item stays a work item like any other: leased, heartbeated, listed,
//! stopped when its session ends, and requeued (and claimed again by
//! whichever node's lease expiry finds it) when its node dies.

use crate::Agents;
use crate::vaults::SandboxSecret;
use crate::work::{DEFAULT_RECLAIM, Poll};
use futures_util::future::BoxFuture;
use sandstone_agents_api::{
    CredentialNetworking, Environment, KnownEvent, Networking, Packages, PackagesBuild, WorkItem,
};
use serde_json::json;
use std::sync::Arc;

/// Why the executor could not serve an item: shown to the session's user
/// as a terminal `session.error`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Unservable {
    pub message: String,
    /// The error's `type`: `unknown_error` unless the API has one for it
    /// (`repository_not_found_error`, …).
    pub kind: &'static str,
    /// For a repository error, the repository.
    pub repository_url: Option<String>,
}

impl Unservable {
    pub fn new(message: String) -> Unservable {
        Unservable {
            message,
            kind: "unknown_error",
            repository_url: None,
        }
    }
}

/// What a `cloud` session's sandbox needs from the control plane.
#[derive(Debug, Clone, Default)]
pub struct SessionSetup {
    /// The `environment_variable` credentials of the session's vaults.
    pub secrets: Vec<SandboxSecret>,
    /// The hosts of the agent's MCP servers (for `allow_mcp_servers`).
    pub mcp_hosts: Vec<String>,
    /// The session's `github_repository` resources.
    pub repositories: Vec<Repository>,
    /// The session's `file` resources: (file id, mount path).
    pub files: Vec<(String, String)>,
}

/// A repository to clone into the session's sandbox.
#[derive(Debug, Clone)]
pub struct Repository {
    pub resource_id: String,
    pub url: String,
    /// The URL's host and scheme (`https` or `http`).
    pub host: String,
    pub scheme: String,
    pub mount_path: String,
    pub checkout: Option<sandstone_agents_api::Checkout>,
    /// Whether it has a token (source `resource:<resource_id>`).
    pub authenticated: bool,
}

/// What serves `cloud` environments' sessions (the daemon's sandboxes).
pub trait Executor: Send + Sync {
    /// The environment was created, changed, or found at start: the time to
    /// build what its sessions will need (its packages).
    fn prepare(&self, env: &Environment);
    /// The environment was deleted (its items are stopped already).
    fn forget(&self, env: &str);
    /// Serves a claimed and acknowledged item until it ends, its session's
    /// sandbox set up with `setup`.
    fn serve(
        &self,
        env: Environment,
        item: WorkItem,
        setup: SessionSetup,
    ) -> BoxFuture<'static, Result<(), Unservable>>;
    /// A session's `file` resources changed (now `files`: file id, mount
    /// path): its sandbox, if running, gets them before this returns.
    fn files_changed(
        &self,
        env: Environment,
        session: String,
        files: Vec<(String, String)>,
    ) -> BoxFuture<'static, ()>;
}

impl Agents {
    /// Registers the executor, prepares the `cloud` environments there are
    /// and takes the work they have queued.
    pub async fn serve_cloud(self: &Arc<Self>, executor: Arc<dyn Executor>) {
        if self.executor.set(executor).is_err() {
            tracing::warn!("a cloud executor is registered already");
            return;
        }
        for env in self.registry.environments(false) {
            if env.config.cloud().is_some() {
                self.prepare_cloud(&env);
                self.dispatch(&env.id).await;
            }
        }
    }

    /// Records how a `cloud` environment's packages build went (shown on
    /// the environment), unless its packages changed since.
    pub async fn packages_built(&self, env: &str, packages: &Packages, build: PackagesBuild) {
        if let Err(e) = self.registry.packages_built(env, packages, build).await {
            tracing::warn!(environment = env, error = %e, "recording a packages build");
        }
    }

    /// Tells the executor that the `file` resources of `session` changed.
    pub(crate) async fn files_changed(&self, session: &str) -> crate::error::ApiResult<()> {
        let Some(x) = self.executor.get() else {
            return Ok(());
        };
        let doc = self.sessions.session(session)?;
        let env = self.registry.environment(&doc.environment_id)?;
        if env.config.cloud().is_some() {
            x.files_changed(env, session.to_string(), session_files(&doc))
                .await;
        }
        Ok(())
    }

    /// An uploaded file's bytes, for the executor to put in a sandbox.
    pub async fn file_content(&self, id: &str) -> crate::error::ApiResult<Vec<u8>> {
        Ok(self.files.content(id).await?.1)
    }

    pub(crate) fn forget_cloud(&self, env: &str) {
        if let Some(x) = self.executor.get() {
            x.forget(env);
        }
    }

    pub(crate) fn prepare_cloud(&self, env: &Environment) {
        if let (Some(x), Some(_)) = (self.executor.get(), env.config.cloud()) {
            x.prepare(env);
        }
    }

    /// Claims every item queued for `env`, if it is a `cloud` environment
    /// this node serves, and hands each to the executor.
    pub(crate) async fn dispatch(self: &Arc<Self>, env: &str) {
        let Some(executor) = self.executor.get() else {
            return;
        };
        let Ok(environment) = self.registry.environment(env) else {
            return;
        };
        if environment.config.cloud().is_none() {
            return;
        }
        let poll = Poll {
            block: None,
            reclaim: DEFAULT_RECLAIM,
            worker: None,
        };
        loop {
            let item = match self.queue.poll(env, &poll).await {
                Ok(Some(item)) => item,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(environment = env, error = %e, "claiming cloud work");
                    return;
                }
            };
            if let Err(e) = self.queue.ack(env, &item.id).await {
                tracing::warn!(work = %item.id, error = %e, "acknowledging cloud work");
                continue;
            }
            let (agents, executor, environment) =
                (self.clone(), executor.clone(), environment.clone());
            tokio::spawn(async move {
                let served = match agents.session_setup(&item.data.id, &environment).await {
                    Ok(setup) => executor.serve(environment, item.clone(), setup).await,
                    Err(e) => Err(Unservable::new(e.to_string())),
                };
                if let Err(e) = served {
                    agents.unservable(&item, e).await;
                }
            });
        }
    }

    async fn session_setup(
        &self,
        session: &str,
        env: &Environment,
    ) -> crate::error::ApiResult<SessionSetup> {
        self.sessions.ensure(session).await?;
        let doc = self.sessions.session(session)?;
        let secrets = self.vaults.sandbox_secrets(&doc.vault_ids).await?;
        self.report_unreachable(&doc, env, &secrets).await?;
        let mcp_hosts = doc
            .agent
            .mcp_servers
            .iter()
            .filter_map(|s| Some(reqwest::Url::parse(&s.url).ok()?.host_str()?.to_string()))
            .collect();
        let mut repositories = Vec::new();
        for r in doc.resources.iter().filter(|r| r.is_repository()) {
            let id = r.id.clone().unwrap_or_default();
            let url = r.url.clone().unwrap_or_default();
            let parsed = reqwest::Url::parse(&url).ok();
            repositories.push(Repository {
                host: parsed
                    .as_ref()
                    .and_then(|u| u.host_str())
                    .unwrap_or_default()
                    .to_string(),
                scheme: parsed.as_ref().map_or("https", |u| u.scheme()).to_string(),
                authenticated: self.vaults.has_resource_token(&id).await?,
                resource_id: id,
                url,
                mount_path: r.mount_path.clone().unwrap_or_default(),
                checkout: r.checkout.clone(),
            });
        }
        let files = session_files(&doc);
        Ok(SessionSetup {
            secrets,
            mcp_hosts,
            repositories,
            files,
        })
    }

    /// An `environment_variable` credential limited to a host the
    /// environment's `limited` network does not allow could never be used:
    /// the session is told once (`credential_host_unreachable_error`).
    async fn report_unreachable(
        &self,
        doc: &sandstone_agents_api::Session,
        env: &Environment,
        secrets: &[SandboxSecret],
    ) -> crate::error::ApiResult<()> {
        let Some(Networking::Limited(net)) = env.config.cloud().map(|c| &c.networking) else {
            return Ok(());
        };
        let told = self.sessions.events(&doc.id);
        for s in secrets {
            let CredentialNetworking::Limited { allowed_hosts } = &s.variable.networking else {
                continue;
            };
            let Some(host) = allowed_hosts
                .iter()
                .find(|h| !net.allowed_hosts.iter().any(|a| covers(a, h)))
            else {
                continue;
            };
            let already = told.iter().any(|e| {
                e.known().is_some_and(|k| matches!(k, KnownEvent::SessionError(x)
                    if x.error.extra.get("credential_id").and_then(|v| v.as_str()) == Some(&s.credential_id)))
            });
            if already {
                continue;
            }
            let message = format!(
                "credential {}'s allowed host {host} is not one the environment's network allows",
                s.credential_id
            );
            self.sessions
                .emit(
                    &doc.id,
                    json!({"type": "session.error", "error": {
                    "type": "credential_host_unreachable_error", "message": message,
                    "credential_id": s.credential_id, "vault_id": s.vault_id,
                    "retry_status": {"type": "terminal"}}}),
                )
                .await?;
        }
        Ok(())
    }

    /// Tells the session why it cannot be served and lets its item go (the
    /// next message queues another, which tries again).
    async fn unservable(&self, item: &WorkItem, e: Unservable) {
        let session = &item.data.id;
        tracing::warn!(work = %item.id, session = %session, error = %e, "cloud session not served");
        let mut error = json!({"type": "session.error", "error": {
            "type": e.kind, "message": e.message, "retry_status": {"type": "terminal"}}});
        if let Some(url) = e.repository_url {
            error["error"]["repository_url"] = json!(url);
        }
        if let Err(e) = self.sessions.emit(session, error).await {
            tracing::warn!(session = %session, error = %e, "reporting a cloud session's failure");
        }
        // The worker stops an item it failed on itself: already stopped is done.
        match self.queue.stop(&item.environment_id, &item.id, true).await {
            Ok(_) | Err(crate::error::ApiError::AlreadyStopped(_)) => {}
            Err(e) => tracing::warn!(work = %item.id, error = %e, "stopping unserved cloud work"),
        }
    }
}

/// Whether an environment's allowed host `pattern` (a name, or `*.name`
/// for every name below it) covers a credential's host `host` (which may
/// be a pattern too).
fn covers(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(base) => host
            .strip_prefix("*.")
            .unwrap_or(host)
            .strip_suffix(base)
            .is_some_and(|rest| rest.ends_with('.')),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// A session's `file` resources: (file id, mount path).
fn session_files(doc: &sandstone_agents_api::Session) -> Vec<(String, String)> {
    doc.resources
        .iter()
        .filter(|r| r.is_file())
        .filter_map(|r| Some((r.file_id.clone()?, r.mount_path.clone()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn allowed_hosts_cover_names_below_a_wildcard_only() {
        assert!(super::covers("api.example.com", "api.example.com"));
        assert!(super::covers("*.example.com", "api.example.com"));
        assert!(super::covers("*.example.com", "*.eu.example.com"));
        assert!(!super::covers("*.example.com", "example.com"));
        assert!(!super::covers("api.example.com", "web.example.com"));
        assert!(!super::covers("*.example.com", "badexample.com"));
    }
}
