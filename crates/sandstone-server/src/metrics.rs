//! Prometheus metrics: sandbox counts and operation latency histograms.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

const BUCKETS_MS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 250.0, 1000.0, 5000.0,
];
pub const OPS: &[&str] = &[
    "create",
    "delete",
    "exec",
    "context",
    "file_read",
    "file_write",
    "pause",
    "resume",
    "snapshot",
    "fork",
    "tool_bash",
    "tool_read",
    "tool_write",
    "tool_edit",
    "tool_glob",
    "tool_grep",
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum_ms: f64,
    total: u64,
}

#[derive(Default)]
pub struct Metrics {
    pub sandboxes_created: AtomicU64,
    pub sandbox_create_failures: AtomicU64,
    hist: Mutex<Vec<Histogram>>,
}

impl Metrics {
    pub fn observe(&self, op: &str, ms: f64) {
        let Some(i) = OPS.iter().position(|o| *o == op) else {
            return;
        };
        let mut h = self.hist.lock().expect("lock poisoned: a holder panicked");
        if h.is_empty() {
            h.resize_with(OPS.len(), Default::default);
        }
        let e = &mut h[i];
        if e.counts.is_empty() {
            e.counts = vec![0; BUCKETS_MS.len()];
        }
        for (b, c) in BUCKETS_MS.iter().zip(e.counts.iter_mut()) {
            if ms <= *b {
                *c += 1;
            }
        }
        e.sum_ms += ms;
        e.total += 1;
    }

    pub fn render(&self, running: usize, total: usize, warm: usize) -> String {
        let mut s = String::new();
        s += "# TYPE sandstone_warm_pool_ready gauge\n";
        s += &format!("sandstone_warm_pool_ready {warm}\n");
        s += "# TYPE sandstone_sandboxes gauge\n";
        s += &format!("sandstone_sandboxes{{state=\"running\"}} {running}\n");
        s += &format!("sandstone_sandboxes{{state=\"all\"}} {total}\n");
        s += "# TYPE sandstone_sandboxes_created_total counter\n";
        s += &format!(
            "sandstone_sandboxes_created_total {}\n",
            self.sandboxes_created.load(Ordering::Relaxed)
        );
        s += "# TYPE sandstone_sandbox_create_failures_total counter\n";
        s += &format!(
            "sandstone_sandbox_create_failures_total {}\n",
            self.sandbox_create_failures.load(Ordering::Relaxed)
        );
        s += "# TYPE sandstone_operation_duration_seconds histogram\n";
        let h = self.hist.lock().expect("lock poisoned: a holder panicked");
        for (op, e) in OPS.iter().zip(h.iter()) {
            for (b, c) in BUCKETS_MS.iter().zip(&e.counts) {
                s += &format!(
                    "sandstone_operation_duration_seconds_bucket{{op=\"{op}\",le=\"{}\"}} {c}\n",
                    b / 1000.0
                );
            }
            s += &format!(
                "sandstone_operation_duration_seconds_bucket{{op=\"{op}\",le=\"+Inf\"}} {}\n",
                e.total
            );
            s += &format!(
                "sandstone_operation_duration_seconds_sum{{op=\"{op}\"}} {}\n",
                e.sum_ms / 1000.0
            );
            s += &format!(
                "sandstone_operation_duration_seconds_count{{op=\"{op}\"}} {}\n",
                e.total
            );
        }
        s
    }
}
