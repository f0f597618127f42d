//! Named fault-injection points, so tests can prove that a failure part-way
//! through an operation leaves nothing behind.
//!
//! Points are armed through `SANDSTONE_FAULTS` (comma-separated names: the
//! operation fails there) and `SANDSTONE_CRASH` (the process kills itself
//! there with SIGKILL, as a crash or `kill -9` would) in the process that
//! reaches them; the daemon forwards its fault list to the helper.

fn list(var: &str) -> Vec<String> {
    std::env::var(var)
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The armed fault list of this process, read once.
fn armed() -> &'static [String] {
    static ARMED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    ARMED.get_or_init(|| list("SANDSTONE_FAULTS"))
}

/// Dies on the spot (SIGKILL) when `point` is armed in `SANDSTONE_CRASH`.
pub fn crash(point: &str) {
    static ARMED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    if ARMED
        .get_or_init(|| list("SANDSTONE_CRASH"))
        .iter()
        .any(|p| p == point)
    {
        use sandstone_sys::process::{Pid, kill};
        let _ = kill(Pid::this(), libc::SIGKILL);
    }
}

/// Fails with an injected error when `point` is armed.
pub fn check(point: &str) -> crate::Result<()> {
    if armed().iter().any(|p| p == point) {
        return Err(crate::Error::Other(format!("injected fault at {point}")));
    }
    Ok(())
}

/// The raw list, for forwarding to a child process.
pub fn armed_list() -> String {
    armed().join(",")
}
