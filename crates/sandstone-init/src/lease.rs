//! The lease watch (`SpawnSpec::lease`): on a database several nodes share,
//! the daemon that runs this sandbox keeps a deadline in a host file, moved
//! forward at each renewal of its lease. Once the deadline has passed, the
//! daemon has stopped renewing (frozen, cut off, gone) and another node may
//! soon start this sandbox from a checkpoint: every process in it is
//! stopped (SIGSTOP to all but PID 1) so that two copies never run at once,
//! even while the daemon itself cannot act. When the deadline moves forward
//! again (the daemon renewed and found the sandbox still its own) they go
//! on (SIGCONT); when another node took it, the daemon kills it instead.

use std::os::unix::fs::FileExt;
use std::time::Duration;

/// Starts the watch on `file`, read every `every`.
pub fn watch(file: std::fs::File, every: Duration) {
    let spawned = std::thread::Builder::new()
        .name("lease-watch".into())
        .spawn(move || {
            let mut stopped = false;
            loop {
                std::thread::sleep(every);
                let Some(deadline) = read_deadline(&file) else {
                    continue;
                };
                let past = sandstone_sys::process::monotonic() > deadline;
                if past != stopped {
                    let signal = if past { libc::SIGSTOP } else { libc::SIGCONT };
                    // -1: every process of this PID namespace but PID 1.
                    // ESRCH (none left) is not a failure.
                    let _ = sandstone_sys::process::kill(sandstone_sys::Pid::from_raw(-1), signal);
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
