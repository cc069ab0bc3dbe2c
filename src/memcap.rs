//! Caps on what the coordinator may use of a server's devices: a user keeps
//! memory free on a shared machine, and tests emulate devices of a given
//! size on one box.
//!
//! ggml's RPC server reports its devices' memory as the backend gives it
//! (`ggml_backend_rpc_start_server` takes an endpoint, a cache folder, a
//! thread count and devices, nothing about memory), so a worker cannot
//! report less; the cap is applied on the coordinator, to the device facts
//! the planner reads.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::plan::{human_bytes, DeviceSpec};

/// At most `bytes` on each device of one server (`host:port=24GiB`), or of
/// every server (`24GiB`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemCap {
    /// The server it applies to; `None`: every server.
    pub endpoint: Option<String>,
    /// The most a device may hold.
    pub bytes: u64,
}

/// Why a cap does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemCapError {
    /// The size is not a number with an optional unit.
    #[error("bad memory size '{0}': expected a number of bytes with an optional unit, such as 24GiB, 512MiB or 1.5G (binary units: K, M, G, T, KiB, MiB, GiB, TiB)")]
    BadSize(String),
    /// The `host:port=` part is empty.
    #[error("bad memory cap '{0}': expected SIZE or HOST:PORT=SIZE")]
    BadEndpoint(String),
}

impl FromStr for MemCap {
    type Err = MemCapError;
    fn from_str(s: &str) -> Result<MemCap, MemCapError> {
        let s = s.trim();
        let (endpoint, size) = match s.rsplit_once('=') {
            Some((ep, size)) => {
                let ep = ep.trim();
                if ep.is_empty() || ep.contains('=') {
                    return Err(MemCapError::BadEndpoint(s.to_owned()));
                }
                (Some(ep.to_owned()), size)
            }
            None => (None, s),
        };
        Ok(MemCap {
            endpoint,
            bytes: parse_size(size)?,
        })
    }
}

impl fmt::Display for MemCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.endpoint {
            Some(ep) => write!(f, "{ep}={}", human_bytes(self.bytes)),
            None => f.write_str(&human_bytes(self.bytes)),
        }
    }
}

/// `24GiB`, `512M`, `1.5G`, `1000` (bytes). Units are binary.
pub fn parse_size(s: &str) -> Result<u64, MemCapError> {
    let bad = || MemCapError::BadSize(s.to_owned());
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => return Err(bad()),
    };
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return Err(bad());
    }
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if frac.contains('.') || frac.len() > 9 {
        return Err(bad());
    }
    let whole: u128 = whole.parse().map_err(|_| bad())?;
    let scale = 10u128.pow(frac.len() as u32);
    let frac: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad())?
    };
    // (whole + frac / scale) << shift, exact in u128 for any u64 result.
    let bytes = whole
        .checked_mul(scale)
        .and_then(|v| v.checked_add(frac))
        .and_then(|v| v.checked_mul(1u128 << shift))
        .map(|v| v / scale)
        .ok_or_else(bad)?;
    u64::try_from(bytes).map_err(|_| bad())
}

/// Lowers each device's free and total memory to the caps that apply to
/// its server (the smallest, when several do).
pub fn apply_caps(devices: &mut [DeviceSpec], caps: &[MemCap]) {
    for d in devices {
        let cap = caps
            .iter()
            .filter(|c| c.endpoint.as_deref().is_none_or(|ep| ep == d.endpoint))
            .map(|c| c.bytes)
            .min();
        if let Some(cap) = cap {
            d.free = d.free.min(cap);
            d.total = d.total.min(cap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("24GiB"), Ok(24 * GIB));
        assert_eq!(parse_size("24g"), Ok(24 * GIB));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 * GIB / 2));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size(" 7 b "), Ok(7));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        for bad in [
            "",
            "GiB",
            "1.5.2G",
            ".5G",
            "5.G",
            "-1G",
            "12PB",
            "1e9",
            "99999999999999999999T",
        ] {
            assert_eq!(
                parse_size(bad),
                Err(MemCapError::BadSize(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn caps_parse_with_and_without_a_server() {
        assert_eq!(
            "24GiB".parse::<MemCap>(),
            Ok(MemCap {
                endpoint: None,
                bytes: 24 * GIB
            })
        );
        assert_eq!(
            "10.0.0.2:50052=8GiB".parse::<MemCap>(),
            Ok(MemCap {
                endpoint: Some("10.0.0.2:50052".into()),
                bytes: 8 * GIB
            })
        );
        assert!(matches!(
            "=8GiB".parse::<MemCap>(),
            Err(MemCapError::BadEndpoint(_))
        ));
        assert!(matches!(
            "h:1=x".parse::<MemCap>(),
            Err(MemCapError::BadSize(_))
        ));
        assert_eq!(
            "h:1=8GiB".parse::<MemCap>().unwrap().to_string(),
            "h:1=8.0 GiB"
        );
    }

    #[test]
    fn caps_lower_the_devices_they_name() {
        let dev = |ep: &str, free: u64| DeviceSpec {
            endpoint: ep.into(),
            device: 0,
            free,
            total: free + GIB,
            alignment: 32,
            max_size: 0,
        };
        let mut d = vec![
            dev("a:1", 100 * GIB),
            dev("b:2", 100 * GIB),
            dev("c:3", 2 * GIB),
        ];
        let caps: Vec<MemCap> = ["24GiB", "b:2=8GiB"]
            .iter()
            .map(|c| c.parse().unwrap())
            .collect();
        apply_caps(&mut d, &caps);
        assert_eq!((d[0].free, d[0].total), (24 * GIB, 24 * GIB));
        assert_eq!((d[1].free, d[1].total), (8 * GIB, 8 * GIB));
        assert_eq!(
            (d[2].free, d[2].total),
            (2 * GIB, 3 * GIB),
            "below the cap: unchanged"
        );
    }
}
