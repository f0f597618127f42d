//! The sandbox lifecycle: a durable identity (database row + volume) and,
//! while running, a runtime generation (PID 1, cgroup, mounts).
//!
//! Every operation takes the sandbox's lock, is idempotent, and records a
//! state only after it succeeded. Operations that a crash could interrupt
//! record a pending marker first; [`recovery`] rolls them forward or back at
//! the next start. A create that fails part-way undoes every step.
//!
//! It speaks no HTTP: operations fail with [`Error`], which `routes/`
//! turns into status codes and the API's error envelope.

pub(crate) mod bash;
mod build;
mod checkpoint;
mod error;
mod expiry;
mod fencing;
pub mod images;
pub mod logs;
pub(crate) mod network;
mod recovery;
pub mod registry;
pub mod services;
mod snapshots;
mod supervised;
mod templates;
mod uploads;
pub mod volumes;
mod warm;

use crate::initclient;
use crate::limits;
use crate::webhooks::Happened;
use sandstone_api::timefmt::now_ms;
use sandstone_api::{SandboxConfig, SandboxUpdateConfig};
use sandstone_db::volumes::VolumeStore;
use sandstone_db::{PendingOp, SandboxRow, SandboxStatus, Store};
use sandstone_init::proto::{Request, Response};
use sandstone_runtime::cgroup::{Cgroup, Driver, Limits};
use sandstone_runtime::{SpawnSpec, fault};
use sandstone_volumes::{Storage, Template};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// First host uid of slot 0; each sandbox gets 65536 ids.
const ID_BASE: u32 = 1_000_000;
const ID_COUNT: u32 = 65_536;
const MAX_SLOTS: i64 = 60_000;

/// A running sandbox's runtime handles.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// PID 1's host pid.
    pub pid: i32,
    /// The claim's `env_vars`: the base environment of every process.
    pub env: std::collections::BTreeMap<String, String>,
    pub socket: crate::initclient::InitSocket,
    pub cgroup: Cgroup,
    /// PID 1's pidfd, opened as soon as it started (so a reused pid is
    /// never mistaken for it): readable when init dies.
    pub init: Option<Arc<std::os::fd::OwnedFd>>,
    /// Turns at the agent's shell ([`bash`]); shared by every clone of
    /// this runtime, and gone with it.
    pub shell: Arc<tokio::sync::Mutex<()>>,
    /// The cgroup's OOM kills, read around every synchronous exec.
    pub oom: sandstone_runtime::cgroup::OomCounter,
}

impl Runtime {
    /// The runtime of PID 1 `pid` (host pid), answering on `socket`.
    pub fn new(
        id: &str,
        pid: i32,
        env: std::collections::BTreeMap<String, String>,
        socket: PathBuf,
        cgroup: Cgroup,
    ) -> Runtime {
        Runtime {
            pid,
            env,
            socket: crate::initclient::InitSocket::new(socket),
            oom: cgroup.oom_counter(),
            cgroup,
            init: open_pidfd(id, pid),
            shell: Arc::default(),
        }
    }
}

/// A runtime whose init the daemon watches: (sandbox, init pid, pidfd).
type InitWatch = (String, i32, Arc<std::os::fd::OwnedFd>);

pub struct Lifecycle {
    /// This node's id: the sandboxes whose row names it are the ones this
    /// lifecycle runs, recovers, expires and allocates slots among.
    pub node: String,
    pub store: Arc<dyn Store>,
    /// Sandbox volumes and their mounts (see `volumes.rs`).
    pub volumes: Arc<dyn VolumeStore>,
    /// The sandbox volumes' running file helpers.
    volume_helpers: volumes::VolumeHelpers,
    pub storage: Storage,
    cgroups: Driver,
    init_bin: PathBuf,
    runtimes: RwLock<HashMap<String, Runtime>>,
    slots: Mutex<HashSet<i64>>,
    /// Sandboxes start-up recovery paused with files newer than their last
    /// checkpoint, for [`Lifecycle::checkpoint_unsaved`].
    unsaved: Mutex<Vec<String>>,
    /// Where the round-robin search for a free slot starts.
    slot_cursor: std::sync::atomic::AtomicI64,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Last API activity per running sandbox, for `ttl`.
    activity: Mutex<HashMap<String, Instant>>,
    warm: warm::WarmPool,
    network: Option<Network>,
    /// Runtimes to watch for the death of their init; the watcher task
    /// (started with the daemon) takes the receiver.
    init_watch: tokio::sync::mpsc::UnboundedSender<InitWatch>,
    init_watched: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<InitWatch>>>,
    /// The object store volumes are checkpointed to (`--object-store`).
    checkpoints: Option<checkpoint::Checkpointer>,
    /// This node's hold on its sandboxes: nothing is started, checkpointed
    /// or expired for them while it has lapsed.
    pub lease: Arc<crate::lease::Lease>,
    /// Whether [`Lifecycle::fence_check`] froze the sandboxes after a
    /// lapse; held while freezing and while reconciling, so one cannot
    /// undo the other halfway.
    fenced: tokio::sync::Mutex<bool>,
    /// Pulls images for templates made from a registry's.
    /// Images pushed to this daemon (`/v2/`).
    pub registry: registry::OwnRegistry,
    puller: sandstone_registry::Puller,
    /// Templates being pulled now, for `GET /templates/{id}`.
    creating: Mutex<HashMap<String, images::Creating>>,
    /// Held shared by each build, alone by a prune of the build cache
    /// (which must not take a step a build is standing on).
    builds: tokio::sync::RwLock<()>,
    /// Each sandbox's team, as read once: it never changes, so a request's
    /// team check is a map read (see [`Lifecycle::team_of`]).
    teams: Mutex<HashMap<String, String>>,
    /// Where each sandbox's events go (`config.webhook`).
    pub(crate) webhooks: Arc<crate::webhooks::Webhooks>,
    /// The most each sandbox's durable log holds (0: no log).
    log_bytes: u64,
    /// The latest input ids of each execution session (sandbox, session).
    session_inputs: Mutex<HashMap<(String, String), std::collections::VecDeque<String>>>,
    /// Runtimes paused with their memory: frozen in their cgroup, out of
    /// `runtimes` so that no request reaches them, continued by the next
    /// resume. Their rows are `paused` with their init's pid.
    held: Mutex<HashMap<String, Held>>,
    /// See [`Runner::criu`].
    criu: Option<sandstone_runtime::criu::Criu>,
}

/// A runtime paused with its memory.
pub(super) struct Held {
    runtime: Runtime,
    /// Whether its init, files and exits are watched: they are while the
    /// daemon that paused it runs; one re-adopted after a restart has its
    /// watches started when it is continued.
    watched: bool,
}

pub use network::{
    Network, NetworkOptions, OperatorConfig, host_resolver, parse_policy, policy_of,
};

pub use sandstone_api::{MemoryKept, random_hex};

pub use build::BuildSpec;
pub use checkpoint::{Intent, Takeover};
pub use error::{Error, Result};
pub use supervised::SessionFollow;

/// Whether a runtime's init still runs (its pidfd is not yet readable).
fn init_alive(rt: &Runtime) -> bool {
    use std::os::fd::AsFd;
    match &rt.init {
        Some(fd) => {
            let mut polled = [sandstone_sys::fd::PollFd::readable(Some(fd.as_fd()))];
            matches!(
                sandstone_sys::fd::poll(&mut polled, Some(std::time::Duration::ZERO)),
                Ok(0)
            )
        }
        None => sandstone_sys::process::kill(sandstone_sys::Pid::from_raw(rt.pid), 0).is_ok(),
    }
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::internal(e)
}

/// The claim configuration stored with a sandbox.
pub fn config_of(row: &SandboxRow) -> SandboxConfig {
    serde_json::from_value(row.config.clone()).unwrap_or_default()
}

/// How this node runs sandboxes: what [`Lifecycle::new`] takes besides
/// the store, the storage and the services.
pub struct Runner<'a> {
    /// This node's id ([`Lifecycle::node`]).
    pub node: String,
    /// The static `sandstone-init`.
    pub init_bin: PathBuf,
    /// The cgroup group sandboxes go under (one per data directory).
    pub cgroup_group: &'a str,
    /// Ready sandboxes kept per template.
    pub warm_pool: usize,
    /// This node's hold on its sandboxes ([`crate::lease`]).
    pub lease: Arc<crate::lease::Lease>,
    /// Logins for the registries templates are pulled from.
    pub registry_auths: sandstone_registry::Auths,
    /// The names this daemon's own registry answers to (the first is the
    /// one pushers are told).
    pub registry_hosts: Vec<String>,
    /// Sends sandboxes' events to their webhooks.
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    /// The most each sandbox's durable log holds (`--log-retention-bytes`;
    /// 0: none is kept).
    pub log_bytes: u64,
    /// What writes paused sandboxes' memory to disk; without it a pause
    /// with memory keeps it frozen in place.
    pub criu: Option<sandstone_runtime::criu::Criu>,
}

impl Lifecycle {
    pub async fn new(
        runner: Runner<'_>,
        store: Arc<dyn Store>,
        volumes: Arc<dyn VolumeStore>,
        storage: Storage,
        network: Option<Network>,
        checkpoints: Option<sandstone_checkpoint::Checkpoints>,
    ) -> anyhow::Result<Lifecycle> {
        let Runner {
            node,
            init_bin,
            cgroup_group,
            warm_pool,
            lease,
            registry_auths,
            registry_hosts,
            webhooks,
            log_bytes,
            criu,
        } = runner;
        let cgroups = Driver::detect(cgroup_group)?;
        match sandstone_runtime::cgroup::favor_dynamic_modifications() {
            Ok(true) => tracing::info!(
                "remounted cgroup2 with favordynmods (fast cgroup migration for new sandboxes)"
            ),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not enable favordynmods; sandbox creation may have latency spikes")
            }
        }
        let slots: HashSet<i64> = store.used_slots(&node).await?.into_iter().collect();
        if network.is_none() {
            // A networked run's table and sandbox interfaces must not
            // outlive it unfiltered.
            let recorded: Vec<i64> = slots.iter().copied().collect();
            network::remove_leftovers(cgroup_group, &recorded)?;
        }
        let slot_cursor = slots.iter().max().map_or(0, |m| (m + 1) % MAX_SLOTS);
        let (init_watch, init_watched) = tokio::sync::mpsc::unbounded_channel();
        let registry = registry::OwnRegistry::new(
            sandstone_registry::Store::open(&storage.registry_dir())?,
            registry_hosts,
        );
        Ok(Lifecycle {
            node,
            store,
            volumes,
            volume_helpers: Default::default(),
            storage,
            cgroups,
            init_bin,
            runtimes: RwLock::new(HashMap::new()),
            slots: Mutex::new(slots),
            unsaved: Mutex::new(Vec::new()),
            slot_cursor: slot_cursor.into(),
            locks: Mutex::new(HashMap::new()),
            activity: Mutex::new(HashMap::new()),
            warm: warm::WarmPool::new(warm_pool),
            network,
            init_watch,
            init_watched: Mutex::new(Some(init_watched)),
            checkpoints: checkpoints.map(checkpoint::Checkpointer::new),
            lease,
            fenced: tokio::sync::Mutex::new(false),
            puller: sandstone_registry::Puller::new(registry_auths),
            registry,
            creating: Mutex::new(HashMap::new()),
            builds: tokio::sync::RwLock::new(()),
            teams: Mutex::new(HashMap::new()),
            webhooks,
            log_bytes,
            session_inputs: Mutex::default(),
            held: Mutex::default(),
            criu,
        })
    }

    /// The team sandbox `id` belongs to; `None` when there is no such
    /// sandbox. A sandbox's team is set at its creation and never changes,
    /// so an answer is kept; ids are never reused, so one kept for a
    /// deleted sandbox answers nobody.
    pub async fn team_of(&self, id: &str) -> Result<Option<String>> {
        let teams = || self.teams.lock().expect("lock poisoned: a holder panicked");
        if let Some(team) = teams().get(id) {
            return Ok(Some(team.clone()));
        }
        match self.store.get_sandbox(id).await {
            Ok(row) => {
                teams().insert(id.to_string(), row.team_id.clone());
                Ok(Some(row.team_id))
            }
            Err(sandstone_db::Error::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub fn runtime(&self, id: &str) -> Option<Runtime> {
        self.runtimes
            .read()
            .expect("lock poisoned: a holder panicked")
            .get(id)
            .cloned()
    }

    /// The sandboxes this node runs now.
    pub(crate) fn running_ids(&self) -> Vec<String> {
        self.runtimes
            .read()
            .expect("lock poisoned: a holder panicked")
            .keys()
            .cloned()
            .collect()
    }

    /// Whether this node runs sandbox `id` now (no copy of its runtime).
    pub fn runs(&self, id: &str) -> bool {
        self.runtimes
            .read()
            .expect("lock poisoned: a holder panicked")
            .contains_key(id)
    }

    /// Whether this node checkpoints to an object store (then every node
    /// of the cluster can fetch any sandbox's or snapshot's files).
    pub fn has_object_store(&self) -> bool {
        self.checkpoints.is_some()
    }

    pub fn running_count(&self) -> usize {
        self.runtimes
            .read()
            .expect("lock poisoned: a holder panicked")
            .len()
    }

    /// Sandboxes whose processes this node holds: running ones, and those
    /// paused with their memory (which still take it): what placement
    /// weighs against the node's capacity.
    pub fn resident_count(&self) -> usize {
        self.running_count() + crate::lock(&self.held).len()
    }

    /// A graceful stop: claimed sandboxes keep running (the next start
    /// re-adopts them); the warm pool is emptied, and the daemon's cgroup
    /// parents and firewall table are removed when no sandbox is left.
    pub fn shutdown(&self) {
        self.drain_warm_pool();
        if self.resident_count() == 0 {
            self.cgroups.remove_parents();
            if let Some(n) = &self.network
                && let Err(e) = n.firewall.remove()
            {
                tracing::warn!(error = %e, "firewall table left behind");
            }
        }
    }

    /// Changes `ttl`, `hard_ttl`, `auto_resume`, `metadata` and `uploads_dir`, under the sandbox's
    /// lock so a concurrent policy change is not lost.
    /// `PUT /sandboxes/{id}`: what the update sets, the rest kept.
    pub async fn update_config(&self, id: &str, new: SandboxUpdateConfig) -> Result<SandboxRow> {
        self.change_config(id, new, "config.network").await
    }

    async fn change_config(
        &self,
        id: &str,
        new: SandboxUpdateConfig,
        network_field: &str,
    ) -> Result<SandboxRow> {
        if let Some(env) = &new.env_vars {
            limits::env_vars("config.env_vars", env)?;
        }
        if let Some(policy) = &new.network {
            parse_policy(policy.clone(), network_field)?;
        }
        let _guard = self.lock(id).await;
        let row = self.row(id).await?;
        let mut config = config_of(&row);
        config.ttl = new.ttl.or(config.ttl);
        config.hard_ttl = new.hard_ttl.or(config.hard_ttl);
        config.auto_resume = new.auto_resume.or(config.auto_resume);
        let bind_now = match (&new.uploads_dir, &config.uploads_dir) {
            (Some(dir), Some(old)) if dir != old => {
                return Err(Error::Conflict(format!(
                    "invalid field `config.uploads_dir`: sandbox {id} has {old} already, which stays"
                )));
            }
            (Some(_), None) => {
                self.refuse_if_held(id, "give it an uploads directory")?;
                row.status == SandboxStatus::Running
            }
            _ => false,
        };
        config.uploads_dir = new.uploads_dir.or(config.uploads_dir);
        if let Some(env) = &new.env_vars {
            config.env_vars = env.clone();
        }
        // Labels merge: a key set replaces its value, an empty value drops it.
        for (k, v) in new.metadata {
            if v.is_empty() {
                config.metadata.remove(&k);
            } else {
                config.metadata.insert(k, v);
            }
        }
        limits::check_config(&config)?;
        if bind_now && let (Some(dir), Some(rt)) = (&config.uploads_dir, self.runtime(id)) {
            // What stands at the path inside the sandbox (a file, say) is
            // the usual reason: the caller's to choose another path.
            self.bind_uploads(id, rt.pid, dir).await.map_err(|e| {
                Error::Conflict(format!(
                    "invalid field `config.uploads_dir`: cannot mount {dir} in sandbox {id}: {e}"
                ))
            })?;
        }
        let policy = match new.network {
            Some(p) => {
                config.network = Some(p);
                Some(policy_of(&self.template(&row.template)?, &config)?)
            }
            None => None,
        };
        let value = serde_json::to_value(&config).map_err(internal)?;
        self.store.set_config(&row.fence(), &value).await?;
        if let (Some(policy), Some(n)) = (policy, &self.network) {
            n.egress
                .set_policy(id, &policy)
                .map_err(|e| Error::Invalid(e.to_string()))?;
        }
        // Processes started from now on (contexts) take the new defaults,
        // in a held runtime too once it is continued.
        if let Some(env) = new.env_vars {
            if let Some(rt) = self
                .runtimes
                .write()
                .expect("lock poisoned: a holder panicked")
                .get_mut(id)
            {
                rt.env = env.clone();
            }
            if let Some(held) = crate::lock(&self.held).get_mut(id) {
                held.runtime.env = env;
            }
        }
        self.row(id).await
    }

    /// The sandboxes whose effective policy binds credential `source`, on
    /// every node (a credential source is the whole installation's).
    pub async fn credential_users(&self, team: &str, source: &str) -> Result<Vec<String>> {
        let mut users = Vec::new();
        for row in self.store.list_sandboxes().await? {
            if row.team_id != team {
                continue;
            }
            let Ok(template) = self.template(&row.template) else {
                continue;
            };
            let Ok(policy) = policy_of(&template, &config_of(&row)) else {
                continue;
            };
            if policy
                .credential_bindings
                .iter()
                .any(|b| b.source_ref == source)
            {
                users.push(row.id);
            }
        }
        Ok(users)
    }

    /// Replaces a sandbox's network policy: stored with its configuration
    /// and, when it runs, enforced for its next connection at once.
    pub async fn set_network(&self, id: &str, policy: serde_json::Value) -> Result<SandboxRow> {
        let new = SandboxUpdateConfig {
            network: Some(policy),
            ..Default::default()
        };
        self.change_config(id, new, "network").await
    }

    /// The policy a sandbox's connections are decided by.
    pub fn effective_policy(&self, row: &SandboxRow) -> Result<sandstone_egress::NetworkPolicy> {
        policy_of(&self.template(&row.template)?, &config_of(row))
    }

    /// Where sandbox `id`'s durable output log is (it may not exist yet).
    pub fn log_dir(&self, id: &str) -> std::path::PathBuf {
        logs::dir(&self.storage.paths(id))
    }

    /// The operator's egress rules (none without networking).
    pub fn operator_rules(&self) -> Option<&sandstone_egress::OperatorRules> {
        self.network.as_ref().map(|n| &n.egress.operator)
    }

    /// Egress counters for /metrics (empty without networking).
    /// The egress counters of the sandboxes `shown` admits.
    pub fn egress_metrics(&self, shown: impl Fn(&str) -> bool) -> String {
        self.network
            .as_ref()
            .map(|n| n.egress.render_metrics(shown))
            .unwrap_or_default()
    }

    /// Bytes sandbox `id` sent and received through the egress proxy in
    /// its current runtime (`None` without networking or when it is not
    /// running): the counters `/metrics` shows, read once.
    pub fn egress_bytes(&self, id: &str) -> Option<(u64, u64)> {
        self.network.as_ref()?.egress.bytes_of(id)
    }

    /// Pre-made sandboxes waiting in the warm pool.
    pub fn warm_count(&self) -> usize {
        self.warm.ready()
    }

    /// Serialises lifecycle operations on one sandbox.
    async fn lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = self
            .locks
            .lock()
            .expect("lock poisoned: a holder panicked")
            .entry(id.to_string())
            .or_default()
            .clone();
        m.lock_owned().await
    }

    /// Records API activity (the `ttl` idle clock restarts).
    pub fn touch(&self, id: &str) {
        self.activity
            .lock()
            .expect("lock poisoned: a holder panicked")
            .insert(id.to_string(), Instant::now());
    }

    pub async fn row(&self, id: &str) -> Result<SandboxRow> {
        self.store
            .get_sandbox(id)
            .await
            .map_err(|_| Error::not_found("sandbox", id))
    }

    /// A free slot, taken round-robin: a slot just freed is reused last,
    /// so what its previous sandbox left behind asynchronously (the host
    /// end of a veth) is long gone.
    fn take_slot(&self) -> Result<i64> {
        let mut slots = self.slots.lock().expect("lock poisoned: a holder panicked");
        let start = self.slot_cursor.load(std::sync::atomic::Ordering::Relaxed);
        let max = self.max_slots();
        let slot = (0..max)
            .map(|i| (start + i) % max)
            .find(|s| !slots.contains(s))
            .ok_or(Error::NoSlot)?;
        slots.insert(slot);
        self.slot_cursor
            .store((slot + 1) % max, std::sync::atomic::Ordering::Relaxed);
        Ok(slot)
    }

    /// The daemon's networking, when this sandbox takes part: the claim's
    /// `network_enabled` wins over the template's.
    fn network_for(&self, template: &Template, config: &SandboxConfig) -> Option<&Network> {
        let wanted = config.network_enabled.unwrap_or(template.network_enabled);
        self.network.as_ref().filter(|_| wanted)
    }

    /// Slots there are: uid ranges, and sandbox subnets when networked.
    fn max_slots(&self) -> i64 {
        match &self.network {
            Some(n) => MAX_SLOTS.min(n.capacity() as i64),
            None => MAX_SLOTS,
        }
    }

    fn free_slot(&self, slot: i64) {
        self.slots
            .lock()
            .expect("lock poisoned: a holder panicked")
            .remove(&slot);
    }

    fn template(&self, id: &str) -> Result<Template> {
        self.storage.template(id).map_err(|e| match e {
            sandstone_volumes::Error::UnknownTemplate(t) => Error::not_found("template", &t),
            other => internal(other),
        })
    }

    /// 507 once the pool is down to its reserve, while writes still
    /// succeed: new sandboxes, resumes and API writes would take what the
    /// running sandboxes (and btrfs's metadata) need.
    pub(crate) fn check_free_space(&self) -> Result<()> {
        let space = self.storage.pool.space().map_err(internal)?;
        if space.free < space.reserve() {
            return Err(Error::NoSpace(format!(
                "storage pool almost full ({} MiB free, {} MiB kept in reserve): free space by deleting sandboxes or snapshots",
                space.free >> 20,
                space.reserve() >> 20
            )));
        }
        Ok(())
    }

    /// The disk cap of a new volume, fitted to the pool where caps hold.
    fn disk_limit(
        &self,
        template: &Template,
        res: Option<&sandstone_api::Resources>,
    ) -> Result<Option<u64>> {
        let max = match self.storage.pool.driver {
            sandstone_volumes::Driver::Btrfs => {
                Some(self.storage.pool.space().map_err(internal)?.max_cap())
            }
            sandstone_volumes::Driver::Dir => None,
        };
        limits::disk(res, template.disk.as_deref(), max)
    }

    /// Starts a runtime generation on an existing volume.
    async fn launch(
        &self,
        id: &str,
        template: &Template,
        config: &SandboxConfig,
        slot: i64,
        memory: Option<&std::path::Path>,
    ) -> Result<Runtime> {
        let limits: Limits = limits::limits(config.resources.as_ref(), template.memory.as_deref())?;
        let paths = self.storage.paths(id);
        let cgroup = self.cgroups.create(id, &limits).map_err(internal)?;
        let network = self.network_for(template, config);
        let started = async {
            fault::check("create.after_cgroup").map_err(internal)?;
            let spec = self.spawn_spec(id, template, config, slot, &cgroup)?;
            let pid = self.spawn_init(spec, memory).await?;
            if let Some(n) = network {
                n.register(slot, id, &policy_of(template, config)?)?;
            }
            Ok(pid)
        }
        .await;
        match started {
            Ok(pid) => Ok(Runtime::new(
                id,
                pid,
                config.env_vars.clone(),
                paths.socket,
                cgroup,
            )),
            Err(e) => {
                tokio::task::block_in_place(|| self.stop_runtime(id, &cgroup));
                Err(e)
            }
        }
    }

    /// What the spawn helper builds sandbox `id` from: the same for every
    /// runtime generation on this node, so a checkpoint of its memory is
    /// restored onto what it was taken from.
    fn spawn_spec(
        &self,
        id: &str,
        template: &Template,
        config: &SandboxConfig,
        slot: i64,
        cgroup: &Cgroup,
    ) -> Result<SpawnSpec> {
        let limits: Limits = limits::limits(config.resources.as_ref(), template.memory.as_deref())?;
        let paths = self.storage.paths(id);
        let network = self.network_for(template, config);
        let uploads = match &config.uploads_dir {
            Some(dir) => Some(uploads::bind(&paths, dir)?),
            None => None,
        };
        let id_base = ID_BASE + slot as u32 * ID_COUNT;
        let logs = match self.log_bytes {
            0 => None,
            max => Some(logs::spec(&paths, id_base, max).map_err(internal)?),
        };
        Ok(SpawnSpec {
            id: id.to_string(),
            hostname: id.to_string(),
            rootfs: paths.rootfs.clone(),
            lower: template.lower.clone(),
            data: paths.data.clone(),
            binds: template
                .binds
                .iter()
                .cloned()
                .chain(network.into_iter().flat_map(|n| n.trust_binds()))
                .chain(uploads)
                .chain(config.mounts.iter().map(|m| self.volume_bind(m)))
                .collect(),
            id_base,
            id_count: ID_COUNT,
            cgroup_procs: cgroup.procs_files(),
            socket: paths.socket.clone(),
            log: paths.log.clone(),
            net: network.map(|n| n.spec(slot)).transpose()?,
            // The image's environment, under the CA bundle's variables.
            env: template
                .env
                .clone()
                .into_iter()
                .chain(network.map(|n| n.trust_env()).unwrap_or_default())
                .collect(),
            workdir: template.working_dir.clone(),
            user: template.user.clone(),
            memory_bytes: limits.memory_bytes,
            lease: self.lease.watch(),
            logs,
        })
    }

    /// Runs the spawn helper for `spec` (or, given a checkpoint of the
    /// sandbox's memory, the restore helper) and waits until PID 1 answers.
    async fn spawn_init(&self, spec: SpawnSpec, memory: Option<&std::path::Path>) -> Result<i32> {
        // The run dir (socket, log, mount points) is root's alone, from its
        // creation on: on a resume too, not only when the volume is made.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&spec.rootfs)
            .map_err(internal)?;
        let socket = spec.socket.clone();
        let init_bin = self.init_bin.clone();
        let restore = match (memory, &self.criu) {
            (Some(dir), Some(criu)) => Some(sandstone_runtime::criu::RestoreSpec {
                spawn: spec.clone(),
                criu: criu.root().to_path_buf(),
                dir: dir.to_path_buf(),
            }),
            _ => None,
        };
        let launched = tokio::task::spawn_blocking(move || match restore {
            Some(r) => sandstone_runtime::launch::restore(&init_bin, &r),
            None => sandstone_runtime::launch(&init_bin, &spec),
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        fault::check("create.after_launch").map_err(internal)?;
        match ping(&socket).await {
            Ok(true) => Ok(launched.pid),
            Ok(false) => Err(Error::internal("sandbox init did not answer ping")),
            Err(e) => Err(Error::InitUnreachable(e)),
        }
    }

    /// Ends a runtime generation: every process, the cgroup, the mounts
    /// (they live only in the sandbox's namespaces) and the run directory.
    /// The volume stays.
    fn stop_runtime(&self, id: &str, cgroup: &Cgroup) {
        if let Some(n) = &self.network {
            n.egress.unregister(id);
        }
        cgroup.kill_all();
        if let Err(e) = cgroup.destroy() {
            tracing::warn!(sandbox = %id, error = %e, "cgroup left behind");
        }
        if let Err(e) = self.storage.remove_run_dir(id) {
            tracing::warn!(sandbox = %id, error = %e, "run dir left behind");
        }
    }

    /// Creates a sandbox of `team` (empty, or from one of its snapshots)
    /// and starts it. On failure nothing is left behind.
    pub async fn create(
        &self,
        template_id: &str,
        config: SandboxConfig,
        snapshot: Option<&str>,
        team: &str,
    ) -> Result<SandboxRow> {
        limits::limits(config.resources.as_ref(), None)?;
        limits::check_config(&config)?;
        // A snapshot's layer only fits the template it was taken on.
        let template_id = match snapshot {
            Some(s) => {
                let snap = self
                    .store
                    .get_snapshot(s)
                    .await
                    .ok()
                    .filter(|snap| snap.team_id == team)
                    .ok_or_else(|| Error::not_found("snapshot", s))?;
                match template_id {
                    "default" | "" => snap.template.clone(),
                    // The snapshot's version of the template it names.
                    t if self.template(t)?.id
                        == sandstone_volumes::template_base(&snap.template) =>
                    {
                        snap.template.clone()
                    }
                    t if snap.template.is_empty() => t.to_string(),
                    t => {
                        return Err(Error::Invalid(format!(
                            "invalid field `template`: snapshot {s} was taken on template {}, not {t}",
                            snap.template
                        )));
                    }
                }
            }
            None => template_id.to_string(),
        };
        let template = self.template(&template_id)?;
        self.create_from(template, config, snapshot, true, team)
            .await
    }

    /// Creates a sandbox of `template` (as resolved, or with a build's
    /// settings over it) and starts it; `warm` lets it take a warm member
    /// (made with the template's own settings).
    pub(super) async fn create_from(
        &self,
        template: Template,
        config: SandboxConfig,
        snapshot: Option<&str>,
        warm: bool,
        team: &str,
    ) -> Result<SandboxRow> {
        policy_of(&template, &config)?;
        let disk = self.disk_limit(&template, config.resources.as_ref())?;
        self.check_free_space()?;
        // Warm members are made with the template's settings: a claim that
        // turns networking off (or on) against them takes the cold path.
        if snapshot.is_none()
            && warm
            && config
                .network_enabled
                .is_none_or(|on| on == template.network_enabled)
            // Warm members have no uploads mount, which only a start adds
            // (volumes are bound into them live).
            && config.uploads_dir.is_none()
            && let Some(member) = self.take_warm(&template.pinned())
        {
            return self.hand_off(member, &template, config, disk, team).await;
        }
        let slot = self.take_slot()?;
        let id = format!("sb-{}", random_hex(8));
        let mut undo = Undo::new(self, &id, slot);
        let mut phases = Phases::start();
        let mut config = config;
        if !config.mounts.is_empty() {
            config.mounts = self
                .reserve_mounts(&id, &config.mounts, team, &template.volume_mounts)
                .await?;
            undo.mounts = true;
        }
        match snapshot {
            Some(s) => self.volume_from_snapshot(s, &id, disk).await?,
            None => tokio::task::block_in_place(|| self.storage.create_sandbox(&id, disk))
                .map(drop)
                .map_err(internal)?,
        }
        undo.volume = true;
        phases.mark("storage");
        fault::check("create.after_storage").map_err(internal)?;
        let runtime = self.launch(&id, &template, &config, slot, None).await?;
        undo.cgroup = Some(runtime.cgroup.clone());
        phases.mark("launch");
        let row = self
            .record_running(&id, &template, &config, slot, runtime, team)
            .await?;
        phases.mark("store");
        tracing::debug!(sandbox = %id, phases = %phases, "create timings");
        undo.disarm();
        Ok(row)
    }

    /// Inserts the row of a new running sandbox and registers its runtime.
    async fn record_running(
        &self,
        id: &str,
        template: &Template,
        config: &SandboxConfig,
        slot: i64,
        runtime: Runtime,
        team: &str,
    ) -> Result<SandboxRow> {
        let now = now_ms();
        let row = SandboxRow {
            id: id.to_string(),
            // Its version: an update of the template leaves it, its
            // snapshots and forks on the files they started with.
            template: template.pinned(),
            status: SandboxStatus::Running,
            config: serde_json::to_value(config).map_err(internal)?,
            slot,
            pid: Some(runtime.pid as i64),
            generation: 1,
            created_at: now,
            updated_at: now,
            pending_op: None,
            status_reason: None,
            node_id: Some(self.node.clone()),
            epoch: 0,
            checkpointed_at: None,
            team_id: team.to_string(),
        };
        self.webhooks
            .remember(id, config.webhook.as_ref())
            .await
            .map_err(internal)?;
        if let Err(e) = self.store.insert_sandbox(&row).await {
            // Nothing of a create that failed is left behind.
            let _ = self.webhooks.forget(id).await;
            return Err(e.into());
        }
        self.adopt_runtime(id, runtime.clone());
        let generation = row.generation;
        self.webhooks
            .emit(&row, Happened::Ready { generation })
            .await;
        self.start_services(id, &runtime, &config.services).await;
        self.start_sessions(id, &runtime).await;
        Ok(row)
    }

    /// Gives a warm-pool member to a claim: its limits become the claim's.
    async fn hand_off(
        &self,
        m: warm::Member,
        template: &Template,
        config: SandboxConfig,
        disk: Option<u64>,
        team: &str,
    ) -> Result<SandboxRow> {
        let mut undo = Undo::new(self, &m.id, m.slot);
        undo.volume = true;
        undo.cgroup = Some(m.runtime.cgroup.clone());
        let limits = limits::limits(config.resources.as_ref(), template.memory.as_deref())?;
        self.cgroups
            .apply(&m.runtime.cgroup, &limits)
            .map_err(internal)?;
        // Its tmpfs mounts were sized for the default memory limit warm
        // members are made with: only another limit needs a remount (a
        // process spawn, so not on the common path).
        if limits.memory_bytes != limits::limits(None, template.memory.as_deref())?.memory_bytes {
            let (init_bin, pid, memory) =
                (self.init_bin.clone(), m.runtime.pid, limits.memory_bytes);
            tokio::task::spawn_blocking(move || {
                sandstone_runtime::launch::resize_tmpfs(&init_bin, pid, memory)
            })
            .await
            .map_err(internal)?
            .map_err(internal)?;
        }
        if let Some(n) = self.network_for(template, &config) {
            n.register(m.slot, &m.id, &policy_of(template, &config)?)?;
        }
        self.storage.set_disk_limit(&m.id, disk).map_err(internal)?;
        let mut config = config;
        if !config.mounts.is_empty() {
            config.mounts = self
                .reserve_mounts(&m.id, &config.mounts, team, &template.volume_mounts)
                .await?;
            undo.mounts = true;
            // Into the running member, as its next starts bind them.
            let binds: Vec<_> = config.mounts.iter().map(|b| self.volume_bind(b)).collect();
            let (init_bin, pid) = (self.init_bin.clone(), m.runtime.pid);
            tokio::task::spawn_blocking(move || {
                sandstone_runtime::launch::bind_live(&init_bin, pid, &binds)
            })
            .await
            .map_err(internal)?
            .map_err(internal)?;
        }
        // Made before the claim: the claim's environment is the defaults of
        // what it starts (sessions, services, the shell, contexts).
        let mut runtime = m.runtime;
        runtime.env = config.env_vars.clone();
        let row = self
            .record_running(&m.id, template, &config, m.slot, runtime, team)
            .await?;
        undo.disarm();
        Ok(row)
    }

    /// The runtime of a sandbox about to serve a request: a paused sandbox
    /// with `auto_resume` is resumed first.
    pub async fn ensure_running(&self, id: &str) -> Result<Runtime> {
        if let Some(rt) = self.runtime(id) {
            self.touch(id);
            return Ok(rt);
        }
        let row = self.row(id).await?;
        let auto = config_of(&row).auto_resume.unwrap_or(true);
        if row.status.can_auto_resume() && auto {
            self.resume(id).await?;
            return self
                .runtime(id)
                .ok_or_else(|| Error::Conflict(format!("sandbox {id} stopped while resuming")));
        }
        match (row.status, &row.status_reason) {
            (SandboxStatus::Failed, Some(reason)) => {
                Err(Error::Conflict(format!("sandbox {id} failed: {reason}")))
            }
            (SandboxStatus::Lost, _) => Err(Error::Conflict(lost_message(&row))),
            (status, _) => Err(Error::Conflict(format!("sandbox {id} is {status}"))),
        }
    }

    /// Registers a running runtime: requests reach it, its idle clock
    /// starts, and the death of its init is watched.
    fn adopt_runtime(&self, id: &str, runtime: Runtime) {
        if let Some(fd) = &runtime.init {
            let _ = self
                .init_watch
                .send((id.to_string(), runtime.pid, fd.clone()));
        }
        self.webhooks.watch_files(
            self.store.clone(),
            id.to_string(),
            runtime.socket.path().to_path_buf(),
        );
        self.webhooks.watch_exits(
            self.store.clone(),
            id.to_string(),
            logs::dir(&self.storage.paths(id)),
            runtime.init.clone(),
        );
        self.runtimes
            .write()
            .expect("lock poisoned: a holder panicked")
            .insert(id.to_string(), runtime);
        self.touch(id);
    }

    /// Watches every registered init until the daemon stops: when one
    /// dies, its sandbox is marked failed ([`Lifecycle::init_died`]).
    pub fn spawn_init_watch(self: &Arc<Self>) {
        let Some(mut watched) = self
            .init_watched
            .lock()
            .expect("lock poisoned: a holder panicked")
            .take()
        else {
            return;
        };
        let lc = self.clone();
        tokio::spawn(async move {
            while let Some((id, pid, fd)) = watched.recv().await {
                let lc = lc.clone();
                tokio::spawn(async move {
                    // SAFETY: the AsyncFd owns a reference to the pidfd, which
                    // stays open (and the same descriptor) until the last
                    // reference is dropped.
                    let registered = unsafe {
                        tokio::io::unix::AsyncFd::register_with_interest(
                            fd,
                            tokio::io::Interest::READABLE,
                        )
                    };
                    match registered {
                        Ok(fd) => {
                            let _ = fd.readable().await;
                        }
                        Err(e) => {
                            tracing::warn!(sandbox = %id, error = %e, "cannot watch sandbox init");
                            return;
                        }
                    }
                    lc.init_died(&id, pid).await;
                });
            }
        });
    }

    /// PID 1 of a running sandbox died (killed from the host, or by the
    /// kernel): with it went every process in the sandbox. The runtime is
    /// torn down as a pause does (cgroup, mounts, network) and the sandbox
    /// is marked `failed` with the reason; its files are kept, and `resume`
    /// (or the next call, with auto_resume) starts a new generation on them.
    /// Failed rather than restarted at once: a restart would hide that
    /// every process and REPL state was lost, and would loop if the cause
    /// (say a memory limit init cannot live within) persists; a caller
    /// learns what happened from the status, and still gets the sandbox
    /// back on its next call.
    async fn init_died(&self, id: &str, pid: i32) {
        let _guard = self.lock(id).await;
        // A generation that ended on purpose (pause, delete) or was
        // replaced is not this death.
        if self.runtime(id).is_none_or(|rt| rt.pid != pid) {
            return;
        }
        let cgroup = self.take_cgroup(id);
        let oom = cgroup.oom_kills() > 0;
        tokio::task::block_in_place(|| self.stop_runtime(id, &cgroup));
        self.activity
            .lock()
            .expect("lock poisoned: a holder panicked")
            .remove(id);
        let reason = format!(
            "its init (PID 1) died{}, ending every process in it; its files are kept: resume it to start it again",
            if oom {
                " after the sandbox reached its memory limit"
            } else {
                ""
            }
        );
        tracing::warn!(sandbox = %id, pid, %reason, "sandbox failed");
        let recorded = match self.row(id).await {
            Ok(row) => {
                let failed = self.store.set_failed(&row.fence(), &reason).await;
                self.webhooks.emit(&row, Happened::Killed { reason }).await;
                failed
            }
            Err(_) => Err(sandstone_db::Error::NotFound),
        };
        if let Err(e) = recorded {
            tracing::error!(sandbox = %id, error = %e, "cannot record a failed sandbox");
        }
    }

    /// Forgets a sandbox's runtime; its cgroup (found on disk when the
    /// runtime is not known, e.g. after a crash) is for the caller to stop.
    fn take_cgroup(&self, id: &str) -> Cgroup {
        let known = self
            .runtimes
            .write()
            .expect("lock poisoned: a holder panicked")
            .remove(id)
            .or_else(|| crate::lock(&self.held).remove(id).map(|h| h.runtime));
        known
            .map(|r| r.cgroup)
            .unwrap_or_else(|| self.cgroups.existing(id))
    }

    /// Pauses: ends the runtime generation, keeps identity and files.
    pub async fn pause(&self, id: &str) -> Result<SandboxRow> {
        let _guard = self.lock(id).await;
        let row = self.row(id).await?;
        if row.status == SandboxStatus::Paused {
            return Ok(row);
        }
        let fence = self.begin_pause(&row).await?;
        let cgroup = self.take_cgroup(id);
        tokio::task::block_in_place(|| {
            cgroup.kill_all();
            fault::crash("pause.after_kill");
            self.stop_runtime(id, &cgroup);
        });
        self.finish_pause(&row, &fence).await
    }

    /// The end of a pause whose processes have ended: the files
    /// checkpointed, the row paused, the webhook told.
    async fn finish_pause(
        &self,
        row: &SandboxRow,
        fence: &sandstone_db::Fence,
    ) -> Result<SandboxRow> {
        let id = row.id.as_str();
        self.activity
            .lock()
            .expect("lock poisoned: a holder panicked")
            .remove(id);
        // Before the row says paused: a paused sandbox has a complete
        // checkpoint, so its node's death loses nothing. A failed upload
        // leaves it paused on this node's disk, and says so. The volumes
        // it wrote go too.
        let checkpointed = match self.checkpoint_paused(row).await {
            Ok(()) => {
                self.checkpoint_volumes_of(&config_of(row).mounts, &row.team_id)
                    .await
            }
            failed => failed,
        };
        if checkpointed.is_err() {
            // Its files are newer than any checkpoint: it must not move to
            // another node (drain, takeover) with an older one.
            self.store.set_checkpointed(fence, None).await?;
        }
        self.store
            .set_status(fence, SandboxStatus::Paused, None)
            .await?;
        self.store.set_pending(fence, None).await?;
        self.webhooks.emit(row, Happened::Paused).await;
        checkpointed?;
        self.row(id).await
    }

    /// The start of either pause: a sandbox that can be paused, marked as
    /// being paused (what recovery finishes after a crash).
    async fn begin_pause(&self, row: &SandboxRow) -> Result<sandstone_db::Fence> {
        if !row.status.can_pause() {
            return Err(Error::Conflict(format!(
                "sandbox {} is {}; only a running sandbox can be paused",
                row.id, row.status
            )));
        }
        let fence = row.fence();
        self.store
            .set_pending(&fence, Some(PendingOp::Pause))
            .await?;
        Ok(fence)
    }

    /// The start of a pause with memory: [`Lifecycle::begin_pause`], and
    /// the runtime taken out of `runtimes`, so no request reaches it.
    async fn begin_memory_pause(&self, row: &SandboxRow) -> Result<(sandstone_db::Fence, Runtime)> {
        let id = row.id.as_str();
        let fence = self.begin_pause(row).await?;
        let taken = self
            .runtimes
            .write()
            .expect("lock poisoned: a holder panicked")
            .remove(id);
        match taken {
            Some(rt) => Ok((fence, rt)),
            None => {
                self.store.set_pending(&fence, None).await?;
                Err(Error::Conflict(format!(
                    "sandbox {id} has no runtime on this node to keep"
                )))
            }
        }
    }

    /// Pauses keeping the processes with their memory: written to disk
    /// where this node has CRIU ([`Lifecycle::pause_to_disk`]), else frozen
    /// in place (the cgroup freezer), out of reach of requests; the next
    /// resume continues them in the same runtime generation. Frozen, the
    /// memory stays resident on this node, so such a sandbox does not move
    /// to another one (a drain leaves it; a node that takes it over resumes
    /// its files only). A failure part-way leaves it running.
    pub async fn pause_with_memory(&self, id: &str) -> Result<(SandboxRow, MemoryKept)> {
        let _guard = self.lock(id).await;
        let row = self.row(id).await?;
        if row.status == SandboxStatus::Paused {
            if crate::lock(&self.held).contains_key(id) {
                return Ok((row, MemoryKept::Frozen));
            }
            if self.memory_on_disk(id) {
                return Ok((row, MemoryKept::Disk));
            }
            return Err(Error::Conflict(format!(
                "sandbox {id} is paused already, without its memory"
            )));
        }
        if let Some(criu) = &self.criu {
            return Ok((self.pause_to_disk(criu, row).await?, MemoryKept::Disk));
        }
        let (fence, rt) = self.begin_memory_pause(&row).await?;
        // As a plain pause does: checkpointed before the row says paused,
        // so no node takes it over from an older checkpoint meanwhile.
        let frozen = tokio::task::block_in_place(|| rt.cgroup.set_frozen(true));
        let mut checkpointed = Ok(());
        if frozen.is_ok() {
            checkpointed = match self.checkpoint_paused(&row).await {
                Ok(()) => {
                    self.checkpoint_volumes_of(&config_of(&row).mounts, &row.team_id)
                        .await
                }
                failed => failed,
            };
            if checkpointed.is_err() {
                self.store.set_checkpointed(&fence, None).await?;
            }
        }
        let recorded = match frozen {
            Ok(()) => self
                .store
                .set_status(&fence, SandboxStatus::Paused, Some(rt.pid as i64))
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("freeze: {e}")),
        };
        if let Err(e) = recorded {
            // It runs on, as it was.
            let _ = tokio::task::block_in_place(|| rt.cgroup.set_frozen(false));
            self.runtimes
                .write()
                .expect("lock poisoned: a holder panicked")
                .insert(id.to_string(), rt);
            self.store.set_pending(&fence, None).await?;
            return Err(internal(format!("pause {id} with its memory: {e}")));
        }
        let held = Held {
            runtime: rt,
            watched: true,
        };
        crate::lock(&self.held).insert(id.to_string(), held);
        self.activity
            .lock()
            .expect("lock poisoned: a holder panicked")
            .remove(id);
        self.store.set_pending(&fence, None).await?;
        self.webhooks.emit(&row, Happened::Paused).await;
        checkpointed?;
        Ok((self.row(id).await?, MemoryKept::Frozen))
    }

    /// Pauses writing the processes with their memory to disk (CRIU): the
    /// connections to PID 1 are ended (a checkpoint cannot take them), the
    /// processes written out, and what is left torn down as a plain pause
    /// does. Resume brings them back in the same runtime generation. A
    /// failure part-way leaves it running, as it was.
    async fn pause_to_disk(
        &self,
        criu: &sandstone_runtime::criu::Criu,
        row: SandboxRow,
    ) -> Result<SandboxRow> {
        let id = row.id.as_str();
        let template = self.template(&row.template)?;
        let (fence, rt) = self.begin_memory_pause(&row).await?;
        let dir = self.storage.paths(id).memory;
        let dumped = async {
            rt.socket
                .call(&sandstone_init::proto::Request::Quiesce, &[])
                .await
                .map_err(internal)?;
            let spec = self.spawn_spec(id, &template, &config_of(&row), row.slot, &rt.cgroup)?;
            tokio::task::block_in_place(|| {
                self.storage.remove_memory(id).map_err(internal)?;
                std::os::unix::fs::DirBuilderExt::mode(
                    std::fs::DirBuilder::new().recursive(true),
                    0o700,
                )
                .create(&dir)
                .map_err(internal)?;
                sandstone_runtime::criu::dump(criu, rt.pid, &spec, row.generation, &dir)
                    .map_err(internal)
            })
        }
        .await;
        if let Err(e) = dumped {
            if let Err(e) = self.storage.remove_memory(id) {
                tracing::warn!(sandbox = %id, error = %e, "a failed checkpoint left files behind");
            }
            if !init_alive(&rt) {
                // CRIU ended the processes, then something failed: what is
                // left is paused with its files.
                tokio::task::block_in_place(|| self.stop_runtime(id, &rt.cgroup));
                self.finish_pause(&row, &fence).await?;
                return Err(Error::internal(format!(
                    "pause {id} with its memory: {e}; its memory is lost, it is paused with its files"
                )));
            }
            // CRIU lets the processes go on when it fails; the watch of
            // its files ended with the other connections.
            let done = sandstone_init::proto::Request::CheckpointDone;
            if let Err(e) = rt.socket.call(&done, &[]).await {
                tracing::warn!(sandbox = %id, error = %e, "its init is still open to a checkpointer");
            }
            self.webhooks.watch_files(
                self.store.clone(),
                id.to_string(),
                rt.socket.path().to_path_buf(),
            );
            self.runtimes
                .write()
                .expect("lock poisoned: a holder panicked")
                .insert(id.to_string(), rt);
            self.store.set_pending(&fence, None).await?;
            return Err(Error::internal(format!("pause {id} with its memory: {e}")));
        }
        // Its processes ended with the checkpoint; what they stood on goes.
        tokio::task::block_in_place(|| self.stop_runtime(id, &rt.cgroup));
        self.finish_pause(&row, &fence).await
    }

    /// The checkpoint of sandbox `id`'s memory, if one taken in
    /// `generation` is there, moved aside for its restore, so that no later
    /// resume finds it, used or not (one taken in another generation is
    /// stale: it is deleted).
    fn take_memory(&self, id: &str, generation: i64) -> Option<PathBuf> {
        let dir = self.storage.paths(id).memory;
        let image = self
            .criu
            .as_ref()
            .and_then(|_| sandstone_runtime::criu::Image::load(&dir))?;
        let taken = dir.with_extension("restoring");
        let moved = match image.generation == generation {
            true => std::fs::remove_dir_all(&taken)
                .or_else(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Ok(()),
                    _ => Err(e),
                })
                .and_then(|()| std::fs::rename(&dir, &taken))
                .map_err(|e| e.to_string()),
            false => Err(format!(
                "stale: taken in generation {}, the sandbox is in {generation}",
                image.generation
            )),
        };
        match moved {
            Ok(()) => Some(taken),
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "a checkpoint of its memory is not used");
                if let Err(e) = self.storage.remove_memory(id) {
                    tracing::warn!(sandbox = %id, error = %e, "a checkpoint of its memory was left behind");
                }
                None
            }
        }
    }

    /// Whether sandbox `id` has a checkpoint of its memory on this node.
    pub fn memory_on_disk(&self, id: &str) -> bool {
        self.criu.is_some()
            && sandstone_runtime::criu::Image::load(&self.storage.paths(id).memory).is_some()
    }

    /// Whether sandbox `id` is paused with its memory on this node, frozen
    /// or on disk.
    pub fn holds_memory(&self, id: &str) -> bool {
        crate::lock(&self.held).contains_key(id) || self.memory_on_disk(id)
    }

    /// Refuses a change that must reach a sandbox's processes (its
    /// sessions, services, uploads) while they are kept with their memory:
    /// it would be lost, or leave a process behind, when they are
    /// continued.
    pub(super) fn refuse_if_held(&self, id: &str, what: &str) -> Result<()> {
        match self.holds_memory(id) {
            true => Err(Error::Conflict(format!(
                "sandbox {id} is paused with its memory: resume it to {what} (or pause it without its memory)"
            ))),
            false => Ok(()),
        }
    }

    /// Continues a sandbox paused with its memory: thawed, in the same
    /// runtime generation, its services and sessions as they were.
    /// `None` when its init died while it was held (its memory is gone):
    /// what is left of it is stopped, and the caller resumes its files.
    async fn continue_held(&self, row: SandboxRow, held: Held) -> Result<Option<SandboxRow>> {
        let id = row.id.as_str();
        let fence = row.fence();
        let Held {
            runtime: rt,
            watched,
        } = held;
        let put_back = |runtime: Runtime| {
            crate::lock(&self.held).insert(id.to_string(), Held { runtime, watched });
        };
        if let Err(e) = self
            .store
            .set_pending(&fence, Some(PendingOp::Resume))
            .await
        {
            put_back(rt);
            return Err(e.into());
        }
        if let Err(e) = tokio::task::block_in_place(|| rt.cgroup.set_frozen(false)) {
            put_back(rt);
            self.store.set_pending(&fence, None).await?;
            return Err(internal(format!("thaw {id}: {e}")));
        }
        // A frozen init killed meanwhile dies at the thaw (cgroup v1), or
        // died frozen (v2): either way it does not answer.
        if !ping(rt.socket.path()).await.unwrap_or(false) {
            tracing::warn!(sandbox = %id, "its init died while paused with its memory; resumed from its files");
            tokio::task::block_in_place(|| self.stop_runtime(id, &rt.cgroup));
            return Ok(None);
        }
        if let Err(e) = self
            .store
            .set_running(&fence, rt.pid as i64, row.generation)
            .await
        {
            let _ = tokio::task::block_in_place(|| rt.cgroup.set_frozen(true));
            put_back(rt);
            let _ = self.store.set_pending(&fence, None).await;
            return Err(e.into());
        }
        if watched {
            self.runtimes
                .write()
                .expect("lock poisoned: a holder panicked")
                .insert(id.to_string(), rt);
            self.touch(id);
        } else {
            self.adopt_runtime(id, rt);
        }
        let row = self.row(id).await?;
        let generation = row.generation;
        self.webhooks
            .emit(&row, Happened::Resumed { generation })
            .await;
        Ok(Some(row))
    }

    /// Resumes: a new runtime generation on the same volume, or, for one
    /// paused with its memory, the same one continued.
    pub async fn resume(&self, id: &str) -> Result<SandboxRow> {
        let _guard = self.lock(id).await;
        let row = self.row(id).await?;
        if row.status == SandboxStatus::Running {
            return Ok(row);
        }
        let held = match row.status {
            SandboxStatus::Paused => crate::lock(&self.held).remove(id),
            _ => None,
        };
        let row = match held {
            Some(held) => match self.continue_held(row, held).await? {
                Some(continued) => return Ok(continued),
                None => self.row(id).await?,
            },
            None => row,
        };
        if !row.status.can_resume() {
            return Err(Error::Conflict(format!(
                "sandbox {id} is {}; only a paused or failed sandbox can be resumed",
                row.status
            )));
        }
        let template = self.template(&row.template)?;
        self.check_free_space()?;
        // Last paused (or made) on another node: its files come from the
        // object store.
        let disk = self.disk_limit(&template, config_of(&row).resources.as_ref())?;
        self.materialise(&row, disk).await?;
        let fence = row.fence();
        self.store
            .set_pending(&fence, Some(PendingOp::Resume))
            .await?;
        // Paused with its memory written to disk: brought back as it was,
        // in the same generation; if that fails, started afresh on its files.
        let memory = self.take_memory(id, row.generation);
        let mut restored = memory.is_some();
        let config = config_of(&row);
        let mut launched = self
            .launch(id, &template, &config, row.slot, memory.as_deref())
            .await;
        if restored && let Err(e) = &launched {
            tracing::warn!(sandbox = %id, error = %e, "its memory could not be restored; resumed from its files");
            restored = false;
            launched = self.launch(id, &template, &config, row.slot, None).await;
        }
        let runtime = match launched {
            Ok(r) => r,
            Err(e) => {
                // Neither way started: a later resume may try it again.
                if let Some(taken) = &memory {
                    let _ = std::fs::rename(taken, self.storage.paths(id).memory);
                }
                self.store.set_pending(&fence, None).await?;
                return Err(e);
            }
        };
        if let Err(e) = self.storage.remove_memory(id) {
            tracing::warn!(sandbox = %id, error = %e, "a checkpoint of its memory was left behind");
        }
        if restored {
            let done = sandstone_init::proto::Request::CheckpointDone;
            if let Err(e) = runtime.socket.call(&done, &[]).await {
                tracing::warn!(sandbox = %id, error = %e, "its init is still open to a checkpointer");
            }
        }
        fault::crash("resume.after_launch");
        let generation = row.generation + i64::from(!restored);
        if let Err(e) = self
            .store
            .set_running(&fence, runtime.pid as i64, generation)
            .await
        {
            tokio::task::block_in_place(|| self.stop_runtime(id, &runtime.cgroup));
            return Err(e.into());
        }
        self.adopt_runtime(id, runtime.clone());
        // Restored, its services and sessions run already.
        if !restored {
            self.start_services(id, &runtime, &config.services).await;
            self.start_sessions(id, &runtime).await;
        }
        let row = self.row(id).await?;
        let generation = row.generation;
        self.webhooks
            .emit(&row, Happened::Resumed { generation })
            .await;
        Ok(row)
    }

    /// Deletes a sandbox and its volume (snapshots stay); 404 when unknown.
    pub async fn delete(&self, id: &str) -> Result<()> {
        let _guard = self.lock(id).await;
        let row = self.row(id).await?;
        let fence = row.fence();
        self.store
            .set_status(&fence, SandboxStatus::Terminating, None)
            .await?;
        let cgroup = self.take_cgroup(id);
        let removed = tokio::task::block_in_place(|| {
            self.stop_runtime(id, &cgroup);
            self.storage.remove_sandbox(id)
        });
        if let Err(e) = removed {
            self.store
                .set_status(&fence, SandboxStatus::Failed, None)
                .await?;
            return Err(internal(format!("delete {id}: {e}")));
        }
        self.store.delete_sandbox(&fence).await?;
        // Its volumes stay, free for another sandbox, and checkpointed as
        // it left them.
        self.volumes.release_mounts(id).await?;
        let mounts = config_of(&row).mounts;
        if let Err(e) = self.checkpoint_volumes_of(&mounts, &row.team_id).await {
            tracing::warn!(sandbox = %id, error = %e, "its volumes were not checkpointed");
        }
        self.store.delete_audit(id).await?;
        self.store.delete_previews(id).await?;
        self.forget_checkpoints(id).await;
        self.activity
            .lock()
            .expect("lock poisoned: a holder panicked")
            .remove(id);
        self.locks
            .lock()
            .expect("lock poisoned: a holder panicked")
            .remove(id);
        self.free_slot(row.slot);
        self.webhooks.emit(&row, Happened::Deleted).await;
        if let Err(e) = self.webhooks.forget(id).await {
            tracing::warn!(sandbox = %id, error = %e, "webhook secret left behind");
        }
        Ok(())
    }
}

/// What a call to a lost sandbox is told: what happened, and what resuming
/// it costs.
fn lost_message(row: &SandboxRow) -> String {
    let from = match row.checkpointed_at {
        Some(at) => format!(
            "its last checkpoint, taken at {}; what it did after that is gone",
            sandstone_api::timefmt::rfc3339_ms(at)
        ),
        None => "its files, if its node returns (it has no checkpoint)".into(),
    };
    format!(
        "sandbox {} was lost: {}. POST /api/v1/sandboxes/{}/resume starts it from {from}",
        row.id,
        row.status_reason
            .as_deref()
            .unwrap_or("its node's lease ran out"),
        row.id
    )
}

/// Whether the init listening on `socket` answers a ping (`false`: it
/// answered something else).
async fn ping(socket: &std::path::Path) -> std::io::Result<bool> {
    let answer = async {
        let mut conn = initclient::InitConn::connect(socket).await?;
        conn.send(&Request::Ping, &[]).await?;
        loop {
            match conn.recv().await?.0 {
                Response::Pong { .. } => return Ok(true),
                r if r.is_terminal() => return Ok(false),
                _ => continue,
            }
        }
    };
    // An init that accepts but never answers (frozen, wedged) is not
    // alive, and must not hold up whoever asked (a start re-adopting).
    tokio::time::timeout(PING_TIMEOUT, answer)
        .await
        .unwrap_or(Ok(false))
}

/// How long a ping waits for init's answer.
const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A pidfd for a sandbox's init; without one (an old kernel) its death is
/// only noticed when a call fails.
fn open_pidfd(id: &str, pid: i32) -> Option<Arc<std::os::fd::OwnedFd>> {
    match sandstone_sys::process::pidfd_open(sandstone_sys::Pid::from_raw(pid)) {
        Ok(fd) => Some(Arc::new(fd)),
        Err(e) => {
            tracing::warn!(sandbox = %id, pid, error = %e, "cannot watch sandbox init");
            None
        }
    }
}

/// Per-phase durations of an operation, for debug logs.
struct Phases {
    last: Instant,
    done: Vec<(&'static str, f64)>,
}

impl Phases {
    fn start() -> Self {
        Phases {
            last: Instant::now(),
            done: Vec::new(),
        }
    }

    fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.done
            .push((name, (now - self.last).as_secs_f64() * 1000.0));
        self.last = now;
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (name, ms) in &self.done {
            write!(f, "{name}={ms:.2}ms ")?;
        }
        Ok(())
    }
}

/// Rolls back a half-made sandbox unless disarmed.
struct Undo<'a> {
    lc: &'a Lifecycle,
    id: String,
    slot: i64,
    volume: bool,
    /// Its sandbox volumes' mounts are recorded.
    mounts: bool,
    cgroup: Option<Cgroup>,
    armed: bool,
}

impl<'a> Undo<'a> {
    fn new(lc: &'a Lifecycle, id: &str, slot: i64) -> Self {
        Undo {
            lc,
            id: id.to_string(),
            slot,
            volume: false,
            mounts: false,
            cgroup: None,
            armed: true,
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(cg) = &self.cgroup {
            tokio::task::block_in_place(|| self.lc.stop_runtime(&self.id, cg));
        }
        if self.volume
            && let Err(e) = self.lc.storage.remove_sandbox(&self.id)
        {
            tracing::error!(sandbox = %self.id, error = %e, "rollback: files left behind");
        }
        if self.mounts {
            let (volumes, id) = (self.lc.volumes.clone(), self.id.clone());
            tokio::spawn(async move {
                if let Err(e) = volumes.release_mounts(&id).await {
                    tracing::error!(sandbox = %id, error = %e, "rollback: volume mounts left recorded");
                }
            });
        }
        self.lc.free_slot(self.slot);
    }
}
