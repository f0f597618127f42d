//! `sandstone setup`'s CRIU: Debian's package and the libraries it needs,
//! unpacked into a directory of their own and run through their own
//! dynamic loader (`sandstone_runtime::criu`), so the host's packages and
//! its apt configuration stay as they are.
//!
//! Why from Debian unstable: this needs CRIU 4.2 or later (4.1, Debian 13's,
//! cannot checkpoint a process with an inet socket on Linux 6.16+; Debian
//! 12's 3.17 fails `criu check`), and a C library newer than Debian 12's.

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::Command;

/// Unpacks CRIU into `dir` unless it is there already. `mirror`: the Debian
/// mirror (default deb.debian.org).
pub fn unpack(dir: &Path, mirror: Option<&str>) -> Result<()> {
    if let Some(criu) = sandstone_runtime::criu::Criu::at(dir)
        && let Ok(v) = version(&criu)
    {
        eprintln!("      CRIU {v}: already unpacked in {}", dir.display());
        return Ok(());
    }
    let started = std::time::Instant::now();
    let work = dir.with_extension("unpacking");
    let _ = std::fs::remove_dir_all(&work);
    let apt = work.join("apt");
    for d in ["state/lists/partial", "cache/archives/partial", "etc"] {
        std::fs::create_dir_all(apt.join(d))?;
    }
    std::fs::write(apt.join("state/status"), "")?;
    let mirror = mirror.unwrap_or("http://deb.debian.org/debian");
    std::fs::write(
        apt.join("etc/unstable.sources"),
        format!(
            "Types: deb\nURIs: {mirror}\nSuites: unstable\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        ),
    )?;
    let a = apt.display();
    std::fs::write(
        apt.join("apt.conf"),
        format!(
            "Dir::Etc::sourcelist \"{a}/etc/unstable.sources\";\nDir::Etc::sourceparts \"-\";\nDir::Etc::preferencesparts \"{a}/etc\";\nDir::State \"{a}/state\";\nDir::State::status \"{a}/state/status\";\nDir::Cache \"{a}/cache\";\nAPT::Architecture \"amd64\";\nAPT::Install-Recommends \"false\";\nDebug::NoLocking \"true\";\n"
        ),
    )?;
    let apt_get = |args: &[&str]| -> Result<()> {
        let out = Command::new("apt-get")
            .args(args)
            .env("APT_CONFIG", apt.join("apt.conf"))
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .context("run apt-get")?;
        if !out.status.success() {
            bail!(
                "apt-get {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    apt_get(&["update", "-qq"])?;
    apt_get(&["install", "--download-only", "-y", "-qq", "criu"])?;
    let root = work.join("root");
    std::fs::create_dir_all(&root)?;
    let mut debs = 0;
    for entry in std::fs::read_dir(apt.join("cache/archives"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            let ok = Command::new("dpkg-deb")
                .arg("-x")
                .arg(&path)
                .arg(&root)
                .status()
                .context("run dpkg-deb")?
                .success();
            if !ok {
                bail!("could not unpack {}", path.display());
            }
            debs += 1;
        }
    }
    let criu = sandstone_runtime::criu::Criu::at(&root)
        .context("the unpacked packages hold no criu and loader")?;
    let v = version(&criu)?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&root, dir)?;
    std::fs::remove_dir_all(&work)?;
    eprintln!(
        "      CRIU {v} unpacked in {} ({debs} packages, {} s)",
        dir.display(),
        started.elapsed().as_secs()
    );
    Ok(())
}

/// `criu --version`'s version, refused below 4.2.
fn version(criu: &sandstone_runtime::criu::Criu) -> Result<String> {
    let out = criu.command().arg("--version").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .context("criu --version printed no version")?
        .trim()
        .to_string();
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (4, 2) {
        bail!("CRIU {v} is too old: 4.2 or later is needed on this kernel");
    }
    Ok(v)
}
