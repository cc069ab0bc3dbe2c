//! Classification against the scripted fake peer (wrong version, hanging
//! up, holding HELLO) and a port nobody listens on. A real worker, ready
//! and busy, is in `tests/discover.rs`.

use std::time::Duration;

use shardline_protocol::Version;

use super::*;
use crate::rpc::fake::{hello, FakeServer, Step};

fn quick() -> ProbeOptions {
    ProbeOptions {
        connect_timeout: Duration::from_millis(500),
        answer_timeout: Duration::from_millis(300),
        parallel: 4,
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn another_version_is_wrong_version() {
    let v = Version {
        major: 6,
        minor: 1,
        patch: 0,
    };
    let server = FakeServer::start(vec![hello(v), Step::Stall]).await;
    let p = probe_one(&server.addr, &quick()).await;
    assert_eq!(p.state, State::WrongVersion, "{p:?}");
    assert_eq!(p.protocol.as_deref(), Some("6.1.0"));
    assert!(p.detail.as_deref().unwrap().contains("7.0.0"), "{p:?}");
    assert!(p.devices.is_empty());
}

#[tokio::test]
async fn hanging_up_on_hello_is_wrong_version() {
    let server = FakeServer::start(vec![Step::Close]).await;
    let p = probe_one(&server.addr, &quick()).await;
    assert_eq!(p.state, State::WrongVersion, "{p:?}");
    assert!(p.detail.unwrap().contains("HELLO"));
}

#[tokio::test]
async fn silence_after_accept_is_busy_and_nobody_listening_is_unreachable() {
    // Reads HELLO and never answers, as a held rpc-server does.
    let held = FakeServer::start(vec![Step::Stall]).await;
    let nobody = format!("127.0.0.1:{}", free_port());
    let started = std::time::Instant::now();
    let ps = probe_many(&[held.addr.clone(), nobody.clone()], &quick()).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "probes ran in parallel, bounded"
    );
    assert_eq!(ps[0].endpoint, held.addr);
    assert_eq!(ps[0].state, State::Busy, "{:?}", ps[0]);
    assert!(ps[0].detail.as_deref().unwrap().contains("another client"));
    assert_eq!(ps[1].endpoint, nobody);
    assert_eq!(ps[1].state, State::Unreachable, "{:?}", ps[1]);
}

#[tokio::test]
async fn find_ready_says_when_nobody_announced() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = ListenOptions {
        group: std::net::SocketAddrV4::new(announce::GROUP, port),
        interfaces: vec![std::net::Ipv4Addr::LOCALHOST],
        duration: Duration::from_millis(200),
    };
    let e = find_ready(&listen, &quick()).await.unwrap_err();
    assert!(matches!(e, DiscoverError::NoneHeard { .. }), "{e}");
    assert!(e.to_string().contains("--announce"), "{e}");
}
