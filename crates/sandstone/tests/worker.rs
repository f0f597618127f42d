//! `sandstone worker` against `sandstone serve`'s Managed Agents API, with
//! the scripted model behind the agent loop: sessions served end to end in
//! their own sandboxes, the same tool results as the official SDK worker,
//! the protocol's fault cases, a worker killed mid-tool, two workers on one
//! queue, skills, memory, outputs, and no credential inside a sandbox.

// Test code: an unexpected failure is the test failing, so unwrap is the point.
#![allow(clippy::unwrap_used)]

mod common;

use common::agents::{
    FakeModel, daemon, environment, events, idle_with, mem, say, session_on, v1, within,
};
use common::fault_proxy::FaultProxy;
use common::{Daemon, cli, run_python, sandstone_bin, sdk_python, text};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const TOOLSET: &str = "agent_toolset_20260401";

/// A `sandstone worker poll` process; killed when dropped.
struct WorkerProc {
    child: Child,
    log: PathBuf,
}

impl WorkerProc {
    /// Polls `env` at `base_url` (the daemon, or a fault proxy before it),
    /// with sandboxes from the `host` template and, unless `extra` sets
    /// them, a 2 s max-idle and no status endpoint.
    fn start(d: &Daemon, base_url: &str, env: &str, key: &str, extra: &[&str]) -> WorkerProc {
        let mut cmd = Command::new(sandstone_bin());
        cmd.args([
            "worker",
            "poll",
            "--environment-id",
            env,
            "--base-url",
            base_url,
        ])
        .env("ANTHROPIC_ENVIRONMENT_KEY", key);
        Self::spawn(
            d,
            cmd,
            &[
                ("--max-idle", "2s"),
                ("--status-listen", "off"),
                ("--template", "host"),
            ],
            extra,
        )
    }

    /// `cmd` against the daemon `d` with `extra`, and each default flag
    /// `extra` does not set.
    fn spawn(
        d: &Daemon,
        mut cmd: Command,
        defaults: &[(&str, &str)],
        extra: &[&str],
    ) -> WorkerProc {
        let log = d
            .data
            .path()
            .join(format!("worker-{}.log", sandstone_api::random_hex(4)));
        for (flag, default) in defaults {
            if !extra.contains(flag) {
                cmd.args([flag, default]);
            }
        }
        let child = cmd
            .args(["--sandstone-url", &d.url, "--log-format", "json"])
            .args(extra)
            .env("SANDSTONE_TOKEN", &d.token)
            .env("SANDSTONE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .expect("start the worker");
        WorkerProc { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The worker's JSON log records whose message is `msg`.
    fn records(&self, msg: &str) -> Vec<Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["fields"]["message"] == msg)
            .collect()
    }

    /// Waits (bounded) for the process to exit on its own.
    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the worker did not exit: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = sandstone_sys::process::kill(common::pid_of(&self.child), libc::SIGTERM);
        self.child.wait().unwrap()
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- worker log {}:\n{}", self.log.display(), self.log());
        }
        self.kill9();
    }
}

fn toolset() -> Value {
    json!([{"type": TOOLSET}])
}

/// The toolset and a custom tool `lookup`.
fn with_lookup() -> Value {
    json!([{"type": TOOLSET}, {"type": "custom", "name": "lookup", "description": "d",
        "input_schema": {"type": "object", "properties": {}}}])
}

/// Writes an executable script.
fn script(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The `user.tool_result` events answering `agent.tool_use` `id`.
fn results_for<'a>(events: &'a [Value], id: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["type"] == "user.tool_result" && e["tool_use_id"] == id)
        .collect()
}

/// (tool name, result text, is_error) of every answered toolset call.
fn tool_results(events: &[Value]) -> Vec<(String, String, bool)> {
    events
        .iter()
        .filter(|e| e["type"] == "agent.tool_use")
        .filter_map(|u| {
            let r = *results_for(events, u["id"].as_str()?).first()?;
            Some((
                u["name"].as_str()?.to_string(),
                r["content"][0]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                r["is_error"] == true,
            ))
        })
        .collect()
}

/// The sandboxes labelled as serving `sid`.
async fn session_sandboxes(d: &Daemon, sid: &str) -> Vec<Value> {
    let (s, v) = d
        .get(&format!("/api/v1/sandboxes?metadata.cma.session={sid}"))
        .await;
    assert_eq!(s, 200, "{v}");
    v["data"]["sandboxes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn wait_paused(d: &Daemon, sid: &str) -> String {
    let mut id = String::new();
    within(Duration::from_secs(30), async || {
        let sbs = session_sandboxes(d, sid).await;
        match sbs.as_slice() {
            [one] if one["paused"] == true => {
                id = one["id"].as_str().unwrap().to_string();
                true
            }
            _ => false,
        }
    })
    .await;
    id
}

/// The session's work items (environment key).
async fn work_items(d: &Daemon, env: &str, key: &str) -> Vec<Value> {
    let (s, v, _) = v1(
        d,
        key,
        Method::GET,
        &format!("/environments/{env}/work"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["data"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn our_worker_gives_the_official_workers_tool_results() {
    let Some(python) = sdk_python() else { return };
    let model = FakeModel::start();
    let d = daemon(&model, 30).await;
    let (env, key) = environment(&d).await;
    let workdir = tempfile::tempdir().unwrap();
    let wd = workdir.path().display().to_string();
    let run = async |worker: &str| -> Value {
        let (stdout, _) = run_python(
            &python,
            "sdk/worker_session.py",
            &[
                ("ANTHROPIC_BASE_URL", &d.url),
                ("ANTHROPIC_API_KEY", &d.token),
                ("SANDSTONE_ENV_ID", &env),
                ("SANDSTONE_ENV_KEY", &key),
                ("SCRIPT", "conformance"),
                ("WORKER", worker),
                ("WORKDIR", &wd),
            ],
        )
        .await;
        let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        v["sessions"][0].clone()
    };
    let official = run("official").await;
    let worker = WorkerProc::start(&d, &d.url, &env, &key, &[]);
    let ours = run("external").await;
    let (a, b) = (
        official["calls"].as_array().unwrap(),
        ours["calls"].as_array().unwrap(),
    );
    assert_eq!(a.len(), 19, "{official}");
    assert_eq!(a.len(), b.len(), "{ours}\n{}", worker.log());
    let mut differences = Vec::new();
    for (x, y) in a.iter().zip(b) {
        // The official worker's workdir is a temporary directory; ours is
        // the sandbox's /workspace.
        let x_content = x["content"].to_string().replace(&wd, "/workspace");
        // The one intended difference: our file tools may also reach
        // /mnt/session/outputs, so a path outside both says so.
        let y_content = y["content"]
            .to_string()
            .replace(" and its other permitted directories", "");
        if x["name"] != y["name"] || x["is_error"] != y["is_error"] || x_content != y_content {
            differences.push(format!(
                "{} {}\n  official: {} {x_content}\n  ours:     {} {}",
                x["name"], x["input"], x["is_error"], y["is_error"], y_content
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "tool results differ:\n{}",
        differences.join("\n")
    );
    // The session's sandbox is paused once the worker let the item go.
    wait_paused(&d, ours["session_id"].as_str().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_pauses_between_turns_and_comes_back_to_its_workspace() {
    let model = FakeModel::start();
    let mut d = daemon(&model, 30).await;
    let (env, key) = environment(&d).await;
    let worker = WorkerProc::start(&d, &d.url, &env, &key, &[]);
    let sid = session_on(&d, &env, "worker_turn", toolset()).await;
    say(&d, &sid, "first").await;
    let evs = idle_with(&d, &sid, "end_turn").await;
    assert_eq!(
        tool_results(&evs),
        [("bash".to_string(), "one".to_string(), false)],
        "{}",
        worker.log()
    );
    // max-idle after end_turn: the item is stopped, the sandbox paused.
    let sandbox = wait_paused(&d, &sid).await;
    within(Duration::from_secs(10), async || {
        work_items(&d, &env, &key)
            .await
            .iter()
            .all(|w| w["state"] == "stopped")
    })
    .await;
    // The daemon restarts meanwhile; the worker rides it out.
    d.stop();
    d.spawn().await;
    // Later: a new item, the same sandbox resumed with its files.
    say(&d, &sid, "second").await;
    within(Duration::from_secs(60), async || {
        tool_results(&events(&d, &sid).await).len() == 2
    })
    .await;
    let results = tool_results(&events(&d, &sid).await);
    assert_eq!(results[1].1, "one\ntwo", "{}", worker.log());
    assert_eq!(wait_paused(&d, &sid).await, sandbox);
    assert_eq!(worker.records("sandbox ready").len(), 2);
    let resumed: Vec<bool> = worker
        .records("sandbox ready")
        .iter()
        .map(|r| r["fields"]["resumed"] == true)
        .collect();
    assert_eq!(resumed, [false, true]);
}

/// The session's files are volumes: its outputs are read without waking
/// its sandbox, and when the sandbox is deleted the next item claims a new
/// one with the session's workspace and outputs intact.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_moves_to_a_new_sandbox_with_its_files() {
    let model = FakeModel::start();
    let d = daemon(&model, 30).await;
    let (env, key) = environment(&d).await;
    let worker = WorkerProc::start(&d, &d.url, &env, &key, &[]);
    let sid = session_on(&d, &env, "worker_turn", toolset()).await;
    say(&d, &sid, "first").await;
    idle_with(&d, &sid, "end_turn").await;
    let first = wait_paused(&d, &sid).await;
    let o = cli(&d, &["session", "outputs", &sid], b"");
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "7\treport.txt\n");
    let (_, v) = d.get(&format!("/api/v1/sandboxes/{first}")).await;
    assert_eq!(
        v["data"]["status"], "paused",
        "reading outputs woke it: {v}"
    );

    let (s, _) = d.delete(&format!("/api/v1/sandboxes/{first}")).await;
    assert_eq!(s, 202);
    say(&d, &sid, "second").await;
    within(Duration::from_secs(60), async || {
        tool_results(&events(&d, &sid).await).len() == 2
    })
    .await;
    let results = tool_results(&events(&d, &sid).await);
    assert_eq!(results[1].1, "one\ntwo", "{}", worker.log());
    let second = wait_paused(&d, &sid).await;
    assert_ne!(second, first);
    let (s, v) = d
        .get(&format!(
            "/api/v1/sandboxvolumes?metadata.cma.session={sid}"
        ))
        .await;
    assert_eq!(s, 200, "{v}");
    let volumes = v["data"].as_array().unwrap();
    assert_eq!(volumes.len(), 2, "{v}");
    for vol in volumes {
        assert_eq!(vol["mounted_by"], json!([second]), "{v}");
    }
}

/// Builds template `name` whose `/etc/toolchain` says `version`.
fn build_toolchain(d: &Daemon, name: &str, version: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("Sandstonefile");
    std::fs::write(
        &file,
        format!("FROM host\nRUN echo {version} > /etc/toolchain\n"),
    )
    .unwrap();
    let out = cli(
        d,
        &["template", "build", name, "-f", file.to_str().unwrap()],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// The worker's `--template` takes a template users made (here one built
/// from a Sandstonefile); a session's sandbox keeps the version it was
/// made from across a pause while the template is rebuilt, and a new
/// session gets the new one.
#[tokio::test(flavor = "multi_thread")]
async fn sessions_run_on_a_users_template_and_keep_its_version() {
    let model = FakeModel::start();
    let d = daemon(&model, 30).await;
    build_toolchain(&d, "toolchain", "v1");
    let (env, key) = environment(&d).await;
    let worker = WorkerProc::start(&d, &d.url, &env, &key, &["--template", "toolchain"]);
    let sid = session_on(&d, &env, "worker_template", toolset()).await;
    say(&d, &sid, "first").await;
    idle_with(&d, &sid, "end_turn").await;
    let sandbox = wait_paused(&d, &sid).await;
    let (_, v) = d.get(&format!("/api/v1/sandboxes/{sandbox}")).await;
    assert_eq!(v["data"]["template_id"], "toolchain", "{v}");
    build_toolchain(&d, "toolchain", "v2");
    say(&d, &sid, "second").await;
    within(Duration::from_secs(60), async || {
        tool_results(&events(&d, &sid).await).len() == 2
    })
    .await;
    let results = tool_results(&events(&d, &sid).await);
    assert_eq!(
        [results[0].1.as_str(), results[1].1.as_str()],
        ["v1", "v1"],
        "{}",
        worker.log()
    );
    assert_eq!(wait_paused(&d, &sid).await, sandbox);
    let other = session_on(&d, &env, "worker_template", toolset()).await;
    say(&d, &other, "first").await;
    idle_with(&d, &other, "end_turn").await;
    assert_eq!(tool_results(&events(&d, &other).await)[0].1, "v2");
}

/// Waits for an `agent.tool_use` named `name` and returns its id.
async fn tool_use_id(d: &Daemon, sid: &str, name: &str) -> String {
    let mut id = String::new();
    within(Duration::from_secs(30), async || {
        let evs = events(d, sid).await;
        match evs.iter().find(|e| {
            e["type"].as_str().is_some_and(|t| t.ends_with("tool_use")) && e["name"] == name
        }) {
            Some(e) => {
                id = e["id"].as_str().unwrap().to_string();
                true
            }
            None => false,
        }
    })
    .await;
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_are_answered_once_through_late_attach_duplicates_and_5xx() {
    let model = FakeModel::start();
    let d = daemon(&model, 30).await;
    let (env, key) = environment(&d).await;
    // The agent asks for a tool while no worker is attached: the worker
    // finds that call in history; the next one comes on the stream, twice.
    let sid = session_on(&d, &env, "worker_twice", toolset()).await;
    say(&d, &sid, "go").await;
    let call = tool_use_id(&d, &sid, "bash").await;
    idle_with(&d, &sid, "requires_action").await;
    let proxy = FaultProxy::start(&d.url).await;
    {
        let mut f = proxy.faults.lock().unwrap();
        f.fail_result_posts = 2;
        // Every call on the stream arrives twice as well.
        f.duplicate_tool_uses = true;
    }
    let worker = WorkerProc::start(&d, &proxy.url, &env, &key, &[]);
    let evs = idle_with(&d, &sid, "end_turn").await;
    assert_eq!(results_for(&evs, &call).len(), 1, "{}", worker.log());
    let uses: Vec<&Value> = evs
        .iter()
        .filter(|e| e["type"] == "agent.tool_use")
        .collect();
    assert_eq!(uses.len(), 2);
    for u in &uses {
        assert_eq!(results_for(&evs, u["id"].as_str().unwrap()).len(), 1);
    }
    let texts: Vec<String> = tool_results(&evs).into_iter().map(|r| r.1).collect();
    assert_eq!(texts, ["one", "two"]);
    // Two posts refused with 503, then one per call.
    assert_eq!(proxy.seen(&format!("POST /v1/sessions/{sid}/events")), 4);
    // Long polls of 999 ms, with the worker's id (counted in the stats).
    assert!(
        proxy.seen(&format!(
            "GET /v1/environments/{env}/work/poll?block_ms=999"
        )) >= 1
    );
    let (_, stats, _) = v1(
        &d,
        &key,
        Method::GET,
        &format!("/environments/{env}/work/stats"),
        None,
    )
    .await;
    assert_eq!(stats["workers_polling"], 1, "{stats}");
    // The stream was opened before the history was listed.
    let seen = proxy.faults.lock().unwrap().seen.clone();
    let stream = seen
        .iter()
        .position(|s| s.contains("/events/stream"))
        .unwrap();
    let list = seen
        .iter()
        .position(|s| s.contains(&format!("GET /v1/sessions/{sid}/events?")))
        .unwrap();
    assert!(stream < list, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ask_waits_for_confirmation_and_unknown_tools_stay_pending() {
    let model = FakeModel::start();
    let d = daemon(&model, 30).await;
    let (env, key) = environment(&d).await;
    let _worker = WorkerProc::start(&d, &d.url, &env, &key, &["--max-idle", "0"]);
    // always_ask: nothing runs until the user allows it.
    let ask =
        json!([{"type": TOOLSET, "default_config": {"permission_policy": {"type": "always_ask"}}}]);
    let sid = session_on(&d, &env, "ask", ask).await;
    say(&d, &sid, "go").await;
    let call = tool_use_id(&d, &sid, "bash").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(results_for(&events(&d, &sid).await, &call).is_empty());
    let confirm = json!({"events": [{"type": "user.tool_confirmation", "tool_use_id": call, "result": "allow"}]});
    let (s, v, _) = v1(
        &d,
        &d.token,
        Method::POST,
        &format!("/sessions/{sid}/events"),
        Some(confirm),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let evs = idle_with(&d, &sid, "end_turn").await;
    assert_eq!(tool_results(&evs), [("bash".into(), "asked".into(), false)]);

    // A custom tool this worker does not serve is left to its owner.
    let tools = with_lookup();
    let sid = session_on(&d, &env, "worker_custom", tools).await;
    say(&d, &sid, "go").await;
    let call = tool_use_id(&d, &sid, "lookup").await;
    idle_with(&d, &sid, "requires_action").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let evs = events(&d, &sid).await;
    assert!(!evs.iter().any(|e| e["type"] == "user.custom_tool_result"));
    let answer = json!({"events": [{"type": "user.custom_tool_result", "custom_tool_use_id": call,
        "content": [{"type": "text", "text": "from the app"}]}]});
    v1(
        &d,
        &d.token,
        Method::POST,
        &format!("/sessions/{sid}/events"),
        Some(answer),
    )
    .await;
    let evs = idle_with(&d, &sid, "end_turn").await;
    let last = evs
        .iter()
        .rev()
        .find(|e| e["type"] == "agent.message")
        .unwrap();
    assert!(last.to_string().contains("from the app"), "{last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_requests_lost_leases_and_terminated_sessions_end_the_item() {
    let model = FakeModel::start();
    // An 8 s lease: heartbeats every 4 s.
    let d = daemon(&model, 8).await;
    let (env, key) = environment(&d).await;
    let proxy = FaultProxy::start(&d.url).await;
    let worker = WorkerProc::start(&d, &proxy.url, &env, &key, &["--max-idle", "0"]);
    let custom = with_lookup();
    let active = async |sid: &str| -> String {
        let mut id = String::new();
        within(Duration::from_secs(20), async || {
            let items = work_items(&d, &env, &key).await;
            match items
                .iter()
                .find(|w| w["data"]["id"] == sid && w["state"] == "active")
            {
                Some(w) => {
                    id = w["id"].as_str().unwrap().to_string();
                    true
                }
                None => false,
            }
        })
        .await;
        id
    };
    let state = async |work: &str| -> String {
        let (_, w, _) = v1(
            &d,
            &d.token,
            Method::GET,
            &format!("/environments/{env}/work/{work}"),
            None,
        )
        .await;
        w["state"].as_str().unwrap_or_default().to_string()
    };

    // 1. A graceful stop: the next heartbeat says `stopping`, the worker
    //    ends the run and confirms with a force stop.
    let sid = session_on(&d, &env, "worker_custom", custom.clone()).await;
    say(&d, &sid, "go").await;
    let work = active(&sid).await;
    let (s, v, _) = v1(
        &d,
        &d.token,
        Method::POST,
        &format!("/environments/{env}/work/{work}/stop"),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    within(Duration::from_secs(20), async || {
        state(&work).await == "stopped"
    })
    .await;
    wait_paused(&d, &sid).await;
    assert!(proxy.seen(&format!("/work/{work}/stop")) >= 1);

    // 2. A 412 on a heartbeat: the lease is someone else's; the worker
    //    walks away without stopping the item.
    let sid = session_on(&d, &env, "worker_custom", custom.clone()).await;
    say(&d, &sid, "go").await;
    let work = active(&sid).await;
    proxy.faults.lock().unwrap().heartbeat_412 = true;
    within(Duration::from_secs(15), async || {
        worker.log().contains("the lease belongs to another worker")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        proxy.seen(&format!("/work/{work}/stop")),
        0,
        "{}",
        worker.log()
    );

    // 3. The session archived while served: the run ends, the item stops.
    let sid = session_on(&d, &env, "worker_custom", custom).await;
    say(&d, &sid, "go").await;
    let work = active(&sid).await;
    idle_with(&d, &sid, "requires_action").await;
    let (s, v, _) = v1(
        &d,
        &d.token,
        Method::POST,
        &format!("/sessions/{sid}/archive"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    within(Duration::from_secs(20), async || {
        state(&work).await == "stopped"
    })
    .await;
    wait_paused(&d, &sid).await;
    // Archiving also asks the item to stop; whichever the worker sees
    // first (the stream's status_terminated or the `stopping` heartbeat)
    // ends the run, and both end in the force stop checked above.
    let done = worker.records("item done");
    let outcome = done
        .iter()
        .find(|r| r["fields"]["work"] == work.as_str())
        .map(|r| r["fields"]["outcome"].as_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(
        outcome.contains("Terminated") || outcome.contains("StopRequested"),
        "{outcome}: {}",
        worker.log()
    );
}

/// Waits until the session's sandbox runs the long command of the
/// `worker_kill` script, and returns the sandbox.
async fn long_command_running(d: &Daemon, sid: &str) -> String {
    tool_use_id(d, sid, "bash").await;
    let mut id = String::new();
    within(Duration::from_secs(20), async || {
        let sbs = session_sandboxes(d, sid).await;
        let Some(sb) = sbs.first() else { return false };
        id = sb["id"].as_str().unwrap().to_string();
        d.sh(&id, "test -f /workspace/.first-run").await["exit_code"] == 0
    })
    .await;
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_cancels_the_running_tool_reports_it_and_releases_the_item() {
    let model = FakeModel::start();
    let d = daemon(&model, 30).await;
    let (env, key) = environment(&d).await;
    let mut worker = WorkerProc::start(&d, &d.url, &env, &key, &[]);
    let sid = session_on(&d, &env, "worker_kill", toolset()).await;
    say(&d, &sid, "go").await;
    long_command_running(&d, &sid).await;
    let started = std::time::Instant::now();
    assert!(worker.terminate().success(), "{}", worker.log());
    assert!(started.elapsed() < Duration::from_secs(20));
    let evs = events(&d, &sid).await;
    let results = tool_results(&evs);
    assert_eq!(
        results[1],
        (
            "bash".into(),
            "tool 'bash' was cancelled: the worker is shutting down".into(),
            true
        )
    );
    // Released: the item is stopped and the sandbox paused.
    assert!(
        work_items(&d, &env, &key)
            .await
            .iter()
            .all(|w| w["state"] == "stopped")
    );
    wait_paused(&d, &sid).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_tool_is_replaced_on_the_same_sandbox() {
    let model = FakeModel::start();
    // A 6 s lease: the killed worker's item is taken back within seconds.
    let d = daemon(&model, 6).await;
    let (env, key) = environment(&d).await;
    let mut first = WorkerProc::start(&d, &d.url, &env, &key, &[]);
    let sid = session_on(&d, &env, "worker_kill", toolset()).await;
    say(&d, &sid, "go").await;
    let sandbox = long_command_running(&d, &sid).await;
    first.kill9();
    let second = WorkerProc::start(&d, &d.url, &env, &key, &[]);
    let evs = idle_with(&d, &sid, "end_turn").await;
    let results = tool_results(&evs);
    assert_eq!(results.len(), 3, "{}", second.log());
    assert_eq!(results[1].1, "second run");
    assert_eq!(results[2].1, "kept across workers\n");
    let sbs = session_sandboxes(&d, &sid).await;
    assert_eq!(sbs.len(), 1);
    assert_eq!(sbs[0]["id"], sandbox.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_on_one_queue_never_serve_one_session_at_once() {
    let model = FakeModel::start();
    let d = daemon(&model, 10).await;
    let (env, key) = environment(&d).await;
    let a = WorkerProc::start(&d, &d.url, &env, &key, &[]);
    let b = WorkerProc::start(&d, &d.url, &env, &key, &[]);
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(session_on(&d, &env, "worker_turn", toolset()).await);
    }
    for turn in ["first", "second"] {
        for sid in &sessions {
            say(&d, sid, turn).await;
        }
        for sid in &sessions {
            within(Duration::from_secs(60), async || {
                let n = events(&d, sid)
                    .await
                    .iter()
                    .filter(|e| {
                        e["type"] == "session.status_idle" && e["stop_reason"]["type"] == "end_turn"
                    })
                    .count();
                n == if turn == "first" { 1 } else { 2 }
            })
            .await;
            wait_paused(&d, sid).await;
        }
    }
    for sid in &sessions {
        let evs = events(&d, sid).await;
        let results = tool_results(&evs);
        // A failure here has been seen once, under CI's load only: show
        // the history and what the daemon did with this session.
        let story: Vec<String> = evs
            .iter()
            .map(|e| format!("{} {} {}", e["type"], e["input"], e["content"]))
            .collect();
        let daemon_log: Vec<String> = d
            .log()
            .lines()
            .filter(|l| l.contains(sid.as_str()))
            .map(str::to_string)
            .collect();
        assert_eq!(
            results.len(),
            2,
            "{sid}:\n{}\n{}",
            story.join("\n"),
            daemon_log.join("\n")
        );
        assert_eq!(results[1].1, "one\ntwo");
        assert_eq!(session_sandboxes(&d, sid).await.len(), 1);
    }
    // A worker logs an item's end after its sandbox shows paused: wait
    // (bounded) for every item it began to be logged as ended.
    let ended = |w: &WorkerProc| {
        let done: Vec<Value> = w.records("item done");
        w.records("sandbox ready").iter().all(|r| {
            done.iter()
                .any(|e| e["fields"]["work"] == r["fields"]["work"])
        })
    };
    within(Duration::from_secs(10), async || ended(&a) && ended(&b)).await;
    // Per session, one item at a time: each item was served by one worker
    // and an item started only after the previous one ended.
    let mut spans: Vec<(String, String, String, String)> = Vec::new();
    for w in [&a, &b] {
        for r in w.records("sandbox ready") {
            let work = r["fields"]["work"].as_str().unwrap().to_string();
            let end = w
                .records("item done")
                .into_iter()
                .find(|e| e["fields"]["work"] == work.as_str())
                .expect("every item ends");
            spans.push((
                r["fields"]["session"].as_str().unwrap().into(),
                work,
                r["timestamp"].as_str().unwrap().into(),
                end["timestamp"].as_str().unwrap().into(),
            ));
        }
    }
    assert_eq!(spans.len(), 8, "{}\n{}", a.log(), b.log());
    for sid in &sessions {
        let mut mine: Vec<_> = spans.iter().filter(|s| &s.0 == sid).collect();
        mine.sort_by(|x, y| x.2.cmp(&y.2));
        assert_eq!(mine.len(), 2);
        assert!(
            mine[0].3 <= mine[1].2,
            "overlapping items for {sid}: {mine:?}"
        );
    }
}

/// A memory-store call with the admin key, which must succeed.
async fn memory_call(d: &Daemon, method: Method, path: &str, body: Option<Value>) -> Value {
    let (status, v) = mem(d, &d.token, method, path, body).await;
    assert!((200..300).contains(&status), "{path}: {v}");
    v
}

/// A new memory store's id.
async fn new_store(d: &Daemon, name: &str) -> String {
    let store = memory_call(
        d,
        Method::POST,
        "/memory_stores",
        Some(json!({"name": name})),
    )
    .await;
    store["id"].as_str().unwrap().to_string()
}

/// Adds a memory to `store` and returns it.
async fn add_memory(d: &Daemon, store: &str, path: &str, content: &str) -> Value {
    let body = json!({"path": path, "content": content});
    memory_call(
        d,
        Method::POST,
        &format!("/memory_stores/{store}/memories"),
        Some(body),
    )
    .await
}

/// The content of `store`'s memory at `path`, if it has one.
async fn memory_at(d: &Daemon, store: &str, path: &str) -> Option<Value> {
    let all = format!("/memory_stores/{store}/memories?view=full");
    let mems = memory_call(d, Method::GET, &all, None).await;
    mems["data"]
        .as_array()?
        .iter()
        .find(|m| m["path"] == path)
        .map(|m| m["content"].clone())
}

/// A session of a new agent (`agent`: its fields) with `resources`.
async fn session_of(d: &Daemon, env: &str, agent: Value, resources: Value) -> String {
    let (s, agent, _) = v1(d, &d.token, Method::POST, "/agents", Some(agent)).await;
    assert_eq!(s, 200, "{agent}");
    let body = json!({"agent": agent["id"], "environment_id": env, "resources": resources});
    let (s, session, _) = v1(d, &d.token, Method::POST, "/sessions", Some(body)).await;
    assert_eq!(s, 200, "{session}");
    session["id"].as_str().unwrap().to_string()
}

/// A skill uploaded as a gzipped tar: `greeter/SKILL.md` and an
/// executable `greeter/run.sh`.
fn upload_skill(d: &Daemon) -> String {
    let dir = tempfile::tempdir().unwrap();
    let skill = dir.path().join("greeter");
    std::fs::create_dir(&skill).unwrap();
    std::fs::write(
        skill.join("SKILL.md"),
        "---\nname: greeter\ndescription: greets\n---\nSay hello.\n",
    )
    .unwrap();
    script(&skill.join("run.sh"), "#!/bin/sh\necho hello\n");
    let archive = dir.path().join("greeter.tar.gz");
    let ok = Command::new("tar")
        .arg("czf")
        .arg(&archive)
        .arg("-C")
        .arg(dir.path())
        .arg("greeter")
        .status()
        .unwrap();
    assert!(ok.success());
    let out = Command::new("curl")
        .args(["-sS", "-H", &format!("x-api-key: {}", d.token), "-F"])
        .arg(format!(
            "files[]=@{};filename=greeter.tar.gz",
            archive.display()
        ))
        .arg(format!("{}/v1/skills", d.url))
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_gets_skills_memory_outputs_and_an_api_token_it_never_holds() {
    use common::fake_internet::FakeInternet;
    let model = FakeModel::start();
    let net = FakeInternet::start();
    let egress = net.dir.path().join("egress.json");
    std::fs::write(
        &egress,
        json!({"upstreamCaFiles": [net.ca_pem()]}).to_string(),
    )
    .unwrap();
    let mut d = common::networked(
        &format!("{}:53", net.server),
        &["--egress-config".into(), egress.display().to_string()],
    )
    .await;
    d.kill();
    let model_args = common::agents::model_args(&d, &model, 30);
    d.serve_args.extend(model_args);
    d.spawn().await;
    // The API token is a credential source; sandboxes get a policy that
    // lets them reach api.test, where the proxy adds the token.
    let (s, v) = d
        .post(
            "/api/v1/credential-sources",
            json!({"name": "api-key", "resolverKind": "static_headers",
            "spec": {"staticHeaders": {"values": {"token": net.token}}}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let policy = net.dir.path().join("policy.json");
    std::fs::write(&policy, json!({
        "mode": "block-all",
        "egress": {
            "trafficRules": [{"name": "api", "action": "allow", "domains": ["api.test"], "ports": [{"port": 443}]}],
            "credentialRules": [{"name": "api", "credentialRef": "api", "domains": ["api.test"]}]
        },
        "credentialBindings": [{"ref": "api", "sourceRef": "api-key", "projection": {"type": "http_headers",
            "httpHeaders": {"headers": [{"name": "Authorization", "valueTemplate": "Bearer {{ .token }}"}]}}}]
    }).to_string()).unwrap();

    let (env, key) = environment(&d).await;
    let skill = upload_skill(&d);
    let store = new_store(&d, "Team Notes").await;
    let policies = new_store(&d, "Policies").await;
    add_memory(&d, &store, "/conventions.md", "use tabs\n").await;
    let agent = json!({"name": "e2e", "model": "scripted-worker_e2e", "tools": toolset(),
        "skills": [{"type": "custom", "skill_id": skill, "version": "latest"}]});
    let resources = json!([
        {"type": "memory_store", "memory_store_id": store, "access": "read_write"},
        {"type": "memory_store", "memory_store_id": policies, "access": "read_only"}]);
    let sid = session_of(&d, &env, agent, resources).await;

    let worker = WorkerProc::start(
        &d,
        &d.url,
        &env,
        &key,
        &[
            "--policy",
            &policy.display().to_string(),
            "--memory-sync-interval",
            "5s",
        ],
    );
    say(&d, &sid, "go").await;
    let evs = idle_with(&d, &sid, "end_turn").await;
    let results = tool_results(&evs);
    let texts: Vec<&str> = results.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(results.len(), 10, "{results:?}\n{}", worker.log());
    assert!(results[..9].iter().all(|r| !r.2), "{results:?}");
    // A read-only store takes no writes from the file tools.
    assert_eq!(
        results[9],
        (
            "write".into(),
            "write: /mnt/memory/policies/new.md is inside read-only directory /mnt/memory/policies"
                .into(),
            true
        )
    );
    assert_eq!(texts[0], "---\nname: greeter\n-rwxr-xr-x");
    assert_eq!(
        texts[1],
        "wrote 11 bytes to /mnt/session/outputs/report.txt"
    );
    assert_eq!(texts[2], "use tabs\n");
    assert_eq!(texts[6], "OK");
    assert_eq!(texts[7], "0", "no ANTHROPIC_* variable in the shell");
    assert_eq!(texts[8], "authorized", "the proxy added the token");
    // The model was told where it runs: the working and outputs
    // directories, the skill's files and the stores' mounts.
    let system = model.requests().await[0]["system"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for told in [
        "The working directory is /workspace",
        "/mnt/session/outputs",
        "- greeter (/workspace/skills/greeter/SKILL.md): ",
        "- /mnt/memory/team-notes (read-write): Team Notes",
        "- /mnt/memory/policies (read-only): Policies",
    ] {
        assert!(system.contains(told), "{told:?} not in {system}");
    }

    // The item ends (max-idle): memory synced back, the sandbox paused.
    let sandbox = wait_paused(&d, &sid).await;
    assert_eq!(
        memory_at(&d, &store, "/learned.md").await,
        Some(json!("tests live in test_calc.py\n"))
    );

    // Outputs survive the pause and download with the CLI.
    let to = tempfile::tempdir().unwrap();
    let out = cli(
        &d,
        &[
            "session",
            "outputs",
            &sid,
            "--to",
            &to.path().display().to_string(),
        ],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(to.path().join("report.txt")).unwrap(),
        "the report\n"
    );

    // No credential of the worker's is anywhere in the sandbox: not the
    // environment key, not a sessions token, not the API token. The
    // patterns go in a file outside the searched trees, so the search's
    // own command lines hold none of them.
    let patterns = format!("sk-sst-\n{key}\n{}\nANTHROPIC_\n", net.token);
    let r = d
        .http
        .post(format!(
            "{}/api/v1/sandboxes/{sandbox}/files?path=/.scan-patterns",
            d.url
        ))
        .bearer_auth(&d.token)
        .body(patterns)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let scan = "grep -rIl -f /.scan-patterns /workspace /mnt /tmp /root /etc /var /run 2>/dev/null; \
        cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' '\\n' | grep -c -f /.scan-patterns; true";
    // The scan finds a planted token (so it can fail)...
    let planted = d
        .sh(
            &sandbox,
            &format!("printf 'sk-ss%s-planted\\n' t > /tmp/planted && {scan}"),
        )
        .await;
    assert_eq!(planted["stdout"], "/tmp/planted\n0\n", "{planted}");
    d.sh(&sandbox, "rm /tmp/planted").await;
    // ...and nothing else.
    let r = d.sh(&sandbox, scan).await;
    assert_eq!(r["stdout"], "0\n", "{r}");
    // Skills and memory mirrors are the item's; they go when it ends.
    let r = d
        .sh(&sandbox, "ls /workspace/skills /mnt/memory 2>&1")
        .await;
    assert!(!r["stdout"].as_str().unwrap().contains("greeter"), "{r}");
    assert!(!r["stdout"].as_str().unwrap().contains("team-notes"), "{r}");
    assert!(!r["stdout"].as_str().unwrap().contains("policies"), "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_run_serves_one_claimed_item_on_its_secret_alone() {
    let model = FakeModel::start();
    let d = daemon(&model, 30).await;
    let (env, key) = environment(&d).await;
    let sid = session_on(&d, &env, "worker_turn", toolset()).await;
    say(&d, &sid, "go").await;
    // Claimed as a spawner would: poll and ack with the environment key,
    // then hand the item to `sandstone worker run`.
    let mut item = Value::Null;
    within(Duration::from_secs(10), async || {
        let path = format!("/environments/{env}/work/poll?block_ms=999");
        let (_, v, headers) = v1(&d, &key, Method::GET, &path, None).await;
        // The poll was held open for work: a worker need not sleep after
        // an empty one.
        assert_eq!(headers["sandstone-long-poll"], "true");
        item = v;
        !item.is_null()
    })
    .await;
    let work = item["id"].as_str().unwrap();
    let (s, v, _) = v1(
        &d,
        &key,
        Method::POST,
        &format!("/environments/{env}/work/{work}/ack"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let secret = item["secret"].as_str().unwrap();
    let mut cmd = Command::new(sandstone_bin());
    cmd.args(["worker", "run", "--base-url", &d.url])
        .env("ANTHROPIC_WORK_ID", work)
        .env("ANTHROPIC_ENVIRONMENT_ID", &env)
        .env("ANTHROPIC_SESSION_ID", &sid)
        .env("ANTHROPIC_WORK_SECRET", secret)
        .env_remove("ANTHROPIC_ENVIRONMENT_KEY");
    let mut worker = WorkerProc::spawn(&d, cmd, &[("--max-idle", "1s")], &[]);
    assert!(
        worker.wait(Duration::from_secs(60)).success(),
        "{}",
        worker.log()
    );
    let evs = events(&d, &sid).await;
    assert_eq!(tool_results(&evs), [("bash".into(), "one".into(), false)]);
    let (_, w, _) = v1(
        &d,
        &d.token,
        Method::GET,
        &format!("/environments/{env}/work/{work}"),
        None,
    )
    .await;
    assert_eq!(w["state"], "stopped", "{w}");
    wait_paused(&d, &sid).await;
    // The work secret and what it carries never reach the log.
    let log = worker.log();
    assert!(!log.contains(secret) && !log.contains("sk-sst-"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_status_and_metrics_count_items_and_tool_calls() {
    let model = FakeModel::start();
    let d = daemon(&model, 30).await;
    let (env, key) = environment(&d).await;
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let worker = WorkerProc::start(&d, &d.url, &env, &key, &["--status-listen", &addr]);
    let sid = session_on(&d, &env, "worker_turn", toolset()).await;
    say(&d, &sid, "go").await;
    idle_with(&d, &sid, "end_turn").await;
    wait_paused(&d, &sid).await;
    let ls = text(&cli(&d, &["ls"], b"").stdout);
    assert!(
        ls.contains(&format!("cma.session={sid}")) && ls.contains("paused"),
        "{ls}"
    );
    let out = cli(&d, &["worker", "status", "--addr", &addr], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["items_claimed"], 1, "{status}");
    assert_eq!(status["tool_calls"], 1, "{status}");
    // It names sessions and sandboxes: without the worker's key, or with
    // another, nothing is shown.
    for auth in [None, Some("Bearer s0_local_not_the_key")] {
        let mut req = reqwest::Client::new().get(format!("http://{addr}/status"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert!(!r.text().await.unwrap().contains(&sid));
    }
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sandstone_worker_tool_calls_total{tool=\"bash\",outcome=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sandstone_worker_items_finished_total{outcome=\"idle\"} 1"),
        "{metrics}"
    );
    // Neither the environment key nor a sessions token is in the log.
    let log = worker.log();
    assert!(!log.contains(&key) && !log.contains("sk-sst-"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_cut_while_a_tool_runs_loses_no_result() {
    let model = FakeModel::start();
    let d = daemon(&model, 30).await;
    let (env, key) = environment(&d).await;
    let proxy = FaultProxy::start(&d.url).await;
    let worker = WorkerProc::start(&d, &proxy.url, &env, &key, &[]);
    let sid = session_on(&d, &env, "worker_cut", toolset()).await;
    say(&d, &sid, "go").await;
    let call = tool_use_id(&d, &sid, "bash").await;
    // The two-second command is running when the stream goes.
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy.cut_streams();
    let evs = idle_with(&d, &sid, "end_turn").await;
    assert_eq!(results_for(&evs, &call).len(), 1, "{}", worker.log());
    assert_eq!(tool_results(&evs)[0].1, "survived");
    assert!(
        proxy.seen(&format!("GET /v1/sessions/{sid}/events/stream")) >= 2,
        "the worker reconnected"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_custom_tool_is_served_by_the_operators_command_without_credentials() {
    let model = FakeModel::start();
    let d = daemon(&model, 30).await;
    let (env, key) = environment(&d).await;
    let lookup = d.data.path().join("lookup.sh");
    script(
        &lookup,
        "#!/bin/sh\nread -r line\necho \"looked up $(echo \"$line\" | grep -o '\"word\":\"[a-z]*\"')\"\n\
         env | grep -c -e SANDSTONE_TOKEN -e ANTHROPIC_ || true\n",
    );
    let spec = format!("lookup={}", lookup.display());
    let worker = WorkerProc::start(&d, &d.url, &env, &key, &["--custom-tool", &spec]);
    let tools = with_lookup();
    let sid = session_on(&d, &env, "worker_custom", tools).await;
    say(&d, &sid, "go").await;
    let evs = idle_with(&d, &sid, "end_turn").await;
    let result = evs
        .iter()
        .find(|e| e["type"] == "user.custom_tool_result")
        .unwrap_or_else(|| panic!("no custom tool result: {}", worker.log()));
    assert_eq!(result["is_error"], false, "{result}");
    assert_eq!(
        result["content"][0]["text"], "looked up \"word\":\"pending\"\n0",
        "{result}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_healthcheck_item_is_acked_probed_and_stopped_without_a_sandbox() {
    let model = FakeModel::start();
    let d = daemon(&model, 30).await;
    let (env, key) = environment(&d).await;
    let proxy = FaultProxy::start(&d.url).await;
    proxy.faults.lock().unwrap().healthcheck_next_poll = true;
    let sid = session_on(&d, &env, "worker_turn", toolset()).await;
    say(&d, &sid, "go").await;
    let worker = WorkerProc::start(&d, &proxy.url, &env, &key, &[]);
    // Bounded generously (a loaded CI machine runs the file's tests side
    // by side), and a miss shows what the worker did.
    let done = tokio::time::timeout(Duration::from_secs(40), async {
        while !worker
            .log()
            .contains("healthcheck: sandstone daemon reachable")
            || worker.records("item done").is_empty()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "no healthcheck probe and stop: {}",
        worker.log()
    );
    let work = worker.records("item done")[0]["fields"]["work"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(proxy.seen(&format!("/work/{work}/ack")) == 1);
    assert!(proxy.seen(&format!("/work/{work}/stop")) >= 1);
    assert!(session_sandboxes(&d, &sid).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_syncs_both_ways_while_the_session_runs() {
    let model = FakeModel::start();
    let d = daemon(&model, 30).await;
    let (env, key) = environment(&d).await;
    let store = new_store(&d, "Notes").await;
    let conventions = add_memory(&d, &store, "/conventions.md", "use tabs\n").await;
    let agent = json!({"name": "m", "model": "scripted-worker_memory", "tools": toolset()});
    let resources =
        json!([{"type": "memory_store", "memory_store_id": store, "access": "read_write"}]);
    let sid = session_of(&d, &env, agent, resources).await;
    // max-idle 0: the item never ends, so no teardown flush happens.
    let worker = WorkerProc::start(
        &d,
        &d.url,
        &env,
        &key,
        &["--memory-sync-interval", "5s", "--max-idle", "0"],
    );
    say(&d, &sid, "go").await;
    // While the agent sleeps, someone edits a memory in the store.
    tool_use_id(&d, &sid, "bash").await;
    let path = format!(
        "/memory_stores/{store}/memories/{}",
        conventions["id"].as_str().unwrap()
    );
    memory_call(
        &d,
        Method::POST,
        &path,
        Some(json!({"content": "use spaces\n"})),
    )
    .await;
    let evs = idle_with(&d, &sid, "end_turn").await;
    // The sync after the sleep pulled the edit in...
    assert_eq!(tool_results(&evs)[2].1, "use spaces\n", "{}", worker.log());
    // ...and pushed the agent's new memory out, with the item still live.
    assert_eq!(
        memory_at(&d, &store, "/a.md").await,
        Some(json!("written in the sandbox\n"))
    );
    assert!(
        work_items(&d, &env, &key)
            .await
            .iter()
            .any(|w| w["state"] == "active")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn poll_on_work_hands_each_session_to_a_program_that_runs_worker_run() {
    let model = FakeModel::start();
    let d = daemon(&model, 30).await;
    let (env, key) = environment(&d).await;
    // The documented spawn script: forward the secret from stdin, then
    // serve the item in the foreground.
    let on_work = d.data.path().join("on-work.sh");
    script(
        &on_work,
        &format!(
            "#!/bin/sh\n\
             secret=$(python3 -c 'import json,sys; print(json.load(sys.stdin)[\"secret\"])')\n\
             echo \"spawned for $ANTHROPIC_SESSION_ID\" >&2\n\
             ANTHROPIC_WORK_SECRET=\"$secret\" exec {} worker run --base-url {} --sandstone-url {} \
             --template host --max-idle 1s --log-format json\n",
            sandstone_bin(),
            d.url,
            d.url
        ),
    );
    let worker = WorkerProc::start(
        &d,
        &d.url,
        &env,
        &key,
        &["--on-work", &on_work.display().to_string()],
    );
    let sid = session_on(&d, &env, "worker_turn", toolset()).await;
    say(&d, &sid, "go").await;
    let evs = idle_with(&d, &sid, "end_turn").await;
    assert_eq!(
        tool_results(&evs),
        [("bash".into(), "one".into(), false)],
        "{}",
        worker.log()
    );
    wait_paused(&d, &sid).await;
    within(Duration::from_secs(20), async || {
        worker.log().contains(&format!("spawned for {sid}"))
            && work_items(&d, &env, &key)
                .await
                .iter()
                .all(|w| w["state"] == "stopped")
    })
    .await;
    // An unrunnable program is refused at start.
    let out = cli(
        &d,
        &[
            "worker",
            "poll",
            "--environment-id",
            &env,
            "--on-work",
            "/nonexistent",
        ],
        b"",
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--on-work /nonexistent"),
        "{}",
        text(&out.stderr)
    );
}

/// A `cloud` environment: the daemon serves its sessions itself, with no
/// worker process, in sandboxes under the environment's network policy.
#[tokio::test(flavor = "multi_thread")]
async fn a_cloud_session_runs_in_the_daemon_with_no_worker() {
    let model = FakeModel::start();
    let mut d = Daemon::start().await;
    d.kill();
    d.serve_args = common::agents::model_args(&d, &model, 30);
    d.serve_args
        .extend(["--cloud-template".to_string(), "host".to_string()]);
    d.spawn().await;
    // Bad input is refused by field.
    let (s, v, _) = v1(
        &d,
        &d.token,
        Method::POST,
        "/environments",
        Some(json!({"name": "bad", "config": {"type": "cloud", "packages": {"pip": ["ok", "x; rm -rf /"]}}})),
    )
    .await;
    assert!(
        s == 400 && v.to_string().contains("config.packages.pip[1]"),
        "{s} {v}"
    );
    let (s, env, _) = v1(
        &d,
        &d.token,
        Method::POST,
        "/environments",
        Some(json!({"name": "cloud", "config": {"type": "cloud",
            "networking": {"type": "limited", "allowed_hosts": ["api.example.com"]}}})),
    )
    .await;
    assert_eq!(s, 200, "{env}");
    assert_eq!(
        env["config"]["networking"]["allow_package_managers"], false,
        "{env}"
    );
    let env = env["id"].as_str().unwrap().to_string();
    let sid = session_on(&d, &env, "worker_turn", toolset()).await;
    say(&d, &sid, "first").await;
    let evs = idle_with(&d, &sid, "end_turn").await;
    assert_eq!(
        tool_results(&evs),
        [("bash".to_string(), "one".to_string(), false)]
    );
    // Its sandbox carries the environment's policy.
    let sandboxes = session_sandboxes(&d, &sid).await;
    assert_eq!(sandboxes.len(), 1, "{sandboxes:?}");
    let sb = sandboxes[0]["id"].as_str().unwrap();
    let (_, v) = d.get(&format!("/api/v1/sandboxes/{sb}/network")).await;
    assert_eq!(v["data"]["mode"], "block-all", "{v}");
    assert!(v.to_string().contains("api.example.com"), "{v}");

    // allow_mcp_servers: the agent's MCP server hosts are allowed too. One
    // that cannot be reached is reported, and the turn goes on.
    let (s, mcp_env, _) = v1(
        &d,
        &d.token,
        Method::POST,
        "/environments",
        Some(json!({"name": "cloud-mcp", "config": {"type": "cloud",
            "networking": {"type": "limited", "allowed_hosts": [], "allow_mcp_servers": true}}})),
    )
    .await;
    assert_eq!(s, 200, "{mcp_env}");
    let (s, agent, _) = v1(
        &d,
        &d.token,
        Method::POST,
        "/agents",
        Some(json!({"name": "mcp", "model": "scripted-worker_turn",
            "mcp_servers": [{"type": "url", "name": "gone", "url": "http://127.0.0.1:9/mcp"}],
            "tools": [toolset()[0].clone(), {"type": "mcp_toolset", "mcp_server_name": "gone"}]})),
    )
    .await;
    assert_eq!(s, 200, "{agent}");
    let (s, session, _) = v1(
        &d,
        &d.token,
        Method::POST,
        "/sessions",
        Some(json!({"agent": agent["id"], "environment_id": mcp_env["id"]})),
    )
    .await;
    assert_eq!(s, 200, "{session}");
    let sid = session["id"].as_str().unwrap();
    say(&d, sid, "first").await;
    let evs = idle_with(&d, sid, "end_turn").await;
    let error = evs
        .iter()
        .find(|e| e["type"] == "session.error")
        .expect("an MCP error");
    assert_eq!(
        error["error"]["type"], "mcp_connection_failed_error",
        "{error}"
    );
    assert_eq!(error["error"]["mcp_server_name"], "gone", "{error}");
    assert_eq!(
        tool_results(&evs),
        [("bash".to_string(), "one".to_string(), false)]
    );
    let sandboxes = session_sandboxes(&d, sid).await;
    let sb = sandboxes[0]["id"].as_str().unwrap();
    let (_, v) = d.get(&format!("/api/v1/sandboxes/{sb}/network")).await;
    assert!(
        v.to_string().contains("127.0.0.1"),
        "the MCP host is allowed: {v}"
    );
}
