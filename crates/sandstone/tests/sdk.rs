//! The Sandbox0 Python SDK drives this daemon: claim, cmd, run (state kept),
//! files, delete. Needs a Python with `sandbox0` installed, named by
//! `SANDSTONE_SDK_PYTHON` (scripts/test.sh and CI provide one).

// Test code: an unexpected failure is the test failing, so unwrap is the point.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Daemon, run_python, sdk_python};

#[tokio::test(flavor = "multi_thread")]
async fn sandbox0_python_sdk_works_unchanged() {
    let Some(python) = sdk_python() else { return };
    let d = Daemon::start().await;
    let (stdout, _) = run_python(
        &python,
        "sdk/sandbox0_sdk_smoke.py",
        &[("SANDBOX0_BASE_URL", &d.url), ("SANDBOX0_TOKEN", &d.token)],
    )
    .await;
    assert!(stdout.contains("sandbox0 SDK smoke: ok"), "{stdout}");
}
