//! The last steps before PID 1 serves: capabilities reduced to a container
//! default set, no_new_privs, seccomp, clamped rlimits, non-dumpable.

use crate::sys::prctl;
use crate::{Error, Result};

/// The capabilities root inside a sandbox keeps: Docker's default set minus
/// NET_RAW (no raw sockets).
pub const KEEP: &[u32] = &[
    0,  // CHOWN
    1,  // DAC_OVERRIDE
    3,  // FOWNER
    4,  // FSETID
    5,  // KILL
    6,  // SETGID
    7,  // SETUID
    8,  // SETPCAP
    10, // NET_BIND_SERVICE
    18, // SYS_CHROOT
    27, // MKNOD
    29, // AUDIT_WRITE
    31, // SETFCAP
];

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;

/// Makes every permitted capability effective again.
pub fn raise_effective() -> Result<()> {
    let header = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    if unsafe { libc::syscall(libc::SYS_capget, &header, data.as_mut_ptr()) } < 0 {
        return Err(Error::sys("capget", std::io::Error::last_os_error()));
    }
    for d in &mut data {
        d.effective = d.permitted;
    }
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } < 0 {
        return Err(Error::sys("capset", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Drops every capability outside [`KEEP`] from the bounding, ambient,
/// effective, permitted and inheritable sets.
pub fn drop_capabilities() -> Result<()> {
    let last = last_cap();
    for cap in 0..=last {
        if !KEEP.contains(&cap) {
            prctl(
                libc::PR_CAPBSET_DROP,
                cap as libc::c_ulong,
                "drop bounding capability",
            )?;
        }
    }
    prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        "clear ambient capabilities",
    )?;
    let mut mask = [0u32; 2];
    for cap in KEEP {
        mask[(cap / 32) as usize] |= 1 << (cap % 32);
    }
    let header = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let data = [0, 1].map(|i| CapData {
        effective: mask[i],
        permitted: mask[i],
        inheritable: 0,
    });
    let ret = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if ret < 0 {
        return Err(Error::sys("capset", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Sets soft limits to sane values without ever asking for more than the
/// host's hard limit (root here lacks CAP_SYS_RESOURCE).
pub fn clamp_rlimits() -> Result<()> {
    let wanted: &[(libc::__rlimit_resource_t, u64)] =
        &[(libc::RLIMIT_NOFILE, 1 << 20), (libc::RLIMIT_CORE, 0)];
    for &(res, want) in wanted {
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        unsafe { libc::getrlimit(res, &mut cur) };
        let hard = cur.rlim_max;
        let soft = want.min(hard);
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        if unsafe { libc::setrlimit(res, &new) } < 0 {
            return Err(Error::sys(
                format!("setrlimit {res}"),
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// Everything, in the order the kernel requires.
pub fn harden() -> Result<()> {
    clamp_rlimits()?;
    drop_capabilities()?;
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1, "set no_new_privs")?;
    crate::seccomp::install()?;
    // Not dumpable: processes in the sandbox cannot ptrace PID 1 or open its
    // /proc files, even as root.
    prctl(libc::PR_SET_DUMPABLE, 0, "set non-dumpable")?;
    Ok(())
}
