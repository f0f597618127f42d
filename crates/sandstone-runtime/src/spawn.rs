//! The helper that creates a sandbox. It runs as its own short-lived process
//! (the static init binary in `spawn` mode), single-threaded, so it may fork
//! freely: the daemon itself is multi-threaded and never forks into a sandbox.

use crate::sys::Step;
use crate::{Error, Result};
use sandstone_sys::process::{self, Cloned};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

/// Everything the helper needs to build one sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpawnSpec {
    pub id: String,
    pub hostname: String,
    /// Mount point of the assembled root (empty directory on the host).
    pub rootfs: PathBuf,
    /// Read-only template layers, topmost first.
    pub lower: Vec<PathBuf>,
    /// The sandbox's durable directory: `upper/`, `work/` and `workspace/`,
    /// stored unshifted (root inside = uid 0 on disk).
    pub data: PathBuf,
    pub binds: Vec<BindMount>,
    /// First host uid/gid of the sandbox's range; root inside maps to it.
    pub id_base: u32,
    pub id_count: u32,
    /// `cgroup.procs` files the sandbox joins (one per hierarchy).
    pub cgroup_procs: Vec<PathBuf>,
    /// Where PID 1 listens for the daemon (a host path, unreachable inside).
    pub socket: PathBuf,
    /// Host file PID 1 writes its own diagnostics to.
    pub log: PathBuf,
    /// The way out (a veth pair); `None` leaves only `lo`.
    #[serde(default)]
    pub net: Option<crate::net::NetSpec>,
    /// Variables every process in the sandbox starts with.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Where processes start when a request names no directory (an
    /// image's `WorkingDir`; `/workspace` without one). Made if missing.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Whom processes run as (an image's `User`: `name`, `uid`, with
    /// `:group` or `:gid`), resolved in the sandbox's `/etc/passwd`.
    #[serde(default)]
    pub user: Option<String>,
    /// The sandbox's memory limit: its tmpfs mounts (charged to it) are
    /// sized below it.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// The node's lease watch, on a database several nodes share: PID 1
    /// stops every process of the sandbox once the deadline in this file
    /// has passed (its daemon stopped renewing: another node may soon run
    /// the sandbox), and lets them go on when it moves forward again.
    #[serde(default)]
    pub lease: Option<LeaseWatch>,
    /// Where PID 1 keeps every context's output, beyond what it holds in
    /// memory: a host directory in the volume, so the log outlives pauses
    /// and restarts, and the daemon reads it even while nothing runs.
    #[serde(default)]
    pub logs: Option<LogSpec>,
}

/// See [`SpawnSpec::logs`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogSpec {
    /// The host directory, writable by the sandbox's root (`id_base`).
    pub dir: PathBuf,
    /// The most the directory holds: the oldest segments go first.
    pub max_bytes: u64,
}

/// See [`SpawnSpec::lease`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseWatch {
    /// A host file holding the deadline: `CLOCK_MONOTONIC` nanoseconds,
    /// 8 bytes little-endian, rewritten in place by the daemon.
    pub file: PathBuf,
    /// How often PID 1 reads it.
    pub every_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    /// Absolute path inside the sandbox.
    pub target: String,
    pub read_only: bool,
    /// Show host-root-owned files as owned by the sandbox's root.
    #[serde(default)]
    pub idmap: bool,
}

/// What PID 1 receives from the helper.
pub struct SandboxStart {
    pub spec: SpawnSpec,
    pub listener: UnixListener,
    /// Write "ok" (or an error) here once the sandbox is ready, then drop it.
    pub status: std::fs::File,
    /// PID 1's own `/proc/self/oom_score_adj` (the sandbox's /proc),
    /// opened read-write by [`prepare_sandbox`].
    pub oom_score_adj: Option<std::fs::File>,
    /// The lease deadline file ([`SpawnSpec::lease`]), opened read-only
    /// while host paths are still reachable.
    pub lease: Option<std::fs::File>,
    /// The log directory ([`SpawnSpec::logs`]), opened while host paths
    /// are still reachable; nothing in the sandbox can reach it.
    pub logs: Option<std::fs::File>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    sandstone_sys::fd::pipe(libc::O_CLOEXEC).step(|| "pipe2".into())
}

fn write_id_maps(pid: process::Pid, spec: &SpawnSpec) -> Result<()> {
    let map = format!("0 {} {}\n", spec.id_base, spec.id_count);
    for f in ["uid_map", "gid_map"] {
        let path = format!("/proc/{pid}/{f}");
        std::fs::write(&path, &map).map_err(|e| Error::sys(format!("write {path}"), e))?;
    }
    Ok(())
}

/// Moves the helper into the sandbox's new mount and network namespaces,
/// its network set up (`spec.net`, else loopback alone) and its mounts
/// private to it.
pub(crate) fn enter_namespaces(spec: &SpawnSpec) -> Result<()> {
    let host_ns = crate::net::current_ns()?;
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWNET;
    process::unshare(flags).step(|| "unshare mount+net namespaces".into())?;
    match &spec.net {
        Some(net) => crate::net::setup_in_sandbox_ns(net, &host_ns, &crate::net::current_ns()?)?,
        // Without a network a sandbox still has its loopback: servers and
        // tests talk to themselves on 127.0.0.1, and previews reach them there.
        None => crate::net::loopback_up()?,
    }
    drop(host_ns);
    crate::sys::mount(
        None,
        std::path::Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
}

/// Builds the sandbox and returns PID 1's host pid once it reports ready.
/// `sandbox_main` runs in PID 1 and never returns.
pub fn spawn(spec: &SpawnSpec, sandbox_main: fn(SandboxStart) -> !) -> Result<i32> {
    enter_namespaces(spec)?;
    crate::rootfs::assemble_host_side(spec)?;
    let _ = std::fs::remove_file(&spec.socket);
    let listener = UnixListener::bind(&spec.socket)
        .map_err(|e| Error::sys(format!("bind {:?}", spec.socket), e))?;
    for f in &spec.cgroup_procs {
        std::fs::write(f, std::process::id().to_string())
            .map_err(|e| Error::sys(format!("join cgroup {f:?}"), e))?;
    }
    crate::fault::check("spawn.before_clone")?;
    let (go_r, go_w) = pipe()?;
    let (st_r, st_w) = pipe()?;
    let clone_flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWCGROUP;
    // SAFETY: this helper is single-threaded (module doc), so the child
    // is a whole copy of it and may allocate, as PID 1 goes on to do.
    let cloned =
        unsafe { process::clone_process(clone_flags) }.step(|| "clone sandbox init".into())?;
    let pid = match cloned {
        Cloned::Child => {
            drop(go_w);
            drop(st_r);
            let mut byte = [0u8; 1];
            let mut go = std::fs::File::from(go_r);
            if go.read_exact(&mut byte).is_err() {
                process::exit_immediately(1);
            }
            sandbox_main(SandboxStart {
                spec: spec.clone(),
                listener,
                status: std::fs::File::from(st_w),
                oom_score_adj: None,
                lease: None,
                logs: None,
            });
        }
        Cloned::Parent(pid) => pid,
    };
    drop(go_r);
    drop(st_w);
    drop(listener);
    let started = (|| {
        write_id_maps(pid, spec)?;
        crate::fault::check("spawn.after_maps")?;
        std::fs::File::from(go_w)
            .write_all(b"g")
            .map_err(|e| Error::sys("release sandbox init", e))?;
        let mut status = String::new();
        std::fs::File::from(st_r)
            .read_to_string(&mut status)
            .map_err(|e| Error::sys("read sandbox status", e))?;
        if status.trim() == "ok" {
            Ok(())
        } else if status.is_empty() {
            Err(Error::Other("sandbox init exited during setup".into()))
        } else {
            Err(Error::Other(status.trim().to_string()))
        }
    })();
    if let Err(e) = started {
        // Ours to kill and reap; neither can fail for a child not yet reaped.
        let _ = process::kill(pid, libc::SIGKILL);
        let _ = process::wait(pid);
        return Err(e);
    }
    Ok(pid.as_raw())
}

/// The first steps of PID 1: detach from the helper's session and stdio,
/// finish the rootfs and harden. Errors are reported through `status`.
pub fn prepare_sandbox(start: &mut SandboxStart) -> Result<()> {
    // Fails only for a group leader, which a freshly cloned PID 1 is not.
    let _ = process::setsid();
    if let Some(w) = &start.spec.lease {
        start.lease =
            Some(std::fs::File::open(&w.file).map_err(|e| Error::sys("open the lease file", e))?);
    }
    if let Some(l) = &start.spec.logs {
        start.logs = Some(
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY)
                .open(&l.dir)
                .map_err(|e| Error::sys("open the log directory", e))?,
        );
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&start.spec.log)
        .map_err(|e| Error::sys("open init log", e))?;
    crate::rootfs::enter(&start.spec.rootfs)?;
    // Our credentials are still host root's until we switch to the mapped
    // root; only then is every file we create owned by the sandbox's range.
    process::setresgid(0).step(|| "setresgid".into())?;
    process::setresuid(0).step(|| "setresuid".into())?;
    process::clear_groups().step(|| "setgroups".into())?;
    crate::rootfs::finish_in_sandbox(start.spec.memory_bytes)?;
    // Changing user made PID 1 non-dumpable, and so unable to open its own
    // /proc files; `harden` makes it so again once they are open.
    sandstone_sys::security::set_dumpable(true).step(|| "set dumpable".into())?;
    // The sandbox's own /dev/null and /proc: what a checkpoint of its
    // memory takes as it is (only the log is a host file).
    let null = std::fs::File::open("/dev/null").map_err(|e| Error::sys("open /dev/null", e))?;
    sandstone_sys::fd::redirect_stdio(null.as_fd(), log.as_fd(), log.as_fd())
        .step(|| "redirect init's stdio".into())?;
    start.oom_score_adj = Some(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/proc/self/oom_score_adj")
            .map_err(|e| Error::sys("open oom_score_adj", e))?,
    );
    process::sethostname(&start.spec.hostname).step(|| "sethostname".into())?;
    crate::harden::harden()?;
    Ok(())
}
