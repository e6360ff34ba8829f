//! A test-only worker for the multi-process kill test (`tests/multi_worker.rs`):
//! a rescind engine on a [`PgJournal`] with a scripted channel whose
//! "upstream" is two tables in the same schema.
//!
//! Usage: `pg-test-worker <postgres-url> <schema>`. It recovers (claims)
//! unfinished sagas every 250 ms and runs them until killed. Not part of the
//! product: the real worker is `rescind worker`.
//!
//! The upstream: `upstream_orders(order_id, state)` holds each order's state
//! (`unpaid` / `cancelled`); every cancel call appends a row to
//! `effects(order_id, worker_id, applied)` in the same transaction as the
//! state change, so the test can count calls and effects per order.

use async_trait::async_trait;
use rescind_core::{
    CancelOrder, CancelOutcome, CancelRequest, ChannelError, Channels, Engine, ErrorClass,
    OrderLookup, OrderRef, OrderState, OrderStatus, PermanentReason, RefundId, RefundOpened,
    RefundStatus,
};
use rescind_journal_postgres::{PgConfig, PgJournal};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::Client;

/// The channel name the test's sagas use.
const CHANNEL: &str = "scripted";

struct Scripted {
    db: Client,
    worker: String,
}

fn jitter_ms() -> u64 {
    u64::from(uuid::Uuid::new_v4().as_bytes()[0] % 8)
}

#[async_trait]
impl CancelOrder for Scripted {
    async fn cancel_unpaid(&self, req: &CancelRequest) -> Result<CancelOutcome, ChannelError> {
        // Latency on both sides of the effect, so kills land mid-call too.
        tokio::time::sleep(Duration::from_millis(jitter_ms())).await;
        let row = self
            .db
            .query_one(
                "WITH u AS (UPDATE upstream_orders SET state = 'cancelled'
                            WHERE order_id = $1 AND state = 'unpaid' RETURNING order_id)
                 INSERT INTO effects (order_id, worker_id, applied)
                 SELECT $1, $2, EXISTS (SELECT 1 FROM u)
                 RETURNING applied",
                &[&req.order.order_id.as_str(), &self.worker],
            )
            .await
            .map_err(|e| ChannelError::in_doubt(format!("upstream: {e}")))?;
        let applied: bool = row.get(0);
        tokio::time::sleep(Duration::from_millis(jitter_ms())).await;
        if applied {
            Ok(CancelOutcome { already: false })
        } else {
            Err(ChannelError::new(
                ErrorClass::AlreadyDone,
                "already cancelled",
            ))
        }
    }

    async fn cancel_paid(&self, _req: &CancelRequest) -> Result<RefundOpened, ChannelError> {
        Err(ChannelError::permanent(
            PermanentReason::Unsupported,
            "scripted channel: unpaid orders only",
        ))
    }
}

#[async_trait]
impl OrderLookup for Scripted {
    async fn order_status(
        &self,
        order: &OrderRef,
        _account: Option<&rescind_core::AccountId>,
    ) -> Result<OrderStatus, ChannelError> {
        let row = self
            .db
            .query_opt(
                "SELECT state FROM upstream_orders WHERE order_id = $1",
                &[&order.order_id.as_str()],
            )
            .await
            .map_err(|e| ChannelError::not_applied(format!("upstream lookup: {e}")))?;
        let Some(row) = row else {
            return Err(ChannelError::permanent(
                PermanentReason::NotFound,
                "no such order",
            ));
        };
        let upstream: String = row.get(0);
        let state = if upstream == "cancelled" {
            OrderState::Cancelled
        } else {
            OrderState::PendingPay
        };
        Ok(OrderStatus { state, upstream })
    }

    async fn refund_status(
        &self,
        _order: &OrderRef,
        _refund: &RefundId,
        _account: Option<&rescind_core::AccountId>,
    ) -> Result<RefundStatus, ChannelError> {
        Err(ChannelError::permanent(
            PermanentReason::Unsupported,
            "scripted channel: no refunds",
        ))
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(schema)) = (args.next(), args.next()) else {
        eprintln!("usage: pg-test-worker <postgres-url> <schema>");
        std::process::exit(2);
    };
    let cfg = PgConfig {
        schema: Some(schema.clone()),
        lease_ttl_ms: 1_500,
        lease_renew_interval_ms: 400,
        claim_batch_max: 200,
        ..PgConfig::default()
    };
    let journal = PgJournal::connect(&url, cfg).await?;
    let worker = journal.worker_id().to_owned();
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    db.batch_execute(&format!("SET search_path = \"{schema}\""))
        .await?;
    let ch = Arc::new(Scripted {
        db,
        worker: worker.clone(),
    });
    let channels = Channels::new()
        .with_cancel(CHANNEL, ch.clone())
        .with_lookup(CHANNEL, ch);
    let engine = Engine::builder(Arc::new(journal))
        .channels(channels)
        .build();
    eprintln!("pg-test-worker {worker} up");
    loop {
        match engine.recover().await {
            Ok(r) if r.resumed > 0 => {
                eprintln!("{worker}: resumed {} ({} in doubt)", r.resumed, r.in_doubt)
            }
            Ok(_) => {}
            Err(e) => eprintln!("{worker}: recover: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
