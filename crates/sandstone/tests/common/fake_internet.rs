//! A fake internet for egress tests: a network namespace this test makes
//! (addresses from 10.99.0.0/16, nothing else), reached from the host over
//! a veth, running a DNS server, HTTP and HTTPS servers (with a test CA of
//! their own) and a git server that needs a token.

use super::{Daemon, test_subnet_pool};
use serde_json::json;
use std::process::{Child, Command, Stdio};

pub struct FakeInternet {
    ns: String,
    /// The host's end of the veth to the namespace.
    host_if: String,
    servers: Child,
    /// The DNS and web server address.
    pub server: String,
    /// A second address in the same subnet with nothing listening.
    pub unused: String,
    /// What `late.test` resolves to: no one's address until
    /// [`FakeInternet::add_host_address`] gives it to the host.
    pub late: String,
    /// The token the servers' `/auth` paths and git repository accept.
    pub token: String,
    /// Holds the test CA (`ca.pem`) and the git repository.
    pub dir: tempfile::TempDir,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl FakeInternet {
    pub fn start() -> FakeInternet {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("{}x{n}", std::process::id() % 10_000);
        let ns = format!("fi{tag}");
        let host_if = format!("fih{tag}");
        let net = format!("10.99.{}", (std::process::id() % 50) * 5 + n % 5);
        let (gw, server) = (format!("{net}.1"), format!("{net}.2"));
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["addr", "add", &format!("{gw}/24"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{server}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fake_internet/servers.py"
        );
        let dir = tempfile::tempdir().unwrap();
        let token = format!("sst-{}", random_hex());
        let mut servers = Command::new("ip")
            .args(["netns", "exec", &ns, "python3", script, &server, &server])
            .env("FAKE_TLS_DIR", dir.path())
            .env("FAKE_TOKEN", &token)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start fake servers");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(servers.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready");
        FakeInternet {
            ns,
            host_if,
            servers,
            server,
            unused: format!("{net}.77"),
            late: format!("{net}.50"),
            token,
            dir,
        }
    }

    /// Makes [`FakeInternet::late`] an address of the host (on its end of
    /// the veth), as an interface added after the daemon started would.
    pub fn add_host_address(&self) {
        ip(&[
            "addr",
            "add",
            &format!("{}/32", self.late),
            "dev",
            &self.host_if,
        ]);
    }

    /// Starts the MCP server (tests/fake_internet/mcp_server.py, the `mcp`
    /// SDK under `python`) on `port` of the server's address, accepting
    /// [`FakeInternet::token`]; stopped when the guard drops.
    pub fn mcp_server(&self, python: &str, port: u16) -> ChildGuard {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fake_internet/mcp_server.py"
        );
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, python, script, &self.server])
            .arg(port.to_string())
            .env("FAKE_TOKEN", &self.token)
            .spawn()
            .expect("start the MCP server");
        let guard = ChildGuard(child);
        wait_listening(&format!("{}:{port}", self.server), "the MCP server");
        guard
    }

    /// Starts a Redis server (Debian's) as `cache.test:6379` whose one
    /// user, `app`, logs in with `password` (the `default` user is off).
    /// `None` without Redis.
    pub fn redis(&self, password: &str) -> Option<ChildGuard> {
        if !std::path::Path::new("/usr/bin/redis-server").exists() {
            eprintln!("skipped: Redis is not installed (.ci/run installs it)");
            return None;
        }
        // Nothing is saved: --dir only has to exist.
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "redis-server",
                "--bind",
                &self.server,
            ])
            .args(["--port", "6379", "--save", "", "--appendonly", "no"])
            .args([
                "--protected-mode",
                "no",
                "--daemonize",
                "no",
                "--dir",
                "/tmp",
            ])
            .args(["--user", "default", "off"])
            .args([
                "--user",
                "app",
                "on",
                &format!(">{password}"),
                "~*",
                "&*",
                "+@all",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let guard = ChildGuard(child);
        wait_listening(&format!("{}:6379", self.server), "redis-server");
        Some(guard)
    }

    /// Starts a SOCKS5 proxy (Debian's `microsocks`) as `proxy.test:1080`
    /// that wants `user` and `password` and connects out from its own
    /// address ([`FakeInternet::proxy_address`]), which it is given here.
    /// `None` without microsocks.
    pub fn socks5(&self, user: &str, password: &str) -> Option<ChildGuard> {
        if !std::path::Path::new("/usr/bin/microsocks").exists() {
            eprintln!("skipped: microsocks is not installed (.ci/run installs it)");
            return None;
        }
        let proxy = self.proxy_address();
        ip(&[
            "-n",
            &self.ns,
            "addr",
            "add",
            &format!("{proxy}/24"),
            "dev",
            "eth0",
        ]);
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "microsocks",
                "-i",
                &proxy,
                "-p",
                "1080",
            ])
            .args(["-b", &proxy, "-u", user, "-P", password])
            .stdout(Stdio::null())
            .spawn()
            .expect("start microsocks");
        let guard = ChildGuard(child);
        wait_listening(&format!("{proxy}:1080"), "microsocks");
        Some(guard)
    }

    /// Starts an SSH server (Debian's sshd) as `git.test:22` that lets
    /// `root` in with `authorized` (a public key line) only, and holds a
    /// bare git repository with one commit. `None` without sshd.
    pub fn sshd(&self, authorized: &str) -> Option<SshServer> {
        let sshd = std::path::Path::new("/usr/sbin/sshd");
        if !sshd.exists() {
            eprintln!("skipped: sshd is not installed (.ci/run installs it)");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("fake-sshd-")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path().display().to_string();
        super::ssh_keygen(dir.path(), "host", "");
        let host_pub = std::fs::read_to_string(dir.path().join("host.pub")).unwrap();
        std::fs::write(dir.path().join("authorized_keys"), authorized).unwrap();
        std::fs::write(
            dir.path().join("sshd_config"),
            format!(
                "ListenAddress {}\nHostKey {d}/host\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
                 UsePAM no\nStrictModes no\n",
                self.server
            ),
        )
        .unwrap();
        // The repository: one commit on main.
        let git = |args: &[&str]| {
            let out = Command::new("git")
                .args(args)
                .env("GIT_AUTHOR_NAME", "fake")
                .env("GIT_AUTHOR_EMAIL", "fake@git.test")
                .env("GIT_COMMITTER_NAME", "fake")
                .env("GIT_COMMITTER_EMAIL", "fake@git.test")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let work = format!("{d}/work");
        git(&["init", "-q", "-b", "main", &work]);
        std::fs::write(dir.path().join("work/README"), "over ssh\n").unwrap();
        git(&["-C", &work, "add", "README"]);
        git(&["-C", &work, "commit", "-qm", "first"]);
        git(&["clone", "-q", "--bare", &work, &format!("{d}/repo.git")]);
        std::fs::create_dir_all("/run/sshd").unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(sshd)
            .args(["-D", "-e", "-f", &format!("{d}/sshd_config")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sshd");
        let guard = ChildGuard(child);
        wait_listening(&format!("{}:22", self.server), "sshd");
        Some(SshServer {
            _process: guard,
            host_key: host_pub.trim().to_string(),
            repo: format!("{d}/repo.git"),
            _dir: dir,
        })
    }

    /// `proxy.test`'s address: .3 of the server's /24.
    pub fn proxy_address(&self) -> String {
        let net = self.server.rsplit_once('.').unwrap().0;
        format!("{net}.3")
    }

    /// Starts a PostgreSQL server (Debian's) as `db.test:5432`, TLS only
    /// (the fake CA's leaf), with three roles whose password is
    /// `password`, each logging in its own way: `app` by SCRAM-SHA-256,
    /// `app_md5` by MD5, `app_plain` in cleartext. `None` without
    /// PostgreSQL.
    pub fn postgres(&self, password: &str) -> Option<DataServer> {
        let bin = PostgresBin::find()?;
        let data = tempfile::Builder::new()
            .prefix("fake-pg-")
            .tempdir_in("/tmp")
            .unwrap();
        let dir = data.path().display().to_string();
        let as_postgres = |prog: &str| {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(bin.0.join(prog));
            c
        };
        ok(Command::new("chown").args(["postgres:postgres", &dir]));
        ok(as_postgres("initdb").args([
            "-D",
            &dir,
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ]));
        std::fs::write(
            data.path().join("pg_hba.conf"),
            "local all all trust\nhostssl all app_md5 0.0.0.0/0 md5\n\
             hostssl all app_plain 0.0.0.0/0 password\nhostssl all app 0.0.0.0/0 scram-sha-256\n",
        )
        .unwrap();
        for (from, to) in [("leaf.pem", "server.crt"), ("leaf.key", "server.key")] {
            let to = data.path().join(to);
            std::fs::copy(self.dir.path().join(from), &to).unwrap();
            ok(Command::new("chown").arg("postgres:postgres").arg(&to));
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let mut server = Command::new("ip");
        server
            .args(["netns", "exec", &self.ns, "setpriv"])
            .args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(bin.0.join("postgres"))
            .args([
                "-D",
                &dir,
                "-c",
                &format!("listen_addresses={}", self.server),
            ])
            .args([
                "-c",
                &format!("unix_socket_directories={dir}"),
                "-c",
                "ssl=on",
            ]);
        let addr = format!("{}:5432", self.server);
        let server = DataServer::start(server, libc::SIGINT, data, &addr, "postgres");
        let sql = format!(
            "SET password_encryption = 'scram-sha-256'; CREATE ROLE app LOGIN PASSWORD '{password}';\
             CREATE ROLE app_plain LOGIN PASSWORD '{password}';\
             SET password_encryption = 'md5'; CREATE ROLE app_md5 LOGIN PASSWORD '{password}';"
        );
        ok(as_postgres("psql").args(["-h", &dir, "-U", "postgres", "-d", "postgres", "-qc", &sql]));
        Some(server)
    }

    /// Starts a MariaDB server (Debian's) as `db.test:3306` with TLS (the
    /// fake CA's leaf) whose user `app` logs in with `password`
    /// (`mysql_native_password`) over TLS only. `None` without MariaDB.
    pub fn mariadb(&self, password: &str) -> Option<DataServer> {
        if !std::path::Path::new("/usr/sbin/mariadbd").exists() {
            eprintln!("skipped: MariaDB is not installed (.ci/run installs it)");
            return None;
        }
        let data = tempfile::Builder::new()
            .prefix("fake-mariadb-")
            .tempdir_in("/tmp")
            .unwrap();
        let dir = data.path().display().to_string();
        for (from, to) in [("leaf.pem", "cert.pem"), ("leaf.key", "key.pem")] {
            std::fs::copy(self.dir.path().join(from), data.path().join(to)).unwrap();
        }
        ok(Command::new("chown").args(["-R", "mysql:mysql", &dir]));
        ok(Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                &format!("--datadir={dir}/data"),
                "--user=mysql",
            ])
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"]));
        let mut server = Command::new("ip");
        server
            .args(["netns", "exec", &self.ns, "mariadbd", "--no-defaults"])
            .arg(format!("--datadir={dir}/data"))
            .args(["--user=mysql", &format!("--bind-address={}", self.server)])
            .args(["--port=3306", &format!("--socket={dir}/sock")])
            .arg(format!("--pid-file={dir}/pid"))
            .arg(format!("--ssl-cert={dir}/cert.pem"))
            .arg(format!("--ssl-key={dir}/key.pem"))
            .args(["--skip-log-bin", "--skip-name-resolve"]);
        let addr = format!("{}:3306", self.server);
        let server = DataServer::start(server, libc::SIGTERM, data, &addr, "mariadbd");
        let sql = format!(
            "CREATE USER 'app'@'%' IDENTIFIED BY '{password}' REQUIRE SSL; GRANT ALL ON *.* TO 'app'@'%';"
        );
        ok(Command::new("mariadb").args([
            "--no-defaults",
            &format!("--socket={dir}/sock"),
            "-uroot",
            "-e",
            &sql,
        ]));
        Some(server)
    }

    pub fn ca_pem(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }
}

/// Runs `c`, which must succeed.
fn ok(c: &mut Command) {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits (at most 30 s) until something accepts connections on `addr`.
fn wait_listening(addr: &str, what: &str) {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200))
        .is_err()
    {
        assert!(std::time::Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// 32 random hex digits.
fn random_hex() -> String {
    let mut b = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Drop for FakeInternet {
    fn drop(&mut self) {
        let _ = self.servers.kill();
        let _ = self.servers.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// A daemon as `setup` leaves it (with this test's own pool, since tests
/// run side by side) and `template` as its `default`, started with no
/// network flag but the resolver of the fake internet.
pub async fn default_daemon(net: &FakeInternet, template: &str) -> Daemon {
    let mut d = Daemon::start().await;
    d.kill();
    std::fs::write(
        d.data.path().join("network.json"),
        json!({"egress_pool": test_subnet_pool()}).to_string(),
    )
    .unwrap();
    std::os::unix::fs::symlink(template, d.data.path().join("templates/default")).unwrap();
    d.default_network = true;
    d.serve_args = vec!["--dns-upstream".into(), format!("{}:53", net.server)];
    d.spawn().await;
    d
}

/// A process killed when dropped.
pub struct ChildGuard(std::process::Child);

/// The fake internet's SSH server: stopped, and its directory removed,
/// when dropped.
pub struct SshServer {
    _process: ChildGuard,
    /// Its host key, as a public key line.
    pub host_key: String,
    /// The bare repository's path on the server.
    pub repo: String,
    _dir: tempfile::TempDir,
}

/// A database server of the fake internet: shut down (`stop`, then
/// SIGKILL after 5 s; then its data directory removed) when dropped.
pub struct DataServer {
    process: std::process::Child,
    stop: i32,
    _data: tempfile::TempDir,
}

impl DataServer {
    /// Starts `command` (quietly), kept with its data directory, and waits
    /// until it accepts connections on `addr`.
    fn start(
        mut command: Command,
        stop: i32,
        data: tempfile::TempDir,
        addr: &str,
        what: &str,
    ) -> DataServer {
        let process = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        let server = DataServer {
            process,
            stop,
            _data: data,
        };
        wait_listening(addr, what);
        server
    }
}

impl Drop for DataServer {
    fn drop(&mut self) {
        let pid = sandstone_sys::Pid::from_raw(self.process.id() as i32);
        let _ = sandstone_sys::process::kill(pid, self.stop);
        for _ in 0..50 {
            if matches!(self.process.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// The directory of Debian's PostgreSQL programs (the newest installed).
pub struct PostgresBin(pub std::path::PathBuf);

impl PostgresBin {
    pub fn find() -> Option<PostgresBin> {
        let mut found: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("postgres").exists())
            .collect();
        found.sort();
        let bin = found.pop().map(PostgresBin);
        if bin.is_none() {
            eprintln!("skipped: PostgreSQL is not installed (.ci/run installs it)");
        }
        bin
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
