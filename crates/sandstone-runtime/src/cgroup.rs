//! cgroup limits behind one interface, with a v1 backend (the hybrid hosts we
//! run on, where every resource controller is on v1) and a v2 backend (modern
//! unified hosts). Sandbox cgroups are created below the daemon's own cgroup in
//! each hierarchy, never at the root of somebody else's tree.

use crate::{Error, Result};
use sandstone_sys::Pid;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Resource limits for one sandbox. `None` leaves the controller unlimited.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    /// CPU bandwidth in millicores (1000 = one full core).
    pub cpu_millis: Option<u64>,
    pub pids: Option<u64>,
}

/// Which cgroup layout the host has.
#[derive(Debug, Clone)]
pub enum Driver {
    /// One directory per controller (memory, pids, cpu, freezer), each already
    /// resolved to "our own cgroup" + the Sandstone parent.
    V1 { parents: Vec<(Controller, PathBuf)> },
    /// The unified hierarchy; `parent` is our own cgroup + the Sandstone parent.
    V2 { parent: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    Memory,
    Pids,
    Cpu,
    Freezer,
    /// Accounting only (the CPU time a sandbox used): no limits live here.
    Cpuacct,
}

impl Controller {
    const ALL: [Controller; 5] = [
        Self::Memory,
        Self::Pids,
        Self::Cpu,
        Self::Freezer,
        Self::Cpuacct,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Pids => "pids",
            Self::Cpu => "cpu",
            Self::Freezer => "freezer",
            Self::Cpuacct => "cpuacct",
        }
    }
}

/// What a cgroup has used, as the kernel accounts it; `None` where the
/// host's hierarchy does not keep a figure (or the cgroup is gone).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// CPU time of every process that ever ran in it.
    pub cpu_seconds: Option<f64>,
    /// Memory charged now, page cache included.
    pub memory_bytes: Option<u64>,
    /// `memory_bytes` less the inactive file cache the kernel reclaims
    /// first: what the OOM killer weighs (as kubelet counts it).
    pub working_set_bytes: Option<u64>,
    /// The most memory charged at once since the cgroup was made.
    pub memory_peak_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub cpu_limit_cores: Option<f64>,
    pub pids: Option<u64>,
}

/// A cgroup's count of OOM kills, read through a handle kept open after
/// the first read: every synchronous exec reads it before and after, and
/// opening the file by its path (a walk through the cgroup file system)
/// cost more than reading it. Opened on first use, so an idle sandbox adds
/// no descriptor to the daemon's table (which every spawn helper's fork
/// copies). Reads of a removed cgroup's file fail, and count as none.
#[derive(Debug, Clone)]
pub struct OomCounter {
    path: Option<PathBuf>,
    file: std::sync::Arc<std::sync::OnceLock<Option<std::fs::File>>>,
}

impl OomCounter {
    pub fn read(&self) -> u64 {
        use std::os::unix::fs::FileExt;
        let file = self.file.get_or_init(|| {
            let path = self.path.as_ref()?;
            std::fs::File::open(path).ok()
        });
        let Some(f) = file else { return 0 };
        // Each read from offset 0 makes the kernel print the file anew.
        let mut buf = [0u8; 512];
        let n = f.read_at(&mut buf, 0).unwrap_or(0);
        std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(|text| keyed(text, "oom_kill"))
            .unwrap_or(0)
    }
}

/// One sandbox's cgroup (a directory per hierarchy).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Cgroup {
    pub dirs: Vec<PathBuf>,
    pub v2: bool,
}

const ROOT: &str = "/sys/fs/cgroup";

/// Our own path in a hierarchy, from `/proc/self/cgroup` (`N:ctrls:/path`).
fn own_path(proc_cgroup: &str, controller: Option<&str>) -> Option<String> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = match controller {
            Some(c) => ctrls.split(',').any(|x| x == c),
            None => ctrls.is_empty(),
        };
        hit.then(|| path.to_string())
    })
}

fn join_rel(base: &Path, rel: &str) -> PathBuf {
    base.join(rel.trim_start_matches('/'))
}

/// Makes cgroup migrations fast by remounting the cgroup2 hierarchy with
/// `favordynmods` (kernel ≥ 6.0). Every new sandbox moves a process into its
/// cgroups; without it each move may wait for an RCU grace period (measured
/// here: p90 10.8 ms vs 0.5 ms). The trade-off, slightly dearer fork and
/// exit, is the kernel's documented one. Returns whether it was changed.
pub fn favor_dynamic_modifications() -> Result<bool> {
    let mounts =
        std::fs::read_to_string("/proc/mounts").map_err(|e| Error::sys("read /proc/mounts", e))?;
    let Some((target, opts)) = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 3 && f[2] == "cgroup2").then(|| (f[1].to_string(), f[3].to_string()))
    }) else {
        return Ok(false);
    };
    if opts.split(',').any(|o| o == "favordynmods") {
        return Ok(false);
    }
    // The mount tool keeps the mount's other options across the remount.
    let status = std::process::Command::new("mount")
        .args(["-o", "remount,favordynmods", &target])
        .status()
        .map_err(|e| Error::sys("run mount", e))?;
    if !status.success() {
        return Err(Error::Other(format!(
            "remount {target} with favordynmods failed ({status})"
        )));
    }
    Ok(true)
}

impl Driver {
    /// Detects the host layout and prepares `<own cgroup>/<group>` parents.
    pub fn detect(group: &str) -> Result<Driver> {
        let unified_ctrls = std::fs::read_to_string(format!("{ROOT}/cgroup.controllers")).ok();
        match unified_ctrls {
            Some(c) if c.split_whitespace().any(|x| x == "memory") => {
                Self::v2(Path::new(ROOT), group)
            }
            _ => Self::v1(group),
        }
    }

    fn proc_cgroup() -> Result<String> {
        std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| Error::sys("read /proc/self/cgroup", e))
    }

    /// The v1 backend: one directory per controller hierarchy.
    pub fn v1(group: &str) -> Result<Driver> {
        let proc_cgroup = Self::proc_cgroup()?;
        let mut parents = Vec::new();
        for c in Controller::ALL {
            // Without a cpuacct hierarchy only the CPU time metric is
            // lost; every other controller is required.
            if c == Controller::Cpuacct && !Path::new(ROOT).join(c.name()).exists() {
                continue;
            }
            let own = own_path(&proc_cgroup, Some(c.name())).unwrap_or_default();
            let base = join_rel(&Path::new(ROOT).join(c.name()), &own);
            parents.push((c, join_rel(&base, group)));
        }
        let driver = Driver::V1 { parents };
        driver.ensure_parents()?;
        Ok(driver)
    }

    /// The v2 backend on the unified hierarchy mounted at `mount`.
    pub fn v2(mount: &Path, group: &str) -> Result<Driver> {
        let own = own_path(&Self::proc_cgroup()?, None).unwrap_or_default();
        let parent = join_rel(&join_rel(mount, &own), group);
        let driver = Driver::V2 { parent };
        driver.ensure_parents()?;
        Ok(driver)
    }

    fn ensure_parents(&self) -> Result<()> {
        match self {
            Driver::V1 { parents } => {
                for (_, p) in parents {
                    mkdir(p)?;
                }
            }
            Driver::V2 { parent } => {
                mkdir(parent)?;
                // Children can only use controllers their parent delegates;
                // delegate those of ours the host has.
                let have =
                    std::fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
                let wanted: Vec<String> = ["memory", "pids", "cpu"]
                    .iter()
                    .filter(|c| have.split_whitespace().any(|h| h == **c))
                    .map(|c| format!("+{c}"))
                    .collect();
                if !wanted.is_empty() {
                    write(&parent.join("cgroup.subtree_control"), &wanted.join(" "))?;
                }
            }
        }
        Ok(())
    }

    /// Names of the cgroups under the parents (in any hierarchy).
    pub fn children(&self) -> Vec<String> {
        let parents: Vec<&PathBuf> = match self {
            Driver::V1 { parents } => parents.iter().map(|(_, p)| p).collect(),
            Driver::V2 { parent } => vec![parent],
        };
        let mut names: Vec<String> = parents
            .into_iter()
            .flat_map(|p| std::fs::read_dir(p).into_iter().flatten().flatten())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Removes the (empty) parent directories; a no-op while sandboxes
    /// remain in them.
    pub fn remove_parents(&self) {
        let dirs: Vec<&PathBuf> = match self {
            Driver::V1 { parents } => parents.iter().map(|(_, p)| p).collect(),
            Driver::V2 { parent } => vec![parent],
        };
        for d in dirs {
            let _ = std::fs::remove_dir(d);
        }
    }

    pub fn is_v2(&self) -> bool {
        matches!(self, Driver::V2 { .. })
    }

    /// Creates the cgroup `name` with `limits` applied. On failure nothing is
    /// left behind.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<Cgroup> {
        let cg = match self {
            Driver::V1 { parents } => Cgroup {
                dirs: parents.iter().map(|(_, p)| p.join(name)).collect(),
                v2: false,
            },
            Driver::V2 { parent } => Cgroup {
                dirs: vec![parent.join(name)],
                v2: true,
            },
        };
        let applied = (|| {
            for d in &cg.dirs {
                mkdir(d)?;
            }
            self.apply(&cg, limits)
        })();
        if let Err(e) = applied {
            let _ = cg.destroy();
            return Err(e);
        }
        Ok(cg)
    }

    /// The existing cgroup `name` (for re-adoption), without touching it.
    pub fn existing(&self, name: &str) -> Cgroup {
        match self {
            Driver::V1 { parents } => Cgroup {
                dirs: parents.iter().map(|(_, p)| p.join(name)).collect(),
                v2: false,
            },
            Driver::V2 { parent } => Cgroup {
                dirs: vec![parent.join(name)],
                v2: true,
            },
        }
    }

    /// Sets (or changes) the limits of an existing cgroup.
    pub fn apply(&self, cg: &Cgroup, l: &Limits) -> Result<()> {
        match self {
            Driver::V1 { parents } => {
                for ((ctrl, _), dir) in parents.iter().zip(&cg.dirs) {
                    match ctrl {
                        Controller::Memory => {
                            if let Some(m) = l.memory_bytes {
                                // Without swap accounting the limit is the whole story;
                                // where it exists, forbid swapping past it too. The
                                // kernel keeps memory <= memory+swap at every step, so
                                // a raise sets memsw first and a cut sets it last.
                                let mem = dir.join("memory.limit_in_bytes");
                                let memsw = dir.join("memory.memsw.limit_in_bytes");
                                let raising = std::fs::read_to_string(&mem)
                                    .ok()
                                    .and_then(|v| v.trim().parse::<u64>().ok())
                                    .is_some_and(|now| m > now);
                                let mut order = vec![&mem];
                                if memsw.exists() {
                                    if raising {
                                        order.insert(0, &memsw);
                                    } else {
                                        order.push(&memsw);
                                    }
                                }
                                for f in order {
                                    write(f, &m.to_string())?;
                                }
                            }
                        }
                        Controller::Pids => {
                            if let Some(p) = l.pids {
                                write(&dir.join("pids.max"), &p.to_string())?;
                            }
                        }
                        Controller::Cpu => {
                            if let Some(c) = l.cpu_millis {
                                write(&dir.join("cpu.cfs_period_us"), "100000")?;
                                write(&dir.join("cpu.cfs_quota_us"), &(c * 100).to_string())?;
                            }
                        }
                        Controller::Freezer | Controller::Cpuacct => {}
                    }
                }
            }
            Driver::V2 { .. } => {
                let dir = &cg.dirs[0];
                if let Some(m) = l.memory_bytes {
                    write(&dir.join("memory.max"), &m.to_string())?;
                    write(&dir.join("memory.swap.max"), "0").ok();
                }
                if let Some(p) = l.pids {
                    write(&dir.join("pids.max"), &p.to_string())?;
                }
                if let Some(c) = l.cpu_millis {
                    write(&dir.join("cpu.max"), &format!("{} 100000", c * 100))?;
                }
            }
        }
        Ok(())
    }
}

impl Cgroup {
    /// Files a process joins the cgroup through (one per hierarchy).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Moves process `pid` into the cgroup.
    pub fn add(&self, pid: u32) -> Result<()> {
        for f in self.procs_files() {
            write(&f, &pid.to_string())?;
        }
        Ok(())
    }

    /// The directory of `controller`: the one directory on v2, the one in
    /// that controller's hierarchy on v1.
    fn dir_of(&self, controller: Controller) -> Option<&Path> {
        if self.v2 {
            return self.dirs.first().map(|d| d.as_path());
        }
        self.dirs
            .iter()
            .find(|d| d.components().any(|c| c.as_os_str() == controller.name()))
            .map(|d| d.as_path())
    }

    fn read(&self, controller: Controller, file: &str) -> Option<String> {
        std::fs::read_to_string(self.dir_of(controller)?.join(file)).ok()
    }

    /// How many processes the kernel OOM-killed in this cgroup so far.
    pub fn oom_kills(&self) -> u64 {
        self.oom_counter().read()
    }

    /// The cgroup's OOM-kill counter (its file opened at the first read).
    pub fn oom_counter(&self) -> OomCounter {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        OomCounter {
            path: self.dir_of(Controller::Memory).map(|d| d.join(file)),
            file: Default::default(),
        }
    }

    /// What the cgroup has used so far and holds now (a few small reads).
    pub fn usage(&self) -> Usage {
        use Controller::*;
        let number = |c, file| {
            self.read(c, file)
                .and_then(|t| t.trim().parse::<u64>().ok())
        };
        let stat = |file, key| self.read(Memory, file).and_then(|t| keyed(&t, key));
        let u = if self.v2 {
            Usage {
                cpu_seconds: self
                    .read(Cpu, "cpu.stat")
                    .and_then(|t| keyed(&t, "usage_usec"))
                    .map(|us| us as f64 / 1e6),
                memory_bytes: number(Memory, "memory.current"),
                working_set_bytes: None,
                memory_peak_bytes: number(Memory, "memory.peak"),
                memory_limit_bytes: number(Memory, "memory.max"),
                cpu_limit_cores: self.read(Cpu, "cpu.max").and_then(|t| cpu_max(&t)),
                pids: number(Pids, "pids.current"),
            }
        } else {
            Usage {
                cpu_seconds: number(Cpuacct, "cpuacct.usage").map(|ns| ns as f64 / 1e9),
                memory_bytes: number(Memory, "memory.usage_in_bytes"),
                working_set_bytes: None,
                memory_peak_bytes: number(Memory, "memory.max_usage_in_bytes"),
                memory_limit_bytes: number(Memory, "memory.limit_in_bytes")
                    .filter(|b| *b < V1_UNLIMITED),
                cpu_limit_cores: cfs_quota(
                    &self.read(Cpu, "cpu.cfs_quota_us").unwrap_or_default(),
                    &self.read(Cpu, "cpu.cfs_period_us").unwrap_or_default(),
                ),
                pids: number(Pids, "pids.current"),
            }
        };
        let inactive = if self.v2 {
            stat("memory.stat", "inactive_file")
        } else {
            stat("memory.stat", "total_inactive_file")
        };
        Usage {
            working_set_bytes: u
                .memory_bytes
                .map(|m| m.saturating_sub(inactive.unwrap_or(0))),
            ..u
        }
    }

    /// Pids currently in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(&self.procs_files()[0])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Kills every process in the cgroup and waits (bounded) until it is empty.
    pub fn kill_all(&self) {
        for _ in 0..2000 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for p in pids {
                // Gone already is as good as killed.
                let _ = sandstone_sys::process::kill(Pid::from_raw(p), libc::SIGKILL);
            }
            // A frozen cgroup holds its SIGKILLed processes until thawed.
            let _ = self.set_frozen(false);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Freezes (or thaws) every process of the cgroup and waits, bounded,
    /// until the kernel reports the new state.
    pub fn set_frozen(&self, frozen: bool) -> Result<()> {
        let dir = self
            .dir_of(Controller::Freezer)
            .ok_or_else(|| Error::Other("no freezer hierarchy".into()))?;
        let (file, value, check_file, done): (&str, &str, &str, &str) = match (self.v2, frozen) {
            (true, true) => ("cgroup.freeze", "1", "cgroup.events", "frozen 1"),
            (true, false) => ("cgroup.freeze", "0", "cgroup.events", "frozen 0"),
            (false, true) => ("freezer.state", "FROZEN", "freezer.state", "FROZEN"),
            (false, false) => ("freezer.state", "THAWED", "freezer.state", "THAWED"),
        };
        // A task in the middle of I/O (writeback throttling, a btrfs
        // transaction) freezes only once it gets out, which under load can
        // take far longer than the usual microseconds; v1 also wants FROZEN
        // written again while it reports FREEZING. Poll fast first, then back
        // off, rewriting the request now and then, up to a generous bound.
        let start = std::time::Instant::now();
        let mut pause = std::time::Duration::from_micros(100);
        let mut rewritten = start;
        write(&dir.join(file), value)?;
        while start.elapsed() < FREEZE_TIMEOUT {
            let state = std::fs::read_to_string(dir.join(check_file)).unwrap_or_default();
            if state.lines().any(|l| l.trim() == done) {
                return Ok(());
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(std::time::Duration::from_millis(10));
            if rewritten.elapsed() > std::time::Duration::from_millis(100) {
                write(&dir.join(file), value)?;
                rewritten = std::time::Instant::now();
            }
        }
        Err(Error::Other(format!(
            "cgroup did not reach {done} within {FREEZE_TIMEOUT:?}"
        )))
    }

    /// Removes the cgroup directories (the cgroup must be empty).
    pub fn destroy(&self) -> Result<()> {
        let mut first_err = None;
        for d in &self.dirs {
            if let Err(e) = std::fs::remove_dir(d)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                first_err.get_or_insert(Error::sys(format!("rmdir {d:?}"), e));
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// v1 reports "no memory limit" as the largest page count in bytes; any
/// figure this large is that, not a limit.
const V1_UNLIMITED: u64 = 1 << 62;

/// The value of `key` in a flat keyed file (`memory.stat`, `cpu.stat`,
/// `memory.events`: one `key value` per line).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Cores allowed by v2's `cpu.max` (`<quota> <period>`, or `max …`).
fn cpu_max(text: &str) -> Option<f64> {
    let (quota, period) = text.trim().split_once(' ')?;
    cfs_quota(quota, period)
}

/// Cores allowed by a CFS quota and period in microseconds; `None` when
/// unlimited (`-1` on v1, `max` on v2).
fn cfs_quota(quota: &str, period: &str) -> Option<f64> {
    let quota: u64 = quota.trim().parse().ok()?;
    let period: u64 = period.trim().parse().ok().filter(|p| *p > 0)?;
    Some(quota as f64 / period as f64)
}

/// How long a freeze or thaw may take before it is an error.
const FREEZE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn mkdir(p: &Path) -> Result<()> {
    match std::fs::create_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::sys(format!("mkdir {p:?}"), e)),
    }
}

fn write(p: &Path, v: &str) -> Result<()> {
    std::fs::write(p, v).map_err(|e| Error::sys(format!("write {v:?} to {p:?}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exercises a backend end to end: create, add a process, see it, kill
    /// everything, remove. Needs root.
    fn lifecycle(driver: &Driver, limits: &Limits) {
        let name = format!("t-{}", std::process::id());
        let cg = driver.create(&name, limits).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        cg.add(child.id()).unwrap();
        assert_eq!(cg.pids(), vec![child.id() as i32]);
        cg.kill_all();
        assert!(child.wait().unwrap().code().is_none(), "killed by a signal");
        assert!(cg.pids().is_empty());
        cg.destroy().unwrap();
        assert!(cg.dirs.iter().all(|d| !d.exists()));
    }

    #[test]
    fn v1_backend_applies_limits() {
        assert_eq!(
            sandstone_sys::process::geteuid(),
            0,
            "cgroup tests need root"
        );
        let driver = Driver::v1("sandstone-unit-v1").unwrap();
        let limits = Limits {
            memory_bytes: Some(64 << 20),
            cpu_millis: Some(500),
            pids: Some(32),
        };
        let cg = driver.create("limits", &limits).unwrap();
        let read = |ctrl: &str, file: &str| {
            let dir = cg
                .dirs
                .iter()
                .find(|d| d.components().any(|c| c.as_os_str() == ctrl))
                .unwrap();
            std::fs::read_to_string(dir.join(file))
                .unwrap()
                .trim()
                .to_string()
        };
        assert_eq!(
            read("memory", "memory.limit_in_bytes"),
            (64u64 << 20).to_string()
        );
        assert_eq!(read("pids", "pids.max"), "32");
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
        cg.destroy().unwrap();
        lifecycle(&driver, &limits);
        driver.remove_parents();
    }

    #[test]
    fn v2_backend_on_the_unified_hierarchy() {
        assert_eq!(
            sandstone_sys::process::geteuid(),
            0,
            "cgroup tests need root"
        );
        // This host's unified hierarchy has no resource controllers (they are
        // bound to v1), so only membership, kill and removal run here; a
        // limit it cannot apply is a clear error, not a silent no-op.
        let mount = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            Path::new("/sys/fs/cgroup")
        } else {
            Path::new("/sys/fs/cgroup/unified")
        };
        let driver = Driver::v2(mount, "sandstone-unit-v2").unwrap();
        assert!(driver.is_v2());
        lifecycle(&driver, &Limits::default());
        let has_memory = std::fs::read_to_string(mount.join("cgroup.controllers"))
            .unwrap()
            .contains("memory");
        let capped = Limits {
            memory_bytes: Some(64 << 20),
            ..Default::default()
        };
        if has_memory {
            lifecycle(&driver, &capped);
        } else {
            let err = driver.create("nomem", &capped).unwrap_err().to_string();
            assert!(err.contains("memory.max"), "{err}");
            assert!(
                !driver.existing("nomem").dirs[0].exists(),
                "a failed create leaves nothing"
            );
        }
        driver.remove_parents();
    }

    #[test]
    fn flat_keyed_files_and_cpu_limits_parse() {
        let stat = "cache 10\ntotal_inactive_file 4096\ninactive_file 7\n";
        assert_eq!(keyed(stat, "total_inactive_file"), Some(4096));
        assert_eq!(keyed(stat, "inactive_file"), Some(7));
        assert_eq!(keyed(stat, "active_file"), None);
        assert_eq!(
            keyed("oom_kill_disable 0\noom_kill 3\n", "oom_kill"),
            Some(3)
        );
        assert_eq!(
            keyed("usage_usec 1500000\nuser_usec 1\n", "usage_usec"),
            Some(1_500_000)
        );
        assert_eq!(cpu_max("50000 100000\n"), Some(0.5));
        assert_eq!(cpu_max("max 100000\n"), None);
        assert_eq!(cfs_quota("200000\n", "100000\n"), Some(2.0));
        assert_eq!(cfs_quota("-1\n", "100000\n"), None);
        assert_eq!(cfs_quota("100", "0"), None);
    }

    #[test]
    fn usage_reads_a_v1_and_a_v2_cgroup() {
        let root = tempfile::tempdir().unwrap();
        let dir = |c: &str| {
            let d = root.path().join(c).join("sb");
            std::fs::create_dir_all(&d).unwrap();
            d
        };
        let files = |d: &Path, f: &[(&str, &str)]| {
            for (name, text) in f {
                std::fs::write(d.join(name), text).unwrap();
            }
        };
        let v1 = Cgroup {
            dirs: ["memory", "pids", "cpu", "freezer", "cpuacct"]
                .iter()
                .map(|c| dir(c))
                .collect(),
            v2: false,
        };
        files(
            &v1.dirs[0],
            &[
                ("memory.usage_in_bytes", "1000\n"),
                ("memory.max_usage_in_bytes", "3000\n"),
                ("memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory.stat", "cache 5\ntotal_inactive_file 400\n"),
            ],
        );
        files(&v1.dirs[1], &[("pids.current", "7\n")]);
        files(
            &v1.dirs[2],
            &[
                ("cpu.cfs_quota_us", "50000\n"),
                ("cpu.cfs_period_us", "100000\n"),
            ],
        );
        files(&v1.dirs[4], &[("cpuacct.usage", "2500000000\n")]);
        assert_eq!(
            v1.usage(),
            Usage {
                cpu_seconds: Some(2.5),
                memory_bytes: Some(1000),
                working_set_bytes: Some(600),
                memory_peak_bytes: Some(3000),
                memory_limit_bytes: None,
                cpu_limit_cores: Some(0.5),
                pids: Some(7),
            }
        );
        let v2 = Cgroup {
            dirs: vec![dir("unified")],
            v2: true,
        };
        files(
            &v2.dirs[0],
            &[
                ("cpu.stat", "usage_usec 1500000\nuser_usec 1000000\n"),
                ("cpu.max", "max 100000\n"),
                ("memory.current", "2048\n"),
                ("memory.max", "4096\n"),
                ("memory.stat", "anon 1\ninactive_file 48\n"),
                ("pids.current", "2\n"),
            ],
        );
        assert_eq!(
            v2.usage(),
            Usage {
                cpu_seconds: Some(1.5),
                memory_bytes: Some(2048),
                working_set_bytes: Some(2000),
                memory_peak_bytes: None,
                memory_limit_bytes: Some(4096),
                cpu_limit_cores: None,
                pids: Some(2),
            }
        );
        let gone = Cgroup {
            dirs: vec![root.path().join("nothing")],
            v2: true,
        };
        assert_eq!(gone.usage(), Usage::default());
    }

    #[test]
    fn own_path_reads_v1_and_v2_lines() {
        let text = "9:name=systemd:/\n4:memory:/sup/abc\n1:cpu,cpuacct:/x\n0::/u\n";
        assert_eq!(own_path(text, Some("memory")).as_deref(), Some("/sup/abc"));
        assert_eq!(own_path(text, Some("cpuacct")).as_deref(), Some("/x"));
        assert_eq!(own_path(text, None).as_deref(), Some("/u"));
        assert_eq!(own_path(text, Some("pids")), None);
    }
}
