//! The emulated link's properties and their text form.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::RelayError;

/// Link buffer when neither the caller nor the bandwidth-delay product asks
/// for more: about what a loopback socket holds before autotuning.
const MIN_DEFAULT_BUFFER: usize = 256 * 1024;
/// Link buffer for an unlimited rate, where no bandwidth-delay product
/// exists: Linux's default maximum for autotuned socket buffers.
const UNLIMITED_DEFAULT_BUFFER: usize = 4 * 1024 * 1024;
/// Largest buffer a spec may ask for, so a typo cannot eat the machine.
const MAX_BUFFER: usize = 1 << 30;
/// Longest one-way delay a spec may ask for.
pub(super) const MAX_DELAY: Duration = Duration::from_secs(60);

/// The properties of an emulated link, applied to each direction on its own
/// (a full-duplex link: traffic one way does not slow the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkSpec {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Bytes per second in each direction; `None` is unlimited.
    pub rate: Option<u64>,
    /// Bytes a direction holds, read but not yet delivered, before it stops
    /// reading and the sender sees backpressure. 0 is treated as 1.
    pub buffer: usize,
}

impl LinkSpec {
    /// A link with `delay` and `rate` and the default buffer: the larger of
    /// 256 KiB and the bandwidth-delay product over a round trip (so the
    /// buffer never caps throughput below `rate`), or 4 MiB when unlimited.
    pub fn new(delay: Duration, rate: Option<u64>) -> Self {
        let buffer = match rate {
            None => UNLIMITED_DEFAULT_BUFFER,
            Some(r) => {
                // Saturating: a spec built by hand may hold any delay.
                let bdp = u128::from(r)
                    .saturating_mul(2)
                    .saturating_mul(delay.as_nanos())
                    / 1_000_000_000;
                usize::try_from(bdp)
                    .unwrap_or(MAX_BUFFER)
                    .clamp(MIN_DEFAULT_BUFFER, MAX_BUFFER)
            }
        };
        LinkSpec {
            delay,
            rate,
            buffer,
        }
    }

    /// Wired gigabit Ethernet: 1 Gbit/s, 0.2 ms one way.
    pub fn gbe() -> Self {
        Self::new(Duration::from_micros(200), Some(125_000_000))
    }

    /// A good Wi-Fi link: 100 Mbit/s, 3 ms one way.
    pub fn wifi() -> Self {
        Self::new(Duration::from_millis(3), Some(12_500_000))
    }

    /// Machines in different places: 10 ms one way at 100 Mbit/s, a common
    /// fibre uplink (the rate matters less than the delay here).
    pub fn wan() -> Self {
        Self::new(Duration::from_millis(10), Some(12_500_000))
    }

    /// Reads a spec: comma-separated items applied left to right, each a
    /// preset (`gbe`, `wifi`, `wan`) or `delay=` (`200us`, `0.2ms`, `3ms`,
    /// `1s`, `0`), `rate=` (`1gbit`, `300mbit`, `20mb`, `64kib`, bits or
    /// bytes per second, or `unlimited`) or `buffer=` (`4mib`, `65536`).
    /// Without `buffer=` the buffer is [`LinkSpec::new`]'s default for the
    /// final delay and rate, so `wan,rate=1gbit` gets a buffer to match.
    pub fn parse(s: &str) -> Result<Self, RelayError> {
        let mut delay = Duration::ZERO;
        let mut rate = None;
        let mut buffer = None;
        let mut any = false;
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            any = true;
            let lower = item.to_ascii_lowercase();
            let preset = match lower.as_str() {
                "gbe" => Some(Self::gbe()),
                "wifi" => Some(Self::wifi()),
                "wan" => Some(Self::wan()),
                _ => None,
            };
            if let Some(p) = preset {
                (delay, rate) = (p.delay, p.rate);
                continue;
            }
            match lower.split_once('=') {
                Some(("delay", v)) => delay = parse_delay(v.trim())?,
                Some(("rate", v)) => rate = parse_rate(v.trim())?,
                Some(("buffer", v)) => buffer = Some(parse_buffer(v.trim())?),
                _ => return Err(RelayError::UnknownItem(item.to_string())),
            }
        }
        if !any {
            return Err(RelayError::EmptySpec);
        }
        let mut spec = Self::new(delay, rate);
        if let Some(b) = buffer {
            spec.buffer = b;
        }
        Ok(spec)
    }
}

impl FromStr for LinkSpec {
    type Err = RelayError;
    fn from_str(s: &str) -> Result<Self, RelayError> {
        Self::parse(s)
    }
}

/// Delay units, in nanoseconds, largest first.
const DELAY_UNITS: &[(&str, u128)] = &[
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("µs", 1_000),
    ("ns", 1),
];
/// Rate units in bits per second, so bit and byte units share one scale;
/// bit units first, the ones [`LinkSpec`]'s `Display` picks from.
const RATE_UNITS: &[(&str, u128)] = &[
    ("gbit", 1_000_000_000),
    ("mbit", 1_000_000),
    ("kbit", 1_000),
    ("bit", 1),
    ("gib", 8 << 30),
    ("mib", 8 << 20),
    ("kib", 8 << 10),
    ("gb", 8_000_000_000),
    ("mb", 8_000_000),
    ("kb", 8_000),
    ("b", 8),
];
/// Size units in bytes; binary ones first, the ones `Display` picks from.
const SIZE_UNITS: &[(&str, u128)] = &[
    ("gib", 1 << 30),
    ("mib", 1 << 20),
    ("kib", 1 << 10),
    ("", 1),
    ("gb", 1_000_000_000),
    ("mb", 1_000_000),
    ("kb", 1_000),
    ("b", 1),
];

/// Always the full `delay=…,rate=…,buffer=…` form, in the largest unit that
/// is exact, so that parsing it back gives the same spec.
impl fmt::Display for LinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("delay=")?;
        write_exact(f, self.delay.as_nanos(), DELAY_UNITS)?;
        f.write_str(",rate=")?;
        match self.rate {
            None => f.write_str("unlimited")?,
            Some(r) => write_exact(f, u128::from(r) * 8, RATE_UNITS)?,
        }
        f.write_str(",buffer=")?;
        write_exact(f, self.buffer as u128, SIZE_UNITS)
    }
}

/// Writes `v` in the first of `units` that divides it.
fn write_exact(f: &mut fmt::Formatter<'_>, v: u128, units: &[(&str, u128)]) -> fmt::Result {
    match units.iter().find(|(_, size)| v.is_multiple_of(*size)) {
        Some((name, size)) if v > 0 => write!(f, "{}{name}", v / size),
        _ => write!(f, "{v}"),
    }
}

/// `"0.2ms"` as a count of the smallest of `units`, rounded; `None` when
/// the number is malformed, the unit unknown, or the result overflows.
fn scaled(v: &str, units: &[(&str, u128)]) -> Option<u128> {
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let scale = units.iter().find(|(name, _)| *name == unit)?.1;
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    // 18 fractional digits keep 10^len and the products inside u128.
    if int.is_empty() && frac.is_empty() || frac.len() > 18 || frac.contains('.') {
        return None;
    }
    let digits = |d: &str| d.parse::<u128>().ok().or(d.is_empty().then_some(0));
    let whole = digits(int)?.checked_mul(scale)?;
    let den = 10u128.pow(frac.len() as u32);
    let part = digits(frac)?.checked_mul(scale)?.checked_add(den / 2)? / den;
    whole.checked_add(part)
}

/// Reads `v` in `units` and checks it against `ok`, or says `why` not.
fn quantity<T>(
    key: &'static str,
    v: &str,
    units: &[(&str, u128)],
    ok: impl Fn(u128) -> Option<T>,
    why: &'static str,
) -> Result<T, RelayError> {
    scaled(v, units)
        .and_then(ok)
        .ok_or_else(|| RelayError::BadValue {
            key,
            value: v.to_string(),
            reason: why,
        })
}

fn parse_delay(v: &str) -> Result<Duration, RelayError> {
    if v == "0" {
        return Ok(Duration::ZERO);
    }
    let ok = |ns| Some(Duration::from_nanos(u64::try_from(ns).ok()?)).filter(|d| *d <= MAX_DELAY);
    let why = "expected a number with ns, us, ms or s, at most 60s";
    quantity("delay", v, DELAY_UNITS, ok, why)
}

fn parse_rate(v: &str) -> Result<Option<u64>, RelayError> {
    if v == "unlimited" {
        return Ok(None);
    }
    let ok = |bits: u128| {
        u64::try_from(bits / 8 + u128::from(bits % 8 >= 4))
            .ok()
            .filter(|b| *b > 0)
    };
    let why = "expected 'unlimited' or a number with bit, kbit, mbit, gbit (bits/s) \
               or b, kb, mb, gb, kib, mib, gib (bytes/s), at least 1 byte/s";
    quantity("rate", v, RATE_UNITS, ok, why).map(Some)
}

fn parse_buffer(v: &str) -> Result<usize, RelayError> {
    let ok = |n| {
        usize::try_from(n)
            .ok()
            .filter(|b| (1..=MAX_BUFFER).contains(b))
    };
    let why = "expected a byte count, optionally with kb, mb, gb, kib, mib or gib, from 1 to 1gib";
    quantity("buffer", v, SIZE_UNITS, ok, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(delay_ms: u64, rate: Option<u64>) -> LinkSpec {
        LinkSpec::new(Duration::from_millis(delay_ms), rate)
    }

    #[test]
    fn presets_and_display_round_trip() {
        assert_eq!(
            LinkSpec::gbe().to_string(),
            "delay=200us,rate=1gbit,buffer=256kib"
        );
        assert_eq!(
            LinkSpec::wifi().to_string(),
            "delay=3ms,rate=100mbit,buffer=256kib"
        );
        assert_eq!("WAN".parse::<LinkSpec>().unwrap(), LinkSpec::wan());
        assert_eq!(LinkSpec::parse(" gbe ").unwrap(), LinkSpec::gbe());
        let odd = LinkSpec {
            delay: Duration::from_nanos(1_234_567),
            rate: Some(12_345),
            buffer: 100_000,
        };
        for s in [
            LinkSpec::gbe(),
            LinkSpec::wifi(),
            LinkSpec::wan(),
            odd,
            spec(0, None),
        ] {
            assert_eq!(LinkSpec::parse(&s.to_string()).unwrap(), s, "{s}");
        }
    }

    #[test]
    fn parses_items_left_to_right() {
        let s = LinkSpec::parse("delay=10ms,rate=1gbit,buffer=4mib").unwrap();
        assert_eq!(
            (s.delay, s.rate, s.buffer),
            (Duration::from_millis(10), Some(125_000_000), 4 << 20)
        );
        let s = LinkSpec::parse("rate=300mbit").unwrap();
        assert_eq!((s.delay, s.rate), (Duration::ZERO, Some(37_500_000)));
        assert_eq!(
            LinkSpec::parse("delay=0.2ms").unwrap().delay,
            Duration::from_micros(200)
        );
        assert_eq!(LinkSpec::parse("delay=0").unwrap().delay, Duration::ZERO);
        assert_eq!(LinkSpec::parse("rate=20mb").unwrap().rate, Some(20_000_000));
        assert_eq!(LinkSpec::parse("rate=unlimited").unwrap().rate, None);
        assert_eq!(LinkSpec::parse("buffer=65536").unwrap().buffer, 65536);
        // A preset then an override; the default buffer follows the result.
        let s = LinkSpec::parse("wan,rate=1gbit").unwrap();
        assert_eq!(s, spec(10, Some(125_000_000)));
        assert_eq!(
            s.buffer, 2_500_000,
            "bandwidth-delay product over a round trip"
        );
        assert_eq!(
            LinkSpec::parse("wifi,delay=1s").unwrap().rate,
            LinkSpec::wifi().rate
        );
    }

    #[test]
    fn extreme_values_are_errors_or_clamped_never_panics() {
        let max = format!("rate={}bit", u128::MAX);
        assert!(LinkSpec::parse(&max).is_err());
        let s = LinkSpec::new(Duration::MAX, Some(u64::MAX));
        assert!(s.buffer >= MIN_DEFAULT_BUFFER);
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        for (input, needle) in [
            ("", "empty link spec"),
            (" , ", "empty link spec"),
            ("ethernet", "unknown link spec item 'ethernet'"),
            ("speed=1gbit", "unknown link spec item 'speed=1gbit'"),
            ("delay=10", "bad delay '10'"),
            ("delay=ms", "bad delay 'ms'"),
            ("delay=1.2.3ms", "bad delay"),
            ("delay=-1ms", "bad delay"),
            ("delay=61s", "at most 60s"),
            (
                "delay=99999999999999999999999999999999999999999s",
                "bad delay",
            ),
            ("rate=0mbit", "bad rate '0mbit'"),
            ("rate=1bit", "at least 1 byte/s"),
            ("rate=fast", "bad rate"),
            ("rate=1e9", "bad rate"),
            ("rate=100000000000gib", "bad rate"),
            ("buffer=0", "bad buffer '0'"),
            ("buffer=2gib", "bad buffer"),
            ("buffer=1.5.5kib", "bad buffer"),
        ] {
            let e = LinkSpec::parse(input).unwrap_err().to_string();
            assert!(e.contains(needle), "{input:?} gave {e:?}");
        }
    }
}
