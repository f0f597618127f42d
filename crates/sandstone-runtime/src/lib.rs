//! Linux isolation for Sandstone sandboxes.
//!
//! The daemon side ([`launch`]) runs the static `sandstone-init` binary in its
//! `spawn` mode; that short-lived helper ([`spawn`]) builds the sandbox's mount
//! and network namespaces as host root, clones PID 1 into new user, pid, mount,
//! ipc, uts and cgroup namespaces, writes the id maps and exits. PID 1 finishes
//! the rootfs ([`rootfs`]), hardens itself ([`harden`], [`seccomp`]) and serves
//! the init protocol. Resource limits live in [`cgroup`].
//!
//! System calls go through `sandstone_sys`. The only `unsafe` left here
//! are its two forks into new namespaces (PID 1 in [`spawn`], the id-map
//! holder in [`idmap`]), sound because the helper that makes them is
//! single-threaded.

pub mod account;
pub mod cgroup;
pub mod criu;
pub mod fault;
pub mod harden;
pub mod idmap;
pub mod launch;
pub mod net;
pub mod rootfs;
pub mod seccomp;
pub mod spawn;
mod sys;

pub use launch::{Launched, launch};
pub use spawn::{BindMount, LogSpec, SpawnSpec};

/// Errors from isolation primitives; each names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{step}: {source}")]
    Sys {
        step: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn sys(step: impl Into<String>, source: std::io::Error) -> Self {
        Error::Sys {
            step: step.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
