//! A fake internet for egress tests: a network namespace this test makes
//! (addresses from 10.99.0.0/16, nothing else), reached from the host over
//! a veth, running a DNS server and HTTP servers.

use std::process::{Child, Command, Stdio};

pub struct FakeInternet {
    ns: String,
    servers: Child,
    /// The DNS and web server address.
    pub server: String,
    /// A second address in the same subnet with nothing listening.
    pub unused: String,
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
        let mut servers = Command::new("ip")
            .args(["netns", "exec", &ns, "python3", script, &server, &server])
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
            servers,
            server,
            unused: format!("{net}.77"),
        }
    }
}

impl Drop for FakeInternet {
    fn drop(&mut self) {
        let _ = self.servers.kill();
        let _ = self.servers.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}
