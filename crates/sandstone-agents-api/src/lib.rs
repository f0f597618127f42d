//! The Claude Managed Agents wire model, shared by both ends of the
//! protocol: the control plane (`sandstone-agents`) that serves it and the
//! environment worker (`sandstone-worker`) that calls it. Agents and their
//! versions, environments and their keys, sessions and every session event,
//! the `self_hosted` work queue's items and their states, memory stores and
//! memories, skills and their versions, vaults and their credentials, uploaded files, list
//! pages and the error body.
//!
//! Shapes follow Anthropic's API (the official SDK's `types/beta`), checked
//! by round-tripping bodies the SDK sent and received (`tests/fixtures`).
//! Every object keeps the fields it does not model in a flattened `extra`
//! map, so what the API passes through survives a parse and a write; the
//! event and content-block enums keep unknown `type`s whole the same way.
//! Request bodies tell an absent field from an explicit `null`
//! (`Option<Option<T>>`), which partial updates need.
//!
//! No I/O here: only types, their state transitions, and [`parse`], which
//! names the field a body got wrong.

mod agent;
mod common;
mod environment;
mod error;
mod event;
mod file;
mod memory;
mod session;
mod skill;
mod vault;
mod work;

/// The sandbox layout a session's tools see: the worker makes it, the
/// agent loop tells the model of it.
pub mod layout {
    /// Where tools start.
    pub const WORKDIR: &str = "/workspace";
    /// Where the agent leaves deliverables; on the sandbox's durable layer.
    pub const OUTPUTS_DIR: &str = "/mnt/session/outputs";
    /// Where `file` resources are mounted, read-only, by default.
    pub const UPLOADS_DIR: &str = "/mnt/session/uploads";
}

pub use agent::*;
pub use common::*;
pub use environment::*;
pub use error::*;
pub use event::*;
pub use file::*;
pub use memory::*;
pub use session::*;
pub use skill::*;
pub use vault::*;
pub use work::*;

#[cfg(test)]
mod roundtrip;
