//! The same channels on the simulator's in-process transport and tokio's
//! paused clock: the signing, envelope and classification code runs with no
//! sockets and no real time, so a 30-second ban costs nothing and the run is
//! deterministic.

use rescind_channel_top::{DamaiChannel, DamaiConfig, GatewayConfig, TbcChannel, TopConfig};
use rescind_core::{
    Channels, Clock, Engine, Limits, MemoryJournal, OrderRef, OrderState, SagaExit, SagaInput,
    SagaOutcome, SplitMix64, StockLockRef, TokioClock,
};
use rescind_sim::{
    defaults, FaultKind, FaultProfile, FaultSpec, OrderSeed, Sim, SimConfig, SimTransport,
};
use rescind_wire::sign::Secret;
use rescind_wire::transport::{RateLimitSettings, TransportStack};
use std::sync::Arc;

#[tokio::test(start_paused = true)]
async fn a_saga_through_a_long_ban_and_a_lost_reply_on_virtual_time() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::with_base(1_762_189_240_000));
    let mut ban = FaultSpec::scripted([FaultKind::RateLimit, FaultKind::LostResponse]);
    ban.rate_limit_ban_secs = 30;
    let sim = Sim::new(SimConfig {
        clock: clock.clone(),
        faults: FaultProfile::none().with("tmall.tbc.order.cancel", ban),
        ..SimConfig::default()
    });
    for (channel, id, status, lock) in [
        ("tmall-tbc", "O1", "WAIT_BUYER_PAY", None),
        ("damai", "L1", "WAIT_PAY", Some("L1")),
    ] {
        sim.add_order(OrderSeed {
            channel: channel.into(),
            order_id: id.into(),
            status: status.into(),
            refund: None,
            stock_lock: lock.map(Into::into),
        });
    }
    let transport = TransportStack::new(Arc::new(SimTransport::new(&sim)))
        .timeout(clock.clone(), 10_000)
        .rate_limit(
            clock.clone(),
            RateLimitSettings {
                rate_per_sec: 5.0,
                burst: 1,
                wait_max_ms: 5_000,
            },
        )
        .build();
    let gateway = GatewayConfig::new(
        "http://sim/router/rest",
        defaults::APP_KEY,
        Secret::new(defaults::APP_SECRET),
    );
    let tbc = Arc::new(
        TbcChannel::new(
            TopConfig::new(gateway.clone()),
            transport.clone(),
            clock.clone(),
        )
        .unwrap(),
    );
    let damai = Arc::new(
        DamaiChannel::new(
            DamaiConfig::new(
                gateway,
                defaults::SUPPLIER_KEY,
                Secret::new(defaults::SUPPLIER_SECRET),
            ),
            transport,
            clock.clone(),
        )
        .unwrap(),
    );
    let engine = Engine::builder(Arc::new(MemoryJournal::new()))
        .clock(clock.clone())
        .rng(Arc::new(SplitMix64::new(7)))
        .limits(Limits {
            backoff_initial_ms: 100,
            ..Limits::default()
        })
        .channels(
            Channels::new()
                .with_cancel("tmall-tbc", tbc.clone())
                .with_lookup("tmall-tbc", tbc)
                .with_stock("damai", damai),
        )
        .build();
    let t0 = clock.now_ms();
    let real = std::time::Instant::now();
    let input = SagaInput::cancel_unpaid(OrderRef::new("tmall-tbc", "O1"))
        .with_stock_lock(StockLockRef::new("damai", "L1"));
    let (_, exit) = engine.run(input).await.unwrap();
    assert!(
        matches!(
            &exit,
            SagaExit::Finished(SagaOutcome::Completed {
                order: OrderState::Cancelled,
                ..
            })
        ),
        "{exit:?}"
    );
    let waited = clock.now_ms() - t0;
    assert!(
        waited >= 30_000,
        "the 30 s ban was not honoured: {waited} ms"
    );
    assert!(
        waited < 40_000,
        "waited far longer than the ban: {waited} ms"
    );
    assert!(
        real.elapsed() < std::time::Duration::from_secs(10),
        "virtual time, not real"
    );
    let counts = sim.effect_counts();
    assert_eq!(
        counts.get(&("cancel_unpaid".into(), "tmall-tbc:O1".into())),
        Some(&1),
        "{counts:?}"
    );
    assert_eq!(
        counts.get(&("release_stock".into(), "damai:L1".into())),
        Some(&1),
        "{counts:?}"
    );
}
