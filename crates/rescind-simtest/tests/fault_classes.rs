//! The simulator's permanent and credentials fault kinds, as the real
//! channel crates classify them: each later-step endpoint the
//! later-step-failures mode uses answers `Permanent(InvalidRequest)`,
//! `Permanent(Auth)` or `Permanent(InvalidSession)` (PandaPon, which has no
//! sessions: `Auth`), and nothing is applied upstream.

use rescind_channel_pandapon::{PandaponClient, PandaponConfig, PandaponTaobao, TAOBAO_CHANNEL};
use rescind_channel_top::{DamaiChannel, DamaiConfig, GatewayConfig, TbcChannel, TopConfig};
use rescind_core::{
    CancelRefund, Clock, ErrorClass, OrderLookup, OrderRef, PermanentReason, RefundId,
    ReleaseStock, StockLockRef, TokioClock, WithdrawRequest,
};
use rescind_sim::{
    defaults, FaultKind, FaultProfile, FaultSpec, OrderSeed, RefundSeed, Sim, SimConfig,
    SimTransport,
};
use rescind_simtest::swarm::LATER_STEP_ENDPOINTS;
use rescind_wire::sign::Secret;
use std::sync::Arc;

fn seed(channel: &str, id: &str, status: &str) -> OrderSeed {
    OrderSeed {
        channel: channel.into(),
        order_id: id.into(),
        status: status.into(),
        refund: None,
        stock_lock: None,
    }
}

#[tokio::test]
async fn later_step_faults_classify_as_permanent_and_are_not_applied() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::system());
    let sim = Sim::new(SimConfig {
        clock: clock.clone(),
        ..SimConfig::default()
    });
    sim.add_order(OrderSeed {
        stock_lock: Some("D1".into()),
        ..seed("damai", "D1", "WAIT_PAY")
    });
    sim.add_order(seed("tmall-tbc", "T1", "WAIT_BUYER_PAY"));
    sim.add_order(OrderSeed {
        refund: Some(RefundSeed {
            refund_id: "RW1".into(),
            status: "WAIT_SELLER_AGREE".into(),
        }),
        ..seed(
            TAOBAO_CHANNEL,
            "3100000000000000001",
            "WAIT_SELLER_SEND_GOODS",
        )
    });
    let transport = Arc::new(SimTransport::new(&sim));
    let gateway = GatewayConfig::new(
        "http://sim/router/rest",
        defaults::APP_KEY,
        Secret::new(defaults::APP_SECRET),
    );
    let tbc = TbcChannel::new(
        TopConfig::new(gateway.clone()),
        transport.clone(),
        clock.clone(),
    )
    .unwrap();
    let damai = DamaiChannel::new(
        DamaiConfig::new(
            gateway,
            defaults::SUPPLIER_KEY,
            Secret::new(defaults::SUPPLIER_SECRET),
        ),
        transport.clone(),
        clock.clone(),
    )
    .unwrap();
    let taobao = PandaponTaobao::new(Arc::new(
        PandaponClient::new(
            PandaponConfig::new(
                "http://sim",
                defaults::PANDAPON_ACCESS_KEY,
                Secret::new(defaults::PANDAPON_SECRET),
                defaults::PANDAPON_USER_ID,
            ),
            transport,
            clock,
        )
        .unwrap(),
    ));
    let call = |endpoint: &'static str| {
        let (tbc, damai, taobao) = (&tbc, &damai, &taobao);
        async move {
            match endpoint {
                "alibaba.damai.yuntoc.order.cancellockstock" => damai
                    .release_stock(&StockLockRef::new("damai", "D1"), None)
                    .await
                    .map(|_| ()),
                "pandapon.taobao.refund.cancel" => taobao
                    .withdraw_refund(&WithdrawRequest {
                        account: None,
                        order: OrderRef::new(TAOBAO_CHANNEL, "3100000000000000001"),
                        refund_id: RefundId("RW1".into()),
                    })
                    .await
                    .map(|_| ()),
                "tmall.tbc.order.get" => tbc
                    .order_status(&OrderRef::new("tmall-tbc", "T1"), None)
                    .await
                    .map(|_| ()),
                other => panic!("no call for {other}"),
            }
        }
    };
    for endpoint in LATER_STEP_ENDPOINTS {
        let pandapon = endpoint.starts_with("pandapon.");
        for (kind, want) in [
            (FaultKind::Permanent, PermanentReason::InvalidRequest),
            (FaultKind::Auth, PermanentReason::Auth),
            (
                FaultKind::InvalidSession,
                if pandapon {
                    PermanentReason::Auth
                } else {
                    PermanentReason::InvalidSession
                },
            ),
        ] {
            sim.set_faults(FaultProfile::none().with(endpoint, FaultSpec::always(kind)));
            let e = call(endpoint)
                .await
                .expect_err("an injected refusal is an error");
            assert_eq!(
                e.class,
                ErrorClass::Permanent(want.clone()),
                "{endpoint} {kind:?}: {e}"
            );
        }
    }
    assert!(sim.effects().is_empty(), "{:?}", sim.effects());
    assert_eq!(
        sim.order("damai", "D1").unwrap().stock_lock_held,
        Some(true)
    );
    // Once the fault stops, the same calls go through.
    sim.set_faults(FaultProfile::none());
    for endpoint in LATER_STEP_ENDPOINTS {
        call(endpoint)
            .await
            .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
    }
    assert_eq!(sim.effects().len(), 2, "{:?}", sim.effects());
}
