//! The accounts routes and the reload that continues waiting sagas:
//! `GET /accounts` (read) lists every account without secrets, with how many
//! sagas are stuck waiting on its credentials; `POST /accounts/reload`
//! (write) and `SIGHUP` re-read the accounts and secrets files and resume
//! every saga stuck with `credentials: account X` for an account whose
//! credentials changed.

use crate::accounts::{AccountInfo, FileCredentials};
use rescind_core::{credentials_account, Engine, Journal, SagaSet};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One account with the sagas waiting on it.
#[derive(Clone, Debug, Serialize)]
pub struct AccountRow {
    /// The account, without secrets.
    #[serde(flatten)]
    pub info: AccountInfo,
    /// Unfinished sagas stuck with `credentials: account <id>`.
    pub stuck: usize,
}

/// What a reload did.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Reloaded {
    /// Accounts added, changed or removed by the reload.
    pub changed: Vec<String>,
    /// Sagas waiting on one of them that were resumed.
    pub resumed: usize,
}

/// The unfinished sagas stuck on credentials, by account.
async fn stuck_by_account(
    journal: &dyn Journal,
) -> Result<BTreeMap<String, Vec<rescind_core::SagaId>>, String> {
    let ids = journal
        .list(SagaSet::Unfinished)
        .await
        .map_err(|e| format!("listing unfinished sagas: {e}"))?;
    let mut out: BTreeMap<String, Vec<rescind_core::SagaId>> = BTreeMap::new();
    for id in ids {
        // A saga that cannot be read is not waiting on an account: skip it
        // (`journal list` reports it).
        let Ok((state, _)) = crate::inspect::load(journal, id).await else {
            continue;
        };
        if state.outcome.is_some() {
            continue;
        }
        if let Some(account) = state.stuck.as_deref().and_then(credentials_account) {
            out.entry(account.to_owned()).or_default().push(id);
        }
    }
    Ok(out)
}

/// Every account with the count of sagas stuck on it (read from the journal).
pub async fn list(
    creds: &FileCredentials,
    journal: &dyn Journal,
) -> Result<Vec<AccountRow>, String> {
    let stuck = stuck_by_account(journal).await?;
    Ok(creds
        .infos()
        .into_iter()
        .map(|info| AccountRow {
            stuck: stuck.get(&info.id).map_or(0, Vec::len),
            info,
        })
        .collect())
}

/// Re-read the files; on success resume every saga stuck on an account
/// whose credentials changed. A failed reload changes nothing.
pub async fn reload(
    creds: &FileCredentials,
    engine: &Engine,
    journal: &dyn Journal,
    by: &str,
) -> Result<Reloaded, String> {
    let changes = creds.reload().map_err(|e| e.to_string())?;
    let mut resumed = 0;
    if !changes.accounts.is_empty() {
        let stuck = stuck_by_account(journal).await?;
        for account in &changes.accounts {
            for id in stuck.get(account).into_iter().flatten() {
                match engine.resume_by(*id, by).await {
                    Ok(_) => resumed += 1,
                    Err(e) => {
                        tracing::warn!(saga = %id, %account, error = %e, "resume after an accounts reload failed")
                    }
                }
            }
        }
    }
    tracing::info!(
        changed = changes.accounts.len(),
        resumed,
        "accounts reloaded"
    );
    Ok(Reloaded {
        changed: changes.accounts,
        resumed,
    })
}

/// Reload on every `SIGHUP` until the process ends (Unix).
pub fn reload_on_sighup(creds: Arc<FileCredentials>, engine: Engine, journal: Arc<dyn Journal>) {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP: accounts reload only through the API");
            return;
        };
        while hup.recv().await.is_some() {
            if let Err(e) = reload(&creds, &engine, journal.as_ref(), "SIGHUP").await {
                tracing::error!(error = %e, "accounts reload on SIGHUP failed; nothing changed");
            }
        }
    });
}
