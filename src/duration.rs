//! Durations as people write them in manifests and read them in status: `750ms`, `5s`, `2m`,
//! `1h30m`. One parser and one formatter for the whole crate.

use std::time::Duration;

/// A text that is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} {reason}")]
pub struct DurationError {
    pub text: String,
    reason: String,
}

/// Parses `5s`, `750ms`, `2m`, `1h30m` (units ms, s, m, h; several may follow each other).
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    humantime::parse_duration(text).map_err(|e| DurationError {
        text: text.to_string(),
        reason: format!("is not a duration like 5s, 750ms or 2m ({e})"),
    })
}

/// A duration that must be more than zero (an interval or a deadline: zero would be a busy
/// loop or a panic in a timer).
pub fn parse_positive(text: &str) -> Result<Duration, DurationError> {
    let d = parse(text)?;
    if d.is_zero() {
        return Err(DurationError {
            text: text.to_string(),
            reason: "must be more than 0".into(),
        });
    }
    Ok(d)
}

/// `1h5m`, `4m30s`, `45s`: whole seconds, largest units first (`0s` for less than a second).
pub fn format(d: Duration) -> String {
    let total = d.as_secs();
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format_table() {
        for (text, secs, shown) in [
            ("5s", 5, "5s"),
            ("2m", 120, "2m"),
            ("1h30m", 5400, "1h30m"),
            ("90s", 90, "1m30s"),
            ("3601s", 3601, "1h1s"),
        ] {
            let d = parse(text).unwrap();
            assert_eq!(d, Duration::from_secs(secs), "{text}");
            assert_eq!(format(d), shown, "{text}");
        }
        assert_eq!(parse("750ms").unwrap(), Duration::from_millis(750));
        assert_eq!(format(Duration::from_millis(750)), "0s");
        assert!(parse_positive("0s")
            .unwrap_err()
            .to_string()
            .contains("must be more than 0"));
        assert_eq!(parse_positive("1s").unwrap(), Duration::from_secs(1));
        let err = parse("soon").unwrap_err();
        assert!(
            err.to_string().contains("\"soon\" is not a duration"),
            "{err}"
        );
    }
}
