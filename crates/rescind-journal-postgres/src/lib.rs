//! # rescind-journal-postgres
//!
//! rescind's shared journal: several `rescind worker` processes on one
//! PostgreSQL database (or a Postgres-compatible engine), each saga driven by
//! one worker at a time.
//!
//! - **Leases.** A saga belongs to the worker that started it, or that took it
//!   with [`Journal::claim_unfinished`] (free or expired leases only, claimed
//!   with `FOR UPDATE SKIP LOCKED`, so workers claiming at once never block on
//!   or share a saga). A background task renews held leases every
//!   [`PgConfig::lease_renew_interval_ms`]; a worker that stops renewing loses
//!   its sagas [`PgConfig::lease_ttl_ms`] later.
//! - **Fencing.** Every claim bumps the saga's fencing token; every write
//!   carries the token its worker holds, and the *database* writes it only if
//!   that token is still current and the lease is this worker's. A paused or
//!   partitioned worker whose saga was taken over can change nothing: its
//!   appends and `mark_finished` fail with [`JournalError::Fenced`].
//! - **Group commit.** Concurrent appends are queued and written by one
//!   statement (one transaction, one WAL flush); a fenced or conflicting row
//!   fails only its own append.
//! - **Durability.** `append` returns once PostgreSQL committed the record,
//!   i.e. flushed it to its WAL under the server's `synchronous_commit` (the
//!   default, `on`, is durable; `off` would lose the last few hundred ms on a
//!   server crash and must not be used).
//! - **TLS.** rustls, following the URL's `sslmode` with libpq's values
//!   ([`SslMode`]; default `prefer`): `verify-full` with the CA file as
//!   `sslrootcert=PATH` or [`PgConfig::ca_file`] checks chain and host name;
//!   `require` encrypts without checking the certificate. See
//!   `docs/security.md` ("PostgreSQL TLS").
//! - **Schema.** Embedded migrations are applied at [`PgJournal::connect`]; a
//!   database whose schema is newer than this build is refused with
//!   [`JournalError::NewerFormat`].
//!
//! ```no_run
//! use rescind_core::{Engine, Journal};
//! use rescind_journal_postgres::{PgConfig, PgJournal};
//! use std::sync::Arc;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let journal = PgJournal::connect(
//!     "postgres://rescind:secret@127.0.0.1:5432/rescind",
//!     PgConfig::default(), // worker id hostname-pid-random, 30 s leases
//! )
//! .await?;
//! let engine = Engine::builder(Arc::new(journal)).build();
//! // Take over unfinished sagas whose lease is free or expired, and run them.
//! let report = engine.recover().await?;
//! println!("resumed {} sagas", report.resumed);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod committer;
mod config;
mod error;
mod index;
mod pool;
mod schema;
mod tls;

pub use config::{
    default_worker_id, redact_url, refuse_url_password, url_has_password, PasswordInUrl, PgConfig,
};
pub use error::{PgError, Result};
pub use schema::SCHEMA_VERSION;
pub use tls::SslMode;

use async_trait::async_trait;
use committer::{AppendReq, SagaRow, SagaRows};
use error::backend;
use pool::Pool;
use rescind_core::record::{decode, encode};
use rescind_core::{
    Entry, Journal, JournalError, SagaCounts, SagaId, SagaPage, SagaQuery, SagaSet, SagaStatus,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Client;

/// A lease this worker holds.
#[derive(Clone, Copy, Debug)]
struct Lease {
    /// The fencing token every write on the saga carries.
    fence: i64,
    /// A renewal found the lease taken over (writes will be fenced).
    lost: bool,
    /// This worker is creating the saga (its first append is in flight): the
    /// row may not exist yet, so renewal skips it, but claims exclude it.
    creating: bool,
}

/// What the journal handle, the committer and the renewal task share.
pub(crate) struct Shared {
    pool: Pool,
    cfg: PgConfig,
    leases: Mutex<HashMap<SagaId, Lease>>,
    /// Group sizes and commit latencies of the committer, for metrics.
    groups: rescind_core::metrics::GroupCommitStats,
    /// Left the worker registry: the heartbeat is off.
    deregistered: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<SagaId, Lease>> {
        // Every mutation is one insert/remove/flag; a poisoned map is consistent.
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn held_fence(&self, saga: SagaId) -> Option<i64> {
        self.leases().get(&saga).map(|l| l.fence)
    }

    async fn client(&self) -> Result<Arc<Client>, JournalError> {
        self.pool.get().await.map_err(JournalError::from)
    }

    /// A write under `fence` was fenced: stop returning the saga from
    /// `claim_unfinished` and stop renewing it (unless a newer claim replaced it).
    fn mark_lost(&self, saga: SagaId, fence: Option<i64>) {
        if let Some(l) = self.leases().get_mut(&saga) {
            if Some(l.fence) == fence {
                l.lost = true;
            }
        }
    }

    /// Lease and sequence of the given sagas, as stored now.
    pub(crate) async fn saga_rows(
        &self,
        client: &Client,
        ids: &[uuid::Uuid],
    ) -> Result<SagaRows, JournalError> {
        let rows = client
            .query(
                "SELECT saga_id, worker_id, fence, next_seq, finished FROM sagas WHERE saga_id = ANY($1)",
                &[&ids],
            )
            .await
            .map_err(|e| backend("reading saga leases", &e))?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in rows {
            let parsed = (|| -> Result<(SagaId, SagaRow), tokio_postgres::Error> {
                Ok((
                    SagaId(r.try_get(0)?),
                    SagaRow {
                        worker_id: r.try_get(1)?,
                        fence: r.try_get(2)?,
                        next_seq: r.try_get(3)?,
                        finished: r.try_get(4)?,
                    },
                ))
            })();
            let (id, row) = parsed.map_err(|e| backend("reading saga leases", &e))?;
            out.insert(id, row);
        }
        Ok(out)
    }

    /// Register this worker as live for another `lease_ttl_ms` (the
    /// registry of [`PgJournal::live_workers`]).
    async fn heartbeat(&self) -> Result<(), JournalError> {
        if self.deregistered.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        let ttl_ms = self.cfg.lease_ttl_ms as i64;
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO workers (worker_id, heartbeat_expires_at)
                 VALUES ($1, now() + $2::int8 * interval '1 millisecond')
                 ON CONFLICT (worker_id) DO UPDATE SET heartbeat_expires_at = EXCLUDED.heartbeat_expires_at",
                &[&self.cfg.worker_id, &ttl_ms],
            )
            .await
            .map_err(|e| backend("renewing the worker heartbeat", &e))?;
        Ok(())
    }

    /// Extend every held lease; mark the ones found taken over as lost.
    async fn renew(&self) -> Result<usize, JournalError> {
        let mut held: Vec<(SagaId, i64)> = self
            .leases()
            .iter()
            .filter(|(_, l)| !l.lost && !l.creating)
            .map(|(id, l)| (*id, l.fence))
            .collect();
        // Saga order, as the committer writes (see committer.rs).
        held.sort_by_key(|(id, _)| id.0);
        if held.is_empty() {
            return Ok(0);
        }
        let ids: Vec<uuid::Uuid> = held.iter().map(|(id, _)| id.0).collect();
        let fences: Vec<i64> = held.iter().map(|(_, f)| *f).collect();
        let ttl_ms = self.cfg.lease_ttl_ms as i64;
        let client = self.client().await?;
        let rows = client
            .query(
                "UPDATE sagas s SET lease_expires_at = now() + $4::int8 * interval '1 millisecond'
                 FROM unnest($2::uuid[], $3::int8[]) AS h(saga_id, fence)
                 WHERE s.saga_id = h.saga_id AND s.fence = h.fence AND s.worker_id = $1 AND NOT s.finished
                 RETURNING s.saga_id",
                &[&self.cfg.worker_id, &ids, &fences, &ttl_ms],
            )
            .await
            .map_err(|e| backend("renewing leases", &e))?;
        let renewed: std::collections::HashSet<uuid::Uuid> = rows
            .iter()
            .filter_map(|r| r.try_get::<_, uuid::Uuid>(0).ok())
            .collect();
        let mut leases = self.leases();
        for (id, fence) in held {
            if !renewed.contains(&id.0) {
                if let Some(l) = leases.get_mut(&id) {
                    // Only if nothing (a claim, a finish) changed it meanwhile.
                    if l.fence == fence && !l.lost {
                        tracing::warn!(saga = %id, fence, worker = %self.cfg.worker_id,
                            "lease lost: the saga was taken over or finished elsewhere; its writes here will be fenced");
                        l.lost = true;
                    }
                }
            }
        }
        Ok(renewed.len())
    }
}

/// The PostgreSQL journal of one worker. See the [crate docs](crate).
///
/// Dropping it stops lease renewal and the committer (after it wrote what was
/// queued); leases are not released, so other workers take the sagas over
/// when they expire (call [`Journal::release_all`] or [`Journal::release`]
/// first for an immediate hand-over, as a gracefully stopping worker does).
pub struct PgJournal {
    shared: Arc<Shared>,
    tx: mpsc::Sender<AppendReq>,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for PgJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgJournal")
            .field("target", &self.shared.pool.target)
            .field("worker_id", &self.shared.cfg.worker_id)
            .finish_non_exhaustive()
    }
}

impl Drop for PgJournal {
    fn drop(&mut self) {
        if let Some(h) = self.renewer.take() {
            h.abort();
        }
    }
}

impl PgJournal {
    /// Connect to `url` (`postgres://user:password@host:port/db?sslmode=…`,
    /// or the `key=value` form), apply missing schema migrations and start
    /// the committer and lease renewal. Must be called within a tokio runtime.
    ///
    /// TLS follows the URL's `sslmode` (libpq's values; default `prefer`):
    /// `disable`, `prefer`, `require` (encrypted, certificate not checked),
    /// `verify-ca` and `verify-full` (checked against the CA file given as
    /// the URL's `sslrootcert=PATH` or [`PgConfig::ca_file`]; `verify-full`
    /// also checks the host name). See [`SslMode`].
    ///
    /// Errors say what failed and where (`user@host:port/db`, never the
    /// password): [`PgError::Unreachable`], [`PgError::Auth`],
    /// [`PgError::Tls`], [`PgError::InvalidUrl`], [`PgError::UnknownSslMode`],
    /// [`PgError::InvalidConfig`], or
    /// `PgError::Journal(JournalError::NewerFormat { .. })` when the schema
    /// was written by a newer rescind.
    pub async fn connect(url: &str, config: PgConfig) -> Result<PgJournal, PgError> {
        config.validate()?;
        let tls::ParsedUrl {
            mut pg,
            ssl_mode,
            root_cert,
        } = tls::parse_url(url)?;
        let ca = tls::ca_path(root_cert.as_deref(), config.ca_file.as_deref())?;
        let connector = tls::connector(ssl_mode, ca).await?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_millis(config.connect_timeout_ms));
        }
        if pg.get_application_name().is_none() {
            pg.application_name("rescind-journal");
        }
        pg.keepalives(true);
        if let Some(schema) = &config.schema {
            let opts = match pg.get_options() {
                Some(o) if !o.is_empty() => format!("{o} -c search_path={schema}"),
                _ => format!("-c search_path={schema}"),
            };
            pg.options(opts);
        }
        let target = config::describe_target(&pg);
        let pool = Pool::new(pg, (connector, ssl_mode), target.clone(), config.pool_size);
        {
            let mut first = pool.connect_raw().await?;
            schema::migrate(&mut first, &target, config.schema.as_deref()).await?;
            index::backfill(&mut first, &target).await?;
        }
        tracing::info!(target_db = %target, worker = %config.worker_id, ssl_mode = %ssl_mode, "PostgreSQL journal open");
        let (tx, rx) = mpsc::channel(config.queue_records_max);
        let renew_every = config.lease_renew_interval_ms;
        let shared = Arc::new(Shared {
            pool,
            cfg: config,
            leases: Mutex::new(HashMap::new()),
            groups: Default::default(),
            deregistered: Default::default(),
        });
        {
            let c = shared.pool.connect_raw().await?;
            // Rows of workers gone for a day are noise in the registry.
            c.execute(
                "DELETE FROM workers WHERE heartbeat_expires_at < now() - interval '1 day'",
                &[],
            )
            .await
            .map_err(|e| PgError::Journal(backend("pruning the worker registry", &e)))?;
        }
        shared.heartbeat().await.map_err(PgError::Journal)?;
        tokio::spawn(committer::run(Arc::clone(&shared), rx));
        let renewer = (renew_every > 0)
            .then(|| tokio::spawn(renew_loop(Arc::downgrade(&shared), renew_every)));
        Ok(PgJournal {
            shared,
            tx,
            renewer,
        })
    }

    /// The `sslmode` its connections use.
    pub fn ssl_mode(&self) -> SslMode {
        self.shared.pool.ssl_mode
    }

    /// This worker's id (the `sagas.worker_id` of its leases).
    pub fn worker_id(&self) -> &str {
        &self.shared.cfg.worker_id
    }

    /// The database as `user@host:port/db` (no password), for logs.
    pub fn target(&self) -> &str {
        &self.shared.pool.target
    }

    /// The fencing token this worker holds on `saga`, if it holds (or held
    /// and has not yet noticed losing) its lease.
    pub fn fence(&self, saga: SagaId) -> Option<u64> {
        self.shared.held_fence(saga).map(|f| f.max(0) as u64)
    }

    /// Renew every held lease now (the background task does this every
    /// `lease_renew_interval_ms`). Returns how many were renewed; leases found
    /// taken over are dropped from renewal and their writes will be fenced.
    pub async fn renew_leases(&self) -> Result<usize, JournalError> {
        self.shared.heartbeat().await?;
        self.shared.renew().await
    }

    /// Leave the worker registry now (a graceful stop): other workers count
    /// one fewer live worker at once instead of after `lease_ttl_ms`. The
    /// heartbeat stops; leases are untouched ([`Journal::release_all`]).
    pub async fn deregister(&self) -> Result<(), JournalError> {
        self.shared
            .deregistered
            .store(true, std::sync::atomic::Ordering::Release);
        let client = self.shared.client().await?;
        client
            .execute(
                "DELETE FROM workers WHERE worker_id = $1",
                &[&self.shared.cfg.worker_id],
            )
            .await
            .map_err(|e| backend("leaving the worker registry", &e))?;
        Ok(())
    }

    /// Publish a TOP app-key ban that lasts `remaining_ms` more (from the
    /// database's clock) for the other workers ([`PgJournal::app_key_bans`]).
    /// A longer ban already published is kept.
    pub async fn publish_app_key_ban(
        &self,
        gateway: &str,
        app_key: &str,
        remaining_ms: u64,
    ) -> Result<(), JournalError> {
        let ms = i64::try_from(remaining_ms).unwrap_or(i64::MAX);
        let client = self.shared.client().await?;
        client
            .execute(
                "INSERT INTO app_key_bans (gateway, app_key, banned_until)
                 VALUES ($1, $2, now() + $3::int8 * interval '1 millisecond')
                 ON CONFLICT (gateway, app_key) DO UPDATE
                 SET banned_until = GREATEST(app_key_bans.banned_until, EXCLUDED.banned_until)",
                &[&gateway, &app_key, &ms],
            )
            .await
            .map_err(|e| backend("publishing an app-key ban", &e))?;
        Ok(())
    }

    /// The app-key bans in force, as `(gateway, app_key, remaining_ms)`;
    /// ended ones are deleted on the way.
    pub async fn app_key_bans(&self) -> Result<Vec<(String, String, u64)>, JournalError> {
        let client = self.shared.client().await?;
        client
            .execute("DELETE FROM app_key_bans WHERE banned_until <= now()", &[])
            .await
            .map_err(|e| backend("reading app-key bans", &e))?;
        let rows = client
            .query(
                "SELECT gateway, app_key,
                        CEIL(EXTRACT(EPOCH FROM (banned_until - now())) * 1000)::int8
                 FROM app_key_bans WHERE banned_until > now() ORDER BY gateway, app_key",
                &[],
            )
            .await
            .map_err(|e| backend("reading app-key bans", &e))?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<_, String>(0)?,
                    r.try_get::<_, String>(1)?,
                    u64::try_from(r.try_get::<_, i64>(2)?).unwrap_or(0),
                ))
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(|e| backend("reading app-key bans", &e))
    }

    /// The workers registered live on this database (this one included while
    /// it renews): each renews its heartbeat with its leases, every
    /// `lease_renew_interval_ms`, for `lease_ttl_ms`; a worker that stops
    /// renewing (crashed, or dropped without release) is no longer live
    /// once that expires, and [`Journal::release_all`] deregisters at once.
    /// Sorted by id.
    pub async fn live_workers(&self) -> Result<Vec<String>, JournalError> {
        let client = self.shared.client().await?;
        let rows = client
            .query(
                "SELECT worker_id FROM workers WHERE heartbeat_expires_at > now() ORDER BY worker_id",
                &[],
            )
            .await
            .map_err(|e| backend("reading the worker registry", &e))?;
        rows.iter()
            .map(|r| r.try_get::<_, String>(0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| backend("reading the worker registry", &e))
    }
}

async fn renew_loop(shared: Weak<Shared>, every_ms: u64) {
    let mut tick = tokio::time::interval(Duration::from_millis(every_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Err(e) = shared.heartbeat().await {
            tracing::warn!(worker = %shared.cfg.worker_id, error = %e, "worker heartbeat failed; retrying next interval");
        }
        if let Err(e) = shared.renew().await {
            tracing::warn!(worker = %shared.cfg.worker_id, error = %e, "lease renewal failed; retrying next interval");
        }
    }
}

#[async_trait]
impl Journal for PgJournal {
    /// Reaches the database and checks that it takes writes
    /// (`SHOW transaction_read_only`, which PostgreSQL and compatible
    /// engines answer): a replica or a read-only database is unhealthy.
    fn group_commits(&self) -> Option<rescind_core::metrics::GroupCommitSnapshot> {
        Some(self.shared.groups.snapshot())
    }

    async fn probe(&self) -> Result<(), JournalError> {
        let client = self.shared.client().await?;
        let rows = client
            .simple_query("SHOW transaction_read_only")
            .await
            .map_err(|e| {
                JournalError::Backend(format!("the journal database does not answer: {e}"))
            })?;
        let read_only = rows.iter().any(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0) == Some("on"),
            _ => false,
        });
        if read_only {
            return Err(JournalError::Backend(
                "the journal database is read-only (transaction_read_only = on)".into(),
            ));
        }
        Ok(())
    }

    async fn append(&self, saga: SagaId, entry: &Entry) -> Result<(), JournalError> {
        let seq = i64::try_from(entry.seq).map_err(|_| JournalError::SequenceConflict {
            saga,
            seq: entry.seq,
            expected: 0,
        })?;
        let (reply, answer) = oneshot::channel();
        let req_fence = self.shared.held_fence(saga);
        let creating = seq == 0 && req_fence.is_none();
        if creating {
            // Hold the saga before it exists: this worker's own periodic claim
            // excludes held sagas, and must not re-claim (and so fence) a saga
            // it is in the middle of creating.
            self.shared.leases().entry(saga).or_insert(Lease {
                fence: 1,
                lost: false,
                creating: true,
            });
        }
        let req = AppendReq {
            saga,
            seq,
            fence: req_fence,
            body: encode(entry),
            change: rescind_core::IndexChange::of(entry),
            reply,
        };
        self.tx
            .send(req)
            .await
            .map_err(|_| JournalError::Backend("the journal's committer stopped".into()))?;
        let res = answer.await.map_err(|_| {
            JournalError::Backend("the journal's committer stopped before answering".into())
        })?;
        match &res {
            // Creating the saga leased it to this worker under token 1 (held
            // above already; a lease never goes back to an older token).
            Ok(()) if creating => {
                if let Some(l) = self.shared.leases().get_mut(&saga) {
                    l.creating = false;
                }
            }
            Ok(()) => {}
            Err(_) if creating => {
                let mut leases = self.shared.leases();
                if leases.get(&saga).is_some_and(|l| l.fence == 1) {
                    leases.remove(&saga);
                }
            }
            Err(JournalError::Fenced { .. }) => self.shared.mark_lost(saga, req_fence),
            _ => {}
        }
        res
    }

    /// New sagas (records from seq 0) in one statement per call
    /// (`index::load_new`: multi-row `INSERT`s from `unnest` arrays, the
    /// same columns as the append statement leaves); unfinished ones are
    /// leased to this worker under token 1, as their first append would
    /// have. A saga that exists already refuses the whole call (nothing
    /// written) with a `SequenceConflict` naming it. Calls with sagas that
    /// do not start at seq 0 go through `append_batch`, one saga at a time.
    async fn append_many(&self, sagas: &[(SagaId, Vec<Entry>, bool)]) -> Result<(), JournalError> {
        if sagas.is_empty() {
            return Ok(());
        }
        if !sagas.iter().all(|(_, e, _)| index::starts_a_saga(e)) {
            for (saga, entries, finish) in sagas {
                self.append_batch(*saga, entries, *finish).await?;
            }
            return Ok(());
        }
        let client = self.shared.client().await?;
        let ttl_ms = self.shared.cfg.lease_ttl_ms as i64;
        let leased = index::load_new(&client, &self.shared.cfg.worker_id, ttl_ms, sagas).await?;
        let mut leases = self.shared.leases();
        for saga in leased {
            leases.insert(
                saga,
                Lease {
                    fence: 1,
                    lost: false,
                    creating: false,
                },
            );
        }
        Ok(())
    }

    /// One query for the whole batch (`saga_id = ANY($1)`), each saga's
    /// result as [`Journal::read`] gives it.
    async fn read_many(&self, sagas: &[SagaId]) -> Vec<Result<Vec<Entry>, JournalError>> {
        if sagas.is_empty() {
            return Vec::new();
        }
        let ids: Vec<uuid::Uuid> = sagas.iter().map(|s| s.0).collect();
        let rows = match self.shared.client().await {
            Ok(client) => client
                .query(
                    "SELECT saga_id, seq, body FROM records WHERE saga_id = ANY($1) ORDER BY saga_id, seq",
                    &[&ids],
                )
                .await
                .map_err(|e| backend(&format!("reading {} sagas", ids.len()), &e)),
            Err(e) => Err(e),
        };
        let rows = match rows {
            Ok(r) => r,
            Err(e) => return sagas.iter().map(|_| Err(e.clone())).collect(),
        };
        let mut by_saga: HashMap<uuid::Uuid, Result<Vec<Entry>, JournalError>> = HashMap::new();
        for r in &rows {
            let row: Result<(uuid::Uuid, i64, &[u8]), _> =
                (|| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))();
            let (id, seq, body) = match row {
                Ok(v) => v,
                Err(e) => {
                    let e: tokio_postgres::Error = e;
                    let err = backend("reading sagas", &e);
                    return sagas.iter().map(|_| Err(err.clone())).collect();
                }
            };
            let slot = by_saga.entry(id).or_insert_with(|| Ok(Vec::new()));
            if let Ok(v) = slot {
                match decode(SagaId(id), seq.max(0) as u64, body) {
                    Ok(e) => v.push(e),
                    Err(e) => *slot = Err(e),
                }
            }
        }
        sagas
            .iter()
            .map(|s| match by_saga.get(&s.0) {
                Some(r) => r.clone(),
                None => Err(JournalError::UnknownSaga(*s)),
            })
            .collect()
    }

    async fn read(&self, saga: SagaId) -> Result<Vec<Entry>, JournalError> {
        let client = self.shared.client().await?;
        let rows = client
            .query(
                "SELECT seq, body FROM records WHERE saga_id = $1 ORDER BY seq",
                &[&saga.0],
            )
            .await
            .map_err(|e| backend(&format!("reading saga {saga}"), &e))?;
        if rows.is_empty() {
            return Err(JournalError::UnknownSaga(saga));
        }
        rows.iter()
            .map(|r| {
                let seq: i64 = r
                    .try_get(0)
                    .map_err(|e| backend(&format!("reading saga {saga}"), &e))?;
                let body: &[u8] = r
                    .try_get(1)
                    .map_err(|e| backend(&format!("reading saga {saga}"), &e))?;
                decode(saga, seq.max(0) as u64, body)
            })
            .collect()
    }

    async fn list(&self, set: SagaSet) -> Result<Vec<SagaId>, JournalError> {
        let finished = set == SagaSet::Finished;
        let client = self.shared.client().await?;
        let rows = client
            .query(
                "SELECT saga_id FROM sagas WHERE finished = $1 ORDER BY saga_id",
                &[&finished],
            )
            .await
            .map_err(|e| backend("listing sagas", &e))?;
        rows.iter()
            .map(|r| {
                r.try_get::<_, uuid::Uuid>(0)
                    .map(SagaId)
                    .map_err(|e| backend("listing sagas", &e))
            })
            .collect()
    }

    async fn mark_finished(&self, saga: SagaId) -> Result<(), JournalError> {
        let held = self.shared.held_fence(saga);
        let client = self.shared.client().await?;
        let n = client
            .execute(
                "UPDATE sagas SET finished = true, finished_at = coalesce(finished_at, now()),
                                  worker_id = NULL, lease_expires_at = NULL
                 WHERE saga_id = $1 AND (finished OR (worker_id = $2 AND fence = $3))",
                &[
                    &saga.0,
                    &self.shared.cfg.worker_id,
                    &held.unwrap_or(committer::NO_TOKEN),
                ],
            )
            .await
            .map_err(|e| backend(&format!("finishing saga {saga}"), &e))?;
        if n == 1 {
            self.shared.leases().remove(&saga);
            return Ok(());
        }
        let rows = self.shared.saga_rows(&client, &[saga.0]).await?;
        match rows.get(&saga) {
            None => Err(JournalError::UnknownSaga(saga)),
            Some(row) => {
                self.shared.mark_lost(saga, held);
                Err(JournalError::Fenced {
                    saga,
                    detail: committer::fenced_detail(&self.shared.cfg.worker_id, held, row),
                })
            }
        }
    }

    /// One statement over the index columns (schema version 3), in saga id
    /// order from the cursor, `limit + 1` rows.
    async fn query(&self, q: &SagaQuery) -> Result<SagaPage, JournalError> {
        let client = self.shared.client().await?;
        index::run_query(&client, q).await
    }

    /// `count(*)` over the same `WHERE` terms as [`Journal::query`].
    async fn count(&self, q: &SagaQuery) -> Result<u64, JournalError> {
        let client = self.shared.client().await?;
        index::run_count(&client, q).await
    }

    /// Running and stuck sagas counted exactly; the terminal states counted
    /// exactly only while the table is small, else the query planner's
    /// estimate (`index::COUNTS_EXACT_ROWS_MAX`, [`SagaCounts::terminal_exact`]).
    async fn counts(&self) -> Result<SagaCounts, JournalError> {
        let client = self.shared.client().await?;
        index::run_counts(&client).await
    }

    /// The update-time index (`updated_at_ms, saga_id`) walked backwards.
    async fn recent(
        &self,
        states: &[SagaStatus],
        limit: usize,
    ) -> Result<Vec<SagaId>, JournalError> {
        let client = self.shared.client().await?;
        index::run_recent(&client, states, limit).await
    }

    async fn claim_unfinished(&self) -> Result<Vec<SagaId>, JournalError> {
        // Sagas this process already holds are returned as they are, not
        // re-claimed: bumping their token would fence this worker's own
        // in-flight writes.
        // Sagas still being created by this worker are excluded from the claim
        // but not returned: their creator drives them.
        let (held, creating): (Vec<uuid::Uuid>, Vec<uuid::Uuid>) = {
            let leases = self.shared.leases();
            let mut held = Vec::new();
            let mut creating = Vec::new();
            for (id, l) in leases.iter().filter(|(_, l)| !l.lost) {
                if l.creating {
                    creating.push(id.0);
                } else {
                    held.push(id.0);
                }
            }
            (held, creating)
        };
        let excluded: Vec<uuid::Uuid> = held.iter().chain(&creating).copied().collect();
        let ttl_ms = self.shared.cfg.lease_ttl_ms as i64;
        let limit = self.shared.cfg.claim_batch_max as i64;
        let client = self.shared.client().await?;
        let rows = client
            .query(
                "WITH c AS (
                    SELECT saga_id FROM sagas
                    WHERE NOT finished
                      AND (worker_id IS NULL OR lease_expires_at < now() OR worker_id = $1)
                      AND NOT (saga_id = ANY($3::uuid[]))
                    ORDER BY saga_id
                    LIMIT $4
                    FOR UPDATE SKIP LOCKED
                 )
                 UPDATE sagas s
                 SET worker_id = $1, fence = s.fence + 1,
                     lease_expires_at = now() + $2::int8 * interval '1 millisecond'
                 FROM c WHERE s.saga_id = c.saga_id
                 RETURNING s.saga_id, s.fence",
                &[&self.shared.cfg.worker_id, &ttl_ms, &excluded, &limit],
            )
            .await
            .map_err(|e| backend("claiming unfinished sagas", &e))?;
        let mut out: Vec<SagaId> = held.into_iter().map(SagaId).collect();
        {
            let mut leases = self.shared.leases();
            for r in &rows {
                let (id, fence) = match (r.try_get::<_, uuid::Uuid>(0), r.try_get::<_, i64>(1)) {
                    (Ok(id), Ok(f)) => (SagaId(id), f),
                    (Err(e), _) | (_, Err(e)) => {
                        return Err(backend("claiming unfinished sagas", &e))
                    }
                };
                leases.insert(
                    id,
                    Lease {
                        fence,
                        lost: false,
                        creating: false,
                    },
                );
                out.push(id);
            }
        }
        if !rows.is_empty() {
            tracing::info!(worker = %self.shared.cfg.worker_id, claimed = rows.len(), "claimed unfinished sagas");
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn release(&self, saga: SagaId) -> Result<(), JournalError> {
        let Some(fence) = self.shared.held_fence(saga) else {
            return Ok(());
        };
        let client = self.shared.client().await?;
        client
            .execute(
                "UPDATE sagas SET worker_id = NULL, lease_expires_at = NULL
                 WHERE saga_id = $1 AND worker_id = $2 AND fence = $3",
                &[&saga.0, &self.shared.cfg.worker_id, &fence],
            )
            .await
            .map_err(|e| backend(&format!("releasing saga {saga}"), &e))?;
        let mut leases = self.shared.leases();
        if leases.get(&saga).map(|l| l.fence) == Some(fence) {
            leases.remove(&saga);
        }
        Ok(())
    }

    /// One statement for every lease held (lost ones are forgotten, not
    /// released: they are another worker's now). Each is released only if
    /// its row still names this worker and the token it holds, as in
    /// [`Journal::release`].
    async fn release_all(&self) -> Result<usize, JournalError> {
        let mut held: Vec<(SagaId, i64)> = {
            let mut leases = self.shared.leases();
            leases.retain(|_, l| !l.lost);
            leases.iter().map(|(id, l)| (*id, l.fence)).collect()
        };
        held.sort_by_key(|(id, _)| id.0);
        if held.is_empty() {
            return Ok(0);
        }
        let ids: Vec<uuid::Uuid> = held.iter().map(|(id, _)| id.0).collect();
        let fences: Vec<i64> = held.iter().map(|(_, f)| *f).collect();
        let client = self.shared.client().await?;
        let released = client
            .execute(
                "UPDATE sagas s SET worker_id = NULL, lease_expires_at = NULL
                 FROM unnest($2::uuid[], $3::int8[]) AS h(saga_id, fence)
                 WHERE s.saga_id = h.saga_id AND s.fence = h.fence AND s.worker_id = $1
                   AND NOT s.finished",
                &[&self.shared.cfg.worker_id, &ids, &fences],
            )
            .await
            .map_err(|e| backend("releasing leases", &e))?;
        {
            let mut leases = self.shared.leases();
            for (id, fence) in &held {
                if leases.get(id).map(|l| l.fence) == Some(*fence) {
                    leases.remove(id);
                }
            }
        }
        tracing::info!(worker = %self.shared.cfg.worker_id, released, "released leases");
        Ok(released as usize)
    }
}
