//! Credential sources: write-only values, sealed at rest with a key outside
//! the database, never in a response, an error or a log line.

// Test code: an unexpected failure is the test failing, so unwrap is the point.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Daemon, assert_names};
use reqwest::Method;
use serde_json::json;

const SECRET: &str = "sk-live-7f3a9c-never-shown";

#[tokio::test(flavor = "multi_thread")]
async fn credential_values_are_write_only_and_sealed() {
    let mut d = Daemon::start().await;
    d.kill();
    d.log_level = "debug".into();
    d.spawn().await;
    let write = |name: &str, value: &str| {
        json!({"name": name, "resolverKind": "static_headers",
               "spec": {"staticHeaders": {"values": {"Authorization": format!("Bearer {value}")}}}})
    };
    let mut seen = Vec::new();
    let (s, v) = d
        .post("/api/v1/credential-sources", write("github", SECRET))
        .await;
    assert_eq!(
        (s, v["data"]["currentVersion"].as_i64()),
        (201, Some(1)),
        "{v}"
    );
    seen.push(v.to_string());
    let (s, v) = d
        .post("/api/v1/credential-sources", write("github", "other"))
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("conflict")));
    let (s, v) = d.get("/api/v1/credential-sources").await;
    assert_eq!(
        (
            s,
            v["data"][0]["name"].as_str(),
            v["data"][0]["resolverKind"].as_str()
        ),
        (200, Some("github"), Some("static_headers"))
    );
    seen.push(v.to_string());
    let (_, v) = d.get("/api/v1/credential-sources/github").await;
    seen.push(v.to_string());
    let (s, v) = d
        .req(
            Method::PUT,
            "/api/v1/credential-sources/github",
            Some(write("github", SECRET)),
        )
        .await;
    assert_eq!(
        (s, v["data"]["currentVersion"].as_i64()),
        (200, Some(2)),
        "{v}"
    );
    seen.push(v.to_string());

    // Bad input is a 400 naming the field, without echoing the value.
    for (body, field) in [
        (
            json!({"name": "bad name", "resolverKind": "static_headers", "spec": {}}),
            "`name`",
        ),
        (
            json!({"name": "x", "resolverKind": "vault", "spec": {}}),
            "`resolverKind`",
        ),
        (
            write("x", &format!("{SECRET}\r\nInjected: yes")),
            "staticHeaders.values.Authorization",
        ),
    ] {
        let (s, v) = d.post("/api/v1/credential-sources", body).await;
        assert_eq!(s, 400, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field),
            "{v}"
        );
        seen.push(v.to_string());
    }
    let (s, v) = d
        .req(
            Method::PUT,
            "/api/v1/credential-sources/github",
            Some(json!({"name": "github", "resolverKind": "static_username_password", "spec": {}})),
        )
        .await;
    assert_names(s, &v, "cannot change");

    assert!(
        seen.iter().all(|r| !r.contains(SECRET)),
        "a response showed the secret"
    );
    // Not in the database (sealed), not in the log, and the key is 0600.
    let log = std::fs::read(d.data.path().join("daemon.log")).unwrap_or_default();
    for (what, bytes) in [("the database", d.database_bytes()), ("daemon.log", log)] {
        assert!(!bytes.is_empty(), "{what} is empty");
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{what} holds the secret"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.data.path().join("secret.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    assert_eq!(d.delete("/api/v1/credential-sources/github").await.0, 200);
    assert_eq!(d.get("/api/v1/credential-sources/github").await.0, 404);

    // The CLI reads values from stdin, never from its arguments.
    let out = common::cli(
        &d,
        &["cred", "add", "pypi"],
        format!("Authorization: Bearer {SECRET}\n").as_bytes(),
    );
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let ls = common::text(&common::cli(&d, &["cred", "ls"], b"").stdout);
    assert!(
        ls.contains("pypi") && ls.contains("static_headers") && !ls.contains(SECRET),
        "{ls}"
    );
    assert!(
        common::cli(&d, &["cred", "rm", "pypi"], b"")
            .status
            .success()
    );
}
