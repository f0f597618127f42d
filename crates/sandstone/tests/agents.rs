//! The Managed Agents control plane under `/v1` as a real daemon serves it:
//! the official Anthropic Python SDK and its EnvironmentWorker against
//! `sandstone serve`, with a scripted Messages API standing in for the
//! model, and the CLI. What needs no daemon (the work queue, the agent loop,
//! memory stores) is tested in-process in `crates/sandstone-agents/tests`.

// Test code: an unexpected failure is the test failing, so unwrap is the point.
#![allow(clippy::unwrap_used)]

mod common;

use common::agents::{FakeModel, MODEL_KEY, daemon, environment, idle_with, v1};
use common::{assert_names, run_python, sdk_python};
use reqwest::Method;
use serde_json::{Value, json};
use std::process::Command;

#[tokio::test(flavor = "multi_thread")]
async fn the_official_sdk_and_worker_run_a_session_end_to_end() {
    let Some(python) = sdk_python() else { return };
    let model = FakeModel::start();
    let d = daemon(&model, 30).await;
    let (env, key) = environment(&d).await;
    let workdir = tempfile::tempdir().unwrap();
    let (stdout, stderr) = run_python(
        &python,
        "sdk/anthropic_ma_e2e.py",
        &[
            ("ANTHROPIC_BASE_URL", &d.url),
            ("ANTHROPIC_API_KEY", &d.token),
            ("SANDSTONE_ENV_ID", &env),
            ("SANDSTONE_ENV_KEY", &key),
            ("WORKDIR", &workdir.path().display().to_string()),
        ],
    )
    .await;
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    assert_eq!(summary["ok"], true, "{stdout}");
    // The model saw the worker's results: its last request carried them.
    let last = model.requests().await.last().unwrap().to_string();
    assert!(
        last.contains("definition of sandstone") && last.contains("tool_result"),
        "{last}"
    );
    // The model key went to the model only: not to the worker's files,
    // not into the daemon's log.
    let log = d.log();
    assert!(!log.contains(MODEL_KEY) && !stdout.contains(MODEL_KEY) && !stderr.contains(MODEL_KEY));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_creates_an_environment_and_follows_a_session() {
    use common::{cli, sandstone_bin, text};
    let model = FakeModel::start();
    let d = daemon(&model, 30).await;
    let run = |args: &[&str]| {
        let out = cli(&d, args, b"");
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let created = run(&["env", "create", "cli-env"]);
    let var = |name: &str| {
        created
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} in {created}"))
            .to_string()
    };
    let (env, key) = (
        var("ANTHROPIC_ENVIRONMENT_ID"),
        var("ANTHROPIC_ENVIRONMENT_KEY"),
    );
    assert!(key.starts_with("sk-sst-env-"), "{created}");
    assert!(run(&["env", "ls"]).contains(&env));
    let agent = run(&["agent", "create", "cli", "--model", "scripted-flaky"])
        .trim()
        .to_string();
    assert!(run(&["agent", "ls"]).contains(&agent));
    let sid = run(&["session", "create", "--agent", &agent, "--env", &env])
        .trim()
        .to_string();
    run(&["session", "send", &sid, "hello"]);
    idle_with(&d, &sid, "end_turn").await;
    let tail = Command::new("timeout")
        .args(["2", sandstone_bin(), "session", "tail", &sid])
        .env("SANDSTONE_URL", &d.url)
        .env("SANDSTONE_DATA_DIR", d.data.path())
        .output()
        .unwrap();
    let shown = text(&tail.stdout);
    assert!(
        shown.contains("you      hello")
            && shown.contains("agent    recovered")
            && shown.contains("idle     end_turn"),
        "{shown}"
    );
    assert!(run(&["session", "ls"]).contains(&sid));
    // The key works until it is revoked.
    let (_, keys, _) = v1(
        &d,
        &d.token,
        Method::GET,
        &format!("/environments/{env}/keys"),
        None,
    )
    .await;
    let kid = keys["data"][0]["id"].as_str().unwrap().to_string();
    let (s, _, _) = v1(
        &d,
        &key,
        Method::GET,
        &format!("/environments/{env}/work/stats"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert!(run(&["env", "keys", &env, "--revoke", &kid]).contains("revoked"));
    let (s, _, _) = v1(
        &d,
        &key,
        Method::GET,
        &format!("/environments/{env}/work/stats"),
        None,
    )
    .await;
    assert_eq!(s, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn skills_upload_version_and_download_through_the_sdk() {
    let Some(python) = sdk_python() else { return };
    let model = FakeModel::start();
    let d = daemon(&model, 30).await;
    let (env, _) = environment(&d).await;
    let workdir = tempfile::tempdir().unwrap();
    let (stdout, _) = run_python(
        &python,
        "sdk/anthropic_skills.py",
        &[
            ("ANTHROPIC_BASE_URL", &d.url),
            ("ANTHROPIC_API_KEY", &d.token),
            ("SANDSTONE_ENV_ID", &env),
            ("WORKDIR", &workdir.path().display().to_string()),
        ],
    )
    .await;
    assert!(stdout.contains("skills OK"), "{stdout}");
    // Bad uploads are 400s naming the problem.
    let form = |name: &str, data: &str| {
        let dir = workdir.path().join("bad");
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("f");
        std::fs::write(&f, data).unwrap();
        Command::new("curl")
            .args([
                "-sS",
                "-H",
                &format!("x-api-key: {}", d.token),
                "-F",
                &format!("files[]=@{};filename={name}", f.display()),
                &format!("{}/v1/skills", d.url),
            ])
            .output()
            .unwrap()
    };
    let out = form("x/README.md", "no skill here");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("SKILL.md"),
        "{v}"
    );
    let out = form("../SKILL.md", "---\nname: x\n---\n");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    let (s, v, _) = v1(&d, &d.token, Method::POST, "/agents", Some(json!({"name": "x", "model": "m", "skills": [{"type": "anthropic", "skill_id": "xlsx"}]}))).await;
    assert_names(s, &v, "skills[0].type");
}

/// The official SDK over environments, agent versions, memory stores,
/// session updates, work items and error bodies: every call answers as the
/// SDK expects (its exchanges are the wire model's `sdk-resources` fixture).
#[tokio::test(flavor = "multi_thread")]
async fn the_sdk_manages_environments_memory_and_work_items() {
    let Some(python) = sdk_python() else { return };
    let model = FakeModel::start();
    let d = daemon(&model, 30).await;
    let (env, key) = environment(&d).await;
    let (stdout, _) = run_python(
        &python,
        "sdk/anthropic_resources.py",
        &[
            ("ANTHROPIC_BASE_URL", &d.url),
            ("ANTHROPIC_API_KEY", &d.token),
            ("SANDSTONE_ENV_ID", &env),
            ("SANDSTONE_ENV_KEY", &key),
        ],
    )
    .await;
    assert!(stdout.contains(r#"{"ok": true}"#), "{stdout}");
}

/// The scripted model is itself checked against the official SDK's
/// `messages.create` and `messages.stream`, so the loop is tested against
/// a faithful fake.
#[tokio::test(flavor = "multi_thread")]
async fn the_fake_model_satisfies_the_official_sdk() {
    let Some(python) = sdk_python() else { return };
    let (stdout, _) = run_python(&python, "fake_model/check_with_sdk.py", &[]).await;
    assert!(stdout.contains("fake model OK"), "{stdout}");
}
