//! Turn a [`Config`] into live parts: channels (reqwest transports with their
//! layers) and the journal.

use crate::config::{ChannelConfig, Config, ConfigError, JournalConfig};
use rescind_channel_pandapon::{Pandapon1688, PandaponClient, PandaponTaobao};
use rescind_channel_top::{DamaiChannel, TbcChannel};
use rescind_core::{Channels, Journal, JournalError};
use std::sync::Arc;

/// Build the channel registry the configuration describes.
pub fn build_channels(config: &Config) -> Result<Channels, ConfigError> {
    let mut channels = Channels::new();
    for (name, cfg) in &config.channels {
        let key = format!("channels.{name}");
        let err = |e: String| ConfigError {
            key: key.clone(),
            reason: e,
        };
        channels = match cfg {
            ChannelConfig::TmallTbc(c) => {
                let ch = Arc::new(TbcChannel::connect(c.clone()).map_err(|e| err(e.to_string()))?);
                channels
                    .with_cancel(name.as_str(), ch.clone())
                    .with_lookup(name.as_str(), ch)
            }
            ChannelConfig::Damai(c) => {
                let ch =
                    Arc::new(DamaiChannel::connect(c.clone()).map_err(|e| err(e.to_string()))?);
                channels.with_stock(name.as_str(), ch)
            }
            ChannelConfig::PandaponTaobao(c) => {
                let client =
                    Arc::new(PandaponClient::connect(c.clone()).map_err(|e| err(e.to_string()))?);
                let ch = Arc::new(PandaponTaobao::new(client));
                channels
                    .with_cancel(name.as_str(), ch.clone())
                    .with_refund(name.as_str(), ch.clone())
                    .with_lookup(name.as_str(), ch)
            }
            ChannelConfig::Pandapon1688(c) => {
                let client =
                    Arc::new(PandaponClient::connect(c.clone()).map_err(|e| err(e.to_string()))?);
                let ch = Arc::new(Pandapon1688::new(client));
                channels
                    .with_cancel(name.as_str(), ch.clone())
                    .with_lookup(name.as_str(), ch)
            }
        };
    }
    Ok(channels)
}

/// An opened journal, with its concrete type where a caller needs more than
/// the trait (sled statistics and compaction).
#[derive(Clone)]
pub enum OpenJournal {
    /// The embedded sled journal.
    Sled(Arc<rescind_journal_sled::SledJournal>),
    /// Any other journal (PostgreSQL).
    Other(Arc<dyn Journal>),
}

impl OpenJournal {
    /// The journal as the trait the engine takes.
    pub fn journal(&self) -> Arc<dyn Journal> {
        match self {
            OpenJournal::Sled(j) => j.clone(),
            OpenJournal::Other(j) => j.clone(),
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
        } => open_postgres(url, *lease_ttl_ms, worker_id.clone()).await,
    }
}

#[cfg(feature = "postgres")]
async fn open_postgres(
    url: &str,
    lease_ttl_ms: Option<u64>,
    worker_id: Option<String>,
) -> Result<OpenJournal, JournalError> {
    let mut cfg = rescind_journal_postgres::PgConfig::default();
    if let Some(ttl) = lease_ttl_ms {
        cfg.lease_ttl_ms = ttl;
        // Renew well inside the lease, as the journal's defaults do (30 s / 10 s).
        cfg.lease_renew_interval_ms = (ttl / 3).max(50);
    }
    if let Some(id) = worker_id {
        cfg.worker_id = id;
    }
    let j = rescind_journal_postgres::PgJournal::connect(url, cfg).await?;
    Ok(OpenJournal::Other(Arc::new(j)))
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(
    url: &str,
    _: Option<u64>,
    _: Option<String>,
) -> Result<OpenJournal, JournalError> {
    Err(JournalError::Backend(format!(
        "this build of rescind has no PostgreSQL support (feature `postgres`); cannot open {}",
        crate::config::redact_url(url)
    )))
}
