//! What the worker has done, as Prometheus text (`/metrics`) and as the
//! JSON `sandstone worker status` prints (`/status`).

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upper bounds (seconds) of the tool latency histogram.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0, 10.0, 60.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }
}

/// An item this worker is serving now.
#[derive(Clone)]
struct Active {
    session: String,
    sandbox: Option<String>,
    since: Instant,
}

#[derive(Default)]
struct Inner {
    items_claimed: u64,
    items_done: BTreeMap<String, u64>,
    tool_calls: BTreeMap<(String, String), u64>,
    tool_latency: BTreeMap<String, Histogram>,
    heartbeat_failures: u64,
    poll_errors: u64,
    active: BTreeMap<String, Active>,
}

pub struct Metrics {
    worker_id: String,
    started: Instant,
    inner: Mutex<Inner>,
}

impl Metrics {
    pub fn new(worker_id: &str) -> Metrics {
        Metrics {
            worker_id: worker_id.to_string(),
            started: Instant::now(),
            inner: Mutex::default(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn item_started(&self, work: &str, session: &str) {
        self.with(|m| {
            m.items_claimed += 1;
            m.active.insert(
                work.to_string(),
                Active {
                    session: session.to_string(),
                    sandbox: None,
                    since: Instant::now(),
                },
            );
        });
    }

    pub fn item_sandbox(&self, work: &str, sandbox: &str) {
        self.with(|m| {
            if let Some(a) = m.active.get_mut(work) {
                a.sandbox = Some(sandbox.to_string());
            }
        });
    }

    pub fn item_finished(&self, work: &str, outcome: &str) {
        self.with(|m| {
            m.active.remove(work);
            *m.items_done.entry(outcome.to_string()).or_default() += 1;
        });
    }

    pub fn tool_call(&self, tool: &str, outcome: &str, took: Duration) {
        self.with(|m| {
            *m.tool_calls
                .entry((tool.to_string(), outcome.to_string()))
                .or_default() += 1;
            m.tool_latency
                .entry(tool.to_string())
                .or_default()
                .observe(took.as_secs_f64());
        });
    }

    pub fn heartbeat_failed(&self) {
        self.with(|m| m.heartbeat_failures += 1);
    }

    pub fn poll_failed(&self) {
        self.with(|m| m.poll_errors += 1);
    }

    pub fn prometheus(&self) -> String {
        self.with(|m| {
            let mut out = String::new();
            let mut line = |s: String| {
                out.push_str(&s);
                out.push('\n');
            };
            line("# TYPE sandstone_worker_items_claimed_total counter".into());
            line(format!(
                "sandstone_worker_items_claimed_total {}",
                m.items_claimed
            ));
            line("# TYPE sandstone_worker_items_active gauge".into());
            line(format!("sandstone_worker_items_active {}", m.active.len()));
            line("# TYPE sandstone_worker_items_finished_total counter".into());
            for (outcome, n) in &m.items_done {
                line(format!(
                    "sandstone_worker_items_finished_total{{outcome=\"{outcome}\"}} {n}"
                ));
            }
            line("# TYPE sandstone_worker_tool_calls_total counter".into());
            for ((tool, outcome), n) in &m.tool_calls {
                line(format!(
                    "sandstone_worker_tool_calls_total{{tool=\"{}\",outcome=\"{outcome}\"}} {n}",
                    label(tool)
                ));
            }
            line("# TYPE sandstone_worker_tool_seconds histogram".into());
            for (tool, h) in &m.tool_latency {
                let tool = label(tool);
                for (b, c) in BUCKETS.iter().zip(h.counts) {
                    line(format!(
                        "sandstone_worker_tool_seconds_bucket{{tool=\"{tool}\",le=\"{b}\"}} {c}"
                    ));
                }
                line(format!(
                    "sandstone_worker_tool_seconds_bucket{{tool=\"{tool}\",le=\"+Inf\"}} {}",
                    h.count
                ));
                line(format!(
                    "sandstone_worker_tool_seconds_sum{{tool=\"{tool}\"}} {}",
                    h.sum
                ));
                line(format!(
                    "sandstone_worker_tool_seconds_count{{tool=\"{tool}\"}} {}",
                    h.count
                ));
            }
            line("# TYPE sandstone_worker_heartbeat_failures_total counter".into());
            line(format!(
                "sandstone_worker_heartbeat_failures_total {}",
                m.heartbeat_failures
            ));
            line("# TYPE sandstone_worker_poll_errors_total counter".into());
            line(format!(
                "sandstone_worker_poll_errors_total {}",
                m.poll_errors
            ));
            out
        })
    }

    pub fn status(&self) -> Value {
        self.with(|m| {
            let active: Vec<Value> = m
                .active
                .iter()
                .map(|(work, a)| {
                    json!({"work_id": work, "session_id": a.session, "sandbox_id": a.sandbox,
                           "seconds": a.since.elapsed().as_secs()})
                })
                .collect();
            let tool_calls: u64 = m.tool_calls.values().sum();
            json!({
                "worker_id": self.worker_id,
                "uptime_seconds": self.started.elapsed().as_secs(),
                "items_claimed": m.items_claimed,
                "items_finished": m.items_done,
                "tool_calls": tool_calls,
                "heartbeat_failures": m.heartbeat_failures,
                "poll_errors": m.poll_errors,
                "active": active,
            })
        })
    }
}

/// Tool names come from the model: keep label values printable.
fn label(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_calls_show_up_by_name_and_outcome_with_latency() {
        let m = Metrics::new("w1");
        m.tool_call("read", "ok", Duration::from_millis(2));
        m.tool_call("read", "error", Duration::from_millis(20));
        m.tool_call("bad\"name\n", "ok", Duration::from_millis(1));
        let text = m.prometheus();
        assert!(text.contains("sandstone_worker_tool_calls_total{tool=\"read\",outcome=\"ok\"} 1"));
        assert!(
            text.contains("sandstone_worker_tool_calls_total{tool=\"read\",outcome=\"error\"} 1")
        );
        assert!(
            text.contains("sandstone_worker_tool_seconds_bucket{tool=\"read\",le=\"0.0025\"} 1")
        );
        assert!(text.contains("sandstone_worker_tool_seconds_count{tool=\"read\"} 2"));
        assert!(text.contains("tool=\"badname\""), "{text}");
        assert_eq!(m.status()["tool_calls"], 3);
    }
}
