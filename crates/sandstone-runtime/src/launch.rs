//! Daemon side: run the helper and read back PID 1's host pid.

use crate::spawn::SpawnSpec;
use crate::{Error, Result};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

#[derive(Debug, Clone, Copy)]
pub struct Launched {
    pub pid: i32,
}

/// Runs `<init_bin> tmpfs <pid> <memory>`: sizes the tmpfs mounts of the
/// sandbox whose init is `pid` for a new memory limit (a warm-pool member
/// handed to a claim). Blocking.
pub fn resize_tmpfs(init_bin: &Path, pid: i32, memory: Option<u64>) -> Result<()> {
    let mut args = vec!["tmpfs".into(), pid.to_string().into()];
    args.extend(memory.map(|m| m.to_string().into()));
    helper(init_bin, &args, "resize the sandbox's tmpfs")
}

/// Runs `<init_bin> bind <pid> (ro|rw <source> <target>)...`: binds host
/// directories into the running sandbox whose init is `pid`
/// ([`crate::rootfs::bind_live`]), in one helper. Blocking.
pub fn bind_live(init_bin: &Path, pid: i32, binds: &[crate::spawn::BindMount]) -> Result<()> {
    let mut args: Vec<std::ffi::OsString> = vec!["bind".into(), pid.to_string().into()];
    for b in binds {
        args.push(if b.read_only { "ro" } else { "rw" }.into());
        args.push(b.source.as_os_str().to_owned());
        args.push(b.target.clone().into());
    }
    helper(init_bin, &args, "bind directories into the sandbox")
}

/// Runs one of init's helper modes with nothing from our environment;
/// its error output is the error.
fn helper(init_bin: &Path, args: &[std::ffi::OsString], what: &str) -> Result<()> {
    let out = Command::new(init_bin)
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::sys(format!("run {init_bin:?}"), e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::Other(format!(
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Runs `<init_bin> spawn`, feeding it `spec`. Blocking: call it from a
/// blocking thread.
pub fn launch(init_bin: &Path, spec: &SpawnSpec) -> Result<Launched> {
    run_pid_helper(init_bin, "spawn", spec, "sandbox spawn failed")
}

/// Runs `<init_bin> restore`, feeding it `spec`: the sandbox brought back
/// from its checkpoint ([`crate::criu`]). Blocking.
pub fn restore(init_bin: &Path, spec: &crate::criu::RestoreSpec) -> Result<Launched> {
    run_pid_helper(init_bin, "restore", spec, "sandbox restore failed")
}

/// Runs a helper mode that reads `body` as JSON and answers `pid <n>`.
fn run_pid_helper(
    init_bin: &Path,
    mode: &str,
    body: &impl serde::Serialize,
    failed: &str,
) -> Result<Launched> {
    let mut child = Command::new(init_bin)
        .arg(mode)
        .env_clear()
        .env("SANDSTONE_FAULTS", crate::fault::armed_list())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::sys(format!("run {init_bin:?}"), e))?;
    let body = serde_json::to_vec(body).expect("spec serializes");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(&body)
        .map_err(|e| Error::sys("send the helper its spec", e))?;
    let out = child
        .wait_with_output()
        .map_err(|e| Error::sys("wait for the helper", e))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success()
        && let Some(pid) = stdout
            .trim()
            .strip_prefix("pid ")
            .and_then(|p| p.parse().ok())
    {
        return Ok(Launched { pid });
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(Error::Other(format!("{failed}: {}", stderr.trim())))
}
