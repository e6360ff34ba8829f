//! Turn a [`Config`] into live parts: channels (reqwest transports with their
//! layers) and the journal.

use crate::accounts::FileCredentials;
use crate::config::{ChannelConfig, Config, ConfigError, JournalConfig};
use rescind_channel_pandapon::callback::CallbackChannels;
use rescind_channel_pandapon::status::Platform;
use rescind_channel_pandapon::{Pandapon1688, PandaponClient, PandaponTaobao};
use rescind_channel_top::{DamaiChannel, TbcChannel, TmcConsumer, TmcSink, TopClient};
use rescind_core::{Channels, Journal, JournalError};
use rescind_wire::credentials::Credentials;
use rescind_wire::flow::AppKeyLimiters;
use std::sync::Arc;

/// Build the channel registry the configuration describes, without
/// per-account credentials (every call carries the configured session);
/// the TOP channels take their app key's limiter from the process-wide
/// registry ([`AppKeyLimiters::global`]).
pub fn build_channels(config: &Config) -> Result<Channels, ConfigError> {
    build_channels_with(config, AppKeyLimiters::global(), None)
}

/// Load the `[accounts]` credentials, when configured (secrets from the
/// process environment).
pub fn load_credentials(config: &Config) -> Result<Option<Arc<FileCredentials>>, ConfigError> {
    let Some(a) = &config.accounts else {
        return Ok(None);
    };
    FileCredentials::load(a, |v| std::env::var(v).ok())
        .map(|p| Some(Arc::new(p)))
        .map_err(|e| ConfigError {
            key: "accounts".into(),
            reason: e.to_string(),
        })
}

/// [`build_channels`], the TOP channels paced by `limiters` — channels on
/// one (gateway URL, app key) share one limiter (`gateway.transport.rate_per_s`
/// is the app key's rate, see `docs/operations.md`, "Flow control") — and,
/// with a credentials provider, resolving each account's session (Damai:
/// supplier credentials) at call time, refreshing sessions within
/// `[accounts] refresh_margin_s` of expiry.
pub fn build_channels_with(
    config: &Config,
    limiters: &AppKeyLimiters,
    credentials: Option<Arc<dyn Credentials>>,
) -> Result<Channels, ConfigError> {
    let margin_ms = config
        .accounts
        .as_ref()
        .map(|a| a.refresh_margin_ms())
        .unwrap_or(rescind_channel_top::REFRESH_MARGIN_MS);
    let mut channels = Channels::new();
    for (name, cfg) in &config.channels {
        let key = format!("channels.{name}");
        let err = |e: String| ConfigError {
            key: key.clone(),
            reason: e,
        };
        channels = match cfg {
            ChannelConfig::TmallTbc(c) => {
                let mut ch = TbcChannel::connect_with(c.clone(), limiters)
                    .map_err(|e| err(e.to_string()))?;
                if let Some(cr) = &credentials {
                    ch = ch.with_credentials(cr.clone(), name.as_str(), margin_ms);
                }
                let ch = Arc::new(ch);
                channels
                    .with_cancel(name.as_str(), ch.clone())
                    .with_lookup(name.as_str(), ch)
            }
            ChannelConfig::Damai(c) => {
                let mut ch = DamaiChannel::connect_with(c.clone(), limiters)
                    .map_err(|e| err(e.to_string()))?;
                if let Some(cr) = &credentials {
                    ch = ch.with_credentials(cr.clone(), name.as_str(), margin_ms);
                }
                let ch = Arc::new(ch);
                channels.with_stock(name.as_str(), ch)
            }
            ChannelConfig::PandaponTaobao(c) => {
                let client = PandaponClient::connect(c.clone()).map_err(|e| err(e.to_string()))?;
                let client = Arc::new(match &credentials {
                    Some(cr) => client.with_credentials(cr.clone(), name.as_str()),
                    None => client,
                });
                let ch = Arc::new(PandaponTaobao::new(client));
                channels
                    .with_cancel(name.as_str(), ch.clone())
                    .with_refund(name.as_str(), ch.clone())
                    .with_lookup(name.as_str(), ch)
            }
            ChannelConfig::Pandapon1688(c) => {
                let client = PandaponClient::connect(c.clone()).map_err(|e| err(e.to_string()))?;
                let client = Arc::new(match &credentials {
                    Some(cr) => client.with_credentials(cr.clone(), name.as_str()),
                    None => client,
                });
                let ch = Arc::new(Pandapon1688::new(client));
                channels
                    .with_cancel(name.as_str(), ch.clone())
                    .with_lookup(name.as_str(), ch)
            }
        };
    }
    Ok(channels)
}

/// The TOP message service consumers the configuration enables (one per
/// `tmall-tbc` channel with `[channels.NAME.tmc] enabled = true`), each
/// delivering under its channel's name to `sink` (the engine). Not started.
pub fn build_tmc_consumers(
    config: &Config,
    sink: Arc<dyn TmcSink>,
) -> Result<Vec<TmcConsumer>, ConfigError> {
    let mut out = Vec::new();
    for (name, cfg) in &config.channels {
        let ChannelConfig::TmallTbc(c) = cfg else {
            continue;
        };
        if !c.tmc.enabled {
            continue;
        }
        let err = |field: &str, e: String| ConfigError {
            key: format!("channels.{name}.{field}"),
            reason: e,
        };
        let client =
            TopClient::connect(c.gateway.clone()).map_err(|e| err("gateway", e.to_string()))?;
        let consumer = TmcConsumer::new(client, c.tmc.clone(), name.as_str(), sink.clone())
            .map_err(|e| err(e.field, e.reason))?;
        out.push(consumer);
    }
    Ok(out)
}

/// The TMC sink of a worker on a shared (PostgreSQL) journal: the engine,
/// and news that reached no saga here stays unconfirmed while a *running*
/// saga on its order lives in the journal but not in this worker (another
/// worker runs it), so TMC hands it out again until that worker gets it.
/// Stuck and finished sagas do not hold news back.
pub struct SharedJournalTmcSink {
    /// The worker's engine.
    pub engine: rescind_core::Engine,
    /// The shared journal, asked by order through its index.
    pub journal: Arc<dyn rescind_core::Journal>,
}

impl TmcSink for SharedJournalTmcSink {
    fn deliver(&self, obs: rescind_core::Observation) -> usize {
        self.engine.deliver(obs)
    }
    fn heartbeat(&self, channel: &rescind_core::ChannelName, valid_for: std::time::Duration) {
        self.engine.push_heartbeat(channel, valid_for);
    }
    fn stopped(&self, channel: &rescind_core::ChannelName) {
        self.engine.set_push_live(channel, false);
    }
    fn keep_for_others<'a>(
        &'a self,
        obs: &'a rescind_core::Observation,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            let order = match obs {
                rescind_core::Observation::Order { order, .. }
                | rescind_core::Observation::Refund { order, .. } => order,
            };
            let q = rescind_core::SagaQuery {
                order: Some((order.channel.to_string(), order.order_id.to_string())),
                state: Some(rescind_core::SagaStatus::Running),
                set: Some(rescind_core::SagaSet::Unfinished),
                limit: 16,
                ..rescind_core::SagaQuery::default()
            };
            match self.journal.query(&q).await {
                Ok(page) => page.ids.iter().any(|id| !self.engine.is_running(*id)),
                // Cannot tell: confirm (the saga's fallback poll finds the news).
                Err(e) => {
                    tracing::warn!(error = %e, "TMC: cannot ask the journal who runs the order; confirming the message");
                    false
                }
            }
        })
    }
}

/// The names the PandaPon channels are registered under (the config's
/// `[channels.NAME]` tables), per platform, for the callback receiver: a
/// callback is delivered to the sagas on orders of these channels. A
/// platform with no channel configured gets none (its callbacks are stored,
/// not delivered).
pub fn callback_channels(config: &Config) -> CallbackChannels {
    config
        .channels
        .iter()
        .fold(CallbackChannels::none(), |names, (name, cfg)| match cfg {
            ChannelConfig::PandaponTaobao(_) => names.with(Platform::Taobao, name.as_str()),
            ChannelConfig::Pandapon1688(_) => names.with(Platform::Alibaba, name.as_str()),
            ChannelConfig::TmallTbc(_) | ChannelConfig::Damai(_) => names,
        })
}

/// An opened journal, with its concrete type where a caller needs more than
/// the trait (sled statistics and compaction).
#[derive(Clone)]
pub enum OpenJournal {
    /// The embedded sled journal.
    Sled(Arc<rescind_journal_sled::SledJournal>),
    /// The PostgreSQL journal (its worker registry sets the flow share).
    #[cfg(feature = "postgres")]
    Postgres(Arc<rescind_journal_postgres::PgJournal>),
    /// Any other journal.
    Other(Arc<dyn Journal>),
}

impl OpenJournal {
    /// The journal as the trait the engine takes.
    pub fn journal(&self) -> Arc<dyn Journal> {
        match self {
            OpenJournal::Sled(j) => j.clone(),
            #[cfg(feature = "postgres")]
            OpenJournal::Postgres(j) => j.clone(),
            OpenJournal::Other(j) => j.clone(),
        }
    }

    /// Can other workers run sagas of this journal (PostgreSQL)?
    pub fn is_shared(&self) -> bool {
        match self {
            #[cfg(feature = "postgres")]
            OpenJournal::Postgres(_) => true,
            _ => false,
        }
    }

    /// How many workers share the journal now: the PostgreSQL registry's
    /// live workers (at least 1), or 1 for a journal one process holds.
    pub async fn live_workers(&self) -> Result<usize, JournalError> {
        match self {
            #[cfg(feature = "postgres")]
            OpenJournal::Postgres(j) => Ok(j.live_workers().await?.len().max(1)),
            _ => Ok(1),
        }
    }

    /// Share TOP app-key bans with the other workers of a PostgreSQL
    /// journal: publish the bans this worker's limiters are under, then ban
    /// here every app key another worker published (for what is left of
    /// it, when that is more than a second beyond the ban in force here).
    /// Returns how many bans were taken from others. A no-op (0) for other
    /// journals.
    pub async fn share_bans(
        &self,
        flow: &rescind_wire::flow::AppKeyLimiters,
    ) -> Result<usize, JournalError> {
        match self {
            #[cfg(feature = "postgres")]
            OpenJournal::Postgres(j) => {
                let limiters = flow.all();
                for l in &limiters {
                    if let Some(left) = l.banned_for() {
                        let ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
                        j.publish_app_key_ban(l.url(), l.app_key(), ms).await?;
                    }
                }
                let mut taken = 0;
                for (gateway, app_key, ms) in j.app_key_bans().await? {
                    for l in limiters
                        .iter()
                        .filter(|l| l.url() == gateway && l.app_key() == app_key)
                    {
                        // The published end lands later than the local one
                        // by the publication's latency: only a ban clearly
                        // longer than the one in force here is taken.
                        let mine = l.banned_for().map_or(0, |d| d.as_millis());
                        if u128::from(ms) > mine + 1_000 {
                            l.ban_for(std::time::Duration::from_millis(ms));
                            taken += 1;
                        }
                    }
                }
                Ok(taken)
            }
            _ => {
                let _ = flow;
                Ok(0)
            }
        }
    }

    /// Leave the worker registry (graceful stop); a no-op for other journals.
    pub async fn deregister(&self) -> Result<(), JournalError> {
        match self {
            #[cfg(feature = "postgres")]
            OpenJournal::Postgres(j) => j.deregister().await,
            _ => Ok(()),
        }
    }
}

/// Open the configured journal. A sled directory held by another process (a
/// running worker) is a clear error naming the path.
pub async fn open_journal(config: &JournalConfig) -> Result<OpenJournal, JournalError> {
    match config {
        JournalConfig::Sled { path } => {
            let j = rescind_journal_sled::SledJournal::open(
                path,
                rescind_journal_sled::SledConfig::default(),
            )
            .await?;
            Ok(OpenJournal::Sled(Arc::new(j)))
        }
        JournalConfig::Postgres {
            url,
            lease_ttl_ms,
            worker_id,
            ca_file,
        } => open_postgres(url, *lease_ttl_ms, worker_id.clone(), ca_file.clone()).await,
    }
}

#[cfg(feature = "postgres")]
async fn open_postgres(
    url: &str,
    lease_ttl_ms: Option<u64>,
    worker_id: Option<String>,
    ca_file: Option<std::path::PathBuf>,
) -> Result<OpenJournal, JournalError> {
    let mut cfg = rescind_journal_postgres::PgConfig {
        ca_file,
        ..Default::default()
    };
    if let Some(ttl) = lease_ttl_ms {
        cfg.lease_ttl_ms = ttl;
        // Renew well inside the lease, as the journal's defaults do (30 s / 10 s).
        cfg.lease_renew_interval_ms = (ttl / 3).max(50);
    }
    if let Some(id) = worker_id {
        cfg.worker_id = id;
    }
    let j = rescind_journal_postgres::PgJournal::connect(url, cfg).await?;
    Ok(OpenJournal::Postgres(Arc::new(j)))
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(
    url: &str,
    _: Option<u64>,
    _: Option<String>,
    _: Option<std::path::PathBuf>,
) -> Result<OpenJournal, JournalError> {
    Err(JournalError::Backend(format!(
        "this build of rescind has no PostgreSQL support (feature `postgres`); cannot open {}",
        crate::config::redact_url(url)
    )))
}

/// How the callback route authenticates pushes: signed with the secret of
/// any configured PandaPon channel (none configured: every push is refused).
pub fn callback_auth(config: &Config) -> rescind_channel_pandapon::callback::CallbackAuth {
    let secrets = config
        .channels
        .values()
        .filter_map(|c| match c {
            ChannelConfig::PandaponTaobao(p) | ChannelConfig::Pandapon1688(p) => {
                Some(p.secret.clone())
            }
            _ => None,
        })
        .collect();
    rescind_channel_pandapon::callback::CallbackAuth::new(secrets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rescind_channel_pandapon::callback::{CallbackReceiver, CallbackSink, MemoryCallbackStore};
    use rescind_core::{ChannelName, Observation, OrderRef};
    use std::sync::Mutex;

    const PP: &str = r#"
[channels.pp-tb]
type = "pandapon-taobao"
base_url = "http://127.0.0.1:9"
access_key = "ak"
secret_env = "PP_SECRET"
user_id = "u"

[channels.pp-1688]
type = "pandapon-1688"
base_url = "http://127.0.0.1:9"
access_key = "ak"
secret_env = "PP_SECRET"
user_id = "u"
"#;

    #[derive(Default)]
    struct Sink(Mutex<Vec<OrderRef>>);
    impl CallbackSink for Sink {
        fn deliver(&self, obs: Observation) -> usize {
            let order = match obs {
                Observation::Order { order, .. } | Observation::Refund { order, .. } => order,
            };
            self.0.lock().unwrap().push(order);
            1
        }
    }

    /// Channels configured under non-default names still get their callbacks.
    #[tokio::test]
    async fn callbacks_follow_the_configured_channel_names() {
        let env = |v: &str| (v == "PP_SECRET").then(|| "x".to_owned());
        let config = Config::from_toml_str(PP, std::path::Path::new("."), &env).unwrap();
        let names = callback_channels(&config);
        assert_eq!(names.names(Platform::Taobao), [ChannelName::from("pp-tb")]);
        assert_eq!(
            names.names(Platform::Alibaba),
            [ChannelName::from("pp-1688")]
        );
        // The channels are registered under the same names.
        let channels = build_channels(&config).unwrap();
        assert!(channels.lookup(&"pp-tb".into()).is_some());
        let sink = std::sync::Arc::new(Sink::default());
        let rx = CallbackReceiver::new(
            std::sync::Arc::new(MemoryCallbackStore::new()),
            sink.clone(),
        )
        .with_channels(names);
        for body in [
            r#"{"messageType":"REFUND_STATUS_CHANGE","messagePlatform":0,"messageBody":{"orderId":"T1","refundId":"R1","refundStatus":"SUCCESS"}}"#,
            r#"{"messageType":"REFUND_STATUS_CHANGE","messagePlatform":1,"messageBody":{"orderId":"A1","refundId":"R2","refundStatus":"refundsuccess"}}"#,
        ] {
            assert_eq!(rx.receive(body.as_bytes()).await.0, 200);
        }
        rx.settled().await;
        let mut got = sink.0.lock().unwrap().clone();
        got.sort_by(|a, b| a.channel.as_str().cmp(b.channel.as_str()));
        assert_eq!(
            got,
            [OrderRef::new("pp-1688", "A1"), OrderRef::new("pp-tb", "T1")]
        );
    }
}
