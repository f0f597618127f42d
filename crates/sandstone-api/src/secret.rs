//! A secret value held in memory: printing it shows `[redacted]`, so it
//! cannot slip into a log line, an error or a `Debug` dump.

/// Deserializable (a secret arrives in a request) but deliberately not
/// serializable: nothing writes one out by accident.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(v: impl Into<String>) -> Self {
        Secret(v.into())
    }

    /// The value, for the one place that must use it (a request header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_never_print() {
        let s = super::Secret::new("sk-very-secret");
        assert_eq!(format!("{s} {s:?}"), "[redacted] [redacted]");
    }
}
