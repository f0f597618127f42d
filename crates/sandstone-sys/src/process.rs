//! Processes: pids, signals, waiting, cloning into namespaces, sessions
//! and credentials.

use crate::{cvt, owned};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// A process id (in the caller's pid namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pid(libc::pid_t);

impl Pid {
    pub const fn from_raw(pid: libc::pid_t) -> Pid {
        Pid(pid)
    }

    pub const fn as_raw(self) -> libc::pid_t {
        self.0
    }

    /// This process.
    pub fn this() -> Pid {
        // SAFETY: getpid cannot fail and touches no memory.
        Pid(unsafe { libc::getpid() })
    }
}

impl std::fmt::Display for Pid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Sends `signal` to the process `pid`. Async-signal-safe.
pub fn kill(pid: Pid, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill touches no memory of ours.
    cvt(unsafe { libc::kill(pid.0, signal) })?;
    Ok(())
}

/// Sends `signal` to the process group led by `leader`.
pub fn kill_group(leader: Pid, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill touches no memory of ours.
    cvt(unsafe { libc::kill(-leader.0, signal) })?;
    Ok(())
}

/// How a process ended, decoded from a wait status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// Decodes the status waitpid(2) stores.
    pub fn from_wait_status(status: libc::c_int) -> Exit {
        if libc::WIFSIGNALED(status) {
            Exit::Signal(libc::WTERMSIG(status))
        } else {
            Exit::Code(libc::WEXITSTATUS(status))
        }
    }
}

/// Waits for the child `pid` to end and reaps it.
pub fn wait(pid: Pid) -> io::Result<Exit> {
    let mut status = 0;
    // SAFETY: `status` is a live int waitpid writes into.
    cvt(unsafe { libc::waitpid(pid.0, &mut status, 0) })?;
    Ok(Exit::from_wait_status(status))
}

/// Reaps the child `pid` if it has ended; `None` if it is still running
/// (or is not a child to reap any more).
pub fn try_wait(pid: Pid) -> io::Result<Option<Exit>> {
    let mut status = 0;
    // SAFETY: `status` is a live int waitpid writes into.
    let got = cvt(unsafe { libc::waitpid(pid.0, &mut status, libc::WNOHANG) })?;
    Ok((got == pid.0).then(|| Exit::from_wait_status(status)))
}

/// A child that has ended, left unreaped (waitid with `WNOWAIT`), so the
/// caller can decide who reaps it; `None` when none has ended.
pub fn peek_ended_child() -> io::Result<Option<Pid>> {
    // SAFETY: siginfo_t is plain data for which all zeroes is a value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    // SAFETY: `info` is a live siginfo_t waitid writes into.
    cvt(unsafe { libc::waitid(libc::P_ALL, 0, &mut info, flags) })?;
    // SAFETY: waitid filled (or, with WNOHANG and nothing ended, left
    // zeroed) the child fields of `info`, which si_pid reads.
    let pid = unsafe { info.si_pid() };
    Ok((pid != 0).then_some(Pid(pid)))
}

/// Blocks `signal` in the calling thread; threads it starts afterwards
/// inherit the mask.
pub fn block_signal(signal: libc::c_int) -> io::Result<()> {
    let set = signal_set(signal);
    // SAFETY: `set` is an initialized sigset_t; the old mask is not asked for.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Waits until `signal` (blocked in every thread) is pending, and takes it.
pub fn wait_for_signal(signal: libc::c_int) -> io::Result<()> {
    let set = signal_set(signal);
    // SAFETY: `set` is an initialized sigset_t; no siginfo is asked for.
    cvt(unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) })?;
    Ok(())
}

fn signal_set(signal: libc::c_int) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initializes it below.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live sigset_t; both calls only write into it (and
    // fail only for an invalid signal number, which leaves the set empty).
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
    }
    set
}

/// Starts a new session with the caller as its leader. Async-signal-safe.
pub fn setsid() -> io::Result<Pid> {
    // SAFETY: setsid touches no memory.
    Ok(Pid(cvt(unsafe { libc::setsid() })?))
}

/// Ends the process at once (_exit): no destructors, no atexit handlers,
/// no buffered output flushed. Async-signal-safe.
pub fn exit_immediately(code: libc::c_int) -> ! {
    // SAFETY: _exit never returns and runs nothing of this process's that
    // another thread could be in the middle of.
    unsafe { libc::_exit(code) }
}

/// What [`clone_process`] returned on one side of the fork.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloned {
    /// In the new process.
    Child,
    /// In the caller, with the child's pid.
    Parent(Pid),
}

/// Forks into new namespaces: clone(2) with `flags` (`CLONE_NEW*`) and
/// `SIGCHLD` as the exit signal, like fork otherwise.
///
/// # Safety
/// As for fork: the child gets a copy of only the calling thread. If the
/// process has other threads, the child may call only async-signal-safe
/// functions (no allocation, no locks) until it execs or exits; a
/// single-threaded caller has no such limit.
pub unsafe fn clone_process(flags: libc::c_int) -> io::Result<Cloned> {
    let flags = (flags | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: clone with no new stack and no pointer arguments behaves as
    // fork; the caller keeps the child within fork's rules.
    let pid = cvt(unsafe { libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0) })?;
    Ok(match pid {
        0 => Cloned::Child,
        pid => Cloned::Parent(Pid(pid as libc::pid_t)),
    })
}

/// A pidfd for `pid` (readable once the process has ended), close-on-exec:
/// how a process learns of the end of one that is not its child.
pub fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes no pointers and returns a new descriptor.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid.0, 0) })
}

/// `pidfd_send_signal`'s flag (Linux 6.9) for the process group the
/// pidfd's process leads; not in libc yet.
const PIDFD_SIGNAL_PROCESS_GROUP: libc::c_uint = 1 << 2;

/// Sends `signal` to the process group led by the process of `pidfd`.
/// Unlike `kill(-pid)` it names the group by the process, not by its
/// number: once the group is gone it is ESRCH, even if the number has
/// since gone to another process.
pub fn signal_group_of(pidfd: BorrowedFd<'_>, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: a null siginfo is allowed (the kernel fills in a kill's);
    // the descriptor is borrowed for the call.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            PIDFD_SIGNAL_PROCESS_GROUP,
        )
    })?;
    Ok(())
}

/// Executes the program open at `exe` (execveat with an empty path), with
/// `args` (the first is its name) and `env` (`KEY=value`). Returns only on
/// failure. Unlike a path, the descriptor may name a file no longer
/// reachable from the caller's root.
pub fn exec_fd(exe: BorrowedFd<'_>, args: &[&CStr], env: &[&CStr]) -> io::Error {
    let argv: Vec<*const libc::c_char> = args
        .iter()
        .map(|a| a.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let envp: Vec<*const libc::c_char> = env
        .iter()
        .map(|e| e.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    // SAFETY: both arrays are NULL-terminated and point at NUL-terminated
    // strings that outlive the call; the empty path is a static C string.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            exe.as_raw_fd(),
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    io::Error::last_os_error()
}

/// Moves the calling thread out of namespaces it shares (unshare(2),
/// `flags` of `CLONE_NEW*`).
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes no pointers.
    cvt(unsafe { libc::unshare(flags) })?;
    Ok(())
}

/// Moves the calling thread into the namespace `ns` refers to, which must
/// be of type `nstype` (`CLONE_NEWNET`, `CLONE_NEWNS`, ...).
pub fn setns(ns: BorrowedFd<'_>, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: setns takes a descriptor we borrow for the call and no pointers.
    cvt(unsafe { libc::setns(ns.as_raw_fd(), nstype) })?;
    Ok(())
}

/// The effective user id.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// Sets real, effective and saved user ids to `id`.
pub fn setresuid(id: u32) -> io::Result<()> {
    // SAFETY: setresuid takes no pointers.
    cvt(unsafe { libc::setresuid(id, id, id) })?;
    Ok(())
}

/// Sets real, effective and saved group ids to `id`.
pub fn setresgid(id: u32) -> io::Result<()> {
    // SAFETY: setresgid takes no pointers.
    cvt(unsafe { libc::setresgid(id, id, id) })?;
    Ok(())
}

/// Drops every supplementary group.
pub fn clear_groups() -> io::Result<()> {
    // SAFETY: a zero-length list; the null pointer is never read.
    cvt(unsafe { libc::setgroups(0, std::ptr::null()) })?;
    Ok(())
}

/// Sets the filesystem user and group ids (the ids file access is checked
/// and files are created with) to `id`. These calls cannot report failure.
pub fn set_fs_ids(id: u32) {
    // SAFETY: setfsgid and setfsuid take no pointers.
    unsafe {
        libc::setfsgid(id);
        libc::setfsuid(id);
    }
}

/// Sets the UTS namespace's hostname.
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s live bytes, which
    // the kernel copies (no NUL needed).
    cvt(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })?;
    Ok(())
}

/// The parent's process id (1, or a subreaper's, once the parent ended).
pub fn parent_pid() -> Pid {
    // SAFETY: getppid takes nothing and cannot fail.
    Pid::from_raw(unsafe { libc::getppid() })
}

/// Makes `path` this process's root directory: no path it resolves
/// afterwards (`..` included) leads above it.
pub fn chroot(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated and outlives the call.
    cvt(unsafe { libc::chroot(path.as_ptr()) })?;
    Ok(())
}

/// Changes the working directory (async-signal-safe, unlike std's, which
/// may allocate).
pub fn chdir(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated and outlives the call.
    cvt(unsafe { libc::chdir(path.as_ptr()) })?;
    Ok(())
}

/// Time since boot on `CLOCK_MONOTONIC`, the clock `std::time::Instant`
/// reads on Linux, and the same for every process on the host: what a
/// daemon and its sandboxes' inits compare deadlines on.
pub fn monotonic() -> std::time::Duration {
    clock(libc::CLOCK_MONOTONIC)
}

/// CPU time the calling thread has used.
pub fn thread_cpu_time() -> std::time::Duration {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// Reads clock `id`, one that always exists on Linux.
fn clock(id: libc::clockid_t) -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live timespec clock_gettime writes into; both
    // callers pass a clock that always exists on Linux, so it cannot fail.
    unsafe { libc::clock_gettime(id, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Sets every signal this process ignores back to its default action, but
/// those in `keep`. An ignored signal stays ignored across fork and exec,
/// so what whoever started this process ignored (a shell's `&` ignores
/// SIGINT and SIGQUIT; glibc's `posix_spawn` leaves its own signals 32 and
/// 33 ignored) would otherwise reach every program it starts. The kernel's
/// call is used, not glibc's `sigaction`, which refuses glibc's signals.
pub fn unignore_signals(keep: &[libc::c_int]) {
    /// The kernel's `struct sigaction` (x86-64 layout: glibc's differs).
    #[repr(C)]
    #[derive(Default)]
    struct KernelSigaction {
        handler: usize,
        flags: libc::c_ulong,
        restorer: usize,
        mask: u64,
    }
    let call = |signal: libc::c_int, new: Option<&KernelSigaction>, old: &mut KernelSigaction| {
        // SAFETY: rt_sigaction reads `new` (or nothing, when null) and
        // writes `old`, both live structs of the kernel's layout, with the
        // kernel's sigset size (8 bytes).
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                new.map_or(std::ptr::null(), std::ptr::from_ref),
                std::ptr::from_mut(old),
                std::mem::size_of::<u64>(),
            )
        }
    };
    for signal in 1..=libc::SIGRTMAX() {
        let mut old = KernelSigaction::default();
        if keep.contains(&signal) || call(signal, None, &mut old) != 0 {
            continue;
        }
        if old.handler == libc::SIG_IGN {
            // SIG_DFL is 0: the default struct. SIGKILL and SIGSTOP are
            // never ignored, so never asked.
            call(signal, Some(&KernelSigaction::default()), &mut old);
        }
    }
}

/// What [`spawn`] starts.
pub struct Spawn<'a> {
    /// The program's path (no PATH search: the caller resolves it, with
    /// the child's own PATH).
    pub program: &'a CStr,
    pub argv: &'a [std::ffi::CString],
    /// `NAME=value` each: the child's whole environment.
    pub env: &'a [std::ffi::CString],
    pub cwd: &'a CStr,
    /// The child's descriptors 0, 1 and 2 (each at least 3 here).
    pub stdio: [BorrowedFd<'a>; 3],
}

/// Starts a program with one `posix_spawn`, which glibc makes a
/// `clone(CLONE_VM|CLONE_VFORK)`: nothing of the caller's memory is copied,
/// and an exec failure is this call's error. In the child, before the
/// exec: a new session (so signals and timeouts reach its whole group),
/// an empty signal mask and SIGPIPE at its
/// default (a Rust program ignores it, and an ignored signal stays
/// ignored across exec), `stdio` at 0-2, every other descriptor closed,
/// and `cwd`.
pub fn spawn(s: &Spawn<'_>) -> io::Result<Pid> {
    use std::mem::MaybeUninit;
    use std::ptr::null_mut;
    // posix_spawn takes NULL-terminated arrays of C strings it only reads.
    let ptrs = |v: &[std::ffi::CString]| -> Vec<*mut libc::c_char> {
        v.iter()
            .map(|c| c.as_ptr().cast_mut())
            .chain([null_mut()])
            .collect()
    };
    let (argv, env) = (ptrs(s.argv), ptrs(s.env));
    let check = |r: libc::c_int| {
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(r))
        }
    };
    let mut actions = MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
    let mut attr = MaybeUninit::<libc::posix_spawnattr_t>::uninit();
    // SAFETY: the init calls initialize the two objects before any other
    // use, and each is destroyed once below (on every path after its init
    // succeeded). The descriptors and strings they are given are borrowed
    // for this call; glibc copies the cwd path. `pid` is a live pid_t;
    // `argv` and `env` are NULL-terminated arrays of pointers into
    // CStrings `s` keeps alive for the call. glibc's sigset_t begins with
    // an unsigned long, written through a cast after sigemptyset.
    unsafe {
        check(libc::posix_spawn_file_actions_init(actions.as_mut_ptr()))?;
        let actions = actions.as_mut_ptr();
        if let Err(e) = check(libc::posix_spawnattr_init(attr.as_mut_ptr())) {
            libc::posix_spawn_file_actions_destroy(actions);
            return Err(e);
        }
        let attr = attr.as_mut_ptr();
        let result = (|| {
            for (fd, to) in s.stdio.iter().zip(0..) {
                check(libc::posix_spawn_file_actions_adddup2(
                    actions,
                    fd.as_raw_fd(),
                    to,
                ))?;
            }
            check(libc::posix_spawn_file_actions_addclosefrom_np(actions, 3))?;
            check(libc::posix_spawn_file_actions_addchdir_np(
                actions,
                s.cwd.as_ptr(),
            ))?;
            let mut set = MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(set.as_mut_ptr());
            check(libc::posix_spawnattr_setsigmask(attr, set.as_ptr()))?;
            libc::sigaddset(set.as_mut_ptr(), libc::SIGPIPE);
            // glibc's own signals (32 and 33: thread cancellation, setxid)
            // are left ignored in the child unless set to their default
            // here, and an exec keeps them ignored; sigaddset refuses
            // them, so their bits are set directly (signal n is bit n-1
            // of the first word of glibc's sigset_t).
            *set.as_mut_ptr().cast::<libc::c_ulong>() |= (1 << 31) | (1 << 32);
            check(libc::posix_spawnattr_setsigdefault(attr, set.as_ptr()))?;
            let flags = libc::POSIX_SPAWN_SETSIGMASK
                | libc::POSIX_SPAWN_SETSIGDEF
                | libc::POSIX_SPAWN_SETSID as libc::c_int;
            check(libc::posix_spawnattr_setflags(attr, flags as libc::c_short))?;
            let mut pid: libc::pid_t = 0;
            check(libc::posix_spawn(
                &mut pid,
                s.program.as_ptr(),
                actions,
                attr,
                argv.as_ptr(),
                env.as_ptr(),
            ))?;
            Ok(Pid(pid))
        })();
        libc::posix_spawnattr_destroy(attr);
        libc::posix_spawn_file_actions_destroy(actions);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_signalled_through_its_leaders_pidfd_until_it_is_gone() {
        use std::io::Read;
        use std::os::fd::AsFd;
        use std::os::unix::process::CommandExt;
        // A group leader that leaves a sleep behind in its group and exits.
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "sleep 30 >/dev/null & echo $!"])
            .stdout(std::process::Stdio::piped());
        // SAFETY: setsid is async-signal-safe and touches no memory.
        unsafe {
            cmd.pre_exec(|| cvt(libc::setsid()).map(|_| ()));
        }
        let mut leader = cmd.spawn().unwrap();
        let pidfd = pidfd_open(Pid(leader.id() as i32)).unwrap();
        let mut out = String::new();
        leader
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let sleeper: i32 = out.trim().parse().unwrap();
        leader.wait().unwrap();
        // The leader is reaped; its group lives on in the sleep.
        signal_group_of(pidfd.as_fd(), libc::SIGKILL).unwrap();
        // Gone once reaped (by the host's init, its parent now): a zombie
        // is still in its group.
        let gone = |pid: i32| !std::path::Path::new(&format!("/proc/{pid}")).exists();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !gone(sleeper) {
            assert!(
                std::time::Instant::now() < deadline,
                "the sleep outlived the signal"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // Nothing is left of the group: whatever now has the number, no.
        let err = signal_group_of(pidfd.as_fd(), 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
    }

    #[test]
    #[expect(clippy::zombie_processes, reason = "reaped by the wait under test")]
    fn exit_statuses_decode() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .expect("sh");
        let pid = Pid::from_raw(child.id() as i32);
        assert_eq!(wait(pid).expect("wait"), Exit::Code(7));
        // Reaped already: std's own wait has nothing left to see.
        assert!(child.try_wait().is_err());
        let sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = Pid::from_raw(sleeper.id() as i32);
        assert_eq!(try_wait(pid).expect("running"), None);
        kill(pid, libc::SIGKILL).expect("kill");
        assert_eq!(wait(pid).expect("wait"), Exit::Signal(libc::SIGKILL));
    }

    #[test]
    fn pidfd_of_this_process_opens() {
        pidfd_open(Pid::this()).expect("pidfd");
        assert!(thread_cpu_time() > std::time::Duration::ZERO);
    }
}
