//! Volumes and templates on disk: the layout of templates, sandboxes'
//! volumes and snapshots, the btrfs (or plain directory) pool they live in,
//! and the builders of the built-in templates. Metadata about them lives in
//! `sandstone-db`.
//!
//! ```text
//! <data>/templates/<id>/rootfs       template lower layer
//! <data>/templates/<id>/image.json   or: a template made from an image
//! <data>/templates/<id>@<n>/         its version n, kept after an update
//!                                    while sandboxes made from it live
//! <data>/layers/<diff id>/           one image layer, shared by templates
//! <data>/templates/<id>/sandbox.json or: captured from a sandbox
//! <data>/templates/<id>/build.json   or: built from a Sandstonefile
//! <data>/templates/cache-<key>/      a build step's result (captured)
//! <pool>/captures/<id>/              a captured template's volume
//! <pool>/sandboxes/<id>/upper        writable rootfs layer (durable)
//! <pool>/sandboxes/<id>/work         overlay work dir
//! <pool>/sandboxes/<id>/workspace    /workspace (durable)
//! <pool>/snapshots/<snapshot id>/    read-only copy of a sandbox's volume
//! <pool>/sandboxes/<id>.retained/   a volume kept after its sandbox moved
//!                                    to another node (see `retain_sandbox`)
//! <data>/run/<id>/                   runtime only: mount points, socket, log
//! ```
//!
//! `<pool>` is the btrfs pool (see [`pool`]) or, with the `dir` driver, the
//! data directory itself.

mod btrfs;
mod debian_template;
mod file_template;
mod host_template;
mod image_template;
pub mod pool;
mod sandbox_template;
mod sandbox_volume;

pub use debian_template::BuiltTemplate;
pub use file_template::FileTemplate;
pub use image_template::{ImageTemplate, Imported, Pulled, Source, check_id};
pub use pool::{Driver, Pool, Space};
pub use sandbox_template::SandboxTemplate;
pub use sandbox_volume::Owner;

use sandstone_runtime::BindMount;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("template {0} not found")]
    UnknownTemplate(String),
    #[error(
        "invalid template id {0:?}: expected 1 to 64 of a-z, 0-9, '.', '_' and '-', starting \
         with a letter or digit"
    )]
    InvalidTemplateId(String),
    #[error("template {0} exists already")]
    TemplateExists(String),
    #[error("template {0} is built in, not imported from an image: it cannot be deleted")]
    NotAnImageTemplate(String),
    #[error(transparent)]
    Image(#[from] sandstone_oci::Error),
    /// The image's `User` names no one its files know.
    #[error("{0}")]
    UnknownUser(String),
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// A mode [`secure_data_dir`] tightened, for the caller to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tightened {
    pub path: PathBuf,
    pub from: u32,
    pub to: u32,
}

/// Creates the data directory owner-only (0700) and takes group and other
/// bits off it and off everything directly in it: the database and its
/// WAL/SHM hold claims' environment variables, sessions and audit records,
/// beside the keys, the admin token, logs and the raw pool image. Returns
/// what was loose, so that each start reports (and fixes) a change made
/// behind its back.
pub fn secure_data_dir(dir: &Path) -> Result<Vec<Tightened>> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("create {parent:?}")))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(io(format!("create {dir:?}"))(e));
        }
        _ => {}
    }
    let entries = std::fs::read_dir(dir).map_err(io(format!("read {dir:?}")))?;
    let mut fixed = Vec::new();
    let paths = std::iter::once(Ok(dir.to_path_buf())).chain(entries.map(|e| e.map(|e| e.path())));
    for path in paths {
        let path = path.map_err(io(format!("read {dir:?}")))?;
        let meta = std::fs::symlink_metadata(&path).map_err(io(format!("stat {path:?}")))?;
        let from = meta.permissions().mode() & 0o7777;
        if meta.file_type().is_symlink() || from & 0o077 == 0 {
            continue;
        }
        let to = from & !0o077;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(to))
            .map_err(io(format!("chmod {path:?}")))?;
        fixed.push(Tightened { path, from, to });
    }
    Ok(fixed)
}

/// Where a template comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateKind {
    /// `host`, or one `sandstone setup` debootstraps.
    BuiltIn,
    /// Made from an OCI image (imported or pulled); has versions.
    Image,
    /// Captured from a sandbox.
    Captured,
    /// Built from a Sandstonefile; has versions.
    Built,
    /// One step of a build, kept so an unchanged step is not run again;
    /// not listed.
    BuildCache,
}

impl TemplateKind {
    /// Whether updates make new versions of it (kept while pinned).
    pub fn versioned(self) -> bool {
        matches!(self, TemplateKind::Image | TemplateKind::Built)
    }
}

/// The id prefix of [`TemplateKind::BuildCache`] templates, which user
/// ids may not take ([`check_id`]).
pub const BUILD_CACHE_PREFIX: &str = "cache-";

/// A template: what becomes the sandbox's read-only root.
#[derive(Debug, Clone)]
pub struct Template {
    pub id: String,
    pub kind: TemplateKind,
    pub description: String,
    pub lower: Vec<PathBuf>,
    pub binds: Vec<BindMount>,
    /// Defaults for its sandboxes from the optional
    /// `<templates>/<id>/template.json`: a disk cap (`"disk": "20Gi"`) and a
    /// network policy (`"network": {...}`) that claims merge over.
    pub disk: Option<String>,
    /// Its sandboxes' memory limit when a claim sets none (`"memory":
    /// "4Gi"`).
    pub memory: Option<String>,
    pub network: Option<serde_json::Value>,
    /// `"network_enabled": false` in `template.json`: its sandboxes get
    /// only loopback unless a claim asks otherwise.
    pub network_enabled: bool,
    pub display_name: Option<String>,
    pub tags: Vec<String>,
    /// Warm sandboxes kept for it; `None`: the daemon's default.
    pub warm: Option<u32>,
    pub warm_max: Option<u32>,
    /// Where its sandboxes take sandbox volumes (any path when empty).
    pub volume_mounts: Vec<sandstone_api::volumes::VolumeMountSpec>,
    /// The base environment of its sandboxes' processes (an image's
    /// `Env`); the claim's `env_vars` go over it.
    pub env: std::collections::BTreeMap<String, String>,
    /// The image reference it was pulled by.
    pub image: Option<String>,
    /// Where its processes start (an image's `WorkingDir`).
    pub working_dir: Option<String>,
    /// Whom its processes run as (an image's `User`).
    pub user: Option<String>,
    /// For a template captured from a sandbox, the template below it
    /// (pinned: see [`Template::pinned`]).
    pub parent: Option<String>,
    /// The version of a template made from an image: 1 when made, one more
    /// with each update. Built-in and captured templates have none.
    pub version: Option<u32>,
    /// An earlier version, kept while sandboxes, snapshots or captured
    /// templates made from it use it; not listed.
    pub retained: bool,
}

/// A template's optional settings file, `<templates>/<id>/template.json`.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    /// The memory limit of its sandboxes when a claim sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Warm sandboxes kept for it, instead of the daemon's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm: Option<u32>,
    /// The most it may keep (Sandbox0's `maxIdle`; shown, since one
    /// refill at a time never overshoots `warm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_max: Option<u32>,
    /// Where its sandboxes take sandbox volumes (any path when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<sandstone_api::volumes::VolumeMountSpec>,
}

impl Template {
    /// A template whose defaults come from the settings file in `dir`; a
    /// file that cannot be parsed is an error, never silently ignored.
    fn with_settings(
        id: &str,
        description: &str,
        lower: Vec<PathBuf>,
        binds: Vec<BindMount>,
        dir: &Path,
    ) -> Result<Template> {
        let file = dir.join("template.json");
        let settings: TemplateSettings = match std::fs::read_to_string(&file) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| Error::Io {
                what: format!("read {}", file.display()),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => TemplateSettings::default(),
            Err(e) => return Err(io(format!("read {}", file.display()))(e)),
        };
        Ok(Template {
            id: id.into(),
            kind: TemplateKind::BuiltIn,
            description: description.into(),
            lower,
            binds,
            disk: settings.disk,
            memory: settings.memory,
            network: settings.network,
            network_enabled: settings.network_enabled.unwrap_or(true),
            display_name: settings.display_name,
            tags: settings.tags,
            warm: settings.warm,
            warm_max: settings.warm_max,
            volume_mounts: settings.volume_mounts,
            env: Default::default(),
            image: None,
            working_dir: None,
            user: None,
            parent: None,
            version: None,
            retained: false,
        })
    }

    /// The id that names this very version (`<id>@<version>`; the plain
    /// id for a template without versions): what a sandbox records, so
    /// that it, its snapshots and forks keep their files when the
    /// template is updated.
    pub fn pinned(&self) -> String {
        match self.version {
            Some(v) => format!("{}@{v}", self.id),
            None => self.id.clone(),
        }
    }
}

/// The template id of a pinned id (`"py@2"` is a version of `"py"`).
pub fn template_base(pinned: &str) -> &str {
    pinned.split_once('@').map_or(pinned, |(base, _)| base)
}

/// Paths of one sandbox.
#[derive(Debug, Clone)]
pub struct SandboxPaths {
    /// The durable directory holding `upper`, `work` and `workspace`.
    pub data: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub workspace: PathBuf,
    pub rootfs: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    /// A checkpoint of its processes with their memory, while it is
    /// paused with them (`sandstone_runtime::criu`).
    pub memory: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
    pub pool: Pool,
    /// Held by image imports and removals: one at a time.
    images: std::sync::Arc<std::sync::Mutex<()>>,
}

pub(crate) const RESTORING: &str = ".restoring";
const REPLACED: &str = ".replaced";
/// Where a pool keeps one kind of volume, by id.
type VolumeDir = fn(&Pool, &str) -> PathBuf;

/// Suffix of a volume set aside ([`Storage::retain_sandbox`]); beside the
/// live volumes, so that taking it back is a rename.
const RETAINED: &str = ".retained";

impl Storage {
    /// Opens the data directory. `driver` forces a pool driver; `None`
    /// takes btrfs when a pool exists and `dir` otherwise.
    pub fn open(data_dir: &Path, driver: Option<Driver>) -> Result<Storage> {
        // Layers are stored unshifted: a setuid file a sandbox creates is
        // owned by host root on disk. Only host root may traverse to them.
        for d in ["templates", "layers", "run", "registry", "volume-files"] {
            let dir = data_dir.join(d);
            std::fs::create_dir_all(&dir).map_err(io(format!("create {d} dir")))?;
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(io(format!("chmod {d} dir")))?;
        }
        let pool = Pool::open(data_dir, driver)?;
        let storage = Storage {
            root: data_dir.to_path_buf(),
            pool,
            images: Default::default(),
        };
        storage.finish_restores();
        Ok(storage)
    }

    /// Where the daemon's own registry keeps what is pushed to it.
    pub fn registry_dir(&self) -> PathBuf {
        self.root.join("registry")
    }

    fn built_rootfs(&self, t: BuiltTemplate) -> PathBuf {
        self.root.join("templates").join(t.id()).join("rootfs")
    }

    /// The directory of built template `t` (its `rootfs/` and optional
    /// `template.json`), links resolved; `None` when it is not built here.
    pub fn built_dir(&self, t: BuiltTemplate) -> Option<PathBuf> {
        if !self.has_built(t) {
            return None;
        }
        std::fs::canonicalize(self.root.join("templates").join(t.id())).ok()
    }

    /// Where a template fetched from elsewhere is assembled before
    /// [`Storage::install_template`] puts it in place: beside the templates,
    /// on their file system, emptied of any earlier try.
    pub fn template_staging(&self, t: BuiltTemplate) -> Result<PathBuf> {
        let dir = self
            .root
            .join("templates")
            .join(format!(".fetch-{}", t.id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(format!("remove {}", dir.display())))?;
        }
        Ok(dir)
    }

    /// Puts a fetched template (assembled in `staged`) in place as `t`, in
    /// one rename, unless a template `t` was built meanwhile: `false` then,
    /// and `staged` is removed.
    pub fn install_template(&self, t: BuiltTemplate, staged: &Path) -> Result<bool> {
        let dest = self.root.join("templates").join(t.id());
        if self.has_built(t) {
            std::fs::remove_dir_all(staged).map_err(io(format!("remove {}", staged.display())))?;
            return Ok(false);
        }
        if dest.exists() {
            // A build that never finished (no rootfs/bin/bash): the fetched
            // copy replaces it.
            std::fs::remove_dir_all(&dest).map_err(io(format!("remove {}", dest.display())))?;
        }
        std::fs::rename(staged, &dest).map_err(io(format!(
            "rename {} to {}",
            staged.display(),
            dest.display()
        )))?;
        Ok(true)
    }

    /// Whether a debootstrapped template has been built.
    pub fn has_built(&self, t: BuiltTemplate) -> bool {
        self.built_rootfs(t).join("bin/bash").exists()
    }

    /// Builds a debootstrapped template (once; cached), calling `progress`
    /// with each line debootstrap prints.
    pub fn build_template(
        &self,
        t: BuiltTemplate,
        mirror: Option<&str>,
        progress: impl FnMut(&str),
    ) -> Result<()> {
        if self.has_built(t) {
            return Ok(());
        }
        debian_template::build(
            &self.root.join("templates").join(t.id()),
            t.packages(),
            mirror,
            progress,
        )
    }

    /// Templates available on this host (`host` always; the debootstrapped
    /// ones once built; those imported from images; those captured from
    /// sandboxes), current versions only.
    pub fn templates(&self) -> Result<Vec<Template>> {
        let mut v = self.all_templates()?;
        v.retain(|t| !t.retained && t.kind != TemplateKind::BuildCache);
        Ok(v)
    }

    /// Every template, earlier versions still kept and the build cache
    /// included.
    pub fn all_templates(&self) -> Result<Vec<Template>> {
        let mut v = vec![host_template::ensure(&self.root.join("templates/host"))?];
        for t in BuiltTemplate::ALL {
            if self.has_built(t) {
                v.push(Template::with_settings(
                    t.id(),
                    t.description(),
                    vec![self.built_rootfs(t)],
                    vec![],
                    &self.root.join("templates").join(t.id()),
                )?);
            }
        }
        v.extend(self.image_templates()?);
        let captured = self.sandbox_templates(&v)?;
        v.extend(captured);
        Ok(v)
    }

    /// Resolves a template id: a pinned id (`py@2`) is that version, kept
    /// or current; a plain one the current version. `default` is the
    /// built `default` template, else `debian` when built, else `host`.
    pub fn template(&self, id: &str) -> Result<Template> {
        let all = self.all_templates()?;
        if id.contains('@') {
            return all
                .into_iter()
                .find(|t| t.pinned() == id)
                .ok_or_else(|| Error::UnknownTemplate(id.to_string()));
        }
        let want = match id {
            "" => "default",
            other => other,
        };
        let current = |t: &&Template| !t.retained;
        let has = |id: &str| all.iter().filter(current).any(|t| t.id == id);
        let pick = match want {
            "default" => ["default", "debian", "host"].into_iter().find(|f| has(f)),
            other => has(other).then_some(other),
        }
        .map(str::to_string);
        all.iter()
            .filter(current)
            .find(|t| pick.as_deref() == Some(t.id.as_str()))
            .cloned()
            .ok_or_else(|| Error::UnknownTemplate(id.to_string()))
    }

    pub fn paths(&self, id: &str) -> SandboxPaths {
        let dir = self.pool.sandbox_dir(id);
        let run = self.root.join("run").join(id);
        SandboxPaths {
            data: dir.clone(),
            upper: dir.join("upper"),
            work: dir.join("work"),
            workspace: dir.join("workspace"),
            rootfs: run.join("rootfs"),
            socket: run.join("init.sock"),
            log: run.join("init.log"),
            memory: self.root.join("memory").join(id),
        }
    }

    /// Makes the runtime directory (mount point, socket, log) of `id`.
    fn create_run_dir(&self, p: &SandboxPaths) -> Result<()> {
        std::fs::create_dir_all(&p.rootfs).map_err(io("create run dir"))?;
        let run = p.rootfs.parent().expect("rootfs has a parent");
        std::fs::set_permissions(run, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(io("chmod run dir"))
    }

    /// Runs `make` to fill in a new sandbox volume; on failure removes it.
    fn new_volume(
        &self,
        id: &str,
        make: impl FnOnce(&SandboxPaths) -> Result<()>,
    ) -> Result<SandboxPaths> {
        let p = self.paths(id);
        let made = make(&p).and_then(|()| self.create_run_dir(&p));
        if let Err(e) = made {
            let _ = self.remove_sandbox(id);
            return Err(e);
        }
        Ok(p)
    }

    /// Creates an empty sandbox volume (capped at `limit` bytes where the
    /// pool supports caps). Stored unshifted, like the template: root inside
    /// is uid 0 on disk once id-mapped.
    pub fn create_sandbox(&self, id: &str, limit: Option<u64>) -> Result<SandboxPaths> {
        self.new_volume(id, |p| {
            self.pool.create_volume(&p.data, limit)?;
            for d in [&p.upper, &p.work, &p.workspace] {
                std::fs::create_dir(d).map_err(io(format!("create {d:?}")))?;
            }
            Ok(())
        })
    }

    /// Changes the disk cap of sandbox `id` (no-op without caps).
    pub fn set_disk_limit(&self, id: &str, limit: Option<u64>) -> Result<()> {
        self.pool.set_limit(&self.pool.sandbox_dir(id), limit)
    }

    /// A new sandbox volume sharing `src`'s data copy-on-write.
    pub fn fork_sandbox(&self, src: &str, id: &str, limit: Option<u64>) -> Result<SandboxPaths> {
        let from = self.pool.sandbox_dir(src);
        self.new_volume(id, |p| self.pool.copy_volume(&from, &p.data, false, limit))
    }

    /// A new sandbox volume from snapshot `snap`.
    pub fn sandbox_from_snapshot(
        &self,
        snap: &str,
        id: &str,
        limit: Option<u64>,
    ) -> Result<SandboxPaths> {
        let from = self.pool.snapshot_dir(snap);
        if !from.exists() {
            return Err(io(format!("snapshot {snap}"))(std::io::Error::from(
                std::io::ErrorKind::NotFound,
            )));
        }
        self.new_volume(id, |p| self.pool.copy_volume(&from, &p.data, false, limit))
    }

    /// A read-only snapshot of sandbox `id`'s volume.
    pub fn snapshot_sandbox(&self, id: &str, snap: &str) -> Result<()> {
        self.pool.copy_volume(
            &self.pool.sandbox_dir(id),
            &self.pool.snapshot_dir(snap),
            true,
            None,
        )
    }

    pub fn remove_snapshot(&self, snap: &str) -> Result<()> {
        self.pool.remove_volume(&self.pool.snapshot_dir(snap))
    }

    /// Replaces sandbox `id`'s volume with a writable copy of snapshot
    /// `snap`. The old volume is swapped out by rename and removed only
    /// after the new one is in place; [`Storage::open`] completes or undoes
    /// a swap a crash interrupted.
    pub fn restore_sandbox(&self, id: &str, snap: &str, limit: Option<u64>) -> Result<()> {
        let staged = self.restore_staging(id);
        self.pool.remove_volume(&staged)?;
        self.pool
            .copy_volume(&self.pool.snapshot_dir(snap), &staged, false, limit)?;
        self.swap_in_restore(id)
    }

    /// Where a restore of sandbox `id` is made before it replaces the
    /// volume ([`Storage::stage_restore`], [`Storage::swap_in_restore`]).
    pub fn restore_staging(&self, id: &str) -> PathBuf {
        self.pool.sandbox_dir(&format!("{id}{RESTORING}"))
    }

    /// A new, empty volume at [`Storage::restore_staging`] for a restore
    /// filled by the caller (from an object store) and then swapped in;
    /// [`Storage::discard_restore`] removes it if the fill fails.
    pub fn stage_restore(&self, id: &str, limit: Option<u64>) -> Result<PathBuf> {
        let staged = self.restore_staging(id);
        self.pool.remove_volume(&staged)?;
        self.pool.create_volume(&staged, limit)?;
        Ok(staged)
    }

    pub fn discard_restore(&self, id: &str) -> Result<()> {
        self.pool.remove_volume(&self.restore_staging(id))
    }

    /// Puts the staged restore of `id` in place of its volume; the old one
    /// is swapped out by rename and removed only after the new one is in
    /// place. A node that has no volume for `id` (it was made elsewhere)
    /// just renames the staged one in.
    pub fn swap_in_restore(&self, id: &str) -> Result<()> {
        self.swap_in(&self.pool.sandbox_dir(id))
    }

    /// Puts `live` + [`RESTORING`] in place of `live` (a sandbox's or a
    /// sandbox volume's directory); the old one is swapped out by rename
    /// (to `live` + [`REPLACED`]) and removed only after the new one is in
    /// place.
    fn swap_in(&self, live: &Path) -> Result<()> {
        let name = live.file_name().unwrap_or_default().to_string_lossy();
        let staged = live.with_file_name(format!("{name}{RESTORING}"));
        let replaced = live.with_file_name(format!("{name}{REPLACED}"));
        let had_volume = live.exists();
        if had_volume {
            std::fs::rename(live, &replaced).map_err(io("swap out old volume"))?;
        }
        sandstone_runtime::fault::crash("restore.mid_swap");
        std::fs::rename(&staged, live).map_err(io("swap in restored volume"))?;
        if had_volume {
            self.pool.remove_volume(&replaced)?;
        }
        Ok(())
    }

    /// Finishes or rolls back restores interrupted by a crash, of
    /// sandboxes' volumes and of sandbox volumes.
    fn finish_restores(&self) {
        let kinds: [(&str, VolumeDir); 2] = [
            ("sandboxes", Pool::sandbox_dir),
            ("volumes", Pool::user_volume_dir),
        ];
        for (kind, dir) in kinds {
            let dir = |name: &str| dir(&self.pool, name);
            for name in self.pool.volumes(kind) {
                let path = dir(&name);
                if let Some(id) = name.strip_suffix(REPLACED) {
                    let live = dir(id);
                    let staged = dir(&format!("{id}{RESTORING}"));
                    if !live.exists() && staged.exists() {
                        let _ = std::fs::rename(&staged, &live); // roll forward
                    } else if !live.exists() {
                        let _ = std::fs::rename(&path, &live); // roll back
                        continue;
                    }
                    let _ = self.pool.remove_volume(&path);
                } else if let Some(id) = name.strip_suffix(RESTORING)
                    && (dir(id).exists() || !dir(&format!("{id}{REPLACED}")).exists())
                {
                    // Not swapped in: the live volume is still the old one, or
                    // there was none (a restore from an object store that did
                    // not finish), so the call failed and nothing is kept.
                    let _ = self.pool.remove_volume(&path);
                }
            }
        }
    }

    /// Keeps sandbox `id`'s volume, which another node owns now, aside
    /// (`<pool>/sandboxes/<id>.retained`, replacing an older copy): should the
    /// sandbox come back, a restore over it writes only what changed
    /// meanwhile. Nothing runs on a retained copy.
    pub fn retain_sandbox(&self, id: &str) -> Result<()> {
        self.remove_run_dir(id)?;
        let kept = self.retained_dir(id);
        self.pool.remove_volume(&kept)?;
        std::fs::rename(self.pool.sandbox_dir(id), &kept).map_err(io("retain a volume"))
    }

    /// Moves the retained copy of `id`, if there is one, to where a
    /// restore is staged ([`Storage::restore_staging`]), capped at
    /// `limit`: the caller restores over it, then swaps it in or discards
    /// it. Its path.
    pub fn stage_retained(&self, id: &str, limit: Option<u64>) -> Result<Option<PathBuf>> {
        let kept = self.retained_dir(id);
        if !kept.exists() {
            return Ok(None);
        }
        let staged = self.restore_staging(id);
        self.pool.remove_volume(&staged)?;
        std::fs::rename(&kept, &staged).map_err(io("stage a retained volume"))?;
        if let Err(e) = self.pool.set_limit(&staged, limit) {
            let _ = self.pool.remove_volume(&staged);
            return Err(e);
        }
        Ok(Some(staged))
    }

    pub fn remove_retained(&self, id: &str) -> Result<()> {
        self.pool.remove_volume(&self.retained_dir(id))
    }

    pub fn retained_dir(&self, id: &str) -> PathBuf {
        self.pool.sandbox_dir(&format!("{id}{RETAINED}"))
    }

    /// Ids of the retained copies, the most recently retained first.
    pub fn retained_ids(&self) -> Vec<String> {
        use std::os::unix::fs::MetadataExt;
        let mut kept: Vec<(i64, String)> = self
            .pool
            .volumes("sandboxes")
            .into_iter()
            .filter_map(|name| {
                let id = name.strip_suffix(RETAINED)?.to_string();
                // A rename sets the moved directory's ctime: when it was retained.
                let at = std::fs::symlink_metadata(self.retained_dir(&id)).map_or(0, |m| m.ctime());
                Some((at, id))
            })
            .collect();
        kept.sort_by(|a, b| b.cmp(a));
        kept.into_iter().map(|(_, id)| id).collect()
    }

    /// Removes everything a sandbox owns on disk. Idempotent.
    pub fn remove_sandbox(&self, id: &str) -> Result<()> {
        let p = self.paths(id);
        self.remove_run_dir(id)?;
        self.remove_memory(id)?;
        self.pool.remove_volume(&p.data)
    }

    /// Removes the runtime directory only (pause keeps the volume).
    pub fn remove_run_dir(&self, id: &str) -> Result<()> {
        remove_tree(&self.root.join("run").join(id))
    }

    /// Removes the checkpoint of a sandbox's memory, if there is one (and
    /// one set aside for a restore).
    pub fn remove_memory(&self, id: &str) -> Result<()> {
        let dir = self.paths(id).memory;
        remove_tree(&dir.with_extension("restoring"))?;
        remove_tree(&dir)
    }

    /// Bytes the sandbox's volume occupies.
    pub fn disk_usage(&self, id: &str) -> u64 {
        self.pool.usage(&self.pool.sandbox_dir(id))
    }

    /// Ids with a runtime directory (running, or left by a crash).
    pub fn run_ids(&self) -> Vec<String> {
        std::fs::read_dir(self.root.join("run"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Ids of sandbox volumes and of snapshots on disk (with sandboxes,
    /// also the names of volumes being restored or set aside: an id with a
    /// suffix).
    pub fn volume_ids(&self, kind: &str) -> Vec<String> {
        self.pool.volumes(kind)
    }
}

/// Removes a directory and everything in it; one already gone is removed.
fn remove_tree(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(format!("remove {dir:?}"))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_new_data_dir_is_owner_only_and_loose_modes_are_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/data");
        assert_eq!(secure_data_dir(&dir).unwrap(), vec![]);
        assert_eq!(mode(&dir), 0o700);

        let db = dir.join("sandstone.db");
        std::fs::write(&db, "x").unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
        let key = dir.join("secret.key");
        std::fs::write(&key, "k").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.join("link")).unwrap();
        let mut fixed = secure_data_dir(&dir).unwrap();
        fixed.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(
            fixed,
            vec![
                Tightened {
                    path: dir.clone(),
                    from: 0o711,
                    to: 0o700
                },
                Tightened {
                    path: db.clone(),
                    from: 0o644,
                    to: 0o600
                },
            ]
        );
        assert_eq!((mode(&dir), mode(&db), mode(&key)), (0o700, 0o600, 0o600));
        // A link's target is not the data dir's to change.
        assert_eq!(mode(Path::new("/etc/hostname")) & 0o044, 0o044);
    }
}
