//! A real daemon per test: `sandstone serve` on a free loopback port with its
//! own data directory. Needs root (namespaces, cgroups, overlay).

#![allow(dead_code)]

pub mod agents;
pub mod cluster;
pub use agents::assert_names;
pub mod fault_proxy;

pub mod fake_internet;

use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn sandstone_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sandstone")
}

pub fn init_bin() -> PathBuf {
    let p = std::env::var("SANDSTONE_INIT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(sandstone_bin()).with_file_name("sandstone-init"));
    assert!(
        p.is_file(),
        "sandstone-init not found at {} — run the tests through scripts/test.sh (it builds the static init)",
        p.display()
    );
    p
}

/// A child's pid, for signals std has no call for.
pub fn pid_of(child: &std::process::Child) -> sandstone_sys::Pid {
    sandstone_sys::Pid::from_raw(child.id() as i32)
}

pub fn require_root() {
    assert_eq!(
        sandstone_sys::process::geteuid(),
        0,
        "these end-to-end tests need root (namespaces, cgroups, overlay)"
    );
}

pub struct Daemon {
    /// `SANDSTONE_CRASH` for the next [`Daemon::spawn`].
    pub crash_at: String,
    /// `--warm-pool` for the next [`Daemon::spawn`] (tests default to none,
    /// so that every claim takes the ordinary create path).
    pub warm_pool: usize,
    /// Extra `sandstone serve` arguments for the next [`Daemon::spawn`].
    pub serve_args: Vec<String>,
    /// Whether sandboxes get the default networking (the pool recorded in
    /// the data directory). Off unless a test asks: concurrent tests must
    /// not share a pool, so networked tests name theirs.
    pub default_network: bool,
    /// `SANDSTONE_LOG` for the next [`Daemon::spawn`]; the daemon's log
    /// goes to `<data>/daemon.log`.
    pub log_level: String,
    /// `--data-dir` as the next [`Daemon::spawn`] spells it (default: the
    /// data dir's path).
    pub data_dir_arg: Option<PathBuf>,
    /// Descriptors the next [`Daemon::spawn`] starts with, as whatever
    /// started it might leave open: (fd, path opened read-only).
    pub inherited_fds: Vec<(i32, PathBuf)>,
    /// Signals the next [`Daemon::spawn`] starts with ignored, as a
    /// shell's `&` leaves SIGINT and SIGQUIT.
    pub ignored_signals: Vec<i32>,
    pub child: Option<Child>,
    pub url: String,
    pub token: String,
    pub data: tempfile::TempDir,
    /// Its own PostgreSQL database when `SANDSTONE_TEST_DATABASE_URL` is
    /// set (every spawn, restarts included, uses it); `None`: SQLite in
    /// the data dir.
    pub db: Option<sandstone_db::testing::TestDatabase>,
    port: u16,
    /// `SANDSTONE_FAULTS` for the next [`Daemon::spawn`].
    pub faults: String,
    pub http: reqwest::Client,
    /// Extra environment of the next [`Daemon::spawn`].
    pub env: Vec<(String, String)>,
}

/// A /24 for one test daemon's sandbox subnets, unique in this machine's
/// concurrently running tests (private range, never 192.0.2.0/24).
pub fn test_subnet_pool() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("10.{}.{}.0/24", 224 + std::process::id() % 24, n % 256)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Daemon {
    /// A daemon on a btrfs pool (a small loop-mounted image), as
    /// `sandstone setup` makes on this host.
    pub async fn start() -> Daemon {
        Self::start_with(&["--pool-gib", "4"], "").await
    }

    /// A daemon on the plain-directory pool.
    pub async fn start_dir() -> Daemon {
        Self::start_with(&["--no-pool"], "").await
    }

    /// A daemon after `sandstone setup` with `setup`'s flags.
    pub async fn start_with(setup: &[&str], faults: &str) -> Daemon {
        let mut d = Self::set_up(setup, faults).await;
        d.spawn().await;
        d
    }

    /// `sandstone setup` with `setup`'s flags, its own database when the
    /// PostgreSQL pass runs, and no daemon yet: [`Daemon::spawn`] starts it.
    pub async fn set_up(setup: &[&str], faults: &str) -> Daemon {
        require_root();
        let data = tempfile::Builder::new()
            .prefix("sandstone-test-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let out = Command::new(sandstone_bin())
            // CRIU is unpacked once, by scripts/test.sh (`SANDSTONE_TEST_CRIU`).
            .args(["setup", "--no-debian", "--no-criu"])
            .args(setup)
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "setup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        Daemon {
            crash_at: String::new(),
            warm_pool: 0,
            serve_args: Vec::new(),
            default_network: false,
            // Info, so a daemon that fails to come up shows how far it got.
            log_level: "info".into(),
            data_dir_arg: None,
            inherited_fds: Vec::new(),
            ignored_signals: Vec::new(),
            child: None,
            url: format!("http://127.0.0.1:{port}"),
            token: String::new(),
            data,
            db: sandstone_db::testing::TestDatabase::create().await,
            port,
            faults: faults.into(),
            http: reqwest::Client::new(),
            env: Vec::new(),
        }
    }

    /// (Re)starts the daemon process on the same data dir and port.
    pub async fn spawn(&mut self) {
        let mut cmd = Command::new(sandstone_bin());
        let inherited: Vec<(i32, std::ffi::CString)> = self
            .inherited_fds
            .iter()
            .map(|(fd, p)| {
                let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
                (*fd, c)
            })
            .collect();
        let ignored = self.ignored_signals.clone();
        if !inherited.is_empty() || !ignored.is_empty() {
            use std::os::unix::process::CommandExt;
            // SAFETY: the hook runs between fork and exec and makes only
            // async-signal-safe calls (open, dup2, close, signal) on
            // values prepared before the fork.
            unsafe {
                cmd.pre_exec(move || {
                    for (fd, path) in &inherited {
                        sandstone_sys::fd::open_read_only_as(path, *fd)?;
                    }
                    for &signal in &ignored {
                        libc::signal(signal, libc::SIG_IGN);
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--data-dir")
            .arg(self.data_dir_arg.as_deref().unwrap_or(self.data.path()))
            .env("SANDSTONE_INIT", init_bin())
            .env("SANDSTONE_FAULTS", &self.faults)
            .env("SANDSTONE_CRASH", &self.crash_at)
            .env("SANDSTONE_WARM_POOL", self.warm_pool.to_string())
            .env_remove("SANDSTONE_EGRESS_POOL")
            .env_remove("SANDSTONE_NO_NETWORK")
            .args(&self.serve_args)
            .args(
                self.db
                    .iter()
                    .flat_map(|db| ["--database-url", db.url_string()]),
            )
            .env_remove("SANDSTONE_DATABASE_URL")
            .args(
                (!self.default_network && !self.serve_args.iter().any(|a| a == "--egress-pool"))
                    .then_some("--no-network"),
            )
            .env("SANDSTONE_LOG", &self.log_level)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stderr(Stdio::from(
                std::os::unix::fs::OpenOptionsExt::mode(
                    std::fs::OpenOptions::new().create(true).append(true),
                    0o600,
                )
                .open(self.data.path().join("daemon.log"))
                .expect("daemon log"),
            ))
            .spawn()
            .expect("start daemon");
        self.child = Some(child);
        // A loaded CI machine (the PostgreSQL pass, a browser beside it) can
        // take a while; a daemon that exits says so at once, with its log.
        let deadline = Instant::now() + Duration::from_secs(60);
        // Its own client, a connection per look: a pooled connection to the
        // daemon this one replaced (same port) is never what answers.
        // Nor for the test's own calls: a fresh pool for the new daemon.
        self.http = reqwest::Client::new();
        let probe = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("probe client");
        loop {
            let last = match probe.get(format!("{}/healthz", self.url)).send().await {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => format!("answered {}", r.status()),
                Err(e) => format!("{e:?}"),
            };
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= deadline {
                let pid = self.child.as_ref().map(|c| c.id()).unwrap_or_default();
                let listening = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
                let port = format!(":{:04X} ", self.port);
                let on_port: Vec<&str> = listening.lines().filter(|l| l.contains(&port)).collect();
                panic!(
                    "daemon did not come up ({exited:?}); the last look: {last}\nsockets on its port: {on_port:#?}\nits log:\n{}\nwhere it waits:\n{}",
                    self.log(),
                    kernel_stacks(pid)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.token = std::fs::read_to_string(self.data.path().join("admin.token")).unwrap();
    }

    /// What the daemon has logged so far (every spawn appends to one file).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("daemon.log")).unwrap_or_default()
    }

    /// SIGTERM, as a service manager stops it; waits for the exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = sandstone_sys::process::kill(pid_of(&c), libc::SIGTERM);
            let _ = c.wait();
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.req(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.req(reqwest::Method::GET, path, None).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.req(reqwest::Method::DELETE, path, None).await
    }

    pub async fn create(&self, config: Value) -> String {
        let (s, v) = self
            .post(
                "/api/v1/sandboxes",
                json!({"template": "host", "config": config}),
            )
            .await;
        assert_eq!(s, 201, "create: {v}");
        v["data"]["sandbox_id"].as_str().unwrap().to_string()
    }

    /// POSTs `body` and asserts a 400 whose message contains `needle` (the
    /// field it names).
    pub async fn rejects(&self, path: &str, body: Value, needle: &str) {
        let (s, v) = self.post(path, body).await;
        assert_names(s, &v, needle);
    }

    /// Runs `argv` to completion and returns the context response's data.
    pub async fn run(&self, id: &str, argv: &[&str]) -> Value {
        let body = json!({"type": "cmd", "cmd": {"command": argv}, "wait_until_done": true, "timeout_sec": 60});
        let (s, v) = self
            .post(&format!("/api/v1/sandboxes/{id}/contexts"), body)
            .await;
        assert_eq!(s, 201, "run {argv:?}: {v}");
        v["data"].clone()
    }

    /// Runs `sh -c script`.
    pub async fn sh(&self, id: &str, script: &str) -> Value {
        self.run(id, &["sh", "-c", script]).await
    }

    /// Copies the repository's `tests/<rel>` to `/tmp/<its name>` in the
    /// sandbox, then starts `python3` on it with `args` in the background.
    pub async fn start_script(&self, id: &str, rel: &str, args: &[&str]) {
        let file = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests")
            .join(rel);
        let name = file.file_name().unwrap().to_str().unwrap().to_string();
        let r = self
            .http
            .post(format!(
                "{}/api/v1/sandboxes/{id}/files?path=/tmp/{name}",
                self.url
            ))
            .bearer_auth(&self.token)
            .body(std::fs::read(&file).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "upload {rel}");
        let tmp = format!("/tmp/{name}");
        let mut argv = vec!["python3", tmp.as_str()];
        argv.extend_from_slice(args);
        let body = json!({"type": "cmd", "cmd": {"command": argv}});
        let (s, v) = self
            .post(&format!("/api/v1/sandboxes/{id}/contexts"), body)
            .await;
        assert_eq!(s, 201, "start {rel}: {v}");
    }

    /// The egress audit records of `id` (each event's `attributes`), with
    /// `query` added to the request (`outcome=denied`, say).
    pub async fn audit(&self, id: &str, query: &str) -> Vec<Value> {
        let (s, v) = self
            .get(&format!(
                "/api/v1/sandboxes/{id}/observability/events?limit=1000&{query}"
            ))
            .await;
        assert_eq!(s, 200, "{v}");
        let events = v["data"]["events"].as_array().unwrap();
        events.iter().map(|e| e["attributes"].clone()).collect()
    }

    /// Waits (5 s at most) until the egress audit of `id` holds a record
    /// `pred` accepts, and returns it.
    pub async fn audited(&self, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let events = self.audit(id, "").await;
            if let Some(e) = events.iter().find(|e| pred(e)) {
                return e.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no such audit record: {events:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The daemon's Prometheus page.
    pub async fn metrics(&self) -> String {
        self.metrics_as(&self.token).await
    }

    /// The Prometheus page as API key `token` sees it.
    pub async fn metrics_as(&self, token: &str) -> String {
        self.http
            .get(format!("{}/metrics", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Warm-pool members ready to be claimed.
    pub async fn warm_ready(&self) -> u64 {
        let m = self.metrics().await;
        m.lines()
            .find_map(|l| l.strip_prefix("sandstone_warm_pool_ready "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Waits (30 s at most) until `n` warm-pool members are ready.
    pub async fn wait_warm(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.warm_ready().await < n {
            assert!(
                Instant::now() < deadline,
                "the warm pool never filled to {n}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the metadata is in PostgreSQL rather than the data dir.
    pub fn on_postgres(&self) -> bool {
        self.db.is_some()
    }

    /// Everything the metadata database holds, as bytes to search: the
    /// SQLite files, or a `pg_dump` of its PostgreSQL database.
    pub fn database_bytes(&self) -> Vec<u8> {
        match &self.db {
            None => ["sandstone.db", "sandstone.db-wal"]
                .iter()
                .flat_map(|f| std::fs::read(self.data.path().join(f)).unwrap_or_default())
                .collect(),
            Some(db) => {
                let out = Command::new("pg_dump")
                    .args(["--data-only", "--dbname", db.url_string()])
                    .output()
                    .expect("run pg_dump");
                assert!(out.status.success(), "pg_dump: {}", text(&out.stderr));
                out.stdout
            }
        }
    }

    /// Where sandbox volumes and snapshots live: the btrfs pool, or the data
    /// dir with the `dir` driver.
    pub fn pool_root(&self) -> PathBuf {
        let pool = self.data.path().join("pool");
        if pool.exists() {
            pool
        } else {
            self.data.path().to_path_buf()
        }
    }

    /// Sandbox volumes on disk.
    pub fn volumes(&self) -> Vec<String> {
        entries(&self.pool_root().join("sandboxes"))
    }

    /// Snapshot volumes on disk.
    pub fn snapshot_volumes(&self) -> Vec<String> {
        entries(&self.pool_root().join("snapshots"))
    }

    pub fn dir_entries(&self, sub: &str) -> Vec<String> {
        std::fs::read_dir(self.data.path().join(sub))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Where a process and its descendants wait, thread by thread (their
/// kernel stacks): what a test shows when a daemon does not come up.
fn kernel_stacks(pid: u32) -> String {
    let mut out = String::new();
    let mut pending = vec![pid];
    while let Some(pid) = pending.pop() {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        out += &format!(
            "process {pid}: {}\n",
            String::from_utf8_lossy(&cmdline).replace('\0', " ")
        );
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let at = task.path();
            let read = |f: &str| std::fs::read_to_string(at.join(f)).unwrap_or_default();
            out += &format!(
                "  thread {} ({}):\n{}",
                task.file_name().to_string_lossy(),
                read("comm").trim(),
                read("stack")
            );
            pending.extend(
                read("children")
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    out
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Delete every sandbox through the CLI so a failed test leaks nothing.
        if self.child.is_some() {
            let env = [
                ("SANDSTONE_URL", self.url.clone()),
                ("SANDSTONE_TOKEN", self.token.clone()),
            ];
            let ls = Command::new(sandstone_bin())
                .args(["ls", "--json"])
                .envs(env.clone())
                .output();
            if let Ok(out) = ls
                && let Ok(v) = serde_json::from_slice::<Value>(&out.stdout)
            {
                for s in v["sandboxes"].as_array().into_iter().flatten() {
                    let id = s["id"].as_str().unwrap_or_default();
                    let _ = Command::new(sandstone_bin())
                        .args(["rm", id])
                        .envs(env.clone())
                        .output();
                }
            }
        }
        self.stop();
        unmount_pool(self.data.path());
    }
}

/// Unmounts what `setup` and `serve` mount in a data dir (the btrfs pool,
/// or the dir pool's nosuid,nodev binds), so the directory can be removed.
pub fn unmount_pool(data_dir: &Path) {
    for mount in ["sandboxes", "snapshots", "captures", "pool"] {
        let at = data_dir.join(mount);
        if at.exists() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&at)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A daemon with egress on, forwarding allowed DNS to `dns_upstream`.
pub async fn networked(dns_upstream: &str, extra: &[String]) -> Daemon {
    let mut d = Daemon::start().await;
    d.kill();
    d.serve_args = vec![
        "--egress-pool".into(),
        test_subnet_pool(),
        "--dns-upstream".into(),
        dns_upstream.into(),
    ];
    d.serve_args.extend_from_slice(extra);
    d.spawn().await;
    d
}

/// Asserts a 400 whose error message contains `needle` (the field named);
/// both error shapes (Sandbox0's and Anthropic's) keep it in
/// `error.message`.
/// SHA-256 hex of `data` by coreutils' `sha256sum`: an implementation
/// independent of the daemon's.
/// The host pid of sandbox `id`'s init: the process in its cgroup that is
/// PID 1 of its pid namespace.
pub fn init_pid(id: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        if !cgroup.lines().any(|l| l.ends_with(&format!("/{id}"))) {
            return None;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let nspid = status.lines().find(|l| l.starts_with("NSpid:"))?;
        (nspid.split_whitespace().last() == Some("1")).then_some(pid)
    })
}

/// A new ed25519 key pair made by OpenSSH's `ssh-keygen` in `dir` as
/// `name` (and `name.pub`), encrypted with `passphrase` (none when empty);
/// returns the private key's text.
pub fn ssh_keygen(dir: &Path, name: &str, passphrase: &str) -> String {
    let path = dir.join(name);
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-C", name, "-N", passphrase, "-f"])
        .arg(&path)
        .output()
        .expect("run ssh-keygen");
    assert!(out.status.success(), "ssh-keygen: {}", text(&out.stderr));
    std::fs::read_to_string(path).unwrap()
}

pub fn sha256sum(data: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(data)?;
            c.wait_with_output()
        })
        .expect("run sha256sum");
    text(&out.stdout)[..64].to_string()
}

/// The Python with the SDKs installed (`SANDSTONE_SDK_PYTHON`, which
/// scripts/test.sh sets up); without it the calling test is skipped.
pub fn sdk_python() -> Option<String> {
    let python = std::env::var("SANDSTONE_SDK_PYTHON").ok();
    if python.is_none() {
        eprintln!("skipped: SANDSTONE_SDK_PYTHON is not set (scripts/test.sh sets it up)");
    }
    python
}

/// Runs `tests/<script>` with `python` and `envs`, asserts it succeeded,
/// and returns what it printed (stdout, stderr).
pub async fn run_python(python: &str, script: &str, envs: &[(&str, &str)]) -> (String, String) {
    let path = format!("{}/../../tests/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new(python)
        .arg(&path)
        .envs(envs.iter().copied())
        .output()
        .await
        .expect("run python");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

/// Runs the `sandstone` CLI against `d` with `stdin`.
pub fn cli(d: &Daemon, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(sandstone_bin())
        .args(args)
        .env("SANDSTONE_URL", &d.url)
        .env("SANDSTONE_DATA_DIR", d.data.path())
        .env_remove("SANDSTONE_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Sandbox `id`'s memory limit in bytes, as its cgroup (v1's memory
/// controller) holds it.
pub fn memory_limit_of(id: &str) -> Option<String> {
    fn find(dir: &std::path::Path, id: &str, depth: u32) -> Option<std::path::PathBuf> {
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            if !e.file_type().ok()?.is_dir() {
                continue;
            }
            if e.file_name() == id {
                return Some(e.path());
            }
            if depth > 0
                && let Some(p) = find(&e.path(), id, depth - 1)
            {
                return Some(p);
            }
        }
        None
    }
    let dir = find(std::path::Path::new("/sys/fs/cgroup/memory"), id, 4)?;
    std::fs::read_to_string(dir.join("memory.limit_in_bytes"))
        .ok()
        .map(|s| s.trim().to_string())
}
