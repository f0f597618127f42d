//! The web console in headless Chromium (tests/console/console_e2e.py,
//! driven by Playwright): sign-in, the live sandbox list, the terminal,
//! files, network policy and audit, a Managed Agents session with an
//! `always_ask` approval, the overview and keys pages, with a screenshot
//! of each page. The daemon has egress on (policy and audit are real) and
//! its agent loop calls the scripted fake model.
//!
//! Needs a Python with `playwright` installed, named by
//! `SANDSTONE_SDK_PYTHON` (scripts/test.sh and CI provide one), and
//! Debian's `chromium` (or `CHROMIUM`). Screenshots go to
//! `$CARGO_TARGET_DIR/test-output/console/` (or `SANDSTONE_TEST_OUTPUT`).

// Test code: an unexpected failure is the test failing, so unwrap is the point.
#![allow(clippy::unwrap_used)]

mod common;

use common::agents::{FakeModel, model_args};
use common::{networked, run_python, sdk_python};

fn test_output() -> String {
    std::env::var("SANDSTONE_TEST_OUTPUT").unwrap_or_else(|_| {
        let target = std::env::var("CARGO_TARGET_DIR")
            .unwrap_or_else(|_| format!("{}/../../target", env!("CARGO_MANIFEST_DIR")));
        format!("{target}/test-output")
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_drives_the_daemon_in_a_browser() {
    let Some(python) = sdk_python() else { return };
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).is_file(),
        "{chromium} not found: install Debian's chromium (scripts/test.sh and CI do)"
    );
    let model = FakeModel::start();
    // Egress on, then restarted with the agent loop pointed at the model
    // (whose key file goes in the daemon's data dir).
    let mut d = networked("127.0.0.1:1", &[]).await;
    d.kill();
    let args = model_args(&d, &model, 30);
    d.serve_args.extend(args);
    d.spawn().await;
    let out = test_output();
    let (stdout, _) = run_python(
        &python,
        "console/console_e2e.py",
        &[
            ("SANDSTONE_URL", &d.url),
            ("SANDSTONE_TOKEN", &d.token),
            ("SANDSTONE_TEST_OUTPUT", &out),
            ("CHROMIUM", &chromium),
        ],
    )
    .await;
    assert!(stdout.contains("console e2e: ok"), "{stdout}");
    for page in [
        "signin",
        "sandboxes",
        "terminal",
        "files",
        "network",
        "session",
        "overview",
    ] {
        let shot = format!("{out}/console/{page}.png");
        assert!(
            std::path::Path::new(&shot).is_file(),
            "no screenshot {shot}"
        );
    }
}
