//! Shared by the examples, and not part of rescind's API: the channel
//! simulator that stands in for the real gateways, and its admin API
//! (`/_admin/...`) to seed orders, play the merchant, and read the effect log.
//! Your own code talks to real gateways and has none of this.
#![allow(dead_code)]

use anyhow::{Context, Result};
use rescind::sim::{EventAction, OrderSeed, OrderView, ScheduledEvent, Sim, SimConfig, SimServer};
use std::collections::BTreeMap;
use std::time::Duration;

/// The simulator an example talks to: the one at `--sim-url`, or a fresh one
/// served from this process (stopped when this is dropped).
pub struct SimHandle {
    /// `http://HOST:PORT`: the TOP gateway is at `/router/rest`, PandaPon at `/v2/`.
    pub url: String,
    http: reqwest::Client,
    _server: Option<SimServer>,
}

impl SimHandle {
    pub async fn connect_or_start(url: Option<String>) -> Result<SimHandle> {
        let (url, server) = match url {
            Some(u) => (u.trim_end_matches('/').to_owned(), None),
            None => {
                let server = Sim::new(SimConfig::default())
                    .serve("127.0.0.1:0")
                    .await
                    .context("starting the simulator")?;
                (server.base_url.clone(), Some(server))
            }
        };
        Ok(SimHandle {
            url,
            http: reqwest::Client::new(),
            _server: server,
        })
    }

    async fn admin<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T> {
        let resp = req.send().await.context("simulator admin API")?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        anyhow::ensure!(status.is_success(), "simulator admin API: {status}: {body}");
        Ok(serde_json::from_str(&body)?)
    }

    /// Add (or replace) orders in the simulator's book.
    pub async fn add_orders(&self, rows: &[OrderSeed]) -> Result<()> {
        let url = format!("{}/_admin/orders", self.url);
        self.admin::<serde_json::Value>(self.http.post(url).json(rows))
            .await
            .map(drop)
    }

    /// One order as the simulator holds it.
    pub async fn order(&self, channel: &str, order_id: &str) -> Result<OrderView> {
        let url = format!("{}/_admin/orders/{channel}/{order_id}", self.url);
        self.admin(self.http.get(url)).await
    }

    /// How many times each `(op, target)` was applied upstream.
    pub async fn effect_counts(&self) -> Result<BTreeMap<(String, String), u64>> {
        #[derive(serde::Deserialize)]
        struct Count {
            op: String,
            target: String,
            count: u64,
        }
        #[derive(serde::Deserialize)]
        struct Effects {
            counts: Vec<Count>,
        }
        let url = format!("{}/_admin/effects", self.url);
        let e: Effects = self.admin(self.http.get(url)).await?;
        Ok(e.counts
            .into_iter()
            .map(|c| ((c.op, c.target), c.count))
            .collect())
    }

    /// Play the merchant: once the order's refund is open, complete it
    /// (a scheduled `CompleteRefund` event), so a paid cancel can finish.
    pub fn complete_refund_when_open(
        &self,
        channel: &str,
        order_id: &str,
    ) -> tokio::task::JoinHandle<()> {
        let this = SimHandle {
            url: self.url.clone(),
            http: self.http.clone(),
            _server: None,
        };
        let (channel, order_id) = (channel.to_owned(), order_id.to_owned());
        tokio::spawn(async move {
            loop {
                if let Ok(o) = this.order(&channel, &order_id).await {
                    if o.refund_status.as_deref() == Some("WAIT_SELLER_AGREE") {
                        let ev = ScheduledEvent {
                            after_ms: 200,
                            channel,
                            order_id,
                            action: EventAction::CompleteRefund,
                        };
                        let url = format!("{}/_admin/schedule", this.url);
                        let _ = this
                            .admin::<serde_json::Value>(this.http.post(url).json(&ev))
                            .await;
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }
}

/// An order row for the simulator's book.
pub fn seed(channel: &str, order_id: &str, status: &str) -> OrderSeed {
    OrderSeed {
        channel: channel.into(),
        order_id: order_id.into(),
        status: status.into(),
        refund: None,
        stock_lock: None,
    }
}
