//! Logs at TRACE level, across successes and every kind of failure, never
//! contain the secret or a signature; neither do errors and `Debug` output.

use rescind_channel_pandapon::callback::{CallbackReceiver, MemoryCallbackStore};
use rescind_channel_pandapon::{
    Pandapon1688, PandaponClient, PandaponConfig, PandaponTaobao, ALIBABA_CHANNEL, TAOBAO_CHANNEL,
};
use rescind_core::{
    CancelOrder, CancelRefund, CancelRequest, Engine, MemoryJournal, OrderLookup, OrderRef,
    RefundId, TokioClock, WithdrawRequest,
};
use rescind_sim::{
    defaults, FaultKind, FaultProfile, FaultSpec, OrderSeed, RefundSeed, Sim, SimConfig,
};
use rescind_wire::sign::Secret;
use rescind_wire::transport::{ReqwestSettings, ReqwestTransport, Transport};
use std::io::Write;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn secret_never_logged() {
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let sim = Sim::new(SimConfig::default());
    sim.add_order(OrderSeed {
        channel: ALIBABA_CHANNEL.into(),
        order_id: "2542285634920880794".into(),
        status: "waitbuyerpay".into(),
        refund: None,
        stock_lock: None,
    });
    sim.add_order(OrderSeed {
        channel: TAOBAO_CHANNEL.into(),
        order_id: "T1".into(),
        status: "WAIT_SELLER_SEND_GOODS".into(),
        refund: Some(RefundSeed {
            refund_id: "R1".into(),
            status: "WAIT_SELLER_AGREE".into(),
        }),
        stock_lock: None,
    });
    let server = sim.serve("127.0.0.1:0").await.unwrap();
    let mk = |secret: &str| {
        let t: Arc<dyn Transport> =
            Arc::new(ReqwestTransport::new(ReqwestSettings::default()).unwrap());
        let cfg = PandaponConfig::new(
            &server.base_url,
            defaults::PANDAPON_ACCESS_KEY,
            Secret::new(secret),
            defaults::PANDAPON_USER_ID,
        );
        Arc::new(PandaponClient::new(cfg, t, Arc::new(TokioClock::system())).unwrap())
    };
    let good = mk(defaults::PANDAPON_SECRET);
    let bad = mk("another-secret-value");
    let mut texts = vec![format!("{good:?}"), format!("{:?}", good.config())];
    let a = Pandapon1688::new(good.clone());
    let t = PandaponTaobao::new(good.clone());
    let o = OrderRef::new(ALIBABA_CHANNEL, "2542285634920880794");
    let cancel = |order: OrderRef| CancelRequest {
        account: None,
        order,
        reason: Some("r".into()),
        remark: None,
    };
    texts.push(format!("{:?}", a.order_status(&o, None).await));
    texts.push(format!("{:?}", a.cancel_unpaid(&cancel(o.clone())).await));
    texts.push(format!("{:?}", a.cancel_unpaid(&cancel(o.clone())).await)); // 1001
    texts.push(format!(
        "{:?}",
        Pandapon1688::new(bad.clone()).order_status(&o, None).await
    )); // 401
    let tw = WithdrawRequest {
        account: None,
        order: OrderRef::new(TAOBAO_CHANNEL, "T1"),
        refund_id: RefundId("R1".into()),
    };
    sim.set_faults(FaultProfile::everywhere(FaultSpec {
        script: vec![FaultKind::Http5xx, FaultKind::LostResponse],
        ..FaultSpec::default()
    }));
    texts.push(format!("{:?}", t.withdraw_refund(&tw).await)); // 5xx
    texts.push(format!("{:?}", t.withdraw_refund(&tw).await)); // lost
    sim.set_faults(FaultProfile::none());
    texts.push(format!(
        "{:?}",
        t.refund_status(&tw.order, &tw.refund_id, None).await
    ));
    let rx = CallbackReceiver::new(
        Arc::new(MemoryCallbackStore::new()),
        Arc::new(Engine::builder(Arc::new(MemoryJournal::new())).build()),
    );
    texts.push(format!("{:?} {:?}", t, SimConfig::default()));
    rx.receive(b"{bad").await;
    rx.receive(
        br#"{"messageType":"WHATEVER","messageBody":"{}","messagePlatform":0,"timestamp":1}"#,
    )
    .await;
    rx.settled().await;
    server.shutdown().await;

    let logs = String::from_utf8_lossy(&buf.0.lock().unwrap()).to_string();
    assert!(
        logs.contains("pandapon call"),
        "the test must see the client's logs:\n{logs}"
    );
    assert!(logs.contains("WHATEVER"), "and the receiver's:\n{logs}");
    let all = format!("{logs}\n{}", texts.join("\n"));
    // The access key is a secret too (it identifies the account on every request).
    for secret in [
        defaults::PANDAPON_SECRET,
        defaults::PANDAPON_ACCESS_KEY,
        "another-secret-value",
    ] {
        assert!(!all.contains(secret), "secret leaked:\n{all}");
    }
    assert!(
        !all.to_ascii_lowercase().contains("signature:"),
        "headers leaked:\n{all}"
    );
}
