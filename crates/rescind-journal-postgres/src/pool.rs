//! A few connections used round-robin, each replaced when it dies.
//!
//! tokio-postgres clients pipeline concurrent queries over one connection, so
//! a handful of connections serve many sagas. A connection that closed (server
//! restart, failover) is reopened on its next use; the query that saw it die
//! fails with a backend error and the engine retries it like any other.

use crate::error::{connect_error, PgError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Mutex;
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

pub(crate) struct Pool {
    cfg: tokio_postgres::Config,
    /// Used unless `ssl_mode` is `disable`; verifies as the mode says.
    tls: MakeRustlsConnect,
    pub(crate) ssl_mode: crate::SslMode,
    pub(crate) target: String,
    slots: Vec<Mutex<Option<Arc<Client>>>>,
    next: AtomicUsize,
}

impl Pool {
    pub(crate) fn new(
        cfg: tokio_postgres::Config,
        (tls, ssl_mode): (MakeRustlsConnect, crate::SslMode),
        target: String,
        size: usize,
    ) -> Self {
        Pool {
            cfg,
            tls,
            ssl_mode,
            target,
            slots: (0..size.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Open one new connection (not pooled), shared.
    pub(crate) async fn connect_one(&self) -> Result<Arc<Client>, PgError> {
        self.connect_raw().await.map(Arc::new)
    }

    /// Open one new connection (not pooled): its driver runs on a task of its own.
    pub(crate) async fn connect_raw(&self) -> Result<Client, PgError> {
        let (client, conn) = self
            .cfg
            .connect(self.tls.clone())
            .await
            .map_err(|e| connect_error(&self.target, self.ssl_mode, &e))?;
        let target = self.target.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!(target_db = %target, error = %crate::error::pg_detail(&e), "journal connection closed");
            }
        });
        Ok(client)
    }

    /// A live connection, reconnecting its slot if the one there died.
    pub(crate) async fn get(&self) -> Result<Arc<Client>, PgError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.is_closed() {
                return Ok(Arc::clone(c));
            }
        }
        let c = self.connect_one().await?;
        *slot = Some(Arc::clone(&c));
        Ok(c)
    }
}
