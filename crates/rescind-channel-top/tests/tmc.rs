//! The TMC consumer against `rescind-sim` over real HTTP: news from consumed
//! messages reaches the sink under the registered channel name, every
//! message is confirmed (unknown topics too), duplicates and reordering are
//! delivered as they come, a failing consume backs off and recovers, and the
//! heartbeat stops with the consumer.

use rescind_channel_top::tmc::{TmcConfig, TmcConsumer, TmcSink};
use rescind_channel_top::{GatewayConfig, TbcChannel, TopClient, TopConfig};
use rescind_core::{CancelOrder, CancelRequest, ChannelName, Observation, OrderRef, RefundState};
use rescind_sim::{
    defaults, EventAction, FaultKind, FaultProfile, FaultSpec, OrderSeed, ScheduledEvent, Sim,
    SimConfig, TmcSettings,
};
use rescind_wire::sign::Secret;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Sink {
    news: Mutex<Vec<Observation>>,
    beats: Mutex<Vec<String>>,
    stopped: Mutex<Vec<String>>,
}

impl TmcSink for Sink {
    fn deliver(&self, obs: Observation) -> usize {
        self.news.lock().unwrap().push(obs);
        1
    }
    fn heartbeat(&self, channel: &ChannelName, _valid_for: Duration) {
        self.beats.lock().unwrap().push(channel.to_string());
    }
    fn stopped(&self, channel: &ChannelName) {
        self.stopped.lock().unwrap().push(channel.to_string());
    }
}

impl Sink {
    fn completed(&self) -> Vec<String> {
        self.news
            .lock()
            .unwrap()
            .iter()
            .filter_map(|o| match o {
                Observation::Refund { order, status, .. }
                    if status.state == RefundState::Completed =>
                {
                    Some(format!("{order}"))
                }
                _ => None,
            })
            .collect()
    }
}

fn gateway(url: &str) -> GatewayConfig {
    let mut g = GatewayConfig::new(url, defaults::APP_KEY, Secret::new(defaults::APP_SECRET));
    g.transport.timeout_ms = 5_000;
    g
}

async fn until(what: &str, f: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(10), "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Refunds opened by the channel and completed by the sim: each shows up as
/// a completion under the registered name, whatever the duplicates and order.
#[tokio::test]
async fn refund_news_reaches_the_sink_and_every_message_is_confirmed() {
    let sim = Sim::new(SimConfig::default());
    sim.set_tmc(TmcSettings {
        enabled: true,
        duplicate_probability: 0.5,
        reorder: true,
        ..TmcSettings::default()
    })
    .unwrap();
    let server = sim.serve("127.0.0.1:0").await.unwrap();
    let url = format!("{}/router/rest", server.base_url);
    let tbc = TbcChannel::connect(TopConfig::new(gateway(&url))).unwrap();
    let ids: Vec<String> = (0..5).map(|i| format!("M{i}")).collect();
    for id in &ids {
        sim.add_order(OrderSeed {
            channel: "tmall-tbc".into(),
            order_id: id.clone(),
            status: "WAIT_SELLER_SEND_GOODS".into(),
            refund: None,
            stock_lock: None,
        });
        tbc.cancel_paid(&CancelRequest {
            order: OrderRef::new("tmall-tbc", id.as_str()),
            account: None,
            reason: None,
            remark: None,
        })
        .await
        .unwrap();
        sim.schedule(ScheduledEvent {
            after_ms: 0,
            channel: "tmall-tbc".into(),
            order_id: id.clone(),
            action: EventAction::CompleteRefund,
        });
    }
    // An unpaid order paid: a topic the consumer does not use.
    sim.add_order(OrderSeed {
        channel: "tmall-tbc".into(),
        order_id: "U1".into(),
        status: "WAIT_BUYER_PAY".into(),
        refund: None,
        stock_lock: None,
    });
    sim.schedule(ScheduledEvent {
        after_ms: 0,
        channel: "tmall-tbc".into(),
        order_id: "U1".into(),
        action: EventAction::Pay,
    });
    let _ = sim.order("tmall-tbc", "U1");

    let sink = Arc::new(Sink::default());
    let client = TopClient::connect(gateway(&url)).unwrap();
    let cfg = TmcConfig {
        enabled: true,
        quantity: 4,
        poll_interval_ms: 50,
        ..TmcConfig::default()
    };
    let consumer = TmcConsumer::new(client, cfg, "tbc-sg", sink.clone()).unwrap();
    let handle = consumer.spawn();
    until("all completions delivered", || {
        let mut got = sink.completed();
        got.sort();
        got.dedup();
        got.len() == ids.len()
    })
    .await;
    until("every message confirmed", || sim.tmc_stats().queued == 0).await;
    // The sim counts a confirm when it serves it; the consumer counts it
    // when the reply arrives, a moment later.
    until("the consumer counted every confirm", || {
        handle.stats().confirmed >= sim.tmc_stats().published
    })
    .await;
    assert!(handle.is_live());
    let st = sim.tmc_stats();
    let mine = handle.stats();
    assert_eq!(mine.confirmed, st.published, "{mine:?} {st:?}");
    assert_eq!(st.confirmed, st.published);
    assert!(st.duplicated > 0, "the knob made copies: {st:?}");
    assert!(mine.unknown_topic >= 1, "TradeBuyerPay counted: {mine:?}");
    assert_eq!(mine.malformed, 0);
    let mut got = sink.completed();
    got.sort();
    got.dedup();
    let want: Vec<String> = ids.iter().map(|i| format!("tbc-sg/{i}")).collect();
    assert_eq!(got.len(), want.len());
    for (g, i) in got.iter().zip(ids.iter()) {
        assert!(g.contains("tbc-sg") && g.contains(i.as_str()), "{g}");
    }
    assert!(sink.beats.lock().unwrap().iter().all(|c| c == "tbc-sg"));
    handle.stop().await;
    assert_eq!(*sink.stopped.lock().unwrap(), ["tbc-sg"]);
    server.shutdown().await;
}

/// A failing consume is counted and backed off; the consumer recovers, and
/// is not live while it fails.
#[tokio::test]
async fn a_failing_consume_backs_off_and_recovers() {
    let sim = Sim::new(SimConfig::default());
    let server = sim.serve("127.0.0.1:0").await.unwrap();
    let url = format!("{}/router/rest", server.base_url);
    // TMC disabled: every consume is refused.
    let sink = Arc::new(Sink::default());
    let cfg = TmcConfig {
        enabled: true,
        poll_interval_ms: 20,
        backoff_initial_ms: 20,
        backoff_max_ms: 40,
        live_ttl_ms: 200,
        ..TmcConfig::default()
    };
    let client = TopClient::connect(gateway(&url)).unwrap();
    let handle = TmcConsumer::new(client, cfg, "tmall-tbc", sink.clone())
        .unwrap()
        .spawn();
    until("errors counted", || handle.stats().errors >= 3).await;
    assert!(!handle.is_live(), "never consumed: not live");
    assert!(sink.beats.lock().unwrap().is_empty());
    // Enabled, but the next consume fails with a 5xx: recovered after it.
    sim.set_faults(FaultProfile::none().with(
        "taobao.tmc.messages.consume",
        FaultSpec::scripted([FaultKind::Http5xx]),
    ));
    sim.set_tmc(TmcSettings {
        enabled: true,
        ..TmcSettings::default()
    })
    .unwrap();
    until("consuming again", || handle.stats().consumes >= 2).await;
    assert!(handle.is_live());
    assert!(!sink.beats.lock().unwrap().is_empty());
    handle.stop().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_bad_config_is_refused_with_its_key() {
    let client = TopClient::connect(gateway("http://127.0.0.1:9/router/rest")).unwrap();
    let e = TmcConsumer::new(
        client,
        TmcConfig {
            quantity: 500,
            ..TmcConfig::default()
        },
        "tmall-tbc",
        Arc::new(Sink::default()),
    )
    .unwrap_err();
    assert_eq!(e.field, "tmc.quantity");
    assert!(e.to_string().contains("between 1 and 200"), "{e}");
}

/// A sink for a worker that runs none of the sagas: news about the orders
/// in `others` belongs to a saga another worker runs.
struct ElsewhereSink {
    others: Vec<String>,
    keep: std::sync::atomic::AtomicBool,
    seen: Mutex<Vec<String>>,
}

impl TmcSink for ElsewhereSink {
    fn deliver(&self, obs: Observation) -> usize {
        let (Observation::Refund { order, .. } | Observation::Order { order, .. }) = &obs;
        self.seen.lock().unwrap().push(order.order_id.to_string());
        0
    }
    fn heartbeat(&self, _channel: &ChannelName, _valid_for: Duration) {}
    fn stopped(&self, _channel: &ChannelName) {}
    fn keep_for_others<'a>(
        &'a self,
        obs: &'a Observation,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
        let mine = match obs {
            Observation::Refund { order, .. } | Observation::Order { order, .. } => {
                self.others.iter().any(|o| o == order.order_id.as_str())
            }
        };
        let keep = self.keep.load(std::sync::atomic::Ordering::Relaxed);
        Box::pin(async move { keep && mine })
    }
}

/// News for a saga another worker runs stays unconfirmed (TMC hands it out
/// again); everything else is confirmed; once nobody holds it back, it is.
#[tokio::test]
async fn news_for_a_saga_on_another_worker_is_left_unconfirmed() {
    let sim = Sim::new(SimConfig::default());
    sim.set_tmc(TmcSettings {
        enabled: true,
        redeliver_after_ms: 100,
        ..TmcSettings::default()
    })
    .unwrap();
    let server = sim.serve("127.0.0.1:0").await.unwrap();
    let url = format!("{}/router/rest", server.base_url);
    let tbc = TbcChannel::connect(TopConfig::new(gateway(&url))).unwrap();
    for id in ["E0", "E1"] {
        sim.add_order(OrderSeed {
            channel: "tmall-tbc".into(),
            order_id: id.into(),
            status: "WAIT_SELLER_SEND_GOODS".into(),
            refund: None,
            stock_lock: None,
        });
        tbc.cancel_paid(&CancelRequest {
            order: OrderRef::new("tmall-tbc", id),
            account: None,
            reason: None,
            remark: None,
        })
        .await
        .unwrap();
        sim.schedule(ScheduledEvent {
            after_ms: 0,
            channel: "tmall-tbc".into(),
            order_id: id.into(),
            action: EventAction::CompleteRefund,
        });
    }
    let _ = sim.order("tmall-tbc", "E0");
    let sink = Arc::new(ElsewhereSink {
        others: vec!["E0".into()],
        keep: std::sync::atomic::AtomicBool::new(true),
        seen: Mutex::default(),
    });
    let cfg = TmcConfig {
        enabled: true,
        poll_interval_ms: 30,
        ..TmcConfig::default()
    };
    let client = TopClient::connect(gateway(&url)).unwrap();
    let handle = TmcConsumer::new(client, cfg, "tmall-tbc", sink.clone())
        .unwrap()
        .spawn();
    // E0's news comes back again and again: never confirmed.
    until("E0's news handed out again", || {
        sink.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|o| *o == "E0")
            .count()
            >= 3
    })
    .await;
    let st = sim.tmc_stats();
    assert!(st.queued >= 1, "E0's news still queued: {st:?}");
    assert!(st.redelivered >= 1, "{st:?}");
    assert!(handle.stats().kept_for_others >= 3, "{:?}", handle.stats());
    assert!(
        sink.seen.lock().unwrap().iter().any(|o| o == "E1"),
        "E1's news was delivered"
    );
    // Nobody holds it back any more: it is confirmed.
    sink.keep.store(false, std::sync::atomic::Ordering::Relaxed);
    until("every message confirmed", || sim.tmc_stats().queued == 0).await;
    handle.stop().await;
    server.shutdown().await;
}
