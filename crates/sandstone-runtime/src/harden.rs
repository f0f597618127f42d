//! The last steps before PID 1 serves: capabilities reduced to a container
//! default set (and [`GUARD`]), no_new_privs, seccomp, clamped rlimits,
//! non-dumpable.

use crate::Result;
use crate::sys::Step;
use sandstone_sys::security;

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

/// A capability PID 1 keeps permitted (never effective, and out of the
/// bounding set, so no program it starts has it), so that no process of
/// the sandbox may ptrace it, or read its memory, environment or
/// descriptors through /proc, even while it is dumpable: the kernel lets a
/// process do so only to one whose permitted capabilities are a subset of
/// its own, or with `CAP_SYS_PTRACE` over the sandbox's user namespace,
/// which nothing in it holds. PID 1 is dumpable only while a checkpoint of
/// the sandbox's memory is taken (`Request::Quiesce`): non-dumpable, its
/// memory, which belongs to the host's user namespace (it was executed,
/// or restored, from there), is closed to CRIU too, even with every
/// capability in the sandbox's.
pub const GUARD: u32 = 19; // SYS_PTRACE

/// Makes every permitted capability effective again.
pub fn raise_effective() -> Result<()> {
    let mut sets = security::capget().step(|| "capget".into())?;
    for s in &mut sets {
        s.effective = s.permitted;
    }
    security::capset(&sets).step(|| "capset".into())
}

/// Drops every capability outside [`KEEP`] from the bounding, ambient,
/// effective and inheritable sets, and from the permitted set all but
/// [`GUARD`].
pub fn drop_capabilities() -> Result<()> {
    restrict_capabilities(KEEP, &[GUARD])
}

/// Capabilities a sandbox volume's file helper keeps as root: those of
/// file ownership and access alone (no mounts, no chroot, no devices, no
/// signals to others).
pub const FILE_CAPABILITIES: &[u32] = &[
    0, // CHOWN
    1, // DAC_OVERRIDE
    2, // DAC_READ_SEARCH
    3, // FOWNER
    4, // FSETID
];

/// Drops every capability outside `keep` from the bounding, ambient,
/// effective and inheritable sets, and from the permitted set all but
/// `keep` and `also_permitted`.
pub fn restrict_capabilities(keep: &[u32], also_permitted: &[u32]) -> Result<()> {
    let last = last_cap();
    for cap in 0..=last {
        if !keep.contains(&cap) {
            security::drop_bounding_capability(cap).step(|| "drop bounding capability".into())?;
        }
    }
    security::clear_ambient_capabilities().step(|| "clear ambient capabilities".into())?;
    let mask = |caps: &mut dyn Iterator<Item = u32>| {
        let mut mask = [0u32; 2];
        for cap in caps {
            mask[(cap / 32) as usize] |= 1 << (cap % 32);
        }
        mask
    };
    let effective = mask(&mut keep.iter().copied());
    let permitted = mask(&mut keep.iter().chain(also_permitted).copied());
    let sets = [0, 1].map(|i| security::CapSets {
        effective: effective[i],
        permitted: permitted[i],
        inheritable: 0,
    });
    security::capset(&sets).step(|| "capset".into())
}

/// Sets soft limits to sane values without ever asking for more than the
/// host's hard limit (root here lacks CAP_SYS_RESOURCE).
pub fn clamp_rlimits() -> Result<()> {
    let wanted: &[(libc::__rlimit_resource_t, u64)] =
        &[(libc::RLIMIT_NOFILE, 1 << 20), (libc::RLIMIT_CORE, 0)];
    for &(res, want) in wanted {
        // Unreadable reads as a zero hard limit: ask for nothing.
        let (_, hard) = security::getrlimit(res).unwrap_or((0, 0));
        security::setrlimit(res, want.min(hard), hard).step(|| format!("setrlimit {res}"))?;
    }
    Ok(())
}

/// Everything, in the order the kernel requires.
pub fn harden() -> Result<()> {
    clamp_rlimits()?;
    drop_capabilities()?;
    security::set_no_new_privs().step(|| "set no_new_privs".into())?;
    crate::seccomp::install()?;
    // Not dumpable: nothing in the sandbox may change PID 1's /proc files
    // (they are host root's), nor have it dump core.
    security::set_dumpable(false).step(|| "set non-dumpable".into())
}
