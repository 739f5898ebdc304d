//! Serving an HTTP app on a TCP listener with bounds a stranger cannot stretch, for the
//! merger's HTTP and HTTPS listeners and the agent's beacon endpoint alike.
//!
//! - at most [`Bounds::max_connections`] connections at once (more wait in the kernel's
//!   accept queue), so half-open or idle connections cannot take every file descriptor;
//! - a TLS handshake must finish within [`Bounds::handshake`];
//! - a request's headers must arrive within [`Bounds::header_read`], and the same timer
//!   runs while a kept-alive connection waits for its next request, so an idle or
//!   half-sent connection is closed instead of held for ever;
//! - an accept error (EMFILE) backs off instead of spinning;
//! - handlers see the client's address as axum's `ConnectInfo`, with TLS or without.
//!
//! Bodies are read by the handlers, which bound their size and time themselves.

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// What one listener allows a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections one client address may hold at once; more are closed at accept, so
    /// one address cannot take every place.
    pub per_address: usize,
    /// Longest a TLS handshake may take.
    pub handshake: Duration,
    /// Longest a request's headers (or the wait for the next request) may take.
    pub header_read: Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_connections: 4_096,
            per_address: 512,
            handshake: Duration::from_secs(10),
            header_read: Duration::from_secs(10),
        }
    }
}

/// Accepts connections on `listener` (TLS when `tls` is given) and serves `app` on each
/// (HTTP/1.1) within `bounds`, until `shutdown` resolves; then it stops accepting, asks
/// every open connection to finish its request in flight, and returns once they have.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    bounds: Bounds,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let slots = Arc::new(tokio::sync::Semaphore::new(bounds.max_connections));
    let addresses = Slots::new(bounds.per_address, bounds.max_connections);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => tokio::select! {
                    () = &mut shutdown => break,
                    a = listener.accept() => a.map(|c| (c, permit)),
                },
                Err(_) => break,
            },
        };
        let ((tcp, peer), permit) = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // one address past its share is closed at once (its place goes back)
        let Some(place) = addresses.take(&peer.ip().to_string()) else {
            tracing::debug!(%peer, "connection refused: too many from this address");
            drop(tcp);
            continue;
        };
        let watcher = graceful.watcher();
        // handlers see the client's address, as axum's own server would give it
        let service = TowerToHyperService::new(app.clone().layer(axum::Extension(ConnectInfo(peer))));
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _place = place;
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(bounds.header_read);
            let served = match acceptor {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(tcp), service);
                    watcher.watch(conn.into_owned()).await
                }
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(bounds.handshake, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}

/// A future that never resolves: serve until the task is dropped.
pub async fn forever() {
    std::future::pending::<()>().await
}

/// Places for long-lived things a client holds open (server-sent event streams, QUIC
/// connections): at most a bound per client address and in all, so one address cannot
/// hold every place.
#[derive(Debug)]
pub struct Slots {
    per_address: usize,
    total: usize,
    /// Places taken per address, and in all.
    open: std::sync::Mutex<(std::collections::HashMap<String, usize>, usize)>,
}

/// One place; given back when dropped (when the stream or connection ends).
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    address: String,
}

/// Server-sent event streams one address may hold open at once.
pub const STREAMS_PER_ADDRESS: usize = 32;

impl Slots {
    /// `per_address` places for each address, `total` in all.
    pub fn new(per_address: usize, total: usize) -> Arc<Slots> {
        Arc::new(Slots {
            per_address,
            total,
            open: Default::default(),
        })
    }

    /// Takes a place for `address`, if it has one left and there is one left in all.
    pub fn take(self: &Arc<Self>, address: &str) -> Option<Slot> {
        let mut guard = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (open, total) = &mut *guard;
        if *total >= self.total {
            return None;
        }
        let n = open.entry(address.to_owned()).or_default();
        if *n >= self.per_address {
            return None;
        }
        *n += 1;
        *total += 1;
        Some(Slot {
            slots: self.clone(),
            address: address.to_owned(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut guard = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        let (open, total) = &mut *guard;
        if let Some(n) = open.get_mut(&self.address) {
            *n -= 1;
            *total -= 1;
            if *n == 0 {
                open.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_slots_back_when_its_streams_end() {
        let slots = Slots::new(2, 3);
        let (a, b) = (slots.take("192.0.2.1"), slots.take("192.0.2.1"));
        assert!(a.is_some() && b.is_some());
        assert!(slots.take("192.0.2.1").is_none(), "a third stream from one address");
        let c = slots.take("192.0.2.2");
        assert!(c.is_some(), "other addresses are not affected");
        assert!(slots.take("192.0.2.3").is_none(), "three in all");
        drop(a);
        assert!(
            slots.take("192.0.2.1").is_some(),
            "a slot comes back when its stream ends"
        );
    }
}
