//! What `discover` is asked to probe: host names, addresses, `host:port`
//! and CIDR ranges, expanded into endpoints.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Most addresses one scan may cover: a /16 of IPv4 (or a /112 of IPv6).
pub const MAX_HOSTS: usize = 1 << 16;

/// Why a target cannot be scanned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// An empty target.
    #[error("empty host")]
    Empty,
    /// `ADDR/PREFIX` with a prefix that is not a number in range.
    #[error("bad CIDR '{0}': expected ADDR/PREFIX with a prefix of 0-32 (IPv4) or 0-128 (IPv6)")]
    BadCidr(String),
    /// A range larger than [`MAX_HOSTS`] addresses.
    #[error(
        "CIDR '{cidr}' covers {hosts} addresses; discover scans at most {max} at once \
         (a /16 of IPv4): give a smaller range"
    )]
    TooLarge {
        /// The range as given.
        cidr: String,
        /// Addresses it covers (saturating).
        hosts: u128,
        /// The cap.
        max: usize,
    },
    /// The targets together cover more than [`MAX_HOSTS`] addresses.
    #[error("the targets cover {0} addresses; discover scans at most {MAX_HOSTS} at once")]
    TooMany(usize),
    /// `host:port` with a port that is not a number from 1 to 65535.
    #[error("bad port in '{0}': expected a number from 1 to 65535")]
    BadPort(String),
}

/// Every endpoint (`host:port`) named by `targets`, in order, without
/// repeats. A target is `HOST`, `HOST:PORT`, `[IPv6]:PORT`, a bare IPv6
/// address, or a CIDR range (`10.0.0.0/24`: every host address of it, on
/// `port`); commas separate several in one argument.
pub fn expand(targets: &[String], port: u16) -> Result<Vec<String>, TargetError> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for t in targets.iter().flat_map(|t| t.split(',')) {
        let t = t.trim();
        if t.is_empty() {
            return Err(TargetError::Empty);
        }
        let eps = if t.contains('/') {
            cidr(t, port)?
        } else {
            vec![endpoint(t, port)?]
        };
        for ep in eps {
            if seen.insert(ep.clone()) {
                out.push(ep);
                if out.len() > MAX_HOSTS {
                    return Err(TargetError::TooMany(out.len()));
                }
            }
        }
    }
    Ok(out)
}

/// `host:port` for one target that is not a range.
fn endpoint(t: &str, port: u16) -> Result<String, TargetError> {
    if let Ok(v6) = t.parse::<Ipv6Addr>() {
        return Ok(format!("[{v6}]:{port}"));
    }
    // `[v6]:port` or `host:port`.
    if let Some((host, p)) = t.rsplit_once(':') {
        if host.is_empty() {
            return Err(TargetError::Empty);
        }
        let p: u16 = p
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| TargetError::BadPort(t.to_string()))?;
        return Ok(format!("{host}:{p}"));
    }
    Ok(format!("{t}:{port}"))
}

/// The host addresses of `ADDR/PREFIX` as endpoints on `port`. An IPv4
/// range of /30 or wider leaves out its network and broadcast addresses.
fn cidr(t: &str, port: u16) -> Result<Vec<String>, TargetError> {
    let bad = || TargetError::BadCidr(t.to_string());
    let (addr, prefix) = t.split_once('/').ok_or_else(bad)?;
    let prefix: u32 = prefix.parse().map_err(|_| bad())?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let bits = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > bits {
        return Err(bad());
    }
    let hosts: u128 = 1u128.checked_shl(bits - prefix).unwrap_or(u128::MAX);
    if hosts > MAX_HOSTS as u128 {
        return Err(TargetError::TooLarge {
            cidr: t.to_string(),
            hosts,
            max: MAX_HOSTS,
        });
    }
    let n = hosts as u64;
    Ok(match addr {
        IpAddr::V4(a) => {
            let base = u32::from(a) & !((n - 1) as u32);
            let range = if n >= 4 { 1..n - 1 } else { 0..n };
            range
                .map(|i| format!("{}:{port}", Ipv4Addr::from(base + i as u32)))
                .collect()
        }
        IpAddr::V6(a) => {
            let base = u128::from(a) & !(u128::from(n) - 1);
            (0..n)
                .map(|i| format!("[{}]:{port}", Ipv6Addr::from(base + u128::from(i))))
                .collect()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn hosts_ports_and_ipv6() {
        let eps = expand(
            &s(&["a", "b:1", "10.0.0.1", "::1", "[::1]:7", "a,c:2", "b:1"]),
            50052,
        )
        .unwrap();
        assert_eq!(
            eps,
            s(&[
                "a:50052",
                "b:1",
                "10.0.0.1:50052",
                "[::1]:50052",
                "[::1]:7",
                "c:2"
            ])
        );
        assert_eq!(
            expand(&s(&["a:0"]), 1),
            Err(TargetError::BadPort("a:0".into()))
        );
        assert_eq!(
            expand(&s(&["a:x"]), 1),
            Err(TargetError::BadPort("a:x".into()))
        );
        assert_eq!(expand(&s(&["a,,b"]), 1), Err(TargetError::Empty));
    }

    #[test]
    fn cidr_ranges_leave_out_network_and_broadcast() {
        let eps = expand(&s(&["192.168.1.77/30"]), 9).unwrap();
        assert_eq!(eps, s(&["192.168.1.77:9", "192.168.1.78:9"]));
        assert_eq!(expand(&s(&["10.0.0.5/32"]), 9).unwrap(), s(&["10.0.0.5:9"]));
        assert_eq!(expand(&s(&["10.0.0.4/31"]), 9).unwrap().len(), 2);
        assert_eq!(expand(&s(&["10.1.0.0/24"]), 9).unwrap().len(), 254);
        assert_eq!(expand(&s(&["10.1.0.0/16"]), 9).unwrap().len(), 65534);
        assert_eq!(expand(&s(&["fe80::/126"]), 9).unwrap().len(), 4);
    }

    #[test]
    fn large_or_bad_ranges_are_clear_errors() {
        let e = expand(&s(&["10.0.0.0/8"]), 9).unwrap_err();
        assert!(
            matches!(
                e,
                TargetError::TooLarge {
                    hosts: 16_777_216,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("/16"), "{e}");
        assert!(matches!(
            expand(&s(&["::/0"]), 9).unwrap_err(),
            TargetError::TooLarge { .. }
        ));
        for bad in ["10.0.0.0/33", "10.0.0.0/x", "host/24", "/24"] {
            assert_eq!(
                expand(&s(&[bad]), 9),
                Err(TargetError::BadCidr(bad.into())),
                "{bad}"
            );
        }
        let e = expand(&s(&["10.1.0.0/16", "10.2.0.0/16"]), 9).unwrap_err();
        assert!(matches!(e, TargetError::TooMany(_)), "{e}");
    }
}
