//! Egress control: what a sandbox may reach, decided outside the sandbox.
//!
//! The policy model and its evaluation ([`policy`]), CIDR matching
//! ([`cidr`]) and protocol sniffing of a connection's first bytes
//! ([`sniff`]) are pure, so they can be tested and fuzzed without sockets;
//! [`addr`] hands out sandbox subnets and [`firewall`] installs the host's
//! nftables table. Nothing here is configurable from inside a sandbox.
//!
//! Each module that can fail has its own error enum, whose text is the
//! message users have always seen: [`policy::PolicyError`] names the bad
//! field (the daemon's 400 quotes it), and an audit record's kind and
//! verdict are enums ([`audit::EventKind`], [`audit::Verdict`]), as is the
//! layer that decided a connection ([`policy::Layer`]).

pub mod addr;
mod aead;
pub mod audit;
pub mod bandwidth;
pub mod ca;
pub mod cidr;
pub mod client_cert;
mod counted;
pub mod credentials;
pub mod dns;
pub mod drops;
pub mod firewall;
pub mod hint;
pub mod intercept;
pub mod local;
pub mod login;
pub mod mysql;
pub mod policy;
pub mod postgres;
pub mod presets;
pub mod protocol_rules;
pub mod proxy;
pub mod redis;
pub mod relay;
pub mod sniff;
pub mod socks5;
pub mod ssh_proxy;
pub mod state;

pub use policy::{AppProtocol, Connection, Decision, Mode, NetworkPolicy, OperatorRules};
pub use presets::Preset;
