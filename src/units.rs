//! Sizes and durations as written on the command line and in policy files
//! (`512MiB`, `64KiB`, plain bytes; `30s`, `500ms`, `10m`, `24h`, `1d`).

use std::time::Duration;

/// Parses a byte size: `512MiB`, `2GiB`, `64KiB`, `1MB`, or plain bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    parse_size::parse_size(text.trim()).map_err(|e| format!("invalid size '{text}': {e}"))
}

/// Parses a duration: `30s`, `500ms`, `10m`, `24h`, `1d`, `0s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| format!("invalid duration '{text}': {e}"))
}

/// A duration that must not be zero (a time limit of nothing).
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err(format!("invalid duration '{text}': must be more than zero")),
        duration => Ok(duration),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_positive_duration_is_not_zero() {
        assert_eq!(
            parse_positive_duration("500ms"),
            Ok(Duration::from_millis(500))
        );
        assert!(parse_positive_duration("0s").is_err());
        assert!(parse_duration("0s").is_ok());
    }

    #[test]
    fn sizes_in_binary_units_and_plain_bytes() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1").is_err());
    }

    #[test]
    fn durations_from_milliseconds_to_days() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("soon").is_err());
    }
}
