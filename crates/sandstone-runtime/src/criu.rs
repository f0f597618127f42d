//! A sandbox's processes written to disk with their memory, and brought
//! back (CRIU). The checkpoint covers everything below PID 1's user
//! namespace (processes, memory, descriptors, the mount tree, tmpfs
//! contents, listening sockets) but not what the sandbox stands on, which
//! the restore makes again as a spawn does:
//!
//! - its network namespace: CRIU runs inside it, so takes it as its own and
//!   leaves it out; the restore helper makes a new one, as the spawn helper
//!   does, with the same address (the same slot). Established TCP
//!   connections come back closed (`--tcp-close`: repairing them needs
//!   `CAP_NET_ADMIN` over a namespace the host owns);
//! - the mounts that come from the host ([`external_mounts`]), made again
//!   as a spawn makes them (idmapped where they were) and bound in by key;
//! - the host files PID 1 holds ([`HostFile`]), opened again and handed in;
//! - its cgroup, made again by the daemon before the restore.
//!
//! CRIU 4.2 or later is needed on this kernel (4.1 cannot dump an inet
//! socket on Linux 6.16+). It is run from its own root (`sandstone setup`
//! unpacks Debian's package and its libraries there) through that root's
//! dynamic loader, since the host's C library may be older than it needs.

use crate::spawn::SpawnSpec;
use crate::sys::Step;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// CRIU, unpacked in its own root.
#[derive(Debug, Clone)]
pub struct Criu {
    root: PathBuf,
}

/// Where CRIU's libraries are in its root.
const LIB: &str = "usr/lib/x86_64-linux-gnu";

impl Criu {
    /// The CRIU unpacked at `root`, if it is there.
    pub fn at(root: &Path) -> Option<Criu> {
        let criu = Criu {
            root: root.to_path_buf(),
        };
        (criu.loader().is_file() && root.join("usr/sbin/criu").is_file()).then_some(criu)
    }

    fn loader(&self) -> PathBuf {
        self.root.join(LIB).join("ld-linux-x86-64.so.2")
    }

    /// `criu` with nothing of the caller's environment.
    pub fn command(&self) -> Command {
        let mut c = Command::new(self.loader());
        c.arg("--library-path")
            .arg(self.root.join(LIB))
            .arg(self.root.join("usr/sbin/criu"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null());
        c
    }

    /// The root it runs from (what the restore helper is given).
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// The mounts of a sandbox a checkpoint leaves out, and the key each is
/// bound back by: `(path in the sandbox, key)`. Every other mount from
/// outside (device nodes, masked paths) is found by CRIU by its source.
pub fn external_mounts(spec: &SpawnSpec) -> Vec<(String, String)> {
    let mut mounts = vec![
        ("/workspace".to_string(), "ws".to_string()),
        ("/dev".to_string(), "dev".to_string()),
        ("/sys".to_string(), "sys".to_string()),
    ];
    for (i, b) in spec.binds.iter().enumerate() {
        mounts.push((b.target.clone(), format!("b{i}")));
    }
    mounts
}

/// A host file PID 1 holds open, which the checkpoint leaves out and the
/// restore opens again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostFile {
    /// Its own program (the mapping of its executable).
    Program,
    /// Its diagnostics ([`SpawnSpec::log`]).
    InitLog,
    /// The durable log's directory ([`SpawnSpec::logs`]).
    LogDir,
    /// A segment of the durable log.
    LogSegment { path: PathBuf },
    /// The lease deadline ([`SpawnSpec::lease`]).
    Lease,
}

/// What a checkpoint recorded for its restore (`sandstone.json` beside
/// CRIU's images), and what it must be restored onto.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Image {
    /// The runtime generation it was taken in: one resumed since (from
    /// its files) makes it stale.
    pub generation: i64,
    /// The inode of PID 1's listening socket, which the restore replaces
    /// with a new one at the same path.
    pub listener: u64,
    /// Each host file PID 1 held, by CRIU's key for it (`file[mnt:ino]`).
    pub files: Vec<(String, HostFile)>,
    /// The sandbox's id range and binds then: the restore makes the same.
    pub id_base: u32,
    pub binds: Vec<String>,
    /// PID 1's program then (size, modification time in nanoseconds): its
    /// code is mapped from the file, so another build cannot go on from
    /// its memory.
    pub program: (u64, i128),
}

const MANIFEST: &str = "sandstone.json";

impl Image {
    /// The checkpoint in `dir`, if one was completed there.
    pub fn load(dir: &Path) -> Option<Image> {
        let body = std::fs::read(dir.join(MANIFEST)).ok()?;
        serde_json::from_slice(&body).ok()
    }

    /// Why it cannot be restored onto `spec` by `program`, if it cannot.
    fn misfit(&self, spec: &SpawnSpec, program: (u64, i128)) -> Option<String> {
        let binds: Vec<&String> = spec.binds.iter().map(|b| &b.target).collect();
        if self.id_base != spec.id_base {
            Some(format!(
                "its id range moved ({} to {})",
                self.id_base, spec.id_base
            ))
        } else if self.binds.iter().collect::<Vec<_>>() != binds {
            Some(format!("its binds changed ({:?} to {binds:?})", self.binds))
        } else if self.program != program {
            Some("sandstone-init changed since it was taken".into())
        } else {
            None
        }
    }
}

/// A program file's identity for [`Image::program`].
fn program_id(meta: &std::fs::Metadata) -> (u64, i128) {
    let modified = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    (meta.len(), modified)
}

/// The inodes of the sockets process `pid` holds.
fn socket_inodes(pid: i32) -> Result<HashSet<u64>> {
    let dir = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&dir).map_err(|e| Error::sys(format!("read {dir}"), e))?;
    Ok(entries
        .flatten()
        .filter_map(|e| {
            let target = std::fs::read_link(e.path()).ok()?;
            let inode = target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?;
            inode.parse().ok()
        })
        .collect())
}

/// The unix sockets of process `pid`'s network namespace: (inode, path).
fn unix_sockets(pid: i32) -> Result<Vec<(u64, String)>> {
    let table = format!("/proc/{pid}/net/unix");
    let text =
        std::fs::read_to_string(&table).map_err(|e| Error::sys(format!("read {table}"), e))?;
    // Num RefCount Protocol Flags Type St Inode Path
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let inode = cols.get(6)?.parse().ok()?;
            Some((inode, cols.get(7).unwrap_or(&"").to_string()))
        })
        .collect())
}

/// Waits (2 s at most) until PID 1 holds no socket from outside its
/// network namespace: the connections it was told to end
/// (`Request::Quiesce`), the one that told it included, are closed.
fn wait_until_quiet(pid: i32) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let inside: HashSet<u64> = unix_sockets(pid)?.into_iter().map(|(i, _)| i).collect();
        if socket_inodes(pid)?.is_subset(&inside) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(Error::Other(
                "a connection to PID 1 is still open: it cannot be checkpointed".into(),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The last error lines of a CRIU log, for an error message.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Error") && !l.contains("RLIMIT_NOFILE"))
        .collect();
    errors[errors.len().saturating_sub(3)..].join("; ")
}

/// The mount ids of the mount namespace of process `pid`.
fn mount_ids(pid: i32) -> Result<HashSet<u64>> {
    let path = format!("/proc/{pid}/mountinfo");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::sys(format!("read {path}"), e))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .collect())
}

/// `mnt_id` in a `/proc/<pid>/fdinfo/<fd>` file.
fn fdinfo_mount(fdinfo: &str) -> Result<u64> {
    let text =
        std::fs::read_to_string(fdinfo).map_err(|e| Error::sys(format!("read {fdinfo}"), e))?;
    text.lines()
        .find_map(|l| l.strip_prefix("mnt_id:")?.trim().parse().ok())
        .ok_or_else(|| Error::Other(format!("{fdinfo} has no mnt_id")))
}

/// CRIU's key for a file: its mount and inode, in hex.
fn file_key(mount: u64, inode: u64) -> String {
    format!("file[{mount:x}:{inode:x}]")
}

/// The host files PID 1 may hold, by device and inode (their paths, read
/// back through /proc, are relative to whichever mount they were opened
/// through).
fn known_host_files(spec: &SpawnSpec) -> Vec<((u64, u64), HostFile)> {
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let mut known: Vec<((u64, u64), HostFile)> = Vec::new();
    known.extend(id(&spec.log).map(|k| (k, HostFile::InitLog)));
    if let Some(l) = &spec.lease {
        known.extend(id(&l.file).map(|k| (k, HostFile::Lease)));
    }
    if let Some(l) = &spec.logs {
        known.extend(id(&l.dir).map(|k| (k, HostFile::LogDir)));
        for entry in std::fs::read_dir(&l.dir).into_iter().flatten().flatten() {
            let path = entry.path();
            known.extend(id(&path).map(|k| (k, HostFile::LogSegment { path })));
        }
    }
    known
}

/// What each host file of PID 1 (`pid`) is, keyed as CRIU names it.
fn host_files(pid: i32, spec: &SpawnSpec) -> Result<Vec<(String, HostFile)>> {
    let ours = mount_ids(pid)?;
    let known = known_host_files(spec);
    let mut files = Vec::new();
    // The program: opened here, so its fdinfo names its mount.
    let exe = std::fs::File::open(format!("/proc/{pid}/exe"))
        .map_err(|e| Error::sys("open PID 1's program", e))?;
    let mount = fdinfo_mount(&format!("/proc/self/fdinfo/{}", exe.as_raw_fd()))?;
    let inode = exe.metadata().map_err(|e| Error::sys("stat", e))?.ino();
    if !ours.contains(&mount) {
        files.push((file_key(mount, inode), HostFile::Program));
    }
    let dir = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&dir).map_err(|e| Error::sys(format!("read {dir}"), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::sys(format!("read {dir}"), e))?;
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if !target.is_absolute() {
            continue; // sockets, pipes, anonymous inodes: inside
        }
        let fd = entry.file_name();
        let mount = fdinfo_mount(&format!("/proc/{pid}/fdinfo/{}", fd.to_string_lossy()))?;
        if ours.contains(&mount) {
            continue;
        }
        let meta = std::fs::metadata(entry.path())
            .map_err(|e| Error::sys(format!("stat {target:?}"), e))?;
        let what = known
            .iter()
            .find(|(k, _)| *k == (meta.dev(), meta.ino()))
            .map(|(_, what)| what.clone())
            .ok_or_else(|| {
                Error::Other(format!(
                    "PID 1 holds a host file a checkpoint cannot take: {target:?}"
                ))
            })?;
        files.push((file_key(mount, meta.ino()), what));
    }
    Ok(files)
}

/// The inode of PID 1's own socket listening at `path`. Only one of its
/// own: the sandbox's processes share the namespace's table, and may bind
/// sockets of that name inside their root.
fn listener_inode(pid: i32, path: &Path) -> Result<u64> {
    let own = socket_inodes(pid)?;
    let wanted = path.to_string_lossy();
    unix_sockets(pid)?
        .into_iter()
        .find(|(inode, p)| own.contains(inode) && *p == wanted)
        .map(|(inode, _)| inode)
        .ok_or_else(|| Error::Other(format!("PID 1 does not listen at {path:?}")))
}

/// Checkpoints the sandbox whose PID 1 is host pid `pid` (built from
/// `spec`, in runtime generation `generation`) into `dir`, which must be
/// empty: its processes are stopped, written out, and end. PID 1 must have
/// been told to end its connections (`Request::Quiesce`). When CRIU fails
/// the processes run on, as they were; an error after it succeeded (rare:
/// writing the manifest) leaves them ended, which the caller tells by
/// PID 1.
pub fn dump(criu: &Criu, pid: i32, spec: &SpawnSpec, generation: i64, dir: &Path) -> Result<Image> {
    wait_until_quiet(pid)?;
    let program = std::fs::metadata(format!("/proc/{pid}/exe"))
        .map_err(|e| Error::sys("stat PID 1's program", e))?;
    let image = Image {
        generation,
        listener: listener_inode(pid, &spec.socket)?,
        files: host_files(pid, spec)?,
        id_base: spec.id_base,
        binds: spec.binds.iter().map(|b| b.target.clone()).collect(),
        program: program_id(&program),
    };
    let netns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| Error::sys("open the sandbox's network namespace", e))?;
    let mut c = criu.command();
    c.arg("dump")
        .arg("-t")
        .arg(pid.to_string())
        .arg("-D")
        .arg(dir)
        .args(["-o", "dump.log", "--tcp-established", "--file-locks"])
        .args(["--external", "mnt[]"]);
    for (path, key) in external_mounts(spec) {
        c.arg("--external").arg(format!("mnt[{path}]:{key}"));
    }
    for (key, _) in &image.files {
        c.arg("--external").arg(key);
    }
    let ns = netns.as_fd().try_clone_to_owned().step(|| "dup".into())?;
    // SAFETY: between fork and exec the child only calls setns, which is
    // async-signal-safe, on a descriptor it owns a copy of.
    unsafe {
        c.pre_exec(move || sandstone_sys::process::setns(ns.as_fd(), libc::CLONE_NEWNET));
    }
    let out = c.output().map_err(|e| Error::sys("run criu dump", e))?;
    if !out.status.success() {
        return Err(Error::Other(format!(
            "criu dump failed: {}",
            log_tail(&dir.join("dump.log"))
        )));
    }
    // Restoring, CRIU reads some images from a task already in the
    // sandbox's new user namespace, before its ids are mapped (so with no
    // privilege over any file): they must be open to anyone who reaches
    // them. Nobody else does: they are in the data directory, root's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m))
            .map_err(|e| Error::sys(format!("chmod {p:?}"), e))
    };
    mode(dir, 0o711)?;
    for entry in std::fs::read_dir(dir).map_err(|e| Error::sys(format!("read {dir:?}"), e))? {
        mode(&entry.map_err(|e| Error::sys("read", e))?.path(), 0o644)?;
    }
    let body = serde_json::to_vec(&image).expect("the manifest serializes");
    std::fs::write(dir.join(MANIFEST), body).map_err(|e| Error::sys("write the manifest", e))?;
    Ok(image)
}

/// Where the restore helper stages what the checkpoint stands on.
const STAGE: &str = "/run/sandstone-restore";

/// What the daemon hands the restore helper (`sandstone-init restore`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreSpec {
    pub spawn: SpawnSpec,
    /// CRIU's root ([`Criu::root`]).
    pub criu: PathBuf,
    /// The checkpoint's directory.
    pub dir: PathBuf,
}

/// The restore helper: in new mount and network namespaces of its own it
/// makes what the checkpoint stands on as a spawn would, then runs CRIU,
/// which brings the processes back into them. Returns PID 1's host pid.
/// Single-threaded, as the spawn helper.
pub fn restore(r: &RestoreSpec) -> Result<i32> {
    let criu = Criu::at(&r.criu).ok_or_else(|| Error::Other(format!("no CRIU at {:?}", r.criu)))?;
    let image =
        Image::load(&r.dir).ok_or_else(|| Error::Other(format!("no checkpoint in {:?}", r.dir)))?;
    let spec = &r.spawn;
    // This helper is PID 1's program: the one the restored code runs from.
    let program = std::fs::metadata("/proc/self/exe").map_err(|e| Error::sys("stat", e))?;
    if let Some(why) = image.misfit(spec, program_id(&program)) {
        return Err(Error::Other(format!(
            "the checkpoint no longer fits: {why}"
        )));
    }
    crate::spawn::enter_namespaces(spec)?;
    // The staging tree must be reachable by the sandbox's root (CRIU binds
    // the external mounts in from inside its user namespace), so not under
    // the data directory: a tmpfs of this mount namespace alone, over a
    // directory of the host's /run kept empty for it.
    let stage = Path::new(STAGE);
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o711)
        .create(stage)
        .map_err(|e| Error::sys(format!("mkdir {STAGE}"), e))?;
    crate::sys::mount(
        None,
        stage,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=711,size=1m"),
    )?;
    let staged = crate::rootfs::assemble_for_restore(spec, stage)?;
    let _ = std::fs::remove_file(&spec.socket);
    let listener = std::os::unix::net::UnixListener::bind(&spec.socket)
        .map_err(|e| Error::sys(format!("bind {:?}", spec.socket), e))?;
    for f in &spec.cgroup_procs {
        std::fs::write(f, std::process::id().to_string())
            .map_err(|e| Error::sys(format!("join cgroup {f:?}"), e))?;
    }
    let mut held = vec![(
        listener
            .as_fd()
            .try_clone_to_owned()
            .step(|| "dup".into())?,
        format!("socket:[{}]", image.listener),
    )];
    for (key, what) in &image.files {
        held.push((open_host_file(spec, what)?.into(), key.clone()));
    }
    let pidfile = stage.join("restored.pid");
    let mut c = criu.command();
    c.arg("restore")
        .arg("-D")
        .arg(&r.dir)
        .args(["-o", "restore.log", "-d", "--tcp-close", "--file-locks"])
        .arg("--pidfile")
        .arg(&pidfile)
        .arg("--root")
        .arg(stage.join("root"))
        .args(["--ext-mount-map", "auto"]);
    for (key, path) in &staged {
        c.arg("--external")
            .arg(format!("mnt[{key}]:{}", path.display()));
    }
    for (fd, key) in &held {
        sandstone_sys::fd::set_inheritable(fd.as_fd()).step(|| "inheritable".into())?;
        c.arg("--inherit-fd")
            .arg(format!("fd[{}]:{key}", fd.as_raw_fd()));
    }
    let out = c.output().map_err(|e| Error::sys("run criu restore", e))?;
    if !out.status.success() {
        return Err(Error::Other(format!(
            "criu restore failed: {}",
            log_tail(&r.dir.join("restore.log"))
        )));
    }
    let pid =
        std::fs::read_to_string(&pidfile).map_err(|e| Error::sys("read the restored pid", e))?;
    pid.trim()
        .parse()
        .map_err(|_| Error::Other(format!("criu wrote a bad pid: {pid:?}")))
}

/// Opens again a host file PID 1 held, as it had it open. CRIU opens it
/// again through `/proc/self/fd` from inside the sandbox's user namespace,
/// so PID 1's own log is given to the sandbox's root.
fn open_host_file(spec: &SpawnSpec, what: &HostFile) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let append = |p: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| Error::sys(format!("open {p:?}"), e))
    };
    match what {
        HostFile::Program => {
            std::fs::File::open("/proc/self/exe").map_err(|e| Error::sys("open this program", e))
        }
        HostFile::InitLog => {
            let f = append(&spec.log)?;
            std::os::unix::fs::fchown(&f, Some(spec.id_base), Some(spec.id_base))
                .map_err(|e| Error::sys("chown PID 1's log", e))?;
            Ok(f)
        }
        HostFile::LogDir => {
            let dir = spec
                .logs
                .as_ref()
                .ok_or_else(|| Error::Other("the checkpoint had a log, this spec none".into()))?;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY)
                .open(&dir.dir)
                .map_err(|e| Error::sys("open the log directory", e))
        }
        HostFile::LogSegment { path } => append(path),
        HostFile::Lease => {
            let lease = spec
                .lease
                .as_ref()
                .ok_or_else(|| Error::Other("the checkpoint had a lease, this spec none".into()))?;
            std::fs::File::open(&lease.file).map_err(|e| Error::sys("open the lease file", e))
        }
    }
}
