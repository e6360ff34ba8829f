//! Per-account sessions against `rescind-sim` over real HTTP: the account's
//! session is sent, a near-expiry one is refreshed first (once, however many
//! calls race), and expired, revoked or refused sessions are
//! `credentials: account X` errors.

use rescind_channel_top::{DamaiChannel, DamaiConfig, GatewayConfig, TbcChannel, TopConfig};
use rescind_core::{
    CancelRequest, ChannelError, Clock, ErrorClass, OrderRef, PermanentReason, StockLockRef,
    TokioClock,
};
use rescind_sim::{defaults, AccountSeed, OrderSeed, Sim, SimConfig, SimServer};
use rescind_wire::credentials::{
    AccountCredentials, Credentials, DamaiSupplier, StaticCredentials, TopSession,
};
use rescind_wire::sign::Secret;
use std::sync::Arc;

const MARGIN_MS: u64 = 300_000;

struct Rig {
    sim: Sim,
    server: SimServer,
    creds: Arc<StaticCredentials>,
}

fn now() -> u64 {
    TokioClock::system().now_ms()
}

impl Rig {
    async fn start() -> Rig {
        let sim = Sim::new(SimConfig::default());
        let server = sim.serve("127.0.0.1:0").await.expect("simulator starts");
        Rig {
            sim,
            server,
            creds: Arc::new(StaticCredentials::new()),
        }
    }

    fn gateway(&self) -> GatewayConfig {
        let mut g = GatewayConfig::new(
            format!("{}/router/rest", self.server.base_url),
            defaults::APP_KEY,
            Secret::new(defaults::APP_SECRET),
        );
        g.transport.timeout_ms = 5_000;
        g
    }

    fn tbc(&self) -> TbcChannel {
        let creds: Arc<dyn Credentials> = self.creds.clone();
        TbcChannel::connect(TopConfig::new(self.gateway()))
            .expect("tbc")
            .with_credentials(creds, "tmall-tbc", MARGIN_MS)
    }

    /// Account `id` in the simulator and the provider, session expiring at `exp`.
    fn account(&self, id: &str, exp: u64, refresh: bool) {
        let session = format!("sess-{id}");
        let refresh_token = refresh.then(|| format!("rt-{id}"));
        self.sim
            .add_account(AccountSeed {
                id: id.into(),
                session: session.clone(),
                expires_at_ms: exp,
                refresh_token: refresh_token.clone(),
                refresh_expires_at_ms: None,
                refreshed_ttl_ms: None,
            })
            .expect("account");
        self.creds.set(AccountCredentials {
            account: id.into(),
            channels: vec![],
            top: Some(TopSession {
                session: Secret::new(session),
                expires_at_ms: Some(exp),
                refresh_token: refresh_token.map(Secret::new),
                refresh_expires_at_ms: None,
            }),
            pandapon: None,
            damai: Some(DamaiSupplier {
                supplier_key: defaults::SUPPLIER_KEY.into(),
                supplier_secret: Secret::new(defaults::SUPPLIER_SECRET),
            }),
            revoked: false,
        });
    }

    fn order(&self, id: &str, owner: &str) {
        self.sim
            .add_order_owned(
                OrderSeed {
                    channel: "tmall-tbc".into(),
                    order_id: id.into(),
                    status: "WAIT_BUYER_PAY".into(),
                    refund: None,
                    stock_lock: None,
                },
                owner,
            )
            .expect("order");
    }

    fn view(&self, id: &str) -> rescind_sim::AccountView {
        self.sim
            .accounts()
            .into_iter()
            .find(|a| a.id == id)
            .expect("account view")
    }

    fn applied(&self, order: &str) -> u64 {
        self.sim
            .effect_counts()
            .get(&("cancel_unpaid".to_owned(), format!("tmall-tbc:{order}")))
            .copied()
            .unwrap_or(0)
    }
}

fn req(id: &str) -> CancelRequest {
    CancelRequest {
        order: OrderRef::new("tmall-tbc", id),
        account: None,
        reason: None,
        remark: None,
    }
}

fn assert_credentials(e: &ChannelError, account: &str) {
    assert_eq!(
        e.class,
        ErrorClass::Permanent(PermanentReason::InvalidSession),
        "{e}"
    );
    assert!(
        e.message
            .starts_with(&format!("credentials: account {account}: ")),
        "{e}"
    );
    assert!(!e.to_string().contains("sess-"), "no session in {e}");
}

#[tokio::test]
async fn each_account_uses_its_own_session() {
    let rig = Rig::start().await;
    let far = now() + 3_600_000;
    rig.account("shopA", far, false);
    rig.account("shopB", far, false);
    rig.order("A1", "shopA");
    rig.order("B1", "shopB");
    let tbc = rig.tbc();
    tbc.cancel_unpaid_as(&req("A1"), Some("shopA"))
        .await
        .expect("A cancels its order");
    tbc.cancel_unpaid_as(&req("B1"), Some("shopB"))
        .await
        .expect("B cancels its order");
    assert_eq!((rig.view("shopA").calls, rig.view("shopB").calls), (1, 1));
    assert_eq!((rig.applied("A1"), rig.applied("B1")), (1, 1));
    // A session of A on B's order is refused by TOP; nothing applied.
    rig.order("B2", "shopB");
    let e = tbc
        .cancel_unpaid_as(&req("B2"), Some("shopA"))
        .await
        .unwrap_err();
    assert_credentials(&e, "shopA");
    assert_eq!(rig.applied("B2"), 0);
    // Unknown account.
    let e = tbc
        .cancel_unpaid_as(&req("B2"), Some("nobody"))
        .await
        .unwrap_err();
    assert_credentials(&e, "nobody");
}

#[tokio::test]
async fn expired_or_revoked_sessions_are_credentials_errors() {
    let rig = Rig::start().await;
    rig.account("shopA", now() + 3_600_000, false);
    rig.order("A1", "shopA");
    let tbc = rig.tbc();
    // Expired in TOP (the provider still believes it valid): code 27, attributed.
    rig.sim.expire_account("shopA").expect("expire");
    let e = tbc
        .cancel_unpaid_as(&req("A1"), Some("shopA"))
        .await
        .unwrap_err();
    assert_credentials(&e, "shopA");
    assert_eq!(e.code.as_deref(), Some("27"));
    // Expired in the provider, no refresh token: refused before any call.
    rig.account("shopA", now() - 1, false);
    let calls = rig.view("shopA").calls + rig.view("shopA").refused;
    let e = tbc
        .cancel_unpaid_as(&req("A1"), Some("shopA"))
        .await
        .unwrap_err();
    assert_credentials(&e, "shopA");
    assert!(e.message.contains("expired"), "{e}");
    assert_eq!(rig.view("shopA").calls + rig.view("shopA").refused, calls);
    // Revoked in the provider.
    rig.account("shopA", now() + 3_600_000, false);
    rig.creds.revoke("shopA").expect("revoke");
    let e = tbc
        .cancel_unpaid_as(&req("A1"), Some("shopA"))
        .await
        .unwrap_err();
    assert_credentials(&e, "shopA");
    assert!(e.message.contains("revoked"), "{e}");
    assert_eq!(rig.applied("A1"), 0);
    // Without an account the configured (absent) session is sent: not checked.
    tbc.cancel_unpaid_as(&req("A1"), None)
        .await
        .expect("no account, no session check");
}

#[tokio::test]
async fn a_near_expiry_session_is_refreshed_once_before_the_calls() {
    let rig = Rig::start().await;
    // Expires in 60 s: inside the 5 minute margin.
    rig.account("shopA", now() + 60_000, true);
    for i in 0..8 {
        rig.order(&format!("A{i}"), "shopA");
    }
    let tbc = Arc::new(rig.tbc());
    let g0 = rig.creds.generation();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let tbc = tbc.clone();
        tasks.push(tokio::spawn(async move {
            tbc.cancel_unpaid_as(&req(&format!("A{i}")), Some("shopA"))
                .await
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("cancel after refresh");
    }
    let v = rig.view("shopA");
    assert_eq!(v.refreshes, 1, "single flight: {v:?}");
    assert_eq!(v.sessions.len(), 2, "{v:?}");
    assert_eq!(
        v.sessions[0].calls, 0,
        "the old session was not used: {v:?}"
    );
    assert_eq!(v.sessions[1].calls, 8, "{v:?}");
    // The provider holds the fresh session: a change of shopA.
    let s = rig
        .creds
        .top_session("tmall-tbc", "shopA")
        .await
        .expect("session");
    assert_ne!(s.session.expose(), "sess-shopA");
    assert!(s.expires_at_ms.unwrap_or(0) > now() + 3_600_000);
    assert_eq!(rig.creds.changed_since(g0).accounts, ["shopA"]);
}

#[tokio::test]
async fn damai_uses_the_accounts_supplier_and_session() {
    let rig = Rig::start().await;
    rig.account("shopA", now() + 3_600_000, false);
    rig.sim
        .add_order_owned(
            OrderSeed {
                channel: "damai".into(),
                order_id: "D1".into(),
                status: "WAIT_PAY".into(),
                refund: None,
                stock_lock: Some("D1".into()),
            },
            "shopA",
        )
        .expect("order");
    let creds: Arc<dyn Credentials> = rig.creds.clone();
    let damai = DamaiChannel::connect(DamaiConfig::new(
        rig.gateway(),
        "wrong-supplier",
        Secret::new("wrong-secret"),
    ))
    .expect("damai")
    .with_credentials(creds, "damai", MARGIN_MS);
    damai
        .release_stock_as(&StockLockRef::new("damai", "D1"), Some("shopA"))
        .await
        .expect("released with the account's supplier credentials");
    assert_eq!(rig.view("shopA").calls, 1);
}

/// Sagas for several accounts; one account's session expires in TOP: its
/// sagas park stuck `credentials: account shopB`, none fails, nothing is
/// applied twice; new credentials for shopB (a change the provider reports)
/// and a resume of exactly the sagas waiting on it finish every saga.
#[tokio::test]
async fn an_expired_account_parks_its_sagas_until_new_credentials_resume_them() {
    use rescind_core::{
        credentials_account, AccountId, Channels, Engine, Limits, MemoryJournal, SagaExit,
        SagaInput, SagaOutcome,
    };
    let rig = Rig::start().await;
    let far = now() + 3_600_000;
    for id in ["shopA", "shopB", "shopC"] {
        rig.account(id, far, false);
        for i in 0..3 {
            rig.order(&format!("{id}-{i}"), id);
        }
    }
    rig.sim.expire_account("shopB").expect("expire");
    let tbc = Arc::new(rig.tbc());
    let engine = Engine::builder(Arc::new(MemoryJournal::new()))
        .channels(
            Channels::new()
                .with_cancel("tmall-tbc", tbc.clone())
                .with_lookup("tmall-tbc", tbc),
        )
        .limits(Limits {
            backoff_initial_ms: 10,
            backoff_max_ms: 50,
            jitter_pct: 0,
            attempt_timeout_ms: 5_000,
            ..Limits::default()
        })
        .build();
    let mut ids = Vec::new();
    for id in ["shopA", "shopB", "shopC"] {
        for i in 0..3 {
            let mut input =
                SagaInput::cancel_unpaid(OrderRef::new("tmall-tbc", format!("{id}-{i}")));
            input.account = Some(AccountId::from(id));
            ids.push((id, engine.start(input).await.expect("start")));
        }
    }
    let g0 = rig.creds.generation();
    let mut waiting = Vec::new();
    for (account, saga) in &ids {
        match engine.wait(*saga).await.expect("wait") {
            SagaExit::Finished(o) => {
                assert_ne!(*account, "shopB", "{o:?}");
                assert!(matches!(o, SagaOutcome::Completed { .. }), "{o:?}");
            }
            SagaExit::Stuck { reason } => {
                assert_eq!(*account, "shopB", "{reason}");
                assert_eq!(credentials_account(&reason), Some("shopB"), "{reason}");
                waiting.push((*saga, reason));
            }
            other => panic!("{account}: {other:?}"),
        }
    }
    assert_eq!(waiting.len(), 3);
    for i in 0..3 {
        assert_eq!(rig.applied(&format!("shopB-{i}")), 0);
    }
    // The operator authorises shopB again: a new session in TOP and in the
    // provider; the provider reports shopB as changed.
    rig.sim
        .add_account(AccountSeed {
            id: "shopB".into(),
            session: "sess-shopB-2".into(),
            expires_at_ms: far,
            refresh_token: None,
            refresh_expires_at_ms: None,
            refreshed_ttl_ms: None,
        })
        .expect("re-authorised");
    let mut b = rig.creds.get("shopB").expect("B");
    b.top = Some(TopSession::new(Secret::new("sess-shopB-2"), Some(far)));
    rig.creds.set(b);
    let changed = rig.creds.changed_since(g0).accounts;
    assert_eq!(changed, ["shopB"]);
    for (saga, reason) in &waiting {
        if credentials_account(reason).is_some_and(|a| changed.iter().any(|c| c == a)) {
            assert!(engine.resume(*saga).await.expect("resume"));
        }
    }
    for (saga, _) in &waiting {
        match engine.wait(*saga).await.expect("wait") {
            SagaExit::Finished(o) => assert!(matches!(o, SagaOutcome::Completed { .. }), "{o:?}"),
            other => panic!("{other:?}"),
        }
    }
    for id in ["shopA", "shopB", "shopC"] {
        for i in 0..3 {
            assert_eq!(rig.applied(&format!("{id}-{i}")), 1, "{id}-{i}");
        }
    }
    assert!(rig.sim.effect_counts().values().all(|n| *n == 1));
}
