//! One durable sandbox per session. The session→sandbox mapping lives in
//! the sandbox's own metadata, so any worker on any host finds it: the first
//! item of a session claims a sandbox, later items resume the same one, and
//! every item ends by pausing it (compute released, files kept).
//!
//! The session's files are not the sandbox's: its `/workspace` and its
//! outputs directory are sandbox volumes (labelled with the session), bound
//! into whatever sandbox serves it. A session whose sandbox is gone (deleted,
//! lost) gets a new one, on the worker's template of the day, with its files
//! intact; its outputs are read without waking a sandbox.

use futures_util::future::BoxFuture;
use sandstone_agents_api::Checkout;
use sandstone_api::{SandboxConfig, SandboxSummary, SandboxUpdateConfig};
use sandstone_client::Client;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The metadata label naming the session a sandbox serves.
pub const SESSION_LABEL: &str = "cma.session";
const ENVIRONMENT_LABEL: &str = "cma.environment";
/// On a session's volume: which of its directories it holds
/// ([`VolumeRole`]).
pub const VOLUME_LABEL: &str = "cma.volume";

/// The session directories kept on volumes, and where they are mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeRole {
    Workspace,
    Outputs,
}

impl VolumeRole {
    pub const ALL: [VolumeRole; 2] = [VolumeRole::Workspace, VolumeRole::Outputs];

    pub fn label(self) -> &'static str {
        match self {
            VolumeRole::Workspace => "workspace",
            VolumeRole::Outputs => "outputs",
        }
    }

    pub fn mount_point(self) -> &'static str {
        match self {
            VolumeRole::Workspace => WORKDIR,
            VolumeRole::Outputs => OUTPUTS_DIR,
        }
    }
}
/// Set on a sandbox given the uploads directory, whose files then follow
/// the session's `file` resources on each item.
const UPLOADS_LABEL: &str = "cma.uploads";

pub use sandstone_agents_api::layout::{OUTPUTS_DIR, UPLOADS_DIR, WORKDIR};
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
    /// The session's `file` resources, staged read-only on each item.
    pub files: Vec<SessionFile>,
    /// Where their bytes come from (set when `files` is not empty).
    pub file_source: Option<Arc<dyn FileSource>>,
}

/// A `file` resource: uploaded into the sandbox's read-only uploads
/// directory ([`UPLOADS_DIR`]) and, when its `mount_path` is elsewhere,
/// linked there.
#[derive(Debug, Clone)]
pub struct SessionFile {
    pub file_id: String,
    pub mount_path: String,
}

impl SessionFile {
    /// Its name in the uploads directory, and the link to make at its
    /// mount path when that is outside the directory. A link can be
    /// removed from inside the sandbox, but what it points at cannot be
    /// changed: writing through it fails.
    fn placement(&self) -> (String, Option<String>) {
        match self.mount_path.rsplit_once('/') {
            Some((UPLOADS_DIR, name)) => (name.to_string(), None),
            _ => (self.file_id.clone(), Some(self.mount_path.clone())),
        }
    }
}

/// The bytes of uploaded files (the control plane's Files API).
pub trait FileSource: Send + Sync + std::fmt::Debug {
    fn content(&self, file_id: &str) -> BoxFuture<'static, Result<Vec<u8>, String>>;
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
    #[error("mounting file {file_id}: {message}")]
    File { file_id: String, message: String },
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
            let has_uploads = found.metadata.contains_key(UPLOADS_LABEL);
            if !has_uploads && !extras.files.is_empty() {
                // A file added since: the directory is mounted from the
                // resume on.
                self.client.update(&found.id, &uploads_config()).await?;
            }
            self.client.resume(&found.id).await?;
            if has_uploads || !extras.files.is_empty() {
                self.stage_files(&found.id, extras).await?;
            }
            return Ok(Acquired {
                id: found.id,
                resumed: true,
            });
        }
        let (mounts, fresh) = self.session_volumes(session).await?;
        let claimed = self
            .client
            .claim_request(&sandstone_api::ClaimRequest {
                template: Some(self.template.clone()),
                config: Some(self.config(session, extras)),
                snapshot_id: None,
                mounts,
            })
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
        // A workspace that moved here from another sandbox has them.
        for r in extras.repositories.iter().filter(|_| fresh) {
            if let Err(e) = self.clone_into(&id, r).await {
                // Gone, so the next item starts over rather than find a
                // sandbox without its repositories.
                let _ = self.client.delete(&id).await;
                return Err(e);
            }
        }
        if !extras.files.is_empty()
            && let Err(e) = self.stage_files(&id, extras).await
        {
            let _ = self.client.delete(&id).await;
            return Err(e);
        }
        Ok(Acquired { id, resumed: false })
    }

    /// The session's `file` resources changed while its sandbox may be
    /// running a turn: a running sandbox gets them now (the directory
    /// bound live if it had none); a paused one at its next item.
    pub async fn refresh_files(
        &self,
        session: &str,
        extras: &SessionExtras,
    ) -> Result<(), AcquireError> {
        let Some(found) = self.find(session).await? else {
            return Ok(());
        };
        let has_uploads = found.metadata.contains_key(UPLOADS_LABEL);
        if found.paused || (!has_uploads && extras.files.is_empty()) {
            return Ok(());
        }
        if !has_uploads {
            self.client.update(&found.id, &uploads_config()).await?;
        }
        self.stage_files(&found.id, extras).await
    }

    /// Makes the uploads directory hold the session's files, no more:
    /// uploads what is missing (and links it at its mount path), removes
    /// what a deleted resource left. One listing when nothing changed.
    async fn stage_files(&self, id: &str, extras: &SessionExtras) -> Result<(), AcquireError> {
        let have: BTreeSet<String> = self
            .client
            .uploads(id)
            .await?
            .into_iter()
            .map(|u| u.name)
            .collect();
        let mut wanted = BTreeSet::new();
        let (mut links, mut linked) = (Vec::new(), Vec::new());
        for f in &extras.files {
            let (name, link) = f.placement();
            if !have.contains(&name) {
                let fail = |message: String| AcquireError::File {
                    file_id: f.file_id.clone(),
                    message,
                };
                let source = extras
                    .file_source
                    .as_ref()
                    .ok_or_else(|| fail("no source for file contents".into()))?;
                let bytes = source.content(&f.file_id).await.map_err(fail)?;
                self.client.put_upload(id, &name, bytes).await?;
                if let Some(link) = link {
                    links.push(format!("{UPLOADS_DIR}/{name}"));
                    links.push(link);
                    linked.push(f.file_id.as_str());
                }
            }
            wanted.insert(name);
        }
        for stale in have.difference(&wanted) {
            self.client.delete_upload(id, stale).await?;
        }
        if links.is_empty() {
            return Ok(());
        }
        // All links in one command; `-T` so an existing directory at a
        // mount path fails rather than get the link put inside it.
        let script = r#"while [ $# -gt 0 ]; do mkdir -p -- "$(dirname -- "$2")" && ln -sfT -- "$1" "$2" || exit 1; shift 2; done"#;
        let argv: Vec<String> = ["sh", "-c", script, "sh"]
            .into_iter()
            .map(String::from)
            .chain(links.iter().cloned())
            .collect();
        let out = self.client.run(id, &argv, None, Some(60)).await?;
        if out.exit_code == Some(0) {
            return Ok(());
        }
        Err(AcquireError::File {
            file_id: linked.join(", "),
            message: format!(
                "linking at its mount path: {}",
                out.stderr.or(out.stdout).unwrap_or_default().trim()
            ),
        })
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

    /// The session's volumes as a claim's mounts (made if missing), and
    /// whether its workspace is new.
    async fn session_volumes(
        &self,
        session: &str,
    ) -> Result<(Vec<sandstone_api::volumes::ClaimMount>, bool), AcquireError> {
        let found = self
            .client
            .find_labeled_volumes(SESSION_LABEL, session)
            .await?;
        let mut mounts = Vec::new();
        let mut fresh = false;
        for role in VolumeRole::ALL {
            let have = found
                .iter()
                .find(|v| v.metadata.get(VOLUME_LABEL).map(String::as_str) == Some(role.label()));
            let id = match have {
                Some(v) => v.id.clone(),
                None => {
                    fresh |= role == VolumeRole::Workspace;
                    let metadata = BTreeMap::from([
                        (SESSION_LABEL.to_string(), session.to_string()),
                        (ENVIRONMENT_LABEL.to_string(), self.environment.clone()),
                        (VOLUME_LABEL.to_string(), role.label().to_string()),
                    ]);
                    let req = sandstone_api::volumes::CreateSandboxVolumeRequest {
                        metadata,
                        ..Default::default()
                    };
                    self.client.create_volume(&req).await?.id
                }
            };
            mounts.push(sandstone_api::volumes::ClaimMount {
                sandboxvolume_id: id,
                mount_point: role.mount_point().to_string(),
            });
        }
        Ok((mounts, fresh))
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
        let mut metadata = BTreeMap::from([
            (SESSION_LABEL.to_string(), session.to_string()),
            (ENVIRONMENT_LABEL.to_string(), self.environment.clone()),
        ]);
        // Only with files: a sandbox with the mount cannot come from the
        // warm pool.
        let uploads_dir = (!extras.files.is_empty()).then(|| {
            metadata.insert(UPLOADS_LABEL.into(), "1".into());
            UPLOADS_DIR.to_string()
        });
        SandboxConfig {
            uploads_dir,
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
/// What gives a paused sandbox the uploads directory at its resume.
fn uploads_config() -> SandboxUpdateConfig {
    SandboxUpdateConfig {
        uploads_dir: Some(UPLOADS_DIR.into()),
        metadata: BTreeMap::from([(UPLOADS_LABEL.into(), "1".into())]),
        ..Default::default()
    }
}

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
    fn a_file_is_linked_unless_its_mount_path_is_in_the_uploads_directory() {
        let f = |mount_path: &str| {
            SessionFile {
                file_id: "file_1".into(),
                mount_path: mount_path.into(),
            }
            .placement()
        };
        assert_eq!(f("/mnt/session/uploads/file_1"), ("file_1".into(), None));
        assert_eq!(
            f("/mnt/session/uploads/data.csv"),
            ("data.csv".into(), None)
        );
        assert_eq!(
            f("/workspace/in/data.csv"),
            ("file_1".into(), Some("/workspace/in/data.csv".into()))
        );
    }

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
            ..SessionExtras::default()
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
