//! The sandbox's seccomp deny-list, as a classic BPF program.
//!
//! Namespaces and dropped capabilities already stop most of these calls; the
//! filter is the second wall, so a kernel bug reachable through one of them is
//! not reachable from a sandbox at all.

use crate::{Error, Result};

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;

const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;

// seccomp_data layout: nr at 0, arch at 4, args at 16 (low word first on x86_64).
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG0: u32 = 16;

/// Syscalls a sandbox never needs (mount family, kernel modules, kexec, bpf,
/// perf, keyrings, handle-based opens, userfaultfd, swap, reboot, clocks, raw
/// I/O ports, namespace entry) and io_uring: its operations bypass this
/// filter, and it has been a steady source of kernel bugs (Docker's default
/// profile refuses it too).
pub const DENIED: &[libc::c_long] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_userfaultfd,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_lookup_dcookie,
    libc::SYS_quotactl,
    libc::SYS_syslog,
    libc::SYS_vhangup,
    libc::SYS_setns,
    libc::SYS_uselib,
    libc::SYS_ustat,
    libc::SYS_sysfs,
    libc::SYS_process_vm_writev,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Builds the filter program.
pub fn program() -> Vec<libc::sock_filter> {
    let eperm = RET_ERRNO | libc::EPERM as u32;
    let mut p = vec![
        stmt(LD_W_ABS, OFF_ARCH),
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET_K, RET_KILL_PROCESS),
        stmt(LD_W_ABS, OFF_NR),
        // x32 ABI numbers alias the x86_64 ones with bit 30 set.
        jump(JSET_K, X32_SYSCALL_BIT, 0, 1),
        stmt(RET_K, eperm),
    ];
    for nr in DENIED {
        p.push(jump(JEQ_K, *nr as u32, 0, 1));
        p.push(stmt(RET_K, eperm));
    }
    // AF_VSOCK is not isolated per network namespace: on a VM host it
    // reaches the hypervisor's services past the sandbox's firewall. The
    // family is the low word of socket's first argument (an int).
    p.push(jump(JEQ_K, libc::SYS_socket as u32, 0, 4));
    p.push(stmt(LD_W_ABS, OFF_ARG0));
    p.push(jump(JEQ_K, libc::AF_VSOCK as u32, 0, 1));
    p.push(stmt(RET_K, RET_ERRNO | libc::EAFNOSUPPORT as u32));
    p.push(stmt(RET_K, RET_ALLOW));
    // clone3 hides its flags behind a pointer: answer ENOSYS so libc falls
    // back to clone, whose flags we can inspect.
    p.push(jump(JEQ_K, libc::SYS_clone3 as u32, 0, 1));
    p.push(stmt(RET_K, RET_ERRNO | libc::ENOSYS as u32));
    // clone / unshare: refuse new user namespaces (they re-grant capabilities).
    p.push(jump(JEQ_K, libc::SYS_clone as u32, 1, 0));
    p.push(jump(JEQ_K, libc::SYS_unshare as u32, 0, 3));
    p.push(stmt(LD_W_ABS, OFF_ARG0));
    p.push(jump(JSET_K, libc::CLONE_NEWUSER as u32, 0, 1));
    p.push(stmt(RET_K, eperm));
    p.push(stmt(RET_K, RET_ALLOW));
    p
}

/// Installs the filter on the calling thread (inherited by every child).
/// Requires `no_new_privs` or CAP_SYS_ADMIN.
pub fn install() -> Result<()> {
    sandstone_sys::security::seccomp_set_filter(&program())
        .map_err(|e| Error::sys("install seccomp filter", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program on one system call, as the kernel would.
    fn run(nr: libc::c_long, arg0: u64) -> u32 {
        let p = program();
        let word = |off: u32| match off {
            OFF_NR => nr as u32,
            OFF_ARCH => AUDIT_ARCH_X86_64,
            OFF_ARG0 => arg0 as u32,
            other => panic!("load of offset {other}"),
        };
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let ins = p[pc];
            pc += 1;
            match ins.code {
                LD_W_ABS => acc = word(ins.k),
                RET_K => return ins.k,
                JEQ_K | JSET_K => {
                    let hit = if ins.code == JEQ_K {
                        acc == ins.k
                    } else {
                        acc & ins.k != 0
                    };
                    pc += usize::from(if hit { ins.jt } else { ins.jf });
                }
                other => panic!("opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn vsock_and_io_uring_are_refused_and_other_sockets_pass() {
        let vsock = libc::AF_VSOCK as u64;
        assert_eq!(
            run(libc::SYS_socket, vsock),
            RET_ERRNO | libc::EAFNOSUPPORT as u32
        );
        // Only the int the kernel reads counts, not the register's high word.
        assert_eq!(
            run(libc::SYS_socket, vsock | 1 << 32),
            RET_ERRNO | libc::EAFNOSUPPORT as u32
        );
        for family in [libc::AF_INET, libc::AF_INET6, libc::AF_UNIX] {
            assert_eq!(run(libc::SYS_socket, family as u64), RET_ALLOW);
        }
        for nr in [
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_enter,
            libc::SYS_io_uring_register,
        ] {
            assert_eq!(run(nr, 0), RET_ERRNO | libc::EPERM as u32, "{nr}");
        }
        assert_eq!(run(libc::SYS_read, 0), RET_ALLOW);
        assert_eq!(
            run(libc::SYS_unshare, libc::CLONE_NEWUSER as u64),
            RET_ERRNO | libc::EPERM as u32
        );
    }

    #[test]
    fn every_path_ends_in_a_return() {
        let p = program();
        assert_eq!(p.last().unwrap().code, RET_K);
        // Each conditional jump must land inside the program.
        for (i, ins) in p.iter().enumerate() {
            if ins.code == JEQ_K || ins.code == JSET_K {
                assert!(
                    i + 1 + (ins.jt.max(ins.jf) as usize) < p.len(),
                    "jump at {i}"
                );
            }
        }
    }
}
