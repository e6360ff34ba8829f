//! # rescind-sim
//!
//! A faithful channel simulator: a real HTTP server that plays the Taobao Open
//! Platform gateway (`/router/rest`: Tmall TBC and Damai) and the PandaPon
//! OpenAPI (Taobao and 1688), with an order book, signature and timestamp
//! checks, the channels' own envelopes and error codes, seeded fault
//! injection (latency, 5xx, `isp.*`, rate limits, permanent and auth
//! failures, lost responses), PandaPon
//! style callbacks, and an admin API (`/_admin/...`) that exposes the state
//! and the log of every applied effect, so tests can assert "applied exactly
//! once".
//!
//! It implements exactly the assumptions of `docs/channels/assumed-protocol.md`;
//! `docs/simulator.md` describes fixtures, fault profiles and the admin API.
//!
//! ```no_run
//! use rescind_sim::{OrderSeed, Sim, SimConfig};
//!
//! # async fn demo() -> std::io::Result<()> {
//! let sim = Sim::new(SimConfig::default());
//! sim.add_order(OrderSeed {
//!     channel: "tmall-tbc".into(),
//!     order_id: "1231231".into(),
//!     status: "WAIT_BUYER_PAY".into(),
//!     refund: None,
//!     stock_lock: None,
//! });
//! let server = sim.serve("127.0.0.1:0").await?;
//! println!("TOP gateway at {}/router/rest", server.base_url);
//! // ... drive a client against it, then:
//! assert!(sim.effect_counts().values().all(|n| *n <= 1));
//! server.shutdown().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod accounts;
pub mod admin;
pub mod book;
pub mod callbacks;
pub mod cli;
pub mod faults;
pub mod flow;
mod http_util;
pub mod pandapon;
pub mod tmc;
pub mod top;
pub mod transport;

pub use accounts::{AccountError, AccountSeed, AccountView, SessionView};
pub use book::{
    AppliedEvent, Effect, EventAction, Mix, OrderSeed, OrderView, RefundSeed, RefundView,
    RequestSummary, ScheduledEvent, SeedError,
};
pub use callbacks::{CallbackConfig, CallbackSink, PushRecord};
pub use cli::SimArgs;
pub use faults::{FaultKind, FaultProfile, FaultSpec, LostResponseMode};
pub use flow::{AppKeyFlow, FlowConfig, SecondLog};
pub use tmc::{TmcSettings, TmcStats};
pub use transport::SimTransport;

use book::{Book, Notice};
use faults::FaultState;
use rescind_core::{Clock, Rng, SplitMix64, TokioClock};
use rescind_wire::sign::{
    DamaiHeadSigner, DamaiMd5HeadSigner, PandaponSigner, Secret, SortedMd5Signer,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Default test credentials, shared with client crates' tests.
pub mod defaults {
    /// TOP `app_key`.
    pub const APP_KEY: &str = "12129701";
    /// TOP app secret.
    pub const APP_SECRET: &str = "test-secret";
    /// Post-payment cancel method name (assumed).
    pub const PAID_CANCEL_METHOD: &str = "tmall.tbc.order.paidcancel";
    /// TBC order lookup method name (assumed).
    pub const ORDER_GET_METHOD: &str = "tmall.tbc.order.get";
    /// Pre-payment TBC cancel method.
    pub const CANCEL_METHOD: &str = "tmall.tbc.order.cancel";
    /// Damai cancel-and-release method.
    pub const DAMAI_CANCEL_METHOD: &str = "alibaba.damai.yuntoc.order.cancellockstock";
    /// Damai `supplier_key`.
    pub const SUPPLIER_KEY: &str = "damai-supplier";
    /// Damai supplier secret.
    pub const SUPPLIER_SECRET: &str = "damai-secret";
    /// PandaPon `access-key`.
    pub const PANDAPON_ACCESS_KEY: &str = "58c0201dfdf148eca63cbf6bb5e7cf03";
    /// PandaPon secret.
    pub const PANDAPON_SECRET: &str = "pandapon-secret";
    /// PandaPon `user-id`.
    pub const PANDAPON_USER_ID: &str = "2100007341207";
    /// PandaPon `developId` in envelopes.
    pub const PANDAPON_DEVELOP_ID: &str = "1110890638347337996";
    /// Largest accepted request body, bytes.
    pub const BODY_BYTES_MAX: usize = 1 << 20;
    /// TOP timestamp window, ms (10 minutes).
    pub const TOP_TIMESTAMP_SKEW_MAX_MS: u64 = 600_000;
    /// PandaPon timestamp window, ms (600 s).
    pub const PANDAPON_TIMESTAMP_SKEW_MAX_MS: u64 = 600_000;
}

/// Simulator configuration. `Default` gives the test credentials of [`defaults`].
#[derive(Clone)]
pub struct SimConfig {
    /// TOP `app_key` accepted by the gateway.
    pub app_key: String,
    /// TOP app secret.
    pub app_secret: Secret,
    /// The TOP user authorisation (`session`) every call must carry, when
    /// set; a missing or different one answers code 27 (Invalid Session).
    /// `None` (the default): sessions are not checked.
    pub session: Option<Secret>,
    /// Method name served as the post-payment TBC cancel.
    pub paid_cancel_method: String,
    /// Method name served as the TBC order lookup.
    pub order_get_method: String,
    /// Damai `supplier_key`.
    pub supplier_key: String,
    /// Damai supplier secret.
    pub supplier_secret: Secret,
    /// PandaPon `access-key`.
    pub pandapon_access_key: String,
    /// PandaPon secret.
    pub pandapon_secret: Secret,
    /// PandaPon `user-id`.
    pub pandapon_user_id: String,
    /// PandaPon `developId` echoed in envelopes.
    pub pandapon_develop_id: String,
    /// Seed of every random draw (faults, request ids, callback jitter).
    pub seed: u64,
    /// Initial faults.
    pub faults: FaultProfile,
    /// TOP flow control per app key (off by default; `POST /_admin/flow`).
    pub flow: FlowConfig,
    /// Where PandaPon-style callbacks are pushed; `None`: no callbacks.
    pub callback_url: Option<String>,
    /// Callback behaviour.
    pub callbacks: CallbackConfig,
    /// Orders loaded at start and again on reset.
    pub fixture: Vec<OrderSeed>,
    /// Clock for timestamp windows, latency and scheduled events.
    pub clock: Arc<dyn Clock>,
    /// PandaPon header signer (verification uses the client's own component).
    pub pandapon_signer: Arc<dyn PandaponSigner>,
    /// Damai `head.signed` signer.
    pub damai_signer: Arc<dyn DamaiHeadSigner>,
    /// Largest accepted request body, bytes.
    pub body_bytes_max: usize,
    /// TOP timestamp window, ms.
    pub top_timestamp_skew_max_ms: u64,
    /// PandaPon timestamp window, ms.
    pub pandapon_timestamp_skew_max_ms: u64,
    /// The TOP message service (TMC) at start; off by default.
    pub tmc: TmcSettings,
}

impl Default for SimConfig {
    fn default() -> Self {
        use defaults::*;
        SimConfig {
            app_key: APP_KEY.into(),
            app_secret: Secret::new(APP_SECRET),
            session: None,
            paid_cancel_method: PAID_CANCEL_METHOD.into(),
            order_get_method: ORDER_GET_METHOD.into(),
            supplier_key: SUPPLIER_KEY.into(),
            supplier_secret: Secret::new(SUPPLIER_SECRET),
            pandapon_access_key: PANDAPON_ACCESS_KEY.into(),
            pandapon_secret: Secret::new(PANDAPON_SECRET),
            pandapon_user_id: PANDAPON_USER_ID.into(),
            pandapon_develop_id: PANDAPON_DEVELOP_ID.into(),
            seed: 0,
            faults: FaultProfile::default(),
            flow: FlowConfig::default(),
            callback_url: None,
            callbacks: CallbackConfig::default(),
            fixture: Vec::new(),
            clock: Arc::new(TokioClock::system()),
            pandapon_signer: Arc::new(SortedMd5Signer),
            damai_signer: Arc::new(DamaiMd5HeadSigner),
            body_bytes_max: BODY_BYTES_MAX,
            top_timestamp_skew_max_ms: TOP_TIMESTAMP_SKEW_MAX_MS,
            pandapon_timestamp_skew_max_ms: PANDAPON_TIMESTAMP_SKEW_MAX_MS,
            tmc: TmcSettings::default(),
        }
    }
}

impl std::fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimConfig")
            .field("app_key", &self.app_key)
            .field("app_secret", &self.app_secret)
            .field("paid_cancel_method", &self.paid_cancel_method)
            .field("order_get_method", &self.order_get_method)
            .field("supplier_key", &self.supplier_key)
            .field("supplier_secret", &self.supplier_secret)
            .field("pandapon_access_key", &"***")
            .field("pandapon_secret", &self.pandapon_secret)
            .field("pandapon_user_id", &self.pandapon_user_id)
            .field("seed", &self.seed)
            .field("faults", &self.faults)
            .field("flow", &self.flow)
            .field("callback_url", &self.callback_url)
            .field("fixture_rows", &self.fixture.len())
            .field("tmc", &self.tmc)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub cfg: SimConfig,
    pub book: Mutex<Book>,
    pub faults: Mutex<FaultState>,
    pub flow: Mutex<flow::FlowState>,
    /// Fast path: no profile at all.
    pub faults_on: AtomicBool,
    pub rng: SplitMix64,
    pub pushes: Mutex<Vec<PushRecord>>,
    pub push_seq: std::sync::atomic::AtomicU64,
    pub http: std::sync::OnceLock<reqwest::Client>,
    pub callback_url: Mutex<Option<String>>,
    pub callback_sink: Mutex<Option<Arc<dyn CallbackSink>>>,
    /// The TOP message service's queues and counters.
    pub tmc: Mutex<tmc::TmcState>,
    pub accounts: Mutex<accounts::Accounts>,
    /// PandaPon keys beyond the configured one (one per account) and the
    /// calls each key signed.
    pub pandapon_keys: Mutex<pandapon::Keys>,
}

/// The simulator: cheap to clone (an `Arc` inside); every clone is the same
/// simulator.
#[derive(Clone)]
pub struct Sim {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim").field("cfg", &self.inner.cfg).finish()
    }
}

/// A running HTTP server of a [`Sim`].
#[derive(Debug)]
pub struct SimServer {
    /// The bound address.
    pub addr: SocketAddr,
    /// `http://HOST:PORT`.
    pub base_url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SimServer {
    /// Stop accepting connections and wait for the server task to end
    /// (in-flight requests finish first).
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// Wait until the server stops (it stops only on [`SimServer::shutdown`]
    /// from another handle or an I/O failure).
    pub async fn wait(mut self) {
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Lock a mutex, recovering from poisoning: a panicking test thread must not
/// wedge the simulator for every other request.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sim {
    /// A simulator with `cfg`; the fixture rows are loaded (invalid rows are
    /// logged and skipped).
    pub fn new(cfg: SimConfig) -> Sim {
        let faults = FaultState::new(cfg.faults.clone());
        let faults_on = AtomicBool::new(!faults.is_empty());
        let sim = Sim {
            inner: Arc::new(Inner {
                rng: SplitMix64::new(cfg.seed),
                callback_url: Mutex::new(cfg.callback_url.clone()),
                callback_sink: Mutex::new(None),
                tmc: Mutex::new(tmc::TmcState::new(cfg.tmc.clone())),
                flow: Mutex::new(flow::FlowState::new(cfg.flow)),
                cfg,
                book: Mutex::new(Book::default()),
                faults: Mutex::new(faults),
                faults_on,
                pushes: Mutex::new(Vec::new()),
                push_seq: Default::default(),
                http: Default::default(),
                accounts: Mutex::new(accounts::Accounts::default()),
                pandapon_keys: Mutex::new(pandapon::Keys::default()),
            }),
        };
        sim.load_fixture();
        sim
    }

    fn load_fixture(&self) {
        let mut book = lock(&self.inner.book);
        for row in &self.inner.cfg.fixture {
            if let Err(e) = book.insert(row.clone()) {
                tracing::warn!(error = %e, "fixture row skipped");
            }
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.inner.cfg
    }

    /// The axum router: TOP at `/router/rest`, PandaPon under `/v2/`, admin under `/_admin/`.
    pub fn router(&self) -> axum::Router {
        use axum::routing::{any, get, post};
        let s = self.clone();
        axum::Router::new()
            .route("/router/rest", any(top::handle))
            .route(
                "/v2/taobao/order/refund/cancel/{refund_id}",
                any(pandapon::taobao_refund_cancel),
            )
            .route(
                "/v2/alibaba/order/cancel",
                any(pandapon::alibaba_order_cancel),
            )
            .route(
                "/v2/taobao/order/cancel",
                any(pandapon::taobao_order_cancel),
            )
            .route(
                "/v2/taobao/order/refund/submit",
                any(pandapon::taobao_refund_submit),
            )
            .route(
                "/v2/taobao/order/detail/{order_id}",
                any(pandapon::taobao_order_detail),
            )
            .route(
                "/v2/taobao/order/refund/detail/{refund_id}",
                any(pandapon::taobao_refund_detail),
            )
            .route(
                "/v2/alibaba/order/detail/{order_id}",
                any(pandapon::alibaba_order_detail),
            )
            .route(
                "/v2/alibaba/refund/detail/{refund_id}",
                any(pandapon::alibaba_refund_detail),
            )
            .route("/_admin/state", get(admin::state))
            .route("/_admin/orders", post(admin::add_orders))
            .route("/_admin/orders/{channel}/{id}", get(admin::order))
            .route("/_admin/refunds/{channel}/{id}", get(admin::refund))
            .route("/_admin/effects", get(admin::effects))
            .route("/_admin/reset", post(admin::reset))
            .route(
                "/_admin/faults",
                get(admin::get_faults).post(admin::set_faults),
            )
            .route("/_admin/flow", get(admin::get_flow).post(admin::set_flow))
            .route("/_admin/flow/ban", post(admin::ban_app_key))
            .route("/_admin/generate", post(admin::generate))
            .route("/_admin/schedule", post(admin::schedule))
            .route("/_admin/pushes", get(admin::pushes))
            .route("/_admin/callback", post(admin::set_callback))
            .route("/_admin/tmc", get(admin::get_tmc).post(admin::set_tmc))
            .route(
                "/_admin/accounts",
                get(admin::get_accounts).post(admin::add_accounts),
            )
            .route(
                "/_admin/pandapon/keys",
                get(admin::get_pandapon_keys).post(admin::add_pandapon_keys),
            )
            .route("/_admin/accounts/{id}/expire", post(admin::expire_account))
            .route("/_admin/accounts/{id}/revoke", post(admin::revoke_account))
            .fallback(pandapon::fallback)
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(s)
    }

    /// Bind `addr` (e.g. `127.0.0.1:0`) and serve in a background task.
    pub async fn serve(&self, addr: &str) -> std::io::Result<SimServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = self.router();
        let task = tokio::spawn(async move {
            let r = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "simulator server stopped");
            }
        });
        Ok(SimServer {
            addr: local,
            base_url: format!("http://{local}"),
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// Add (or replace) one order. Invalid rows (unknown channel or status)
    /// are logged and skipped; use [`Sim::try_add_order`] to see the error.
    pub fn add_order(&self, seed: OrderSeed) {
        if let Err(e) = self.try_add_order(seed) {
            tracing::warn!(error = %e, "order not added");
        }
    }

    /// Add (or replace) one order, or say why not.
    pub fn try_add_order(&self, seed: OrderSeed) -> Result<(), SeedError> {
        lock(&self.inner.book).insert(seed)
    }

    /// Add (or replace) one order owned by `account` (a seller nick): a TOP
    /// call carrying another registered account's session is refused on it.
    pub fn add_order_owned(&self, seed: OrderSeed, account: &str) -> Result<(), SeedError> {
        let (channel, order_id) = (seed.channel.clone(), seed.order_id.clone());
        self.try_add_order(seed)?;
        self.set_order_account(&channel, &order_id, Some(account.to_owned()));
        Ok(())
    }

    /// Set (or clear) the account owning an order; the order need not exist yet.
    pub fn set_order_account(&self, channel: &str, order_id: &str, account: Option<String>) {
        lock(&self.inner.accounts).set_owner(channel, order_id, account);
    }

    /// The account owning an order, if one was set.
    pub fn order_account(&self, channel: &str, order_id: &str) -> Option<String> {
        lock(&self.inner.accounts)
            .owner(channel, order_id)
            .map(str::to_owned)
    }

    /// Register (or replace) an account and its session. From the first
    /// account on, TOP calls carrying a `session` are checked against the
    /// accounts (see [`accounts`]).
    pub fn add_account(&self, seed: AccountSeed) -> Result<(), AccountError> {
        let now = self.now_ms();
        lock(&self.inner.accounts).upsert(seed, now)
    }

    /// Accept another PandaPon key (an account's own access key, secret and
    /// user id) beside the configured one; adding an access key again
    /// replaces its secret and user id.
    pub fn add_pandapon_key(&self, key: pandapon::KeySeed) -> Result<(), String> {
        lock(&self.inner.pandapon_keys).add(key)
    }

    /// Authenticated PandaPon calls per access key (the configured key
    /// included), for tests.
    pub fn pandapon_key_calls(&self) -> BTreeMap<String, u64> {
        lock(&self.inner.pandapon_keys).calls.clone()
    }

    /// Expire every session of an account now (its refresh token still works).
    pub fn expire_account(&self, id: &str) -> Result<(), AccountError> {
        let now = self.now_ms();
        lock(&self.inner.accounts).expire(id, now)
    }

    /// Revoke an account: its sessions and refresh token stop working.
    pub fn revoke_account(&self, id: &str) -> Result<(), AccountError> {
        lock(&self.inner.accounts).revoke(id)
    }

    /// Every account with its sessions (never their keys) and call counters.
    pub fn accounts(&self) -> Vec<AccountView> {
        let now = self.now_ms();
        lock(&self.inner.accounts).views(now)
    }

    /// Generate `n` orders from `seed` with the state weights of `mix`, add
    /// them, and return them.
    pub fn generate(&self, seed: u64, n: usize, mix: &Mix) -> Vec<OrderSeed> {
        let rows = book::generate_seeds(seed, n, mix);
        let mut b = lock(&self.inner.book);
        for r in &rows {
            // generate_seeds only produces valid rows.
            let _ = b.insert(r.clone());
        }
        rows
    }

    /// One order's current state.
    pub fn order(&self, channel: &str, order_id: &str) -> Option<OrderView> {
        self.tick();
        lock(&self.inner.book).order_view(channel, order_id)
    }

    /// One refund's current state.
    pub fn refund(&self, channel: &str, refund_id: &str) -> Option<RefundView> {
        self.tick();
        lock(&self.inner.book).refund_view(channel, refund_id)
    }

    /// Every applied effect, in order.
    pub fn effects(&self) -> Vec<Effect> {
        lock(&self.inner.book).effects.clone()
    }

    /// How many times each `(op, target)` was applied.
    pub fn effect_counts(&self) -> BTreeMap<(String, String), u64> {
        lock(&self.inner.book).counts.clone()
    }

    /// Scheduled events applied so far.
    pub fn event_history(&self) -> Vec<AppliedEvent> {
        lock(&self.inner.book).history.clone()
    }

    /// Callback pushes attempted so far.
    pub fn pushes(&self) -> Vec<PushRecord> {
        lock(&self.inner.pushes).clone()
    }

    /// Replace the fault profile (scripts restart).
    pub fn set_faults(&self, profile: FaultProfile) {
        let st = FaultState::new(profile);
        self.inner
            .faults_on
            .store(!st.is_empty(), Ordering::Relaxed);
        *lock(&self.inner.faults) = st;
    }

    /// The current fault profile.
    pub fn faults(&self) -> FaultProfile {
        lock(&self.inner.faults).profile.clone()
    }

    /// Change (or remove) the callback receiver at run time.
    pub fn set_callback_url(&self, url: Option<String>) {
        *lock(&self.inner.callback_url) = url;
    }

    /// Push callbacks to `sink` in-process instead of over HTTP (`None`: back
    /// to the callback URL). For deterministic simulation.
    pub fn set_callback_sink(&self, sink: Option<Arc<dyn CallbackSink>>) {
        *lock(&self.inner.callback_sink) = sink;
    }

    /// Schedule a change after `ev.after_ms` of the sim's clock. It is applied
    /// by a timer task when a tokio runtime is present, and in any case before
    /// the next request or state read that comes after its due time.
    pub fn schedule(&self, ev: ScheduledEvent) {
        let due = self.inner.cfg.clock.now_ms().saturating_add(ev.after_ms);
        let after = ev.after_ms;
        lock(&self.inner.book).schedule(due, ev);
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            let sim = self.clone();
            h.spawn(async move {
                sim.inner
                    .cfg
                    .clock
                    .sleep(Duration::from_millis(after))
                    .await;
                sim.tick();
            });
        }
    }

    /// Empty the book, the effect log, the pushes, the accounts and order
    /// owners, and the faults (back to the configured profile), then reload
    /// the fixture.
    pub fn reset(&self) {
        *lock(&self.inner.book) = Book::default();
        *lock(&self.inner.accounts) = accounts::Accounts::default();
        lock(&self.inner.pushes).clear();
        self.tmc_reset();
        self.set_faults(self.inner.cfg.faults.clone());
        *lock(&self.inner.flow) = flow::FlowState::new(self.inner.cfg.flow);
        self.load_fixture();
    }

    /// Replace the TOP flow-control settings (buckets start full again; the
    /// per-second logs and ban counts stay). Invalid settings are refused,
    /// naming the key.
    pub fn set_flow(&self, cfg: FlowConfig) -> Result<(), String> {
        cfg.validate()?;
        lock(&self.inner.flow).set_config(cfg);
        Ok(())
    }

    /// The TOP flow-control settings.
    pub fn flow(&self) -> FlowConfig {
        lock(&self.inner.flow).config()
    }

    /// Per app key: the per-second call log and the bans.
    pub fn flow_log(&self) -> BTreeMap<String, AppKeyFlow> {
        lock(&self.inner.flow).view(self.now_ms())
    }

    /// Ban `app_key` for `secs` seconds now: every TOP call on it gets code 7.
    pub fn ban_app_key(&self, app_key: &str, secs: u64) {
        lock(&self.inner.flow).ban(app_key, secs, self.now_ms());
    }

    /// Apply due scheduled events and push their callbacks.
    pub(crate) fn tick(&self) {
        let mut notices = Vec::new();
        {
            let mut b = lock(&self.inner.book);
            if b.pending.is_empty() {
                return;
            }
            b.apply_due(self.inner.cfg.clock.now_ms(), &mut notices);
        }
        self.dispatch(notices);
    }

    /// Run `f` on the book after applying due events; push the resulting callbacks.
    pub(crate) fn with_book<R>(&self, f: impl FnOnce(&mut Book, u64, &mut Vec<Notice>) -> R) -> R {
        let mut notices = Vec::new();
        let now = self.now_ms();
        let r = {
            let mut b = lock(&self.inner.book);
            b.apply_due(now, &mut notices);
            f(&mut b, now, &mut notices)
        };
        self.dispatch(notices);
        r
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.inner.cfg.clock.now_ms()
    }

    /// 32 lowercase hex characters from the seeded generator.
    pub(crate) fn request_id(&self) -> String {
        format!(
            "{:016x}{:016x}",
            self.inner.rng.next_u64(),
            self.inner.rng.next_u64()
        )
    }

    pub(crate) fn decide_faults(&self, endpoint: &str) -> Option<faults::Decision> {
        if !self.inner.faults_on.load(Ordering::Relaxed) {
            return None;
        }
        Some(lock(&self.inner.faults).decide(endpoint, &self.inner.rng))
    }

    pub(crate) fn dispatch(&self, notices: Vec<Notice>) {
        if notices.is_empty() {
            return;
        }
        let notices = self.tmc_publish(notices);
        if notices.is_empty() {
            return;
        }
        callbacks::dispatch(self, notices);
    }
}
