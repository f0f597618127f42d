//! Negative security tests: each attack from inside a sandbox must fail.

// Test code: an unexpected failure is the test failing, so unwrap is the point.
#![allow(clippy::unwrap_used)]

mod common;

use common::Daemon;
use serde_json::json;

async fn py(d: &Daemon, id: &str, code: &str) -> serde_json::Value {
    d.run(id, &["python3", "-c", code]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn host_files_processes_and_network_are_out_of_reach() {
    let d = Daemon::start().await;
    let id = d.create(json!({})).await;
    let data_dir = d.data.path().display().to_string();
    let probe = format!(
        "cat /etc/shadow; ls /root/.cargo; ls {data_dir}; cat /proc/1/environ; echo w > /usr/bin/x; \
         mount -t tmpfs t /mnt; echo end"
    );
    let r = d.sh(&id, &probe).await;
    let err = r["stderr"].as_str().unwrap();
    assert_eq!(r["stdout"], "end\n", "nothing may be read: {r}");
    assert!(err.contains("/etc/shadow: No such file"), "{err}");
    assert!(
        err.contains("/root/.cargo") && err.contains(&data_dir),
        "{err}"
    );
    assert!(err.contains("/proc/1/environ: Permission denied"), "{err}");
    assert!(err.contains("/usr/bin/x: Read-only file system"), "{err}");
    // Root inside owns the template's /etc (idmapped): a write lands in the
    // sandbox's own layer, never in the shared template.
    assert_eq!(
        d.sh(
            &id,
            "echo w > /etc/x && cat /etc/x && stat -c %U /etc/passwd"
        )
        .await["stdout"],
        "w\nroot\n"
    );
    assert!(!d.data.path().join("templates/host/rootfs/etc/x").exists());
    let stored = d.pool_root().join(format!("sandboxes/{id}/upper/etc/x"));
    // Stored unshifted (uid 0 on disk), behind a directory only host root
    // can traverse, so a setuid file made inside is no use to host users.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(std::fs::metadata(&stored).unwrap().uid(), 0);
    let mode = std::fs::metadata(d.pool_root().join("sandboxes"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    assert!(err.contains("mount"), "{err}");

    // Only the sandbox's own processes are visible; PID 1 is init.
    let r = d.sh(&id, "ls /proc | grep -c '^[0-9]'").await;
    let n: u32 = r["stdout"].as_str().unwrap().trim().parse().unwrap();
    assert!(n < 10, "sees {n} processes");

    // Host loopback (the daemon's own port) and the outside are unreachable.
    let port = d.url.rsplit(':').next().unwrap();
    let r = py(&d, &id, &format!(
        "import socket\nfor a in [('127.0.0.1',{port}),('10.0.0.1',80),('1.1.1.1',53)]:\n  s=socket.socket(); s.settimeout(2)\n  try:\n    s.connect(a); print('CONNECTED',a)\n  except OSError as e: print('refused',e.errno)"
    )).await;
    assert!(!r["stdout"].as_str().unwrap().contains("CONNECTED"), "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn host_kernel_paths_are_masked_by_one_empty_read_only_mount() {
    let d = Daemon::start().await;
    let id = d.create(json!({})).await;
    let probe = "for p in /proc/acpi /proc/asound /proc/scsi /sys/firmware \
                   /sys/devices/virtual/powercap; do
           [ -d $p ] || continue
           echo \"$p $(stat -c %d $p) $(ls -A $p | wc -l)\"
           touch $p/x 2>/dev/null && echo \"$p writable\"
         done
         for f in /proc/kcore /proc/keys /proc/timer_list /proc/sched_debug; do
           [ -e $f ] && echo \"file $f $(wc -c < $f)\"
         done";
    let r = d.sh(&id, probe).await;
    let out = r["stdout"].as_str().unwrap();
    let (files, dirs): (Vec<&str>, Vec<&str>) = out.lines().partition(|l| l.starts_with("file "));
    // Masked files read as /dev/null.
    assert!(!files.is_empty(), "{r}");
    for f in &files {
        assert!(f.ends_with(" 0"), "{f} is not hidden");
    }
    // This machine has /proc/acpi and /sys/firmware at least.
    assert!(dirs.len() >= 2, "{r}");
    let mut devices = std::collections::BTreeSet::new();
    for line in dirs {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 3, "{line} (a masked directory could be written)");
        assert_eq!(f[2], "0", "{} shows entries", f[0]);
        devices.insert(f[1]);
    }
    // One superblock for all: each costs kernel memory in every memory
    // cgroup of the machine.
    assert_eq!(devices.len(), 1, "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn privileged_operations_fail() {
    let d = Daemon::start().await;
    let id = d.create(json!({})).await;
    let code = r#"
import ctypes, os, socket
libc = ctypes.CDLL(None, use_errno=True)
def sys(nr, *a):
    r = libc.syscall(nr, *a); return 'ok' if r >= 0 else os.strerror(ctypes.get_errno())
print('ptrace', sys(101, 16, 1, 0, 0))            # PTRACE_ATTACH pid 1
print('init_module', sys(175, 0, 0, b''))
print('finit_module', sys(313, 0, b'', 0))
print('bpf', sys(321, 0, 0, 0))
print('unshare_user', sys(272, 0x10000000))
print('keyctl', sys(250, 0, 0, 0, 0))
try:
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); print('raw ok')
except OSError as e: print('raw', e.strerror)
try:
    open('/proc/1/exe', 'wb'); print('exe ok')
except OSError as e: print('exe', e.strerror)
bnd = int([l for l in open('/proc/self/status') if l.startswith('CapBnd')][0].split()[1], 16)
print('sys_admin_bounding', bool(bnd & (1 << 21)))
pid = os.fork()
if pid == 0:
    os.setgid(1000); os.setuid(1000)
    os.execv('/usr/bin/grep', ['grep', 'CapEff', '/proc/self/status'])
os.waitpid(pid, 0)
"#;
    let r = py(&d, &id, code).await;
    let out = r["stdout"].as_str().unwrap();
    for line in [
        "ptrace Operation not permitted",
        "init_module Operation not permitted",
        "finit_module Operation not permitted",
        "bpf Operation not permitted",
        "unshare_user Operation not permitted",
        "keyctl Operation not permitted",
        "raw Operation not permitted",
        "sys_admin_bounding False",
        "CapEff:\t0000000000000000",
    ] {
        assert!(
            out.contains(line),
            "missing {line:?} in:\n{out}\n{}",
            r["stderr"]
        );
    }
    assert!(!out.contains("exe ok"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn symlinks_planted_for_the_file_api_resolve_inside() {
    let d = Daemon::start().await;
    let id = d.create(json!({})).await;
    let token_path = d.data.path().join("admin.token").display().to_string();
    d.sh(&id, &format!("ln -s /../../../../etc/shadow /workspace/esc; ln -s /proc/1/root{token_path} /workspace/tok")).await;
    for link in ["esc", "tok"] {
        let (s, v) = d
            .get(&format!(
                "/api/v1/sandboxes/{id}/files?path=/workspace/{link}"
            ))
            .await;
        assert_eq!(s, 404, "{link} reached a host file: {v}");
    }
    // Writing through a link lands inside the sandbox, never on the host.
    d.sh(&id, "ln -s /tmp/target /workspace/w").await;
    let r = d
        .http
        .post(format!(
            "{}/api/v1/sandboxes/{id}/files?path=/workspace/w",
            d.url
        ))
        .bearer_auth(&d.token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!std::path::Path::new("/tmp/target").exists());
    assert_eq!(d.sh(&id, "cat /tmp/target").await["stdout"], "x");
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_hold_and_are_reported() {
    let d = Daemon::start().await;
    let id = d
        .create(json!({"resources": {"memory": "64Mi", "pids": 64}}))
        .await;
    let r = d
        .sh(&id, "python3 -c 'b = bytearray(300 << 20); print(len(b))'")
        .await;
    assert_eq!(r["oom_killed"], true, "{r}");
    assert_eq!(r["exit_code"], 137);
    assert_eq!(r["state"], "oom_killed");
    let bomb = "for i in $(seq 200); do sleep 2 & done 2>/dev/null; sleep 0.2; ls /proc | grep -c '^[0-9]'";
    let r = d.sh(&id, bomb).await;
    let n: u32 = r["stdout"].as_str().unwrap().trim().parse().unwrap_or(0);
    assert!(n <= 64, "fork bomb passed the pids limit: {n}");
    // While the limit is exhausted new commands are refused with a clear
    // error; once the bomb's processes end the sandbox works again.
    let body = json!({"type": "cmd", "cmd": {"command": ["echo", "still-alive"]}, "wait_until_done": true});
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (s, v) = d
            .post(&format!("/api/v1/sandboxes/{id}/contexts"), body.clone())
            .await;
        if s == 201 {
            assert_eq!(v["data"]["stdout"], "still-alive\n");
            break;
        }
        assert!(s < 500 || s == 503, "{v}");
        assert!(
            std::time::Instant::now() < deadline,
            "sandbox did not recover: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sandboxes_cannot_see_or_signal_each_other() {
    let d = Daemon::start().await;
    let a = d.create(json!({})).await;
    let b = d.create(json!({})).await;
    d.sh(&a, "echo secret > /workspace/a.txt; (sleep 300 &) ; true")
        .await;
    let r = d.sh(&b, "cat /workspace/a.txt; ls /proc | grep '^[0-9]' | while read p; do cat /proc/$p/cmdline 2>/dev/null | tr '\\0' ' '; echo; done").await;
    assert!(!r["stdout"].as_str().unwrap().contains("sleep 300"), "{r}");
    assert!(
        r["stderr"].as_str().unwrap().contains("No such file"),
        "{r}"
    );
    // Host pids of A's processes mean nothing in B's pid namespace.
    let host_pids: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .filter(|p| p.chars().all(|c| c.is_ascii_digit()))
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .unwrap_or_default()
                .starts_with("sleep\u{0}300")
        })
        .collect();
    assert!(!host_pids.is_empty());
    let r = d
        .sh(
            &b,
            &format!("kill -9 {} 2>&1; echo done", host_pids.join(" ")),
        )
        .await;
    assert!(
        r["stdout"].as_str().unwrap().contains("No such process")
            || r["stdout"].as_str().unwrap().contains("done")
    );
    assert!(
        host_pids
            .iter()
            .all(|p| std::path::Path::new(&format!("/proc/{p}")).exists()),
        "B killed A's process"
    );
}

fn mode_of(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn chmod(p: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The data dir holds the database (claims' `env_vars`, sessions, audit),
/// the keys and the raw pool image: no other local user may read any of it.
#[tokio::test(flavor = "multi_thread")]
async fn the_data_dir_is_private_and_loose_modes_are_fixed_at_start() {
    let mut d = Daemon::start().await;
    let dir = d.data.path().to_path_buf();
    let id = d.create(json!({"env_vars": {"SECRET": "hunter2"}})).await;
    assert_eq!(d.sh(&id, "echo $SECRET").await["stdout"], "hunter2\n");
    // On PostgreSQL the data dir holds no database file at all.
    let db_files: &[&str] = if d.on_postgres() {
        assert!(!dir.join("sandstone.db").exists());
        &[]
    } else {
        &["sandstone.db", "sandstone.db-wal", "sandstone.db-shm"]
    };
    let private = ["pool.img", "admin.token", "secret.key"];
    assert_eq!(mode_of(&dir), 0o700, "data dir");
    for f in db_files.iter().chain(&private) {
        assert_eq!(mode_of(&dir.join(f)), 0o600, "{f}");
    }
    let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap();
    assert!(!log.contains("tightened"), "made loose, then fixed:\n{log}");
    // Created that way by `setup` alone too, on a fresh directory.
    let fresh = tempfile::tempdir_in("/var/tmp").unwrap();
    let fresh_dir = fresh.path().join("data");
    let out = std::process::Command::new(common::sandstone_bin())
        .args(["setup", "--no-debian", "--no-pool", "--data-dir"])
        .arg(&fresh_dir)
        .output()
        .unwrap();
    common::unmount_pool(&fresh_dir);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    assert_eq!(mode_of(&fresh_dir), 0o700);
    assert!(
        !common::text(&out.stderr).contains("tightened"),
        "a fresh data dir needs no fixing: {}",
        common::text(&out.stderr)
    );

    // Modes loosened behind the daemon's back are tightened at the next
    // start of `setup` and of `serve`, each fix logged with its path.
    d.kill();
    let loosen = || {
        chmod(&dir, 0o755);
        // (The shared-memory file is SQLite's to remake.)
        let db = db_files.iter().filter(|f| !f.ends_with("-shm"));
        for f in db.chain(&["pool.img", "admin.token"]) {
            chmod(&dir.join(f), 0o644);
        }
        std::fs::write(dir.join("notes.log"), "x").unwrap();
        chmod(&dir.join("notes.log"), 0o664);
    };
    loosen();
    let out = std::process::Command::new(common::sandstone_bin())
        .args(["setup", "--no-debian", "--pool-gib", "4", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let said = common::text(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert_eq!(mode_of(&dir), 0o700);
    assert!(
        said.contains(&dir.join("pool.img").display().to_string()),
        "{said}"
    );
    loosen();
    d.spawn().await;
    assert_eq!(mode_of(&dir), 0o700, "data dir");
    for f in db_files
        .iter()
        .chain(&["pool.img", "admin.token", "notes.log"])
    {
        assert_eq!(mode_of(&dir.join(f)), 0o600, "{f}");
    }
    let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap();
    for f in db_files
        .first()
        .into_iter()
        .chain(&["pool.img", "notes.log"])
    {
        let path = dir.join(f).display().to_string();
        assert!(
            log.lines().any(|l| l.contains("WARN") && l.contains(&path)),
            "no warning names {path}:\n{log}"
        );
    }
    assert_eq!(d.sh(&id, "echo $SECRET").await["stdout"], "hunter2\n");
}

/// Writes up to `mib` MiB of zeros to `id`'s /workspace (stopping at its
/// cap) and returns how many bytes were written.
async fn fill(d: &Daemon, id: &str, mib: u64) -> u64 {
    let r = d
        .sh(
            id,
            &format!("dd if=/dev/zero of=/workspace/fill bs=1M count={mib} 2>/dev/null; sync; stat -c %s /workspace/fill"),
        )
        .await;
    r["stdout"]
        .as_str()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("fill: {r}"))
}

/// The pool is shared: no sandbox's cap may let it fill the pool, and the
/// API refuses new work (507) while there is still room, not after.
#[tokio::test(flavor = "multi_thread")]
async fn disk_caps_fit_the_pool_and_a_full_sandbox_leaves_the_others_room() {
    let d = Daemon::start_with(&["--pool-gib", "2"], "").await;
    // An explicit cap larger than the pool is refused, naming the field.
    d.rejects(
        "/api/v1/sandboxes",
        json!({"template": "host", "config": {"resources": {"disk": "10Gi"}}}),
        "config.resources.disk",
    )
    .await;
    // The default cap fits the pool: writing past it fails in this sandbox
    // only, and the pool keeps room for the others.
    let a = d.create(json!({})).await;
    let b = d.create(json!({})).await;
    let used = fill(&d, &a, 4096).await;
    assert!(
        used > 256 << 20 && used <= 1 << 30,
        "the default cap did not stop the fill at a share of the 2 GiB pool: {used} bytes"
    );
    let r = d
        .sh(
            &b,
            "head -c 100000000 /dev/zero > /workspace/b && sync && echo ok",
        )
        .await;
    assert_eq!(r["stdout"], "ok\n", "another sandbox could not write: {r}");
    let (s, v) = d
        .req(
            reqwest::Method::POST,
            &format!("/api/v1/sandboxes/{b}/files?path=/workspace/c"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let c = d.create(json!({})).await;
    assert_eq!(
        d.sh(&c, "echo ok > /workspace/x && cat /workspace/x").await["stdout"],
        "ok\n"
    );

    // Sandboxes that together fill the pool hit the reserve first: new
    // sandboxes and API writes get 507 while the pool still has room.
    let df = std::process::Command::new("df")
        .args(["-B1M", "--output=avail"])
        .arg(d.pool_root())
        .output()
        .unwrap();
    let avail: u64 = common::text(&df.stdout)
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap();
    let mib = avail - 128;
    let e = d
        .create(json!({"resources": {"disk": format!("{mib}Mi")}}))
        .await;
    fill(&d, &e, mib).await;
    let (s, v) = d
        .post("/api/v1/sandboxes", json!({"template": "host"}))
        .await;
    assert_eq!(s, 507, "{v}");
    let (s, v) = d
        .req(
            reqwest::Method::POST,
            &format!("/api/v1/sandboxes/{b}/files?path=/workspace/d"),
            None,
        )
        .await;
    assert_eq!(s, 507, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("free"),
        "{v}"
    );
    assert_eq!(
        d.sh(&b, "echo ok > /workspace/small && cat /workspace/small")
            .await["stdout"],
        "ok\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn vsock_and_io_uring_are_refused() {
    let d = Daemon::start().await;
    let id = d.create(json!({})).await;
    let code = r#"
import ctypes, errno, os, socket
try:
    socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM); print('vsock ok')
except OSError as e: print('vsock', errno.errorcode[e.errno])
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)
for nr, name in [(425, 'io_uring_setup'), (426, 'io_uring_enter'), (427, 'io_uring_register')]:
    args = (8, params) if nr == 425 else (0, 0, 0, 0)
    r = libc.syscall(nr, *args)
    print(name, 'ok' if r >= 0 else errno.errorcode[ctypes.get_errno()])
"#;
    let r = py(&d, &id, code).await;
    let out = r["stdout"].as_str().unwrap();
    for line in [
        "vsock EAFNOSUPPORT",
        "io_uring_setup EPERM",
        "io_uring_enter EPERM",
        "io_uring_register EPERM",
    ] {
        assert!(
            out.contains(line),
            "missing {line:?} in:\n{out}\n{}",
            r["stderr"]
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_need_the_api_key_and_open_routes_name_no_sandbox() {
    let d = Daemon::start().await;
    let id = d.create(json!({})).await;
    let anonymous = |path: &str| {
        let url = format!("{}{path}", d.url);
        async move {
            let r = reqwest::get(url).await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (s, body) = anonymous("/metrics").await;
    assert_eq!(s, 401, "{body}");
    assert!(!body.contains(&id));
    for path in ["/healthz", "/readyz", "/openapi.json", "/nope"] {
        let (_, body) = anonymous(path).await;
        assert!(!body.contains(&id), "{path} names a sandbox: {body}");
    }
    let m = d.metrics().await;
    assert!(
        m.contains("sandstone_sandboxes{state=\"running\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bearer_scheme_is_accepted_in_any_case() {
    let d = Daemon::start().await;
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let auth = format!("{scheme} {}", d.token);
        let r = d
            .http
            .get(format!("{}/api/v1/sandboxes", d.url))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "sandbox API with {scheme:?}");
        let r = d
            .http
            .get(format!("{}/v1/agents", d.url))
            .header("authorization", &auth)
            .header("anthropic-beta", common::agents::BETA)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "agents API with {scheme:?}");
    }
    let r = d
        .http
        .get(format!("{}/api/v1/sandboxes", d.url))
        .header("authorization", "bearer wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// Mount options of the mount at `at` (the topmost one).
fn mount_options(at: &std::path::Path) -> Option<String> {
    let want = at.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .rev()
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(4) == Some(&want.as_str())).then(|| f[5].to_string())
        })
}

fn assert_nosuid_nodev(at: &std::path::Path, when: &str) {
    let opts =
        mount_options(at).unwrap_or_else(|| panic!("{} is not mounted {when}", at.display()));
    let opts: Vec<&str> = opts.split(',').collect();
    assert!(
        opts.contains(&"nosuid") && opts.contains(&"nodev"),
        "pool mounted {opts:?} {when}"
    );
}

/// A setuid file or device node made inside a sandbox is stored as host
/// root's: the pool must never honour either.
#[tokio::test(flavor = "multi_thread")]
async fn the_pool_is_mounted_nosuid_nodev() {
    let mut d = Daemon::start().await;
    let pool = d.data.path().join("pool");
    assert_nosuid_nodev(&pool, "after setup and serve");
    // Re-attached after a reboot (not mounted), and fixed when something
    // else mounted it without the options.
    d.kill();
    assert!(
        std::process::Command::new("umount")
            .arg(&pool)
            .status()
            .unwrap()
            .success()
    );
    d.spawn().await;
    assert_nosuid_nodev(&pool, "after re-attaching");
    d.kill();
    assert!(
        std::process::Command::new("umount")
            .arg(&pool)
            .status()
            .unwrap()
            .success()
    );
    let img = d.data.path().join("pool.img");
    assert!(
        std::process::Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&pool)
            .status()
            .unwrap()
            .success()
    );
    d.spawn().await;
    assert_nosuid_nodev(&pool, "after a plain mount by someone else");
    let id = d.create(json!({})).await;
    assert_eq!(
        d.sh(&id, "echo ok > /workspace/x && cat /workspace/x")
            .await["stdout"],
        "ok\n"
    );
    // The plain-directory pool lives on the host's filesystem: its volume
    // directories are bound onto themselves with the options.
    let d = Daemon::start_dir().await;
    for dir in ["sandboxes", "snapshots"] {
        assert_nosuid_nodev(&d.data.path().join(dir), "with the dir pool");
    }
    let id = d.create(json!({})).await;
    assert_eq!(d.sh(&id, "echo ok").await["stdout"], "ok\n");
}

/// Cgroup directories named `id` under the daemon's hierarchies.
fn cgroups_named(id: &str) -> Vec<std::path::PathBuf> {
    fn find(dir: &std::path::Path, name: &str, depth: u32, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name() == name {
                out.push(p);
            } else if depth > 0 {
                find(&p, name, depth - 1, out);
            }
        }
    }
    let mut out = Vec::new();
    find(std::path::Path::new("/sys/fs/cgroup"), id, 4, &mut out);
    out
}

/// Host processes whose cgroup path names `id`.
fn processes_of(id: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read_to_string(e.path().join("cgroup"))
                .is_ok_and(|c| c.contains(&format!("/{id}\n")))
        })
        .count()
}

/// A crash leaves the warm pool's members running with no row: the next
/// start removes them (processes, cgroups, volumes) before refilling, even
/// when it spells the data dir another way, and even a member whose volume
/// is already gone (as an earlier restart that missed its cgroup left it).
#[tokio::test(flavor = "multi_thread")]
async fn warm_pool_members_left_by_a_crash_are_swept() {
    let mut d = Daemon::start().await;
    d.kill();
    d.warm_pool = 2;
    d.spawn().await;
    d.wait_warm(2).await;
    let claimed = d.create(json!({})).await;
    d.wait_warm(2).await;
    let old: Vec<String> = d.volumes().into_iter().filter(|v| *v != claimed).collect();
    assert_eq!(old.len(), 2, "{old:?}");
    d.kill();
    let gone = d.pool_root().join("sandboxes").join(&old[0]);
    let deleted = std::process::Command::new("btrfs")
        .args(["-q", "subvolume", "delete"])
        .arg(&gone)
        .status()
        .unwrap();
    assert!(deleted.success());
    d.data_dir_arg = Some(format!("{}/", d.data.path().display()).into());
    d.spawn().await;
    d.wait_warm(2).await;
    // Settle: the refill must have stopped at two.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let now = d.volumes();
    assert_eq!(
        now.len(),
        3,
        "the claimed sandbox and two warm members: {now:?}"
    );
    assert!(now.contains(&claimed));
    for id in &old {
        assert!(!now.contains(id), "{id} kept its volume");
        assert!(
            cgroups_named(id).is_empty(),
            "{id} kept cgroups {:?}",
            cgroups_named(id)
        );
        assert_eq!(processes_of(id), 0, "{id} kept processes");
        assert!(
            !d.data.path().join("run").join(id).exists(),
            "{id} kept its run dir"
        );
    }
    let (_, v) = d.get("/api/v1/sandboxes").await;
    assert_eq!(v["data"]["count"], 1, "{v}");
    assert_eq!(d.sh(&claimed, "echo alive").await["stdout"], "alive\n");
}

/// A sandbox's run dir (init's socket and log, its mount points) is root's
/// alone however it was made: on create and on every resume.
#[tokio::test(flavor = "multi_thread")]
async fn run_dirs_stay_private_across_resumes() {
    let d = Daemon::start().await;
    let id = d.create(json!({})).await;
    let run = d.data.path().join("run").join(&id);
    assert_eq!(mode_of(&run), 0o700, "on create");
    for op in ["pause", "resume"] {
        let (s, v) = d
            .post(&format!("/api/v1/sandboxes/{id}/{op}"), json!({}))
            .await;
        assert!(s < 300, "{op}: {v}");
    }
    assert_eq!(mode_of(&run), 0o700, "after a resume");
    assert_eq!(mode_of(&run.join("rootfs")), 0o700, "after a resume");
}

/// SysV shared memory cannot pin the sandbox's memory past its processes,
/// nor take more than a quarter of the limit.
#[tokio::test(flavor = "multi_thread")]
async fn sysv_shared_memory_is_bounded_and_dies_with_its_processes() {
    let d = Daemon::start().await;
    let id = d.create(json!({"resources": {"memory": "256Mi"}})).await;
    let probe = r#"
import ctypes, ctypes.util
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
IPC_PRIVATE, IPC_CREAT = 0, 0o1000
big = libc.shmget(IPC_PRIVATE, ctypes.c_size_t(200 << 20), IPC_CREAT | 0o600)
print("big", "refused" if big < 0 else "made")
small = libc.shmget(IPC_PRIVATE, ctypes.c_size_t(8 << 20), IPC_CREAT | 0o600)
print("small", "made" if small >= 0 else "refused")
addr = libc.shmat(small, None, 0)
"#;
    let r = d.run(&id, &["python3", "-c", probe]).await;
    assert_eq!(r["stdout"], "big refused\nsmall made\n", "{r}");
    // The process that attached it is gone: so is the segment.
    let r = d
        .sh(&id, "cat /proc/sysvipc/shm | tail -n +2 | wc -l")
        .await;
    assert_eq!(r["stdout"], "0\n", "{r}");
}

/// API keys: an admin makes them with a role and an expiry, their value
/// shown once. Each role does what it may and is refused (403) the rest —
/// on the sandbox API, files, terminals, the toolset route and `/v1`; a
/// deactivated, deleted or expired key is refused (401) from the next
/// request; the first start's admin token keeps working.
#[tokio::test(flavor = "multi_thread")]
async fn api_keys_act_by_role_and_stop_at_once() {
    use reqwest::Method;
    let d = Daemon::start().await;
    let as_key =
        async |token: &str, method: Method, path: &str, body: Option<serde_json::Value>| {
            let mut r = d
                .http
                .request(method, format!("{}{path}", d.url))
                .bearer_auth(token)
                .header("anthropic-beta", "managed-agents-2026-04-01");
            if let Some(b) = body {
                r = r.json(&b);
            }
            let r = r.send().await.unwrap();
            let s = r.status().as_u16();
            (s, r.json::<serde_json::Value>().await.unwrap_or_default())
        };
    let make = async |role: &str, expires: &str| {
        let (s, v) = d
            .post(
                "/api-keys",
                json!({"name": format!("{role} key"), "roles": [role], "expires_in": expires}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let key = v["data"]["key"].as_str().unwrap().to_string();
        (v["data"]["id"].as_str().unwrap().to_string(), key)
    };
    let (dev_id, dev) = make("developer", "30d").await;
    let (viewer_id, viewer) = make("viewer", "never").await;
    d.rejects(
        "/api-keys",
        json!({"name": "x", "roles": ["root"]}),
        "roles",
    )
    .await;
    d.rejects(
        "/api-keys",
        json!({"name": "x", "expires_in": "1y"}),
        "expires_in",
    )
    .await;
    let (s, list) = d.get("/api-keys").await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(
        list["data"]["api_keys"].as_array().unwrap().len(),
        3,
        "{list}"
    );
    assert!(!list.to_string().contains(&dev) && !list.to_string().contains(&viewer));
    let (s, me) = as_key(&dev, Method::GET, "/api-keys/current", None).await;
    assert_eq!(s, 200, "{me}");
    assert_eq!(me["data"]["api_key"]["roles"], json!(["developer"]), "{me}");
    let perms = me["data"]["api_key"]["permissions"].to_string();
    assert!(
        perms.contains("sandbox:write") && !perms.contains("apikey:manage"),
        "{perms}"
    );

    // A developer works with sandboxes and agents, not with keys.
    let (s, v) = as_key(
        &dev,
        Method::POST,
        "/api/v1/sandboxes",
        Some(json!({"template": "host"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let id = v["data"]["sandbox_id"].as_str().unwrap().to_string();
    d.sh(&id, "echo secret > /workspace/f").await;
    for (method, path, body) in [
        (Method::GET, "/api-keys".to_string(), None),
        (
            Method::POST,
            "/api-keys".to_string(),
            Some(json!({"name": "y"})),
        ),
        (
            Method::POST,
            format!("/api-keys/{viewer_id}/deactivate"),
            None,
        ),
        (Method::POST, "/api/v1/nodes/n1/drain".to_string(), None),
    ] {
        let (s, v) = as_key(&dev, method, &path, body).await;
        assert_eq!(s, 403, "developer {path}: {v}");
    }
    let (s, v) = as_key(
        &dev,
        Method::POST,
        "/v1/agents",
        Some(json!({"name": "a", "model": "m"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");

    // A viewer reads metadata only: no writes, file contents or terminals.
    for path in [
        "/api/v1/sandboxes".to_string(),
        format!("/api/v1/sandboxes/{id}/files/list?path=/workspace"),
        "/v1/agents".to_string(),
    ] {
        let (s, v) = as_key(&viewer, Method::GET, &path, None).await;
        assert_eq!(s, 200, "viewer {path}: {v}");
    }
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1/sandboxes".to_string(),
            Some(json!({"template": "host"})),
        ),
        (
            Method::GET,
            format!("/api/v1/sandboxes/{id}/files?path=/workspace/f"),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/sandboxes/{id}/contexts/c1/ws"),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/sandboxes/{id}/contexts"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/sandboxes/{id}/tools/bash"),
            Some(json!({"input": {"command": "id"}})),
        ),
        (Method::DELETE, format!("/api/v1/sandboxes/{id}"), None),
        (
            Method::POST,
            "/v1/agents".to_string(),
            Some(json!({"name": "a", "model": "m"})),
        ),
    ] {
        let (s, v) = as_key(&viewer, method, &path, body).await;
        assert_eq!(s, 403, "viewer {path}: {v}");
        assert!(!v.to_string().contains("secret"), "{v}");
    }

    // Deactivated, deleted, expired: refused from the next request.
    let (s, _) = d
        .post(&format!("/api-keys/{dev_id}/deactivate"), json!({}))
        .await;
    assert_eq!(s, 200);
    let (s, v) = as_key(&dev, Method::GET, "/api/v1/sandboxes", None).await;
    assert_eq!(s, 401, "{v}");
    assert!(v.to_string().contains("deactivated"), "{v}");
    let (s, _) = as_key(&dev, Method::GET, "/v1/agents", None).await;
    assert_eq!(s, 401);
    let (s, _) = d.delete(&format!("/api-keys/{viewer_id}")).await;
    assert_eq!(s, 200);
    let (s, _) = as_key(&viewer, Method::GET, "/api/v1/sandboxes", None).await;
    assert_eq!(s, 401);
    let (s, _) = d.delete(&format!("/api-keys/{viewer_id}")).await;
    assert_eq!(s, 404);
    let (_, brief) = make("viewer", "1s").await;
    let (s, _) = as_key(&brief, Method::GET, "/api/v1/sandboxes", None).await;
    assert_eq!(s, 200);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (s, v) = as_key(&brief, Method::GET, "/api/v1/sandboxes", None).await;
    assert!(s == 401 && v.to_string().contains("expired"), "{s} {v}");
    // The first start's admin token, all along.
    let (s, _) = d.get("/api-keys/current").await;
    assert_eq!(s, 200);
    // Every refusal is on record, naming the key by its id (or a prefix of
    // its hash), never by its value.
    let log = d.log();
    // The sandbox API names the key; /v1 a prefix of its hash.
    let refused = |who: &str, path: &str| {
        log.lines()
            .any(|l| l.contains("refused by the key's role") && l.contains(who) && l.contains(path))
    };
    assert!(
        refused(&viewer_id, "/contexts/c1/ws") && refused("viewer", "POST /agents"),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("API key refused") && l.contains("deactivated")),
        "{log}"
    );
    for secret in [&dev, &viewer, &brief] {
        assert!(!log.contains(secret.as_str()));
    }
}

/// Teams: a key sees and touches only its team's sandboxes, snapshots and
/// credential sources. Another team's object is a 404, exactly as one that
/// does not exist, on every way in (REST, the files API, the toolset,
/// WebSockets, the audit stream), and every refusal is on record.
#[tokio::test(flavor = "multi_thread")]
async fn a_team_sees_only_its_own() {
    use futures_util::StreamExt;
    use reqwest::Method;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    // Networked, so that each sandbox has egress counters in /metrics.
    let d = common::networked("127.0.0.1:1", &[]).await;
    let call = async |token: &str, method: Method, path: &str, body: Option<serde_json::Value>| {
        let mut r = d
            .http
            .request(method, format!("{}{path}", d.url))
            .bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json::<serde_json::Value>().await.unwrap_or_default())
    };
    let (s, blue) = d.post("/teams", json!({"name": "blue"})).await;
    assert_eq!(s, 201, "{blue}");
    let blue_id = blue["data"]["id"].as_str().unwrap().to_string();
    let (s, v) = d.post("/teams", json!({"name": "blue"})).await;
    assert_eq!(s, 409, "{v}");
    d.rejects("/teams", json!({"name": "no spaces"}), "name")
        .await;
    let key = async |name: &str, role: &str, team: Option<&str>| {
        let (s, v) = d
            .post(
                "/api-keys",
                json!({"name": name, "roles": [role], "team_id": team}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["data"]["team_id"], team.unwrap_or("default"), "{v}");
        v["data"]["key"].as_str().unwrap().to_string()
    };
    let red = key("red dev", "developer", None).await;
    let blue_dev = key("blue dev", "developer", Some(&blue_id)).await;
    let blue_admin = key("blue admin", "admin", Some(&blue_id)).await;

    // Each team makes a sandbox; the other's is not there.
    let create_from = async |token: &str, template: &str| {
        let (s, v) = call(
            token,
            Method::POST,
            "/api/v1/sandboxes",
            Some(json!({ "template": template })),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        v["data"]["sandbox_id"].as_str().unwrap().to_string()
    };
    let red_sb = create_from(&red, "host").await;
    let blue_sb = create_from(&blue_dev, "host").await;
    d.sh(&red_sb, "echo red-secret > /workspace/f").await;
    let ids = async |token: &str| -> Vec<String> {
        let (_, v) = call(token, Method::GET, "/api/v1/sandboxes", None).await;
        v["data"]["sandboxes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&blue_dev).await, std::slice::from_ref(&blue_sb));
    assert_eq!(ids(&red).await, std::slice::from_ref(&red_sb));
    let (s, snap) = call(
        &red,
        Method::POST,
        &format!("/api/v1/sandboxes/{red_sb}/snapshots"),
        Some(json!({"name": "s"})),
    )
    .await;
    assert_eq!(s, 201, "{snap}");
    let snap_id = snap["data"]["id"].as_str().unwrap().to_string();
    let (s, v) = call(
        &red,
        Method::POST,
        "/api/v1/credential-sources",
        Some(json!({"name": "gh", "resolverKind": "static_headers",
            "spec": {"staticHeaders": {"values": {"Authorization": "Bearer red-token"}}}})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(
        &red,
        Method::POST,
        "/api/v1/templates/from-sandbox",
        Some(json!({"sandbox_id": red_sb, "template_id": "red-tpl"})),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let templates = async |token: &str| -> Vec<String> {
        let (_, v) = call(token, Method::GET, "/api/v1/templates", None).await;
        v["data"]["templates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["template_id"].as_str().unwrap().to_string())
            .collect()
    };
    // Shared templates are everyone's; a team's own are its.
    assert!(templates(&red).await.contains(&"red-tpl".to_string()));
    let blue_sees = templates(&blue_dev).await;
    assert!(
        blue_sees.contains(&"host".to_string()) && !blue_sees.contains(&"red-tpl".to_string()),
        "{blue_sees:?}"
    );

    // Every way into the red sandbox, from blue: 404, as for no sandbox.
    let (s, none) = call(
        &blue_dev,
        Method::GET,
        "/api/v1/sandboxes/sb-00000000",
        None,
    )
    .await;
    assert_eq!(s, 404, "{none}");
    let sb = format!("/api/v1/sandboxes/{red_sb}");
    for (method, path, body) in [
        (Method::GET, sb.clone(), None),
        (Method::GET, format!("{sb}/status"), None),
        (Method::DELETE, sb.clone(), None),
        (Method::POST, format!("{sb}/pause"), Some(json!({}))),
        (Method::GET, format!("{sb}/files?path=/workspace/f"), None),
        (
            Method::GET,
            format!("{sb}/files/list?path=/workspace"),
            None,
        ),
        (
            Method::POST,
            format!("{sb}/contexts"),
            Some(json!({"type": "cmd", "cmd": {"command": ["id"]}})),
        ),
        (
            Method::POST,
            format!("{sb}/tools/bash"),
            Some(json!({"input": {"command": "cat /workspace/f"}})),
        ),
        (Method::GET, format!("{sb}/network"), None),
        (
            Method::GET,
            format!("{sb}/observability/events?watch=true"),
            None,
        ),
        (Method::GET, format!("{sb}/snapshots"), None),
        (Method::POST, format!("{sb}/fork"), Some(json!({}))),
        (
            Method::GET,
            format!("/api/v1/sandbox-rootfs-snapshots/{snap_id}"),
            None,
        ),
        (
            Method::DELETE,
            format!("/api/v1/sandbox-rootfs-snapshots/{snap_id}"),
            None,
        ),
        (
            Method::POST,
            "/api/v1/sandboxes".to_string(),
            Some(json!({"snapshot_id": snap_id})),
        ),
        (
            Method::POST,
            "/api/v1/templates/from-sandbox".to_string(),
            Some(json!({"sandbox_id": red_sb, "template_id": "stolen"})),
        ),
        (Method::GET, "/api/v1/templates/red-tpl".to_string(), None),
        (
            Method::DELETE,
            "/api/v1/templates/red-tpl".to_string(),
            None,
        ),
        (
            Method::POST,
            "/api/v1/sandboxes".to_string(),
            Some(json!({"template": "red-tpl"})),
        ),
        (
            Method::GET,
            "/api/v1/credential-sources/gh".to_string(),
            None,
        ),
        (
            Method::DELETE,
            "/api/v1/credential-sources/gh".to_string(),
            None,
        ),
    ] {
        let (s, v) = call(&blue_dev, method.clone(), &path, body).await;
        assert_eq!(s, 404, "blue {method} {path}: {v}");
        let v = v.to_string();
        assert!(!v.contains("red-secret") && !v.contains("red-token"), "{v}");
    }
    // An id percent-encoded is the same id to the handler, so the same 404.
    let encoded = |id: &str| format!("%{:02X}{}", id.as_bytes()[0], &id[1..]);
    for path in [
        format!(
            "/api/v1/sandboxes/{}/files?path=/workspace/f",
            encoded(&red_sb)
        ),
        format!("/api/v1/sandboxes/{}", encoded(&red_sb)),
        format!("/api/v1/sandbox-rootfs-snapshots/{}", encoded(&snap_id)),
    ] {
        let (s, v) = call(&blue_dev, Method::GET, &path, None).await;
        assert_eq!(s, 404, "blue GET {path}: {v}");
        assert!(!v.to_string().contains("red-secret"), "{v}");
    }
    // Restoring red's snapshot onto blue's own (paused) sandbox.
    let (s, v) = call(
        &blue_dev,
        Method::POST,
        &format!("/api/v1/sandboxes/{blue_sb}/pause"),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        &blue_dev,
        Method::POST,
        &format!("/api/v1/sandboxes/{blue_sb}/rootfs/restore"),
        Some(json!({ "snapshot_id": snap_id })),
    )
    .await;
    assert_eq!(s, 404, "{v}");
    // Red's template cannot be taken over by building or importing over
    // it, nor built on; shared templates are not a team's to change.
    for path in [
        "/api/v1/templates/build?name=red-tpl",
        "/api/v1/templates/import?name=red-tpl",
    ] {
        let (s, v) = call(&blue_dev, Method::POST, path, None).await;
        assert_eq!(s, 409, "{path}: {v}");
    }
    let (s, v) = call(
        &blue_dev,
        Method::POST,
        "/api/v1/templates/build?name=cloud-0123456789abcdef",
        None,
    )
    .await;
    assert_eq!(s, 400, "{v}");
    for (method, path) in [
        (Method::DELETE, "/api/v1/templates/host?force=true"),
        (Method::POST, "/api/v1/templates/prune"),
        (Method::POST, "/api/v1/registry/credentials"),
    ] {
        let (s, v) = call(&blue_admin, method.clone(), path, None).await;
        assert_eq!(s, 403, "blue admin {method} {path}: {v}");
    }
    let (_, nodes) = call(&blue_dev, Method::GET, "/api/v1/nodes", None).await;
    let node = nodes["data"]["nodes"][0].clone();
    let (s, v) = call(
        &blue_admin,
        Method::POST,
        &format!("/api/v1/nodes/{}/drain", node["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(s, 403, "{v}");
    let listed = node["templates"].to_string();
    assert!(
        listed.contains("host") && !listed.contains("red-tpl"),
        "{listed}"
    );
    // The control plane's credential sources are bound by the daemon only.
    let (s, v) = call(
        &blue_dev,
        Method::PUT,
        &format!("/api/v1/sandboxes/{blue_sb}/network"),
        Some(json!({"mode": "block-all", "credentialBindings": [
            {"ref": "x", "sourceRef": "vault:vcrd_0", "projection": {"type": "http_headers",
             "httpHeaders": {"headers": [{"name": "Authorization", "valueTemplate": "{{ .value }}"}]}}}]})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v.to_string()
            .contains("network.credentialBindings[0].sourceRef"),
        "{v}"
    );
    let (s, v) = call(
        &blue_dev,
        Method::POST,
        &format!("/api/v1/sandboxes/{blue_sb}/resume"),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200, "{v}");

    // The WebSockets too, with the key as a header or as a browser sends
    // it (a subprotocol).
    let ws_url = |path: &str| format!("{}{path}", d.url).replacen("http", "ws", 1);
    for path in [format!("{sb}/files/watch"), format!("{sb}/contexts/c1/ws")] {
        let mut req = ws_url(&path).into_client_request().unwrap();
        req.headers_mut().insert(
            "sec-websocket-protocol",
            format!("sandstone.v1, bearer.{blue_dev}").parse().unwrap(),
        );
        match tokio_tungstenite::connect_async(req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status().as_u16(), 404, "{path}")
            }
            other => panic!("{path}: {:?}", other.map(|(_, r)| r.status())),
        }
    }
    // Its own sandbox's watch opens for a browser's subprotocol key, and
    // the server picks the protocol without echoing the key.
    let mut req = ws_url(&format!("/api/v1/sandboxes/{blue_sb}/files/watch"))
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("sandstone.v1, bearer.{blue_dev}").parse().unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "sandstone.v1");
    drop(ws.next());

    // Credential source names are per team: blue's `gh` is its own.
    let (s, v) = call(&blue_dev, Method::GET, "/api/v1/credential-sources", None).await;
    assert_eq!((s, v["data"].as_array().unwrap().len()), (200, 0), "{v}");
    let (s, v) = call(
        &blue_dev,
        Method::POST,
        "/api/v1/credential-sources",
        Some(json!({"name": "gh", "resolverKind": "static_headers",
            "spec": {"staticHeaders": {"values": {"Authorization": "Bearer blue-token"}}}})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    // The red sandbox, its snapshot and template are untouched.
    create_from(&red, "red-tpl").await;
    let (s, v) = call(
        &red,
        Method::GET,
        &format!("{sb}/files?path=/workspace/f"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = call(
        &red,
        Method::GET,
        &format!("/api/v1/sandbox-rootfs-snapshots/{snap_id}"),
        None,
    )
    .await;
    assert_eq!(s, 200);

    // /metrics names only the team's own sandboxes (the installation's
    // admins see every one).
    let m = d.metrics_as(&blue_dev).await;
    assert!(m.contains(&blue_sb) && !m.contains(&red_sb), "{m}");
    let m = d.metrics().await;
    assert!(m.contains(&blue_sb) && m.contains(&red_sb), "{m}");

    // A team's admin manages its own keys only, and makes no teams.
    let (s, v) = call(&blue_admin, Method::GET, "/api-keys", None).await;
    assert_eq!(s, 200, "{v}");
    let keys = v["data"]["api_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{v}");
    assert!(keys.iter().all(|k| k["team_id"] == blue_id.as_str()), "{v}");
    let (_, all) = d.get("/api-keys").await;
    let red_key_id = all["data"]["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "red dev")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    for (method, path, body) in [
        (Method::DELETE, format!("/api-keys/{red_key_id}"), None),
        (
            Method::POST,
            format!("/api-keys/{red_key_id}/deactivate"),
            None,
        ),
        (
            Method::POST,
            "/api-keys".to_string(),
            Some(json!({"name": "x", "team_id": "default"})),
        ),
    ] {
        let (s, v) = call(&blue_admin, method, &path, body).await;
        assert_eq!(s, 404, "{path}: {v}");
    }
    let (s, v) = call(
        &blue_admin,
        Method::POST,
        "/teams",
        Some(json!({"name": "green"})),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = call(&blue_dev, Method::GET, "/teams", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["data"]["teams"].as_array().unwrap().len(), 1, "{v}");
    let (_, v) = call(&red, Method::GET, "/api-keys/current", None).await;
    assert_eq!(v["data"]["api_key"]["team_id"], "default", "{v}");

    let log = d.log();
    for needle in [
        "refused: sandbox of another team",
        "refused: snapshot of another team",
        "refused: capturing a sandbox of another team",
        "refused: template of another team",
        "refused: an API key of another team",
    ] {
        assert!(log.contains(needle), "{needle}: {log}");
    }
    assert!(!log.contains(&blue_dev) && !log.contains(&red));
    // The harness cleans up with the default team's key, which does not
    // see blue's sandbox: blue removes its own (a running sandbox outlives
    // its daemon, and its host link would stay behind).
    let (s, v) = call(
        &blue_dev,
        Method::DELETE,
        &format!("/api/v1/sandboxes/{blue_sb}"),
        None,
    )
    .await;
    assert_eq!(s, 202, "{v}");
}

/// Managed Agents objects belong to the team of the key that made them:
/// another team's are not listed, every route naming one is a 404 (the
/// SSE stream and the worker's poll included), and a session cannot be
/// made of them.
#[tokio::test(flavor = "multi_thread")]
async fn managed_agents_objects_stay_in_their_team() {
    use common::agents::{mem, v1};
    use reqwest::Method;
    let d = Daemon::start().await;
    let (s, blue) = d.post("/teams", json!({"name": "blue"})).await;
    assert_eq!(s, 201, "{blue}");
    let (s, k) = d
        .post(
            "/api-keys",
            json!({"name": "b", "roles": ["developer"], "team_id": blue["data"]["id"]}),
        )
        .await;
    assert_eq!(s, 201, "{k}");
    let blue = k["data"]["key"].as_str().unwrap().to_string();
    let red = d.token.clone();
    let made = async |key: &str, path: &str, body: serde_json::Value| {
        let (s, v, _) = v1(&d, key, Method::POST, path, Some(body)).await;
        assert_eq!(s, 200, "{path}: {v}");
        v["id"].as_str().unwrap().to_string()
    };
    let agent = made(&red, "/agents", json!({"name": "red", "model": "m"})).await;
    let env = made(
        &red,
        "/environments",
        json!({"name": "red", "config": {"type": "self_hosted"}}),
    )
    .await;
    let vault = made(&red, "/vaults", json!({"display_name": "red"})).await;
    let (s, store) = mem(
        &d,
        &red,
        Method::POST,
        "/memory_stores",
        Some(json!({"name": "red"})),
    )
    .await;
    assert_eq!(s, 200, "{store}");
    let store = store["id"].as_str().unwrap().to_string();
    let session = made(
        &red,
        "/sessions",
        json!({"agent": agent, "environment_id": env, "vault_ids": [vault]}),
    )
    .await;
    // A file, uploaded as the SDK does (multipart).
    let boundary = "sandstone-test-boundary";
    let r = d
        .http
        .post(format!("{}/v1/files", d.url))
        .bearer_auth(&red)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.txt\"\r\n\
             Content-Type: text/plain\r\n\r\nred-file-secret\r\n--{boundary}--\r\n"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let file = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Blue lists none of them and reaches none of them.
    for list in ["/agents", "/environments", "/vaults", "/sessions", "/files"] {
        let (s, v, _) = v1(&d, &blue, Method::GET, list, None).await;
        assert_eq!(s, 200, "{list}: {v}");
        assert_eq!(v["data"].as_array().unwrap().len(), 0, "{list}: {v}");
    }
    let (s, v) = mem(&d, &blue, Method::GET, "/memory_stores", None).await;
    assert_eq!((s, v["data"].as_array().unwrap().len()), (200, 0), "{v}");
    for (method, path, body) in [
        (
            Method::GET,
            format!("/files/%{:02X}{}/content", file.as_bytes()[0], &file[1..]),
            None,
        ),
        (
            Method::GET,
            format!(
                "/sessions/%{:02X}{}/events",
                session.as_bytes()[0],
                &session[1..]
            ),
            None,
        ),
        (Method::GET, format!("/files/{file}"), None),
        (Method::GET, format!("/files/{file}/content"), None),
        (Method::DELETE, format!("/files/{file}"), None),
        (Method::GET, format!("/agents/{agent}"), None),
        (
            Method::POST,
            format!("/agents/{agent}"),
            Some(json!({"version": 1, "name": "stolen"})),
        ),
        (Method::GET, format!("/environments/{env}"), None),
        (Method::GET, format!("/environments/{env}/work/poll"), None),
        (Method::GET, format!("/vaults/{vault}/credentials"), None),
        (Method::GET, format!("/sessions/{session}"), None),
        (Method::GET, format!("/sessions/{session}/events"), None),
        (
            Method::GET,
            format!("/sessions/{session}/events/stream"),
            None,
        ),
        (
            Method::POST,
            format!("/sessions/{session}/events"),
            Some(json!({"events": [{"type": "user.interrupt"}]})),
        ),
        (Method::DELETE, format!("/sessions/{session}"), None),
        (
            Method::POST,
            "/sessions".to_string(),
            Some(json!({"agent": agent, "environment_id": env})),
        ),
    ] {
        let (s, v, _) = v1(&d, &blue, method.clone(), &path, body).await;
        assert_eq!(s, 404, "blue {method} {path}: {v}");
    }
    let (s, v) = mem(
        &d,
        &blue,
        Method::GET,
        &format!("/memory_stores/{store}/memories"),
        None,
    )
    .await;
    assert_eq!(s, 404, "{v}");

    // Blue's own work is its own; red does not see it, and blue cannot
    // put red's vault on it.
    let blue_agent = made(&blue, "/agents", json!({"name": "blue", "model": "m"})).await;
    let blue_env = made(
        &blue,
        "/environments",
        json!({"name": "blue", "config": {"type": "self_hosted"}}),
    )
    .await;
    let (s, v, _) = v1(
        &d,
        &blue,
        Method::POST,
        "/sessions",
        Some(json!({"agent": blue_agent, "environment_id": blue_env, "vault_ids": [vault]})),
    )
    .await;
    assert_eq!(s, 404, "{v}");
    made(
        &blue,
        "/sessions",
        json!({"agent": blue_agent, "environment_id": blue_env}),
    )
    .await;
    let (_, v, _) = v1(&d, &red, Method::GET, "/agents", None).await;
    let names: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["red"], "{v}");
    let (s, _, _) = v1(
        &d,
        &red,
        Method::GET,
        &format!("/agents/{blue_agent}"),
        None,
    )
    .await;
    assert_eq!(s, 404);
    // Percent-encoded, it is the same agent to the handler: the same 404.
    let encoded = format!("%{:02X}{}", blue_agent.as_bytes()[0], &blue_agent[1..]);
    let (s, v, _) = v1(&d, &red, Method::GET, &format!("/agents/{encoded}"), None).await;
    assert_eq!(s, 404, "{v}");
    // Red's agent is as it was.
    let (_, v, _) = v1(&d, &red, Method::GET, &format!("/agents/{agent}"), None).await;
    assert_eq!(v["name"], "red", "{v}");

    let log = d.log();
    for needle in [
        "refused: agent of another team",
        "refused: session of another team",
        "refused: vault of another team",
        "refused: memory store of another team",
        "refused: environment of another team",
        "refused: file of another team",
    ] {
        assert!(log.contains(needle), "{needle}: {log}");
    }
}

/// A stream or WebSocket outlives the check made when it opened: once its
/// key is deactivated it ends (within the recheck), and says so on record.
#[tokio::test(flavor = "multi_thread")]
async fn open_streams_end_when_their_key_is_revoked() {
    use futures_util::StreamExt;
    use std::time::Duration;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let d = Daemon::start().await;
    let (s, v) = d
        .post("/api-keys", json!({"name": "dev", "roles": ["developer"]}))
        .await;
    assert_eq!(s, 201, "{v}");
    let key = v["data"]["key"].as_str().unwrap().to_string();
    let key_id = v["data"]["id"].as_str().unwrap().to_string();
    let id = d.create(json!({})).await;
    let (s, v) = d
        .post(
            &format!("/api/v1/sandboxes/{id}/contexts"),
            json!({"type": "cmd", "cmd": {"command": ["sleep", "600"]}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let ctx = v["data"]["id"].as_str().unwrap();

    let mut watch = d
        .http
        .get(format!(
            "{}/api/v1/sandboxes/{id}/observability/logs?watch=true",
            d.url
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(watch.status(), 200);
    let url =
        format!("{}/api/v1/sandboxes/{id}/contexts/{ctx}/ws", d.url).replacen("http", "ws", 1);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();

    // Both stay open while the key is good.
    let early = tokio::time::timeout(Duration::from_secs(6), watch.chunk()).await;
    assert!(early.is_err() || early.unwrap().unwrap().is_some());
    let (s, v) = d
        .post(&format!("/api-keys/{key_id}/deactivate"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    let watch_ended = tokio::time::timeout(Duration::from_secs(15), async {
        while let Ok(Some(_)) = watch.chunk().await {}
    })
    .await;
    assert!(watch_ended.is_ok(), "the log watch outlived its key");
    let ws_ended = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(ws_ended.is_ok(), "the WebSocket outlived its key");
    let log = d.log();
    let ended = log
        .lines()
        .filter(|l| l.contains("open stream ended") && l.contains(&key_id))
        .count();
    assert!(ended >= 2, "{log}");
    assert!(!log.contains(&key));
}
