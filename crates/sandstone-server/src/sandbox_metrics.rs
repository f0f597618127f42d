//! Per-sandbox runtime metrics. A sampler reads each running sandbox's
//! cgroup (CPU time, memory, processes), its volume's size and its egress
//! proxy byte counters every interval into a bounded ring per sandbox;
//! `GET .../metrics` buckets a ring into Sandbox0's chart-ready series, and
//! `/metrics` shows each ring's newest sample as Prometheus gauges.
//!
//! The rings live in this daemon's memory only: a paused sandbox keeps its
//! history (no new points) until it ages out, and a restart starts afresh.
//! In a cluster a call is served by the node that runs the sandbox, whose
//! sampler holds its data.

use crate::lifecycle::Lifecycle;
use sandstone_api::metrics::{
    Catalog, Descriptor, Freshness, FreshnessStatus, Gap, GapReason, MetricKind, MetricName,
    MetricUnit, MetricsResponse, Point, Segment, Series, Statistic,
};
use sandstone_api::timefmt::{now_ms, rfc3339_ms};
use sandstone_runtime::cgroup::Usage;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How far back a ring reaches.
const RETENTION_MS: i64 = 3_600_000;
/// Samples kept per sandbox: an hour at the default interval. A shorter
/// interval keeps a shorter history rather than more memory.
const RING_CAPACITY: usize = 360;
/// The narrowest bucket the API answers with (the spec's floor).
pub const MIN_STEP_SECONDS: i64 = 15;

/// One reading of one sandbox.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub at_ms: i64,
    /// The runtime generation it was read from (PID 1's host pid): its
    /// counters start again at every resume, so rates never cross one.
    pub run: i32,
    pub usage: Usage,
    /// Bytes the sandbox's writable layer and workspace occupy.
    pub disk_bytes: Option<u64>,
    /// Bytes sent and received through the egress proxy this generation.
    pub net: Option<(u64, u64)>,
}

/// A sandbox's last samples, oldest first, at most [`RING_CAPACITY`] and
/// none older than [`RETENTION_MS`] before the newest.
#[derive(Debug, Default)]
struct Ring {
    samples: VecDeque<Sample>,
}

impl Ring {
    /// Appends `s`; one not newer than the newest is dropped, which keeps
    /// the ring ordered.
    fn push(&mut self, s: Sample) {
        if self
            .samples
            .back()
            .is_some_and(|last| last.at_ms >= s.at_ms)
        {
            return;
        }
        while self.samples.len() >= RING_CAPACITY
            || self
                .samples
                .front()
                .is_some_and(|f| f.at_ms < s.at_ms - RETENTION_MS)
        {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    fn newest(&self) -> Option<&Sample> {
        self.samples.back()
    }

    /// The newest sample taken at or before `to`.
    fn newest_until(&self, to: i64) -> Option<&Sample> {
        let after = self.samples.partition_point(|s| s.at_ms <= to);
        self.samples.get(after.checked_sub(1)?)
    }

    /// The samples in `[from, to]`, with the one just before `from` (the
    /// baseline of the first rate).
    fn window(&self, from: i64, to: i64) -> Vec<Sample> {
        let first = self.samples.partition_point(|s| s.at_ms < from);
        let last = self.samples.partition_point(|s| s.at_ms <= to);
        self.samples
            .range(first.saturating_sub(1)..last.max(first))
            .cloned()
            .collect()
    }
}

/// A network series' side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Transmit,
    Receive,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Self::Transmit => "transmit",
            Self::Receive => "receive",
        }
    }
}

/// A metric this sampler serves.
struct Def {
    name: MetricName,
    kind: MetricKind,
    unit: MetricUnit,
    description: &'static str,
}

const SERVED: &[Def] = &[
    Def {
        name: MetricName::CpuUtilization,
        kind: MetricKind::Gauge,
        unit: MetricUnit::Ratio,
        description: "CPU used over CPU allowed: the sandbox's CPU limit, or every host core when it has none",
    },
    Def {
        name: MetricName::CpuUsage,
        kind: MetricKind::Gauge,
        unit: MetricUnit::Cores,
        description: "CPU used, in cores, over each sampling interval",
    },
    Def {
        name: MetricName::CpuTime,
        kind: MetricKind::Counter,
        unit: MetricUnit::Seconds,
        description: "CPU time of every process of the runtime generation (cgroup cpuacct / cpu.stat)",
    },
    Def {
        name: MetricName::CpuLimit,
        kind: MetricKind::Gauge,
        unit: MetricUnit::Cores,
        description: "The CPU limit (config.resources.cpu); no points when unlimited",
    },
    Def {
        name: MetricName::MemoryUsage,
        kind: MetricKind::Gauge,
        unit: MetricUnit::Bytes,
        description: "Memory charged to the sandbox's cgroup, page cache included",
    },
    Def {
        name: MetricName::MemoryWorkingSet,
        kind: MetricKind::Gauge,
        unit: MetricUnit::Bytes,
        description: "Memory usage less the inactive file cache: what the OOM killer weighs",
    },
    Def {
        name: MetricName::MemoryAvailable,
        kind: MetricKind::Gauge,
        unit: MetricUnit::Bytes,
        description: "The memory limit less the working set",
    },
    Def {
        name: MetricName::MemoryLimit,
        kind: MetricKind::Gauge,
        unit: MetricUnit::Bytes,
        description: "The memory limit (config.resources.memory)",
    },
    Def {
        name: MetricName::MemoryUtilization,
        kind: MetricKind::Gauge,
        unit: MetricUnit::Ratio,
        description: "The working set over the memory limit",
    },
    Def {
        name: MetricName::NetworkIo,
        kind: MetricKind::Counter,
        unit: MetricUnit::Bytes,
        description: "Bytes through the egress proxy, by direction (transmit: to the outside)",
    },
    Def {
        name: MetricName::ProcessCount,
        kind: MetricKind::Gauge,
        unit: MetricUnit::Count,
        description: "Processes and threads in the sandbox (pids.current)",
    },
    Def {
        name: MetricName::RootfsWritableUsage,
        kind: MetricKind::Gauge,
        unit: MetricUnit::Bytes,
        description: "Bytes of the sandbox's writable layer and /workspace (its btrfs qgroup, or a walk on the plain-directory pool)",
    },
];

fn def_of(name: MetricName) -> Option<&'static Def> {
    SERVED.iter().find(|d| d.name == name)
}

/// The metrics a query names by default (the spec's).
pub const DEFAULT_METRICS: &[MetricName] = &[
    MetricName::CpuUtilization,
    MetricName::MemoryUtilization,
    MetricName::NetworkIo,
];

/// Whether `name` is a counter this sampler serves (where `rate` applies).
pub fn is_counter(name: MetricName) -> bool {
    def_of(name).is_some_and(|d| d.kind == MetricKind::Counter)
}

/// A validated query of one sandbox's series.
#[derive(Debug, Clone)]
pub struct Query {
    pub start_ms: i64,
    pub end_ms: i64,
    pub step_seconds: i64,
    pub metrics: Vec<MetricName>,
    pub statistic: Statistic,
}

impl Query {
    /// The effective step: the one asked for (default: the floor), at
    /// least [`MIN_STEP_SECONDS`], widened until `[start, end]` fits in
    /// `max_points` buckets.
    pub fn step(start_ms: i64, end_ms: i64, asked: Option<i64>, max_points: i64) -> i64 {
        let range = (end_ms - start_ms).max(0) as u64;
        let fit = range.div_ceil(max_points.max(1) as u64 * 1000) as i64;
        asked
            .unwrap_or(MIN_STEP_SECONDS)
            .max(MIN_STEP_SECONDS)
            .max(fit)
    }

    fn step_ms(&self) -> i64 {
        self.step_seconds * 1000
    }

    fn buckets(&self) -> usize {
        let range = (self.end_ms - self.start_ms).max(0) as u64;
        (range.div_ceil(self.step_ms() as u64) as usize).max(1)
    }

    fn bucket_of(&self, at_ms: i64) -> usize {
        (((at_ms - self.start_ms) / self.step_ms()) as usize).min(self.buckets() - 1)
    }

    fn bucket_start(&self, b: usize) -> i64 {
        self.start_ms + b as i64 * self.step_ms()
    }
}

/// What one bucket of one series gathered.
#[derive(Default)]
struct Acc {
    n: u32,
    sum: f64,
    min: f64,
    max: f64,
    last: f64,
    /// Increase and seconds over the sample pairs ending in the bucket.
    delta: f64,
    secs: f64,
}

impl Acc {
    fn add(&mut self, v: f64) {
        if self.n == 0 {
            (self.min, self.max) = (v, v);
        }
        self.n += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.last = v;
    }

    fn value(&self, statistic: Statistic) -> Option<f64> {
        match statistic {
            Statistic::Rate => (self.secs > 0.0).then(|| self.delta / self.secs),
            _ if self.n == 0 => None,
            Statistic::Auto | Statistic::Average => Some(self.sum / f64::from(self.n)),
            Statistic::Minimum => Some(self.min),
            Statistic::Maximum => Some(self.max),
            Statistic::Last => Some(self.last),
        }
    }
}

/// The change per second of `read` from `prev` to `cur` within one
/// runtime generation (a counter that went down was reset: no rate).
fn per_second(prev: &Sample, cur: &Sample, read: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
    let (a, b) = (read(prev)?, read(cur)?);
    let secs = (cur.at_ms - prev.at_ms) as f64 / 1000.0;
    (prev.run == cur.run && b >= a && secs > 0.0).then(|| (b - a) / secs)
}

fn cpu(s: &Sample) -> Option<f64> {
    s.usage.cpu_seconds
}

/// A metric's value at `cur` (`prev`: the sample before it, for the
/// figures that are rates of CPU time). Counters give their running total.
fn value_at(
    name: MetricName,
    dir: Option<Direction>,
    prev: Option<&Sample>,
    cur: &Sample,
    host_cores: f64,
) -> Option<f64> {
    let u = &cur.usage;
    let bytes = |b: Option<u64>| b.map(|b| b as f64);
    let cores = || per_second(prev?, cur, cpu);
    match name {
        MetricName::CpuTime => u.cpu_seconds,
        MetricName::CpuUsage => cores(),
        MetricName::CpuLimit => u.cpu_limit_cores,
        MetricName::CpuUtilization => Some(cores()? / u.cpu_limit_cores.unwrap_or(host_cores)),
        MetricName::MemoryUsage => bytes(u.memory_bytes),
        MetricName::MemoryWorkingSet => bytes(u.working_set_bytes),
        MetricName::MemoryLimit => bytes(u.memory_limit_bytes),
        MetricName::MemoryAvailable => bytes(Some(
            u.memory_limit_bytes?.saturating_sub(u.working_set_bytes?),
        )),
        MetricName::MemoryUtilization => {
            Some(u.working_set_bytes? as f64 / u.memory_limit_bytes? as f64)
        }
        MetricName::NetworkIo => {
            let (up, down) = cur.net?;
            Some(match dir? {
                Direction::Transmit => up,
                Direction::Receive => down,
            } as f64)
        }
        MetricName::ProcessCount => bytes(u.pids),
        MetricName::RootfsWritableUsage => bytes(cur.disk_bytes),
        MetricName::NetworkErrors | MetricName::RootfsWritableInodes => None,
    }
}

/// A series' points as its buckets close.
struct Points<'a> {
    q: &'a Query,
    statistic: Statistic,
    segments: Vec<Segment>,
    /// The generation the last segment is of: another starts a new one.
    segment_run: Option<i32>,
    /// Which buckets got a point.
    filled: Vec<bool>,
}

impl Points<'_> {
    fn flush(&mut self, bucket: Option<(usize, i32, Acc)>) {
        let Some((b, run, acc)) = bucket else { return };
        let Some(value) = acc.value(self.statistic) else {
            return;
        };
        self.filled[b] = true;
        let point = Point {
            time: rfc3339_ms(self.q.bucket_start(b)),
            value,
        };
        match self.segments.last_mut() {
            Some(seg) if self.segment_run == Some(run) => seg.points.push(point),
            _ => {
                self.segments.push(Segment {
                    points: vec![point],
                });
                self.segment_run = Some(run);
            }
        }
    }
}

/// One series of `samples` (a window, its first sample the baseline when
/// it lies before the query) and the buckets it left empty.
fn series(
    q: &Query,
    def: &Def,
    dir: Option<Direction>,
    samples: &[Sample],
    host_cores: f64,
) -> (Series, Vec<bool>) {
    let counter = def.kind == MetricKind::Counter;
    let statistic = match q.statistic {
        Statistic::Auto if counter => Statistic::Rate,
        Statistic::Auto => Statistic::Average,
        s => s,
    };
    let read = |s: &Sample| value_at(def.name, dir, None, s, host_cores);
    let mut out = Points {
        q,
        statistic,
        segments: Vec::new(),
        segment_run: None,
        filled: vec![false; q.buckets()],
    };
    // The bucket being gathered: (its index, the generation it is of).
    let mut open: Option<(usize, i32, Acc)> = None;
    let mut prev: Option<&Sample> = None;
    for s in samples {
        if s.at_ms < q.start_ms {
            prev = Some(s);
            continue;
        }
        let b = q.bucket_of(s.at_ms);
        if open
            .as_ref()
            .is_some_and(|(ob, run, _)| (*ob, *run) != (b, s.run))
        {
            out.flush(open.take());
        }
        let (_, _, acc) = open.get_or_insert_with(|| (b, s.run, Acc::default()));
        if let Some(v) = value_at(def.name, dir, prev, s, host_cores) {
            acc.add(v);
        }
        if counter
            && let Some(p) = prev
            && let Some(rate) = per_second(p, s, read)
        {
            let secs = (s.at_ms - p.at_ms) as f64 / 1000.0;
            acc.delta += rate * secs;
            acc.secs += secs;
        }
        prev = Some(s);
    }
    out.flush(open);
    let Points {
        segments, filled, ..
    } = out;
    let dimensions = dir
        .map(|d| BTreeMap::from([("direction".to_string(), d.name().to_string())]))
        .unwrap_or_default();
    let unit = if statistic == Statistic::Rate {
        def.unit.per_second()
    } else {
        def.unit
    };
    let series = Series {
        metric: def.name,
        kind: def.kind,
        unit,
        statistic,
        dimensions,
        segments,
    };
    (series, filled)
}

/// The runs of buckets `filled` leaves empty, as gaps: `no_data` where no
/// sample fell, `unavailable` where samples did but lacked the figure.
fn gaps_of(
    q: &Query,
    metric: MetricName,
    dimensions: &BTreeMap<String, String>,
    filled: &[bool],
    sampled: &[bool],
) -> Vec<Gap> {
    let reason = |b: usize| {
        if sampled[b] {
            GapReason::Unavailable
        } else {
            GapReason::NoData
        }
    };
    let mut gaps = Vec::new();
    let mut b = 0;
    while b < filled.len() {
        if filled[b] {
            b += 1;
            continue;
        }
        let (first, why) = (b, reason(b));
        while b < filled.len() && !filled[b] && reason(b) == why {
            b += 1;
        }
        gaps.push(Gap {
            metric,
            dimensions: dimensions.clone(),
            start_time: rfc3339_ms(q.bucket_start(first)),
            end_time: rfc3339_ms(q.bucket_start(b).min(q.end_ms)),
            reason: why,
        });
    }
    gaps
}

/// The sampler and its rings.
pub struct SandboxMetrics {
    interval: Duration,
    rings: Mutex<HashMap<String, Ring>>,
    /// What `cpu.utilization` divides by for a sandbox with no CPU limit.
    host_cores: f64,
}

impl SandboxMetrics {
    pub fn new(interval: Duration) -> SandboxMetrics {
        SandboxMetrics {
            interval,
            rings: Mutex::new(HashMap::new()),
            host_cores: std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
        }
    }

    fn rings(&self) -> std::sync::MutexGuard<'_, HashMap<String, Ring>> {
        self.rings.lock().expect("lock poisoned: a holder panicked")
    }

    /// Samples this node's running sandboxes every interval, for as long
    /// as the daemon runs.
    pub fn spawn(self: &Arc<Self>, lc: Arc<Lifecycle>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let lc = lc.clone();
                // cgroup files and the volume's size are blocking reads.
                match tokio::task::spawn_blocking(move || collect(&lc)).await {
                    Ok(samples) => me.record(samples, now_ms()),
                    Err(e) => tracing::warn!(error = %e, "sandbox metrics sampling failed"),
                }
            }
        });
    }

    /// Adds a round of samples, and drops the rings of sandboxes sampled
    /// last longer ago than the retention (deleted, or long paused).
    fn record(&self, samples: Vec<(String, Sample)>, now: i64) {
        let mut rings = self.rings();
        for (id, s) in samples {
            rings.entry(id).or_default().push(s);
        }
        rings.retain(|_, r| r.newest().is_some_and(|s| s.at_ms >= now - RETENTION_MS));
    }

    /// The metrics served, for the catalog (`network`: whether this daemon
    /// has the egress proxy that counts network bytes).
    pub fn catalog(network: bool) -> Catalog {
        let metrics = SERVED
            .iter()
            .filter(|d| network || d.name != MetricName::NetworkIo)
            .map(|d| Descriptor {
                name: d.name,
                kind: d.kind,
                unit: d.unit,
                dimensions: if d.name == MetricName::NetworkIo {
                    vec!["direction".to_string()]
                } else {
                    Vec::new()
                },
                description: d.description.to_string(),
            })
            .collect();
        Catalog { metrics }
    }

    /// Sandbox `id`'s series for `q`.
    pub fn query(&self, id: &str, q: &Query) -> MetricsResponse {
        let (samples, newest) = {
            let rings = self.rings();
            let ring = rings.get(id);
            let newest = ring.and_then(|r| r.newest_until(q.end_ms).cloned());
            (
                ring.map(|r| r.window(q.start_ms, q.end_ms))
                    .unwrap_or_default(),
                newest,
            )
        };
        let mut sampled = vec![false; q.buckets()];
        for s in samples.iter().filter(|s| s.at_ms >= q.start_ms) {
            sampled[q.bucket_of(s.at_ms)] = true;
        }
        let (mut all_series, mut gaps, mut partial) = (Vec::new(), Vec::new(), false);
        for &name in &q.metrics {
            let Some(def) = def_of(name) else {
                partial = true;
                gaps.push(Gap {
                    metric: name,
                    dimensions: BTreeMap::new(),
                    start_time: rfc3339_ms(q.start_ms),
                    end_time: rfc3339_ms(q.end_ms),
                    reason: GapReason::Unsupported,
                });
                continue;
            };
            let dirs: &[Option<Direction>] = if name == MetricName::NetworkIo {
                &[Some(Direction::Transmit), Some(Direction::Receive)]
            } else {
                &[None]
            };
            for &dir in dirs {
                let (s, filled) = series(q, def, dir, &samples, self.host_cores);
                gaps.extend(gaps_of(q, name, &s.dimensions, &filled, &sampled));
                all_series.push(s);
            }
        }
        MetricsResponse {
            start_time: rfc3339_ms(q.start_ms),
            end_time: rfc3339_ms(q.end_ms),
            step_seconds: q.step_seconds,
            series: all_series,
            freshness: self.freshness(newest.as_ref(), q.end_ms),
            gaps,
            partial,
        }
    }

    /// Fresh while the newest sample is within two intervals (or the
    /// narrowest step) of the query's end.
    fn freshness(&self, newest: Option<&Sample>, end_ms: i64) -> Freshness {
        let Some(s) = newest else {
            return Freshness {
                newest_observed_at: None,
                age_seconds: None,
                status: FreshnessStatus::Missing,
            };
        };
        let age_ms = (end_ms - s.at_ms).max(0);
        let fresh_ms = (2 * self.interval.as_millis() as i64).max(MIN_STEP_SECONDS * 1000);
        Freshness {
            newest_observed_at: Some(rfc3339_ms(s.at_ms)),
            age_seconds: Some(age_ms as f64 / 1000.0),
            status: if age_ms <= fresh_ms {
                FreshnessStatus::Fresh
            } else {
                FreshnessStatus::Stale
            },
        }
    }

    /// Prometheus lines of the newest sample of each sandbox `shown`
    /// admits; one label (the sandbox), so the series stay bounded by the
    /// sandboxes shown. Network bytes are the egress counters' own lines.
    pub fn render(&self, shown: impl Fn(&str) -> bool) -> String {
        type Read = fn(&Sample) -> Option<f64>;
        let lines: [(&str, &str, Read); 5] = [
            ("sandstone_sandbox_cpu_seconds_total", "counter", cpu),
            ("sandstone_sandbox_memory_bytes", "gauge", |s| {
                s.usage.memory_bytes.map(|b| b as f64)
            }),
            ("sandstone_sandbox_memory_peak_bytes", "gauge", |s| {
                s.usage.memory_peak_bytes.map(|b| b as f64)
            }),
            ("sandstone_sandbox_pids", "gauge", |s| {
                s.usage.pids.map(|p| p as f64)
            }),
            ("sandstone_sandbox_disk_bytes", "gauge", |s| {
                s.disk_bytes.map(|b| b as f64)
            }),
        ];
        let rings = self.rings();
        let mut newest: Vec<(&String, &Sample)> = rings
            .iter()
            .filter(|(id, _)| shown(id))
            .filter_map(|(id, r)| Some((id, r.newest()?)))
            .collect();
        newest.sort_by_key(|(id, _)| *id);
        let mut out = String::new();
        for (name, kind, read) in lines {
            out += &format!("# TYPE {name} {kind}\n");
            for (id, s) in &newest {
                if let Some(v) = read(s) {
                    out += &format!("{name}{{sandbox=\"{id}\"}} {v}\n");
                }
            }
        }
        out
    }
}

/// One sample of each sandbox this node runs now.
fn collect(lc: &Lifecycle) -> Vec<(String, Sample)> {
    lc.running_ids()
        .into_iter()
        .filter_map(|id| {
            let rt = lc.runtime(&id)?;
            let sample = Sample {
                at_ms: now_ms(),
                run: rt.pid,
                usage: rt.cgroup.usage(),
                disk_bytes: Some(lc.storage.disk_usage(&id)),
                net: lc.egress_bytes(&id),
            };
            Some((id, sample))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_s: i64, run: i32, cpu_s: f64, mem: u64) -> Sample {
        Sample {
            at_ms: at_s * 1000,
            run,
            usage: Usage {
                cpu_seconds: Some(cpu_s),
                memory_bytes: Some(mem),
                working_set_bytes: Some(mem),
                memory_limit_bytes: Some(1000),
                ..Usage::default()
            },
            disk_bytes: Some(7),
            net: Some((100 * at_s as u64, 0)),
        }
    }

    fn query(start_s: i64, end_s: i64, metrics: &[MetricName], statistic: Statistic) -> Query {
        Query {
            start_ms: start_s * 1000,
            end_ms: end_s * 1000,
            step_seconds: Query::step(start_s * 1000, end_s * 1000, None, 240),
            metrics: metrics.to_vec(),
            statistic,
        }
    }

    #[test]
    fn the_ring_is_bounded_ordered_and_ages_out() {
        let mut r = Ring::default();
        for t in 0..(RING_CAPACITY as i64 + 50) {
            r.push(sample(t, 1, 0.0, 0));
        }
        assert_eq!(r.samples.len(), RING_CAPACITY);
        assert_eq!(r.samples.front().unwrap().at_ms, 50_000);
        // Out of order: dropped.
        r.push(sample(10, 1, 0.0, 0));
        assert_eq!(
            r.newest().unwrap().at_ms,
            (RING_CAPACITY as i64 + 49) * 1000
        );
        assert!(
            r.samples
                .iter()
                .zip(r.samples.iter().skip(1))
                .all(|(a, b)| a.at_ms < b.at_ms)
        );
        // An hour later everything before is gone.
        r.push(sample(RING_CAPACITY as i64 + 49 + 3601, 1, 0.0, 0));
        assert_eq!(r.samples.len(), 1);
    }

    #[test]
    fn a_window_has_its_range_and_the_baseline_before_it() {
        let mut r = Ring::default();
        for t in [10, 20, 30, 40] {
            r.push(sample(t, 1, 0.0, 0));
        }
        let at = |w: Vec<Sample>| w.iter().map(|s| s.at_ms / 1000).collect::<Vec<_>>();
        assert_eq!(at(r.window(15_000, 30_000)), [10, 20, 30]);
        assert_eq!(at(r.window(0, 5_000)), Vec::<i64>::new());
        assert_eq!(at(r.window(45_000, 50_000)), [40]);
        assert_eq!(r.newest_until(25_000).unwrap().at_ms, 20_000);
        assert!(r.newest_until(5_000).is_none());
    }

    #[test]
    fn steps_have_a_floor_and_honor_max_points() {
        assert_eq!(Query::step(0, 3_600_000, None, 240), 15);
        assert_eq!(Query::step(0, 3_600_000, Some(60), 240), 60);
        assert_eq!(Query::step(0, 3_600_000, Some(1), 240), 15);
        // 30 days in 1000 points: 2592 s each.
        assert_eq!(Query::step(0, 30 * 86_400_000, Some(15), 1000), 2592);
        let q = query(0, 3600, &[], Statistic::Auto);
        assert_eq!(q.buckets(), 240);
        assert_eq!(q.bucket_of(3_600_000), 239, "the end is in the last bucket");
    }

    #[test]
    fn buckets_aggregate_by_statistic() {
        let samples: Vec<Sample> = (0..6)
            .map(|i| sample(i * 5, 1, i as f64, 100 * i as u64))
            .collect();
        let def = def_of(MetricName::MemoryUsage).unwrap();
        let points = |stat| {
            let (s, _) = series(&query(0, 30, &[], stat), def, None, &samples, 1.0);
            s.segments[0]
                .points
                .iter()
                .map(|p| p.value)
                .collect::<Vec<_>>()
        };
        // Buckets [0,15) and [15,30]: samples 0,5,10 and 15,20,25.
        assert_eq!(points(Statistic::Average), [100.0, 400.0]);
        assert_eq!(points(Statistic::Minimum), [0.0, 300.0]);
        assert_eq!(points(Statistic::Maximum), [200.0, 500.0]);
        assert_eq!(points(Statistic::Last), [200.0, 500.0]);
        // CPU: one second every five, so 0.2 cores, a fifth of one core.
        let (s, _) = series(
            &query(0, 30, &[], Statistic::Auto),
            def_of(MetricName::CpuUtilization).unwrap(),
            None,
            &samples,
            1.0,
        );
        assert_eq!(s.statistic, Statistic::Average);
        assert!(
            s.segments[0]
                .points
                .iter()
                .all(|p| (p.value - 0.2).abs() < 1e-9)
        );
        // A counter's auto is its rate per second, in a per-second unit.
        let (s, _) = series(
            &query(0, 30, &[], Statistic::Auto),
            def_of(MetricName::NetworkIo).unwrap(),
            Some(Direction::Transmit),
            &samples,
            1.0,
        );
        assert_eq!(
            (s.statistic, s.unit),
            (Statistic::Rate, MetricUnit::BytesPerSecond)
        );
        assert!(s.segments[0].points.iter().all(|p| p.value == 100.0));
        assert_eq!(s.dimensions["direction"], "transmit");
    }

    #[test]
    fn a_new_generation_starts_a_segment_and_no_rate_crosses_it() {
        // Run 1 until 20 s, paused, run 2 from 60 s with its counters reset.
        let mut samples: Vec<Sample> = (0..5)
            .map(|i| sample(i * 5, 1, 10.0 + i as f64, 1))
            .collect();
        samples.extend((12..15).map(|i| sample(i * 5, 2, (i - 12) as f64, 1)));
        let q = query(0, 90, &[MetricName::CpuTime], Statistic::Rate);
        let (s, filled) = series(
            &q,
            def_of(MetricName::CpuTime).unwrap(),
            None,
            &samples,
            1.0,
        );
        assert_eq!(s.segments.len(), 2, "{s:?}");
        let all: Vec<f64> = s
            .segments
            .iter()
            .flat_map(|g| &g.points)
            .map(|p| p.value)
            .collect();
        assert!(all.iter().all(|v| (v - 0.2).abs() < 1e-9), "{all:?}");
        // [0,15) [15,30) [30,45) [45,60) [60,75) [75,90]: the pause is empty.
        assert_eq!(filled, [true, true, false, false, true, false]);
    }

    #[test]
    fn the_response_reports_gaps_freshness_and_unsupported_metrics() {
        let m = SandboxMetrics::new(Duration::from_secs(5));
        let samples: Vec<(String, Sample)> = (0..3)
            .map(|i| ("sb-1".to_string(), sample(i * 5, 1, 0.0, 500)))
            .collect();
        m.record(samples, 10_000);
        let q = query(
            0,
            45,
            &[
                MetricName::MemoryUtilization,
                MetricName::CpuLimit,
                MetricName::NetworkErrors,
            ],
            Statistic::Auto,
        );
        let r = m.query("sb-1", &q);
        assert_eq!(r.series.len(), 2);
        assert_eq!(r.series[0].segments[0].points[0].value, 0.5);
        assert!(r.partial);
        let reasons: Vec<(MetricName, GapReason)> =
            r.gaps.iter().map(|g| (g.metric, g.reason)).collect();
        assert_eq!(
            reasons,
            [
                (MetricName::MemoryUtilization, GapReason::NoData),
                (MetricName::CpuLimit, GapReason::Unavailable),
                (MetricName::CpuLimit, GapReason::NoData),
                (MetricName::NetworkErrors, GapReason::Unsupported),
            ]
        );
        assert_eq!(r.gaps[0].start_time, rfc3339_ms(15_000));
        assert_eq!(r.gaps[0].end_time, rfc3339_ms(45_000));
        assert_eq!(r.freshness.status, FreshnessStatus::Stale);
        assert_eq!(r.freshness.age_seconds, Some(35.0));
        let fresh = m.query("sb-1", &query(0, 20, &[], Statistic::Auto));
        assert_eq!(fresh.freshness.status, FreshnessStatus::Fresh);
        let none = m.query("sb-2", &q);
        assert_eq!(none.freshness.status, FreshnessStatus::Missing);
        // Rings idle for longer than the retention are dropped.
        m.record(Vec::new(), 10_000 + RETENTION_MS + 1);
        assert!(m.rings().is_empty());
    }

    #[test]
    fn prometheus_shows_the_newest_sample_of_the_sandboxes_shown() {
        let m = SandboxMetrics::new(Duration::from_secs(10));
        m.record(
            vec![
                ("sb-a".into(), sample(1, 1, 2.5, 300)),
                ("sb-b".into(), sample(1, 1, 1.0, 1)),
            ],
            1000,
        );
        m.record(vec![("sb-a".into(), sample(2, 1, 3.5, 400))], 2000);
        let page = m.render(|id| id == "sb-a");
        assert!(
            page.contains("sandstone_sandbox_cpu_seconds_total{sandbox=\"sb-a\"} 3.5\n"),
            "{page}"
        );
        assert!(
            page.contains("sandstone_sandbox_memory_bytes{sandbox=\"sb-a\"} 400\n"),
            "{page}"
        );
        assert!(
            page.contains("sandstone_sandbox_disk_bytes{sandbox=\"sb-a\"} 7\n"),
            "{page}"
        );
        assert!(!page.contains("sb-b"), "{page}");
        assert!(!page.contains("pids{"), "no figure, no line: {page}");
    }
}
