//! The protocol between the daemon and `sandstone-init` (PID 1 of a sandbox).
//!
//! A frame is two big-endian u32 lengths (header, payload), a JSON header and
//! raw payload bytes, so file contents and process output travel unencoded.
//! One request is answered by one or more frames; streaming answers end with a
//! terminal frame ([`Response::is_terminal`]).

pub mod proto;
