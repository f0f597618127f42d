//! A sandbox's runtime metrics (`GET .../metrics`) and their catalog
//! (`GET .../metrics/catalog`), from this node's sampler
//! ([`crate::sandbox_metrics`]).

use crate::AppState;
use crate::routes::error::{ApiError, ApiResult, ok};
use crate::routes::sandboxes::row;
use crate::sandbox_metrics::{self, DEFAULT_METRICS, Query, SandboxMetrics};
use axum::extract::{Path, Query as Params, State};
use axum::http::StatusCode;
use axum::response::Response;
use sandstone_api::metrics::{MetricName, Statistic};
use sandstone_api::timefmt::{now_ms, parse_rfc3339_us};
use std::collections::HashMap;

/// The longest range a query may cover (the spec's).
const MAX_RANGE_MS: i64 = 30 * 86_400_000;
/// The range a query without `start_time` covers.
const DEFAULT_RANGE_MS: i64 = 3_600_000;
const DEFAULT_MAX_POINTS: i64 = 240;

fn bad(key: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!("invalid query parameter `{key}`: {why}"))
}

/// Whether `v` is laid out as RFC 3339 writes a date-time
/// (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`): checked before parsing, so no
/// field is long enough to overflow the arithmetic.
fn rfc3339_shaped(v: &str) -> bool {
    let b = v.as_bytes();
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    let fields = [(0, 4), (5, 7), (8, 10), (11, 13), (14, 16), (17, 19)];
    let laid_out = b.len() >= 20
        && fields.iter().all(|&(from, to)| digits(&b[from..to]))
        && at(4, b'-')
        && at(7, b'-')
        && matches!(b[10], b'T' | b't')
        && at(13, b':')
        && at(16, b':');
    if !laid_out {
        return false;
    }
    let mut rest = &b[19..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    match rest {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => digits(&[*h1, *h2, *m1, *m2]),
        _ => false,
    }
}

/// An RFC 3339 time, in Unix milliseconds.
fn time_param(q: &HashMap<String, String>, key: &str) -> ApiResult<Option<i64>> {
    q.get(key)
        .map(|v| {
            rfc3339_shaped(v)
                .then(|| parse_rfc3339_us(v))
                .flatten()
                .map(|us| us.div_euclid(1000))
                .ok_or_else(|| bad(key, "an RFC 3339 date-time"))
        })
        .transpose()
}

/// An integer in `range`.
fn int_param(
    q: &HashMap<String, String>,
    key: &str,
    range: std::ops::RangeInclusive<i64>,
) -> ApiResult<Option<i64>> {
    q.get(key)
        .map(|v| {
            v.parse::<i64>()
                .ok()
                .filter(|n| range.contains(n))
                .ok_or_else(|| {
                    bad(
                        key,
                        &format!("an integer from {} to {}", range.start(), range.end()),
                    )
                })
        })
        .transpose()
}

fn parse(q: &HashMap<String, String>) -> ApiResult<Query> {
    let end_ms = time_param(q, "end_time")?.unwrap_or_else(now_ms);
    let start_ms = time_param(q, "start_time")?.unwrap_or(end_ms - DEFAULT_RANGE_MS);
    if start_ms > end_ms {
        return Err(bad("start_time", "after end_time"));
    }
    if end_ms - start_ms > MAX_RANGE_MS {
        return Err(bad("start_time", "more than 30 days before end_time"));
    }
    let metrics = match q.get("metrics") {
        None => DEFAULT_METRICS.to_vec(),
        Some(list) => {
            let mut names = Vec::new();
            for name in list.split(',').map(str::trim) {
                let name: MetricName = name.parse().map_err(|()| {
                    bad(
                        "metrics",
                        &format!("{name:?} is not a canonical metric name (see …/metrics/catalog)"),
                    )
                })?;
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            names
        }
    };
    let statistic = match q.get("statistic") {
        None => Statistic::Auto,
        Some(v) => serde_json::from_value(serde_json::Value::String(v.clone())).map_err(|_| {
            bad(
                "statistic",
                "one of auto, average, minimum, maximum, last, rate",
            )
        })?,
    };
    if statistic == Statistic::Rate
        && let Some(gauge) = metrics.iter().find(|m| !sandbox_metrics::is_counter(**m))
    {
        return Err(bad(
            "statistic",
            &format!(
                "rate applies to counters, and {} is not one",
                gauge.as_str()
            ),
        ));
    }
    let asked_step = int_param(q, "step_seconds", 1..=86_400)?;
    let max_points = int_param(q, "max_points", 1..=1000)?.unwrap_or(DEFAULT_MAX_POINTS);
    Ok(Query {
        start_ms,
        end_ms,
        step_seconds: Query::step(start_ms, end_ms, asked_step, max_points),
        metrics,
        statistic,
    })
}

pub async fn series(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Params(q): Params<HashMap<String, String>>,
) -> ApiResult<Response> {
    row(&st, &id).await?;
    let query = parse(&q)?;
    Ok(ok(StatusCode::OK, st.sandbox_metrics.query(&id, &query)))
}

pub async fn catalog(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    row(&st, &id).await?;
    let network = st.lifecycle.operator_rules().is_some();
    Ok(ok(StatusCode::OK, SandboxMetrics::catalog(network)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> ApiResult<Query> {
        parse(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn refused(pairs: &[(&str, &str)], field: &str) {
        let Err(e) = query(pairs) else {
            panic!("{pairs:?} accepted")
        };
        assert!(e.message.contains(&format!("`{field}`")), "{}", e.message);
    }

    #[test]
    fn queries_default_and_bad_values_name_their_field() {
        let q = query(&[]).unwrap();
        assert_eq!(q.end_ms - q.start_ms, DEFAULT_RANGE_MS);
        assert_eq!(q.metrics, DEFAULT_METRICS);
        assert_eq!(q.step_seconds, 15);
        let q = query(&[
            ("start_time", "2026-01-01T00:00:00Z"),
            ("end_time", "2026-01-01T01:00:00+01:00"),
            (
                "metrics",
                "sandbox.cpu.time, sandbox.cpu.time,sandbox.network.io",
            ),
            ("statistic", "rate"),
            ("max_points", "10"),
        ])
        .unwrap();
        assert_eq!(
            (q.start_ms, q.end_ms),
            (1_767_225_600_000, 1_767_225_600_000)
        );
        assert_eq!(q.metrics, [MetricName::CpuTime, MetricName::NetworkIo]);
        refused(&[("start_time", "yesterday")], "start_time");
        refused(&[("end_time", "12345-01-01T00:00:00Z")], "end_time");
        refused(
            &[("end_time", "2026-01-01T00:00:00+99999999999999:00")],
            "end_time",
        );
        refused(&[("end_time", "2026-01-01T00:00:00.Z")], "end_time");
        assert!(rfc3339_shaped("2026-01-01t00:00:00.123456789-05:30"));
        refused(
            &[
                ("start_time", "2026-01-02T00:00:00Z"),
                ("end_time", "2026-01-01T00:00:00Z"),
            ],
            "start_time",
        );
        refused(&[("start_time", "2025-01-01T00:00:00Z")], "start_time");
        refused(&[("metrics", "cpu")], "metrics");
        refused(&[("metrics", "")], "metrics");
        refused(&[("step_seconds", "0")], "step_seconds");
        refused(&[("step_seconds", "x")], "step_seconds");
        refused(&[("max_points", "1001")], "max_points");
        refused(&[("statistic", "median")], "statistic");
        refused(&[("statistic", "rate")], "statistic");
    }
}
