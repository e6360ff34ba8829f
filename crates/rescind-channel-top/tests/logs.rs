//! Everything logged at TRACE while the TOP channels work (and fail) against
//! the simulator is captured; no secret may appear in it, nor in `Debug`.

use rescind_channel_top::{DamaiChannel, DamaiConfig, GatewayConfig, TbcChannel, TopConfig};
use rescind_core::{
    CancelOrder, CancelRequest, Channels, Engine, Limits, MemoryJournal, OrderLookup, OrderRef,
    ReleaseStock, SagaInput, StockLockRef,
};
use rescind_sim::{defaults, FaultKind, FaultProfile, FaultSpec, OrderSeed, Sim, SimConfig};
use rescind_wire::sign::{Secret, SignMethod};
use std::io::Write;
use std::sync::{Arc, Mutex};

const SESSION: &str = "session-value-s3cr3t";
const WRONG: &str = "wrong-app-s3cr3t";

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
    type Writer = Buffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn seed(channel: &str, id: &str, status: &str, lock: Option<&str>) -> OrderSeed {
    OrderSeed {
        channel: channel.into(),
        order_id: id.into(),
        status: status.into(),
        refund: None,
        stock_lock: lock.map(Into::into),
    }
}

// One thread, so the subscriber set for it sees the simulator's and the
// engine's tasks too.
#[tokio::test(flavor = "current_thread")]
async fn logs_never_contain_a_secret() {
    let buf = Buffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(buf.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let sim = Sim::new(SimConfig::default());
    let server = sim.serve("127.0.0.1:0").await.unwrap();
    let url = format!("{}/router/rest", server.base_url);
    sim.add_order(seed("tmall-tbc", "O1", "WAIT_BUYER_PAY", None));
    sim.add_order(seed("tmall-tbc", "O2", "WAIT_BUYER_PAY", None));
    sim.add_order(seed("tmall-tbc", "O3", "WAIT_SELLER_SEND_GOODS", None));
    sim.add_order(seed("damai", "L1", "WAIT_PAY", Some("L1")));

    let mut gateway = GatewayConfig::new(
        url.as_str(),
        defaults::APP_KEY,
        Secret::new(defaults::APP_SECRET),
    );
    gateway.session = Some(Secret::new(SESSION));
    let tbc = Arc::new(TbcChannel::connect(TopConfig::new(gateway.clone())).unwrap());
    let damai = Arc::new(
        DamaiChannel::connect(DamaiConfig::new(
            gateway.clone(),
            defaults::SUPPLIER_KEY,
            Secret::new(defaults::SUPPLIER_SECRET),
        ))
        .unwrap(),
    );
    let req = |id: &str| CancelRequest {
        account: None,
        order: OrderRef::new("tmall-tbc", id),
        reason: Some("buyer asked".into()),
        remark: None,
    };

    // Successes, business failures, lookups.
    tbc.cancel_unpaid(&req("O1")).await.unwrap();
    tbc.cancel_unpaid(&req("O1")).await.unwrap_err();
    tbc.cancel_paid(&req("O3")).await.unwrap();
    tbc.order_status(&OrderRef::new("tmall-tbc", "O3"), None)
        .await
        .unwrap();
    tbc.cancel_unpaid(&req("missing")).await.unwrap_err();

    // Authentication failures, with wrong secrets.
    let mut wrong = gateway.clone();
    wrong.app_secret = Secret::new(WRONG);
    wrong.sign_method = SignMethod::Md5;
    TbcChannel::connect(TopConfig::new(wrong.clone()))
        .unwrap()
        .cancel_unpaid(&req("O2"))
        .await
        .unwrap_err();
    let bad_head = DamaiChannel::connect(DamaiConfig::new(
        gateway.clone(),
        defaults::SUPPLIER_KEY,
        Secret::new(WRONG),
    ))
    .unwrap();
    bad_head
        .release_stock(&StockLockRef::new("damai", "L1"), None)
        .await
        .unwrap_err();

    // A saga through faults: a lost response, an isp fault, then the stock release.
    sim.set_faults(FaultProfile::none().with(
        "tmall.tbc.order.cancel",
        FaultSpec::scripted([FaultKind::LostResponse, FaultKind::Isp]),
    ));
    let limits = Limits {
        backoff_initial_ms: 5,
        backoff_max_ms: 20,
        ..Limits::default()
    };
    let engine = Engine::builder(Arc::new(MemoryJournal::new()))
        .channels(
            Channels::new()
                .with_cancel("tmall-tbc", tbc.clone())
                .with_lookup("tmall-tbc", tbc.clone())
                .with_stock("damai", damai.clone()),
        )
        .limits(limits)
        .build();
    let input = SagaInput::cancel_unpaid(OrderRef::new("tmall-tbc", "O2"))
        .with_stock_lock(StockLockRef::new("damai", "L1"));
    engine.run(input).await.unwrap();

    // Debug output of everything that holds a secret.
    tracing::info!(tbc = ?tbc, damai = ?damai, gateway = ?gateway, "debug of the channels");

    server.shutdown().await;
    drop(_guard);
    let logs = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    // The capture works: the calls were logged, at trace level too.
    assert!(logs.contains("TOP call"), "nothing captured:\n{logs}");
    assert!(logs.contains("TOP reply"), "no trace-level lines:\n{logs}");
    assert!(logs.contains("debug of the channels"));
    for secret in [
        defaults::APP_SECRET,
        defaults::SUPPLIER_SECRET,
        SESSION,
        WRONG,
    ] {
        assert!(
            !logs.contains(secret),
            "secret {secret:?} leaked into the logs:\n{logs}"
        );
    }
}
