pub mod contexts;
pub mod files;
pub mod sandboxes;
pub mod snapshots;
