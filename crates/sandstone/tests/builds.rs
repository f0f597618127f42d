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
    let mut d = default_daemon(&net, &template).await;
    d.kill();
    d.serve_args
        .extend(common::agents::model_args(&d, &model, 30));
    d.serve_args
        .extend(["--cloud-template".into(), "cloud-base".into()]);
    d.spawn().await;
    // The base's pip trusts the fake internet's CA, as real images' pip
    // trusts PyPI's (the sandbox's own CA variables name the daemon's
    // bundle, so the wrapper sets pip's for it).
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

    let make = |name: &str, pip: &str| {
        json!({"name": name, "config": {"type": "cloud",
            "networking": {"type": "limited", "allowed_hosts": ["web.test"], "allow_package_managers": true},
            "packages": {"pip": [pip]}}})
    };
    let built = async |env: &str| -> Value {
        let mut last = Value::Null;
        within(Duration::from_secs(180), async || {
            let (_, v, _) = v1(
                &d,
                &d.token,
                Method::GET,
                &format!("/environments/{env}"),
                None,
            )
            .await;
            last = v["packages_build"].clone();
            last["status"] == "ready" || last["status"] == "failed"
        })
        .await;
        last
    };
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
