//! Templates built from a Sandstonefile (`sandstone template build`): each
//! step in a sandbox under the build's network policy, the steps cached by
//! their inputs, output streamed, a failed step a clear error that leaves
//! the template as it was. Needs the built `default` template named by
//! `SANDSTONE_TEST_DEFAULT` (scripts/test.sh builds and caches one) and the
//! fake internet (its package index).

// Test code: an unexpected failure is the test failing, so unwrap is the point.
#![allow(clippy::unwrap_used)]

mod common;

use common::fake_internet::{FakeInternet, default_daemon};
use common::{Daemon, cli, text};
use serde_json::{Value, json};

/// Builds `name` from `dir` (its `Sandstonefile`) through the CLI with
/// `--json`: whether it succeeded, and the events it printed.
fn build(d: &Daemon, name: &str, dir: &std::path::Path) -> (bool, Vec<Value>) {
    let file = dir.join("Sandstonefile");
    let out = cli(
        d,
        &[
            "--json",
            "template",
            "build",
            name,
            "-f",
            file.to_str().unwrap(),
        ],
        b"",
    );
    let events = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not an event: {l}")))
        .collect();
    (out.status.success(), events)
}

/// Which layer-making steps (by instruction) came from the cache.
fn cached(events: &[Value]) -> Vec<(String, bool)> {
    events
        .iter()
        .filter(|e| e["type"] == "step")
        .filter(|e| {
            let i = e["instruction"].as_str().unwrap();
            i.starts_with("RUN") || i.starts_with("COPY")
        })
        .map(|e| {
            (
                e["instruction"].as_str().unwrap().to_string(),
                e["cached"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// The output the build's commands printed.
fn output(events: &[Value]) -> String {
    events
        .iter()
        .filter(|e| e["type"] == "output")
        .map(|e| e["text"].as_str().unwrap())
        .collect()
}

fn last(events: &[Value]) -> &Value {
    events.last().expect("the build printed nothing")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandstonefile_builds_a_template_and_a_rebuild_runs_only_what_changed() {
    let Ok(template) = std::env::var("SANDSTONE_TEST_DEFAULT") else {
        eprintln!("skipped: SANDSTONE_TEST_DEFAULT is not set (scripts/test.sh builds it)");
        return;
    };
    let net = FakeInternet::start();
    let d = default_daemon(&net, &template).await;
    let ctx = tempfile::tempdir().unwrap();
    std::fs::copy(net.ca_pem(), ctx.path().join("fake-ca.pem")).unwrap();
    std::fs::create_dir(ctx.path().join("app")).unwrap();
    std::fs::write(ctx.path().join("app/main.py"), "print('app v1')\n").unwrap();
    // pip trusts the fake internet's CA (not the real PyPI's) for this one
    // command; the index is reachable because builds allow the registries.
    let file = "FROM default\n\
        COPY fake-ca.pem /etc/fake-ca.pem\n\
        ENV GREETING=built\n\
        RUN REQUESTS_CA_BUNDLE=/etc/fake-ca.pem pip install --disable-pip-version-check \\\n\
            --no-cache-dir --index-url https://pypi.org/simple sandstone-demo\n\
        WORKDIR /srv/app\n\
        COPY app/ .\n\
        COPY fake-ca.pem .\n\
        RUN python3 main.py > ran.txt && echo the app ran\n";
    std::fs::write(ctx.path().join("Sandstonefile"), file).unwrap();

    let (ok, events) = build(&d, "py-app", ctx.path());
    assert!(ok, "{events:?}");
    assert_eq!(last(&events)["type"], "done", "{events:?}");
    assert_eq!(last(&events)["version"], 1);
    assert_eq!(last(&events)["steps_run"], 5);
    assert!(
        output(&events).contains("sandstone-demo") && output(&events).contains("the app ran"),
        "the steps' output is streamed: {}",
        output(&events)
    );
    // A sandbox of it has what the steps made, in the WORKDIR, with ENV.
    let (s, v) = d
        .post("/api/v1/sandboxes", json!({"template": "py-app"}))
        .await;
    assert_eq!(s, 201, "{v}");
    let sb = v["data"]["sandbox_id"].as_str().unwrap().to_string();
    let r = d
        .sh(
            &sb,
            "python3 -c 'import sandstone_demo; print(sandstone_demo.answer())'; \
             pwd; cat ran.txt; echo $GREETING; ls /srv/app",
        )
        .await;
    assert_eq!(
        r["stdout"], "42\n/srv/app\napp v1\nbuilt\nfake-ca.pem\nmain.py\nran.txt\n",
        "{r}"
    );
    // Its build sandboxes are gone; the cache is not listed.
    let (_, v) = d.get("/api/v1/sandboxes").await;
    assert_eq!(v["data"]["sandboxes"].as_array().unwrap().len(), 1, "{v}");
    let (_, v) = d.get("/api/v1/templates").await;
    assert!(!v.to_string().contains("cache-"), "{v}");

    // The app changes: the steps before its COPY (the pip install among
    // them) come from the cache, the rest run again.
    std::fs::write(ctx.path().join("app/main.py"), "print('app v2')\n").unwrap();
    let (ok, events) = build(&d, "py-app", ctx.path());
    assert!(ok, "{events:?}");
    assert_eq!(
        cached(&events).iter().map(|(_, c)| *c).collect::<Vec<_>>(),
        vec![true, true, false, false, false],
        "{:?}",
        cached(&events)
    );
    assert!(!output(&events).contains("sandstone-demo"), "pip ran again");
    assert_eq!(last(&events)["version"], 2);
    let (s, v) = d
        .post("/api/v1/sandboxes", json!({"template": "py-app"}))
        .await;
    assert_eq!(s, 201, "{v}");
    let newer = v["data"]["sandbox_id"].as_str().unwrap().to_string();
    assert_eq!(d.sh(&newer, "cat ran.txt").await["stdout"], "app v2\n");
    // The sandbox made from version 1 keeps it.
    assert_eq!(d.sh(&sb, "cat ran.txt").await["stdout"], "app v1\n");

    // A step that fails fails the build, naming its line and exit code,
    // and the template stays as it was.
    std::fs::write(
        ctx.path().join("Sandstonefile"),
        format!("{file}RUN echo about to fail && exit 3\n"),
    )
    .unwrap();
    let (ok, events) = build(&d, "py-app", ctx.path());
    assert!(!ok, "{events:?}");
    let failed = last(&events);
    assert_eq!(failed["type"], "failed", "{events:?}");
    assert_eq!(failed["line"], 10, "{failed}");
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("exited with code 3"),
        "{failed}"
    );
    assert!(output(&events).contains("about to fail"));
    let (_, v) = d.get("/api/v1/sandboxes").await;
    assert_eq!(v["data"]["sandboxes"].as_array().unwrap().len(), 2, "{v}");
    let (s, v) = d
        .post("/api/v1/sandboxes", json!({"template": "py-app"}))
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["data"]["sandbox_id"].as_str().unwrap().to_string();
    assert_eq!(d.sh(&id, "cat ran.txt").await["stdout"], "app v2\n");

    // A host the file does not ALLOW is out of a build's reach.
    std::fs::write(
        ctx.path().join("Sandstonefile"),
        "FROM default\nRUN python3 -c \"import urllib.request as u; \
         u.urlopen('https://example.test/', timeout=5)\" && echo reached\n",
    )
    .unwrap();
    let (ok, events) = build(&d, "reach", ctx.path());
    assert!(!ok && !output(&events).contains("reached"), "{events:?}");
    let (s, _) = d.get("/api/v1/templates/reach").await;
    assert_eq!(s, 404);

    // Pruning keeps what anything stands on: the sandbox of version 1
    // holds its steps.
    let prune = || {
        let out = cli(&d, &["--json", "template", "prune"], b"");
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["cache_entries_removed"].clone()
    };
    assert_eq!(prune(), 0);
    // Once it is gone (and version 1 with it, at the next build), the
    // steps only version 1 had go: its app's COPY, the COPY after it and
    // the RUN after that.
    std::fs::write(ctx.path().join("Sandstonefile"), file).unwrap();
    let (s, v) = d.delete(&format!("/api/v1/sandboxes/{sb}")).await;
    assert!(s == 200 || s == 202, "{v}");
    // A deletion may end after it answers.
    for _ in 0..100 {
        if d.get(&format!("/api/v1/sandboxes/{sb}")).await.0 == 404 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (ok, events) = build(&d, "py-app", ctx.path());
    assert!(ok && cached(&events).iter().all(|(_, c)| *c), "{events:?}");
    assert_eq!(prune(), 3);
    let (ok, events) = build(&d, "py-app", ctx.path());
    assert!(ok && cached(&events).iter().all(|(_, c)| *c), "{events:?}");
}

/// A Sandstonefile or context that cannot be built is refused before
/// anything runs, naming the line or the path.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_sandstonefile_is_refused_naming_its_line() {
    let d = Daemon::start().await;
    let ctx = tempfile::tempdir().unwrap();
    for (file, needle) in [
        ("RUN true\n", "line 1: the first instruction must be FROM"),
        (
            "FROM host\nEXPOSE 80\n",
            "line 2: unknown instruction EXPOSE",
        ),
        (
            "FROM host\nCOPY ../secret /x\n",
            "../secret: a path inside the build context",
        ),
        (
            "FROM host\nCOPY missing /x\n",
            "missing: not in the build context",
        ),
        (
            "FROM no-such-template\n",
            "FROM no-such-template: no such template",
        ),
    ] {
        std::fs::write(ctx.path().join("Sandstonefile"), file).unwrap();
        let (ok, events) = build(&d, "bad", ctx.path());
        let out = cli(
            &d,
            &[
                "template",
                "build",
                "bad",
                "-f",
                ctx.path().join("Sandstonefile").to_str().unwrap(),
            ],
            b"",
        );
        let said = format!("{events:?} {}", text(&out.stderr));
        assert!(
            !ok && !out.status.success() && said.contains(needle),
            "{file}: {said}"
        );
    }
    let (s, _) = d.get("/api/v1/templates/bad").await;
    assert_eq!(s, 404);
    // A build may not take a built-in's name, nor the cache's, nor a
    // template of another kind (refused before anything streams).
    std::fs::write(ctx.path().join("Sandstonefile"), "FROM host\n").unwrap();
    let sb = d.create(json!({})).await;
    let (s, v) = d
        .post(
            "/api/v1/templates/from-sandbox",
            json!({"template_id": "captured", "sandbox_id": sb}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    for (name, says) in [
        ("host", "exists"),
        ("cache-x", "exists"),
        ("captured", "not built from a Sandstonefile"),
    ] {
        let file = ctx.path().join("Sandstonefile");
        let out = cli(
            &d,
            &["template", "build", name, "-f", file.to_str().unwrap()],
            b"",
        );
        let err = text(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{name}: {err}");
        assert!(!err.contains("Step"), "{name}: nothing ran: {err}");
    }
}

/// A daemon whose `cloud` sessions start from `cloud-base`: `default` with
/// a pip that trusts the fake internet's CA, as real images' pip trusts
/// PyPI's (the sandbox's own CA variables name the daemon's bundle, so a
/// wrapper sets pip's for it). `warm`: its warm pool per template.
async fn cloud_daemon(
    net: &FakeInternet,
    model: &common::agents::FakeModel,
    template: &str,
    warm: usize,
) -> Daemon {
    let mut d = default_daemon(net, template).await;
    d.kill();
    d.serve_args
        .extend(common::agents::model_args(&d, model, 30));
    d.serve_args
        .extend(["--cloud-template".into(), "cloud-base".into()]);
    d.warm_pool = warm;
    d.spawn().await;
    let ctx = tempfile::tempdir().unwrap();
    std::fs::copy(net.ca_pem(), ctx.path().join("fake-ca.pem")).unwrap();
    std::fs::write(
        ctx.path().join("Sandstonefile"),
        "FROM default\nCOPY fake-ca.pem /etc/fake-ca.pem\n\
         RUN p=$(command -v pip) && mv $p $p.real && \\\n\
         printf '#!/bin/sh\\nexport PIP_CERT=/etc/fake-ca.pem REQUESTS_CA_BUNDLE=/etc/fake-ca.pem\\nexec %s.real \"$@\"\\n' $p > $p && chmod +x $p\n",
    )
    .unwrap();
    let (ok, events) = build(&d, "cloud-base", ctx.path());
    assert!(ok, "{events:?}");
    d
}

/// A `cloud` environment's body: `pip` packages, `limited` networking that
/// allows `web.test` and the package registries.
fn cloud_env(name: &str, pip: &[&str]) -> Value {
    json!({"name": name, "config": {"type": "cloud",
        "networking": {"type": "limited", "allowed_hosts": ["web.test"], "allow_package_managers": true},
        "packages": {"pip": pip}}})
}

/// The environment's `packages_build` once it is `ready` or `failed`.
async fn packages_built(d: &Daemon, env: &str) -> Value {
    use common::agents::{v1, within};
    let mut last = Value::Null;
    within(std::time::Duration::from_secs(180), async || {
        let (_, v, _) = v1(
            d,
            &d.token,
            reqwest::Method::GET,
            &format!("/environments/{env}"),
            None,
        )
        .await;
        last = v["packages_build"].clone();
        last["status"] == "ready" || last["status"] == "failed"
    })
    .await;
    last
}

/// A `cloud` environment's `packages` are built into a template once (here
/// `pip` from the fake internet's index), its sessions run on it with no
/// worker under its `limited` network (one host allowed, another denied and
/// audited), and a package that does not exist fails the build with pip's
/// words, on the environment and as the session's error.
#[tokio::test(flavor = "multi_thread")]
async fn a_cloud_environment_installs_its_packages_and_limits_its_network() {
    use common::agents::{FakeModel, idle_with, say, session_on, v1, within};
    use reqwest::Method;
    use std::time::Duration;
    let Ok(template) = std::env::var("SANDSTONE_TEST_DEFAULT") else {
        eprintln!("skipped: SANDSTONE_TEST_DEFAULT is not set (scripts/test.sh builds it)");
        return;
    };
    let net = FakeInternet::start();
    let model = FakeModel::start();
    let d = cloud_daemon(&net, &model, &template, 0).await;

    let make = |name: &str, pip: &str| cloud_env(name, &[pip]);
    let built = async |env: &str| packages_built(&d, env).await;
    let (s, env, _) = v1(
        &d,
        &d.token,
        Method::POST,
        "/environments",
        Some(make("py", "sandstone-demo")),
    )
    .await;
    assert_eq!(s, 200, "{env}");
    let env = env["id"].as_str().unwrap().to_string();
    let b = built(&env).await;
    assert_eq!(b["status"], "ready", "{b}");
    let sid = session_on(
        &d,
        &env,
        "cloud_packages",
        json!([{"type": "agent_toolset_20260401"}]),
    )
    .await;
    say(&d, &sid, "go").await;
    let evs = idle_with(&d, &sid, "end_turn").await;
    let result = evs
        .iter()
        .find(|e| e["type"] == "user.tool_result")
        .map(|e| e["content"].to_string())
        .unwrap_or_default();
    assert!(result.contains("42"), "the package is installed: {result}");
    assert!(
        result.contains("hello from web.test"),
        "the allowed host: {result}"
    );
    assert!(result.contains("other-denied"), "the other host: {result}");
    let (_, v) = d
        .get(&format!("/api/v1/sandboxes?metadata.cma.session={sid}"))
        .await;
    let sb = v["data"]["sandboxes"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    d.audited(&sb, |e| e.to_string().contains("other.test"))
        .await;

    // A package that does not exist: the build fails with pip's words.
    let (s, bad, _) = v1(
        &d,
        &d.token,
        Method::POST,
        "/environments",
        Some(make("bad", "no-such-package-zz")),
    )
    .await;
    assert_eq!(s, 200, "{bad}");
    let bad = bad["id"].as_str().unwrap().to_string();
    let b = built(&bad).await;
    assert_eq!(b["status"], "failed", "{b}");
    assert!(
        b["error"].as_str().unwrap().contains("no-such-package-zz"),
        "{b}"
    );
    let sid = session_on(
        &d,
        &bad,
        "cloud_packages",
        json!([{"type": "agent_toolset_20260401"}]),
    )
    .await;
    let mut error = Value::Null;
    within(Duration::from_secs(30), async || {
        let evs = common::agents::events(&d, &sid).await;
        error = evs
            .into_iter()
            .find(|e| e["type"] == "session.error")
            .unwrap_or_default();
        !error.is_null()
    })
    .await;
    assert!(error.to_string().contains("no-such-package-zz"), "{error}");
}

/// The figures for #15's notes (run by `scripts/bench-cloud-packages.sh`,
/// a release build): the first build of a `pip: [one small wheel]`
/// environment beside `pip install` of the same wheel straight in a
/// sandbox of the same base; then, with the package template cached (and
/// its warm pool filled), a new session's user message -> its first tool
/// running, beside the same for an environment with no packages (the base
/// template), interleaved, 20 sessions each.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement, run by hand"]
async fn measure_cloud_package_templates() {
    use common::agents::{FakeModel, idle_with, say, session_on, v1};
    use reqwest::Method;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
    let template = std::env::var("SANDSTONE_TEST_DEFAULT").expect("SANDSTONE_TEST_DEFAULT");
    let net = FakeInternet::start();
    let model = FakeModel::start();
    let d = cloud_daemon(&net, &model, &template, 2).await;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;

    // The installer alone, in a sandbox of the base (the build's baseline).
    let (s, v) = d
        .post(
            "/api/v1/sandboxes",
            json!({"template": "cloud-base", "config": {"network": {"mode": "allow-all"}}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let sb = v["data"]["sandbox_id"].as_str().unwrap().to_string();
    let t = Instant::now();
    let r = d
        .sh(
            &sb,
            "PIP_BREAK_SYSTEM_PACKAGES=1 pip install --no-cache-dir --disable-pip-version-check sandstone-demo",
        )
        .await;
    let direct = t.elapsed();
    assert_eq!(r["exit_code"], 0, "{r}");
    d.delete(&format!("/api/v1/sandboxes/{sb}")).await;

    let create = async |body: Value| {
        let (s, v, _) = v1(&d, &d.token, Method::POST, "/environments", Some(body)).await;
        assert_eq!(s, 200, "{v}");
        v["id"].as_str().unwrap().to_string()
    };
    let t = Instant::now();
    let py = create(cloud_env("py", &["sandstone-demo"])).await;
    let b = packages_built(&d, &py).await;
    let first_build = t.elapsed();
    assert_eq!(b["status"], "ready", "{b}");
    let bare = create(cloud_env("bare", &[])).await;
    println!(
        "first build of pip: [sandstone-demo] (environment created -> packages_build ready): {:.0} ms; \
         pip install of it in a sandbox (baseline): {:.0} ms; ratio {:.2}",
        ms(first_build),
        ms(direct),
        first_build.as_secs_f64() / direct.as_secs_f64()
    );

    // Each session: message sent -> the first tool's clock (`date +%s%N`).
    let tools = json!([{"type": "agent_toolset_20260401"}]);
    let first_tool = async |env: &str| -> f64 {
        let sid = session_on(&d, env, "first_tool", tools.clone()).await;
        let sent = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        say(&d, &sid, "go").await;
        let evs = idle_with(&d, &sid, "end_turn").await;
        let started: u128 = evs
            .iter()
            .find(|e| e["type"] == "user.tool_result")
            .and_then(|e| e["content"][0]["text"].as_str())
            .and_then(|t| t.trim().parse().ok())
            .expect("the tool printed its clock");
        (started as f64 - sent.as_nanos() as f64) / 1e6
    };
    // Warm members of every template (the package template's too).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let steady = d.warm_ready().await;
    let (mut with_packages, mut without) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        d.wait_warm(steady).await;
        without.push(first_tool(&bare).await);
        d.wait_warm(steady).await;
        with_packages.push(first_tool(&py).await);
    }
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
    };
    println!(
        "new session, user message -> first tool running (ms, n=20 each, warm pools of {steady} members):"
    );
    for (label, v) in [
        ("no packages (the base template; baseline)", &mut without),
        ("pip package template, cached", &mut with_packages),
    ] {
        println!(
            "  {label:<44} p50 {:6.1}  p99 {:6.1}",
            pct(v, 50.0),
            pct(v, 99.0)
        );
    }
}
