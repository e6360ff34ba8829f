//! `rescind journal list|show|stats|resume|abort`.

use crate::ops::{describe_outcome, engine_for, exit_code, load_config, wait_for};
use anyhow::{anyhow, Result};
use clap::Subcommand;
use rescind::inspect::{self, SagaSummary};
use rescind::wiring::OpenJournal;
use rescind_core::{SagaExit, SagaId, SagaSet};
use std::path::Path;
use std::time::Duration;

#[derive(Subcommand, Debug)]
pub enum JournalCmd {
    /// List sagas, filtered, one page at a time in saga id order (from the
    /// journal's indexes: a page costs a page, not a read of every saga).
    List {
        /// The order, CHANNEL:ORDER_ID.
        #[arg(long, value_name = "CHANNEL:ORDER_ID")]
        order: Option<String>,
        /// running, stuck, completed, failed or aborted.
        #[arg(long)]
        state: Option<String>,
        /// Saga kind as started (cancel_unpaid, cancel_paid, withdraw_refund, ...).
        #[arg(long)]
        kind: Option<String>,
        /// Channel name.
        #[arg(long)]
        channel: Option<String>,
        /// Account (shop).
        #[arg(long)]
        account: Option<String>,
        /// Only sagas updated at or after this time (ms since the Unix epoch).
        #[arg(long, value_name = "MS")]
        since: Option<String>,
        /// Of the page, only sagas not updated for this long (e.g. 30s, 10m, 2h, 1d).
        #[arg(long, value_name = "AGE")]
        older_than: Option<String>,
        /// Page size, 1 to 1000 (default 100).
        #[arg(long)]
        limit: Option<String>,
        /// Start after this cursor (the `next_cursor` of the previous page).
        #[arg(long)]
        cursor: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one saga's timeline of records.
    Show {
        /// The saga id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Counts by state, kind and channel; records and bytes on disk.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Resume unfinished sagas (all, or the ones named) and wait for them.
    Resume {
        /// Saga ids; none = every unfinished saga.
        ids: Vec<String>,
        /// Give up waiting after this many seconds (they stay durable).
        #[arg(long, default_value_t = 120)]
        wait_secs: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Record what you verified about a saga's in-doubt step, then resume it:
    /// `--applied` (it took effect upstream) or `--not-applied` (re-issue it).
    /// Refused when the step is not in doubt.
    Resolve {
        /// The saga id.
        id: String,
        /// The in-doubt step (see `journal show`).
        #[arg(long)]
        step: u32,
        /// The step took effect upstream.
        #[arg(
            long,
            conflicts_with = "not_applied",
            required_unless_present = "not_applied"
        )]
        applied: bool,
        /// The step did not take effect: re-issue it without a lookup.
        #[arg(long)]
        not_applied: bool,
        /// What you verified, and where (journaled).
        #[arg(long)]
        reason: String,
        /// Who you are (journaled); default: $USER.
        #[arg(long)]
        operator: Option<String>,
        /// For an applied paid cancel: the refund it opened.
        #[arg(long)]
        refund_id: Option<String>,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 120)]
        wait_secs: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Abort a saga; compensation runs (an opened refund is withdrawn).
    Abort {
        /// The saga id.
        id: String,
        /// Why (journaled).
        #[arg(long, default_value = "aborted by operator")]
        reason: String,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 120)]
        wait_secs: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Parse `30s`, `10m`, `2h`, `1d` (or plain seconds).
pub fn parse_age(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow!("--older-than: {s:?} is not an age like 30s, 10m, 2h or 1d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        other => {
            return Err(anyhow!(
                "--older-than: unknown unit {other:?} (use s, m, h or d)"
            ))
        }
    };
    Ok(Duration::from_secs(secs))
}

fn parse_id(s: &str) -> Result<SagaId> {
    s.parse()
        .map_err(|_| anyhow!("{s:?} is not a saga id (a UUID like 3f2b...-...)"))
}

async fn open(cfg_path: &Path) -> Result<OpenJournal> {
    let cfg = load_config(cfg_path)?;
    crate::ops::open_journal(&cfg).await
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Text from the journal or upstream for a terminal: control characters
/// (`\r`, `\n`, escape sequences) are escaped, so an order id or an upstream
/// message cannot forge a line or drive the terminal.
pub(crate) fn safe(text: &str) -> String {
    if text.chars().any(char::is_control) {
        text.chars()
            .flat_map(|c| {
                let escaped: Vec<char> = if c.is_control() {
                    c.escape_default().collect()
                } else {
                    vec![c]
                };
                escaped
            })
            .collect()
    } else {
        text.to_owned()
    }
}

fn print_rows(rows: &[SagaSummary]) {
    use crate::table::{Align, Table};
    let mut t = Table::new(&[
        ("saga", Align::Left),
        ("kind", Align::Left),
        ("state", Align::Left),
        ("order", Align::Left),
        ("order state", Align::Left),
        ("steps", Align::Right),
        ("retries", Align::Right),
        ("reason", Align::Left),
    ]);
    for r in rows {
        t.row([
            r.id.to_string(),
            r.plan.clone(),
            r.state.clone(),
            r.order.clone(),
            r.order_state.clone(),
            r.steps.to_string(),
            r.retries.to_string(),
            r.reason.clone().unwrap_or_default(),
        ]);
    }
    for line in t.lines() {
        outln!("{line}");
    }
}

pub async fn run(cfg_path: &Path, cmd: JournalCmd) -> Result<u8> {
    match cmd {
        JournalCmd::List {
            order,
            state,
            kind,
            channel,
            account,
            since,
            older_than,
            limit,
            cursor,
            json,
        } => {
            let params = inspect::ListParams {
                order,
                state,
                channel,
                kind,
                account,
                since,
                set: None,
                cursor,
                limit,
            };
            let query = params.to_query().map_err(|e| match e {
                rescind_core::QueryError::BadParameter { parameter, detail } => {
                    anyhow!("--{parameter}: {detail}")
                }
            })?;
            let age = older_than.as_deref().map(parse_age).transpose()?;
            let j = open(cfg_path).await?;
            let page = inspect::list_page(j.journal().as_ref(), &query).await?;
            let now = now_ms();
            let rows: Vec<SagaSummary> = page
                .sagas
                .into_iter()
                .filter(|r| {
                    age.is_none_or(|a| now.saturating_sub(r.updated_at_ms) >= a.as_millis() as u64)
                })
                .collect();
            let bad = page.unreadable;
            if json {
                outln!(
                    "{}",
                    serde_json::json!({ "sagas": rows, "unreadable": bad, "next_cursor": page.next_cursor })
                );
            } else {
                print_rows(&rows);
                for b in &bad {
                    eprintln!("unreadable saga {}: {}", b.id, b.error);
                }
                eprintln!("{} saga(s)", rows.len());
                if let Some(c) = &page.next_cursor {
                    eprintln!("more: --cursor {c}");
                }
            }
            Ok(u8::from(!bad.is_empty()))
        }
        JournalCmd::Show { id, json } => {
            let id = parse_id(&id)?;
            let j = open(cfg_path).await?;
            let (state, entries) = inspect::load(j.journal().as_ref(), id)
                .await
                .map_err(|e| anyhow!(e))?;
            if json {
                outln!(
                    "{}",
                    serde_json::json!({ "summary": SagaSummary::of(&state), "timeline": inspect::timeline(&entries) })
                );
            } else {
                let s = SagaSummary::of(&state);
                outln!(
                    "saga {}  {} ({})  order {}  now {}",
                    s.id,
                    safe(&s.kind),
                    s.state,
                    safe(&s.order),
                    safe(&s.order_state)
                );
                if let Some(r) = &s.reason {
                    outln!("  {}", safe(r));
                }
                let t0 = entries.first().map(|e| e.at_ms).unwrap_or(0);
                for e in &entries {
                    outln!(
                        "  {:>4} +{:>8} ms  {}",
                        e.seq,
                        e.at_ms.saturating_sub(t0),
                        safe(&inspect::describe(&e.record))
                    );
                }
            }
            Ok(0)
        }
        JournalCmd::Stats { json } => {
            let j = open(cfg_path).await?;
            let (rows, bad) = inspect::summaries(
                j.journal().as_ref(),
                &[SagaSet::Unfinished, SagaSet::Finished],
            )
            .await?;
            let mut by_state = std::collections::BTreeMap::<String, usize>::new();
            let mut by_kind = std::collections::BTreeMap::<String, usize>::new();
            let mut by_channel = std::collections::BTreeMap::<String, usize>::new();
            for r in &rows {
                *by_state.entry(r.state.clone()).or_default() += 1;
                *by_kind.entry(r.kind.clone()).or_default() += 1;
                *by_channel.entry(r.channel.clone()).or_default() += 1;
            }
            let disk = match &j {
                OpenJournal::Sled(s) => s.stats().await.ok().map(|st| {
                    serde_json::json!({
                        "unfinished": st.unfinished,
                        "finished": st.finished,
                        "records": st.records,
                        "record_bytes": st.record_bytes,
                        "bytes_on_disk": st.bytes_on_disk,
                    })
                }),
                _ => None,
            };
            if json {
                outln!(
                    "{}",
                    serde_json::json!({ "sagas": rows.len(), "by_state": by_state, "by_kind": by_kind, "by_channel": by_channel, "unreadable": bad.len(), "storage": disk })
                );
            } else {
                outln!("sagas: {} ({} unreadable)", rows.len(), bad.len());
                for (title, m) in [
                    ("by state", &by_state),
                    ("by kind", &by_kind),
                    ("by channel", &by_channel),
                ] {
                    outln!("{title}:");
                    let keys: Vec<String> = m.keys().map(|k| safe(k)).collect();
                    let width = keys
                        .iter()
                        .map(|k| crate::table::display_width(k))
                        .max()
                        .unwrap_or(0)
                        .max(20);
                    for (k, v) in keys.iter().zip(m.values()) {
                        outln!(
                            "  {} {v:>8}",
                            crate::table::pad(k, width, crate::table::Align::Left)
                        );
                    }
                }
                if let Some(d) = disk {
                    outln!(
                        "storage: {} unfinished, {} finished, {} records ({} bytes), {} bytes on disk",
                        d["unfinished"], d["finished"], d["records"], d["record_bytes"], d["bytes_on_disk"]
                    );
                }
            }
            Ok(0)
        }
        JournalCmd::Resume {
            ids,
            wait_secs,
            json,
        } => {
            let cfg = load_config(cfg_path)?;
            let (engine, _j) = engine_for(&cfg).await?;
            let targets: Vec<SagaId> = if ids.is_empty() {
                let report = engine.recover().await?;
                for (id, e) in &report.failed {
                    eprintln!("saga {id} cannot be resumed: {e}");
                }
                engine
                    .journal()
                    .list(SagaSet::Unfinished)
                    .await?
                    .into_iter()
                    .filter(|id| engine.is_running(*id))
                    .collect()
            } else {
                let mut v = Vec::new();
                for s in &ids {
                    let id = parse_id(s)?;
                    engine
                        .resume(id)
                        .await
                        .map_err(|e| anyhow!("saga {id}: {e}"))?;
                    v.push(id);
                }
                v
            };
            let mut worst = 0;
            for id in targets {
                let exit = wait_for(&engine, id, wait_secs).await;
                worst = worst.max(exit_code(&exit));
                report_exit(id, &exit, json);
            }
            engine.kill();
            Ok(worst)
        }
        JournalCmd::Resolve {
            id,
            step,
            applied,
            not_applied: _,
            reason,
            operator,
            refund_id,
            wait_secs,
            json,
        } => {
            let id = parse_id(&id)?;
            let operator = operator
                .or_else(|| std::env::var("USER").ok())
                .filter(|o| !o.trim().is_empty())
                .unwrap_or_else(|| "operator".into());
            let resolution = rescind_core::Resolution {
                step,
                applied: applied.then(|| rescind_core::OperatorApplied {
                    refund_id: refund_id.as_deref().map(rescind_core::RefundId::from),
                    value: None,
                }),
                operator,
                reason,
            };
            let cfg = load_config(cfg_path)?;
            let (engine, _j) = engine_for(&cfg).await?;
            engine
                .resolve(id, resolution)
                .await
                .map_err(|e| anyhow!(e))?;
            let exit = wait_for(&engine, id, wait_secs).await;
            engine.kill();
            report_exit(id, &exit, json);
            Ok(exit_code(&exit))
        }
        JournalCmd::Abort {
            id,
            reason,
            wait_secs,
            json,
        } => {
            let id = parse_id(&id)?;
            let cfg = load_config(cfg_path)?;
            let (engine, _j) = engine_for(&cfg).await?;
            engine
                .abort(id, reason)
                .await
                .map_err(|e| anyhow!("saga {id}: {e}"))?;
            let exit = wait_for(&engine, id, wait_secs).await;
            engine.kill();
            report_exit(id, &exit, json);
            Ok(match exit {
                Some(SagaExit::Finished(_)) => 0,
                _ => 1,
            })
        }
    }
}

fn report_exit(id: SagaId, exit: &Option<SagaExit>, json: bool) {
    if json {
        outln!(
            "{}",
            serde_json::json!({ "saga_id": id, "exit": crate::ops::exit_json(exit.as_ref()) })
        );
        return;
    }
    match exit {
        Some(SagaExit::Finished(o)) => outln!("saga {id}: {}", safe(&describe_outcome(o))),
        Some(SagaExit::Stuck { reason }) => outln!("saga {id}: stuck: {}", safe(reason)),
        Some(SagaExit::Stopped { reason }) => outln!("saga {id}: stopped: {}", safe(reason)),
        None => outln!("saga {id}: still running; it stays durable"),
    }
}

#[cfg(test)]
mod tests {
    use super::safe;

    #[test]
    fn control_characters_are_escaped_for_the_terminal() {
        assert_eq!(safe("1231231"), "1231231");
        assert_eq!(safe("订单 1"), "订单 1");
        assert_eq!(
            safe("1\r\nsaga 00000000 completed\u{1b}[2J"),
            "1\\r\\nsaga 00000000 completed\\u{1b}[2J"
        );
    }
}
