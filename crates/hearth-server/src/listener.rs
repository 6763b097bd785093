//! Serving HTTP on the listening socket with bounds that idle or slow
//! clients cannot get around: at most `max_connections` at once, a
//! deadline for each request's head, and a limit on how long a connection
//! may sit with no request in flight.
//!
//! A flood of connections that send nothing must not take every file
//! descriptor (then `accept` fails and `/healthz` and real requests time
//! out). So when the cap is reached, a new connection closes the oldest
//! one that has no request in flight; a connection serving a request
//! (an exec's event stream included) is never closed for another. Only
//! when every connection is busy is the new one refused.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Bounds on the HTTP connections a server keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Most connections open at once. Keep it well under the process's
    /// open-file limit: VMs and the store need descriptors too.
    pub max_connections: usize,
    /// How long a client has to send a request's head (HTTP/1.1), counted
    /// from when the server starts waiting for it: on a new connection, or
    /// after the previous answer on a kept-alive one. So it also closes a
    /// kept-alive HTTP/1.1 connection idle that long.
    pub header_timeout: Duration,
    /// How long a connection (HTTP/1.1 or HTTP/2) may have no request in
    /// flight before it is closed. A request counts until its answer's
    /// body is sent, so an event stream keeps its connection.
    pub idle_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 2048,
            header_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// One open connection, as the accept loop sees it.
struct Connection {
    /// Requests in flight (until their answer's body is done).
    in_flight: watch::Sender<usize>,
    /// Cancelled to close it at once, for a newer connection.
    evict: CancellationToken,
}

/// The open connections, oldest first.
#[derive(Default)]
struct Connections {
    open: Mutex<BTreeMap<u64, Arc<Connection>>>,
    next: AtomicU64,
    /// Woken whenever one closes.
    closed: Notify,
}

impl Connections {
    fn len(&self) -> usize {
        self.open.lock().len()
    }

    fn add(&self) -> (u64, Arc<Connection>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection {
            in_flight: watch::channel(0).0,
            evict: CancellationToken::new(),
        });
        self.open.lock().insert(id, connection.clone());
        (id, connection)
    }

    fn remove(&self, id: u64) {
        self.open.lock().remove(&id);
        self.closed.notify_waiters();
    }

    /// Close the oldest connection with no request in flight; whether
    /// there was one.
    fn evict_oldest_idle(&self) -> bool {
        let open = self.open.lock();
        let idle = open
            .values()
            .find(|c| *c.in_flight.borrow() == 0 && !c.evict.is_cancelled());
        match idle {
            Some(connection) => {
                connection.evict.cancel();
                true
            }
            None => false,
        }
    }

    /// Wait until every connection has closed.
    async fn drained(&self) {
        loop {
            let closed = self.closed.notified();
            if self.len() == 0 {
                return;
            }
            closed.await;
        }
    }
}

/// Serve `router` on `listener` within `limits` until `stop`, then close
/// idle connections, let requests in flight finish, and return once every
/// connection has closed (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let connections = Arc::new(Connections::default());
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.cancelled() => break,
        };
        let stream = match stream {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of descriptors (EMFILE, ENFILE) or a connection reset
                // before it was accepted: free one, and go on shortly.
                tracing::warn!(%error, open = connections.len(), "accepting a connection failed");
                connections.evict_oldest_idle();
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if connections.len() >= limits.max_connections && !connections.evict_oldest_idle() {
            tracing::warn!(
                max = limits.max_connections,
                "refused a connection: every connection has a request in flight (raise --max-connections)"
            );
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let (id, connection) = connections.add();
        let (builder, router, connections, stop, tls) = (
            builder.clone(),
            router.clone(),
            connections.clone(),
            stop.clone(),
            tls.clone(),
        );
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, router, &builder, &connection, limits, stop).await,
                // The handshake is bounded like a request's head: a client
                // that opens a connection and says nothing holds it no longer.
                Some(tls) => match tokio::time::timeout(limits.header_timeout, tls.accept(stream))
                    .await
                {
                    Ok(Ok(stream)) => {
                        serve_connection(stream, router, &builder, &connection, limits, stop).await
                    }
                    Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                },
            }
            connections.remove(id);
        });
    }
    connections.drained().await;
    Ok(())
}

/// Serve one connection until it ends, is evicted, idles too long, or the
/// server stops (then gracefully: requests in flight finish).
async fn serve_connection<S>(
    stream: S,
    router: Router,
    builder: &auto::Builder<TokioExecutor>,
    connection: &Arc<Connection>,
    limits: HttpLimits,
    stop: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let inner = TowerToHyperService::new(router);
    let counted = connection.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let guard = InFlight::begin(&counted);
        let answer = hyper::service::Service::call(&inner, request);
        async move {
            let response = answer.await?;
            Ok::<_, std::convert::Infallible>(
                response.map(|body| Body::new(crate::buffers::HoldingBody::new(body, guard))),
            )
        }
    });
    let served = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(served);
    let mut closing = false;
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            _ = connection.evict.cancelled() => {
                tracing::debug!("closed an idle connection for a new one");
                return;
            }
            _ = idle_for(connection.in_flight.subscribe(), limits.idle_timeout), if !closing => {
                served.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = stop.cancelled(), if !closing => {
                served.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// Resolves once `in_flight` has stayed at zero for `timeout`.
async fn idle_for(mut in_flight: watch::Receiver<usize>, timeout: Duration) {
    loop {
        if *in_flight.borrow_and_update() == 0 {
            if tokio::time::timeout(timeout, in_flight.changed())
                .await
                .is_err()
            {
                return;
            }
        } else if in_flight.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Counts one request in flight on its connection until dropped.
struct InFlight(Arc<Connection>);

impl InFlight {
    fn begin(connection: &Arc<Connection>) -> Self {
        connection.in_flight.send_modify(|n| *n += 1);
        Self(connection.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|n| *n = n.saturating_sub(1));
    }
}
