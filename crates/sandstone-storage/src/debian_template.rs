//! The `debian` template: a bookworm minbase rootfs made by debootstrap,
//! built in a temporary directory and renamed into place when complete.

use crate::{Error, Result, io};
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};

pub fn build(dir: &Path, mirror: Option<&str>, mut progress: impl FnMut(&str)) -> Result<()> {
    let tmp = dir.join(format!("rootfs.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(dir).map_err(io("create debian template dir"))?;
    let mut cmd = Command::new("debootstrap");
    cmd.args(["--variant=minbase", "bookworm"]).arg(&tmp);
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
    std::fs::create_dir_all(tmp.join("workspace")).map_err(io("create /workspace"))?;
    let rootfs = dir.join("rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    std::fs::rename(&tmp, &rootfs).map_err(io("install debian template"))
}
