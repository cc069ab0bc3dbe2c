//! The relay against loopback servers: data, timing, backpressure, closing.

use super::*;
use std::io::ErrorKind;

/// A loopback server running `handle` on each connection.
fn server(handle: fn(TcpStream)) -> SocketAddr {
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for s in listener.incoming().map_while(Result::ok) {
            thread::spawn(move || handle(s));
        }
    });
    addr
}

/// Echoes everything back, then passes on EOF.
fn echo(mut s: TcpStream) {
    let _ = io::copy(&mut s.try_clone().unwrap(), &mut s);
    let _ = s.shutdown(Shutdown::Write);
}

/// Reads to EOF, then replies with the number of bytes read.
fn count_then_reply(mut s: TcpStream) {
    let n = io::copy(&mut s, &mut io::sink()).unwrap_or(0);
    let _ = s.write_all(&n.to_le_bytes());
}

/// Holds the connection open without reading from it.
fn never_read(s: TcpStream) {
    thread::sleep(Duration::from_secs(30));
    drop(s);
}

fn spec(delay_ms: u64, rate: Option<u64>) -> LinkSpec {
    LinkSpec::new(Duration::from_millis(delay_ms), rate)
}

fn connect(relay: &Relay) -> TcpStream {
    let c = TcpStream::connect(relay.addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c
}
#[test]
fn bytes_pass_through_unchanged_both_ways() {
    let relay = Relay::start(
        server(echo),
        LinkSpec {
            buffer: 100_000,
            ..spec(1, None)
        },
    )
    .unwrap();
    let data: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut c = connect(&relay);
    let mut w = c.try_clone().unwrap();
    let sent = data.clone();
    let writer = thread::spawn(move || {
        w.write_all(&sent).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert!(back == data, "echo differs ({} bytes back)", back.len());
    // Counted after each write, so the last count may trail the data.
    let deadline = Instant::now() + Duration::from_secs(10);
    let want = RelayStats {
        client_to_server: data.len() as u64,
        server_to_client: data.len() as u64,
        connections: 1,
    };
    while relay.stats() != want && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(relay.stats(), want);
}

#[test]
fn delay_applies_each_way() {
    let relay = Relay::start(server(echo), spec(20, None)).unwrap();
    let mut c = connect(&relay);
    // The first round trip also covers the relay's connect to the target.
    for _ in 0..2 {
        let t = Instant::now();
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).unwrap();
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(40),
            "round trip took {took:?}"
        );
        assert!(took < Duration::from_secs(10), "round trip took {took:?}");
    }
}

#[test]
fn rate_caps_throughput() {
    let relay = Relay::start(server(count_then_reply), spec(0, Some(20_000_000))).unwrap();
    let mut c = connect(&relay);
    let t = Instant::now();
    c.write_all(&vec![7u8; 4_000_000]).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut n = [0u8; 8];
    c.read_exact(&mut n).unwrap();
    let took = t.elapsed();
    assert_eq!(u64::from_le_bytes(n), 4_000_000);
    // 4 MB at 20 MB/s; a nanosecond per chunk lost to rounding at most.
    assert!(took >= Duration::from_millis(199), "took {took:?}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[test]
fn full_link_pushes_back_on_the_sender() {
    let relay = Relay::start(
        server(never_read),
        LinkSpec {
            buffer: 64 << 10,
            ..spec(0, None)
        },
    )
    .unwrap();
    let mut c = connect(&relay);
    c.set_nonblocking(true).unwrap();
    let chunk = vec![1u8; 64 << 10];
    let (mut accepted, mut idle) = (0usize, 0);
    // Stop once writes have been refused for a while, or far past any
    // plausible sum of socket buffers.
    while idle < 15 && accepted < 256 << 20 {
        match c.write(&chunk) {
            Ok(n) => (accepted, idle) = (accepted + n, 0),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                idle += 1;
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
    assert!(accepted > 0);
    assert!(
        accepted < 64 << 20,
        "relay took {accepted} bytes without a reader"
    );
}

#[test]
fn half_close_passes_eof_and_the_reply_still_arrives() {
    let relay = Relay::start(server(count_then_reply), spec(2, Some(10_000_000))).unwrap();
    let mut c = connect(&relay);
    c.write_all(b"hello").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    assert_eq!(back, 5u64.to_le_bytes());
}

#[test]
fn unreachable_target_closes_the_client() {
    // A port that was just free, now refusing connections.
    let gone = TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap();
    let relay = Relay::start(gone, LinkSpec::gbe()).unwrap();
    let mut c = connect(&relay);
    let t = Instant::now();
    let mut b = [0u8; 16];
    match c.read(&mut b) {
        Ok(0) => {}
        Ok(n) => panic!("read {n} bytes from nowhere"),
        Err(e) => assert!(
            !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "not closed: {e}"
        ),
    }
    assert!(t.elapsed() < Duration::from_secs(15));
    assert_eq!(relay.stats().connections, 1);
}

#[test]
fn dropping_the_relay_closes_live_connections() {
    let relay = Relay::start(server(echo), spec(1, None)).unwrap();
    let mut c = connect(&relay);
    c.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    c.read_exact(&mut b).unwrap();
    let t = Instant::now();
    relay.stop();
    match c.read(&mut b) {
        Ok(0) => {}
        Ok(n) => panic!("read {n} bytes after stop"),
        Err(e) => assert!(
            !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "not closed: {e}"
        ),
    }
    assert!(t.elapsed() < Duration::from_secs(15));
}

#[test]
fn spec_built_by_hand_with_extremes_does_not_panic() {
    let wild = LinkSpec {
        delay: Duration::MAX,
        rate: Some(1),
        buffer: 0,
    };
    let relay = Relay::start(server(echo), wild).unwrap();
    let mut c = connect(&relay);
    c.write_all(b"x").unwrap();
    c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    assert!(
        c.read(&mut [0u8; 1]).is_err(),
        "nothing arrives within a lifetime"
    );
    let _ = wild.to_string();
}
