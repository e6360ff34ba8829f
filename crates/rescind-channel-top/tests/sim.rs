//! The TOP channels against `rescind-sim` over real HTTP (reqwest, loopback),
//! through the production transport stack and, where the issue asks, through
//! the saga engine.

use rescind_channel_top::{
    layered_transport, DamaiChannel, DamaiConfig, GatewayConfig, TbcChannel, TopConfig,
};
use rescind_core::{
    Applied, CancelOrder, CancelRequest, ChannelError, Channels, Clock, Conflict, Engine,
    ErrorClass, Limits, MemoryJournal, OrderLookup, OrderRef, OrderState, PermanentReason, Record,
    RefundId, RefundState, ReleaseStock, SagaExit, SagaInput, SagaOutcome, StockLockRef,
    TokioClock, Via,
};
use rescind_sim::{
    defaults, FaultKind, FaultProfile, FaultSpec, LostResponseMode, OrderSeed, Sim, SimConfig,
    SimServer,
};
use rescind_wire::sign::{Secret, SignMethod};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CANCEL: &str = "tmall.tbc.order.cancel";

struct Harness {
    sim: Sim,
    server: SimServer,
}

impl Harness {
    async fn start() -> Harness {
        let sim = Sim::new(SimConfig::default());
        let server = sim.serve("127.0.0.1:0").await.expect("simulator starts");
        Harness { sim, server }
    }

    fn url(&self) -> String {
        format!("{}/router/rest", self.server.base_url)
    }

    fn gateway(&self, secret: &str, method: SignMethod) -> GatewayConfig {
        let mut g = GatewayConfig::new(self.url(), defaults::APP_KEY, Secret::new(secret));
        g.sign_method = method;
        g.transport.timeout_ms = 5_000;
        g
    }

    fn tbc_with(&self, secret: &str, method: SignMethod) -> Arc<TbcChannel> {
        Arc::new(
            TbcChannel::connect(TopConfig::new(self.gateway(secret, method))).expect("tbc channel"),
        )
    }

    fn tbc(&self) -> Arc<TbcChannel> {
        self.tbc_with(defaults::APP_SECRET, SignMethod::default())
    }

    fn damai(&self) -> Arc<DamaiChannel> {
        let cfg = DamaiConfig::new(
            self.gateway(defaults::APP_SECRET, SignMethod::default()),
            defaults::SUPPLIER_KEY,
            Secret::new(defaults::SUPPLIER_SECRET),
        );
        Arc::new(DamaiChannel::connect(cfg).expect("damai channel"))
    }

    fn unpaid(&self, id: &str) {
        self.order(id, "WAIT_BUYER_PAY");
    }

    fn order(&self, id: &str, status: &str) {
        self.sim.add_order(OrderSeed {
            channel: "tmall-tbc".into(),
            order_id: id.into(),
            status: status.into(),
            refund: None,
            stock_lock: None,
        });
    }

    fn damai_lock(&self, lock: &str) {
        self.sim.add_order(OrderSeed {
            channel: "damai".into(),
            order_id: lock.into(),
            status: "WAIT_PAY".into(),
            refund: None,
            stock_lock: Some(lock.into()),
        });
    }

    fn faults(&self, endpoint: &str, spec: FaultSpec) {
        self.sim
            .set_faults(FaultProfile::none().with(endpoint, spec));
    }

    fn count(&self, op: &str, target: &str) -> u64 {
        self.sim
            .effect_counts()
            .get(&(op.to_owned(), target.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// The simulator's effect log, for failure messages.
    fn effects(&self) -> String {
        self.sim
            .effects()
            .iter()
            .map(|e| format!("  #{} {} {} (count {})\n", e.seq, e.op, e.target, e.count))
            .collect()
    }

    fn engine(&self, channels: Channels) -> Engine {
        let limits = Limits {
            attempts_max: 8,
            backoff_initial_ms: 10,
            backoff_max_ms: 50,
            jitter_pct: 0,
            attempt_timeout_ms: 5_000,
            ..Limits::default()
        };
        Engine::builder(Arc::new(MemoryJournal::new()))
            .channels(channels)
            .limits(limits)
            .build()
    }

    fn tbc_engine(&self) -> Engine {
        let tbc = self.tbc();
        self.engine(
            Channels::new()
                .with_cancel("tmall-tbc", tbc.clone())
                .with_lookup("tmall-tbc", tbc),
        )
    }
}

fn cancel_req(id: &str) -> CancelRequest {
    CancelRequest {
        account: None,
        order: OrderRef::new("tmall-tbc", id),
        reason: None,
        remark: None,
    }
}

async fn journal_vias(engine: &Engine, id: rescind_core::SagaId) -> Vec<Via> {
    engine
        .journal()
        .read(id)
        .await
        .expect("journal reads")
        .into_iter()
        .filter_map(|e| match e.record {
            Record::Outcome { via, .. } => Some(via),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn all_three_sign_methods_are_accepted() {
    let h = Harness::start().await;
    for (i, m) in [SignMethod::Md5, SignMethod::Hmac, SignMethod::HmacSha256]
        .into_iter()
        .enumerate()
    {
        let id = format!("S{i}");
        h.unpaid(&id);
        let tbc = h.tbc_with(defaults::APP_SECRET, m);
        tbc.cancel_unpaid(&cancel_req(&id))
            .await
            .unwrap_or_else(|e| panic!("{m}: {e}"));
        let st = tbc
            .order_status(&OrderRef::new("tmall-tbc", id.as_str()), None)
            .await
            .unwrap();
        assert_eq!(st.state, OrderState::Cancelled, "{m}");
        assert_eq!(st.upstream, "TRADE_CLOSED_BY_TAOBAO");
        assert_eq!(
            h.count("cancel_unpaid", &format!("tmall-tbc:{id}")),
            1,
            "{m}\n{}",
            h.effects()
        );
    }
}

#[tokio::test]
async fn a_wrong_secret_is_the_invalid_signature_error() {
    let h = Harness::start().await;
    h.unpaid("W1");
    let e = h
        .tbc_with("not-the-secret", SignMethod::HmacSha256)
        .cancel_unpaid(&cancel_req("W1"))
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::Permanent(PermanentReason::Auth), "{e}");
    assert_eq!(e.code.as_deref(), Some("25"), "{e}");
    assert!(e.message.contains("invalid signature"), "{e}");
    assert!(!e.to_string().contains("not-the-secret"));
    assert!(h.sim.effects().is_empty(), "{}", h.effects());
}

#[tokio::test]
async fn an_invalid_session_is_reported_as_needing_reauthorisation() {
    let sim = Sim::new(SimConfig {
        session: Some(Secret::new("session-of-the-seller")),
        ..SimConfig::default()
    });
    let server = sim.serve("127.0.0.1:0").await.expect("simulator starts");
    let h = Harness { sim, server };
    h.unpaid("S1");
    let with_session = |session: &str| {
        let mut g = h.gateway(defaults::APP_SECRET, SignMethod::HmacSha256);
        g.session = Some(Secret::new(session));
        Arc::new(TbcChannel::connect(TopConfig::new(g)).expect("tbc channel"))
    };
    let e = with_session("an-expired-session")
        .cancel_unpaid(&cancel_req("S1"))
        .await
        .unwrap_err();
    assert_eq!(
        e.class,
        ErrorClass::Permanent(PermanentReason::InvalidSession),
        "{e}"
    );
    assert_eq!(e.code.as_deref(), Some("27"), "{e}");
    assert!(
        !e.to_string().contains("an-expired-session"),
        "session leaked: {e}"
    );
    assert!(h.sim.effects().is_empty(), "{}", h.effects());
    // Through the engine it parks the saga for new credentials: not a retry
    // loop, and not a terminal failure.
    let tbc = with_session("an-expired-session");
    let engine = h.engine(
        Channels::new()
            .with_cancel("tmall-tbc", tbc.clone())
            .with_lookup("tmall-tbc", tbc),
    );
    let (_, exit) = engine
        .run(SagaInput::cancel_unpaid(OrderRef::new("tmall-tbc", "S1")))
        .await
        .unwrap();
    match exit {
        SagaExit::Stuck { reason } => {
            assert!(
                reason.starts_with("credentials:") && reason.contains("27"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    // The right session goes through.
    with_session("session-of-the-seller")
        .cancel_unpaid(&cancel_req("S1"))
        .await
        .expect("cancel with a valid session");
    assert_eq!(
        h.count("cancel_unpaid", "tmall-tbc:S1"),
        1,
        "{}",
        h.effects()
    );
}

#[tokio::test]
async fn a_skewed_clock_is_reported_as_such() {
    let h = Harness::start().await;
    h.unpaid("C1");
    let eleven_minutes_ahead = TokioClock::system().now_ms() + 11 * 60_000;
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::with_base(eleven_minutes_ahead));
    let cfg = TopConfig::new(h.gateway(defaults::APP_SECRET, SignMethod::Md5));
    let transport = layered_transport(&cfg.gateway.transport, clock.clone()).unwrap();
    let tbc = TbcChannel::new(cfg, transport, clock).unwrap();
    let e = tbc.cancel_unpaid(&cancel_req("C1")).await.unwrap_err();
    assert_eq!(
        e.class,
        ErrorClass::Permanent(PermanentReason::ClockSkew),
        "{e}"
    );
    assert_eq!(e.code.as_deref(), Some("31"));
    assert!(e.message.contains("local clock is off"), "{e}");
}

#[tokio::test]
async fn business_failures_inside_a_success_envelope_are_not_success() {
    let h = Harness::start().await;
    let tbc = h.tbc();
    h.order("P1", "WAIT_SELLER_SEND_GOODS");
    let e = tbc.cancel_unpaid(&cancel_req("P1")).await.unwrap_err();
    assert_eq!(
        e.class,
        ErrorClass::Conflict(Conflict::PaidMeanwhile),
        "{e}"
    );
    assert_eq!(e.code.as_deref(), Some("ORDER_PAID"));

    let e = tbc.cancel_unpaid(&cancel_req("nope")).await.unwrap_err();
    assert_eq!(
        e.class,
        ErrorClass::Permanent(PermanentReason::NotFound),
        "{e}"
    );

    h.unpaid("A1");
    tbc.cancel_unpaid(&cancel_req("A1")).await.unwrap();
    let e = tbc.cancel_unpaid(&cancel_req("A1")).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::AlreadyDone, "{e}");
    assert_eq!(e.code.as_deref(), Some("ORDER_ALREADY_CANCELLED"));

    h.order("U1", "WAIT_BUYER_PAY");
    let e = tbc.cancel_paid(&cancel_req("U1")).await.unwrap_err();
    assert!(
        matches!(e.class, ErrorClass::Conflict(Conflict::Other { .. })),
        "{e}"
    );
    assert_eq!(
        h.sim.effects().len(),
        1,
        "only A1's cancel applied\n{}",
        h.effects()
    );
}

#[tokio::test]
async fn paid_cancel_opens_a_refund_and_the_lookup_sees_it() {
    let h = Harness::start().await;
    let tbc = h.tbc();
    h.order("P2", "WAIT_SELLER_SEND_GOODS");
    let opened = tbc.cancel_paid(&cancel_req("P2")).await.unwrap();
    let order = OrderRef::new("tmall-tbc", "P2");
    let st = tbc.order_status(&order, None).await.unwrap();
    assert_eq!(
        st.state,
        OrderState::Refunding {
            refund_id: opened.refund_id.clone()
        }
    );
    let rs = tbc
        .refund_status(&order, &opened.refund_id, None)
        .await
        .unwrap();
    assert_eq!(rs.state, RefundState::Requested);
    let e = tbc
        .refund_status(&order, &RefundId::from("other"), None)
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::Permanent(PermanentReason::NotFound));
    // Repeated: a refund is already open, which the engine resolves by lookup.
    let e = tbc.cancel_paid(&cancel_req("P2")).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::AlreadyDone, "{e}");
}

/// Each injected fault, once, on the pre-payment cancel, as the channel
/// reports it and as the engine finishes it.
#[tokio::test]
async fn each_error_class_ends_as_the_engine_expects() {
    let h = Harness::start().await;
    let tbc = h.tbc();
    let cases: &[(FaultKind, ErrorClass)] = &[
        (
            FaultKind::Http5xx,
            ErrorClass::Retryable {
                wait_ms: None,
                applied: Applied::Maybe,
            },
        ),
        (
            FaultKind::Isp,
            ErrorClass::Retryable {
                wait_ms: None,
                applied: Applied::Maybe,
            },
        ),
        (
            FaultKind::RateLimit,
            ErrorClass::Retryable {
                wait_ms: Some(1_000),
                applied: Applied::No,
            },
        ),
        (
            FaultKind::LostResponse,
            ErrorClass::Retryable {
                wait_ms: None,
                applied: Applied::Maybe,
            },
        ),
    ];
    for (i, (kind, class)) in cases.iter().enumerate() {
        // Direct: the classification.
        let id = format!("F{i}");
        h.unpaid(&id);
        let mut spec = FaultSpec::scripted([*kind]);
        spec.rate_limit_ban_secs = 1;
        h.faults(CANCEL, spec.clone());
        let e: ChannelError = tbc.cancel_unpaid(&cancel_req(&id)).await.unwrap_err();
        assert_eq!(&e.class, class, "{kind:?}: {e}");

        // Through the engine: retried (after a lookup where in doubt) to completion.
        let id = format!("G{i}");
        h.unpaid(&id);
        h.faults(CANCEL, spec);
        let engine = h.tbc_engine();
        let t0 = Instant::now();
        let (_, exit) = engine
            .run(SagaInput::cancel_unpaid(OrderRef::new(
                "tmall-tbc",
                id.as_str(),
            )))
            .await
            .unwrap();
        assert!(
            matches!(
                &exit,
                SagaExit::Finished(SagaOutcome::Completed {
                    order: OrderState::Cancelled,
                    ..
                })
            ),
            "{kind:?}: {exit:?}\n{}",
            h.effects()
        );
        assert_eq!(
            h.count("cancel_unpaid", &format!("tmall-tbc:{id}")),
            1,
            "{kind:?}\n{}",
            h.effects()
        );
        if *kind == FaultKind::RateLimit {
            assert!(
                t0.elapsed() >= Duration::from_millis(1_000),
                "the ban's wait was not honoured: {:?}",
                t0.elapsed()
            );
        }
    }

    // Permanent: the saga fails, says why, and nothing was applied.
    let engine = h.tbc_engine();
    h.sim.set_faults(FaultProfile::none());
    let (_, exit) = engine
        .run(SagaInput::cancel_unpaid(OrderRef::new(
            "tmall-tbc",
            "missing",
        )))
        .await
        .unwrap();
    match exit {
        SagaExit::Finished(SagaOutcome::Failed { reason }) => {
            assert!(reason.contains("ORDER_NOT_FOUND"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(h
        .sim
        .effects()
        .iter()
        .all(|e| e.target != "tmall-tbc:missing"));
}

#[tokio::test]
async fn a_lost_response_is_resolved_by_lookup_without_a_second_cancel() {
    for mode in [LostResponseMode::Drop, LostResponseMode::GatewayTimeout] {
        let h = Harness::start().await;
        h.unpaid("L1");
        let mut spec = FaultSpec::scripted([FaultKind::LostResponse]);
        spec.lost_response_mode = mode;
        h.faults(CANCEL, spec);
        let engine = h.tbc_engine();
        let (id, exit) = engine
            .run(SagaInput::cancel_unpaid(OrderRef::new("tmall-tbc", "L1")))
            .await
            .unwrap();
        assert!(
            matches!(
                &exit,
                SagaExit::Finished(SagaOutcome::Completed {
                    order: OrderState::Cancelled,
                    ..
                })
            ),
            "{mode:?}: {exit:?}"
        );
        assert_eq!(
            h.count("cancel_unpaid", "tmall-tbc:L1"),
            1,
            "{mode:?}\n{}",
            h.effects()
        );
        assert_eq!(h.sim.effects().len(), 1, "{mode:?}\n{}", h.effects());
        let vias = journal_vias(&engine, id).await;
        assert_eq!(
            vias.first(),
            Some(&Via::Lookup),
            "{mode:?}: the cancel step was resolved by lookup: {vias:?}"
        );
    }
}

#[tokio::test]
async fn tbc_cancel_and_damai_release_complete_as_one_cancel_unpaid_saga() {
    let h = Harness::start().await;
    h.unpaid("O1");
    h.damai_lock("L1");
    let (tbc, damai) = (h.tbc(), h.damai());
    let engine = h.engine(
        Channels::new()
            .with_cancel("tmall-tbc", tbc.clone())
            .with_lookup("tmall-tbc", tbc)
            .with_stock("damai", damai.clone()),
    );
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
        "{exit:?}\n{}",
        h.effects()
    );
    let ops: Vec<(String, String)> = h
        .sim
        .effects()
        .into_iter()
        .map(|e| (e.op, e.target))
        .collect();
    assert_eq!(
        ops,
        vec![
            ("cancel_unpaid".into(), "tmall-tbc:O1".into()),
            ("release_stock".into(), "damai:L1".into())
        ]
    );
    assert_eq!(
        h.sim.order("damai", "L1").and_then(|o| o.stock_lock_held),
        Some(false)
    );

    // Releasing again is AlreadyDone; an unknown lock is NotFound.
    let e = damai
        .release_stock(&StockLockRef::new("damai", "L1"), None)
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::AlreadyDone, "{e}");
    let e = damai
        .release_stock(&StockLockRef::new("damai", "nope"), None)
        .await
        .unwrap_err();
    assert_eq!(
        e.class,
        ErrorClass::Permanent(PermanentReason::NotFound),
        "{e}"
    );
}

#[tokio::test]
async fn a_wrong_supplier_secret_is_refused_by_the_head_check() {
    let h = Harness::start().await;
    h.damai_lock("L2");
    let cfg = DamaiConfig::new(
        h.gateway(defaults::APP_SECRET, SignMethod::Hmac),
        defaults::SUPPLIER_KEY,
        Secret::new("wrong-supplier-secret"),
    );
    let damai = DamaiChannel::connect(cfg).unwrap();
    let e = damai
        .release_stock(&StockLockRef::new("damai", "L2"), None)
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::Permanent(PermanentReason::Auth), "{e}");
    assert_eq!(e.code.as_deref(), Some("1003"));
    assert!(!e.to_string().contains("wrong-supplier-secret"));
    assert!(h.sim.effects().is_empty());
}
