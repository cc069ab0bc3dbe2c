//! How long a client may take and how many may be connected: the settings
//! that keep one slow or greedy client from holding the server's sockets
//! and memory.

use std::time::Duration;

/// Default of [`HttpLimits::header_timeout`].
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of [`HttpLimits::body_timeout`].
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of [`HttpLimits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Longest timeout accepted. hyper adds the header timeout to `Instant::now()`,
/// which panics on overflow, and a day is already no protection at all.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Time and connection limits of the HTTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// From the moment a connection is ready for a request (just accepted, or
    /// idle after an answer) until its request line and headers are all in.
    /// Past it the connection is closed without an answer: this ends clients
    /// that send headers a byte at a time (slowloris) or nothing at all, and
    /// idle keep-alive connections.
    pub header_timeout: Duration,
    /// How long a request body may take to arrive once the headers are in;
    /// past it the answer is 408.
    pub body_timeout: Duration,
    /// Connections served at once. Past it a new connection gets a 503 and
    /// is closed at once; those already open are not disturbed.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// A limit that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    /// A timeout of zero (nothing could ever arrive) or over [`MAX_TIMEOUT`].
    #[error("{name} must be between 1 ms and 24 h, not {value:?}")]
    Timeout {
        /// Which setting.
        name: &'static str,
        /// Its value.
        value: Duration,
    },
    /// No connection could ever be served.
    #[error("max-connections must be at least 1")]
    NoConnections,
    /// More connections than the server can count (or a machine can hold).
    #[error("max-connections must be at most {max}, not {value}")]
    TooManyConnections {
        /// Asked for.
        value: usize,
        /// The largest allowed.
        max: usize,
    },
}

/// The most connections `--max-connections` may allow: far beyond what a
/// machine's file descriptors hold, and well inside what the counting
/// semaphore can represent.
pub const MAX_CONNECTIONS: usize = 1 << 20;

impl HttpLimits {
    /// Refuses limits that cannot work.
    pub fn check(&self) -> Result<(), LimitsError> {
        for (name, value) in [
            ("header-timeout", self.header_timeout),
            ("body-timeout", self.body_timeout),
        ] {
            if value < Duration::from_millis(1) || value > MAX_TIMEOUT {
                return Err(LimitsError::Timeout { name, value });
            }
        }
        if self.max_connections == 0 {
            return Err(LimitsError::NoConnections);
        }
        if self.max_connections > MAX_CONNECTIONS {
            return Err(LimitsError::TooManyConnections {
                value: self.max_connections,
                max: MAX_CONNECTIONS,
            });
        }
        Ok(())
    }
}

/// A duration that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a duration: write a number with ms, s, m or h (e.g. 10s, 500ms); a bare number is seconds")]
pub struct DurationError {
    /// What was given.
    pub text: String,
}

/// Reads `500ms`, `10s`, `1.5s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let err = || DurationError {
        text: text.to_owned(),
    };
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale = match unit.trim() {
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(err()),
    };
    // Digits and at most one dot only: no exponents, signs, "inf" or "NaN".
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(err());
    }
    let value: f64 = number.parse().map_err(|_| err())?;
    // Out of range is an error rather than a panic (from_secs_f64 panics).
    Duration::try_from_secs_f64(value * scale).map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("10s", Duration::from_secs(10)),
            ("10", Duration::from_secs(10)),
            (" 500ms ", Duration::from_millis(500)),
            ("1.5s", Duration::from_millis(1500)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("0s", Duration::ZERO),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for bad in [
            "",
            "s",
            "ms",
            ".",
            "1.2.3s",
            "-1s",
            "+1s",
            "1e3s",
            "infs",
            "NaN",
            "10 sec",
            "10d",
            "1e999",
            "99999999999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn limits_checked() {
        assert_eq!(HttpLimits::default().check(), Ok(()));
        let zero = HttpLimits {
            header_timeout: Duration::ZERO,
            ..HttpLimits::default()
        };
        assert!(matches!(
            zero.check(),
            Err(LimitsError::Timeout {
                name: "header-timeout",
                ..
            })
        ));
        let huge = HttpLimits {
            body_timeout: MAX_TIMEOUT + Duration::from_secs(1),
            ..HttpLimits::default()
        };
        assert!(huge.check().is_err());
        let none = HttpLimits {
            max_connections: 0,
            ..HttpLimits::default()
        };
        assert_eq!(none.check(), Err(LimitsError::NoConnections));
        let absurd = HttpLimits {
            max_connections: usize::MAX,
            ..HttpLimits::default()
        };
        assert!(matches!(
            absurd.check(),
            Err(LimitsError::TooManyConnections { .. })
        ));
    }
}
