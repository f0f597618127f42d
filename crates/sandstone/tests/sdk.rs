//! The Sandbox0 Python SDK drives this daemon: claim, cmd, run (state kept),
//! files, delete. Needs a Python with `sandbox0` installed, named by
//! `SANDSTONE_SDK_PYTHON` (scripts/test.sh and CI provide one).

mod common;

use common::Daemon;

#[tokio::test(flavor = "multi_thread")]
async fn sandbox0_python_sdk_works_unchanged() {
    let Ok(python) = std::env::var("SANDSTONE_SDK_PYTHON") else {
        eprintln!("skipped: SANDSTONE_SDK_PYTHON is not set (scripts/test.sh sets it up)");
        return;
    };
    let d = Daemon::start().await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/sdk/sandbox0_sdk_smoke.py"
    );
    let out = tokio::process::Command::new(python)
        .arg(script)
        .env("SANDBOX0_BASE_URL", &d.url)
        .env("SANDBOX0_TOKEN", &d.token)
        .output()
        .await
        .expect("run python");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "SDK smoke failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("sandbox0 SDK smoke: ok"), "{stdout}");
}
