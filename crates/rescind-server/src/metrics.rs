//! The worker's Prometheus metrics (`GET /metrics`), through `prometheus-client`.
//!
//! Two kinds of series:
//!
//! - **Labelled counters and histograms** fed as things happen: the engine
//!   reports [`MetricEvent`]s to [`WorkerMetrics`] (it is the engine's
//!   [`MetricsSink`]), which increments `prometheus-client` families.
//! - **Values read at scrape time** from counters other parts already keep
//!   (engine totals and gauges, the journal's group commits, the callback
//!   receiver, API refusals): a [`Collector`] copies them.
//!
//! A scrape costs O(number of series): it never reads the journal.

use crate::auth::ApiAuth;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use rescind_channel_pandapon::callback::CallbackReceiver;
use rescind_core::metrics::{
    HistogramSnapshot, MetricEvent, MetricsSink, LATENCY_BUCKETS_MS, SAGA_DURATION_BUCKETS_MS,
};
use rescind_core::{Engine, Journal};
use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

/// Distinct `(channel, code, sub_code)` series of `rescind_upstream_errors_total`
/// kept apart; past it, new codes are counted under `code="other"` so an
/// upstream inventing codes cannot grow the scrape without bound.
pub const UPSTREAM_ERROR_SERIES_MAX: usize = 512;
/// Longest label value kept (longer ones are cut, on a character boundary).
const LABEL_CHARS_MAX: usize = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SagaLabels {
    kind: String,
    channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabels {
    kind: String,
    channel: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    kind: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    channel: String,
    action: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    channel: String,
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    channel: String,
    code: String,
    sub_code: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn step_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_MS.iter().map(|b| *b as f64))
}

fn saga_histogram() -> Histogram {
    Histogram::new(SAGA_DURATION_BUCKETS_MS.iter().map(|b| *b as f64))
}

/// The labelled series the engine feeds.
#[derive(Clone, Debug)]
struct Series {
    started: Family<SagaLabels, Counter>,
    finished: Family<EndLabels, Counter>,
    stuck: Family<SagaLabels, Counter>,
    saga_duration: HistogramFamily<DurationLabels>,
    steps: Family<StepLabels, Counter>,
    step_latency: HistogramFamily<CallLabels>,
    upstream_errors: Family<ErrorLabels, Counter>,
}

/// The worker's metrics: the engine's [`MetricsSink`] and the registry
/// `/metrics` encodes. Build one, hand it to `EngineBuilder::metrics`, then
/// [`WorkerMetrics::attach`] the engine and the rest before the first scrape.
pub struct WorkerMetrics {
    series: Series,
    error_series: Mutex<HashSet<ErrorLabels>>,
    registry: OnceLock<Registry>,
    /// The listeners whose connections are counted (`api`, `callbacks`).
    listeners: Listeners,
    /// The TMC consumers, by channel.
    tmc: TmcProbes,
    /// The outcome webhooks' counters, if the worker sends webhooks.
    webhooks: WebhookCounters,
}

type WebhookCounters = Arc<Mutex<Option<Arc<crate::webhooks::WebhookStats>>>>;
type Listeners = Arc<Mutex<Vec<(&'static str, crate::serve::Served)>>>;
type TmcProbes = Arc<Mutex<Vec<(String, rescind_channel_top::TmcProbe)>>>;

impl std::fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerMetrics").finish_non_exhaustive()
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        WorkerMetrics {
            series: Series {
                started: Family::default(),
                finished: Family::default(),
                stuck: Family::default(),
                saga_duration: Family::new_with_constructor(saga_histogram),
                steps: Family::default(),
                step_latency: Family::new_with_constructor(step_histogram),
                upstream_errors: Family::default(),
            },
            error_series: Mutex::new(HashSet::new()),
            registry: OnceLock::new(),
            listeners: Arc::default(),
            tmc: Arc::default(),
            webhooks: Arc::default(),
        }
    }
}

/// What the scrape-time collector reads.
pub struct Sources {
    /// The engine (totals, in-flight, parked and stuck gauges).
    pub engine: Engine,
    /// The journal (group commits, when it reports them).
    pub journal: Arc<dyn Journal>,
    /// The callback receiver, if the worker has one.
    pub callbacks: Option<CallbackReceiver>,
    /// The API's authentication (refusals by reason).
    pub auth: ApiAuth,
}

impl WorkerMetrics {
    /// Register every series and the collector over `sources`. A second
    /// call is ignored (the first sources stay).
    pub fn attach(&self, sources: Sources) {
        let _ = self.registry.get_or_init(|| {
            let mut r = Registry::default();
            let s = self.series.clone();
            r.register(
                "rescind_sagas_started",
                "Sagas started by this worker, by kind and channel",
                s.started,
            );
            r.register(
                "rescind_sagas_finished",
                "Sagas finished by this worker, by kind, channel and outcome (completed, failed, aborted)",
                s.finished,
            );
            r.register(
                "rescind_sagas_stuck",
                "Sagas that became stuck in this worker, by kind and channel",
                s.stuck,
            );
            r.register(
                "rescind_saga_duration_ms",
                "From a saga's first record to its end (finished or stuck), by kind and outcome",
                s.saga_duration,
            );
            r.register(
                "rescind_steps",
                "Channel calls, by channel, action and result (ok, already_done, retryable, in_doubt, conflict, permanent)",
                s.steps,
            );
            r.register(
                "rescind_step_latency_ms",
                "Channel call latency, by channel and action",
                s.step_latency,
            );
            r.register(
                "rescind_upstream_errors",
                "Channel errors (calls and lookups), by channel, the channel's code and sub_code (empty when it gave none)",
                s.upstream_errors,
            );
            r.register_collector(Box::new(Scraped(
                sources,
                self.listeners.clone(),
                self.tmc.clone(),
                self.webhooks.clone(),
            )));
            r
        });
    }

    /// Count the connections of a listener served by [`crate::serve::serve`]
    /// under `name` (`rescind_http_connections_open`, `rescind_http_connections_total`).
    pub fn watch_listener(&self, name: &'static str, served: crate::serve::Served) {
        let mut l = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        l.retain(|(n, _)| *n != name);
        l.push((name, served));
    }

    /// Count what the TMC consumer of `channel` does (`rescind_tmc`,
    /// `rescind_tmc_live`).
    pub fn watch_tmc(&self, channel: &str, probe: rescind_channel_top::TmcProbe) {
        let mut l = self.tmc.lock().unwrap_or_else(|p| p.into_inner());
        l.retain(|(n, _)| n != channel);
        l.push((channel.to_owned(), probe));
    }

    /// Serve the outcome webhooks' counters (the `rescind_webhook_*` series).
    pub fn watch_webhooks(&self, stats: Arc<crate::webhooks::WebhookStats>) {
        *self.webhooks.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats);
    }

    /// The Prometheus text (format 0.0.4) of every series. Before
    /// [`WorkerMetrics::attach`] it is empty.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        if let Some(r) = self.registry.get() {
            prometheus_client::encoding::prometheus_text::encode(&mut out, r)?;
        }
        Ok(out)
    }

    fn upstream_error(&self, channel: &str, code: Option<&str>, sub_code: Option<&str>) {
        let mut labels = ErrorLabels {
            channel: clip(channel),
            code: code.map(clip).unwrap_or_default(),
            sub_code: sub_code.map(clip).unwrap_or_default(),
        };
        {
            let mut seen = self.error_series.lock().unwrap_or_else(|p| p.into_inner());
            if !seen.contains(&labels) {
                if seen.len() >= UPSTREAM_ERROR_SERIES_MAX {
                    labels.code = "other".into();
                    labels.sub_code = String::new();
                } else {
                    seen.insert(labels.clone());
                }
            }
        }
        self.series.upstream_errors.get_or_create(&labels).inc();
    }
}

fn clip(s: &str) -> String {
    match s.char_indices().nth(LABEL_CHARS_MAX) {
        Some((i, _)) => s[..i].to_owned(),
        None => s.to_owned(),
    }
}

impl MetricsSink for WorkerMetrics {
    fn record(&self, event: MetricEvent<'_>) {
        let s = &self.series;
        match event {
            MetricEvent::SagaStarted { kind, channel } => {
                s.started
                    .get_or_create(&SagaLabels {
                        kind: kind.to_owned(),
                        channel: channel.to_owned(),
                    })
                    .inc();
            }
            MetricEvent::SagaEnded {
                kind,
                channel,
                end,
                duration_ms,
            } => {
                let outcome = end.as_str();
                if outcome == "stuck" {
                    s.stuck
                        .get_or_create(&SagaLabels {
                            kind: kind.to_owned(),
                            channel: channel.to_owned(),
                        })
                        .inc();
                } else {
                    s.finished
                        .get_or_create(&EndLabels {
                            kind: kind.to_owned(),
                            channel: channel.to_owned(),
                            outcome: outcome.to_owned(),
                        })
                        .inc();
                }
                s.saga_duration
                    .get_or_create(&DurationLabels {
                        kind: kind.to_owned(),
                        outcome: outcome.to_owned(),
                    })
                    .observe(duration_ms as f64);
            }
            MetricEvent::Call {
                channel,
                action,
                result,
                latency_ms,
            } => {
                s.steps
                    .get_or_create(&StepLabels {
                        channel: channel.to_owned(),
                        action: action.to_owned(),
                        result: result.as_str().to_owned(),
                    })
                    .inc();
                s.step_latency
                    .get_or_create(&CallLabels {
                        channel: channel.to_owned(),
                        action: action.to_owned(),
                    })
                    .observe(latency_ms as f64);
            }
            MetricEvent::UpstreamError {
                channel,
                code,
                sub_code,
            } => self.upstream_error(channel, code, sub_code),
            _ => {}
        }
    }
}

/// The values read at scrape time.
struct Scraped(Sources, Listeners, TmcProbes, WebhookCounters);

impl std::fmt::Debug for Scraped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scraped").finish_non_exhaustive()
    }
}

fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: usize,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    g.encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// A counter family of `(label value, count)` pairs under one label name.
fn labelled<'a>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Vec<(&'static str, &'a str)>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        let fam = m.encode_family(&labels)?;
        ConstCounter::new(v).encode(fam)?;
    }
    Ok(())
}

fn histogram(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    h: &HistogramSnapshot,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    let mut buckets: Vec<(f64, u64)> = h
        .bounds
        .iter()
        .map(|b| *b as f64)
        .zip(h.buckets.iter().copied())
        .collect();
    buckets.push((f64::INFINITY, h.buckets.last().copied().unwrap_or(0)));
    m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        h.sum as f64,
        h.count,
        &buckets,
        None,
    )
}

impl Collector for Scraped {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let src = &self.0;
        let st = src.engine.stats();
        counter(
            &mut enc,
            "rescind_retries",
            "Retryable channel failures retried",
            st.retries,
        )?;
        counter(
            &mut enc,
            "rescind_in_doubt",
            "In-doubt steps met on resume",
            st.in_doubt,
        )?;
        counter(
            &mut enc,
            "rescind_in_doubt_resolved_by_lookup",
            "In-doubt steps a lookup found applied",
            st.resolved_by_lookup,
        )?;
        gauge(
            &mut enc,
            "rescind_sagas_running",
            "Sagas in this worker (with a task, or parked)",
            st.running,
        )?;
        gauge(
            &mut enc,
            "rescind_sagas_in_flight",
            "Sagas holding an in-flight slot (driving steps) now",
            st.in_flight,
        )?;
        gauge(
            &mut enc,
            "rescind_sagas_parked",
            "Sagas parked without a task, waiting for a refund",
            st.parked,
        )?;
        gauge(
            &mut enc,
            "rescind_sagas_stuck_now",
            "Sagas this worker left stuck and nobody resumed since",
            st.stuck_now,
        )?;
        let listeners: Vec<(&'static str, crate::serve::ServeStats)> = self
            .1
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, s)| (*n, s.stats()))
            .collect();
        if !listeners.is_empty() {
            let mut m = enc.encode_descriptor(
                "rescind_http_connections_open",
                "Connections open now, by listener (api, callbacks)",
                None,
                MetricType::Gauge,
            )?;
            for (name, st) in &listeners {
                let labels = vec![("listener", *name)];
                let fam = m.encode_family(&labels)?;
                ConstGauge::new(i64::try_from(st.open).unwrap_or(i64::MAX)).encode(fam)?;
            }
            labelled(
                &mut enc,
                "rescind_http_connections",
                "Connections by listener and event: accepted; evicted (closed at the cap while waiting for a request head); refused (at the cap, every connection busy)",
                listeners.iter().flat_map(|(name, st)| {
                    [
                        ("accepted", st.accepted),
                        ("evicted", st.evicted),
                        ("refused", st.refused),
                    ]
                    .map(|(event, v)| (vec![("listener", *name), ("event", event)], v))
                }),
            )?;
        }
        if let Some(g) = src.journal.group_commits() {
            histogram(
                &mut enc,
                "rescind_journal_group_size",
                "Records written by one journal group commit",
                &g.group_size,
            )?;
            histogram(
                &mut enc,
                "rescind_journal_flush_latency_us",
                "Duration of one journal group commit's flush (sled: flush and fdatasync; PostgreSQL: the commit), in microseconds",
                &g.flush_us,
            )?;
        }
        labelled(
            &mut enc,
            "rescind_api_refused",
            "API requests refused (401/403), by reason: missing token, unknown token, token without the scope",
            src.auth
                .refused_by_reason()
                .into_iter()
                .map(|(reason, v)| (vec![("reason", reason)], v)),
        )?;
        if let Some(cb) = &src.callbacks {
            let c = cb.stats();
            labelled(
                &mut enc,
                "rescind_callbacks",
                "PandaPon callback requests, by verdict (refused: unsigned, badly signed or stale; answered 401, not stored)",
                [
                    ("refused", c.refused),
                    ("stored", c.stored),
                    ("duplicate", c.duplicates),
                    ("malformed", c.malformed),
                    ("store_error", c.store_errors),
                    ("store_full", c.store_full),
                ]
                .into_iter()
                .map(|(verdict, v)| (vec![("verdict", verdict)], v)),
            )?;
            labelled(
                &mut enc,
                "rescind_callback_messages",
                "PandaPon callback messages that parsed, by messageType (unknown types as other) and verdict",
                cb.messages_by_type()
                    .into_iter()
                    .map(|(t, verdict, v)| (vec![("type", t), ("verdict", verdict)], v)),
            )?;
        }
        let tmc: Vec<(String, rescind_channel_top::TmcStats, bool)> = self
            .2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(c, p)| (c.clone(), p.stats(), p.is_live()))
            .collect();
        if !tmc.is_empty() {
            labelled(
                &mut enc,
                "rescind_tmc",
                "TOP message service consumer, by channel and event: consumes, messages received, delivered (news), matched (reached a saga), confirmed, unknown_topic, malformed; errors (failed consume or confirm)",
                tmc.iter().flat_map(|(channel, st, _)| {
                    [
                        ("consumes", st.consumes),
                        ("received", st.received),
                        ("delivered", st.delivered),
                        ("matched", st.matched),
                        ("confirmed", st.confirmed),
                        ("unknown_topic", st.unknown_topic),
                        ("malformed", st.malformed),
                        ("errors", st.errors),
                    ]
                    .map(|(event, v)| (vec![("channel", channel.as_str()), ("event", event)], v))
                }),
            )?;
            let mut m = enc.encode_descriptor(
                "rescind_tmc_live",
                "1 while the channel's TMC consumer is live (its sagas poll only as a fallback), else 0",
                None,
                MetricType::Gauge,
            )?;
            for (channel, _, live) in &tmc {
                let labels = vec![("channel", channel.as_str())];
                let fam = m.encode_family(&labels)?;
                ConstGauge::new(i64::from(*live)).encode(fam)?;
            }
        }
        let webhooks = self.3.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(w) = webhooks {
            w.encode(&mut enc)?;
        }
        Ok(())
    }
}
