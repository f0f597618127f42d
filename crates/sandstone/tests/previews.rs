//! Previews and public services: servers on a sandbox's loopback, reached
//! through the daemon at `*.localhost` names, by real HTTP clients (curl
//! and reqwest) against a real daemon.

// Test code: an unexpected failure is the test failing, so unwrap is the point.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Daemon, run_python, sdk_python, sha256sum};
use reqwest::{Method, StatusCode, redirect};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A client that sends every name to the daemon, as a wildcard DNS record
/// would, and never follows redirects (the bootstrap's is checked).
fn browser(d: &Daemon, host: &str) -> reqwest::Client {
    let addr: SocketAddr = d.url.trim_start_matches("http://").parse().unwrap();
    reqwest::Client::builder()
        .resolve(host, addr)
        .redirect(redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn host_of(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    let authority = rest.split('/').next().unwrap();
    authority.split(':').next().unwrap().to_string()
}

/// Starts `python3 -m http.server` on `port` in the sandbox, serving a
/// directory with an index naming `marker`, and waits until it answers.
async fn serve(d: &Daemon, id: &str, port: u16, marker: &str) {
    d.sh(
        id,
        &format!("mkdir -p /tmp/site && echo '<h1>{marker}</h1>' > /tmp/site/index.html"),
    )
    .await;
    let body = json!({"type": "cmd", "cmd": {"command": [
        "python3", "-m", "http.server", port.to_string(), "--bind", "127.0.0.1", "--directory", "/tmp/site"
    ]}});
    let (s, v) = d
        .post(&format!("/api/v1/sandboxes/{id}/contexts"), body)
        .await;
    assert_eq!(s, 201, "{v}");
    wait_listening(d, id, port).await;
}

async fn wait_listening(d: &Daemon, id: &str, port: u16) {
    let probe = format!(
        "for i in $(seq 100); do python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 1)' 2>/dev/null && exit 0; sleep 0.1; done; exit 1"
    );
    assert_eq!(
        d.sh(id, &probe).await["exit_code"],
        0,
        "port {port} never listened"
    );
}

async fn grant(d: &Daemon, id: &str, body: Value) -> Value {
    let (s, v) = d
        .post(&format!("/api/v1/sandboxes/{id}/previews"), body)
        .await;
    assert_eq!(s, 201, "{v}");
    v["data"].clone()
}

/// Spends a grant's bootstrap URL: the cookie it sets.
async fn bootstrap(d: &Daemon, g: &Value) -> String {
    let url = g["url"].as_str().unwrap();
    let r = browser(d, &host_of(url)).get(url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax"),
        "{set}"
    );
    set.split(';').next().unwrap().to_string()
}

async fn fetch(d: &Daemon, url: &str, cookie: Option<&str>) -> (StatusCode, String) {
    let mut r = browser(d, &host_of(url)).get(url);
    if let Some(c) = cookie {
        r = r.header("cookie", c);
    }
    let r = r.send().await.unwrap();
    (r.status(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_preview_grant_opens_one_loopback_port_for_its_runtime_only() {
    let d = Daemon::start().await;
    let id = d.create(json!({})).await;
    serve(&d, &id, 8000, "preview works").await;

    // Bad requests name their field.
    for (body, field) in [
        (json!({"port": 0}), "port"),
        (json!({"port": 8000, "ttl_seconds": 5}), "ttl_seconds"),
        (
            json!({"port": 8000, "path": "//elsewhere.example/"}),
            "path",
        ),
    ] {
        d.rejects(&format!("/api/v1/sandboxes/{id}/previews"), body, field)
            .await;
    }

    let g = grant(
        &d,
        &id,
        json!({"port": 8000, "path": "/index.html", "ttl_seconds": 120}),
    )
    .await;
    let target = g["target_url"].as_str().unwrap();
    assert_eq!(g["port"], 8000);
    assert!(target.ends_with("/index.html"), "{g}");
    assert!(g["runtime_generation"].as_i64().unwrap() >= 1);

    // curl follows the one-time URL: cookie set, redirected, page served.
    let dir = tempfile::tempdir().unwrap();
    let jar = dir.path().join("jar");
    let addr = d.url.trim_start_matches("http://").to_string();
    let host = host_of(target);
    let port = addr.rsplit_once(':').unwrap().1;
    let curl = |url: &str, jar: &std::path::Path| {
        std::process::Command::new("curl")
            .args(["-sS", "-L", "--max-time", "20", "-w", "\n%{http_code}"])
            .arg("--resolve")
            .arg(format!("{host}:{port}:127.0.0.1"))
            .arg("-c")
            .arg(jar)
            .arg("-b")
            .arg(jar)
            .arg(url)
            .output()
            .unwrap()
    };
    let out = curl(g["url"].as_str().unwrap(), &jar);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("preview works") && text.ends_with("\n200"),
        "{text}"
    );

    // Without the cookie, and with the spent URL again, nothing.
    assert_eq!(fetch(&d, target, None).await.0, StatusCode::UNAUTHORIZED);
    let again = curl(g["url"].as_str().unwrap(), &dir.path().join("other-jar"));
    assert!(String::from_utf8_lossy(&again.stdout).ends_with("\n403"));

    // A second grant in a plain client; the app never sees the cookie.
    let g2 = grant(&d, &id, json!({"port": 8000})).await;
    let cookie = bootstrap(&d, &g2).await;
    let (s, body) = fetch(&d, g2["target_url"].as_str().unwrap(), Some(&cookie)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        body.contains("Directory listing") || body.contains("preview works"),
        "{body}"
    );
    // A grant's cookie opens only its own grant's origin.
    let (s, _) = fetch(&d, target, Some(&cookie)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Undeclared names are not reachable: no such grant, no such service.
    let base = target.split("/index.html").next().unwrap();
    let none = base.replace(g["id"].as_str().unwrap(), "pv-0000000000000000");
    assert_eq!(
        fetch(&d, &format!("{none}/"), Some(&cookie)).await.0,
        StatusCode::NOT_FOUND
    );
    let undeclared = base.replace(g["id"].as_str().unwrap(), &format!("web--{id}"));
    assert_eq!(
        fetch(&d, &format!("{undeclared}/"), None).await.0,
        StatusCode::NOT_FOUND
    );

    // A grant for a port nothing listens on: the request fails at the gateway.
    let g3 = grant(&d, &id, json!({"port": 8009})).await;
    let c3 = bootstrap(&d, &g3).await;
    assert_eq!(
        fetch(&d, g3["target_url"].as_str().unwrap(), Some(&c3))
            .await
            .0,
        StatusCode::BAD_GATEWAY
    );

    // Renewal keeps the grant; after a pause and resume it is over.
    let (s, v) = d
        .req(
            Method::PUT,
            &format!(
                "/api/v1/sandboxes/{id}/previews/{}",
                g2["id"].as_str().unwrap()
            ),
            Some(json!({"ttl_seconds": 3600})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["url"], g2["target_url"]);
    assert!(v["data"]["expires_at"].as_str().unwrap() > g2["expires_at"].as_str().unwrap());
    assert_eq!(
        d.post(&format!("/api/v1/sandboxes/{id}/pause"), json!({}))
            .await
            .0,
        200
    );
    assert_eq!(
        d.post(&format!("/api/v1/sandboxes/{id}/resume"), json!({}))
            .await
            .0,
        200
    );
    serve(&d, &id, 8000, "second life").await;
    let (s, _) = fetch(&d, g2["target_url"].as_str().unwrap(), Some(&cookie)).await;
    assert_eq!(s, StatusCode::GONE);
    let (s, v) = d
        .req(
            Method::PUT,
            &format!(
                "/api/v1/sandboxes/{id}/previews/{}",
                g2["id"].as_str().unwrap()
            ),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    let fresh = grant(&d, &id, json!({"port": 8000})).await;
    let c = bootstrap(&d, &fresh).await;
    let (s, body) = fetch(
        &d,
        &format!("{}index.html", fresh["target_url"].as_str().unwrap()),
        Some(&c),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.contains("second life"), "{body}");

    // Revoked, its cookie opens nothing; a second revoke finds nothing.
    let revoke = format!(
        "/api/v1/sandboxes/{id}/previews/{}",
        fresh["id"].as_str().unwrap()
    );
    assert_eq!(d.delete(&revoke).await.0, 200);
    let (s, _) = fetch(&d, fresh["target_url"].as_str().unwrap(), Some(&c)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(d.delete(&revoke).await.0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_grant_is_refused() {
    let d = Daemon::start().await;
    let id = d.create(json!({})).await;
    serve(&d, &id, 8000, "short").await;
    let g = grant(&d, &id, json!({"port": 8000, "ttl_seconds": 30})).await;
    let cookie = bootstrap(&d, &g).await;
    let target = g["target_url"].as_str().unwrap();
    assert_eq!(fetch(&d, target, Some(&cookie)).await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(31)).await;
    let (s, body) = fetch(&d, target, Some(&cookie)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("expired"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_public_service_wakes_its_paused_sandbox_and_checks_its_routes() {
    let d = Daemon::start().await;
    let token_sha = sha256sum(b"route-token");
    let services = json!([{
        "id": "web",
        "port": 8001,
        "runtime": {"type": "cmd", "command": ["python3", "-m", "http.server", "8001", "--bind", "127.0.0.1", "--directory", "/workspace"]},
        "ingress": {"public": true, "routes": [
            {"id": "all", "resume": true},
            {"id": "admin", "path_prefix": "/admin", "resume": false,
             "auth": {"mode": "bearer", "bearer_token_sha256": token_sha}},
        ]},
    }]);
    // The claim checks its services field by field.
    let bad = json!([{"id": "web", "port": 8001, "ingress": {"public": true, "routes": [{"id": "r", "resume": true}]}}]);
    d.rejects(
        "/api/v1/sandboxes",
        json!({"template": "host", "config": {"services": bad}}),
        "config.services[0].ingress.routes[0].resume",
    )
    .await;

    let id = d
        .create(json!({"auto_resume": true, "services": services}))
        .await;
    d.sh(&id, "echo served > /workspace/hello.txt").await;
    let (s, v) = d.get(&format!("/api/v1/sandboxes/{id}/services")).await;
    assert_eq!(s, 200, "{v}");
    let url = v["data"]["services"][0]["public_url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        url.starts_with(&format!("http://web--{id}.localhost:")),
        "{v}"
    );

    // The cmd service was started by the claim.
    let started = Instant::now();
    loop {
        let (s, body) = fetch(&d, &format!("{url}hello.txt"), None).await;
        if s == StatusCode::OK {
            assert_eq!(body, "served\n");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "service never answered: {s} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The admin route needs its bearer token; the server never sees it.
    assert_eq!(
        fetch(&d, &format!("{url}admin/x"), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let r = browser(&d, &host_of(&url))
        .get(format!("{url}admin/x"))
        .bearer_auth("route-token")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "python answers 404 for a missing file"
    );
    // A service nobody declared, on the same sandbox: 404.
    let other = url.replace("web--", "db--");
    assert_eq!(fetch(&d, &other, None).await.0, StatusCode::NOT_FOUND);

    // Paused, the first request resumes it and the service comes back.
    assert_eq!(
        d.post(&format!("/api/v1/sandboxes/{id}/pause"), json!({}))
            .await
            .0,
        200
    );
    let (s, body) = fetch(&d, &format!("{url}hello.txt"), None).await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "served\n"));
    let (_, v) = d.get(&format!("/api/v1/sandboxes/{id}")).await;
    assert_eq!(v["data"]["status"], "running", "{v}");

    // Replacing the services takes the old one off the air.
    let (s, v) = d
        .req(
            Method::PUT,
            &format!("/api/v1/sandboxes/{id}/services"),
            Some(json!({"services": []})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        fetch(&d, &format!("{url}hello.txt"), None).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_preview_opens_in_a_browser() {
    let Some(python) = sdk_python() else { return };
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).is_file(),
        "{chromium} not found: install Debian's chromium (scripts/test.sh and CI do)"
    );
    let d = Daemon::start().await;
    let id = d.create(json!({})).await;
    serve(&d, &id, 8000, "seen in chromium").await;
    let g = grant(&d, &id, json!({"port": 8000, "path": "/index.html"})).await;
    let out = std::env::var("CARGO_TARGET_DIR")
        .map_or("/tmp/test-output".into(), |t| format!("{t}/test-output"));
    let (stdout, _) = run_python(
        &python,
        "previews/browser.py",
        &[
            ("PREVIEW_URL", g["url"].as_str().unwrap()),
            ("PREVIEW_TARGET", g["target_url"].as_str().unwrap()),
            ("PREVIEW_MARKER", "seen in chromium"),
            ("SANDSTONE_TEST_OUTPUT", &out),
            ("CHROMIUM", &chromium),
        ],
    )
    .await;
    assert!(stdout.contains("preview browser: ok"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_server_is_previewed_too() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
    let d = Daemon::start().await;
    let id = d.create(json!({})).await;
    d.start_script(&id, "previews/ws_echo.py", &["8002"]).await;
    wait_listening(&d, &id, 8002).await;
    let g = grant(&d, &id, json!({"port": 8002})).await;
    let cookie = bootstrap(&d, &g).await;
    // The grant's name, on a connection to the daemon (as DNS would send it).
    let url = g["target_url"].as_str().unwrap().replacen("http", "ws", 1);
    let mut req = format!("{url}socket").into_client_request().unwrap();
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(d.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    for text in ["one", "two"] {
        ws.send(Message::Text(text.into())).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an echo in time");
        let Some(Ok(Message::Text(t))) = m else {
            panic!("{m:?}")
        };
        assert_eq!(t.as_str(), format!("echo: {text}"));
    }
}

/// Sends one raw HTTP/1.1 request (a client that normalises URLs would
/// never send the paths under test) and returns the status and body.
async fn raw(d: &Daemon, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(d.url.trim_start_matches("http://"))
        .await
        .unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut out))
        .await
        .expect("an answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").map_or("", |x| x.1).to_string();
    (status, body)
}

fn request(method: &str, host: &str, path: &str, extra: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
}

/// What the echo server says it received.
fn seen(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_sees_one_spelling_of_a_path_and_no_internal_header() {
    let d = Daemon::start().await;
    let services = json!([{
        "id": "echo",
        "port": 8003,
        "ingress": {"public": true, "routes": [
            {"id": "pub", "path_prefix": "/pub", "resume": false},
            {"id": "admin", "path_prefix": "/admin", "resume": false,
             "auth": {"mode": "bearer", "bearer_token_sha256": sha256sum(b"route-token")}},
        ]},
    }]);
    // A prefix must itself be the one spelling requests are matched in.
    for prefix in ["/pub/../admin", "/a//b", "/%61dmin", "/caf\u{e9}"] {
        let bad = json!([{"id": "e", "port": 1, "ingress": {"public": true, "routes": [
            {"id": "r", "path_prefix": prefix, "resume": false}]}}]);
        d.rejects(
            "/api/v1/sandboxes",
            json!({"template": "host", "config": {"services": bad}}),
            "config.services[0].ingress.routes[0].path_prefix",
        )
        .await;
    }
    let id = d.create(json!({"services": services})).await;
    d.start_script(&id, "previews/echo_headers.py", &["8003"])
        .await;
    wait_listening(&d, &id, 8003).await;
    let port = d.url.rsplit_once(':').unwrap().1;
    let host = format!("echo--{id}.localhost:{port}");

    // The headers nodes tell each other things by, and a client's own
    // account of where it connects from, never reach the server.
    let forged = "x-sandstone-node-token: forged\r\nx-sandstone-forwarded-by: n\r\n\
                  x-sandstone-team: t\r\nx-forwarded-for: spoofed\r\nforwarded: for=spoofed\r\n";
    let (s, body) = raw(&d, &request("GET", &host, "/pub/x?q=%2e%2e", forged)).await;
    assert_eq!(s, 200, "{body}");
    let got = seen(&body);
    assert_eq!(got["path"], "/pub/x?q=%2e%2e");
    let h = &got["headers"];
    for name in [
        "x-sandstone-node-token",
        "x-sandstone-forwarded-by",
        "x-sandstone-team",
        "forwarded",
    ] {
        assert!(h.get(name).is_none(), "{name} reached the server: {h}");
    }
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    // Nor can a client have a hop drop it by naming it hop-by-hop.
    let named = "connection: keep-alive, X-Forwarded-For\r\n";
    let (s, body) = raw(&d, &request("GET", &host, "/pub/y", named)).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        seen(&body)["headers"]["x-forwarded-for"],
        "127.0.0.1",
        "{body}"
    );

    // Another spelling of the protected path is refused, never routed by
    // the unprotected prefix it starts with.
    for path in [
        "/pub/../admin/x",
        "/pub/%2e%2e/admin/x",
        "/pub/.%2E/admin/x",
        "/pub/..%2fadmin/x",
        "/pub/..%5cadmin/x",
        "/pub/..;/admin/x",
    ] {
        let (s, body) = raw(&d, &request("GET", &host, path, "")).await;
        assert_eq!(s, 400, "{path}: {body}");
    }
    for path in ["/%61dmin/x", "//admin/x", "/admin//x"] {
        let (s, body) = raw(&d, &request("GET", &host, path, "")).await;
        assert_eq!(s, 401, "{path}: {body}");
    }
    // With its credential, the server sees the one spelling, without it.
    let bearer = "authorization: Bearer route-token\r\n";
    let (s, body) = raw(&d, &request("GET", &host, "/%61dmin//x", bearer)).await;
    assert_eq!(s, 200, "{body}");
    let got = seen(&body);
    assert_eq!(got["path"], "/admin/x");
    assert!(got["headers"].get("authorization").is_none(), "{got}");
    // Two Host headers could be read one way here and another there.
    let two = format!("Host: {host}\r\n");
    assert_eq!(raw(&d, &request("GET", &host, "/pub/x", &two)).await.0, 400);

    // A preview's cookie goes with requests from every preview (one
    // site): a change must come from the preview's own origin.
    let g = grant(&d, &id, json!({"port": 8003})).await;
    let cookie = bootstrap(&d, &g).await;
    let target = g["target_url"].as_str().unwrap();
    let origin = target.trim_end_matches('/');
    let pv_host = target.split('/').nth(2).unwrap();
    let with = |from: &str| format!("cookie: {cookie}\r\norigin: {from}\r\n{forged}");
    let evil = format!("http://pv-0000000000000000.localhost:{port}");
    let (s, body) = raw(&d, &request("POST", pv_host, "/x", &with(&evil))).await;
    assert_eq!(s, 403, "{body}");
    let (s, body) = raw(&d, &request("GET", pv_host, "/x", &with(&evil))).await;
    assert_eq!(s, 200, "a read is not a change: {body}");
    let (s, body) = raw(&d, &request("POST", pv_host, "/x", &with(origin))).await;
    assert_eq!(s, 200, "{body}");
    let got = seen(&body);
    assert_eq!(got["method"], "POST");
    for name in [
        "x-sandstone-node-token",
        "x-sandstone-forwarded-by",
        "x-sandstone-team",
    ] {
        assert!(got["headers"].get(name).is_none(), "{name}: {got}");
    }
    assert!(
        !got["headers"]["cookie"]
            .as_str()
            .unwrap_or_default()
            .contains("sandstone_preview"),
        "{got}"
    );

    // Each refusal left a record.
    let log = d.log();
    for needle in [
        "ambiguous path to a public service refused",
        "request without its route's credential refused",
        "cross-origin request to a preview refused",
    ] {
        assert!(log.contains(needle), "{needle}: {log}");
    }
}
