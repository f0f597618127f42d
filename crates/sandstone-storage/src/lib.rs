//! On-disk layout of templates and sandboxes.
//!
//! ```text
//! <data>/templates/<id>/rootfs     template lower layer
//! <data>/sandboxes/<id>/upper      writable rootfs layer (durable)
//! <data>/sandboxes/<id>/work       overlay work dir
//! <data>/sandboxes/<id>/workspace  /workspace (durable)
//! <data>/run/<id>/                 runtime only: mount point, socket, log
//! ```

mod debian_template;
mod host_template;

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
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// A template: what becomes the sandbox's read-only root.
#[derive(Debug, Clone)]
pub struct Template {
    pub id: String,
    pub description: String,
    pub lower: Vec<PathBuf>,
    pub binds: Vec<BindMount>,
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
}

#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
}

impl Storage {
    pub fn open(data_dir: &Path) -> Result<Storage> {
        // Layers are stored unshifted: a setuid file a sandbox creates is
        // owned by host root on disk. Only host root may traverse to them.
        for d in ["templates", "sandboxes", "run"] {
            let dir = data_dir.join(d);
            std::fs::create_dir_all(&dir).map_err(io(format!("create {d} dir")))?;
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(io(format!("chmod {d} dir")))?;
        }
        Ok(Storage {
            root: data_dir.to_path_buf(),
        })
    }

    fn debian_rootfs(&self) -> PathBuf {
        self.root.join("templates/debian/rootfs")
    }

    /// Whether the `debian` template has been built.
    pub fn has_debian(&self) -> bool {
        self.debian_rootfs().join("bin/bash").exists()
    }

    /// Builds the `debian` template with debootstrap (once; cached), calling
    /// `progress` with each line debootstrap prints.
    pub fn build_debian(&self, mirror: Option<&str>, progress: impl FnMut(&str)) -> Result<()> {
        if self.has_debian() {
            return Ok(());
        }
        debian_template::build(&self.root.join("templates/debian"), mirror, progress)
    }

    /// Templates available on this host (`host` always; `debian` once built).
    pub fn templates(&self) -> Result<Vec<Template>> {
        let mut v = vec![host_template::ensure(&self.root.join("templates/host"))?];
        if self.has_debian() {
            v.push(Template {
                id: "debian".into(),
                description: "Debian bookworm (debootstrap minbase)".into(),
                lower: vec![self.debian_rootfs()],
                binds: vec![],
            });
        }
        Ok(v)
    }

    /// Resolves a template id; `default` is `debian` when built, else `host`.
    pub fn template(&self, id: &str) -> Result<Template> {
        let all = self.templates()?;
        let want = match id {
            "default" | "" => {
                if all.iter().any(|t| t.id == "debian") {
                    "debian"
                } else {
                    "host"
                }
            }
            other => other,
        };
        all.into_iter()
            .find(|t| t.id == want)
            .ok_or_else(|| Error::UnknownTemplate(id.to_string()))
    }

    pub fn paths(&self, id: &str) -> SandboxPaths {
        let dir = self.root.join("sandboxes").join(id);
        let run = self.root.join("run").join(id);
        SandboxPaths {
            data: dir.clone(),
            upper: dir.join("upper"),
            work: dir.join("work"),
            workspace: dir.join("workspace"),
            rootfs: run.join("rootfs"),
            socket: run.join("init.sock"),
            log: run.join("init.log"),
        }
    }

    /// Creates a sandbox's directories. They are stored unshifted (owned by
    /// host root, which is root inside once id-mapped), like the template.
    pub fn create_sandbox(&self, id: &str) -> Result<SandboxPaths> {
        let p = self.paths(id);
        let made = (|| {
            for d in [&p.upper, &p.work, &p.workspace, &p.rootfs] {
                std::fs::create_dir_all(d).map_err(io(format!("create {d:?}")))?;
            }
            let run = p.rootfs.parent().expect("rootfs has a parent");
            std::fs::set_permissions(run, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(io("chmod run dir"))?;
            Ok(())
        })();
        if let Err(e) = made {
            let _ = self.remove_sandbox(id);
            return Err(e);
        }
        Ok(p)
    }

    /// Removes everything a sandbox owns on disk. Idempotent.
    pub fn remove_sandbox(&self, id: &str) -> Result<()> {
        let p = self.paths(id);
        for d in [
            p.rootfs.parent().expect("run dir"),
            p.upper.parent().expect("sandbox dir"),
        ] {
            match std::fs::remove_dir_all(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(format!("remove {d:?}"))(e)),
            }
        }
        Ok(())
    }

    /// Ids of sandboxes that have directories on disk.
    pub fn sandbox_ids(&self) -> Vec<String> {
        std::fs::read_dir(self.root.join("sandboxes"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}
