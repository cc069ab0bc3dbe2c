//! The accept loop: HTTP/1.1 connections served by hyper with a header read
//! timeout, at most `max_connections` at once.
//!
//! `axum::serve` offers neither a header timeout nor a connection cap, so
//! this loop stands in for it (it serves HTTP/1.1 only, as `axum::serve`
//! does with axum's default features).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::limits::HttpLimits;
use super::state::AppState;

/// Pause after an accept error that is not one client's fault (out of file
/// descriptors, say), so the loop does not spin while it lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(500);

/// Serves `app` on `listener` until `stop` turns true (or its sender goes),
/// then stops accepting and waits for open connections to finish their
/// answers (the caller bounds that wait).
pub(crate) async fn run(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    state: AppState,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper starts the header timer whenever it waits for a request head:
    // on a new connection and on an idle keep-alive one alike.
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let http = Arc::new(http);
    // Owning the connection tasks means dropping this future (when the
    // caller gives up waiting) ends them too.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    // Taken before any byte is read: a client holds a slot
                    // from the moment it is accepted.
                    match slots.clone().try_acquire_owned() {
                        Ok(slot) => {
                            let conn = serve_connection(
                                stream,
                                app.clone(),
                                http.clone(),
                                state.clone(),
                                stop.clone(),
                            );
                            conns.spawn(async move {
                                conn.await;
                                drop(slot);
                            });
                        }
                        Err(_) => {
                            state.connection_refused();
                            refuse(&stream, limits.max_connections);
                        }
                    }
                }
                Err(e) if is_per_connection(&e) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::select! {
                        () = stopped(&mut stop) => break,
                        _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                    }
                }
            },
        }
    }
    // New connections now wait in the kernel's backlog until the process
    // exits, which refuses them.
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// Ends once `stop` is true, or its sender is gone (the server is going away
/// then too).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|&s| s).await;
}

async fn serve_connection(
    stream: TcpStream,
    app: Router,
    http: Arc<hyper::server::conn::http1::Builder>,
    state: AppState,
    mut stop: watch::Receiver<bool>,
) {
    let _open = state.connection_opened();
    // Streamed tokens go out as they come rather than waiting to fill a packet.
    let _ = stream.set_nodelay(true);
    let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    // Header timeouts, resets, malformed requests: the
                    // client's trouble, worth a debug line at most.
                    tracing::debug!(error = %e, "HTTP connection ended");
                }
                return;
            }
            () = stopped(&mut stop), if !stopping => {
                // Finish the answer in flight, then close.
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Turns a connection away with a 503 (closing it). Never waits on the
/// client: a reply that does not fit the socket's buffer at once is dropped.
fn refuse(stream: &TcpStream, limit: usize) {
    let body = serde_json::json!({"error": {
        "message": format!("The server is serving its limit of {limit} connections; try again later."),
        "type": "server_error",
        "param": null,
        "code": "too_many_connections",
    }})
    .to_string();
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(reply.as_bytes());
}

/// Accept errors that concern one connection only (it went away before it
/// was accepted); the loop goes on at once.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    )
}
