//! Networking on by default: `serve` with no network flag gives sandboxes
//! the pool `setup` recorded, default-deny and audited; presets open what
//! agents reach for; the audit says how to allow each denial. Needs the
//! built `default` template named by `SANDSTONE_TEST_DEFAULT`
//! (scripts/test.sh builds and caches one).

// Test code: an unexpected failure is the test failing, so unwrap is the point.
#![allow(clippy::unwrap_used)]

mod common;

use common::fake_internet::{FakeInternet, default_daemon};
use common::{cli, text};
use serde_json::json;

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// pip, trusting the fake internet's CA (its certificates are not the
/// real PyPI's), from the fake index. pip's requests prefers
/// REQUESTS_CA_BUNDLE (set to Sandstone's bundle) over `--cert`.
fn pip_install(ca: &str) -> String {
    format!(
        "cat > /tmp/fake-ca.pem <<'EOF'\n{ca}EOF\n\
         REQUESTS_CA_BUNDLE=/tmp/fake-ca.pem pip install -q --disable-pip-version-check --no-cache-dir \
         --index-url https://pypi.org/simple sandstone-demo 2>&1 | tail -3\n\
         python3 -c 'import sandstone_demo; print(sandstone_demo.answer())'"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_sandbox_is_networked_deny_by_default_and_allow_python_makes_pip_work() {
    let Ok(template) = std::env::var("SANDSTONE_TEST_DEFAULT") else {
        eprintln!("skipped: SANDSTONE_TEST_DEFAULT is not set (scripts/test.sh builds it)");
        return;
    };
    let net = FakeInternet::start();
    let d = default_daemon(&net, &template).await;
    let ca = std::fs::read_to_string(net.ca_pem()).unwrap();

    // `sandstone create` with no flag: the default template, an interface,
    // and nothing allowed — pip cannot reach the index.
    let id = ok(cli(&d, &["create"], b"")).trim().to_string();
    let r = d
        .sh(
            &id,
            "cat /sys/class/net/eth0/operstate; python3 -c 'import pip' && echo pip; \
             getent hosts pypi.org || echo unresolved",
        )
        .await;
    assert_eq!(r["stdout"], "up\npip\nunresolved\n", "{r}");
    let r = d.sh(&id, &pip_install(&ca)).await;
    assert_ne!(
        r["exit_code"], 0,
        "pip reached the index without a rule: {r}"
    );

    // The denial is audited, with the change that would allow it.
    let audit = ok(cli(&d, &["audit", &id, "--denied"], b""));
    assert!(audit.contains("pypi.org"), "{audit}");
    assert!(
        audit.contains(&format!("to allow: sandstone policy allow {id} python")),
        "{audit}"
    );

    // That change, made: the policy shows the preset expanded, pip works,
    // and a host outside the preset is still denied.
    ok(cli(&d, &["policy", "allow", &id, "python"], b""));
    let policy: serde_json::Value =
        serde_json::from_str(&ok(cli(&d, &["policy", "get", &id], b""))).unwrap();
    let rule = &policy["egress"]["trafficRules"][0];
    assert_eq!(
        (rule["preset"].as_str(), rule["domains"].clone()),
        (
            Some("python"),
            json!(["pypi.org", "files.pythonhosted.org"])
        ),
        "{policy}"
    );
    let r = d.sh(&id, &pip_install(&ca)).await;
    assert!(r["stdout"].as_str().unwrap().ends_with("42\n"), "{r}");
    let r = d
        .sh(
            &id,
            "curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://web.test/ || echo denied",
        )
        .await;
    assert!(
        r["stdout"].as_str().unwrap().contains("denied") || r["stdout"] == "403",
        "{r}"
    );

    // `sandstone create --allow python`: the same from the first command.
    let id2 = ok(cli(&d, &["create", "--allow", "python"], b""))
        .trim()
        .to_string();
    let r = d.sh(&id2, &pip_install(&ca)).await;
    assert!(r["stdout"].as_str().unwrap().ends_with("42\n"), "{r}");

    // A claim or template can still turn networking off.
    let off = ok(cli(&d, &["create", "--no-network"], b""))
        .trim()
        .to_string();
    let r = d.sh(&off, "ls /sys/class/net").await;
    assert_eq!(r["stdout"], "lo\n", "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_preset_is_a_400_naming_the_field() {
    let net = FakeInternet::start();
    let d = common::networked(&format!("{}:53", net.server), &[]).await;
    let (s, v) = d
        .post(
            "/api/v1/sandboxes",
            json!({"template": "host", "config": {"network": {"mode": "block-all",
                "egress": {"trafficRules": [{"action": "allow", "preset": "pyhton"}]}}}}),
        )
        .await;
    common::assert_names(s, &v, "config.network.egress.trafficRules[0].preset");
    let out = cli(
        &d,
        &["create", "--template", "host", "--allow", "pyhton"],
        b"",
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("neither a preset"),
        "{}",
        text(&out.stderr)
    );
}
