//! The built-in sagas against the simulator running as its own process:
//! channels are wired from a configuration exactly as `rescind worker` wires
//! them (signing, envelopes, classification), orders are seeded through the
//! simulator's admin API before each row.

use anyhow::{anyhow, Context, Result};
use async_trait::async_trait;
use rescind::simconfig::{simulator_channels_toml, SimRateLimits, SimSecretsEnv};
use rescind_core::{
    ChannelError, Channels, OrderLookup, OrderRef, OrderStatus, RefundId, RefundStatus, SagaInput,
    StockLockRef,
};
use rescind_sim::{OrderSeed, RefundSeed};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;

/// One built-in workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// `cancel_unpaid` on tmall-tbc with a Damai stock lock (two steps).
    CancelUnpaidTbcDamai,
    /// `cancel_paid` on pandapon-taobao, the refund completed by the merchant.
    CancelPaidTaobao,
    /// `withdraw_refund` on pandapon-taobao.
    WithdrawRefundTaobao,
    /// `cancel_unpaid` on pandapon-1688.
    CancelUnpaid1688,
}

impl Workload {
    /// All of them, in table order.
    pub const ALL: [Workload; 4] = [
        Workload::CancelUnpaidTbcDamai,
        Workload::CancelPaidTaobao,
        Workload::WithdrawRefundTaobao,
        Workload::CancelUnpaid1688,
    ];
    /// Label for tables.
    pub fn label(&self) -> &'static str {
        match self {
            Workload::CancelUnpaidTbcDamai => "cancel_unpaid tmall-tbc + damai lock",
            Workload::CancelPaidTaobao => "cancel_paid pandapon-taobao (+ refund completion)",
            Workload::WithdrawRefundTaobao => "withdraw_refund pandapon-taobao",
            Workload::CancelUnpaid1688 => "cancel_unpaid pandapon-1688",
        }
    }
    /// Key for JSON.
    pub fn key(&self) -> &'static str {
        match self {
            Workload::CancelUnpaidTbcDamai => "cancel_unpaid_tbc_damai",
            Workload::CancelPaidTaobao => "cancel_paid_taobao",
            Workload::WithdrawRefundTaobao => "withdraw_refund_taobao",
            Workload::CancelUnpaid1688 => "cancel_unpaid_1688",
        }
    }
    /// Upstream calls one saga makes (for reading the figures).
    pub fn upstream_calls(&self) -> &'static str {
        match self {
            Workload::CancelUnpaidTbcDamai => "2 (TOP cancel, Damai release)",
            Workload::CancelPaidTaobao => "2 + 1 admin (cancel, refund poll; admin completes it)",
            Workload::WithdrawRefundTaobao => "1",
            Workload::CancelUnpaid1688 => "1",
        }
    }
    /// Journal records one saga writes (appends plus the finish mark).
    pub fn durable_writes(&self) -> u32 {
        match self {
            // started, intent, outcome, intent, outcome, finished, mark
            Workload::CancelUnpaidTbcDamai => 7,
            // started, intent, outcome, observed, finished, mark
            Workload::CancelPaidTaobao => 6,
            // started, intent, outcome, finished, mark
            Workload::WithdrawRefundTaobao | Workload::CancelUnpaid1688 => 5,
        }
    }

    /// The fixture rows and saga input of saga `i` in row `row`.
    pub fn item(&self, row: u32, i: u64) -> (Vec<OrderSeed>, SagaInput) {
        let seed = |channel: &str, id: &str, status: &str| OrderSeed {
            channel: channel.into(),
            order_id: id.into(),
            status: status.into(),
            refund: None,
            stock_lock: None,
        };
        match self {
            Workload::CancelUnpaidTbcDamai => {
                let id = format!("B{row}T{i:08}");
                let lock = format!("B{row}L{i:08}");
                let mut l = seed("damai", &lock, "WAIT_PAY");
                l.stock_lock = Some(lock.clone());
                let input = SagaInput::cancel_unpaid(OrderRef::new("tmall-tbc", id.as_str()))
                    .with_stock_lock(StockLockRef::new("damai", lock.as_str()));
                (vec![seed("tmall-tbc", &id, "WAIT_BUYER_PAY"), l], input)
            }
            Workload::CancelPaidTaobao => {
                let id = format!("B{row}P{i:08}");
                let input = SagaInput::cancel_paid(OrderRef::new("pandapon-taobao", id.as_str()));
                (
                    vec![seed("pandapon-taobao", &id, "WAIT_SELLER_SEND_GOODS")],
                    input,
                )
            }
            Workload::WithdrawRefundTaobao => {
                let id = format!("B{row}W{i:08}");
                let refund = format!("B{row}R{i:08}");
                let mut s = seed("pandapon-taobao", &id, "WAIT_SELLER_SEND_GOODS");
                s.refund = Some(RefundSeed {
                    refund_id: refund.clone(),
                    status: "WAIT_SELLER_AGREE".into(),
                });
                let input = SagaInput::withdraw_refund(
                    OrderRef::new("pandapon-taobao", id.as_str()),
                    RefundId::from(refund.as_str()),
                );
                (vec![s], input)
            }
            Workload::CancelUnpaid1688 => {
                // 1688 order ids are decimal integers (beyond 2^53 in real life).
                let id =
                    (2_542_285_634_000_000_000u64 + u64::from(row) * 100_000_000 + i).to_string();
                let input = SagaInput::cancel_unpaid(OrderRef::new("pandapon-1688", id.as_str()));
                (vec![seed("pandapon-1688", &id, "waitbuyerpay")], input)
            }
        }
    }
}

/// Empty the simulator and seed the orders of sagas `0..n` of `row`;
/// returns their inputs.
pub async fn seed(
    admin: &reqwest::Client,
    sim_url: &str,
    w: Workload,
    row: u32,
    n: u64,
) -> Result<Vec<SagaInput>> {
    let r = admin
        .post(format!("{sim_url}/_admin/reset"))
        .send()
        .await
        .context("simulator reset")?;
    if !r.status().is_success() {
        return Err(anyhow!("simulator reset: HTTP {}", r.status()));
    }
    let mut rows = Vec::with_capacity(n as usize * 2);
    let mut inputs = Vec::with_capacity(n as usize);
    for i in 0..n {
        let (s, input) = w.item(row, i);
        rows.extend(s);
        inputs.push(input);
    }
    for chunk in rows.chunks(50_000) {
        let r = admin
            .post(format!("{sim_url}/_admin/orders"))
            .json(&json!({ "orders": chunk }))
            .send()
            .await
            .context("seeding orders into the simulator")?;
        if !r.status().is_success() {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            return Err(anyhow!("seeding orders: HTTP {status}: {body}"));
        }
    }
    Ok(inputs)
}

/// The environment variable names the bench configuration reads the
/// simulator's secrets from (answered in-process, never from the real environment).
const BENCH_SECRETS: SimSecretsEnv<'static> = SimSecretsEnv {
    top_app_secret: "BENCH_TOP_SECRET",
    damai_supplier_secret: "BENCH_DAMAI_SECRET",
    pandapon_secret: "BENCH_PANDAPON_SECRET",
};

/// The configuration the built-in channels are wired from (no rate limits
/// below the simulator's capacity: the benchmark measures rescind, not a limiter).
pub fn config_text(sim_url: &str) -> String {
    simulator_channels_toml(
        sim_url,
        &BENCH_SECRETS,
        Some(SimRateLimits {
            top_rate_per_sec: 1_000_000.0,
            top_rate_burst: 100_000,
            pandapon_requests_per_sec_max: 0,
        }),
    )
}

/// Build the channels against `sim_url`, with the pandapon-taobao lookup
/// wrapped so that the merchant completes a refund when the saga first polls it.
pub fn channels(sim_url: &str, admin: reqwest::Client) -> Result<Channels> {
    let env = |v: &str| BENCH_SECRETS.lookup(v);
    let config =
        rescind::config::Config::from_toml_str(&config_text(sim_url), Path::new("."), &env)
            .map_err(|e| anyhow!("bench channel config: {e}"))?;
    let channels = rescind::wiring::build_channels(&config)
        .map_err(|e| anyhow!("bench channel wiring: {e}"))?;
    let name = rescind_core::ChannelName::from("pandapon-taobao");
    let inner = channels
        .lookup(&name)
        .cloned()
        .ok_or_else(|| anyhow!("pandapon-taobao has no lookup"))?;
    Ok(channels.with_lookup(
        "pandapon-taobao",
        Arc::new(CompletingLookup {
            inner,
            admin,
            sim_url: sim_url.to_owned(),
        }),
    ))
}

/// The merchant: before a refund poll, schedule its completion (due at once)
/// through the admin API, so a `cancel_paid` saga finishes on its first poll.
struct CompletingLookup {
    inner: Arc<dyn OrderLookup>,
    admin: reqwest::Client,
    sim_url: String,
}

#[async_trait]
impl OrderLookup for CompletingLookup {
    async fn order_status(
        &self,
        order: &OrderRef,
        account: Option<&rescind_core::AccountId>,
    ) -> Result<OrderStatus, ChannelError> {
        self.inner.order_status(order, account).await
    }
    async fn refund_status(
        &self,
        order: &OrderRef,
        refund_id: &RefundId,
        account: Option<&rescind_core::AccountId>,
    ) -> Result<RefundStatus, ChannelError> {
        let ev = json!({
            "after_ms": 0,
            "channel": order.channel.to_string(),
            "order_id": order.order_id.to_string(),
            "action": "complete_refund",
        });
        self.admin
            .post(format!("{}/_admin/schedule", self.sim_url))
            .json(&ev)
            .send()
            .await
            .map_err(|e| ChannelError::not_applied(format!("admin schedule: {e}")))?;
        self.inner.refund_status(order, refund_id, account).await
    }
}
