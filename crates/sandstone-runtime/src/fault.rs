//! Named fault-injection points, so tests can prove that a failure part-way
//! through an operation leaves nothing behind.
//!
//! Points are armed through `SANDSTONE_FAULTS` (comma-separated names) in the
//! process that reaches them; the daemon forwards its own list to the helper.

/// The armed fault list of this process, read once.
fn armed() -> &'static [String] {
    static ARMED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var("SANDSTONE_FAULTS")
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    })
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
