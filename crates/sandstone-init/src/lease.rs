//! The lease watch (`SpawnSpec::lease`): on a database several nodes share,
//! the daemon that runs this sandbox keeps a deadline in a host file, moved
//! forward at each renewal of its lease. Once the deadline has passed, the
//! daemon has stopped renewing (frozen, cut off, gone) and another node may
//! soon start this sandbox from a checkpoint: every process in it is
//! stopped (SIGSTOP to all but PID 1) so that two copies never run at once,
//! even while the daemon itself cannot act. When the deadline moves forward
//! again (the daemon renewed and found the sandbox still its own) they go
//! on (SIGCONT) — all but those that were stopped already (by their user:
//! job control, SIGSTOP), which stay stopped; when another node took it,
//! the daemon kills it instead.

use std::os::unix::fs::FileExt;
use std::time::Duration;

/// Starts the watch on `file`, read every `every`.
pub fn watch(file: std::fs::File, every: Duration) {
    let spawned = std::thread::Builder::new()
        .name("lease-watch".into())
        .spawn(move || {
            let mut stopped = false;
            // Stopped before the watch stopped everything.
            let mut held: Vec<i32> = Vec::new();
            loop {
                std::thread::sleep(every);
                let Some(deadline) = read_deadline(&file) else {
                    continue;
                };
                let past = sandstone_sys::process::monotonic() > deadline;
                if past != stopped {
                    if past {
                        held = processes()
                            .into_iter()
                            .filter(|(_, state)| matches!(state, 'T' | 't'))
                            .map(|(pid, _)| pid)
                            .collect();
                        // -1: every process of this PID namespace but PID 1
                        // (no /proc needed, so nothing inside can hide from
                        // it). ESRCH (none left) is not a failure.
                        signal(-1, libc::SIGSTOP);
                    } else {
                        continue_all_but(&held);
                    }
                    eprintln!(
                        "lease watch: the node's lease deadline {}; processes {}",
                        if past { "passed" } else { "moved on" },
                        if past { "stopped" } else { "continued" }
                    );
                    stopped = past;
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("lease watch: cannot start: {e}");
    }
}

fn signal(pid: i32, signal: i32) {
    let _ = sandstone_sys::process::kill(sandstone_sys::Pid::from_raw(pid), signal);
}

/// Continues every process but those in `held`: each by its pid, read
/// from /proc; when /proc lists none (unreadable, or hidden by a mount
/// inside), every process, so that none stays stopped for good.
fn continue_all_but(held: &[i32]) {
    let listed = processes();
    if held.is_empty() || listed.is_empty() {
        signal(-1, libc::SIGCONT);
        return;
    }
    for (pid, _) in listed {
        if pid != 1 && !held.contains(&pid) {
            signal(pid, libc::SIGCONT);
        }
    }
}

/// The processes of this PID namespace and their states (the letter of
/// `/proc/<pid>/stat`); none when /proc cannot be read.
fn processes() -> Vec<(i32, char)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command may hold ") ": the state follows the last one.
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some((pid, state))
        })
        .collect()
}

/// The deadline, read until two reads agree (the daemon rewrites the
/// 8 bytes in place); `None` when the file is short (not written yet).
fn read_deadline(file: &std::fs::File) -> Option<Duration> {
    let read = || {
        let mut b = [0u8; 8];
        file.read_exact_at(&mut b, 0).ok()?;
        Some(u64::from_le_bytes(b))
    };
    for _ in 0..3 {
        let (a, b) = (read()?, read()?);
        if a == b {
            return Some(Duration::from_nanos(a));
        }
    }
    None
}
