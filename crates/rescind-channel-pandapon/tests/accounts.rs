//! Per-account PandaPon keys over real HTTP: each account's calls are signed
//! with its own access key, secret and user id (resolved from a
//! `Credentials` provider at call time); calls without an account keep the
//! configured key; an account whose key cannot be had, or is refused, is a
//! `credentials: account X: …` error (the engine parks such a saga stuck,
//! never failed), and a fixed key lets it finish.

use rescind_channel_pandapon::{Pandapon1688, PandaponClient, PandaponConfig, ALIBABA_CHANNEL};
use rescind_core::{
    CancelOrder, CancelRequest, Channels, Engine, ErrorClass, MemoryJournal, OrderRef,
    PermanentReason, SagaExit, SagaInput, SagaOutcome, TokioClock,
};
use rescind_sim::pandapon::KeySeed;
use rescind_sim::{defaults, OrderSeed, Sim, SimConfig, SimServer};
use rescind_wire::credentials::{AccountCredentials, PandaponKey, StaticCredentials};
use rescind_wire::sign::Secret;
use rescind_wire::transport::{ReqwestSettings, ReqwestTransport, Transport};
use std::sync::Arc;

const SHOP2_KEY: &str = "ak-shop-2";

fn key(access: &str, secret: &str, user: &str) -> PandaponKey {
    PandaponKey {
        access_key: Secret::new(access),
        secret: Secret::new(secret),
        user_id: user.into(),
    }
}

fn account(id: &str, k: Option<PandaponKey>, revoked: bool) -> AccountCredentials {
    AccountCredentials {
        account: id.into(),
        pandapon: k,
        revoked,
        ..AccountCredentials::default()
    }
}

struct Rig {
    sim: Sim,
    _server: SimServer,
    creds: Arc<StaticCredentials>,
    channel: Arc<Pandapon1688>,
}

async fn rig(orders: &[&str]) -> Rig {
    let sim = Sim::new(SimConfig::default());
    sim.add_pandapon_key(KeySeed {
        access_key: SHOP2_KEY.into(),
        secret: "secret-shop-2".into(),
        user_id: "u-shop-2".into(),
    })
    .unwrap();
    for id in orders {
        sim.add_order(OrderSeed {
            channel: ALIBABA_CHANNEL.into(),
            order_id: (*id).into(),
            status: "waitbuyerpay".into(),
            refund: None,
            stock_lock: None,
        });
    }
    let server = sim.serve("127.0.0.1:0").await.unwrap();
    let creds = Arc::new(StaticCredentials::with_accounts([
        account(
            "shop-2",
            Some(key(SHOP2_KEY, "secret-shop-2", "u-shop-2")),
            false,
        ),
        account(
            "shop-3",
            Some(key(SHOP2_KEY, "secret-shop-2", "u-shop-2")),
            true,
        ),
        // A key the API does not know.
        account("shop-4", Some(key("ak-shop-4", "wrong", "u-shop-4")), false),
        account("shop-5", None, false),
    ]));
    let transport: Arc<dyn Transport> = Arc::new(
        ReqwestTransport::new(ReqwestSettings {
            connect_timeout_ms: 2_000,
            request_timeout_ms: 5_000,
        })
        .unwrap(),
    );
    let cfg = PandaponConfig::new(
        server.base_url.as_str(),
        defaults::PANDAPON_ACCESS_KEY,
        Secret::new(defaults::PANDAPON_SECRET),
        defaults::PANDAPON_USER_ID,
    );
    let client = PandaponClient::new(cfg, transport, Arc::new(TokioClock::system()))
        .unwrap()
        .with_credentials(creds.clone(), ALIBABA_CHANNEL);
    Rig {
        sim,
        _server: server,
        creds,
        channel: Arc::new(Pandapon1688::new(Arc::new(client))),
    }
}

fn cancel(order: &str, account: Option<&str>) -> CancelRequest {
    CancelRequest {
        order: OrderRef::new(ALIBABA_CHANNEL, order),
        account: account.map(Into::into),
        reason: None,
        remark: None,
    }
}

fn calls(sim: &Sim, access_key: &str) -> u64 {
    sim.pandapon_key_calls()
        .get(access_key)
        .copied()
        .unwrap_or(0)
}

fn assert_credentials(e: &rescind_core::ChannelError, account: &str, what: &str) {
    assert!(
        matches!(
            e.class,
            ErrorClass::Permanent(PermanentReason::InvalidSession)
        ),
        "{e:?}"
    );
    assert!(
        e.message
            .starts_with(&format!("credentials: account {account}: ")),
        "{e}"
    );
    assert!(e.message.contains(what), "{e}");
    assert!(!e.message.contains("secret-shop-2") && !e.message.contains("wrong"));
}

#[tokio::test]
async fn each_account_signs_with_its_own_key() {
    let r = rig(&["101", "102"]).await;
    r.channel
        .cancel_unpaid(&cancel("101", Some("shop-2")))
        .await
        .unwrap();
    assert_eq!(
        calls(&r.sim, SHOP2_KEY),
        1,
        "{:?}",
        r.sim.pandapon_key_calls()
    );
    assert_eq!(calls(&r.sim, defaults::PANDAPON_ACCESS_KEY), 0);
    // No account: the configured key.
    r.channel.cancel_unpaid(&cancel("102", None)).await.unwrap();
    assert_eq!(calls(&r.sim, defaults::PANDAPON_ACCESS_KEY), 1);
    assert_eq!(calls(&r.sim, SHOP2_KEY), 1);
    assert_eq!(
        r.sim.order(ALIBABA_CHANNEL, "101").unwrap().status,
        "cancel"
    );
    assert_eq!(
        r.sim.order(ALIBABA_CHANNEL, "102").unwrap().status,
        "cancel"
    );
}

#[tokio::test]
async fn a_key_that_cannot_be_had_or_is_refused_names_the_account() {
    let r = rig(&["201"]).await;
    let revoked = r
        .channel
        .cancel_unpaid(&cancel("201", Some("shop-3")))
        .await
        .unwrap_err();
    assert_credentials(&revoked, "shop-3", "revoked");
    let unknown = r
        .channel
        .cancel_unpaid(&cancel("201", Some("shop-9")))
        .await
        .unwrap_err();
    assert_credentials(&unknown, "shop-9", "unknown account");
    let missing = r
        .channel
        .cancel_unpaid(&cancel("201", Some("shop-5")))
        .await
        .unwrap_err();
    assert_credentials(&missing, "shop-5", "PandaPon access key");
    // Sent, and refused by the API (401): attributed to the account.
    let refused = r
        .channel
        .cancel_unpaid(&cancel("201", Some("shop-4")))
        .await
        .unwrap_err();
    assert!(
        matches!(refused.class, ErrorClass::Permanent(_)),
        "{refused:?}"
    );
    assert!(
        refused
            .message
            .starts_with("credentials: account shop-4: PandaPon refused the account's access key"),
        "{refused}"
    );
    assert_eq!(
        r.sim.order(ALIBABA_CHANNEL, "201").unwrap().status,
        "waitbuyerpay",
        "nothing applied"
    );
}

#[tokio::test]
async fn a_saga_parks_on_a_revoked_account_and_finishes_once_it_is_fixed() {
    let r = rig(&["301"]).await;
    let journal = MemoryJournal::new();
    let channels = Channels::new()
        .with_cancel(ALIBABA_CHANNEL, r.channel.clone())
        .with_lookup(ALIBABA_CHANNEL, r.channel.clone());
    let engine = Engine::builder(Arc::new(journal))
        .channels(channels)
        .build();
    let input =
        SagaInput::cancel_unpaid(OrderRef::new(ALIBABA_CHANNEL, "301")).with_account("shop-3");
    let id = engine.start(input).await.unwrap();
    match engine.wait(id).await.unwrap() {
        SagaExit::Stuck { reason } => {
            assert_eq!(rescind_core::credentials_account(&reason), Some("shop-3"));
        }
        other => panic!("expected stuck on credentials, got {other:?}"),
    }
    assert_eq!(
        r.sim.order(ALIBABA_CHANNEL, "301").unwrap().status,
        "waitbuyerpay"
    );
    // The operator fixes the account; the saga resumes and finishes.
    r.creds.set(account(
        "shop-3",
        Some(key(SHOP2_KEY, "secret-shop-2", "u-shop-2")),
        false,
    ));
    engine.resume(id).await.unwrap();
    assert!(matches!(
        engine.wait(id).await.unwrap(),
        SagaExit::Finished(SagaOutcome::Completed { .. })
    ));
    assert_eq!(
        r.sim.order(ALIBABA_CHANNEL, "301").unwrap().status,
        "cancel"
    );
    // The resumed step is looked up (a refusal left it open), then sent:
    // both with the account's key, the cancel applied once.
    assert_eq!(
        calls(&r.sim, SHOP2_KEY),
        2,
        "{:?}",
        r.sim.pandapon_key_calls()
    );
    assert_eq!(calls(&r.sim, defaults::PANDAPON_ACCESS_KEY), 0);
    let applied: u64 = r
        .sim
        .effect_counts()
        .iter()
        .filter(|((op, _), _)| op == "cancel_unpaid")
        .map(|(_, n)| *n)
        .sum();
    assert_eq!(applied, 1, "{:?}", r.sim.effect_counts());
}
