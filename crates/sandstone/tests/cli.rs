//! The `sandstone` CLI against a real daemon: create, streaming exec with
//! exit codes and timeouts, an interactive shell over a PTY, cp, ls, rm.

// Test code: an unexpected failure is the test failing, so unwrap is the point.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Daemon, cli, text};

#[tokio::test(flavor = "multi_thread")]
async fn cli_create_exec_shell_cp_rm() {
    let d = Daemon::start().await;
    let out = cli(&d, &["create"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();

    let out = cli(
        &d,
        &[
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        (text(&out.stdout), text(&out.stderr)),
        ("out\n".into(), "err\n".into())
    );

    let out = cli(
        &d,
        &["exec", "--timeout", "1", &id, "--", "sleep", "30"],
        b"",
    );
    assert_eq!(out.status.code(), Some(137));
    assert!(text(&out.stderr).contains("timed out"));

    // A PTY shell: input typed at the prompt, the exit code comes back.
    let out = cli(&d, &["shell", &id], b"echo tty=$(tty)\nexit 5\n");
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("tty=/dev/pts/"),
        "{}",
        text(&out.stdout)
    );

    let host_file = d.data.path().join("in.txt");
    std::fs::write(&host_file, "copied").unwrap();
    let target = format!("{id}:/workspace/in.txt");
    assert!(
        cli(&d, &["cp", host_file.to_str().unwrap(), &target], b"")
            .status
            .success()
    );
    let back = d.data.path().join("back.txt");
    assert!(
        cli(&d, &["cp", &target, back.to_str().unwrap()], b"")
            .status
            .success()
    );
    assert_eq!(std::fs::read_to_string(back).unwrap(), "copied");

    let ls = text(&cli(&d, &["ls"], b"").stdout);
    assert!(ls.contains(&id) && ls.contains("running"), "{ls}");
    assert!(cli(&d, &["rm", &id], b"").status.success());
    let out = cli(&d, &["inspect", &id], b"");
    assert!(
        !out.status.success() && text(&out.stderr).contains("not_found"),
        "{}",
        text(&out.stderr)
    );
}

/// `sandstone key`: a key made with a role is listed without its value,
/// works, and stops working once removed; the admin token is rotated.
#[tokio::test(flavor = "multi_thread")]
async fn cli_keys_are_made_listed_and_removed() {
    let mut d = Daemon::start().await;
    let out = cli(
        &d,
        &[
            "key",
            "create",
            "--name",
            "ci",
            "--role",
            "viewer",
            "--expires",
            "1d",
        ],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (id, key) = (made["id"].as_str().unwrap(), made["key"].as_str().unwrap());
    assert_eq!(made["roles"], serde_json::json!(["viewer"]), "{made}");
    let ls = text(&cli(&d, &["key", "ls"], b"").stdout);
    assert!(
        ls.contains(id) && ls.contains("viewer") && !ls.contains(key),
        "{ls}"
    );
    let as_key = |k: &str| {
        let (http, url, k) = (d.http.clone(), d.url.clone(), k.to_string());
        async move {
            http.get(format!("{url}/api/v1/sandboxes"))
                .bearer_auth(k)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(as_key(key).await, 200);
    let out = cli(&d, &["key", "create", "--name", "x", "--role", "root"], b"");
    assert!(!out.status.success());
    assert!(cli(&d, &["key", "rm", id], b"").status.success());
    assert_eq!(as_key(key).await, 401);

    // A team, and a key acting in it (named by the team's name).
    let out = cli(&d, &["team", "create", "research"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let team: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ls = text(&cli(&d, &["team", "ls"], b"").stdout);
    assert!(ls.contains("research") && ls.contains("default"), "{ls}");
    let out = cli(
        &d,
        &["key", "create", "--name", "r", "--team", "research"],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["team_id"], team["id"], "{made}");
    assert_eq!(made["roles"], serde_json::json!(["developer"]), "{made}");
    let ls = text(&cli(&d, &["key", "ls"], b"").stdout);
    assert!(ls.contains(team["id"].as_str().unwrap()), "{ls}");
    let out = cli(&d, &["key", "create", "--name", "r", "--team", "nope"], b"");
    assert!(
        !out.status.success() && text(&out.stderr).contains("no team nope"),
        "{}",
        text(&out.stderr)
    );

    // The first start's admin token, rotated: the file holds a new admin
    // key, and the old one is refused.
    let out = cli(&d, &["key", "rotate-admin"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let file = d.data.path().join("admin.token");
    let new = std::fs::read_to_string(&file).unwrap();
    assert_ne!(new, d.token);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(as_key(&d.token).await, 401);
    assert_eq!(as_key(&new).await, 200);
    d.token = new;
}
