//! Sandbox networking: a veth behind the host firewall. Until the egress
//! proxy and resolver serve them, every way out must be closed.

mod common;

use common::{Daemon, test_subnet_pool};
use serde_json::json;

async fn networked() -> Daemon {
    let mut d = Daemon::start().await;
    d.kill();
    d.egress_pool = Some(test_subnet_pool());
    d.spawn().await;
    d
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_gets_an_interface_and_nothing_gets_out() {
    let d = networked().await;
    let id = d.create(json!({})).await;
    let r = d
        .sh(
            &id,
            "cat /sys/class/net/eth0/operstate; cat /proc/sys/net/ipv6/conf/all/disable_ipv6",
        )
        .await;
    assert_eq!(r["stdout"], "up\n1\n", "{r}");
    let port = d.url.rsplit(':').next().unwrap();
    let probe = format!(
        r#"
import socket
gw = [l.split()[2] for l in open('/proc/net/route') if l.split()[1] == '00000000'][0]
gw = socket.inet_ntoa(bytes.fromhex(gw)[::-1])
for a in [(gw, {port}), (gw, 22), ('127.0.0.1', {port}), ('10.99.0.1', 80)]:
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect(a); print('CONNECTED', a)
    except OSError as e:
        print('closed', e.errno)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(1)
u.sendto(b'x', ('10.99.0.1', 9999))
try:
    u.recv(10); print('UDP ANSWERED')
except OSError:
    print('udp dropped')
try:
    socket.socket(socket.AF_INET6, socket.SOCK_STREAM).connect(('::1', {port})); print('IPV6 CONNECTED')
except OSError:
    print('ipv6 closed')
"#
    );
    let r = d.run(&id, &["python3", "-c", &probe]).await;
    let out = r["stdout"].as_str().unwrap();
    assert!(
        !out.contains("CONNECTED") && !out.contains("ANSWERED"),
        "{r}"
    );
    assert_eq!(out.matches("closed").count(), 5, "{r}");
    // Root in the sandbox cannot change its own routes or addresses.
    let r = d
        .sh(
            &id,
            "ip route del default 2>&1; ip addr flush dev eth0 2>&1; ip route | grep -c default",
        )
        .await;
    let out = r["stdout"].as_str().unwrap();
    assert!(
        out.contains("Operation not permitted") && out.ends_with("1\n"),
        "{r}"
    );

    // The host end goes away with the sandbox.
    let host_ifs = || {
        std::fs::read_dir("/sys/class/net")
            .unwrap()
            .flatten()
            .count()
    };
    let before = host_ifs();
    assert_eq!(d.delete(&format!("/api/v1/sandboxes/{id}")).await.0, 202);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while host_ifs() >= before {
        assert!(
            std::time::Instant::now() < deadline,
            "the host end of the veth stayed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
