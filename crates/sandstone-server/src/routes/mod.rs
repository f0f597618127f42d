pub mod contexts;
pub mod credentials;
pub mod files;
pub mod network;
pub mod sandboxes;
pub mod snapshots;
pub mod tools;
