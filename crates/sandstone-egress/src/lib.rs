//! Egress control: what a sandbox may reach, decided outside the sandbox.
//!
//! This crate holds the pure parts — the policy model and its evaluation
//! ([`policy`]), CIDR matching ([`cidr`]) and protocol sniffing of the first
//! bytes of a connection ([`sniff`]) — so they can be tested and fuzzed
//! without sockets. It is never configurable from inside a sandbox.

pub mod cidr;
pub mod policy;
pub mod sniff;

pub use policy::{AppProtocol, Connection, Decision, Mode, NetworkPolicy, OperatorRules};
