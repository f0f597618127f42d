//! Hardening a process: prctl, capabilities, resource limits, seccomp.

use crate::cvt;
use std::io;

/// prctl(2) for an option whose argument is an integer.
fn prctl_int(option: libc::c_int, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the options passed here (all below) read `arg` as an
    // integer, never as a pointer; the other arguments are zero.
    cvt(unsafe { libc::prctl(option, arg, 0, 0, 0) })?;
    Ok(())
}

/// Drops capability `cap` from the bounding set.
pub fn drop_bounding_capability(cap: u32) -> io::Result<()> {
    prctl_int(libc::PR_CAPBSET_DROP, cap.into())
}

/// Empties the ambient capability set.
pub fn clear_ambient_capabilities() -> io::Result<()> {
    prctl_int(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    )
}

/// Sets no_new_privs: execve never grants privileges again (setuid bits,
/// file capabilities), for this thread and its children.
pub fn set_no_new_privs() -> io::Result<()> {
    prctl_int(libc::PR_SET_NO_NEW_PRIVS, 1)
}

/// Has the kernel send `signal` to this process when the thread that
/// started it ends (a helper that must not outlive its daemon).
pub fn set_parent_death_signal(signal: libc::c_int) -> io::Result<()> {
    prctl_int(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong)
}

/// Sets whether the process is dumpable (and so whether others may ptrace
/// it or open its /proc files, within what their capabilities allow).
pub fn set_dumpable(dumpable: bool) -> io::Result<()> {
    prctl_int(libc::PR_SET_DUMPABLE, dumpable.into())
}

/// One 32-bit word of each capability set (`struct
/// __user_cap_data_struct`); capabilities 0-31 in the first, 32-63 in the
/// second.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct CapSets {
    pub effective: u32,
    pub permitted: u32,
    pub inheritable: u32,
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

const CAP_V3: u32 = 0x2008_0522;

const THIS_PROCESS: CapHeader = CapHeader {
    version: CAP_V3,
    pid: 0,
};

/// The calling thread's capability sets.
pub fn capget() -> io::Result<[CapSets; 2]> {
    let mut data = [CapSets::default(); 2];
    // SAFETY: a version-3 header with the two data words that version
    // reads and writes, both live for the call.
    cvt(unsafe { libc::syscall(libc::SYS_capget, &THIS_PROCESS, data.as_mut_ptr()) })?;
    Ok(data)
}

/// Sets the calling thread's capability sets.
pub fn capset(data: &[CapSets; 2]) -> io::Result<()> {
    // SAFETY: a version-3 header with the two data words that version
    // reads, both live for the call.
    cvt(unsafe { libc::syscall(libc::SYS_capset, &THIS_PROCESS, data.as_ptr()) })?;
    Ok(())
}

/// A resource limit: `(soft, hard)`.
pub fn getrlimit(resource: libc::__rlimit_resource_t) -> io::Result<(u64, u64)> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `l` is a live rlimit getrlimit writes into.
    cvt(unsafe { libc::getrlimit(resource, &mut l) })?;
    Ok((l.rlim_cur, l.rlim_max))
}

/// Sets a resource limit.
pub fn setrlimit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> io::Result<()> {
    let l = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `l` is a live rlimit setrlimit reads.
    cvt(unsafe { libc::setrlimit(resource, &l) })?;
    Ok(())
}

/// Installs a classic BPF program as the calling thread's seccomp filter
/// (SECCOMP_SET_MODE_FILTER; inherited by every child). Requires
/// `no_new_privs` or CAP_SYS_ADMIN.
pub fn seccomp_set_filter(program: &[libc::sock_filter]) -> io::Result<()> {
    let len = u16::try_from(program.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "seccomp program too long"))?;
    let fprog = libc::sock_fprog {
        len,
        // The kernel only reads the program; the field is `*mut` in C.
        filter: program.as_ptr().cast_mut(),
    };
    const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
    // SAFETY: `fprog` points at `len` live instructions; the kernel copies
    // the program and checks every jump before installing it.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_capabilities_read_back() {
        let (soft, hard) = getrlimit(libc::RLIMIT_NOFILE).expect("getrlimit");
        assert!(soft <= hard);
        setrlimit(libc::RLIMIT_NOFILE, soft, hard).expect("setrlimit to itself");
        let sets = capget().expect("capget");
        // Effective is always a subset of permitted.
        for s in sets {
            assert_eq!(s.effective & !s.permitted, 0);
        }
    }
}
