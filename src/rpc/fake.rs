//! A scripted fake peer for fault injection in the client's tests: it plays a
//! fixed list of steps (expect a command and answer with given bytes, stall,
//! close, send garbage) and records every request frame it receives. It is
//! not a server: it keeps no state and computes nothing.

use std::time::Duration;

use shardline_protocol::{
    decode_request_frame, AllocBufferResponse, Command, HelloResponse, Request, Response, Version,
    CONN_CAPS_SIZE, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One step of the script.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    /// Read one request, which must be of this command, and answer with
    /// these raw bytes (nothing for an empty vector).
    Expect(Command, Vec<u8>),
    /// Wait before the next step.
    Sleep(Duration),
    /// Write raw bytes without reading anything.
    Send(Vec<u8>),
    /// Close the connection.
    Close,
    /// Never answer again; read and record until the client goes away.
    Stall,
}

/// What the fake saw.
#[derive(Debug, Default)]
pub(crate) struct Log {
    /// Every complete request frame received, in order.
    pub frames: Vec<Vec<u8>>,
    /// A script violation (unexpected command, undecodable bytes).
    pub error: Option<String>,
    /// Bytes of each read from the socket, in order.
    pub reads: Vec<usize>,
}

impl Log {
    /// The commands received, in order.
    pub fn commands(&self) -> Vec<Command> {
        self.frames
            .iter()
            .filter_map(|f| f.first().and_then(|&b| Command::try_from(b).ok()))
            .collect()
    }

    /// Frame `i`, decoded.
    pub fn request(&self, i: usize) -> Request<'_> {
        let frame = self.frames.get(i).expect("no such frame");
        decode_request_frame(frame)
            .expect("frame decodes")
            .expect("frame complete")
            .0
    }
}

/// A fake peer listening on 127.0.0.1, serving one connection.
#[derive(Debug)]
pub(crate) struct FakeServer {
    pub addr: String,
    task: JoinHandle<Log>,
}

impl FakeServer {
    /// Starts listening and plays `script` on the first connection.
    pub async fn start(script: Vec<Step>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        let task = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            play(stream, script).await
        });
        FakeServer { addr, task }
    }

    /// Waits for the connection to end and returns what was seen.
    pub async fn finish(self) -> Log {
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("fake server did not finish")
            .expect("fake server panicked")
    }
}

/// Reads the next whole frame; `None` at EOF or on undecodable bytes.
async fn next_frame(stream: &mut TcpStream, buf: &mut Vec<u8>, log: &mut Log) -> Option<Vec<u8>> {
    loop {
        match decode_request_frame(buf) {
            Ok(Some((_, n))) => {
                let frame: Vec<u8> = buf.drain(..n).collect();
                log.frames.push(frame.clone());
                return Some(frame);
            }
            Ok(None) => {}
            Err(e) => {
                log.error = Some(format!("undecodable request: {e}"));
                return None;
            }
        }
        let mut chunk = [0u8; 64 * 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => {
                log.reads.push(n);
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

async fn play(mut stream: TcpStream, script: Vec<Step>) -> Log {
    let mut log = Log::default();
    let mut buf = Vec::new();
    for step in script {
        match step {
            Step::Expect(cmd, reply) => {
                let Some(frame) = next_frame(&mut stream, &mut buf, &mut log).await else {
                    if log.error.is_none() {
                        log.error = Some(format!("connection ended while expecting {cmd}"));
                    }
                    return log;
                };
                if frame.first() != Some(&cmd.as_u8()) {
                    log.error = Some(format!(
                        "expected {cmd}, got command byte {:?}",
                        frame.first()
                    ));
                    return log;
                }
                if !reply.is_empty() && stream.write_all(&reply).await.is_err() {
                    return log;
                }
            }
            Step::Sleep(d) => tokio::time::sleep(d).await,
            Step::Send(bytes) => {
                if stream.write_all(&bytes).await.is_err() {
                    return log;
                }
            }
            Step::Close => return log,
            Step::Stall => break,
        }
    }
    // Record whatever else arrives until the client goes away.
    while next_frame(&mut stream, &mut buf, &mut log).await.is_some() {}
    log
}

// ---------------------------------------------------------------- replies

/// The wire bytes of a response.
pub(crate) fn reply(r: Response<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    r.encode(&mut v);
    v
}

/// HELLO answered with `version`.
pub(crate) fn hello(version: Version) -> Step {
    Step::Expect(
        Command::Hello,
        reply(Response::Hello(HelloResponse {
            version,
            conn_caps: [0; CONN_CAPS_SIZE],
        })),
    )
}

/// HELLO (7.0.0) and DEVICE_COUNT answered: what every connect does.
pub(crate) fn handshake(devices: u32) -> Vec<Step> {
    vec![
        hello(PROTOCOL_VERSION),
        Step::Expect(Command::DeviceCount, reply(Response::DeviceCount(devices))),
    ]
}

/// ALLOC_BUFFER and BUFFER_GET_BASE answered.
pub(crate) fn alloc(remote_ptr: u64, size: u64, base: u64) -> Vec<Step> {
    vec![
        Step::Expect(
            Command::AllocBuffer,
            reply(Response::AllocBuffer(AllocBufferResponse {
                remote_ptr,
                remote_size: size,
            })),
        ),
        Step::Expect(Command::BufferGetBase, reply(Response::BufferGetBase(base))),
    ]
}
