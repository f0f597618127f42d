//! The Sandbox0 Python SDK drives this daemon through every call whose
//! route Sandstone serves (tests/sdk/sandbox0_sdk_smoke.py lists them); the
//! daemon has egress on, so network policy and audit events are real. Needs a Python with `sandbox0` installed, named by
//! `SANDSTONE_SDK_PYTHON` (scripts/test.sh and CI provide one).

// Test code: an unexpected failure is the test failing, so unwrap is the point.
#![allow(clippy::unwrap_used)]

mod common;

use common::{networked, run_python, sdk_python};

#[tokio::test(flavor = "multi_thread")]
async fn sandbox0_python_sdk_works_unchanged() {
    let Some(python) = sdk_python() else { return };
    let d = networked("127.0.0.1:1", &[]).await;
    let (stdout, _) = run_python(
        &python,
        "sdk/sandbox0_sdk_smoke.py",
        &[("SANDBOX0_BASE_URL", &d.url), ("SANDBOX0_TOKEN", &d.token)],
    )
    .await;
    assert!(stdout.contains("sandbox0 SDK smoke: ok"), "{stdout}");
}
