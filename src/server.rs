//! Serving: bind, accept (plain TCP or TLS), hand each connection to hyper with the edge as
//! its service, and shut down gracefully: stop accepting, let in-flight requests finish
//! within the grace period, then return so the caller can flush the store.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::app::AppContext;
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
        let connection = Connection {
            ctx: ctx.clone(),
            routes: routes.clone(),
            tls: tls.clone(),
            watcher: graceful.watcher(),
            peer,
        };
        tokio::spawn(async move {
            connection.serve(stream).await;
            drop(permit);
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
        let service = hyper::service::service_fn(move |request| {
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
