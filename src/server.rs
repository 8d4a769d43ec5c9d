//! Serving: bind, accept (plain TCP or TLS), hand each connection to hyper with the edge as
//! its service, and shut down gracefully: stop accepting, let in-flight requests finish
//! within the grace period, then return so the caller can flush the store.
//!
//! No client can hold the node's connections or request bodies: each address has at most
//! `server.max_connections_per_address` connections (beyond, new ones are closed at once;
//! trusted proxies are exempt), and every request body must arrive within
//! `server.body_read_timeout_secs`, with no pause longer than `server.body_idle_timeout_secs`.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;

use crate::app::AppContext;
use crate::edge::rate_limit::Caller;
use crate::edge::{self, Routes};

/// A TLS handshake or request header slower than this closes the connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves until `shutdown` resolves, then drains connections.
pub async fn serve(ctx: Arc<AppContext>, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let server_config = &ctx.config.server;
    let addr = SocketAddr::new(server_config.host, server_config.port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    let tls = match server_config.tls {
        true => Some(crate::tls::acceptor(&ctx.config)?),
        false => None,
    };
    let _ = ctx.http_address.set(announce(local, tls.is_some()));

    let routes = edge::routes(ctx.clone());
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(server_config.max_connections));
    let per_address = ConnectionsPerAddress::new(server_config.max_connections_per_address);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let held = if ctx.trusted_proxies.trusts(peer.ip()) {
            None
        } else {
            let Some(held) = per_address.hold(peer.ip()) else {
                tracing::debug!(peer = %peer, "connection refused: too many from this address");
                continue; // the stream is dropped: closed
            };
            Some(held)
        };
        let connection = Connection {
            ctx: ctx.clone(),
            routes: routes.clone(),
            tls: tls.clone(),
            watcher: graceful.watcher(),
            peer,
        };
        tokio::spawn(async move {
            connection.serve(stream).await;
            drop((permit, held));
        });
    }
    drop(listener);
    ctx.closing.send_replace(true);

    let grace = Duration::from_secs(server_config.shutdown_grace_secs);
    tracing::info!(
        open_connections = graceful.count(),
        "shutting down: draining connections"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing the remaining connections"),
    }
    Ok(())
}

/// Prints where to reach the node on stdout (logs go to stderr), for people and scripts;
/// returns its base URL.
fn announce(local: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let host = if local.ip().is_loopback() || local.ip().is_unspecified() {
        "localhost".to_owned()
    } else {
        local.ip().to_string()
    };
    let url = format!("{scheme}://{host}:{}", local.port());
    println!("Sting is listening on {url}/api");
    println!("Open {url}/ in a browser to use Sting.");
    tracing::info!(address = %local, tls, "listening");
    url
}

struct Connection {
    ctx: Arc<AppContext>,
    routes: Routes,
    tls: Option<TlsAcceptor>,
    watcher: Watcher,
    peer: SocketAddr,
}

impl Connection {
    async fn serve(self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        match self.tls.clone() {
            None => self.serve_io(TokioIo::new(stream)).await,
            Some(acceptor) => {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => self.serve_io(TokioIo::new(tls_stream)).await,
                    Ok(Err(err)) => {
                        tracing::debug!(peer = %self.peer, error = %err, "TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(peer = %self.peer, "TLS handshake timed out"),
                }
            }
        }
    }

    async fn serve_io<I>(self, io: TokioIo<I>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            ctx,
            routes,
            watcher,
            peer,
            ..
        } = self;
        let (read_timeout, idle_timeout) = {
            let server = &ctx.config.server;
            (
                Duration::from_secs(server.body_read_timeout_secs),
                Duration::from_secs(server.body_idle_timeout_secs),
            )
        };
        let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
            let request = request.map(|body| DeadlineBody::new(body, read_timeout, idle_timeout));
            edge::handle(ctx.clone(), routes.clone(), request, peer)
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        let connection = builder.serve_connection_with_upgrades(io, service);
        if let Err(err) = watcher.watch(connection.into_owned()).await {
            tracing::debug!(peer = %peer, error = %err, "connection ended with an error");
        }
    }
}

/// Open connections per client address (an IPv6 client is its /64), capped.
struct ConnectionsPerAddress {
    max: usize,
    open: Arc<Mutex<HashMap<Caller, usize>>>,
}

/// One connection counted against its address, until dropped.
struct HeldConnection {
    address: Caller,
    open: Arc<Mutex<HashMap<Caller, usize>>>,
}

impl ConnectionsPerAddress {
    fn new(max: usize) -> ConnectionsPerAddress {
        ConnectionsPerAddress {
            max,
            open: Arc::default(),
        }
    }

    /// Counts a new connection from `ip`, or `None` when the address has its fill.
    fn hold(&self, ip: IpAddr) -> Option<HeldConnection> {
        let address = Caller::address(ip);
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(address.clone()).or_default();
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(HeldConnection {
            address,
            open: self.open.clone(),
        })
    }
}

impl Drop for HeldConnection {
    fn drop(&mut self) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

/// A request body that fails with [`BodyTimedOut`] when it is not received whole within its
/// deadline, or pauses for longer than its idle limit (a client trickling a byte at a time).
pub struct DeadlineBody<B> {
    body: B,
    deadline: Pin<Box<Sleep>>,
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
}

impl<B> DeadlineBody<B> {
    fn new(body: B, read_timeout: Duration, idle_timeout: Duration) -> DeadlineBody<B> {
        DeadlineBody {
            body,
            deadline: Box::pin(tokio::time::sleep(read_timeout)),
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
        }
    }
}

/// Why a request body stopped: it did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received in time")]
pub struct BodyTimedOut;

impl<B> http_body::Body for DeadlineBody<B>
where
    B: http_body::Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            let deadline = Instant::now() + this.idle_timeout;
            this.idle.as_mut().reset(deadline);
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        if this.deadline.as_mut().poll(cx).is_ready() || this.idle.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
