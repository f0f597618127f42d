//! Templates on the host: the `debian` template (root inside owns the
//! rootfs and can install packages; `default` resolves to it once built;
//! needs a built template named by `SANDSTONE_TEST_DEBIAN`, which
//! scripts/test.sh builds and caches), and templates captured from a
//! sandbox (`POST /api/v1/templates/from-sandbox`).

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

/// A template captured from a running sandbox while a process writes
/// files: consistent (every file the capture holds is whole, none is
/// missing before it), in sandboxes made from it, while the source runs
/// on; in use it is not deleted; a paused sandbox captures too.
#[tokio::test(flavor = "multi_thread")]
async fn a_template_from_a_running_sandbox_holds_its_files_consistently() {
    let d = Daemon::start().await;
    let src = d.create(json!({})).await;
    // Each file is written under a temporary name and renamed whole.
    let writer = "mkdir -p /srv/data && echo base > /srv/marker && \
        (i=0; while true; do echo $i > /srv/data/t && mv /srv/data/t /srv/data/f$i; i=$((i+1)); done) \
        >/dev/null 2>&1 &";
    d.sh(&src, writer).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let capture = json!({"template_id": "captured", "sandbox_id": src});
    let (s, v) = d
        .post("/api/v1/templates/from-sandbox", capture.clone())
        .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["data"]["status"]["creation"]["state"], "ready", "{v}");
    let (s, v) = d
        .post("/api/v1/sandboxes", json!({"template": "captured"}))
        .await;
    assert_eq!(s, 201, "{v}");
    let child = v["data"]["sandbox_id"].as_str().unwrap().to_string();
    let check = "cat /srv/marker; cd /srv/data; n=$(ls | grep -c '^f'); ok=yes; \
        i=0; while [ $i -lt $n ]; do [ \"$(cat f$i)\" = $i ] || ok=no; i=$((i+1)); done; echo $n $ok";
    let r = d.sh(&child, check).await;
    let out = r["stdout"].as_str().unwrap().to_string();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("base"), "{r}");
    let (n, ok) = lines.next().unwrap().split_once(' ').unwrap();
    let n: u64 = n.parse().unwrap();
    assert!(n > 0 && ok == "yes", "{out}");
    // The source runs on: its writer has written more since.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let r = d.sh(&src, "ls /srv/data | grep -c '^f'").await;
    let later: u64 = r["stdout"].as_str().unwrap().trim().parse().unwrap();
    assert!(later > n, "{later} <= {n}");
    // What the child writes is its own.
    d.sh(&child, "echo mine > /srv/marker").await;
    let (s, v) = d
        .post("/api/v1/sandboxes", json!({"template": "captured"}))
        .await;
    assert_eq!(s, 201, "{v}");
    let other = v["data"]["sandbox_id"].as_str().unwrap().to_string();
    assert_eq!(d.sh(&other, "cat /srv/marker").await["stdout"], "base\n");

    // Bad input: each a clear error, nothing made.
    for (body, status, says) in [
        (capture.clone(), 409, "captured"),
        (
            json!({"template_id": "x", "sandbox_id": "sb-none"}),
            404,
            "sb-none",
        ),
        (
            json!({"template_id": "Bad/Id", "sandbox_id": src}),
            400,
            "template_id",
        ),
        (
            json!({"template_id": "y", "sandbox_id": src, "spec_overrides": {"pool": {}}}),
            400,
            "spec_overrides",
        ),
    ] {
        let (s, v) = d.post("/api/v1/templates/from-sandbox", body).await;
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(s == status && msg.contains(says), "{s} {v}");
    }
    // In use, it stays; unused, it goes with its volume.
    let (s, v) = d.delete("/api/v1/templates/captured").await;
    assert!(s == 409 && v.to_string().contains(&child), "{s} {v}");
    for sb in [&child, &other] {
        let (s, v) = d.delete(&format!("/api/v1/sandboxes/{sb}")).await;
        assert!(s == 200 || s == 202, "{s} {v}");
    }
    // A deletion may finish after it answers: the template goes once its
    // users have.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (s, v) = d.delete("/api/v1/templates/captured").await;
        if s == 200 {
            break;
        }
        assert!(s == 409 && std::time::Instant::now() < deadline, "{s} {v}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!d.data.path().join("captures/captured").exists());
    assert_eq!(d.get("/api/v1/templates/captured").await.0, 404);

    // A paused sandbox is captured as it stands.
    let (s, v) = d
        .post(&format!("/api/v1/sandboxes/{src}/pause"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    // Through the CLI.
    let out = common::cli(&d, &["template", "from", &src, "from-paused"], b"");
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    assert!(
        common::text(&out.stdout).contains(&format!("from sandbox {src}")),
        "{}",
        common::text(&out.stdout)
    );
    let (s, v) = d
        .post("/api/v1/sandboxes", json!({"template": "from-paused"}))
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["data"]["sandbox_id"].as_str().unwrap().to_string();
    assert_eq!(d.sh(&id, "cat /srv/marker").await["stdout"], "base\n");

    // A retry with the same Idempotency-Key gets the template it made; the
    // key is no way to take another sandbox's capture.
    let keyed = |sandbox: &str| {
        reqwest::Client::new()
            .post(format!("{}/api/v1/templates/from-sandbox", d.url))
            .bearer_auth(&d.token)
            .header("idempotency-key", "capture-1")
            .json(&json!({"template_id": "keyed", "sandbox_id": sandbox}))
            .send()
    };
    for _ in 0..2 {
        let r = keyed(&src).await.unwrap();
        assert_eq!(r.status().as_u16(), 202);
        assert_eq!(r.headers()["location"], "/api/v1/templates/keyed");
    }
    assert_eq!(keyed(&id).await.unwrap().status().as_u16(), 409);
    let (s, _) = d
        .post(
            "/api/v1/templates/from-sandbox",
            json!({"template_id": "keyed", "sandbox_id": src}),
        )
        .await;
    assert_eq!(s, 409, "without the key it is a conflict");
}
