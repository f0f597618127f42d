pub mod contexts;
pub mod credentials;
pub mod error;
pub mod files;
pub mod network;
pub mod sandboxes;
pub mod snapshots;
pub mod tools;
