//! Serving a router on a listener that strangers can reach.
//!
//! `axum::serve` has no header-read timeout and no connection cap, so a few
//! thousand idle sockets exhaust the worker's file descriptors. Here each
//! connection is served by hyper's HTTP/1.1 connection with its
//! header-read timeout (a client that has not sent a whole request head in
//! time is closed, whether it sent nothing or a byte a second), every request
//! by tower-http's timeout (408) and body limit (413), and the number of
//! open connections is capped. At the cap, the oldest connection that is
//! *waiting for a request head* is closed to admit the new one: idle and
//! slow-header sockets cannot lock out a health check or an operator, and a
//! request being served is never cut off to make room.

use axum::http::{Request, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tower::ServiceExt;

/// The limits of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeLimits {
    /// A connection that has not sent a complete request head this long
    /// after it opened (or after its previous response) is closed.
    pub header_read_timeout: Duration,
    /// A request not answered in this time is answered 408.
    pub request_timeout: Duration,
    /// Connections open at once; at the cap the oldest one waiting for a
    /// request head is closed to make room.
    pub max_connections: usize,
    /// Largest request body accepted; larger ones are answered 413.
    pub body_limit_bytes: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 1024,
            body_limit_bytes: 256 * 1024,
        }
    }
}

/// What a listener saw since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServeStats {
    /// Connections open now.
    pub open: u64,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections closed to make room at the cap (they were waiting for a
    /// request head).
    pub evicted: u64,
    /// Connections refused at the cap because every open one was busy.
    pub refused: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    evicted: AtomicU64,
    refused: AtomicU64,
}

struct Slot {
    /// Set while a request is being served.
    busy: Arc<AtomicBool>,
    evict: Option<oneshot::Sender<()>>,
}

#[derive(Default)]
struct Registry {
    next: u64,
    /// By admission order: the first idle one is the oldest.
    conns: BTreeMap<u64, Slot>,
}

/// A listener being served; [`Served::stats`] reads its counters.
#[derive(Clone, Default)]
pub struct Served {
    registry: Arc<Mutex<Registry>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Served {
    /// The listener's counters now.
    pub fn stats(&self) -> ServeStats {
        let open = self.lock().conns.len() as u64;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServeStats {
            open,
            accepted: g(&self.counters.accepted),
            evicted: g(&self.counters.evicted),
            refused: g(&self.counters.refused),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding this lock leaves a map that is still whole.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admit a connection, closing the oldest idle one at the cap; `None`
    /// when the cap is reached and every connection is busy.
    fn admit(&self, max: usize) -> Option<(u64, Arc<AtomicBool>, oneshot::Receiver<()>)> {
        let mut r = self.lock();
        if r.conns.len() >= max {
            let oldest_idle = r
                .conns
                .iter()
                .find(|(_, s)| !s.busy.load(Ordering::Acquire))
                .map(|(id, _)| *id);
            match oldest_idle {
                Some(id) => {
                    if let Some(mut slot) = r.conns.remove(&id) {
                        if let Some(tx) = slot.evict.take() {
                            let _ = tx.send(());
                        }
                    }
                    self.counters.evicted.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    self.counters.refused.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            }
        }
        let id = r.next;
        r.next += 1;
        let busy = Arc::new(AtomicBool::new(false));
        let (tx, rx) = oneshot::channel();
        r.conns.insert(
            id,
            Slot {
                busy: busy.clone(),
                evict: Some(tx),
            },
        );
        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        Some((id, busy, rx))
    }

    fn leave(&self, id: u64) {
        self.lock().conns.remove(&id);
    }
}

/// Removes a connection from the registry however its task ends.
struct Leave(Served, u64);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.leave(self.1);
    }
}

/// Clears a connection's busy mark however its request ends.
struct Busy(Arc<AtomicBool>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The connection cap that fits the process's open-file limit: the soft
/// limit is raised to the hard one where allowed, and `wanted` is lowered
/// (with a warning) if it would still not leave room for the journal,
/// the callback store and outbound calls.
pub fn fit_max_connections(wanted: usize) -> usize {
    const RESERVE: u64 = 256;
    let limit = raise_nofile_limit();
    match limit {
        Some(n) if (wanted as u64).saturating_add(RESERVE) > n => {
            let fit = n.saturating_sub(RESERVE).max(16) as usize;
            tracing::warn!(
                wanted,
                fit,
                open_file_limit = n,
                "worker.max_connections lowered to fit the open-file limit (raise it with ulimit -n)"
            );
            fit
        }
        _ => wanted,
    }
}

/// Raise the soft open-file limit to the hard one; the limit in force after.
fn raise_nofile_limit() -> Option<u64> {
    rlimit::increase_nofile_limit(u64::MAX).ok()
}

/// Serve `app` on `listener` under `limits` until `shutdown` resolves; then
/// stop accepting, let every open connection finish its request, and return
/// once all are closed. `served` carries the counters (pass a fresh
/// [`Served::default`] and keep a clone to read them).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    served: Served,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = app
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            limits.body_limit_bytes,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    let mut tasks = tokio::task::JoinSet::new();
    let mut last_warn: Option<tokio::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => r,
            // Reap finished connection tasks as they end.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of file descriptors (or another accept failure): wait
                // a little rather than spin; connections closing free room.
                let quiet = matches!(last_warn, Some(t) if t.elapsed() < Duration::from_secs(10));
                if !quiet {
                    tracing::warn!(error = %e, "accepting a connection failed; retrying");
                    last_warn = Some(tokio::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Some((id, busy, evicted)) = served.admit(limits.max_connections) else {
            // Every connection is serving a request: closing this one is
            // all that is left (the client sees a reset and may retry).
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let leave = Leave(served.clone(), id);
        let app = app.clone();
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            let _leave = leave;
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let mark = Busy(busy.clone());
                busy.store(true, Ordering::Release);
                let app = app.clone();
                async move {
                    let resp = app.oneshot(req).await;
                    drop(mark);
                    resp
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                // Closed to make room: drop the connection (and its socket).
                _ = evicted => return,
                _ = stop.wait_for(|s| *s) => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room_and_busy_ones_stay() {
        let s = Served::default();
        let (a, busy_a, _rx_a) = s.admit(2).unwrap();
        let (_b, _busy_b, mut rx_b) = s.admit(2).unwrap();
        busy_a.store(true, Ordering::Release);
        // Full: `a` is busy, so `b` (idle) is the one closed.
        let (_c, busy_c, _rx_c) = s.admit(2).unwrap();
        assert!(rx_b.try_recv().is_ok(), "b was told to close");
        assert_eq!(s.stats().evicted, 1);
        assert_eq!(s.stats().open, 2);
        // Both busy: a new connection is refused, nobody is cut off.
        busy_c.store(true, Ordering::Release);
        assert!(s.admit(2).is_none());
        assert_eq!(s.stats().refused, 1);
        s.leave(a);
        assert_eq!(s.stats().open, 1);
        assert!(s.admit(2).is_some());
        assert_eq!(s.stats().accepted, 4);
    }
}
