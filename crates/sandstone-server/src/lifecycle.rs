//! The sandbox lifecycle: create, adopt after a daemon restart, delete.
//! A create that fails part-way undoes every step it made.

use crate::error::{ApiError, ApiResult};
use crate::initclient;
use crate::timefmt::now_ms;
use axum::http::StatusCode;
use sandstone_init::proto::{Request, Response};
use sandstone_runtime::cgroup::{Cgroup, Driver, Limits};
use sandstone_runtime::{SpawnSpec, fault};
use sandstone_storage::Storage;
use sandstone_store::{SandboxRow, Store};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

/// First host uid of slot 0; each sandbox gets 65536 ids.
const ID_BASE: u32 = 1_000_000;
const ID_COUNT: u32 = 65_536;
const MAX_SLOTS: i64 = 60_000;
/// New sandboxes are refused below this much free space in the data dir.
const MIN_FREE_BYTES: u64 = 512 << 20;

/// A running sandbox's runtime handles.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub socket: PathBuf,
    pub cgroup: Cgroup,
}

pub struct Lifecycle {
    pub store: Arc<dyn Store>,
    pub storage: Storage,
    cgroups: Driver,
    init_bin: PathBuf,
    runtimes: RwLock<HashMap<String, Runtime>>,
    slots: Mutex<HashSet<i64>>,
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf));
    hex::encode(buf)
}

fn free_bytes(path: &std::path::Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap_or_default();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return u64::MAX;
    }
    st.f_bavail * st.f_frsize
}

impl Lifecycle {
    pub async fn new(
        store: Arc<dyn Store>,
        storage: Storage,
        init_bin: PathBuf,
        cgroup_group: &str,
    ) -> anyhow::Result<Lifecycle> {
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
        let slots = store.used_slots().await?.into_iter().collect();
        Ok(Lifecycle {
            store,
            storage,
            cgroups,
            init_bin,
            runtimes: RwLock::new(HashMap::new()),
            slots: Mutex::new(slots),
        })
    }

    pub fn runtime(&self, id: &str) -> Option<Runtime> {
        self.runtimes.read().unwrap().get(id).cloned()
    }

    pub fn running_count(&self) -> usize {
        self.runtimes.read().unwrap().len()
    }

    fn take_slot(&self) -> ApiResult<i64> {
        let mut slots = self.slots.lock().unwrap();
        let slot = (0..MAX_SLOTS).find(|s| !slots.contains(s)).ok_or_else(|| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "capacity",
                "no free sandbox slot",
            )
        })?;
        slots.insert(slot);
        Ok(slot)
    }

    fn free_slot(&self, slot: i64) {
        self.slots.lock().unwrap().remove(&slot);
    }

    /// Creates and starts a sandbox; on failure nothing is left behind.
    pub async fn create(
        &self,
        template_id: &str,
        limits: Limits,
        config: serde_json::Value,
    ) -> ApiResult<SandboxRow> {
        let template = self.storage.template(template_id).map_err(|e| match e {
            sandstone_storage::Error::UnknownTemplate(t) => ApiError::not_found("template", &t),
            other => ApiError::internal(other.to_string()),
        })?;
        let data_dir = self.storage.paths("x").upper;
        let free = free_bytes(
            data_dir
                .parent()
                .and_then(|p| p.parent())
                .unwrap_or(&data_dir),
        );
        if free < MIN_FREE_BYTES {
            return Err(ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "no_space",
                format!(
                    "host disk almost full ({} MiB free): refusing new sandboxes",
                    free >> 20
                ),
            ));
        }
        let slot = self.take_slot()?;
        let id = format!("sb-{}", random_hex(8));
        let id_base = ID_BASE + slot as u32 * ID_COUNT;
        let mut undo = Undo::new(self, &id, slot);
        let mut phases = Phases::start();
        let paths = self
            .storage
            .create_sandbox(&id)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        undo.storage = true;
        phases.mark("storage");
        fault::check("create.after_storage").map_err(|e| ApiError::internal(e.to_string()))?;
        let cgroup = self
            .cgroups
            .create(&id, &limits)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        undo.cgroup = Some(cgroup.clone());
        phases.mark("cgroup");
        fault::check("create.after_cgroup").map_err(|e| ApiError::internal(e.to_string()))?;
        let binds = template.binds.clone();
        let spec = SpawnSpec {
            id: id.clone(),
            hostname: id.clone(),
            rootfs: paths.rootfs.clone(),
            lower: template.lower.clone(),
            data: paths.data.clone(),
            binds,
            id_base,
            id_count: ID_COUNT,
            cgroup_procs: cgroup.procs_files(),
            socket: paths.socket.clone(),
            log: paths.log.clone(),
        };
        let init_bin = self.init_bin.clone();
        let launched =
            tokio::task::spawn_blocking(move || sandstone_runtime::launch(&init_bin, &spec))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
                .map_err(|e| ApiError::internal(e.to_string()))?;
        phases.mark("launch");
        fault::check("create.after_launch").map_err(|e| ApiError::internal(e.to_string()))?;
        let runtime = Runtime {
            socket: paths.socket.clone(),
            cgroup,
        };
        let (pong, _) = initclient::call(&runtime.socket, &Request::Ping, &[]).await?;
        if !matches!(pong, Response::Pong { .. }) {
            return Err(ApiError::internal("sandbox init did not answer ping"));
        }
        let now = now_ms();
        let row = SandboxRow {
            id: id.clone(),
            template: template.id.clone(),
            status: "running".into(),
            config,
            slot,
            pid: Some(launched.pid as i64),
            generation: 1,
            created_at: now,
            updated_at: now,
        };
        phases.mark("ping");
        self.store.insert_sandbox(&row).await?;
        phases.mark("store");
        tracing::debug!(sandbox = %id, phases = %phases, "create timings");
        self.runtimes.write().unwrap().insert(id, runtime);
        undo.disarm();
        Ok(row)
    }

    /// Stops a sandbox's processes and removes its cgroup and files.
    fn teardown(&self, id: &str, cgroup: &Cgroup) -> Result<(), String> {
        cgroup.kill_all();
        cgroup.destroy().map_err(|e| e.to_string())?;
        self.storage.remove_sandbox(id).map_err(|e| e.to_string())
    }

    /// Deletes a sandbox; deleting an unknown one is a 404.
    pub async fn delete(&self, id: &str) -> ApiResult<()> {
        let row = self
            .store
            .get_sandbox(id)
            .await
            .map_err(|_| ApiError::not_found("sandbox", id))?;
        let _ = self.store.set_status(id, "terminating", row.pid).await;
        let cgroup = self
            .runtimes
            .write()
            .unwrap()
            .remove(id)
            .map(|r| r.cgroup)
            .unwrap_or_else(|| self.cgroups.existing(id));
        let storage_id = id.to_string();
        let this_cg = cgroup.clone();
        let result = tokio::task::block_in_place(|| self.teardown(&storage_id, &this_cg));
        if let Err(e) = result {
            let _ = self.store.set_status(id, "failed", None).await;
            return Err(ApiError::internal(format!("delete {id}: {e}")));
        }
        self.store.delete_sandbox(id).await?;
        self.free_slot(row.slot);
        Ok(())
    }

    /// Re-adopts sandboxes that kept running while the daemon was down;
    /// those whose init is gone are marked failed.
    pub async fn adopt(&self) -> anyhow::Result<()> {
        for row in self.store.list_sandboxes().await? {
            if row.status != "running" {
                continue;
            }
            let paths = self.storage.paths(&row.id);
            let alive = matches!(
                initclient::call(&paths.socket, &Request::Ping, &[]).await,
                Ok((Response::Pong { .. }, _))
            );
            if alive {
                let runtime = Runtime {
                    socket: paths.socket,
                    cgroup: self.cgroups.existing(&row.id),
                };
                self.runtimes
                    .write()
                    .unwrap()
                    .insert(row.id.clone(), runtime);
                tracing::info!(sandbox = %row.id, "re-adopted running sandbox");
            } else {
                let cg = self.cgroups.existing(&row.id);
                cg.kill_all();
                let _ = cg.destroy();
                self.store.set_status(&row.id, "failed", None).await?;
                tracing::warn!(sandbox = %row.id, "sandbox init gone after restart; marked failed");
            }
        }
        Ok(())
    }
}

/// Per-phase durations of an operation, for debug logs.
struct Phases {
    last: std::time::Instant,
    done: Vec<(&'static str, f64)>,
}

impl Phases {
    fn start() -> Self {
        Phases {
            last: std::time::Instant::now(),
            done: Vec::new(),
        }
    }

    fn mark(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
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

/// Rolls back a half-made create unless disarmed.
struct Undo<'a> {
    lc: &'a Lifecycle,
    id: String,
    slot: i64,
    storage: bool,
    cgroup: Option<Cgroup>,
    armed: bool,
}

impl<'a> Undo<'a> {
    fn new(lc: &'a Lifecycle, id: &str, slot: i64) -> Self {
        Undo {
            lc,
            id: id.to_string(),
            slot,
            storage: false,
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
            cg.kill_all();
            if let Err(e) = cg.destroy() {
                tracing::error!(sandbox = %self.id, error = %e, "rollback: cgroup left behind");
            }
        }
        if self.storage
            && let Err(e) = self.lc.storage.remove_sandbox(&self.id)
        {
            tracing::error!(sandbox = %self.id, error = %e, "rollback: files left behind");
        }
        self.lc.free_slot(self.slot);
    }
}
