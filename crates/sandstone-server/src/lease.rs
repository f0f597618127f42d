//! This node's hold on its sandboxes.
//!
//! On a database several nodes share, a node owns its sandboxes only while
//! its lease in the database holds: once it has run out, any other node
//! marks the node's running sandboxes lost and may take them over
//! ([`crate::cluster`]). The node must stop acting for them *before* that,
//! whatever stopped it from renewing (a partition, an unreachable database,
//! the whole daemon frozen by SIGSTOP or a stall). So it counts its lease as
//! held only for half the TTL after the moment it *started* its last
//! successful renewal, on its own monotonic clock: the renewal it wrote
//! holds for the others until a wall-clock time taken after that moment plus
//! the whole TTL. Clock skew up to half the TTL is covered.
//!
//! Past that point the hold has lapsed: the node refuses its sandboxes'
//! calls, freezes them, and writes nothing for them. A later renewal does
//! not simply restore the hold: the node first checks which sandboxes are
//! still its own (the others may have taken some meanwhile) and stops the
//! rest ([`crate::lifecycle::Lifecycle::reconcile`]); only then does it hold
//! again. A node that is frozen right after a check and before its write is
//! still stopped by the database: every write of a sandbox's owner carries
//! the epoch it read ([`sandstone_db::Fence`]).
//!
//! The daemon cannot act while it is itself frozen, but its sandboxes' inits
//! can: the node keeps its hold's deadline in a file each init watches
//! ([`sandstone_runtime::spawn::LeaseWatch`]), moved forward only while the
//! hold is good. Past it, each init stops every process of its sandbox
//! before any other node may start that sandbox.
//!
//! One machine on SQLite has nobody to hand over to: its lease always holds.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Lease {
    /// `None`: no other node can take this node's sandboxes.
    ttl: Option<Duration>,
    /// The deadline file the sandboxes' inits watch (shared only).
    watch: Option<(PathBuf, std::fs::File)>,
    base: Instant,
    /// Milliseconds after `base` until which the hold is certain.
    until: AtomicU64,
    /// The hold ran out at some point and the node has not yet checked
    /// which sandboxes are still its own.
    lapsed: AtomicBool,
}

impl Lease {
    /// A node alone with its database (SQLite): the lease always holds.
    pub fn sole() -> Lease {
        Lease {
            ttl: None,
            watch: None,
            base: Instant::now(),
            until: AtomicU64::new(u64::MAX),
            lapsed: AtomicBool::new(false),
        }
    }

    /// A node on a shared database, with lease `ttl`, keeping its deadline
    /// for the sandboxes in `file`. It holds nothing until its first
    /// renewal and the check after it. The file keeps what the last run
    /// wrote until then: sandboxes that outlived the daemon are stopped
    /// only if that deadline passes first.
    pub fn shared(ttl: Duration, file: PathBuf) -> std::io::Result<Lease> {
        use std::os::unix::fs::PermissionsExt;
        if let Some(dir) = file.parent() {
            std::os::unix::fs::DirBuilderExt::mode(
                std::fs::DirBuilder::new().recursive(true),
                0o700,
            )
            .create(dir)?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&file)?;
        // Readable by the sandboxes' roots, through the handle each init
        // holds: a restored init's is opened again from inside (CRIU). It
        // holds a deadline only; its directory keeps everyone else out.
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        Ok(Lease {
            ttl: Some(ttl),
            watch: Some((file, f)),
            base: Instant::now(),
            until: AtomicU64::new(0),
            lapsed: AtomicBool::new(true),
        })
    }

    /// What a new sandbox's init watches (`None`: nothing to watch).
    pub fn watch(&self) -> Option<sandstone_runtime::spawn::LeaseWatch> {
        let (ttl, (file, _)) = (self.ttl?, self.watch.as_ref()?);
        Some(sandstone_runtime::spawn::LeaseWatch {
            file: file.clone(),
            every_ms: (ttl.as_millis() as u64 / 10).max(100),
        })
    }

    /// Publishes the hold's end to the sandboxes' inits, on the clock they
    /// read (`CLOCK_MONOTONIC`, which `Instant` is).
    fn publish(&self) {
        let Some((path, f)) = &self.watch else {
            return;
        };
        let until = Duration::from_millis(self.until.load(Ordering::Acquire));
        let deadline = sandstone_sys::process::monotonic()
            .saturating_sub(self.base.elapsed())
            .saturating_add(until);
        if let Err(e) = f.write_all_at(&(deadline.as_nanos() as u64).to_le_bytes(), 0) {
            tracing::error!(file = %path.display(), error = %e, "cannot publish the lease deadline to the sandboxes");
        }
    }

    /// Whether other nodes can take this node's sandboxes.
    pub fn is_shared(&self) -> bool {
        self.ttl.is_some()
    }

    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_millis() as u64
    }

    /// Whether this node may act for its sandboxes now.
    pub fn holds(&self) -> bool {
        !self.lapsed.load(Ordering::Acquire)
            && self.ms(Instant::now()) < self.until.load(Ordering::Acquire)
    }

    /// Records a renewal that succeeded and was started at `started`.
    /// Returns `true` when the hold ran out before it completed (another
    /// node may have acted meanwhile, even if the renewal started in
    /// time): the node must check its sandboxes and then call
    /// [`Lease::checked`].
    pub fn renewed(&self, started: Instant) -> bool {
        let Some(ttl) = self.ttl else {
            return false;
        };
        self.lapse();
        self.until.store(
            self.ms(started) + ttl.as_millis() as u64 / 2,
            Ordering::Release,
        );
        let lapsed = self.lapsed.load(Ordering::Acquire);
        if !lapsed {
            self.publish();
        }
        lapsed
    }

    /// Notes that the hold has run out, if it has: from then on only a
    /// renewal followed by a check restores it. Returns whether it has.
    pub fn lapse(&self) -> bool {
        if self.ms(Instant::now()) >= self.until.load(Ordering::Acquire) {
            self.lapsed.store(true, Ordering::Release);
        }
        self.lapsed.load(Ordering::Acquire)
    }

    /// The node has checked which sandboxes are still its own after a
    /// lapse: it holds again (until the hold's time runs out).
    pub fn checked(&self) {
        self.lapsed.store(false, Ordering::Release);
        self.publish();
    }

    /// How long ago the hold ran out (`None`: it holds).
    pub fn lapsed_for(&self) -> Option<Duration> {
        if self.holds() {
            return None;
        }
        let until = self.until.load(Ordering::Acquire);
        Some(Duration::from_millis(
            self.ms(Instant::now()).saturating_sub(until),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sole_node_always_holds() {
        let l = Lease::sole();
        assert!(l.holds() && !l.is_shared() && !l.renewed(Instant::now()));
        assert_eq!(l.lapsed_for(), None);
    }

    /// The deadline the sandboxes read, from `l`'s file.
    fn published(l: &Lease) -> Duration {
        let mut b = [0u8; 8];
        l.watch
            .as_ref()
            .unwrap()
            .1
            .read_exact_at(&mut b, 0)
            .unwrap();
        Duration::from_nanos(u64::from_le_bytes(b))
    }

    #[test]
    fn a_shared_lease_holds_half_its_ttl_from_the_renewal_start() {
        let dir = tempfile::tempdir().unwrap();
        let l = Lease::shared(Duration::from_millis(200), dir.path().join("lease")).unwrap();
        assert_eq!(l.watch().unwrap().every_ms, 100);
        // Nothing before the first renewal and the check after it.
        assert!(!l.holds());
        assert!(l.renewed(Instant::now()));
        assert!(!l.holds());
        // Nothing is published before the check.
        assert_eq!(
            std::fs::metadata(dir.path().join("lease")).unwrap().len(),
            0
        );
        l.checked();
        assert!(l.holds());
        // The sandboxes see the hold's end, about half the TTL from now.
        let ahead = published(&l).saturating_sub(sandstone_sys::process::monotonic());
        assert!(
            ahead > Duration::from_millis(50) && ahead <= Duration::from_millis(100),
            "{ahead:?}"
        );
        // A renewal in time continues the hold without a check.
        std::thread::sleep(Duration::from_millis(30));
        assert!(!l.renewed(Instant::now()));
        assert!(l.holds());
        // Half the TTL after the last renewal started, it has lapsed...
        std::thread::sleep(Duration::from_millis(120));
        assert!(!l.holds());
        assert!(l.lapsed_for().is_some());
        // ...and the next renewal needs a check before it holds again;
        // until then the sandboxes keep the deadline that passed.
        let passed = published(&l);
        assert!(l.renewed(Instant::now()));
        assert!(!l.holds());
        assert_eq!(published(&l), passed);
        l.checked();
        assert!(l.holds());
        // A renewal that started in time but finished after the hold ran
        // out (a stalled round trip) also calls for the check.
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(120));
        assert!(l.renewed(started));
        assert!(!l.holds());
        l.checked();
        // Once noted, a lapse stays until the check, whatever the clock.
        std::thread::sleep(Duration::from_millis(120));
        assert!(l.lapse());
        l.until.store(u64::MAX, Ordering::Release);
        assert!(!l.holds());
    }
}
