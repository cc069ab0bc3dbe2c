//! Workers saying where they are: a small UDP multicast beacon.
//!
//! `shardline worker --announce` sends one datagram a second to the group
//! [`GROUP`] (239.255.77.52, in the organization-local scope that routers
//! do not forward) on UDP port [`PORT`] (50053), with a time-to-live of 1,
//! so it never leaves the LAN segment. The datagram is the text
//! `shardline-announce/1 ` followed by an [`Announcement`] as JSON. This is
//! shardline's own beacon, not mDNS: `avahi-browse` and Bonjour do not see
//! it, and it needs no daemon. `discover` with no targets joins the group
//! for a few seconds ([`listen`]) and then probes every worker it heard.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// The multicast group announcements go to.
pub const GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 77, 52);
/// The UDP port announcements go to.
pub const PORT: u16 = 50053;
/// What every announcement datagram starts with.
pub const MAGIC: &[u8] = b"shardline-announce/1 ";
/// The `service` of a worker's announcement.
pub const SERVICE: &str = "shardline-worker";
/// Largest datagram read or sent.
const MAX_DATAGRAM: usize = 1400;

/// Why announcing or listening failed.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    /// A socket could not be set up.
    #[error("{what}: {source}")]
    Socket {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The group could not be joined on any interface.
    #[error("cannot join multicast group {group} on {interfaces}: {source}")]
    Join {
        /// The group.
        group: Ipv4Addr,
        /// The interfaces tried.
        interfaces: String,
        /// The last error.
        source: std::io::Error,
    },
    /// The announcement does not fit one datagram.
    #[error("announcement of {0} bytes is larger than one datagram ({MAX_DATAGRAM})")]
    TooLarge(usize),
}

fn sock_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AnnounceError {
    let what = what.into();
    move |source| AnnounceError::Socket { what, source }
}

/// What a worker announces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// Always [`SERVICE`].
    pub service: String,
    /// The worker's RPC port.
    pub port: u16,
    /// The address the worker listens on, when it is a specific one;
    /// otherwise listeners use the datagram's source address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<IpAddr>,
    /// RPC protocol version, `major.minor.patch`.
    pub protocol: String,
    /// Devices served, by name.
    #[serde(default)]
    pub devices: Vec<String>,
    /// shardline's version.
    #[serde(default)]
    pub version: String,
}

impl Announcement {
    /// A worker's announcement for `port` on `host` (unspecified: the
    /// listener takes the datagram's source address).
    pub fn worker(host: IpAddr, port: u16, devices: Vec<String>) -> Announcement {
        let v = shardline_protocol::PROTOCOL_VERSION;
        Announcement {
            service: SERVICE.into(),
            port,
            host: (!host.is_unspecified()).then_some(host),
            protocol: format!("{}.{}.{}", v.major, v.minor, v.patch),
            devices,
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// The datagram's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = MAGIC.to_vec();
        // A struct of strings and numbers always serializes.
        v.extend_from_slice(&serde_json::to_vec(self).unwrap_or_default());
        v
    }

    /// An announcement from a datagram; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Announcement> {
        let json = bytes.strip_prefix(MAGIC)?;
        let a: Announcement = serde_json::from_slice(json).ok()?;
        (a.service == SERVICE && a.port != 0).then_some(a)
    }

    /// Where to connect: the announced host, else `from`'s address.
    pub fn endpoint(&self, from: IpAddr) -> String {
        SocketAddr::new(self.host.unwrap_or(from), self.port).to_string()
    }
}

/// How to announce.
#[derive(Debug, Clone)]
pub struct AnnounceOptions {
    /// Where the datagrams go ([`GROUP`]:[`PORT`] by default).
    pub group: SocketAddrV4,
    /// The address to send from: the worker's listening address. A
    /// specific IPv4 address picks the interface that has it; an
    /// unspecified (or IPv6) one sends on the default interface.
    pub source: IpAddr,
    /// Time between datagrams.
    pub interval: Duration,
    /// What to say.
    pub announcement: Announcement,
}

impl AnnounceOptions {
    /// One datagram a second to the default group, from `source`.
    pub fn new(source: IpAddr, announcement: Announcement) -> AnnounceOptions {
        AnnounceOptions {
            group: SocketAddrV4::new(GROUP, PORT),
            source,
            interval: Duration::from_secs(1),
            announcement,
        }
    }
}

/// A beacon sending in the background until dropped.
#[derive(Debug)]
pub struct Announcer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Announcer {
    /// Opens the socket, sends the first datagram at once (an error there
    /// is returned) and keeps sending every `interval` on a thread.
    pub fn start(opts: AnnounceOptions) -> Result<Announcer, AnnounceError> {
        let bytes = opts.announcement.encode();
        if bytes.len() > MAX_DATAGRAM {
            return Err(AnnounceError::TooLarge(bytes.len()));
        }
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
            .map_err(sock_err("opening a UDP socket"))?;
        let from = match opts.source {
            IpAddr::V4(a) if !a.is_unspecified() => a,
            _ => Ipv4Addr::UNSPECIFIED,
        };
        socket
            .bind(&SockAddr::from(SocketAddrV4::new(from, 0)))
            .map_err(sock_err(format!("binding the announce socket to {from}")))?;
        if !from.is_unspecified() {
            socket
                .set_multicast_if_v4(&from)
                .map_err(sock_err(format!("sending multicast from {from}")))?;
        }
        socket
            .set_multicast_ttl_v4(1)
            .map_err(sock_err("setting the multicast TTL"))?;
        socket
            .set_multicast_loop_v4(true)
            .map_err(sock_err("setting multicast loopback"))?;
        let socket: UdpSocket = socket.into();
        let to = opts.group;
        socket
            .send_to(&bytes, to)
            .map_err(sock_err(format!("announcing to {to}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let interval = opts.interval.max(Duration::from_millis(10));
        let thread = std::thread::Builder::new()
            .name("announce".into())
            .spawn(move || {
                let mut warned = false;
                while !sleep_unless(&stopped, interval) {
                    if let Err(e) = socket.send_to(&bytes, to) {
                        if !warned {
                            tracing::warn!("announcing to {to}: {e}");
                            warned = true;
                        }
                    }
                }
            })
            .map_err(sock_err("starting the announce thread"))?;
        Ok(Announcer {
            stop,
            thread: Some(thread),
        })
    }
}

/// Sleeps `d` in short naps; true when `stop` was set meanwhile.
fn sleep_unless(stop: &AtomicBool, d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50).min(d));
    }
    stop.load(Ordering::Relaxed)
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How to listen for announcements.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    /// The group and port ([`GROUP`]:[`PORT`] by default).
    pub group: SocketAddrV4,
    /// Interfaces (by one of their IPv4 addresses) to join the group on;
    /// `0.0.0.0` lets the system pick (the default route's). Joining fails
    /// only when it fails on all of them.
    pub interfaces: Vec<Ipv4Addr>,
    /// How long to listen.
    pub duration: Duration,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            group: SocketAddrV4::new(GROUP, PORT),
            interfaces: vec![Ipv4Addr::UNSPECIFIED, Ipv4Addr::LOCALHOST],
            duration: Duration::from_secs(2),
        }
    }
}

/// A worker heard announcing itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Heard {
    /// Where to connect (`host:port`).
    pub endpoint: String,
    /// The datagram's source address.
    pub from: SocketAddr,
    /// What it said.
    pub announcement: Announcement,
}

/// Listens for `opts.duration` (blocking) and returns every worker heard,
/// one per endpoint, in endpoint order. Datagrams that are not
/// announcements are ignored.
pub fn listen(opts: &ListenOptions) -> Result<Vec<Heard>, AnnounceError> {
    let group = *opts.group.ip();
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(sock_err("opening a UDP socket"))?;
    socket
        .set_reuse_address(true)
        .map_err(sock_err("setting SO_REUSEADDR"))?;
    // Bound to the group's own address, the socket gets only its datagrams.
    let bind = if cfg!(target_os = "linux") {
        opts.group
    } else {
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, opts.group.port())
    };
    socket
        .bind(&SockAddr::from(bind))
        .map_err(sock_err(format!("listening on UDP {bind}")))?;
    let mut joined = 0;
    let mut last_err = None;
    for iface in &opts.interfaces {
        match socket.join_multicast_v4(&group, iface) {
            Ok(()) => joined += 1,
            // Already joined through another of the addresses given.
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => joined += 1,
            Err(e) => last_err = Some(e),
        }
    }
    if joined == 0 {
        let interfaces = opts
            .interfaces
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(AnnounceError::Join {
            group,
            interfaces,
            source: last_err.unwrap_or_else(|| std::io::Error::other("no interface was given")),
        });
    }
    let socket: UdpSocket = socket.into();
    let until = Instant::now() + opts.duration;
    let mut heard = BTreeMap::new();
    let mut buf = [0u8; MAX_DATAGRAM + 1];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(sock_err("setting a read timeout"))?;
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                if let Some(a) = Announcement::decode(&buf[..n.min(MAX_DATAGRAM)]) {
                    let endpoint = a.endpoint(from.ip());
                    heard.insert(
                        endpoint.clone(),
                        Heard {
                            endpoint,
                            from,
                            announcement: a,
                        },
                    );
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(sock_err("receiving announcements")(e)),
        }
    }
    Ok(heard.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_round_trip_and_junk_is_ignored() {
        let a = Announcement::worker(IpAddr::from([0, 0, 0, 0]), 7, vec!["CPU".into()]);
        assert_eq!(a.host, None);
        let b = Announcement::decode(&a.encode()).unwrap();
        assert_eq!(a, b);
        assert_eq!(b.endpoint(IpAddr::from([10, 0, 0, 3])), "10.0.0.3:7");
        let c = Announcement::worker(IpAddr::from([10, 0, 0, 9]), 7, vec![]);
        assert_eq!(c.endpoint(IpAddr::from([10, 0, 0, 3])), "10.0.0.9:7");
        assert!(Announcement::decode(b"hello").is_none());
        assert!(Announcement::decode(b"shardline-announce/1 {").is_none());
        let mut other = a.clone();
        other.service = "something-else".into();
        assert!(Announcement::decode(&other.encode()).is_none());
        other.service = SERVICE.into();
        other.port = 0;
        assert!(Announcement::decode(&other.encode()).is_none());
    }

    /// Sends and hears on loopback only (group port picked free), within
    /// this process.
    #[test]
    fn heard_on_loopback() {
        let port = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .unwrap()
            .port();
        let group = SocketAddrV4::new(GROUP, port);
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut opts = AnnounceOptions::new(lo, Announcement::worker(lo, 4242, vec!["CPU".into()]));
        opts.group = group;
        opts.interval = Duration::from_millis(100);
        let announcer = Announcer::start(opts).unwrap();
        let heard = listen(&ListenOptions {
            group,
            interfaces: vec![Ipv4Addr::LOCALHOST],
            duration: Duration::from_millis(600),
        })
        .unwrap();
        drop(announcer);
        assert_eq!(heard.len(), 1, "{heard:?}");
        assert_eq!(heard[0].endpoint, "127.0.0.1:4242");
        assert_eq!(heard[0].announcement.devices, ["CPU"]);
    }
}
