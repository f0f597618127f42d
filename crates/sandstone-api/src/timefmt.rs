//! RFC 3339 timestamps from Unix time, without a date library.

/// Formats Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339_ms(ms: i64) -> String {
    let (date, frac) = rfc3339_parts(ms.div_euclid(1000));
    format!("{date}.{:03}Z{frac}", ms.rem_euclid(1000))
}

/// With microseconds: distinct for events a few microseconds apart (a
/// heartbeat's value is echoed back as a concurrency token).
pub fn rfc3339_us(us: i64) -> String {
    let (date, frac) = rfc3339_parts(us.div_euclid(1_000_000));
    format!("{date}.{:06}Z{frac}", us.rem_euclid(1_000_000))
}

pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix second (and an empty suffix, so both
/// formatters share one layout).
fn rfc3339_parts(secs: i64) -> (String, &'static str) {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let date = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    (date, "")
}

/// Microseconds since the epoch of an RFC 3339 time: UTC as these
/// formatters write it (`2026-11-27T15:11:23.840Z`, any fraction or none)
/// or with a numeric offset (`2026-11-27T16:11:23+01:00`), as clients send.
/// A date or time that does not exist (`2026-02-30`, `25:00`) is `None`.
pub fn parse_rfc3339_us(s: &str) -> Option<i64> {
    // Fields are plain digits (`parse` alone would take `+5`).
    let num = |x: &str, width: usize| {
        (x.len() == width && x.bytes().all(|b| b.is_ascii_digit()))
            .then(|| x.parse::<i64>().ok())
            .flatten()
    };
    let (date, time) = s.split_once(['T', 't'])?;
    let (time, offset_secs) = match time.strip_suffix(['Z', 'z']) {
        Some(t) => (t, 0),
        None => {
            let at = time.rfind(['+', '-'])?;
            let (t, off) = time.split_at(at);
            let (oh, om) = off[1..].split_once(':')?;
            let (oh, om) = (
                num(oh, 2).filter(|h| *h < 24)?,
                num(om, 2).filter(|m| *m < 60)?,
            );
            let secs = oh * 3600 + om * 60;
            (t, if off.starts_with('-') { -secs } else { secs })
        }
    };
    let mut d = date.split('-');
    let (y, m, day) = (num(d.next()?, 4)?, num(d.next()?, 2)?, num(d.next()?, 2)?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':');
    let (h, mi, sec) = (num(t.next()?, 2)?, num(t.next()?, 2)?, num(t.next()?, 2)?);
    let days = days_from_civil(y, m, day);
    let real_date = (1..=12).contains(&m)
        && civil_from_days(days) == (y, m as u32, day as u32)
        && d.next().is_none();
    // A leap second (:60) is read as the next second's start.
    if !real_date || h > 23 || mi > 59 || sec > 60 || t.next().is_some() {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let us = format!("{frac:0<6}").get(..6)?.parse::<i64>().ok()?;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_secs;
    Some(secs * 1_000_000 + us)
}

/// Howard Hinnant's civil-to-days algorithm (the inverse of the one below).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_instants() {
        assert_eq!(super::rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::rfc3339_ms(951_782_400_123),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(
            super::rfc3339_ms(1_795_792_283_840),
            "2026-11-27T15:11:23.840Z"
        );
        assert_eq!(super::rfc3339_us(1_000_001), "1970-01-01T00:00:01.000001Z");
        for bad in [
            "9999-99-99T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:60:00Z",
            "2026-01-01T00:00:00+25:00",
            "2026-01-01T00:00:00.x1Z",
            "+026-01-01T00:00:00Z",
            "2026-1-01T00:00:00Z",
        ] {
            assert_eq!(super::parse_rfc3339_us(bad), None, "{bad}");
        }
        assert!(super::parse_rfc3339_us("2028-02-29T23:59:60Z").is_some());
        for us in [0, 951_782_400_123_456, 1_795_792_283_840_001] {
            assert_eq!(super::parse_rfc3339_us(&super::rfc3339_us(us)), Some(us));
        }
        assert_eq!(
            super::parse_rfc3339_us("2026-11-27T15:11:23Z"),
            Some(1_795_792_283_000_000)
        );
        assert_eq!(
            super::parse_rfc3339_us("2026-11-27T16:41:23+01:30"),
            Some(1_795_792_283_000_000)
        );
        assert_eq!(
            super::parse_rfc3339_us("2026-11-27t14:11:23.5-01:00"),
            Some(1_795_792_283_500_000)
        );
        assert_eq!(super::parse_rfc3339_us("2026-11-27 15:11:23"), None);
        assert_eq!(super::parse_rfc3339_us("2026-11-27T15:11:23"), None);
    }
}
