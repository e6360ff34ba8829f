//! rescind-channel-pandapon against rescind-sim over real HTTP on loopback:
//! sagas through the engine, callbacks pushed by the simulator into the
//! receiver, lost responses, and the simulator's effect log.

use rescind_channel_pandapon::callback::{CallbackChannels, CallbackReceiver, FileCallbackStore};
use rescind_channel_pandapon::status::Platform;
use rescind_channel_pandapon::{
    Pandapon1688, PandaponClient, PandaponConfig, PandaponTaobao, ALIBABA_CHANNEL, TAOBAO_CHANNEL,
};
use rescind_core::{
    CancelOrder, CancelRefund, CancelRequest, Channels, Engine, ErrorClass, Limits, MemoryJournal,
    OrderLookup, OrderRef, OrderState, PermanentReason, Record, RefundId, SagaExit, SagaInput,
    SagaOutcome, TokioClock, Via, WithdrawRequest,
};
use rescind_sim::{
    defaults, CallbackConfig, EventAction, FaultKind, FaultProfile, FaultSpec, LostResponseMode,
    OrderSeed, RefundSeed, ScheduledEvent, Sim, SimConfig, SimServer,
};
use rescind_wire::sign::Secret;
use rescind_wire::transport::{ReqwestSettings, ReqwestTransport, Transport};
use std::sync::Arc;
use std::time::Duration;

const BIG_1688_ID: &str = "2542285634920880794";

struct Fixture {
    sim: Sim,
    server: SimServer,
    client: Arc<PandaponClient>,
    engine: Engine,
    journal: Arc<MemoryJournal>,
    receiver: CallbackReceiver,
    _dir: tempfile::TempDir,
}

fn config(base_url: &str) -> PandaponConfig {
    PandaponConfig::new(
        base_url,
        defaults::PANDAPON_ACCESS_KEY,
        Secret::new(defaults::PANDAPON_SECRET),
        defaults::PANDAPON_USER_ID,
    )
}

fn client_for(cfg: PandaponConfig) -> Arc<PandaponClient> {
    let transport: Arc<dyn Transport> = Arc::new(
        ReqwestTransport::new(ReqwestSettings {
            connect_timeout_ms: 2_000,
            request_timeout_ms: 5_000,
        })
        .unwrap(),
    );
    Arc::new(PandaponClient::new(cfg, transport, Arc::new(TokioClock::system())).unwrap())
}

/// A simulator, a client over real HTTP, an engine with both PandaPon
/// channels, and the callback receiver served on loopback (its URL given to
/// the simulator). Refund polls start after an hour: completion must come by callback.
async fn fixture(callbacks: CallbackConfig, orders: Vec<OrderSeed>) -> Fixture {
    fixture_named(callbacks, orders, TAOBAO_CHANNEL, ALIBABA_CHANNEL).await
}

/// [`fixture`] with the two channels registered under the given names (the
/// receiver told so, as the worker's wiring does from the configuration).
async fn fixture_named(
    callbacks: CallbackConfig,
    orders: Vec<OrderSeed>,
    taobao_name: &str,
    alibaba_name: &str,
) -> Fixture {
    let sim = Sim::new(SimConfig {
        callbacks,
        ..SimConfig::default()
    });
    for o in orders {
        sim.add_order(o);
    }
    let server = sim.serve("127.0.0.1:0").await.unwrap();
    let client = client_for(config(&server.base_url));
    let taobao = Arc::new(PandaponTaobao::new(client.clone()));
    let a1688 = Arc::new(Pandapon1688::new(client.clone()));
    let journal = Arc::new(MemoryJournal::new());
    let engine = Engine::builder(journal.clone())
        .channels(
            Channels::new()
                .with_cancel(taobao_name, taobao.clone())
                .with_refund(taobao_name, taobao.clone())
                .with_lookup(taobao_name, taobao)
                .with_cancel(alibaba_name, a1688.clone())
                .with_lookup(alibaba_name, a1688),
        )
        .limits(Limits {
            backoff_initial_ms: 10,
            refund_poll_initial_ms: 3_600_000,
            ..Default::default()
        })
        .build();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FileCallbackStore::open(dir.path().join("callbacks.jsonl")).unwrap());
    let receiver = CallbackReceiver::new(store, Arc::new(engine.clone())).with_channels(
        CallbackChannels::none()
            .with(Platform::Taobao, taobao_name)
            .with(Platform::Alibaba, alibaba_name),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = receiver.router();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    sim.set_callback_url(Some(format!("http://{addr}{}", receiver.path())));
    Fixture {
        sim,
        server,
        client,
        engine,
        journal,
        receiver,
        _dir: dir,
    }
}

fn order(channel: &str, id: &str, status: &str, refund: Option<(&str, &str)>) -> OrderSeed {
    OrderSeed {
        channel: channel.into(),
        order_id: id.into(),
        status: status.into(),
        refund: refund.map(|(r, s)| RefundSeed {
            refund_id: r.into(),
            status: s.into(),
        }),
        stock_lock: None,
    }
}

impl Fixture {
    /// On failure: what the simulator applied and pushed, and what the receiver did.
    fn context(&self) -> String {
        format!(
            "effects: {:#?}\npushes: {:#?}\nreceiver: {:?}",
            self.sim.effects(),
            self.sim.pushes(),
            self.receiver.stats()
        )
    }
    fn count(&self, op: &str, target: &str) -> u64 {
        self.sim
            .effect_counts()
            .get(&(op.to_owned(), target.to_owned()))
            .copied()
            .unwrap_or(0)
    }
    fn assert_each_effect_once(&self) {
        for ((op, target), n) in self.sim.effect_counts() {
            assert_eq!(n, 1, "{op} {target} applied {n} times\n{}", self.context());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_unpaid_1688_big_id_as_a_saga() {
    let f = fixture(
        CallbackConfig::default(),
        vec![order(ALIBABA_CHANNEL, BIG_1688_ID, "waitbuyerpay", None)],
    )
    .await;
    let o = OrderRef::new(ALIBABA_CHANNEL, BIG_1688_ID);
    let (_id, exit) = f
        .engine
        .run(SagaInput::cancel_unpaid(o.clone()).with_reason("不想要了"))
        .await
        .unwrap();
    assert_eq!(
        exit,
        SagaExit::Finished(SagaOutcome::Completed {
            order: OrderState::Cancelled,
            note: None
        }),
        "{}",
        f.context()
    );
    assert_eq!(
        f.sim.order(ALIBABA_CHANNEL, BIG_1688_ID).unwrap().status,
        "cancel"
    );
    assert_eq!(
        f.count("cancel_unpaid", &format!("{ALIBABA_CHANNEL}:{BIG_1688_ID}")),
        1,
        "{}",
        f.context()
    );
    // The id travelled exactly (a JSON integer on the wire, never through f64).
    let eff = f.sim.effects();
    assert_eq!(
        eff[0].request.params.get("orderId").map(String::as_str),
        Some(BIG_1688_ID)
    );
    // Lookups agree, and a repeat is AlreadyDone (1001).
    let a1688 = Pandapon1688::new(f.client.clone());
    assert_eq!(
        a1688.order_status(&o, None).await.unwrap().state,
        OrderState::Cancelled
    );
    let again = a1688
        .cancel_unpaid(&CancelRequest {
            account: None,
            order: o.clone(),
            reason: None,
            remark: Some("again".into()),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (again.class, again.code.as_deref()),
        (ErrorClass::AlreadyDone, Some("1001"))
    );
    let paid = a1688
        .cancel_paid(&CancelRequest {
            account: None,
            order: o,
            reason: None,
            remark: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        paid.class,
        ErrorClass::Permanent(PermanentReason::Unsupported)
    );
    f.assert_each_effect_once();
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdraw_taobao_refund_as_a_saga() {
    let f = fixture(
        CallbackConfig::default(),
        vec![order(
            TAOBAO_CHANNEL,
            "T1001",
            "WAIT_SELLER_SEND_GOODS",
            Some(("RT1", "WAIT_SELLER_AGREE")),
        )],
    )
    .await;
    let o = OrderRef::new(TAOBAO_CHANNEL, "T1001");
    let taobao = PandaponTaobao::new(f.client.clone());
    assert_eq!(
        taobao.order_status(&o, None).await.unwrap().state,
        OrderState::Refunding {
            refund_id: RefundId("RT1".into())
        }
    );
    let (_id, exit) = f
        .engine
        .run(SagaInput::withdraw_refund(
            o.clone(),
            RefundId("RT1".into()),
        ))
        .await
        .unwrap();
    assert_eq!(
        exit,
        SagaExit::Finished(SagaOutcome::Completed {
            order: OrderState::Paid,
            note: None
        }),
        "{}",
        f.context()
    );
    assert_eq!(
        f.count("withdraw_refund", &format!("{TAOBAO_CHANNEL}:RT1")),
        1,
        "{}",
        f.context()
    );
    assert_eq!(
        f.sim.refund(TAOBAO_CHANNEL, "RT1").unwrap().status,
        "CLOSED"
    );
    let again = taobao
        .withdraw_refund(&WithdrawRequest {
            account: None,
            order: o,
            refund_id: RefundId("RT1".into()),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (again.class, again.code.as_deref()),
        (ErrorClass::AlreadyDone, Some("1101"))
    );
    f.assert_each_effect_once();
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_paid_completed_by_pushed_callbacks_with_duplicates_and_reordering() {
    let f = fixture(
        CallbackConfig {
            duplicate_probability: 1.0,
            reorder_window_ms: 150,
            ..CallbackConfig::default()
        },
        vec![order(
            TAOBAO_CHANNEL,
            "T2002",
            "WAIT_SELLER_SEND_GOODS",
            None,
        )],
    )
    .await;
    // The reverse-order submission's reply is lost: the engine must find the
    // refund by lookup rather than submit a second one.
    f.sim.set_faults(FaultProfile::none().with(
        "pandapon.taobao.refund.submit",
        FaultSpec {
            script: vec![FaultKind::LostResponse],
            ..FaultSpec::default()
        },
    ));
    let o = OrderRef::new(TAOBAO_CHANNEL, "T2002");
    let id = f
        .engine
        .start(SagaInput::cancel_paid(o.clone()))
        .await
        .unwrap();
    // Wait for the refund to open upstream, then let the simulator complete it.
    let mut opened = false;
    for _ in 0..200 {
        if f.sim
            .order(TAOBAO_CHANNEL, "T2002")
            .and_then(|v| v.refund_id)
            .is_some()
        {
            opened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(opened, "refund never opened\n{}", f.context());
    f.sim.schedule(ScheduledEvent {
        after_ms: 100,
        channel: TAOBAO_CHANNEL.into(),
        order_id: "T2002".into(),
        action: EventAction::CompleteRefund,
    });
    let exit = tokio::time::timeout(Duration::from_secs(20), f.engine.wait(id))
        .await
        .unwrap_or_else(|_| panic!("saga did not finish by callback\n{}", f.context()))
        .unwrap();
    let refund_id = match &exit {
        SagaExit::Finished(SagaOutcome::Completed {
            order: OrderState::Refunded { refund_id },
            ..
        }) => refund_id.clone(),
        other => panic!("{other:?}\n{}", f.context()),
    };
    // Completion came from a callback, not a poll.
    let entries = rescind_core::Journal::read(&*f.journal, id).await.unwrap();
    assert!(
        entries.iter().any(|e| matches!(
            &e.record,
            Record::Observed {
                via: Via::Callback,
                ..
            }
        )),
        "{entries:#?}"
    );
    assert!(!entries
        .iter()
        .any(|e| matches!(&e.record, Record::Observed { via: Via::Poll, .. })));
    // The lost submission was resolved by lookup.
    assert!(
        entries.iter().any(|e| matches!(
            &e.record,
            Record::Outcome {
                via: Via::Lookup,
                ..
            }
        )),
        "{entries:#?}"
    );
    // Let the remaining pushes (duplicates, reordered) land.
    tokio::time::sleep(Duration::from_millis(600)).await;
    f.receiver.settled().await;
    let s = f.receiver.stats();
    assert!(s.duplicates >= 1, "{s:?}\n{}", f.context());
    assert_eq!(
        s.malformed + s.unknown_type + s.unmappable + s.store_errors,
        0,
        "{s:?}"
    );
    assert!(f.sim.pushes().iter().filter(|p| p.delivered).count() as u64 >= s.received);
    assert_eq!(
        f.count("cancel_paid", &format!("{TAOBAO_CHANNEL}:T2002")),
        1,
        "{}",
        f.context()
    );
    assert_eq!(
        f.sim
            .refund(TAOBAO_CHANNEL, refund_id.as_str())
            .unwrap()
            .status,
        "SUCCESS"
    );
    f.assert_each_effect_once();
    f.server.shutdown().await;
}

/// A Taobao channel registered as `pp-tb` (not `pandapon-taobao`): the
/// simulator's pushed callback, over real HTTP, still completes the saga on
/// `pp-tb` (polls start after an hour, so only the callback can).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_reach_sagas_on_channels_registered_under_other_names() {
    let f = fixture_named(
        CallbackConfig::default(),
        vec![order(
            TAOBAO_CHANNEL,
            "T3003",
            "WAIT_SELLER_SEND_GOODS",
            None,
        )],
        "pp-tb",
        "pp-1688",
    )
    .await;
    let id = f
        .engine
        .start(SagaInput::cancel_paid(OrderRef::new("pp-tb", "T3003")))
        .await
        .unwrap();
    let mut opened = false;
    for _ in 0..200 {
        if f.sim
            .order(TAOBAO_CHANNEL, "T3003")
            .and_then(|v| v.refund_id)
            .is_some()
        {
            opened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(opened, "refund never opened\n{}", f.context());
    f.sim.schedule(ScheduledEvent {
        after_ms: 50,
        channel: TAOBAO_CHANNEL.into(),
        order_id: "T3003".into(),
        action: EventAction::CompleteRefund,
    });
    let exit = tokio::time::timeout(Duration::from_secs(20), f.engine.wait(id))
        .await
        .unwrap_or_else(|_| panic!("saga on pp-tb not woken by its callback\n{}", f.context()))
        .unwrap();
    assert!(
        matches!(
            &exit,
            SagaExit::Finished(SagaOutcome::Completed {
                order: OrderState::Refunded { .. },
                ..
            })
        ),
        "{exit:?}\n{}",
        f.context()
    );
    let entries = rescind_core::Journal::read(&*f.journal, id).await.unwrap();
    assert!(
        entries.iter().any(|e| matches!(
            &e.record,
            Record::Observed {
                via: Via::Callback,
                ..
            }
        )),
        "{entries:#?}"
    );
    assert!(f.receiver.stats().saga_wakeups >= 1);
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_responses_resolved_by_lookup() {
    let f = fixture(
        CallbackConfig::default(),
        vec![
            order(ALIBABA_CHANNEL, BIG_1688_ID, "waitbuyerpay", None),
            order(
                TAOBAO_CHANNEL,
                "T3003",
                "WAIT_SELLER_SEND_GOODS",
                Some(("RT3", "WAIT_SELLER_AGREE")),
            ),
        ],
    )
    .await;
    f.sim.set_faults(
        FaultProfile::none()
            .with(
                "pandapon.1688.order.cancel",
                FaultSpec {
                    script: vec![FaultKind::LostResponse],
                    lost_response_mode: LostResponseMode::Drop,
                    ..FaultSpec::default()
                },
            )
            .with(
                "pandapon.taobao.refund.cancel",
                FaultSpec {
                    script: vec![FaultKind::LostResponse],
                    lost_response_mode: LostResponseMode::GatewayTimeout,
                    ..FaultSpec::default()
                },
            ),
    );
    let (id1, exit) = f
        .engine
        .run(SagaInput::cancel_unpaid(OrderRef::new(
            ALIBABA_CHANNEL,
            BIG_1688_ID,
        )))
        .await
        .unwrap();
    assert!(
        matches!(
            exit,
            SagaExit::Finished(SagaOutcome::Completed {
                order: OrderState::Cancelled,
                ..
            })
        ),
        "{exit:?}\n{}",
        f.context()
    );
    let (id2, exit) = f
        .engine
        .run(SagaInput::withdraw_refund(
            OrderRef::new(TAOBAO_CHANNEL, "T3003"),
            RefundId("RT3".into()),
        ))
        .await
        .unwrap();
    assert!(
        matches!(
            exit,
            SagaExit::Finished(SagaOutcome::Completed {
                order: OrderState::Paid,
                ..
            })
        ),
        "{exit:?}\n{}",
        f.context()
    );
    for id in [id1, id2] {
        let entries = rescind_core::Journal::read(&*f.journal, id).await.unwrap();
        assert!(
            entries.iter().any(|e| matches!(
                &e.record,
                Record::Outcome {
                    via: Via::Lookup,
                    ..
                }
            )),
            "not resolved by lookup: {entries:#?}"
        );
    }
    assert_eq!(
        f.count("cancel_unpaid", &format!("{ALIBABA_CHANNEL}:{BIG_1688_ID}")),
        1
    );
    assert_eq!(
        f.count("withdraw_refund", &format!("{TAOBAO_CHANNEL}:RT3")),
        1
    );
    f.assert_each_effect_once();
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_envelopes_parse_exactly_and_auth_errors_classify() {
    let f = fixture(
        CallbackConfig::default(),
        vec![order(ALIBABA_CHANNEL, BIG_1688_ID, "waitsellersend", None)],
    )
    .await;
    let url = format!(
        "{}/v2/alibaba/order/detail/{BIG_1688_ID}",
        f.server.base_url
    );
    let env = f
        .client
        .call("probe", http::Method::GET, url.clone(), None)
        .await
        .unwrap();
    assert_eq!(
        env.develop_id.as_deref(),
        Some(defaults::PANDAPON_DEVELOP_ID)
    );
    assert_eq!(env.develop_id.as_deref(), Some("1110890638347337996"));
    let d: rescind_channel_pandapon::OrderDetail = env.data_as("probe").unwrap();
    assert_eq!(d.order_id.as_deref(), Some(BIG_1688_ID));
    assert!(
        env.data.as_deref().unwrap().contains(BIG_1688_ID),
        "sent as an integer: {:?}",
        env.data
    );

    // Wrong secret → 401 Auth; no nonce is also accepted; a clock 20 minutes off → 403.
    let bad = client_for(PandaponConfig {
        secret: Secret::new("wrong"),
        ..config(&f.server.base_url)
    });
    let e = bad.alibaba_order_detail(BIG_1688_ID).await.unwrap_err();
    assert_eq!(
        (e.class, e.code.as_deref()),
        (ErrorClass::Permanent(PermanentReason::Auth), Some("401"))
    );
    let no_nonce = client_for(PandaponConfig {
        send_nonce: false,
        ..config(&f.server.base_url)
    });
    assert_eq!(
        no_nonce
            .alibaba_order_detail(BIG_1688_ID)
            .await
            .unwrap()
            .status,
        "waitsellersend"
    );
    let transport: Arc<dyn Transport> =
        Arc::new(ReqwestTransport::new(ReqwestSettings::default()).unwrap());
    let skewed = PandaponClient::new(
        config(&f.server.base_url),
        transport,
        Arc::new(TokioClock::with_base(
            TokioClock::system().now_ms_sys() - 1_200_000,
        )),
    )
    .unwrap();
    let e = skewed.alibaba_order_detail(BIG_1688_ID).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Permanent(PermanentReason::ClockSkew));
    // Unknown order → NotFound; the paid order cannot be cancelled unpaid → PaidMeanwhile.
    let a1688 = Pandapon1688::new(f.client.clone());
    let e = a1688
        .order_status(&OrderRef::new(ALIBABA_CHANNEL, "1"), None)
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::Permanent(PermanentReason::NotFound));
    let e = a1688
        .cancel_unpaid(&CancelRequest {
            account: None,
            order: OrderRef::new(ALIBABA_CHANNEL, BIG_1688_ID),
            reason: None,
            remark: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.class,
        ErrorClass::Conflict(rescind_core::Conflict::PaidMeanwhile)
    );
    // Rate limit from the simulator: retryable, not applied, with the announced wait.
    f.sim.set_faults(FaultProfile::everywhere(FaultSpec {
        rate_limit: 1.0,
        rate_limit_ban_secs: 7,
        ..FaultSpec::default()
    }));
    let e = a1688
        .order_status(&OrderRef::new(ALIBABA_CHANNEL, BIG_1688_ID), None)
        .await
        .unwrap_err();
    assert_eq!(
        e.class,
        ErrorClass::Retryable {
            wait_ms: Some(7_000),
            applied: rescind_core::Applied::No
        }
    );
    assert!(f.sim.effects().is_empty());
    f.server.shutdown().await;
}

trait SysNow {
    fn now_ms_sys(&self) -> u64;
}

impl SysNow for TokioClock {
    fn now_ms_sys(&self) -> u64 {
        rescind_core::Clock::now_ms(self)
    }
}
