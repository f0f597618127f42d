//! Sandbox networking: a veth behind the host firewall, the egress proxy
//! and the policy resolver, against a fake internet this test builds.

// Test code: an unexpected failure is the test failing, so unwrap is the point.
#![allow(clippy::unwrap_used)]

mod common;

use common::{assert_names, cli, networked, text};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_gets_an_interface_and_nothing_gets_out() {
    let d = networked("127.0.0.1:1", &[]).await;
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
    # The proxy may accept the TCP handshake, but nothing passes: the
    # request gets a 403 from the proxy itself, a reset, or nothing.
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect(a)
        s.sendall(b'GET / HTTP/1.1\r\nHost: x\r\n\r\n')
        got = s.recv(100)
        print('closed' if got == b'' or got.startswith(b'HTTP/1.1 403') else 'OPEN %r' % got)
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
    // The dropped UDP datagram is audited, with the reason.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let events = d.audit(&id, "outcome=denied").await;
        if let Some(e) = events
            .iter()
            .find(|e| e["kind"] == "drop" && e["dest_port"] == 9999)
        {
            assert_eq!(
                (e["protocol"].as_str(), e["dest_ip"].as_str()),
                (Some("udp"), Some("10.99.0.1")),
                "{e}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no drop record: {events:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The installation CA is trusted inside (bundle read-only, the usual
    // variables set); its key never is in the sandbox.
    let ca = std::fs::read_to_string(d.data.path().join("ca/ca.crt")).unwrap();
    let r = d
        .sh(
            &id,
            "echo $SSL_CERT_FILE $GIT_SSL_CAINFO; echo x >> $SSL_CERT_FILE; ls /etc/sandstone",
        )
        .await;
    assert_eq!(
        r["stdout"], "/etc/sandstone/ca-bundle.pem /etc/sandstone/ca-bundle.pem\nca-bundle.pem\n",
        "{r}"
    );
    assert!(
        r["stderr"]
            .as_str()
            .unwrap()
            .contains("cannot create /etc/sandstone/ca-bundle.pem"),
        "read-only: {r}"
    );
    let resp = d
        .http
        .get(format!(
            "{}/api/v1/sandboxes/{id}/files?path=/etc/sandstone/ca-bundle.pem",
            d.url
        ))
        .bearer_auth(&d.token)
        .send()
        .await
        .unwrap();
    let bundle = resp.text().await.unwrap();
    assert!(
        bundle.ends_with(&ca) && !bundle.contains("PRIVATE KEY"),
        "the bundle ends with the installation CA"
    );
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

#[tokio::test(flavor = "multi_thread")]
async fn policy_decides_every_connection_and_dns_answer_and_audits_them() {
    use common::fake_internet::FakeInternet;
    let net = FakeInternet::start();
    let d = networked(&format!("{}:53", net.server), &[]).await;
    let policy = json!({"mode": "block-all", "egress": {"trafficRules": [
        {"name": "web", "action": "allow", "domains": ["web.test", "rebind.test"], "ports": [{"port": 80}]}
    ]}});
    let id = d.create(json!({"network": policy})).await;
    let curl = |args: &str| format!("curl -sS -m 5 {args} 2>&1; echo \" rc=$?\"");

    // Allowed by name, through the policy resolver and the proxy.
    let r = d.sh(&id, &curl("http://web.test/")).await;
    assert_eq!(r["stdout"], "hello from web.test\n rc=0\n", "{r}");
    let r = d.run(&id, &["python3", "-c", "import urllib.request; print(urllib.request.urlopen('http://web.test/').read().decode().strip())"]).await;
    assert_eq!(r["stdout"], "hello from web.test\n", "{r}");
    // A Host naming an allowed domain is dialled where the name resolves,
    // not at the address the sandbox chose.
    let r = d
        .sh(
            &id,
            &curl(&format!("-H 'Host: web.test' http://{}/", net.unused)),
        )
        .await;
    assert_eq!(r["stdout"], "hello from web.test\n rc=0\n", "{r}");
    // Denied: a name outside the policy does not even resolve.
    let r = d.sh(&id, &curl("http://other.test/")).await;
    assert!(r["stdout"].as_str().unwrap().contains("rc=6"), "{r}");
    // Denied: a raw address, with a readable reason.
    let r = d
        .sh(&id, &curl(&format!("-i http://{}/", net.server)))
        .await;
    let out = r["stdout"].as_str().unwrap();
    assert!(
        out.contains("403") && out.contains("denied by the sandbox policy"),
        "{r}"
    );
    // Denied: an allowed name whose DNS answer is a local address.
    let r = d
        .sh(
            &id,
            &curl(&format!("-i -H 'Host: rebind.test' http://{}/", net.server)),
        )
        .await;
    let out = r["stdout"].as_str().unwrap();
    assert!(out.contains("403") && out.contains("denied address"), "{r}");

    // A live policy change applies to the next connection.
    let mut live = policy.clone();
    live["egress"]["trafficRules"][0]["domains"] = json!(["web.test", "other.test"]);
    let (s, v) = d
        .req(
            reqwest::Method::PUT,
            &format!("/api/v1/sandboxes/{id}/network"),
            Some(live),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let r = d.sh(&id, &curl("http://other.test/")).await;
    assert_eq!(r["stdout"], "hello from other.test\n rc=0\n", "{r}");
    let (s, v) = d
        .req(
            reqwest::Method::PUT,
            &format!("/api/v1/sandboxes/{id}/network"),
            Some(json!({"mode": "open"})),
        )
        .await;
    assert_names(s, &v, "network");

    // Every decision is audited; the denials carry their reasons.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let events = d.audit(&id, "outcome=denied").await;
    let has = |kind: &str, name: &str| {
        events.iter().any(|e| {
            e["kind"] == kind
                && e["dest_name"]
                    .as_str()
                    .unwrap_or(e["dest_ip"].as_str().unwrap_or(""))
                    == name
        })
    };
    assert!(has("dns", "other.test"), "{events:?}");
    assert!(has("connection", &net.server), "{events:?}");
    assert!(has("connection", "rebind.test"), "{events:?}");
    assert!(events.iter().all(|e| e["decision"] == "deny"));
    let all = d.audit(&id, "").await;
    assert!(all.iter().any(|e| e["decision"] == "allow"
        && e["kind"] == "connection"
        && e["bytes_down"].as_u64() > Some(0)));
    // As Sandbox0 events: pages follow the cursor, an event id finds its
    // record, and filters for what Sandstone does not record find nothing.
    let events = format!("/api/v1/sandboxes/{id}/observability/events");
    let (_, v) = d.get(&format!("{events}?limit=1")).await;
    let first = &v["data"]["events"][0];
    assert_eq!(
        (first["event_type"].as_str(), first["source"].as_str()),
        (Some("network_audit"), Some("ctld")),
        "{v}"
    );
    let cursor = v["data"]["next_cursor"].as_str().unwrap();
    let (_, next) = d.get(&format!("{events}?limit=1&cursor={cursor}")).await;
    assert_ne!(next["data"]["events"][0]["event_id"], first["event_id"]);
    let event_id = first["event_id"].as_str().unwrap();
    let (_, exact) = d.get(&format!("{events}?event_id={event_id}")).await;
    assert_eq!(exact["data"]["events"].as_array().unwrap().len(), 1);
    assert_eq!(exact["data"]["events"][0]["event_id"], first["event_id"]);
    let (_, other) = d.get(&format!("{events}?source=procd")).await;
    assert_eq!(other["data"]["events"], json!([]));
    let (s, bad) = d.get(&format!("{events}?outcome=maybe")).await;
    assert_names(s, &bad, "`outcome`");

    // The CLI sets a policy from flags and shows the audit trail.
    let out = cli(
        &d,
        &[
            "policy",
            "set",
            &id,
            "--allow",
            "web.test",
            "--deny",
            "other.test",
        ],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r = d.sh(&id, &curl("http://other.test/")).await;
    assert!(r["stdout"].as_str().unwrap().contains("rc=6"), "{r}");
    let out = cli(&d, &["audit", &id, "--denied"], b"");
    let trail = text(&out.stdout);
    assert!(
        trail
            .lines()
            .any(|l| l.starts_with("deny") && l.contains("other.test")),
        "{trail}"
    );
    let m = d.metrics().await;
    let line = format!("sandstone_egress_connections_total{{sandbox=\"{id}\",decision=\"allow\"}}");
    let allowed: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix(line.as_str())?.trim().parse().ok())
        .unwrap_or(0);
    assert!(allowed >= 3, "{m}");

    // A template's policy applies to claims that bring none.
    std::fs::write(
        d.data.path().join("templates/host/template.json"),
        r#"{"network": {"mode": "block-all", "egress": {"trafficRules": [
            {"name": "tpl", "action": "allow", "domains": ["other.test"], "ports": [{"port": 80}]}]}}}"#,
    )
    .unwrap();
    let plain = d.create(json!({})).await;
    let r = d.sh(&plain, &curl("http://other.test/")).await;
    assert_eq!(r["stdout"], "hello from other.test\n rc=0\n", "{r}");
    let r = d.sh(&plain, &curl("http://web.test/")).await;
    assert!(r["stdout"].as_str().unwrap().contains("rc=6"), "{r}");
}

/// This daemon's nftables table (`nft list` output), if it has one.
fn nft_table(d: &common::Daemon) -> Option<String> {
    let hash = common::sha256sum(d.data.path().display().to_string().as_bytes());
    let out = std::process::Command::new("nft")
        .args([
            "list",
            "table",
            "inet",
            &format!("sandstone_{}", &hash[..8]),
        ])
        .output()
        .unwrap();
    out.status.success().then(|| text(&out.stdout))
}

/// The policies of `ids` as the API shows them.
async fn policies(d: &common::Daemon, ids: &[&str]) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for id in ids {
        out.push(d.get(&format!("/api/v1/sandboxes/{id}/network")).await.1["data"].clone());
    }
    out
}

/// Each of the two sandboxes reaches its allowed name, and not the other's
/// nor a raw address; the first's requests to api.test get its credential.
async fn readopted(
    d: &common::Daemon,
    net: &common::fake_internet::FakeInternet,
    web: &str,
    other: &str,
    when: &str,
) {
    let curl = |url: &str| format!("curl -sS -m 5 {url} 2>&1; echo \" rc=$?\"");
    for (id, allowed, denied) in [
        (web, "web.test", "other.test"),
        (other, "other.test", "web.test"),
    ] {
        let r = d.sh(id, &curl(&format!("http://{allowed}/"))).await;
        assert_eq!(
            r["stdout"],
            format!("hello from {allowed}\n rc=0\n"),
            "{when}: {r}"
        );
        let r = d.sh(id, &curl(&format!("http://{denied}/"))).await;
        assert!(
            r["stdout"].as_str().unwrap().contains("rc=6"),
            "{when}: {r}"
        );
        let r = d.sh(id, &curl(&format!("-i http://{}/", net.server))).await;
        assert!(r["stdout"].as_str().unwrap().contains("403"), "{when}: {r}");
    }
    let r = d.sh(web, &curl("http://api.test/auth")).await;
    assert_eq!(r["stdout"], "authorized\n rc=0\n", "{when}: {r}");
    let r = d.sh(other, &curl("http://api.test/auth")).await;
    assert!(
        r["stdout"].as_str().unwrap().contains("rc=6"),
        "{when}: {r}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_daemon_readopts_networked_sandboxes_with_their_policies() {
    use common::fake_internet::FakeInternet;
    let net = FakeInternet::start();
    let mut d = networked(&format!("{}:53", net.server), &[]).await;
    let rule = |name: &str| {
        json!({"mode": "block-all", "egress": {"trafficRules": [
            {"name": name, "action": "allow", "domains": [name], "ports": [{"port": 80}]}
        ]}})
    };
    // Two sandboxes whose policies differ, so each must get its own back;
    // one with a credential bound to a host.
    let (s, v) = d
        .post(
            "/api/v1/credential-sources",
            json!({"name": "api-key", "resolverKind": "static_headers",
                   "spec": {"staticHeaders": {"values": {"X-Api-Key": net.token}}}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let mut with_credential = rule("web.test");
    with_credential["egress"]["trafficRules"][0]["domains"] = json!(["web.test", "api.test"]);
    with_credential["egress"]["credentialRules"] = json!([{"name": "api",
        "credentialRef": "api", "protocol": "http", "domains": ["api.test"]}]);
    with_credential["credentialBindings"] = json!([{"ref": "api", "sourceRef": "api-key",
        "projection": {"type": "http_headers"}}]);
    let web = d.create(json!({"network": with_credential})).await;
    let other = d.create(json!({"network": rule("other.test")})).await;
    let before = policies(&d, &[&web, &other]).await;
    readopted(&d, &net, &web, &other, "before any restart").await;
    d.kill();
    d.spawn().await;
    readopted(&d, &net, &web, &other, "after kill -9").await;
    assert_eq!(policies(&d, &[&web, &other]).await, before);
    d.stop();
    d.spawn().await;
    readopted(&d, &net, &web, &other, "after SIGTERM").await;
    assert_eq!(policies(&d, &[&web, &other]).await, before);
    // A denial after the restart is audited as before.
    d.audited(&web, |e| {
        e["kind"] == "dns" && e["decision"] == "deny" && e["dest_name"] == "other.test"
    })
    .await;

    // Restarted without networking: no table of this daemon is left, and
    // the sandboxes it adopts reach nothing (their interface is gone).
    assert!(nft_table(&d).is_some());
    d.stop();
    d.serve_args.clear();
    d.spawn().await;
    assert_eq!(nft_table(&d), None, "the old table stayed");
    let probe = format!(
        r#"
import os, socket
for a in [('{server}', 80), ('{server}', 443)]:
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect(a); print('OPEN', a)
    except OSError as e:
        print('closed')
print(sorted(os.listdir('/sys/class/net')))
"#,
        server = net.server
    );
    let r = d.run(&web, &["python3", "-c", &probe]).await;
    assert_eq!(r["stdout"], "closed\nclosed\n['lo']\n", "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn host_addresses_added_after_start_are_judged_at_dial_time_and_audits_show_both_ends() {
    use common::fake_internet::FakeInternet;
    let net = FakeInternet::start();
    let d = networked(&format!("{}:53", net.server), &[]).await;
    let open = d.create(json!({"network": {"mode": "allow-all"}})).await;
    let wild = d
        .create(
            json!({"network": {"mode": "block-all", "egress": {"trafficRules": [
                {"name": "tests", "action": "allow", "domains": ["*.test"], "ports": [{"port": 80}]}
            ]}}}),
        )
        .await;
    // After the daemon started, the host gains an address with a server on it.
    net.add_host_address();
    let server = std::net::TcpListener::bind((net.late.as_str(), 80)).unwrap();
    std::thread::spawn(move || {
        for mut c in server.incoming().flatten() {
            let _ = std::io::Read::read(&mut c, &mut [0u8; 4096]);
            let _ = std::io::Write::write_all(
                &mut c,
                b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\nconnection: close\r\n\r\nhost secret\n",
            );
        }
    });
    let curl = |url: &str| format!("curl -sS -m 5 -i {url} 2>&1; echo \" rc=$?\"");
    // The fake internet stays reachable (the test is not vacuous) ...
    let r = d.sh(&open, &curl(&format!("http://{}/", net.server))).await;
    assert!(r["stdout"].as_str().unwrap().contains("hello from"), "{r}");
    let r = d.sh(&wild, &curl("http://web.test/")).await;
    assert!(
        r["stdout"]
            .as_str()
            .unwrap()
            .contains("hello from web.test"),
        "{r}"
    );
    // ... the new host address is not, by address nor by an allowed name.
    let r = d.sh(&open, &curl(&format!("http://{}/", net.late))).await;
    let out = r["stdout"].as_str().unwrap();
    assert!(!out.contains("host secret") && out.contains("403"), "{r}");
    let r = d.sh(&wild, &curl("http://late.test/")).await;
    let out = r["stdout"].as_str().unwrap();
    assert!(
        !out.contains("host secret") && out.contains("403") && out.contains("host address"),
        "{r}"
    );
    // Nor when the sandbox sends the name to an address the proxy may
    // dial: the proxy's own resolution of the name is judged too.
    let r = d
        .sh(
            &wild,
            &curl(&format!("-H 'Host: late.test' http://{}/", net.server)),
        )
        .await;
    let out = r["stdout"].as_str().unwrap();
    assert!(
        !out.contains("host secret") && out.contains("403") && out.contains("denied address"),
        "{r}"
    );
    let late = net.late.clone();
    d.audited(&open, |e| {
        e["decision"] == "deny" && e["dest_ip"] == late.as_str() && e["dest_port"] == 80
    })
    .await;
    d.audited(&wild, |e| {
        e["kind"] == "connection" && e["decision"] == "deny" && e["dest_name"] == "late.test"
    })
    .await;

    // A Host naming an allowed domain, sent to an address the sandbox
    // chose: the record keeps both the name and address the sandbox gave
    // and where the proxy connected.
    let r = d
        .sh(
            &wild,
            &curl(&format!("-H 'Host: web.test' http://{}/", net.unused)),
        )
        .await;
    assert!(
        r["stdout"]
            .as_str()
            .unwrap()
            .contains("hello from web.test"),
        "{r}"
    );
    let (unused, dialled) = (net.unused.clone(), format!("{}:80", net.server));
    let e = d
        .audited(&wild, |e| {
            e["kind"] == "connection" && e["decision"] == "allow" && e["dest_ip"] == unused.as_str()
        })
        .await;
    assert_eq!(
        (e["dest_name"].as_str(), e["dialed"].as_str()),
        (Some("web.test"), Some(dialled.as_str())),
        "{e}"
    );
    let out = cli(&d, &["audit", &wild], b"");
    let trail = text(&out.stdout);
    assert!(
        trail
            .lines()
            .any(|l| l.contains(&format!("web.test ({}:80)", net.unused))
                && l.contains(&format!("via {dialled}"))),
        "{trail}"
    );
}
