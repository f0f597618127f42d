//! The debootstrapped templates: `debian`, a bookworm minbase rootfs, and
//! `default`, the same with what agents reach for first. Each is built in a
//! temporary directory and renamed into place when complete.

use crate::{Error, Result, io};
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};

/// A template `sandstone setup` builds with debootstrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltTemplate {
    /// Python with pip, git, curl and CA certificates: a first sandbox
    /// can fetch code and install packages (through an allowed preset).
    Default,
    /// bookworm minbase, nothing else.
    Debian,
}

impl BuiltTemplate {
    pub const ALL: [BuiltTemplate; 2] = [BuiltTemplate::Default, BuiltTemplate::Debian];

    /// The built template named `id`, if it is one.
    pub fn from_id(id: &str) -> Option<BuiltTemplate> {
        Self::ALL.into_iter().find(|t| t.id() == id)
    }

    pub fn id(self) -> &'static str {
        match self {
            BuiltTemplate::Default => "default",
            BuiltTemplate::Debian => "debian",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            BuiltTemplate::Default => {
                "Debian bookworm with python3, pip, git, curl and CA certificates"
            }
            BuiltTemplate::Debian => "Debian bookworm (debootstrap minbase)",
        }
    }

    pub(crate) fn packages(self) -> &'static [&'static str] {
        match self {
            BuiltTemplate::Default => &[
                "python3",
                "python3-pip",
                "python3-venv",
                "git",
                "curl",
                "ca-certificates",
            ],
            BuiltTemplate::Debian => &[],
        }
    }
}

pub(crate) fn build(
    dir: &Path,
    packages: &[&str],
    mirror: Option<&str>,
    mut progress: impl FnMut(&str),
) -> Result<()> {
    let tmp = dir.join(format!("rootfs.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(dir).map_err(io("create debian template dir"))?;
    let mut cmd = Command::new("debootstrap");
    cmd.arg("--variant=minbase");
    if !packages.is_empty() {
        cmd.arg(format!("--include={}", packages.join(",")));
    }
    cmd.arg("bookworm").arg(&tmp);
    if let Some(m) = mirror {
        cmd.arg(m);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(io("run debootstrap (apt-get install debootstrap)"))?;
    let out = child.stdout.take().expect("piped stdout");
    for line in std::io::BufReader::new(out).lines().map_while(|l| l.ok()) {
        progress(&line);
    }
    let status = child.wait().map_err(io("wait for debootstrap"))?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Error::Io {
            what: "debootstrap".into(),
            source: std::io::Error::other(format!("exited with {status}")),
        });
    }
    // Package lists and caches are not needed to run; keep the layer small.
    for d in ["var/lib/apt/lists", "var/cache/apt/archives"] {
        let p = tmp.join(d);
        if let Ok(entries) = std::fs::read_dir(&p) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_file()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    // The sandbox is the agent's own machine: `pip install` should work
    // there as it does in a container, without --break-system-packages.
    for marker in glob_externally_managed(&tmp) {
        let _ = std::fs::remove_file(marker);
    }
    std::fs::create_dir_all(tmp.join("workspace")).map_err(io("create /workspace"))?;
    let rootfs = dir.join("rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    std::fs::rename(&tmp, &rootfs).map_err(io("install debian template"))
}

/// `usr/lib/python3.*/EXTERNALLY-MANAGED` (PEP 668) under `root`.
fn glob_externally_managed(root: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(root.join("usr/lib")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join("EXTERNALLY-MANAGED"))
        .filter(|p| p.exists())
        .collect()
}
