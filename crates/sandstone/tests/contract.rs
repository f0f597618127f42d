//! Sandbox0's OpenAPI document against this daemon (tests/contract/run.py):
//! every spec operation is served or on the reviewed list of those not
//! yet, and Schemathesis finds no server error, no response outside the
//! spec's schemas and no spec field refused as unknown on the served ones.
//! Needs `SANDSTONE_SDK_PYTHON` (with `schemathesis`) and the spec beside
//! the checkout (`../shared/reference`), or `SANDBOX0_SPEC`.

// Test code: an unexpected failure is the test failing, so unwrap is the point.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Daemon, run_python, sdk_python};

#[tokio::test(flavor = "multi_thread")]
async fn the_served_operations_keep_sandbox0s_contract() {
    let Some(python) = sdk_python() else { return };
    let spec = std::env::var("SANDBOX0_SPEC").unwrap_or_else(|_| {
        format!(
            "{}/../../../shared/reference/sandbox0-openapi.yaml",
            env!("CARGO_MANIFEST_DIR")
        )
    });
    assert!(
        std::path::Path::new(&spec).is_file(),
        "no Sandbox0 spec at {spec}: set SANDBOX0_SPEC"
    );
    let d = Daemon::start().await;
    let (stdout, _) = run_python(
        &python,
        "contract/run.py",
        &[
            ("SANDBOX0_BASE_URL", &d.url),
            ("SANDBOX0_TOKEN", &d.token),
            ("SANDBOX0_SPEC", &spec),
        ],
    )
    .await;
    assert!(
        stdout.contains("contract: schemathesis exited 0"),
        "{stdout}"
    );
}
