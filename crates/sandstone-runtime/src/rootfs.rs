//! Rootfs assembly. The host side (overlay, bind mounts, /dev, /sys) runs in
//! the helper as host root, so those mounts are locked for the sandbox: root
//! inside cannot unmount or remount them. The sandbox side (/proc, devpts,
//! tmpfs, masks, pivot_root) runs in PID 1, which owns the new pid namespace.

use crate::spawn::SpawnSpec;
use crate::sys::{self, Step, mount};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

const NOSUID: libc::c_ulong = libc::MS_NOSUID;
const NODEV: libc::c_ulong = libc::MS_NODEV;
const NOEXEC: libc::c_ulong = libc::MS_NOEXEC;

/// Device nodes bound from the host into the sandbox's /dev.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// /proc and /sys paths hidden from the sandbox, as runc hides them.
const MASKED: &[&str] = &[
    "proc/acpi",
    "proc/asound",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/scsi",
    "sys/firmware",
    "sys/devices/virtual/powercap",
];

/// /proc paths made read-only.
const READ_ONLY: &[&str] = &[
    "proc/bus",
    "proc/fs",
    "proc/irq",
    "proc/sys",
    "proc/sysrq-trigger",
];

fn inside(root: &Path, rel: &str) -> PathBuf {
    root.join(rel.trim_start_matches('/'))
}

fn bind(src: &Path, dst: &Path, read_only: bool) -> Result<()> {
    mount(Some(src), dst, None, libc::MS_BIND | libc::MS_REC, None)?;
    if read_only {
        mount(
            None,
            dst,
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | NOSUID | NODEV,
            None,
        )?;
    }
    Ok(())
}

fn ensure_dir(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(|e| Error::sys(format!("mkdir {p:?}"), e))
}

fn ensure_file(p: &Path) -> Result<()> {
    if let Some(parent) = p.parent() {
        ensure_dir(parent)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(p)
        .map(drop)
        .map_err(|e| Error::sys(format!("create {p:?}"), e))
}

/// Host-side assembly, in the helper's private mount namespace.
pub fn assemble_host_side(spec: &SpawnSpec) -> Result<()> {
    let root = &spec.rootfs;
    let run_dir = root.parent().expect("rootfs has a parent");
    let userns = crate::idmap::userns(spec.id_base, spec.id_count)?;
    let data = mount_root(spec, &userns, run_dir, root)?;
    crate::fault::check("rootfs.after_overlay")?;
    let workspace = inside(root, "workspace");
    // Mount points the template lacks are created in the sandbox's own
    // layer, as its root (which the id map stores as uid 0).
    as_sandbox_root(spec.id_base, || ensure_dir(&workspace))?;
    bind(&data.join("workspace"), &workspace, false)?;
    for b in &spec.binds {
        let dst = inside(root, &b.target);
        as_sandbox_root(spec.id_base, || make_mount_point(&b.source, &dst))?;
        bind_source(b, &dst, &userns)?;
    }
    let dev = inside(root, "dev");
    as_sandbox_root(spec.id_base, || ensure_dir(&dev))?;
    make_dev(&dev, true)?;
    let sys_dir = inside(root, "sys");
    as_sandbox_root(spec.id_base, || ensure_dir(&sys_dir))?;
    mount_sys(&sys_dir)
}

/// What a restore of the sandbox's memory ([`crate::criu`]) stands on,
/// made in `stage` (an empty directory of the restore helper's private
/// mount namespace that the sandbox's root may traverse): the root at
/// `stage/root`, assembled as for a spawn, and each mount the checkpoint
/// left out by key ([`crate::criu::external_mounts`]), ready to be bound
/// in: `ws`, `dev`, `sys`, and `b<i>` for `spec.binds[i]`.
pub fn assemble_for_restore(spec: &SpawnSpec, stage: &Path) -> Result<Vec<(String, PathBuf)>> {
    let userns = crate::idmap::userns(spec.id_base, spec.id_count)?;
    let root = stage.join("root");
    ensure_dir(&root)?;
    let data = mount_root(spec, &userns, stage, &root)?;
    let mut staged = vec![("ws".to_string(), data.join("workspace"))];
    for (i, b) in spec.binds.iter().enumerate() {
        let dst = stage.join(format!("b{i}"));
        make_mount_point(&b.source, &dst)?;
        bind_source(b, &dst, &userns)?;
        staged.push((format!("b{i}"), dst));
    }
    let dev = stage.join("dev");
    ensure_dir(&dev)?;
    // Without the device nodes bound in: CRIU binds them itself, and could
    // not take a /dev with mounts under it from inside the sandbox's user
    // namespace (they are locked to it there).
    make_dev(&dev, false)?;
    staged.push(("dev".to_string(), dev));
    let sys_dir = stage.join("sys");
    ensure_dir(&sys_dir)?;
    mount_sys(&sys_dir)?;
    staged.push(("sys".to_string(), sys_dir));
    Ok(staged)
}

/// The sandbox's root: its template layers and its own layer (both shown
/// through its id map) under an overlay at `root`; the layers are mounted
/// in `at`. Returns where its own layer is mounted.
fn mount_root(
    spec: &SpawnSpec,
    userns: &std::os::fd::OwnedFd,
    at: &Path,
    root: &Path,
) -> Result<PathBuf> {
    // Template layers and template binds are host-root-owned: show them
    // through the sandbox's id map so they belong to root inside.
    let mut lowers = Vec::new();
    for (i, layer) in spec.lower.iter().enumerate() {
        let dir = at.join(format!("lower{i}"));
        ensure_dir(&dir)?;
        crate::idmap::bind(layer, &dir, userns, true)?;
        lowers.push(dir.display().to_string());
    }
    let lower = lowers.join(":");
    // The sandbox's own layers are stored unshifted (owned by 0..count on
    // disk) and shown through the same id map, so they can move between id
    // ranges (fork, restore, warm pool) without a recursive chown.
    let data = at.join("data");
    ensure_dir(&data)?;
    crate::idmap::bind(&spec.data, &data, userns, false)?;
    let opts = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        data.join("upper").display(),
        data.join("work").display()
    );
    // overlayfs acts with its mounter's credentials. Mount it as the
    // sandbox's root (id_base, which the id map stores as 0 on disk) with our
    // capabilities kept, or creating anything in the upper layer overflows.
    as_sandbox_root(spec.id_base, || {
        mount(
            Some(Path::new("overlay")),
            root,
            Some("overlay"),
            0,
            Some(&opts),
        )
    })?;
    Ok(data)
}

/// A directory or a file at `dst`, as `source` is, to mount it on.
fn make_mount_point(source: &Path, dst: &Path) -> Result<()> {
    if source.is_dir() {
        ensure_dir(dst)
    } else {
        ensure_file(dst)
    }
}

fn bind_source(
    b: &crate::spawn::BindMount,
    dst: &Path,
    userns: &std::os::fd::OwnedFd,
) -> Result<()> {
    if b.idmap {
        crate::idmap::bind(&b.source, dst, userns, b.read_only)
    } else {
        bind(&b.source, dst, b.read_only)
    }
}

/// The sandbox's /dev at `dev`: a small tmpfs with the usual links and
/// the host's harmless device nodes (bound in with `devices`, else only
/// their mount points).
fn make_dev(dev: &Path, devices: bool) -> Result<()> {
    mount(None, dev, Some("tmpfs"), NOSUID, Some("mode=755,size=64k"))?;
    for d in DEVICES {
        let node = dev.join(d);
        ensure_file(&node)?;
        if devices {
            bind(&Path::new("/dev").join(d), &node, false)?;
        }
    }
    for d in ["pts", "shm"] {
        ensure_dir(&dev.join(d))?;
    }
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))
            .map_err(|e| Error::sys(format!("symlink /dev/{link}"), e))?;
    }
    Ok(())
}

/// sysfs of the sandbox's own network namespace (which the caller is in),
/// read-only, at `dir`.
fn mount_sys(dir: &Path) -> Result<()> {
    mount(
        None,
        dir,
        Some("sysfs"),
        libc::MS_RDONLY | NOSUID | NODEV | NOEXEC,
        None,
    )
}

/// First sandbox-side step, while PID 1 still has host root's credentials
/// (the run directory is host-root-only): mounts made by the helper are
/// locked here and pivot_root refuses a locked new root, so re-bind the tree
/// to make the root mount our own (everything below it stays locked), then
/// step into it. Later steps use paths relative to it.
pub fn enter(rootfs: &Path) -> Result<()> {
    mount(
        Some(rootfs),
        rootfs,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )?;
    sandstone_sys::process::chdir(&sys::cstr(rootfs)?).step(|| "chdir rootfs".into())
}

/// Runs `f` with fsuid/fsgid set to `id` and every permitted capability
/// effective (changing fsuid from 0 clears file capabilities), then restores.
fn as_sandbox_root<T>(id: u32, f: impl FnOnce() -> Result<T>) -> Result<T> {
    sandstone_sys::process::set_fs_ids(id);
    let result = crate::harden::raise_effective().and_then(|()| f());
    sandstone_sys::process::set_fs_ids(0);
    crate::harden::raise_effective()?;
    result
}

/// `size=` and `nr_inodes=` of the sandbox's tmpfs mounts for a memory
/// limit. Their pages are charged to the sandbox's memory and cannot be
/// reclaimed (there is no swap), so a full /tmp must leave room for the
/// processes: /tmp gets half the limit, /dev/shm a quarter (at most 64 MiB),
/// and filling either is ENOSPC rather than an OOM kill of init.
fn tmpfs_options(memory: Option<u64>) -> (String, String) {
    const SHM_MAX: u64 = 64 << 20;
    let sized = |bytes: u64| format!("size={bytes},nr_inodes={}", (bytes / 16384).max(1024));
    match memory {
        Some(m) => (sized(m / 2), sized((m / 4).min(SHM_MAX))),
        None => (String::new(), sized(SHM_MAX)),
    }
}

/// Resizes the /tmp and /dev/shm of the sandbox whose init is `pid` for a
/// new memory limit, from the host: this process (single-threaded, host
/// root) enters the sandbox's mount namespace and remounts them.
pub fn resize_tmpfs(pid: i32, memory: Option<u64>) -> Result<()> {
    use std::os::fd::AsFd;
    let path = format!("/proc/{pid}/ns/mnt");
    let ns = std::fs::File::open(&path).map_err(|e| Error::sys(format!("open {path}"), e))?;
    // This process is single-threaded, as entering a mount namespace
    // requires. Only a warm-pool member no claim has used yet is resized,
    // so no sandbox process has had a chance to prepare its /tmp for us.
    sandstone_sys::process::setns(ns.as_fd(), libc::CLONE_NEWNS)
        .step(|| "enter the sandbox's mount namespace".into())?;
    let (tmp, shm) = tmpfs_options(memory);
    for (at, opts) in [("/tmp", tmp), ("/dev/shm", shm)] {
        if opts.is_empty() {
            continue;
        }
        mount(
            None,
            Path::new(at),
            None,
            libc::MS_REMOUNT | NOSUID | NODEV,
            Some(&format!("mode=1777,{opts}")),
        )?;
    }
    Ok(())
}

/// Binds host directories (each read-only or not) at their targets in the
/// running sandbox whose init is `pid`, idmapped through the sandbox's own
/// user namespace as [`assemble_host_side`]'s idmapped binds are. This process
/// (single-threaded, host root) clones the tree in the host's mount
/// namespace, then enters the sandbox's and attaches it, making the mount
/// point as the sandbox's root. The sandbox cannot undo it: its root has no
/// `CAP_SYS_ADMIN` to unmount or remount.
pub fn bind_live(pid: i32, binds: &[crate::spawn::BindMount]) -> Result<()> {
    use sandstone_sys::mount as m;
    use std::os::fd::AsFd;
    let open = |what: &str| {
        let path = format!("/proc/{pid}/{what}");
        std::fs::File::open(&path).map_err(|e| Error::sys(format!("open {path}"), e))
    };
    let (userns, mntns) = (open("ns/user")?, open("ns/mnt")?);
    let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map"))
        .map_err(|e| Error::sys("read the sandbox's uid map", e))?;
    let id_base: u32 = map
        .split_whitespace()
        .nth(1)
        .and_then(|b| b.parse().ok())
        .ok_or_else(|| Error::Other(format!("the sandbox's uid map {map:?}")))?;
    // Every tree is cloned in the host's namespace, before entering the
    // sandbox's, where host paths no longer resolve.
    let mut trees = Vec::with_capacity(binds.len());
    for b in binds {
        let source = &b.source;
        let tree = m::clone_tree(&sys::cstr(source)?).step(|| format!("open_tree {source:?}"))?;
        m::idmap_tree(tree.as_fd(), userns.as_fd(), b.read_only)
            .step(|| format!("idmap {source:?}"))?;
        trees.push(tree);
    }
    sandstone_sys::process::setns(mntns.as_fd(), libc::CLONE_NEWNS)
        .step(|| "enter the sandbox's mount namespace".into())?;
    for (b, tree) in binds.iter().zip(&trees) {
        let dst = inside(Path::new("/"), &b.target);
        as_sandbox_root(id_base, || ensure_dir(&dst))?;
        m::attach_tree(tree.as_fd(), &sys::cstr(&dst)?)
            .step(|| format!("attach {:?} at {}", b.source, b.target))?;
    }
    Ok(())
}

/// Sandbox-side assembly, in PID 1 as the sandbox's root, inside the root
/// [`enter`] stepped into. Ends with the new root in place and the host's
/// tree detached.
pub fn finish_in_sandbox(memory: Option<u64>) -> Result<()> {
    let (tmp_size, shm_size) = tmpfs_options(memory);
    let root = Path::new(".");
    let proc_dir = inside(root, "proc");
    ensure_dir(&proc_dir)?;
    mount(None, &proc_dir, Some("proc"), NOSUID | NODEV | NOEXEC, None)?;
    mount(
        None,
        &inside(root, "dev/pts"),
        Some("devpts"),
        NOSUID | NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    mount(
        None,
        &inside(root, "dev/shm"),
        Some("tmpfs"),
        NOSUID | NODEV,
        Some(&format!("mode=1777,{shm_size}")),
    )?;
    let tmp = inside(root, "tmp");
    ensure_dir(&tmp)?;
    mount(
        None,
        &tmp,
        Some("tmpfs"),
        NOSUID | NODEV,
        Some(format!("mode=1777,{tmp_size}").trim_end_matches(',')),
    )?;
    limit_sysv_shm(&proc_dir, memory)?;
    mask_paths(root)?;
    crate::fault::check("rootfs.before_pivot")?;
    pivot()
}

/// SysV shared memory outlives the processes that made it and is charged
/// to the sandbox's memory: without these, a workload could pin its whole
/// limit and leave init no room. In the sandbox's own IPC namespace, a
/// segment goes with its last attached process, and all of them together
/// stay within a quarter of the memory limit.
fn limit_sysv_shm(proc_dir: &Path, memory: Option<u64>) -> Result<()> {
    let kernel = proc_dir.join("sys/kernel");
    let write = |name: &str, value: String| {
        std::fs::write(kernel.join(name), value)
            .map_err(|e| Error::sys(format!("set kernel.{name}"), e))
    };
    write("shm_rmid_forced", "1".into())?;
    if let Some(m) = memory {
        let quarter = m / 4;
        write("shmmax", quarter.to_string())?;
        write("shmall", (quarter / 4096).to_string())?;
    }
    Ok(())
}

/// Hides [`MASKED`] and makes [`READ_ONLY`] read-only. Every masked
/// directory shows one empty read-only tmpfs: the first gets it, the others
/// are binds of it. Each superblock costs the kernel memory in every memory
/// cgroup (a shrinker slot each), so one per sandbox, not one per masked
/// directory, keeps that cost from growing as N² with more sandboxes.
fn mask_paths(root: &Path) -> Result<()> {
    const MASK: libc::c_ulong = libc::MS_RDONLY | NOSUID | NODEV | NOEXEC;
    let null = inside(root, "dev/null");
    let mut empty: Option<PathBuf> = None;
    for rel in MASKED {
        let p = inside(root, rel);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => match &empty {
                Some(first) => {
                    mount(Some(first), &p, None, libc::MS_BIND, None)?;
                    mount(
                        None,
                        &p,
                        None,
                        libc::MS_REMOUNT | libc::MS_BIND | MASK,
                        None,
                    )?;
                }
                None => {
                    mount(None, &p, Some("tmpfs"), MASK, Some("size=0"))?;
                    empty = Some(p);
                }
            },
            Ok(_) => mount(Some(&null), &p, None, libc::MS_BIND, None)?,
            Err(_) => {}
        }
    }
    for rel in READ_ONLY {
        let p = inside(root, rel);
        if p.exists() {
            bind(&p, &p, true)?;
        }
    }
    Ok(())
}

fn pivot() -> Result<()> {
    use sandstone_sys::mount;
    mount::pivot_root(c".", c".").step(|| "pivot_root".into())?;
    // The old root is now stacked under "."; detach it and every host mount.
    mount::detach(c".").step(|| "detach old root".into())?;
    sandstone_sys::process::chdir(c"/").step(|| "chdir /".into())
}
