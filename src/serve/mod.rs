//! The HTTP listener: accepts connections, plain or TLS, and serves the router on them.
//!
//! hyper serves every connection, except that a plain connection whose first request opens
//! an SSE stream over HTTP/1.x is served by [`stream`] instead. hyper keeps read and write
//! buffers of 8 KB and more for each HTTP/1.1 connection as long as it lives, which would
//! be most of the memory of an idle stream. Over HTTP/2 and TLS every connection goes to
//! hyper.

mod prefixed;
mod stream;

use std::pin::pin;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// A request extension on HTTP/1.x connections: cancelling the token closes the connection
/// at once, even while a write to a client that stopped reading is blocked. A stream uses it
/// to end when the hub disconnects a slow client.
#[derive(Clone, Debug, Default)]
pub struct ConnectionAbort(pub CancellationToken);

/// Settings of the HTTP listener.
#[derive(Clone)]
pub struct ServeOptions {
    /// TLS on every connection when set.
    pub tls: Option<TlsAcceptor>,
    /// Time a client has to send each request head, and to finish the TLS handshake, so
    /// that idle and trickling sockets cannot pile up.
    pub header_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown`. Then it stops accepting and waits for open
/// connections to finish. The caller bounds that wait with the grace period.
pub async fn serve(listener: TcpListener, options: ServeOptions, app: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    let connections = TaskTracker::new();
    loop {
        let (socket, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Running out of file descriptors is the usual cause. It passes as
                    // connections close, so back off instead of spinning.
                    tracing::warn!(%error, "cannot accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let connection = Connection {
            app: app.clone(),
            shutdown: shutdown.clone(),
            peer,
            tasks: connections.clone(),
            header_timeout: options.header_timeout,
        };
        match &options.tls {
            Some(acceptor) => connections.spawn(connection.serve_tls(socket, acceptor.clone())),
            None => connections.spawn(connection.serve_plain(socket)),
        };
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// One accepted connection.
struct Connection {
    app: Router,
    shutdown: CancellationToken,
    peer: std::net::SocketAddr,
    /// Tracks the connection tasks, so that shutdown waits for every one of them.
    tasks: TaskTracker,
    header_timeout: Duration,
}

impl Connection {
    async fn serve_plain(self, mut socket: TcpStream) {
        let head = self.read_first_head(&socket).await;
        match head {
            Some(stream::Head::Stream(mut request)) => {
                let abort = ConnectionAbort::default();
                request.extensions_mut().insert(abort.clone());
                let stops = stream::Stops {
                    shutdown: self.shutdown,
                    abort: abort.0,
                };
                let Some((body, chunked)) = stream::respond(&mut socket, request, self.app, &stops).await else {
                    return;
                };
                // The stream goes on in a task of its own, whose memory is only what
                // writing the stream needs, and this one ends.
                self.tasks.spawn(stream::write_body(socket, body, chunked, stops));
            }
            Some(stream::Head::Other(read)) => {
                Box::pin(self.serve_hyper(prefixed::Prefixed::new(read, socket))).await;
            }
            None => {}
        }
    }

    /// Reads the first request head within the header timeout; `None` when the peer left,
    /// sent none in time, or the server is stopping.
    async fn read_first_head(&self, socket: &TcpStream) -> Option<stream::Head> {
        let head = tokio::select! {
            _ = self.shutdown.cancelled() => return None,
            head = tokio::time::timeout(self.header_timeout, stream::read_head(socket)) => head,
        };
        match head {
            Ok(Ok(head)) => Some(head),
            Ok(Err(error)) => {
                tracing::debug!(peer = %self.peer, %error, "reading the first request failed");
                None
            }
            Err(_) => {
                tracing::debug!(peer = %self.peer, "no request head within the time limit");
                None
            }
        }
    }

    async fn serve_tls(self, socket: TcpStream, acceptor: TlsAcceptor) {
        let accepted = tokio::select! {
            _ = self.shutdown.cancelled() => return,
            accepted = tokio::time::timeout(self.header_timeout, acceptor.accept(socket)) => accepted,
        };
        match accepted {
            Ok(Ok(tls)) => self.serve_hyper(tls).await,
            Ok(Err(error)) => tracing::debug!(peer = %self.peer, %error, "TLS handshake failed"),
            Err(_) => tracing::debug!(peer = %self.peer, "TLS handshake timed out"),
        }
    }

    /// Serves HTTP/1.1 and HTTP/2 with hyper until the peer leaves, and shuts the
    /// connection down gracefully once the server stops.
    async fn serve_hyper<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let abort = ConnectionAbort::default();
        let closer = abort.clone();
        let service = TowerToHyperService::new(self.app.map_request(move |request: Request<Incoming>| {
            let mut request = request.map(Body::new);
            // An HTTP/2 connection carries other streams, so no single one may close it.
            if request.version() <= axum::http::Version::HTTP_11 {
                request.extensions_mut().insert(closer.clone());
            }
            request
        }));
        let mut builder = Builder::new(TokioExecutor::new());
        // The timer enables hyper's limit on the time a client takes to send a request head.
        builder.http1().timer(TokioTimer::new()).header_read_timeout(self.header_timeout);
        let mut connection = pin!(builder.serve_connection_with_upgrades(TokioIo::new(io), service));
        let result = tokio::select! {
            result = connection.as_mut() => result,
            _ = abort.0.cancelled() => return,
            _ = self.shutdown.cancelled() => {
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    result = connection => result,
                    _ = abort.0.cancelled() => return,
                }
            }
        };
        if let Err(error) = result {
            tracing::debug!(peer = %self.peer, %error, "HTTP connection ended with an error");
        }
    }
}
