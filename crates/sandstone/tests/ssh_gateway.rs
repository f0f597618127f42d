//! The SSH gateway (`sandstone serve --ssh-listen`), driven by OpenSSH's
//! own `ssh` and `sftp`: keys registered through `/users/me/ssh-keys` get
//! commands, a PTY shell and SFTP in their team's sandboxes; unknown keys,
//! other teams' keys and removed keys are refused, with an audit record.

// Test code: an unexpected failure is the test failing, so unwrap is the point.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Daemon, ssh_keygen, text};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// A daemon with the gateway on a port of its own; returns it and the port.
async fn daemon_with_gateway() -> (Daemon, u16) {
    let mut d = Daemon::set_up(&["--pool-gib", "4"], "").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    d.serve_args = vec!["--ssh-listen".into(), format!("127.0.0.1:{port}")];
    d.spawn().await;
    (d, port)
}

/// A call with another API key than the daemon's admin one.
async fn call_as(d: &Daemon, token: &str, method: Method, path: &str, body: Value) -> (u16, Value) {
    let resp = d
        .http
        .request(method, format!("{}{path}", d.url))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Registers `dir/name.pub` for the key `token`; returns the answer's data.
async fn register(d: &Daemon, token: &str, dir: &Path, name: &str) -> Value {
    let public_key = std::fs::read_to_string(dir.join(format!("{name}.pub"))).unwrap();
    let body = json!({"name": name, "public_key": public_key});
    let (s, v) = call_as(d, token, Method::POST, "/users/me/ssh-keys", body).await;
    assert_eq!(s, 201, "{v}");
    v["data"].clone()
}

/// OpenSSH's clients for the gateway at `port`, with the keys in `dir`:
/// no agent, no prompts, host keys remembered in `dir/known_hosts`, each
/// run bounded in time.
struct Clients<'a> {
    port: u16,
    dir: &'a Path,
}

impl Clients<'_> {
    /// `program` (`ssh` or `sftp`) with `key`, host keys checked as
    /// `strict` says (`accept-new`, or `yes` once one is pinned).
    fn command(&self, program: &str, key: &str, strict: &str) -> Command {
        let mut cmd = Command::new("timeout");
        let port_flag = if program == "sftp" { "-P" } else { "-p" };
        cmd.args(["60", program, port_flag, &self.port.to_string(), "-i"])
            .arg(self.dir.join(key))
            .args(["-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"])
            .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=20"])
            .args(["-o", "LogLevel=ERROR", "-o"])
            .arg(format!("StrictHostKeyChecking={strict}"))
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.dir.join("known_hosts").display()
            ));
        cmd
    }

    /// `ssh <sandbox>@gateway <command>` with `key`.
    fn ssh(&self, key: &str, sandbox: &str, command: &str) -> Output {
        let mut cmd = self.command("ssh", key, "accept-new");
        cmd.arg(format!("{sandbox}@127.0.0.1")).arg(command);
        run(cmd, "")
    }
}

fn run(mut cmd: Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `ssh-keygen -l`'s fingerprint of `dir/name.pub`.
fn fingerprint(dir: &Path, name: &str) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(dir.join(format!("{name}.pub")))
        .output()
        .unwrap();
    text(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registered_key_runs_commands_a_shell_and_sftp_in_the_sandbox() {
    let (mut d, port) = daemon_with_gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let c = Clients {
        port,
        dir: dir.path(),
    };
    ssh_keygen(dir.path(), "alice", "");
    let token = d.token.clone();

    // Registration: the key as `ssh-keygen -l` sees it; once only; a 400
    // naming the field for what is not a public key.
    let registered = register(&d, &token, dir.path(), "alice").await;
    assert_eq!(
        registered["fingerprint_sha256"],
        fingerprint(dir.path(), "alice")
    );
    assert_eq!(registered["key_type"], "ssh-ed25519");
    assert_eq!(registered["comment"], "alice");
    let public_key = std::fs::read_to_string(dir.path().join("alice.pub")).unwrap();
    let again = json!({"name": "again", "public_key": public_key});
    let (s, v) = d.post("/users/me/ssh-keys", again).await;
    assert_eq!(s, 409, "{v}");
    let private_key = std::fs::read_to_string(dir.path().join("alice")).unwrap();
    for bad in ["ssh-ed25519 AAAA", "hello", private_key.as_str()] {
        let body = json!({"name": "bad", "public_key": bad});
        d.rejects("/users/me/ssh-keys", body, "public_key").await;
    }
    let body = json!({"name": "", "public_key": public_key});
    d.rejects("/users/me/ssh-keys", body, "name").await;
    let (s, v) = d.get("/users/me/ssh-keys").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["ssh_keys"].as_array().unwrap().len(), 1, "{v}");

    let id = d.create(json!({})).await;
    d.sh(&id, "echo hi > /workspace/hello").await;

    // A command: its stdout, its stderr apart, its exit status; in the
    // sandbox (its host name), at /workspace.
    let out = c.ssh("alice", &id, "cat hello; echo oops >&2; hostname; exit 3");
    let hostname = d.sh(&id, "hostname").await["stdout"].clone();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("hi\n{}", hostname.as_str().unwrap())
    );
    assert_eq!(text(&out.stderr), "oops\n");

    // Input with no output for a while: 16 MB into a file, whole.
    let big: Vec<u8> = (0..16_000_000u32).map(|i| (i % 253) as u8).collect();
    let mut cmd = c.command("ssh", "alice", "accept-new");
    cmd.arg(format!("{id}@127.0.0.1"))
        .arg("cat > big && sha256sum < big | cut -d' ' -f1");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(&big).unwrap();
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    let want: Vec<u8> = (0..16_000_000u32).map(|i| (i % 253) as u8).collect();
    assert_eq!(
        text(&out.stdout).trim(),
        common::sha256sum(&want),
        "{}",
        text(&out.stderr)
    );

    // A shell on a PTY: an interactive login shell on a terminal.
    let mut cmd = c.command("ssh", "alice", "accept-new");
    cmd.arg("-tt").arg(format!("{id}@127.0.0.1"));
    let out = run(cmd, "tty; echo \"shell=$0\"; exit 5\n");
    let shown = text(&out.stdout);
    assert_eq!(out.status.code(), Some(5), "{shown} {}", text(&out.stderr));
    assert!(shown.contains("/dev/pts/"), "{shown}");
    assert!(
        shown.contains("shell=-bash") || shown.contains("shell=bash"),
        "{shown}"
    );

    // SFTP: an upload lands in /workspace whole, owned as the sandbox's
    // own writes are; a download comes back; mkdir and rename work.
    let upload: Vec<u8> = (0..24_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.path().join("up.bin"), &upload).unwrap();
    let batch = format!(
        "put {} up.bin\nls -l\nget hello {}\nmkdir made\nrename up.bin made/up.bin\n",
        dir.path().join("up.bin").display(),
        dir.path().join("got").display()
    );
    std::fs::write(dir.path().join("batch"), batch).unwrap();
    let mut cmd = c.command("sftp", "alice", "accept-new");
    cmd.arg("-b")
        .arg(dir.path().join("batch"))
        .arg(format!("{id}@127.0.0.1"));
    let out = run(cmd, "");
    let listed = text(&out.stdout);
    assert!(out.status.success(), "{listed} {}", text(&out.stderr));
    assert!(
        listed.contains("up.bin") && listed.contains("hello"),
        "{listed}"
    );
    assert_eq!(std::fs::read(dir.path().join("got")).unwrap(), b"hi\n");
    let script = "sha256sum made/up.bin | cut -d' ' -f1; stat -c %u:%g made/up.bin hello";
    let inside = d.sh(&id, script).await["stdout"]
        .as_str()
        .unwrap()
        .to_string();
    let mut lines = inside.lines();
    assert_eq!(lines.next(), Some(common::sha256sum(&upload).as_str()));
    assert_eq!(lines.next(), lines.next(), "{inside}");

    // A paused sandbox (auto_resume by default) is resumed by a login.
    let (s, v) = d
        .post(&format!("/api/v1/sandboxes/{id}/pause"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    let out = c.ssh("alice", &id, "cat hello");
    assert_eq!(text(&out.stdout), "hi\n", "{}", text(&out.stderr));
    let (_, v) = d.get(&format!("/api/v1/sandboxes/{id}")).await;
    assert_eq!(v["data"]["status"], "running", "{v}");

    // The host key outlives a restart: the key pinned above still matches.
    d.kill();
    d.spawn().await;
    let mut cmd = c.command("ssh", "alice", "yes");
    cmd.arg(format!("{id}@127.0.0.1")).arg("echo still");
    let out = run(cmd, "");
    assert_eq!(text(&out.stdout), "still\n", "{}", text(&out.stderr));
    assert!(
        d.log().contains("SSH login"),
        "no audit record of the logins"
    );
}

/// `ssh <sandbox>@gateway true` with `key`: refused with OpenSSH's own
/// words, and the daemon's audit record says why.
async fn refused(d: &Daemon, c: &Clients<'_>, key: &str, sandbox: &str, why: &str) {
    let out = c.ssh(key, sandbox, "true");
    assert_eq!(out.status.code(), Some(255), "{key} got in");
    let said = text(&out.stderr);
    assert!(said.contains("Permission denied"), "{said}");
    let print = fingerprint(c.dir, key);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let log = d.log();
        let found = log.lines().any(|l| {
            l.contains("SSH login refused")
                && l.contains(&print)
                && l.contains(sandbox)
                && l.contains(why)
        });
        if found {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit record of {key} refused ({why}):\n{log}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_keys_other_teams_keys_and_removed_keys_are_refused_and_audited() {
    let (d, port) = daemon_with_gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let c = Clients {
        port,
        dir: dir.path(),
    };
    for name in ["mallory", "bob", "carol"] {
        ssh_keygen(dir.path(), name, "");
    }
    let red = d.create(json!({})).await;

    // Never registered.
    refused(&d, &c, "mallory", &red, "not registered").await;

    // Registered by a key of another team: it reaches that team's
    // sandboxes, not this one.
    let (s, blue) = d.post("/teams", json!({"name": "blue"})).await;
    assert_eq!(s, 201, "{blue}");
    let (s, k) = d
        .post(
            "/api-keys",
            json!({"name": "b", "roles": ["developer"], "team_id": blue["data"]["id"]}),
        )
        .await;
    assert_eq!(s, 201, "{k}");
    let blue_key = k["data"]["key"].as_str().unwrap().to_string();
    register(&d, &blue_key, dir.path(), "bob").await;
    refused(&d, &c, "bob", &red, "team").await;
    let claim = json!({"template": "host"});
    let (s, v) = call_as(&d, &blue_key, Method::POST, "/api/v1/sandboxes", claim).await;
    assert_eq!(s, 201, "{v}");
    let blue_box = v["data"]["sandbox_id"].as_str().unwrap().to_string();
    let out = c.ssh("bob", &blue_box, "echo in blue");
    assert_eq!(text(&out.stdout), "in blue\n", "{}", text(&out.stderr));
    // Each key sees and removes only its own.
    let (_, mine) = d.get("/users/me/ssh-keys").await;
    assert!(
        mine["data"]["ssh_keys"].as_array().unwrap().is_empty(),
        "{mine}"
    );

    // Removed: refused from the next login.
    let carol = register(&d, &blue_key, dir.path(), "carol").await;
    let path = format!("/users/me/ssh-keys/{}", carol["id"].as_str().unwrap());
    let (s, v) = d.delete(&path).await;
    assert_eq!(s, 404, "another key's SSH key: {v}");
    let (s, v) = call_as(&d, &blue_key, Method::DELETE, &path, json!({})).await;
    assert_eq!(s, 200, "{v}");
    refused(&d, &c, "carol", &blue_box, "not registered").await;

    // The API key that registered it deactivated: refused too.
    let blue_key_id = k["data"]["id"].as_str().unwrap();
    let (s, v) = d
        .post(&format!("/api-keys/{blue_key_id}/deactivate"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    refused(&d, &c, "bob", &blue_box, "deactivated").await;
}
