//! A sandbox's runtime metrics (`GET .../metrics` and `.../metrics/catalog`)
//! in the shapes of Sandbox0's `SandboxRuntimeMetrics*` schemas.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The spec's canonical metric names (`SandboxRuntimeMetricName`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MetricName {
    #[serde(rename = "sandbox.cpu.utilization")]
    CpuUtilization,
    #[serde(rename = "sandbox.cpu.usage")]
    CpuUsage,
    #[serde(rename = "sandbox.cpu.time")]
    CpuTime,
    #[serde(rename = "sandbox.cpu.limit")]
    CpuLimit,
    #[serde(rename = "sandbox.memory.usage")]
    MemoryUsage,
    #[serde(rename = "sandbox.memory.working_set")]
    MemoryWorkingSet,
    #[serde(rename = "sandbox.memory.available")]
    MemoryAvailable,
    #[serde(rename = "sandbox.memory.limit")]
    MemoryLimit,
    #[serde(rename = "sandbox.memory.utilization")]
    MemoryUtilization,
    #[serde(rename = "sandbox.network.io")]
    NetworkIo,
    #[serde(rename = "sandbox.network.errors")]
    NetworkErrors,
    #[serde(rename = "sandbox.process.count")]
    ProcessCount,
    #[serde(rename = "sandbox.rootfs.writable.usage")]
    RootfsWritableUsage,
    #[serde(rename = "sandbox.rootfs.writable.inodes")]
    RootfsWritableInodes,
}

impl MetricName {
    /// The name as the spec spells it (`sandbox.cpu.time`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CpuUtilization => "sandbox.cpu.utilization",
            Self::CpuUsage => "sandbox.cpu.usage",
            Self::CpuTime => "sandbox.cpu.time",
            Self::CpuLimit => "sandbox.cpu.limit",
            Self::MemoryUsage => "sandbox.memory.usage",
            Self::MemoryWorkingSet => "sandbox.memory.working_set",
            Self::MemoryAvailable => "sandbox.memory.available",
            Self::MemoryLimit => "sandbox.memory.limit",
            Self::MemoryUtilization => "sandbox.memory.utilization",
            Self::NetworkIo => "sandbox.network.io",
            Self::NetworkErrors => "sandbox.network.errors",
            Self::ProcessCount => "sandbox.process.count",
            Self::RootfsWritableUsage => "sandbox.rootfs.writable.usage",
            Self::RootfsWritableInodes => "sandbox.rootfs.writable.inodes",
        }
    }
}

impl std::str::FromStr for MetricName {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| ())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    Gauge,
    Counter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricUnit {
    Ratio,
    Cores,
    Seconds,
    Bytes,
    Count,
    BytesPerSecond,
    CountPerSecond,
}

impl MetricUnit {
    /// The unit of this unit's change per second: what a counter's `rate`
    /// is measured in (CPU seconds per second are cores).
    pub fn per_second(self) -> MetricUnit {
        match self {
            Self::Seconds => Self::Cores,
            Self::Bytes => Self::BytesPerSecond,
            Self::Count => Self::CountPerSecond,
            other => other,
        }
    }
}

/// What one output point of a bucket is (`SandboxRuntimeMetricStatistic`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Statistic {
    /// `average` for gauges, `rate` for counters.
    #[default]
    Auto,
    Average,
    Minimum,
    Maximum,
    Last,
    Rate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    Unavailable,
    Unsupported,
    CollectionError,
    NoData,
    SeriesReset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FreshnessStatus {
    Fresh,
    Stale,
    Missing,
}

/// One entry of the catalog (`SandboxRuntimeMetricDescriptor`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Descriptor {
    pub name: MetricName,
    pub kind: MetricKind,
    pub unit: MetricUnit,
    /// Names of the dimensions its series are split by (`direction`).
    pub dimensions: Vec<String>,
    pub description: String,
}

/// `SandboxRuntimeMetricsCatalogResponse`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    pub metrics: Vec<Descriptor>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// RFC 3339: the start of the point's bucket.
    pub time: String,
    pub value: f64,
}

/// Points of one runtime generation: a resume starts a new segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub points: Vec<Point>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub metric: MetricName,
    pub kind: MetricKind,
    /// The unit of the points: a counter's `rate` is per second.
    pub unit: MetricUnit,
    /// The statistic applied (`auto` resolved).
    pub statistic: Statistic,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dimensions: BTreeMap<String, String>,
    pub segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gap {
    pub metric: MetricName,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dimensions: BTreeMap<String, String>,
    pub start_time: String,
    pub end_time: String,
    pub reason: GapReason,
}

/// How recent the newest observation is, relative to the query's end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Freshness {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_observed_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_seconds: Option<f64>,
    pub status: FreshnessStatus,
}

/// `SandboxRuntimeMetricsResponse`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsResponse {
    pub start_time: String,
    pub end_time: String,
    /// The effective bucket width (at least 15).
    pub step_seconds: i64,
    pub series: Vec<Series>,
    pub freshness: Freshness,
    pub gaps: Vec<Gap>,
    /// Whether a requested metric could not be served at all.
    pub partial: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_as_the_spec_spells_them() {
        for name in ["sandbox.cpu.time", "sandbox.rootfs.writable.inodes"] {
            let parsed: MetricName = name.parse().unwrap();
            assert_eq!(parsed.as_str(), name);
            assert_eq!(serde_json::to_value(parsed).unwrap(), name);
        }
        assert!("sandbox.cpu".parse::<MetricName>().is_err());
        assert_eq!(
            serde_json::to_value(MetricUnit::Bytes.per_second()).unwrap(),
            "bytes_per_second"
        );
    }
}
