//! One durable sandbox per session. The session→sandbox mapping lives in
//! the sandbox's own metadata, so any worker on any host finds it: the first
//! item of a session claims a sandbox, later items resume the same one, and
//! every item ends by pausing it (compute released, files kept).

use sandstone_agents_api::Checkout;
use sandstone_api::{SandboxConfig, SandboxSummary};
use sandstone_client::Client;
use serde_json::Value;
use std::collections::BTreeMap;

/// The metadata label naming the session a sandbox serves.
pub const SESSION_LABEL: &str = "cma.session";
const ENVIRONMENT_LABEL: &str = "cma.environment";

pub use sandstone_agents_api::layout::{OUTPUTS_DIR, WORKDIR};
/// Parent of memory-store mounts; must exist and be writable.
pub const MEMORY_DIR: &str = "/mnt/memory";
/// Idle seconds (no API call touching it) before the daemon pauses a
/// session's sandbox on its own.
const ORPHAN_IDLE_SECONDS: u64 = 3600;

pub struct SessionSandboxes {
    pub client: Client,
    pub template: String,
    /// Sandbox0's `SandboxNetworkPolicy`; `None` is the daemon's default
    /// (`block-all`).
    pub network: Option<Value>,
    pub environment: String,
}

/// What one session's sandbox gets beyond its environment's: the daemon's
/// `cloud` executor fills it from the session's vaults. Never a secret:
/// variables hold placeholders, and the policy names credentials the
/// egress proxy resolves.
#[derive(Debug, Clone, Default)]
pub struct SessionExtras {
    pub env_vars: BTreeMap<String, String>,
    /// Sandbox0 `credentialBindings`, appended to the policy's.
    pub credential_bindings: Vec<Value>,
    /// Sandbox0 `egress.credentialRules`, appended to the policy's.
    pub credential_rules: Vec<Value>,
    /// Hosts (names or addresses) the policy allows besides its own.
    pub allowed_hosts: Vec<String>,
    /// Repositories cloned into a sandbox this item makes.
    pub repositories: Vec<Repository>,
}

/// A repository to clone (through the egress proxy, which adds its token).
#[derive(Debug, Clone)]
pub struct Repository {
    pub url: String,
    pub path: String,
    pub checkout: Option<Checkout>,
}

/// Why a repository could not be cloned: the session error the API
/// defines for it, and git's own words.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{url}: {message}")]
pub struct RepositoryError {
    /// `repository_authentication_error`, `…_forbidden_error`,
    /// `…_not_found_error`, `…_checkout_error` or `…_clone_error`.
    pub kind: &'static str,
    pub url: String,
    pub message: String,
}

/// Why a session's sandbox is not ready.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error(transparent)]
    Sandbox(#[from] sandstone_client::Error),
    #[error("cloning {0}")]
    Repository(RepositoryError),
}

/// The API's error for git's failure to clone (`checkout`: the step was
/// the checkout of a commit).
fn classify(stderr: &str, checkout: bool) -> &'static str {
    let s = stderr.to_ascii_lowercase();
    if checkout || (s.contains("remote branch") && s.contains("not found")) {
        "repository_checkout_error"
    } else if s.contains("authentication failed")
        || s.contains("could not read username")
        || s.contains(" 401")
    {
        "repository_authentication_error"
    } else if s.contains(" 403") {
        "repository_forbidden_error"
    } else if s.contains("not found") || s.contains(" 404") {
        "repository_not_found_error"
    } else {
        "repository_clone_error"
    }
}

/// A session's sandbox, ready for tool calls.
pub struct Acquired {
    pub id: String,
    /// `false` when this item created it.
    pub resumed: bool,
}

impl SessionSandboxes {
    /// The session's sandbox, running: found by label and resumed, or
    /// claimed (from the warm pool when there is one) and prepared.
    pub async fn acquire(
        &self,
        session: &str,
        extras: &SessionExtras,
    ) -> Result<Acquired, AcquireError> {
        if let Some(found) = self.find(session).await? {
            if !found.paused {
                // Only a worker that died mid-item leaves it running: end
                // whatever its tools still run before serving again.
                tracing::info!(sandbox = %found.id, "the session's sandbox was left running; restarting its processes");
                self.client.pause(&found.id).await?;
            }
            self.client.resume(&found.id).await?;
            return Ok(Acquired {
                id: found.id,
                resumed: true,
            });
        }
        let claimed = self
            .client
            .claim(&self.template, Some(self.config(session, extras)))
            .await?;
        let id = claimed.sandbox_id;
        // Independent directories: made at once, one round trip of latency.
        let made = futures_util::future::join_all(
            [WORKDIR, OUTPUTS_DIR, MEMORY_DIR].map(|dir| self.client.mkdir(&id, dir)),
        )
        .await;
        if let Some(e) = made.into_iter().find_map(Result::err) {
            // Not labelled as the session's half-made: nothing in it yet.
            let _ = self.client.delete(&id).await;
            return Err(e.into());
        }
        for r in &extras.repositories {
            if let Err(e) = self.clone_into(&id, r).await {
                // Gone, so the next item starts over rather than find a
                // sandbox without its repositories.
                let _ = self.client.delete(&id).await;
                return Err(e);
            }
        }
        Ok(Acquired { id, resumed: false })
    }

    /// Clones `r` in sandbox `id` and checks out what it asks for.
    async fn clone_into(&self, id: &str, r: &Repository) -> Result<(), AcquireError> {
        let mut clone: Vec<String> = ["env", "GIT_TERMINAL_PROMPT=0", "git", "clone", "--quiet"]
            .map(String::from)
            .into();
        if let Some(Checkout::Branch { name }) = &r.checkout {
            clone.extend(["--branch".into(), name.clone()]);
        }
        clone.extend(["--".into(), r.url.clone(), r.path.clone()]);
        self.git(id, r, &clone, false).await?;
        if let Some(Checkout::Commit { sha }) = &r.checkout {
            let checkout =
                ["git", "-C", &r.path, "checkout", "--quiet", "--detach", sha].map(String::from);
            self.git(id, r, &checkout, true).await?;
        }
        Ok(())
    }

    async fn git(
        &self,
        id: &str,
        r: &Repository,
        argv: &[String],
        checkout: bool,
    ) -> Result<(), AcquireError> {
        let out = self.client.run(id, argv, None, Some(600)).await?;
        if out.exit_code == Some(0) {
            return Ok(());
        }
        let stderr = out.stderr.or(out.stdout).unwrap_or_default();
        Err(AcquireError::Repository(RepositoryError {
            kind: classify(&stderr, checkout),
            url: r.url.clone(),
            message: stderr.trim().chars().take(2000).collect(),
        }))
    }

    pub async fn find(
        &self,
        session: &str,
    ) -> Result<Option<SandboxSummary>, sandstone_client::Error> {
        let found = self.client.find_labeled(SESSION_LABEL, session).await?;
        Ok(found.into_iter().next())
    }

    fn config(&self, session: &str, extras: &SessionExtras) -> SandboxConfig {
        let mut network = self.network.clone();
        if !extras.credential_bindings.is_empty() || !extras.allowed_hosts.is_empty() {
            // The daemon's default (`block-all`) is spelled out to add to.
            let n = network.get_or_insert_with(|| serde_json::json!({"mode": "block-all"}));
            append(&mut n["credentialBindings"], &extras.credential_bindings);
            let egress = &mut n["egress"];
            append(&mut egress["credentialRules"], &extras.credential_rules);
            if !extras.allowed_hosts.is_empty() {
                let (ips, names): (Vec<&String>, Vec<&String>) = extras
                    .allowed_hosts
                    .iter()
                    .partition(|h| h.parse::<std::net::IpAddr>().is_ok());
                let mut rule = serde_json::json!({"name": "session-hosts", "action": "allow"});
                if !names.is_empty() {
                    rule["domains"] = serde_json::json!(names);
                }
                if !ips.is_empty() {
                    rule["cidrs"] = serde_json::json!(ips);
                }
                append(&mut egress["trafficRules"], &[rule]);
            }
        }
        let metadata = BTreeMap::from([
            (SESSION_LABEL.to_string(), session.to_string()),
            (ENVIRONMENT_LABEL.to_string(), self.environment.clone()),
        ]);
        SandboxConfig {
            network,
            env_vars: extras.env_vars.clone(),
            metadata,
            // The worker pauses it when an item ends. The idle timer only
            // catches a sandbox whose worker died and whose session never
            // came back; a later item resumes it all the same.
            ttl: Some(ORPHAN_IDLE_SECONDS),
            hard_ttl: Some(0),
            auto_resume: Some(true),
            ..Default::default()
        }
    }

    /// Releases the compute; the files stay for the next item.
    pub async fn release(&self, id: &str) {
        if let Err(e) = self.client.pause(id).await {
            tracing::warn!(sandbox = id, error = %e, "could not pause the session's sandbox");
        }
    }
}

/// Appends `items` to the array at `slot` (made when missing).
fn append(slot: &mut Value, items: &[Value]) {
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    if let Value::Array(a) = slot {
        a.extend(items.iter().cloned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sessions_extras_are_added_to_the_environments_policy() {
        let s = SessionSandboxes {
            client: Client::new("http://127.0.0.1:9", "t"),
            template: "t".into(),
            network: Some(serde_json::json!({"mode": "block-all", "egress": {"trafficRules": []}})),
            environment: "env".into(),
        };
        let extras = SessionExtras {
            env_vars: BTreeMap::from([("K".to_string(), "PLACEHOLDER".to_string())]),
            credential_bindings: vec![serde_json::json!({"ref": "a"})],
            credential_rules: vec![serde_json::json!({"credentialRef": "a"})],
            allowed_hosts: vec!["127.0.0.1".into(), "mcp.example.com".into()],
            repositories: Vec::new(),
        };
        let c = s.config("sesn", &extras);
        let n = c.network.unwrap();
        assert_eq!(c.env_vars["K"], "PLACEHOLDER");
        assert_eq!(n["credentialBindings"][0]["ref"], "a");
        assert_eq!(n["egress"]["credentialRules"][0]["credentialRef"], "a");
        let rule = &n["egress"]["trafficRules"][0];
        assert_eq!(rule["cidrs"][0], "127.0.0.1");
        assert_eq!(rule["domains"][0], "mcp.example.com");
        assert_eq!(
            classify("fatal: Authentication failed for 'https://x/'", false),
            "repository_authentication_error"
        );
        assert_eq!(
            classify("fatal: repository 'https://x/' not found", false),
            "repository_not_found_error"
        );
        assert_eq!(
            classify(
                "warning: Remote branch nope not found in upstream origin",
                false
            ),
            "repository_checkout_error"
        );
        assert_eq!(
            classify("error: 403 Forbidden", false),
            "repository_forbidden_error"
        );
        assert_eq!(
            classify("fatal: early EOF", false),
            "repository_clone_error"
        );
        // None: the environment's policy alone.
        let plain = s.config("sesn", &SessionExtras::default());
        assert_eq!(plain.network, s.network);
    }
}
