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

/// The unfinished sagas stuck on credentials, by account, each with the
/// time of its last record (when it parked).
async fn stuck_by_account(
    journal: &dyn Journal,
) -> Result<BTreeMap<String, Vec<(rescind_core::SagaId, u64)>>, String> {
    let ids = journal
        .list(SagaSet::Unfinished)
        .await
        .map_err(|e| format!("listing unfinished sagas: {e}"))?;
    let mut out: BTreeMap<String, Vec<(rescind_core::SagaId, u64)>> = BTreeMap::new();
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
            out.entry(account.to_owned())
                .or_default()
                .push((id, state.updated_at_ms));
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

/// How long after a reload a saga that parks stuck on a changed account is
/// still resumed: a call that was in flight with the old credentials when
/// the files were re-read parks only once it is answered (or times out), so
/// it missed the reload's own scan. Late sweeps at 1 s, 5 s and this delay
/// resume those (each saga at most once per reload).
pub const LATE_SWEEP_MS: u64 = 30_000;

/// Re-read the files; on success resume every saga stuck on an account
/// whose credentials changed, now and in late sweeps
/// ([`LATE_SWEEP_MS`]) for sagas that park on one of them just after the
/// reload. A failed reload changes nothing.
pub async fn reload(
    creds: &FileCredentials,
    engine: &Engine,
    journal: &Arc<dyn Journal>,
    by: &str,
) -> Result<Reloaded, String> {
    let reloaded_at_ms = engine.clock().now_ms();
    let changes = creds.reload().map_err(|e| e.to_string())?;
    let mut resumed = 0;
    let mut done = std::collections::HashSet::new();
    if !changes.accounts.is_empty() {
        resumed = resume_stuck_on(
            engine,
            journal.as_ref(),
            &changes.accounts,
            by,
            0,
            &mut done,
        )
        .await?;
        let (engine, journal, accounts, by) = (
            engine.clone(),
            journal.clone(),
            changes.accounts.clone(),
            by.to_owned(),
        );
        tokio::spawn(async move {
            for delay in [1_000, 5_000, LATE_SWEEP_MS] {
                engine
                    .clock()
                    .sleep(std::time::Duration::from_millis(delay))
                    .await;
                let swept = resume_stuck_on(
                    &engine,
                    journal.as_ref(),
                    &accounts,
                    &by,
                    reloaded_at_ms,
                    &mut done,
                )
                .await;
                match swept {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(resumed = n, "late sweep after an accounts reload"),
                    Err(e) => {
                        tracing::warn!(error = %e, "late sweep after an accounts reload failed")
                    }
                }
            }
        });
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

/// Resume the sagas stuck on one of `accounts` whose last record is at
/// `since_ms` or later, skipping (and then adding) the ones in `done`.
async fn resume_stuck_on(
    engine: &Engine,
    journal: &dyn Journal,
    accounts: &[String],
    by: &str,
    since_ms: u64,
    done: &mut std::collections::HashSet<rescind_core::SagaId>,
) -> Result<usize, String> {
    let stuck = stuck_by_account(journal).await?;
    let mut resumed = 0;
    for account in accounts {
        for (id, stuck_at_ms) in stuck.get(account).into_iter().flatten() {
            if *stuck_at_ms < since_ms || !done.insert(*id) {
                continue;
            }
            match engine.resume_by(*id, by).await {
                Ok(_) => resumed += 1,
                Err(e) => {
                    tracing::warn!(saga = %id, %account, error = %e, "resume after an accounts reload failed")
                }
            }
        }
    }
    Ok(resumed)
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
            if let Err(e) = reload(&creds, &engine, &journal, "SIGHUP").await {
                tracing::error!(error = %e, "accounts reload on SIGHUP failed; nothing changed");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rescind_core::{Entry, MemoryJournal, OrderRef, Record, SagaId, SagaInput};

    /// A saga stuck on `account` whose stuck record was written at `at_ms`.
    async fn stuck_saga(j: &MemoryJournal, key: &str, account: &str, at_ms: u64) -> SagaId {
        let id = SagaId::from_key(key);
        let input = SagaInput::cancel_unpaid(OrderRef::new("tmall-tbc", key)).with_account(account);
        let records = [
            Record::Started { input, by: None },
            Record::Stuck {
                reason: format!("credentials: account {account}: session expired"),
            },
        ];
        for (seq, record) in records.into_iter().enumerate() {
            let at_ms = if seq == 0 { at_ms - 10 } else { at_ms };
            j.append(
                id,
                &Entry {
                    seq: seq as u64,
                    at_ms,
                    record,
                },
            )
            .await
            .unwrap();
        }
        id
    }

    #[tokio::test]
    async fn a_late_sweep_resumes_only_sagas_parked_after_the_reload_and_each_once() {
        let j = MemoryJournal::new();
        let before = stuck_saga(&j, "o1", "shopA", 1_000).await;
        let after = stuck_saga(&j, "o2", "shopA", 5_000).await;
        let other = stuck_saga(&j, "o3", "shopB", 5_000).await;
        let journal: Arc<dyn Journal> = Arc::new(j.clone());
        let engine = Engine::builder(journal.clone()).build();
        let accounts = vec!["shopA".to_owned()];
        let mut done = std::collections::HashSet::new();
        // Reloaded at 4,000: only the saga that parked after it, on a
        // changed account.
        let n = resume_stuck_on(&engine, journal.as_ref(), &accounts, "t", 4_000, &mut done)
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert!(done.contains(&after) && !done.contains(&before) && !done.contains(&other));
        let resumed = |id| {
            let j = j.clone();
            async move {
                j.read(id)
                    .await
                    .unwrap()
                    .iter()
                    .filter(|e| matches!(e.record, Record::Resumed { .. }))
                    .count()
            }
        };
        assert_eq!(resumed(after).await, 1);
        assert_eq!(resumed(before).await, 0);
        assert_eq!(resumed(other).await, 0);
        // A second sweep does not resume it again, even if it parked again.
        let n = resume_stuck_on(&engine, journal.as_ref(), &accounts, "t", 4_000, &mut done)
            .await
            .unwrap();
        assert_eq!(n, 0);
        engine.kill();
    }
}
