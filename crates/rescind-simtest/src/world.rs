//! One simulated world: the simulator (the "upstream"), one virtual clock, the
//! journal that survives crashes, the callback store, and the current process
//! life (engine, channel clients, callback receiver).
//!
//! A crash kills the process life: the engine, its channel clients and its
//! callback receiver are dropped, the journal keeps only what was durable
//! ([`MemoryJournal::restart`]), and a fresh life is built on the same
//! simulator and clock, recovers, and replays stored callbacks.

use crate::invariants::{Invariant, Violation};
use async_trait::async_trait;
use rescind_channel_pandapon::callback::{CallbackReceiver, MemoryCallbackStore};
use rescind_channel_pandapon::{
    Pandapon1688, PandaponClient, PandaponConfig, PandaponTaobao, ALIBABA_CHANNEL, TAOBAO_CHANNEL,
};
use rescind_channel_top::{DamaiChannel, DamaiConfig, GatewayConfig, TbcChannel, TopConfig};
use rescind_core::engine::Protections;
use rescind_core::{
    Channels, Clock, Engine, Limits, MemoryJournal, SagaId, SagaInput, SagaState, SeededIds,
    SplitMix64, TokioClock,
};
use rescind_sim::{defaults, CallbackSink, Sim, SimConfig, SimTransport};
use rescind_wire::sign::Secret;
use rescind_wire::transport::{
    HttpRequest, HttpResponse, Transport, TransportError, TransportStack,
};
use std::sync::{Arc, Mutex};

/// The fixed epoch every simulated clock starts at (2025-11-03T17:00:40Z),
/// so the same seed gives the same timestamps, signatures and journal.
pub const EPOCH_MS: u64 = 1_762_189_240_000;

/// The engine limits used in simulation: the production shape, with waits
/// scaled so that a seed covers its story in minutes of virtual time.
pub fn sim_limits() -> Limits {
    Limits {
        in_flight_max: 64,
        attempts_max: 12,
        backoff_initial_ms: 200,
        backoff_max_ms: 20_000,
        jitter_pct: 20,
        attempt_timeout_ms: 5_000,
        step_deadline_ms: 10 * 60_000,
        channel_wait_max_ms: 60_000,
        refund_poll_initial_ms: 2_000,
        refund_poll_max_ms: 30_000,
        refund_wait_max_ms: 24 * 3_600_000,
        // As in production: refund waits park (2 s polls), so the harness
        // covers parked sagas woken by timers, callbacks, aborts and crashes.
        park_after_ms: 1_000,
        // No push source runs in simulation; the value only has to be valid.
        refund_poll_with_push_ms: 60_000,
    }
}

/// Mix a seed with a stream number into an independent 64-bit seed.
pub fn sub_seed(seed: u64, stream: u64) -> u64 {
    SplitMix64::mix(seed ^ SplitMix64::mix(stream.wrapping_add(0x51_7cc1_b727_220a)))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The simulator's in-process callback sink: hands each push body to the
/// current life's real [`CallbackReceiver`] (none while the process is down:
/// answered 503, so the simulator re-pushes).
#[derive(Default)]
pub struct ReceiverSlot {
    current: Mutex<Option<CallbackReceiver>>,
}

#[async_trait]
impl CallbackSink for ReceiverSlot {
    async fn push(&self, payload: &str) -> u16 {
        let rx = lock(&self.current).clone();
        match rx {
            Some(rx) => rx.receive(payload.as_bytes()).await.0.as_u16(),
            None => 503,
        }
    }
}

/// A transport tap between the channel clients and the simulator's router:
/// it can kill the process right after the upstream applied its `n`-th
/// effect (the reply never reaches the engine, the journal is crashed).
pub struct Tap {
    inner: Arc<dyn Transport>,
    sim: Sim,
    crash_after_effect: Mutex<Option<(usize, MemoryJournal)>>,
}

#[async_trait]
impl Transport for Tap {
    async fn send(&self, req: HttpRequest) -> Result<HttpResponse, TransportError> {
        let before = self.sim.effects().len();
        let r = self.inner.send(req).await;
        let after = self.sim.effects().len();
        if after > before {
            let mut armed = lock(&self.crash_after_effect);
            if let Some((n, j)) = armed.as_ref() {
                if after >= *n {
                    j.crash_now();
                    *armed = None;
                    return Err(TransportError::NoResponse(
                        "the process died right after the upstream applied the effect".into(),
                    ));
                }
            }
        }
        r
    }
}

/// The world of one seed or one crash-point run.
pub struct World {
    /// The seed everything derives from.
    pub seed: u64,
    /// The one clock (virtual under a paused runtime).
    pub clock: Arc<dyn Clock>,
    /// The upstream.
    pub sim: Sim,
    /// The journal handle of the current life.
    pub journal: MemoryJournal,
    /// The engine of the current life.
    pub engine: Engine,
    /// The current life's callback receiver.
    pub receiver: CallbackReceiver,
    slot: Arc<ReceiverSlot>,
    store: Arc<MemoryCallbackStore>,
    tap: Arc<Tap>,
    /// Process lives so far (1 = no crash yet).
    pub life: u64,
    /// Engine limits.
    pub limits: Limits,
    /// Protections (all on, except in the harness's self-test).
    pub protections: Protections,
    /// Channel-client timeout layer, ms.
    pub transport_timeout_ms: u64,
    /// Callback-receiver malformed counts of earlier lives.
    pub malformed_callbacks: u64,
}

impl World {
    /// Build the world: must run inside a paused tokio runtime. `sim_cfg`'s
    /// clock is replaced by the world's clock.
    pub fn new(
        seed: u64,
        mut sim_cfg: SimConfig,
        callbacks_in_process: bool,
        protections: Protections,
        transport_timeout_ms: u64,
    ) -> Result<World, Violation> {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::with_base(EPOCH_MS));
        sim_cfg.clock = clock.clone();
        sim_cfg.seed = sub_seed(seed, 1);
        let sim = Sim::new(sim_cfg);
        let slot = Arc::new(ReceiverSlot::default());
        if callbacks_in_process {
            sim.set_callback_sink(Some(slot.clone()));
        }
        let tap = Arc::new(Tap {
            inner: Arc::new(SimTransport::new(&sim)),
            sim: sim.clone(),
            crash_after_effect: Mutex::new(None),
        });
        let store = Arc::new(MemoryCallbackStore::new());
        let journal = MemoryJournal::new();
        let limits = sim_limits();
        let (engine, receiver) = build_life(
            seed,
            1,
            &clock,
            &tap,
            &journal,
            &store,
            &limits,
            protections,
            transport_timeout_ms,
        )?;
        *lock(&slot.current) = Some(receiver.clone());
        Ok(World {
            seed,
            clock,
            sim,
            journal,
            engine,
            receiver,
            slot,
            store,
            tap,
            life: 1,
            limits,
            protections,
            transport_timeout_ms,
            malformed_callbacks: 0,
        })
    }

    /// Kill the process right after the upstream applies its `n`-th effect
    /// (counted over the whole run, from 1).
    pub fn crash_after_effect(&self, n: usize) {
        *lock(&self.tap.crash_after_effect) = Some((n, self.journal.clone()));
    }

    /// Virtual milliseconds since the world began.
    pub fn elapsed_ms(&self) -> u64 {
        self.clock.now_ms().saturating_sub(EPOCH_MS)
    }

    /// Start (or re-submit) a saga under its idempotency key. `Ok(true)` once
    /// the journal holds it; `Ok(false)` when the process died first.
    pub async fn submit(&self, key: &str, input: &SagaInput) -> Result<bool, Violation> {
        match self.engine.start_keyed(key, input.clone()).await {
            Ok(_) => Ok(true),
            Err(rescind_core::Error::Journal(rescind_core::JournalError::Crashed)) => Ok(false),
            Err(rescind_core::Error::ShuttingDown) if self.journal.is_crashed() => Ok(false),
            Err(e) => Err(Violation::new(
                self.seed,
                Invariant::Harness,
                format!("start of {key} failed: {e}"),
            )),
        }
    }

    /// The process died: drop the life, keep the durable journal, build a new
    /// life on the same simulator and clock, recover, replay callbacks.
    /// `arm` may schedule the next crash (during recovery) on the new journal.
    /// Returns `Ok(false)` if the new life crashed during recovery already.
    pub async fn restart(&mut self, arm: impl FnOnce(&MemoryJournal)) -> Result<bool, Violation> {
        self.engine.kill();
        self.malformed_callbacks += self.receiver.stats().malformed;
        *lock(&self.slot.current) = None;
        self.life += 1;
        self.journal = self.journal.restart();
        arm(&self.journal);
        let (engine, receiver) = build_life(
            self.seed,
            self.life,
            &self.clock,
            &self.tap,
            &self.journal,
            &self.store,
            &self.limits,
            self.protections,
            self.transport_timeout_ms,
        )?;
        self.engine = engine;
        self.receiver = receiver.clone();
        match self.engine.recover().await {
            Ok(report) => {
                // A saga whose Finished record was durable but not yet marked
                // is marked by recovery and reported AlreadyFinished: fine.
                let lost = report
                    .failed
                    .iter()
                    .find(|(_, e)| !matches!(e, rescind_core::Error::AlreadyFinished { .. }));
                if let Some((id, e)) = lost {
                    return Err(Violation::new(
                        self.seed,
                        Invariant::I1NoSagaLost,
                        format!("saga {id} could not be resumed after a crash: {e}"),
                    ));
                }
            }
            Err(rescind_core::Error::Journal(rescind_core::JournalError::Crashed)) => {
                return Ok(false)
            }
            Err(e) => {
                return Err(Violation::new(
                    self.seed,
                    Invariant::I1NoSagaLost,
                    format!("recovery failed: {e}"),
                ))
            }
        }
        *lock(&self.slot.current) = Some(receiver.clone());
        // Messages stored by earlier lives reach the resumed sagas again.
        if let Err(e) = receiver.replay().await {
            return Err(Violation::new(
                self.seed,
                Invariant::Harness,
                format!("callback replay failed: {e}"),
            ));
        }
        Ok(!self.journal.is_crashed())
    }

    /// Cancel any crash still scheduled on the journal (faults stop).
    pub fn disarm_crashes(&mut self) {
        if !self.journal.is_crashed() {
            // On a live journal, `restart` only clears the scheduled crash.
            self.journal = self.journal.restart();
        }
        *lock(&self.tap.crash_after_effect) = None;
    }

    /// A saga's folded state, if the journal has it.
    pub async fn load(&self, id: SagaId) -> Option<SagaState> {
        self.engine.load(id).await.ok()
    }

    /// Callback requests the receivers rejected as malformed, all lives.
    pub fn malformed_callbacks_total(&self) -> u64 {
        self.malformed_callbacks + self.receiver.stats().malformed
    }
}

#[allow(clippy::too_many_arguments)]
fn build_life(
    seed: u64,
    life: u64,
    clock: &Arc<dyn Clock>,
    tap: &Arc<Tap>,
    journal: &MemoryJournal,
    store: &Arc<MemoryCallbackStore>,
    limits: &Limits,
    protections: Protections,
    transport_timeout_ms: u64,
) -> Result<(Engine, CallbackReceiver), Violation> {
    let harness = |what: &str, e: &dyn std::fmt::Display| {
        Violation::new(seed, Invariant::Harness, format!("{what}: {e}"))
    };
    let transport = TransportStack::new(tap.clone())
        .timeout(clock.clone(), transport_timeout_ms)
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
        .map_err(|e| harness("tbc channel", &e))?,
    );
    let damai = Arc::new(
        DamaiChannel::new(
            DamaiConfig::new(
                gateway,
                defaults::SUPPLIER_KEY,
                Secret::new(defaults::SUPPLIER_SECRET),
            ),
            transport.clone(),
            clock.clone(),
        )
        .map_err(|e| harness("damai channel", &e))?,
    );
    let client = Arc::new(
        PandaponClient::new(
            PandaponConfig::new(
                "http://sim",
                defaults::PANDAPON_ACCESS_KEY,
                Secret::new(defaults::PANDAPON_SECRET),
                defaults::PANDAPON_USER_ID,
            ),
            transport,
            clock.clone(),
        )
        .map_err(|e| harness("pandapon client", &e))?
        .with_rng(Arc::new(SplitMix64::new(sub_seed(seed, 100 + life)))),
    );
    let taobao = Arc::new(PandaponTaobao::new(client.clone()));
    let a1688 = Arc::new(Pandapon1688::new(client));
    let channels = Channels::new()
        .with_cancel("tmall-tbc", tbc.clone())
        .with_lookup("tmall-tbc", tbc)
        .with_stock("damai", damai)
        .with_cancel(TAOBAO_CHANNEL, taobao.clone())
        .with_refund(TAOBAO_CHANNEL, taobao.clone())
        .with_lookup(TAOBAO_CHANNEL, taobao)
        .with_cancel(ALIBABA_CHANNEL, a1688.clone())
        .with_lookup(ALIBABA_CHANNEL, a1688);
    let engine = Engine::builder(Arc::new(journal.clone()))
        .clock(clock.clone())
        .rng(Arc::new(SplitMix64::new(sub_seed(seed, 200 + life))))
        .ids(Arc::new(SeededIds::new(sub_seed(seed, 300 + life))))
        .limits(limits.clone())
        .channels(channels)
        .protections(protections)
        .build();
    let receiver =
        CallbackReceiver::new(store.clone(), Arc::new(engine.clone())).with_clock(clock.clone());
    Ok((engine, receiver))
}
