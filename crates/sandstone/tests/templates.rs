//! The `debian` template: root inside owns the rootfs and can install
//! packages; `default` resolves to it once built. Needs a built template
//! named by `SANDSTONE_TEST_DEBIAN` (scripts/test.sh builds and caches one).

// Test code: an unexpected failure is the test failing, so unwrap is the point.
#![allow(clippy::unwrap_used)]

mod common;

use common::Daemon;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn debian_template_runs_and_installs_packages() {
    let Ok(template) = std::env::var("SANDSTONE_TEST_DEBIAN") else {
        eprintln!(
            "skipped: SANDSTONE_TEST_DEBIAN is not set (scripts/test.sh builds the template)"
        );
        return;
    };
    let d = Daemon::start().await;
    let (_, v) = d.get("/api/v1/templates").await;
    let ids: Vec<_> = v["data"]["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, vec!["host"], "debian is not built in a fresh data dir");
    std::os::unix::fs::symlink(&template, d.data.path().join("templates/debian")).unwrap();

    let (s, v) = d
        .post("/api/v1/sandboxes", json!({"template": "default"}))
        .await;
    assert_eq!(
        (s, v["data"]["template"].as_str()),
        (201, Some("debian")),
        "{v}"
    );
    let id = v["data"]["sandbox_id"].as_str().unwrap().to_string();
    let r = d
        .sh(
            &id,
            "cat /etc/debian_version; stat -c %U /usr/bin/dpkg /var/lib/dpkg/status",
        )
        .await;
    let out = r["stdout"].as_str().unwrap();
    assert!(out.starts_with("12."), "{r}");
    assert!(out.ends_with("root\nroot\n"), "{r}");

    // Build a package inside and install it with dpkg: the package database,
    // /usr and /etc are writable by root through the sandbox's own layer.
    let script = r#"set -e
mkdir -p /tmp/p/DEBIAN /tmp/p/usr/local/bin
printf 'Package: sandstone-hello\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\nDescription: test\n' > /tmp/p/DEBIAN/control
printf '#!/bin/sh\necho hello from a package\n' > /tmp/p/usr/local/bin/sandstone-hello
chmod 755 /tmp/p/usr/local/bin/sandstone-hello
dpkg-deb --build /tmp/p /tmp/hello.deb >/dev/null
dpkg -i /tmp/hello.deb >/dev/null
dpkg -s sandstone-hello | grep -c 'Status: install ok installed'
sandstone-hello"#;
    let r = d.sh(&id, script).await;
    assert_eq!(r["stdout"], "1\nhello from a package\n", "{r}");
    // The package survives pause, a daemon restart and resume.
    let (s, _) = d
        .post(&format!("/api/v1/sandboxes/{id}/pause"), json!({}))
        .await;
    assert_eq!(s, 200);
    let mut d = d;
    d.kill();
    d.spawn().await;
    assert_eq!(
        d.sh(&id, "sandstone-hello").await["stdout"],
        "hello from a package\n"
    );
    // The shared template is untouched.
    assert!(
        !std::path::Path::new(&template)
            .join("rootfs/usr/local/bin/sandstone-hello")
            .exists()
    );
}
