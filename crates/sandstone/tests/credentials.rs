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

#[tokio::test(flavor = "multi_thread")]
async fn every_source_kind_is_checked_sealed_and_kept_to_its_kind() {
    let d = Daemon::start().await;
    // A real key, encrypted with the secret as its passphrase.
    let keys = tempfile::tempdir().unwrap();
    let ssh_key = common::ssh_keygen(keys.path(), "deploy", SECRET);
    let mut seen = Vec::new();
    for (name, kind, spec) in [
        (
            "db",
            "static_username_password",
            json!({"staticUsernamePassword": {"username": "app", "password": SECRET}}),
        ),
        (
            "deploy-key",
            "static_ssh_private_key",
            json!({"staticSSHPrivateKey": {"privateKeyPem": ssh_key, "passphrase": SECRET}}),
        ),
    ] {
        let body = json!({"name": name, "resolverKind": kind, "spec": spec});
        let (s, v) = d.post("/api/v1/credential-sources", body.clone()).await;
        assert_eq!((s, &v["data"]["resolverKind"]), (201, &json!(kind)), "{v}");
        seen.push(v.to_string());
        // A new version, never a new kind.
        let (s, v) = d
            .req(
                Method::PUT,
                &format!("/api/v1/credential-sources/{name}"),
                Some(body),
            )
            .await;
        assert_eq!(
            (s, v["data"]["currentVersion"].as_i64()),
            (200, Some(2)),
            "{v}"
        );
        let other = json!({"name": name, "resolverKind": "static_headers",
            "spec": {"staticHeaders": {"values": {"X-Key": "v"}}}});
        let (s, v) = d
            .req(
                Method::PUT,
                &format!("/api/v1/credential-sources/{name}"),
                Some(other),
            )
            .await;
        assert_names(s, &v, "cannot change");
    }
    // Bad input names the field and echoes nothing.
    for (kind, spec, field) in [
        (
            "static_username_password",
            json!({"staticUsernamePassword": {"username": "", "password": SECRET}}),
            "spec.staticUsernamePassword.username",
        ),
        (
            "static_username_password",
            json!({"staticUsernamePassword": {"username": "a", "password": format!("{SECRET}\n")}}),
            "spec.staticUsernamePassword.password",
        ),
        (
            "static_ssh_private_key",
            json!({"staticSSHPrivateKey": {"privateKeyPem": SECRET}}),
            "spec.staticSSHPrivateKey.privateKeyPem",
        ),
        // A key that cannot be read: encrypted without its passphrase, or
        // with the wrong one.
        (
            "static_ssh_private_key",
            json!({"staticSSHPrivateKey": {"privateKeyPem": ssh_key}}),
            "spec.staticSSHPrivateKey.privateKeyPem",
        ),
        (
            "static_ssh_private_key",
            json!({"staticSSHPrivateKey": {"privateKeyPem": ssh_key, "passphrase": "wrong"}}),
            "spec.staticSSHPrivateKey.privateKeyPem",
        ),
        (
            "static_tls_client_certificate",
            json!({"staticTLSClientCertificate": {"certificatePem": SECRET, "privateKeyPem": SECRET}}),
            "spec.staticTLSClientCertificate.certificatePem",
        ),
        (
            "static_tls_client_certificate",
            json!({"staticUsernamePassword": {"username": "a", "password": SECRET}}),
            "spec.staticUsernamePassword",
        ),
        (
            "static_headers",
            json!({"staticTLSClientCertificate": {"certificatePem": SECRET, "privateKeyPem": SECRET}}),
            "spec.staticTLSClientCertificate",
        ),
        (
            "static_ssh_private_key",
            json!({}),
            "spec.staticSSHPrivateKey",
        ),
    ] {
        let body = json!({"name": "bad", "resolverKind": kind, "spec": spec});
        let (s, v) = d.post("/api/v1/credential-sources", body).await;
        assert_names(s, &v, field);
        seen.push(v.to_string());
    }
    assert!(
        seen.iter().all(|r| !r.contains(SECRET)),
        "a response showed the secret"
    );
    assert!(
        !d.database_bytes()
            .windows(SECRET.len())
            .any(|w| w == SECRET.as_bytes()),
        "the database holds the secret"
    );
    // An SSH binding pins at least one upstream host key.
    let policy = json!({"mode": "block-all",
        "credentialBindings": [{"ref": "db", "sourceRef": "db",
            "projection": {"type": "ssh_proxy", "sshProxy": {}}}]});
    d.rejects(
        "/api/v1/sandboxes",
        json!({"template": "host", "config": {"network": policy}}),
        "config.network.credentialBindings[0].projection.sshProxy.knownHosts",
    )
    .await;
}
