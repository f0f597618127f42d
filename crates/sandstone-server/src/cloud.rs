//! The daemon's executor for `cloud` environments
//! ([`sandstone_agents::Executor`]): each session's work item is served
//! in-process by the very code `sandstone worker` runs
//! ([`sandstone_worker::Worker`]), talking to this daemon over loopback, so
//! a `cloud` session behaves exactly as a self-hosted one (its durable
//! sandbox, skills, memory stores, confirmations) with no poll in between.
//!
//! What the environment's config asks for becomes the worker's settings:
//! - `packages` are built once per distinct set (and base) into a template
//!   by the template build ([`crate::lifecycle::BuildSpec`]), each package
//!   manager a cached step; sessions start from it;
//! - `networking` becomes the sessions' egress policy: `allow-all`, or
//!   `block-all` with the allowed hosts and, when asked, the package
//!   registries (the egress presets), every denial audited.

use crate::lifecycle::{BuildSpec, Lifecycle};
use crate::lock;
use sandstone_agents::vaults;
use sandstone_agents::{Agents, Executor, SessionSetup, Unservable};
use sandstone_agents_api::{
    BuildStatus, CloudConfig, CredentialNetworking, Environment, Networking, Packages,
    PackagesBuild, WorkItem,
};
use sandstone_api::{BuildEvent, Secret};
use sandstone_egress::credentials::ANY_HOST;
use sandstone_worker::Worker;
use sandstone_worker::item::{Item, ItemError};
use sandstone_worker::sandbox::{self as session_sandbox, FileSource, SessionExtras, SessionFile};
use sha2::Digest;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{OnceCell, watch};

/// The registries `allow_package_managers` opens (egress presets; the
/// README's "Presets" lists their hosts).
pub const PACKAGE_MANAGERS: [&str; 6] = ["python", "node", "rust", "go", "debian", "ruby"];

/// A packages template's name: this prefix, then [`PACKAGES_DIGEST`] hex
/// digits of what it holds.
const PACKAGES_PREFIX: &str = "cloud-";
const PACKAGES_DIGEST: usize = 16;

/// Whether `name` is one the daemon gives its packages templates (which a
/// user's template may not take: a session's packages would be another's).
pub(crate) fn is_packages_template(name: &str) -> bool {
    name.strip_prefix(PACKAGES_PREFIX)
        .is_some_and(|d| d.len() == PACKAGES_DIGEST && d.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// How long a session's item stays with its sandbox running while the
/// session is idle, as `sandstone worker`'s default.
const MAX_IDLE: Duration = Duration::from_secs(60);

/// How much of a failed install's output its error keeps (the end, where
/// installers say what went wrong).
const ERROR_TAIL: usize = 2048;

/// How often a session's memory stores sync back (`sandstone worker`'s
/// default).
const MEMORY_SYNC: Duration = Duration::from_secs(15);

/// What the executor is told at start.
pub struct CloudSettings {
    /// This daemon's own address, as its in-process workers reach it.
    pub self_url: String,
    /// The API key those workers use (never stored; this process's own).
    pub key: Secret,
    /// The template package sets are built on (and sessions without
    /// packages start from).
    pub base: String,
    /// This node's name (the workers' id).
    pub node: String,
}

type BuildCell = Arc<OnceCell<Result<(), String>>>;

pub struct Cloud {
    me: Weak<Cloud>,
    lc: Arc<Lifecycle>,
    agents: Weak<Agents>,
    settings: CloudSettings,
    /// A worker per environment, made for its config at the time.
    workers: Mutex<HashMap<String, (CloudConfig, Arc<Worker>)>>,
    /// Builds by template name: every session of a package set waits on
    /// the one build. A failed one is forgotten when an environment is
    /// prepared again (created, changed, or at the next start).
    builds: Mutex<HashMap<String, BuildCell>>,
    /// Set when the daemon stops: the in-process workers end their items
    /// (as `sandstone worker` does on SIGTERM), so no stream of theirs
    /// holds the daemon's graceful shutdown open.
    stopping: watch::Sender<bool>,
    shutdown: watch::Receiver<bool>,
}

impl Cloud {
    pub fn new(lc: Arc<Lifecycle>, agents: &Arc<Agents>, settings: CloudSettings) -> Arc<Cloud> {
        let (tx, rx) = watch::channel(false);
        Arc::new_cyclic(|me| Cloud {
            me: me.clone(),
            lc,
            agents: Arc::downgrade(agents),
            settings,
            workers: Mutex::new(HashMap::new()),
            builds: Mutex::new(HashMap::new()),
            stopping: tx,
            shutdown: rx,
        })
    }

    /// Ends every item the in-process workers serve.
    pub fn shut_down(&self) {
        self.stopping.send_replace(true);
    }

    /// The template a package set is built into: named by what it holds,
    /// so environments with the same packages share it.
    fn template_for(&self, packages: &Packages) -> String {
        if packages.is_empty() {
            return self.settings.base.clone();
        }
        // The base's current version is part of the name: packages built
        // on a base that was rebuilt since are built again on the new one.
        let base = self
            .lc
            .storage
            .template(&self.settings.base)
            .map(|t| t.pinned())
            .unwrap_or_else(|_| self.settings.base.clone());
        let key = serde_json::json!([base, packages]).to_string();
        let digest = hex::encode(sha2::Sha256::digest(key.as_bytes()));
        format!("{PACKAGES_PREFIX}{}", &digest[..PACKAGES_DIGEST])
    }

    fn build_cell(&self, name: &str) -> BuildCell {
        lock(&self.builds)
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// The template for `packages`, built if it is not there yet.
    async fn packages_template(&self, packages: &Packages) -> Result<String, String> {
        let name = self.template_for(packages);
        if packages.is_empty() {
            return Ok(name);
        }
        let cell = self.build_cell(&name);
        cell.get_or_init(|| self.build(&name, packages))
            .await
            .clone()
            .map(|()| name)
    }

    async fn build(&self, name: &str, packages: &Packages) -> Result<(), String> {
        if self.lc.storage.template(name).is_ok() {
            return Ok(());
        }
        let text = sandstonefile(&self.settings.base, packages);
        let steps = sandstone_build::parse(&text).map_err(|e| e.to_string())?;
        let (tx, mut rx) = tokio::sync::mpsc::channel(256);
        let spec = BuildSpec {
            name: name.to_string(),
            steps,
            // Nothing is copied in.
            context: std::env::temp_dir(),
        };
        let lc = self.lc.clone();
        tokio::spawn(async move { lc.build_template(spec, &tx).await });
        let mut tail = String::new();
        while let Some(event) = rx.recv().await {
            match event {
                BuildEvent::Output { text, .. } => {
                    tail.push_str(&text);
                    if tail.len() > 4 * ERROR_TAIL {
                        keep_tail(&mut tail, ERROR_TAIL);
                    }
                }
                BuildEvent::Done { .. } => return Ok(()),
                BuildEvent::Failed { message, .. } => {
                    keep_tail(&mut tail, ERROR_TAIL);
                    let said = tail.trim();
                    return Err(if said.is_empty() {
                        message
                    } else {
                        format!("{message}: {said}")
                    });
                }
                BuildEvent::Step { .. } => {}
            }
        }
        Err("the package build ended without a result".into())
    }

    /// Builds `env`'s packages and records how it went on the environment.
    async fn prepare_packages(self: Arc<Self>, env: Environment) {
        let Some(cloud) = env.config.cloud() else {
            return;
        };
        let packages = &cloud.packages;
        if packages.is_empty() {
            return;
        }
        let report = |status, error| PackagesBuild {
            status,
            error,
            updated_at: sandstone_api::timefmt::rfc3339_ms(sandstone_api::timefmt::now_ms()),
        };
        let agents = self.agents.upgrade();
        if let Some(a) = &agents {
            a.packages_built(&env.id, packages, report(BuildStatus::Building, None))
                .await;
        }
        let result = self.packages_template(packages).await;
        if let Some(a) = &agents {
            let build = match result {
                Ok(_) => report(BuildStatus::Ready, None),
                Err(e) => report(BuildStatus::Failed, Some(e)),
            };
            a.packages_built(&env.id, packages, build).await;
        }
    }

    /// The worker for `env`'s current config.
    async fn worker(&self, env: &Environment) -> Result<Arc<Worker>, Unservable> {
        let Some(cloud) = env.config.cloud() else {
            return Err(unservable(format!(
                "environment {} is not a cloud environment",
                env.id
            )));
        };
        let template = self.packages_template(&cloud.packages).await.map_err(|e| {
            unservable(format!(
                "environment {}: its packages could not be installed: {e}",
                env.id
            ))
        })?;
        if let Some((config, w)) = lock(&self.workers).get(&env.id)
            && config == cloud
            && w.config.template == template
        {
            return Ok(w.clone());
        }
        // Its sessions' sandboxes are made in the environment's team.
        let team = match self.agents.upgrade() {
            Some(a) => a
                .team_of(&env.id)
                .await
                .map_err(|e| unservable(format!("environment {}: {e}", env.id)))?,
            None => return Err(unservable("the daemon is stopping".into())),
        };
        let config = sandstone_worker::Config {
            environment_id: env.id.clone(),
            // Each item brings its own sessions token.
            environment_key: None,
            base_url: self.settings.self_url.clone(),
            worker_id: format!("{}-cloud", self.settings.node),
            max_idle: Some(MAX_IDLE),
            sandstone_url: self.settings.self_url.clone(),
            sandstone_token: self.settings.key.clone(),
            template,
            network: Some(policy(&cloud.networking)),
            custom_tools: Default::default(),
            memory_sync_interval: Some(MEMORY_SYNC),
            concurrency: 1,
            on_work: None,
            team: Some(team),
        };
        let worker = Arc::new(Worker::new(config, self.shutdown.clone()));
        lock(&self.workers).insert(env.id.clone(), (cloud.clone(), worker.clone()));
        Ok(worker)
    }
}

/// The Files API of this daemon's control plane, for `file` resources.
struct Files(Weak<Agents>);

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the control plane's Files API")
    }
}

impl FileSource for Files {
    fn content(
        &self,
        file_id: &str,
    ) -> futures_util::future::BoxFuture<'static, Result<Vec<u8>, String>> {
        let (agents, id) = (self.0.upgrade(), file_id.to_string());
        Box::pin(async move {
            let agents = agents.ok_or("the daemon is stopping")?;
            agents.file_content(&id).await.map_err(|e| e.to_string())
        })
    }
}

fn unservable(message: String) -> Unservable {
    Unservable::new(message)
}

/// Keeps the last `n` bytes of `s` (from a character boundary).
fn keep_tail(s: &mut String, n: usize) {
    let mut cut = s.len().saturating_sub(n);
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    s.drain(..cut);
}

impl Executor for Cloud {
    fn prepare(&self, env: &Environment) {
        let Some(cloud) = env.config.cloud() else {
            return;
        };
        // A failed build of these packages is tried again.
        let name = self.template_for(&cloud.packages);
        let mut builds = lock(&self.builds);
        if builds
            .get(&name)
            .and_then(|c| c.get())
            .is_some_and(Result::is_err)
        {
            builds.remove(&name);
        }
        drop(builds);
        if let Some(me) = self.me.upgrade() {
            tokio::spawn(me.prepare_packages(env.clone()));
        }
    }

    fn forget(&self, env: &str) {
        lock(&self.workers).remove(env);
    }

    fn serve(
        &self,
        env: Environment,
        item: WorkItem,
        setup: SessionSetup,
    ) -> futures_util::future::BoxFuture<'static, Result<(), Unservable>> {
        let me = self.me.upgrade();
        Box::pin(async move {
            let me = me.ok_or_else(|| unservable("the daemon is stopping".into()))?;
            let worker = me.worker(&env).await?;
            let mut item = Item::from_poll(&item)
                .ok_or_else(|| unservable(format!("work {} has no usable id", item.id)))?;
            if let Some(cloud) = env.config.cloud() {
                item.extras = extras(&setup, &cloud.networking);
                if !item.extras.files.is_empty() {
                    item.extras.file_source = Some(Arc::new(Files(me.agents.clone())));
                }
            }
            match worker.handle(item).await {
                sandstone_worker::item::Outcome::Failed(ItemError::Repository(r)) => {
                    Err(Unservable {
                        message: r.to_string(),
                        kind: r.kind,
                        repository_url: Some(r.url),
                    })
                }
                sandstone_worker::item::Outcome::Failed(e) => Err(unservable(e.to_string())),
                _ => Ok(()),
            }
        })
    }

    fn files_changed(
        &self,
        env: Environment,
        session: String,
        files: Vec<(String, String)>,
    ) -> futures_util::future::BoxFuture<'static, ()> {
        let me = self.me.upgrade();
        Box::pin(async move {
            let Some(me) = me else {
                return;
            };
            let Ok(worker) = me.worker(&env).await else {
                return;
            };
            let extras = SessionExtras {
                files: session_files(&files),
                file_source: Some(Arc::new(Files(me.agents.clone()))),
                ..SessionExtras::default()
            };
            if let Err(e) = worker.sandboxes.refresh_files(&session, &extras).await {
                tracing::warn!(session = %session, error = %e, "updating the session's files in its sandbox (its next item tries again)");
            }
        })
    }
}

/// `file` resources (file id, mount path) as the worker takes them.
fn session_files(files: &[(String, String)]) -> Vec<SessionFile> {
    files
        .iter()
        .map(|(file_id, mount_path)| SessionFile {
            file_id: file_id.clone(),
            mount_path: mount_path.clone(),
        })
        .collect()
}

/// A package set's Sandstonefile: each manager one cached step, the
/// system's packages first. Names were checked when the environment was
/// saved (no options, spaces or shell characters); quoting is belt and
/// braces.
fn sandstonefile(base: &str, packages: &Packages) -> String {
    let mut text = format!("FROM {base}\n");
    for (manager, names) in packages.by_manager() {
        if names.is_empty() {
            continue;
        }
        let quoted = |f: &dyn Fn(&str) -> String| {
            names
                .iter()
                .map(|n| format!("'{}'", f(n)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let same = |n: &str| n.to_string();
        let command = match manager {
            "apt" => format!(
                "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {}",
                quoted(&same)
            ),
            // Debian's Python refuses system-wide installs unless told.
            "pip" => format!(
                "PIP_BREAK_SYSTEM_PACKAGES=1 pip install --no-cache-dir --disable-pip-version-check {}",
                quoted(&same)
            ),
            "npm" => format!("npm install -g --no-fund --no-audit {}", quoted(&same)),
            "cargo" => format!("cargo install {}", quoted(&same)),
            "gem" => format!("gem install --no-document {}", quoted(&same)),
            // `go install` wants a version: the newest unless one is given.
            _ => format!(
                "go install {}",
                quoted(&|n: &str| if n.contains('@') {
                    n.to_string()
                } else {
                    format!("{n}@latest")
                })
            ),
        };
        text.push_str(&format!("RUN {command}\n"));
    }
    text
}

/// A session's additions to its sandbox. Its vault `environment_variable`
/// credentials: each variable holds the credential's placeholder, which
/// the egress proxy replaces with the value (resolved as the source
/// `vault:<id>` on each request) on the credential's hosts: its
/// `allowed_hosts`, or for `unrestricted`, wherever the environment lets
/// the sandbox go. And with `allow_mcp_servers`, its agent's MCP servers'
/// hosts are allowed.
pub fn extras(setup: &SessionSetup, networking: &Networking) -> SessionExtras {
    let mut out = SessionExtras::default();
    let limited = matches!(networking, Networking::Limited(_));
    if let Networking::Limited(l) = networking
        && l.allow_mcp_servers
    {
        out.allowed_hosts = setup.mcp_hosts.clone();
    }
    // Repositories: cloned from their host, reachable for the clone (and
    // later fetches), their token added by the proxy as GitHub takes it.
    for r in &setup.repositories {
        let host = r.host.clone();
        if limited {
            out.allowed_hosts.push(host.clone());
        }
        if r.authenticated {
            out.credential_bindings.push(serde_json::json!({
                "ref": r.resource_id,
                "sourceRef": format!("{}{}", vaults::RESOURCE_SOURCE_PREFIX, r.resource_id),
                "projection": {"type": "http_headers", "httpHeaders": {"headers": [
                    {"name": "Authorization", "valueTemplate": "Basic {{ .basic }}"}]}},
            }));
            out.credential_rules.push(serde_json::json!({
                "name": format!("repository-{}", r.resource_id),
                "credentialRef": r.resource_id, "protocol": r.scheme, "domains": [host],
            }));
        }
        out.repositories.push(session_sandbox::Repository {
            url: r.url.clone(),
            path: r.mount_path.clone(),
            checkout: r.checkout.clone(),
        });
    }
    out.files = session_files(&setup.files);
    for s in &setup.secrets {
        let v = &s.variable;
        let hosts = match (&v.networking, networking) {
            (CredentialNetworking::Limited { allowed_hosts }, _) => allowed_hosts.clone(),
            (CredentialNetworking::Unrestricted, Networking::Limited(l)) => l.allowed_hosts.clone(),
            (CredentialNetworking::Unrestricted, Networking::Unrestricted) => {
                vec![ANY_HOST.to_string()]
            }
        };
        out.env_vars
            .insert(v.secret_name.clone(), s.placeholder.clone());
        if hosts.is_empty() {
            continue;
        }
        let mut locations = Vec::new();
        if v.injection_location.header {
            locations.push("header");
        }
        if v.injection_location.body {
            locations.push("body");
        }
        out.credential_bindings.push(serde_json::json!({
            "ref": s.credential_id,
            "sourceRef": format!("{}{}", vaults::SOURCE_PREFIX, s.credential_id),
            "projection": {"type": "placeholder_substitution", "placeholderSubstitution": {
                "replacements": [{"placeholder": s.placeholder, "valueTemplate": "{{ .value }}",
                    "locations": locations}]}},
        }));
        for protocol in ["https", "http"] {
            out.credential_rules.push(serde_json::json!({
                "name": format!("vault-{}-{protocol}", s.credential_id),
                "credentialRef": s.credential_id, "protocol": protocol, "domains": hosts,
            }));
        }
    }
    out
}

/// `networking` as Sandbox0's `SandboxNetworkPolicy`.
pub fn policy(n: &Networking) -> serde_json::Value {
    let Networking::Limited(l) = n else {
        return serde_json::json!({"mode": "allow-all"});
    };
    let mut rules = Vec::new();
    if !l.allowed_hosts.is_empty() {
        rules.push(serde_json::json!({"name": "allowed-hosts", "action": "allow", "domains": l.allowed_hosts}));
    }
    if l.allow_package_managers {
        rules.extend(PACKAGE_MANAGERS.iter().map(
            |p| serde_json::json!({"name": format!("packages-{p}"), "action": "allow", "preset": p}),
        ));
    }
    serde_json::json!({"mode": "block-all", "egress": {"trafficRules": rules}})
}
