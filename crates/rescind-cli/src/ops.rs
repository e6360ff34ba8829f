//! `cancel`, `withdraw-refund`, `reconcile` and `worker`.

use crate::journal_cmd::safe;
use anyhow::{anyhow, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rescind::config::Config;
use rescind::inspect::SagaSummary;
use rescind::reconcile::{self, Finding};
use rescind_core::{
    Engine, JournalError, OrderRef, RefundId, SagaExit, SagaId, SagaInput, SagaOutcome,
    StockLockRef,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `rescind cancel`.
#[derive(clap::Args, Debug)]
pub struct CancelArgs {
    /// Channel name as configured (e.g. tmall-tbc, pandapon-1688).
    #[arg(long)]
    pub channel: String,
    /// The channel's order id.
    #[arg(long)]
    pub order: String,
    /// The order is paid: cancel after payment (opens a refund and waits for it).
    #[arg(long)]
    pub paid: bool,
    /// A stock lock to release afterwards, as CHANNEL:LOCK_ID (e.g. damai:12345).
    #[arg(long, value_name = "CHANNEL:LOCK_ID")]
    pub stock_lock: Option<String>,
    /// Reason sent upstream where the channel takes one.
    #[arg(long)]
    pub reason: Option<String>,
    /// The account (shop, seller) to act for, where the channel serves many.
    #[arg(long)]
    pub account: Option<String>,
    #[command(flatten)]
    pub common: RunArgs,
}

/// Arguments of `rescind withdraw-refund`.
#[derive(clap::Args, Debug)]
pub struct WithdrawArgs {
    /// Channel name as configured (e.g. pandapon-taobao).
    #[arg(long)]
    pub channel: String,
    /// The order the refund belongs to.
    #[arg(long)]
    pub order: String,
    /// The refund (reverse order) to withdraw.
    #[arg(long)]
    pub refund: String,
    /// The account (shop, seller) to act for, where the channel serves many.
    #[arg(long)]
    pub account: Option<String>,
    #[command(flatten)]
    pub common: RunArgs,
}

/// Options shared by the one-saga commands.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Idempotency key: running the command again with the same key never
    /// starts a second saga (default: derived from the command's arguments).
    #[arg(long)]
    pub key: Option<String>,
    /// Return the saga id once it is journaled; a worker (or `journal resume`) finishes it.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up waiting after this many seconds (the saga stays durable).
    #[arg(long, default_value_t = 120)]
    pub wait_secs: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn load_config(path: &Path) -> Result<Config> {
    let cfg = Config::load(path).map_err(|e| anyhow!("{} ({})", e, path.display()))?;
    // This binary's own build decides (the library may have `otel` from
    // another crate of the same build while this command exports nothing).
    rescind::config::check_telemetry(&cfg.telemetry, cfg!(feature = "otel"))
        .map_err(|e| anyhow!("{} ({})", e, path.display()))?;
    Ok(cfg)
}

/// Open the configured journal for a one-shot command.
pub(crate) async fn open_journal(cfg: &Config) -> Result<rescind::wiring::OpenJournal> {
    rescind::wiring::open_journal(&cfg.journal)
        .await
        .map_err(journal_open_error)
}

/// The error of a journal that did not open. The hint about a running worker
/// goes only with [`JournalError::Locked`] (another process holds the sled
/// directory); a PostgreSQL configuration or connection error, a corrupt or
/// newer journal, gets no hint that would send the operator the wrong way.
pub(crate) fn journal_open_error(e: JournalError) -> anyhow::Error {
    match e {
        JournalError::Locked { .. } => anyhow!(
            "cannot open the journal: {e}\n  (a running `rescind worker` holds a sled journal: stop it, or send the request to its HTTP API)"
        ),
        other => anyhow!("cannot open the journal: {other}"),
    }
}

pub(crate) async fn engine_for(cfg: &Config) -> Result<(Engine, rescind::wiring::OpenJournal)> {
    let journal = open_journal(cfg).await?;
    let channels = rescind::wiring::build_channels(cfg).map_err(|e| anyhow!("{e}"))?;
    let engine = Engine::builder(journal.journal())
        .channels(channels)
        .limits(cfg.engine.clone())
        .build();
    Ok((engine, journal))
}

/// Wait for a saga; on timeout say what it is doing. Returns the exit.
pub(crate) async fn wait_for(engine: &Engine, id: SagaId, secs: u64) -> Option<SagaExit> {
    tokio::time::timeout(Duration::from_secs(secs), engine.wait(id))
        .await
        .ok()
        .and_then(|r| r.ok())
}

pub(crate) fn exit_code(exit: &Option<SagaExit>) -> u8 {
    match exit {
        Some(SagaExit::Finished(SagaOutcome::Completed { .. })) => 0,
        _ => 1,
    }
}

async fn run_one(
    cfg_path: &Path,
    input: SagaInput,
    default_key: String,
    args: &RunArgs,
) -> Result<u8> {
    let cfg = load_config(cfg_path)?;
    let (engine, journal) = engine_for(&cfg).await?;
    let key = args.key.clone().unwrap_or(default_key);
    // Refused input and a key bound to another request are one line each:
    // the engine's message names the field, the value and what to do.
    let (id, created) = match engine.start_keyed(&key, input).await {
        Ok(started) => started,
        Err(e @ (rescind_core::Error::Rejected(_) | rescind_core::Error::KeyConflict { .. })) => {
            return Err(anyhow!(e))
        }
        Err(e) => return Err(anyhow!(e).context("starting the saga")),
    };
    if !created {
        eprintln!("saga {id} already exists for key {key:?}; showing it");
    }
    if args.no_wait {
        engine.kill();
        if args.json {
            outln!(
                "{}",
                serde_json::json!({ "saga_id": id, "created": created })
            );
        } else {
            outln!("{id}");
        }
        return Ok(0);
    }
    let exit = wait_for(&engine, id, args.wait_secs).await;
    let last_error = engine.last_error(id);
    engine.kill();
    let summary = engine.load(id).await.ok().map(|s| SagaSummary::of(&s));
    drop(journal);
    if args.json {
        outln!(
            "{}",
            serde_json::json!({ "saga_id": id, "exit": exit_json(exit.as_ref()), "summary": summary, "last_error": last_error })
        );
    } else {
        match &exit {
            Some(SagaExit::Finished(o)) => outln!("saga {id}: {}", describe_outcome(o)),
            Some(SagaExit::Stuck { reason }) => outln!("saga {id}: stuck: {}\n  {}", safe(reason), stuck_hint(id, reason)),
            Some(SagaExit::Stopped { reason }) => outln!("saga {id}: stopped: {}", safe(reason)),
            None => outln!(
                "saga {id}: still running after {}s{}\n  it is durable: `rescind journal resume {id}` or a worker will finish it",
                args.wait_secs,
                last_error.map(|e| format!("; last error: {}", safe(&e.to_string()))).unwrap_or_default()
            ),
        }
    }
    Ok(exit_code(&exit))
}

pub(crate) fn describe_outcome(o: &SagaOutcome) -> String {
    match o {
        SagaOutcome::Completed { order, note } => format!(
            "completed, order {order}{}",
            note.as_ref()
                .map(|n| format!(" ({})", safe(n)))
                .unwrap_or_default()
        ),
        SagaOutcome::Failed { reason } => format!("failed: {}", safe(reason)),
        SagaOutcome::Aborted {
            compensated,
            reason,
        } => format!("aborted ({}); compensated: {compensated}", safe(reason)),
    }
}

/// What an operator does about a stuck saga: an in-doubt step is verified
/// upstream and resolved (resuming would only look it up again); anything
/// else is fixed, then resumed.
pub(crate) fn stuck_hint(id: rescind_core::SagaId, reason: &str) -> String {
    if reason.contains("resolve the step") {
        format!(
            "verify the step upstream, then record what you found with `rescind journal resolve {id} \
             --step N --applied|--not-applied --reason TEXT` (N: see `rescind journal show {id}`)"
        )
    } else {
        format!("resume it with `rescind journal resume {id}` once the cause is fixed")
    }
}

/// The idempotency key a command uses when `--key` is not given: it covers
/// every argument that changes what the saga does (kind, channel, order,
/// order state and refund id, stock lock, reason, account), so running the same
/// command twice names one saga and a different command never reuses it.
pub(crate) fn default_key(command: &str, input: &SagaInput) -> String {
    let lock = input
        .stock_lock
        .as_ref()
        .map(|l| format!("{}:{}", l.channel, l.lock_id))
        .unwrap_or_default();
    let mut parts = vec![
        input.kind.as_str().to_owned(),
        input.order.channel.to_string(),
        input.order.order_id.to_string(),
        input.order_state.to_string(),
        lock,
        input.reason.clone().unwrap_or_default(),
    ];
    // Keys of sagas without an account are those of earlier releases.
    if let Some(a) = &input.account {
        parts.push(format!("account={a}"));
    }
    // JSON quoting keeps a ':' inside a value from shifting the fields.
    let fields = serde_json::to_string(&parts).unwrap_or_default();
    format!("cli:{command}:v2:{fields}")
}

pub async fn cancel(cfg: &Path, a: CancelArgs) -> Result<u8> {
    let order = OrderRef::new(a.channel.as_str(), a.order.as_str());
    let mut input = if a.paid {
        SagaInput::cancel_paid(order)
    } else {
        SagaInput::cancel_unpaid(order)
    };
    if let Some(l) = &a.stock_lock {
        let (ch, id) = l
            .split_once(':')
            .filter(|(c, i)| !c.is_empty() && !i.is_empty())
            .ok_or_else(|| anyhow!("--stock-lock must be CHANNEL:LOCK_ID, got {l:?}"))?;
        input = input.with_stock_lock(StockLockRef::new(ch, id));
    }
    if let Some(r) = &a.reason {
        input = input.with_reason(r.clone());
    }
    if let Some(acc) = &a.account {
        input = input.with_account(acc.as_str());
    }
    let key = default_key("cancel", &input);
    run_one(cfg, input, key, &a.common).await
}

pub async fn withdraw(cfg: &Path, a: WithdrawArgs) -> Result<u8> {
    let mut input = SagaInput::withdraw_refund(
        OrderRef::new(a.channel.as_str(), a.order.as_str()),
        RefundId::from(a.refund.as_str()),
    );
    if let Some(acc) = &a.account {
        input = input.with_account(acc.as_str());
    }
    let key = default_key("withdraw", &input);
    run_one(cfg, input, key, &a.common).await
}

/// Arguments of `rescind reconcile`.
#[derive(clap::Args, Debug)]
pub struct ReconcileArgs {
    /// Local orders: CSV with a header (channel,order_id,local_state, optional refund_id and account) or JSON lines.
    #[arg(long)]
    pub orders: std::path::PathBuf,
    /// Lookups in flight at once (each channel's rate limit still applies).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Print JSON lines (one finding per line, then a summary line).
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV.
    #[arg(long)]
    pub csv: bool,
    /// Start the sagas that converge the mismatches, wait, and check again.
    #[arg(long)]
    pub fix: bool,
    /// How long --fix waits for its sagas.
    #[arg(long, default_value_t = 300)]
    pub wait_secs: u64,
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_owned());
    pb
}

fn print_findings(findings: &[Finding], json: bool, csv: bool) {
    if json {
        for f in findings {
            outln!("{}", serde_json::to_string(f).unwrap_or_default());
        }
        let summary: serde_json::Map<String, serde_json::Value> = reconcile::summary(findings)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into()))
            .collect();
        outln!("{}", serde_json::json!({ "summary": summary }));
        return;
    }
    if csv {
        outln!("channel,order_id,local_state,upstream_state,upstream_status,verdict,detail");
        for f in findings {
            let (state, raw) = f
                .upstream
                .as_ref()
                .map(|u| (u.state.to_string(), u.upstream.clone()))
                .unwrap_or_default();
            outln!(
                "{},{},{:?},{},{},{},\"{}\"",
                f.local.channel,
                f.local.order_id,
                f.local.local_state,
                state,
                raw,
                f.verdict.name(),
                f.detail.replace('"', "'")
            );
        }
        return;
    }
    use crate::table::{Align, Table};
    let mut t = Table::new(&[
        ("channel", Align::Left),
        ("order", Align::Left),
        ("local", Align::Left),
        ("upstream", Align::Left),
        ("verdict", Align::Left),
        ("detail", Align::Left),
    ]);
    for f in findings {
        let up = f
            .upstream
            .as_ref()
            .map(|u| format!("{} ({})", u.state.name(), u.upstream))
            .unwrap_or_else(|| "-".into());
        t.row([
            f.local.channel.to_string(),
            f.local.order_id.to_string(),
            format!("{:?}", f.local.local_state),
            up,
            f.verdict.name().to_string(),
            f.detail.clone(),
        ]);
    }
    for line in t.lines() {
        outln!("{line}");
    }
    outln!();
    print_summary(&reconcile::summary(findings));
}

/// Mismatch counts by verdict, aligned.
fn print_summary<K: AsRef<str>>(counts: &[(K, usize)]) {
    use crate::table::{Align, Table};
    let mut t = Table::new(&[("verdict", Align::Left), ("orders", Align::Right)]);
    for (verdict, n) in counts {
        t.row([verdict.as_ref().to_owned(), n.to_string()]);
    }
    for line in t.lines() {
        outln!("{line}");
    }
}

pub async fn reconcile(cfg_path: &Path, a: ReconcileArgs) -> Result<u8> {
    let cfg = load_config(cfg_path)?;
    let text = std::fs::read_to_string(&a.orders)
        .with_context(|| format!("cannot read {}", a.orders.display()))?;
    let orders =
        reconcile::parse_orders(&text).map_err(|e| anyhow!("{}: {e}", a.orders.display()))?;
    let channels = rescind::wiring::build_channels(&cfg).map_err(|e| anyhow!("{e}"))?;
    let pb = bar(orders.len() as u64, "looking up");
    let p2 = pb.clone();
    let findings = reconcile::reconcile(
        &channels,
        orders,
        a.concurrency,
        Arc::new(move || p2.inc(1)),
    )
    .await;
    pb.finish_and_clear();
    print_findings(&findings, a.json, a.csv);
    let mismatches = findings.iter().filter(|f| f.verdict.is_mismatch()).count();
    if !a.fix || mismatches == 0 {
        return Ok(u8::from(mismatches > 0));
    }
    let (engine, _journal) = engine_for(&cfg).await?;
    let mut started = Vec::new();
    for f in &findings {
        if let Some(input) = f.fix() {
            let key = format!(
                "reconcile:{}:{}:{}",
                f.local.channel,
                f.local.order_id,
                f.verdict.name()
            );
            let (id, _) = engine
                .start_keyed(&key, input)
                .await
                .context("starting a fix saga")?;
            started.push((f.local.clone(), id));
        }
    }
    eprintln!(
        "started {} fix saga(s); {} mismatch(es) need a local update",
        started.len(),
        mismatches - started.len()
    );
    let pb = bar(started.len() as u64, "fixing");
    for (_, id) in &started {
        let exit = wait_for(&engine, *id, a.wait_secs).await;
        if let Some(SagaExit::Finished(o)) = &exit {
            pb.println(format!("saga {id}: {}", describe_outcome(o)));
        } else {
            pb.println(format!("saga {id}: not finished ({exit:?})"));
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    engine.kill();
    let again: Vec<_> = findings.iter().map(|f| f.local.clone()).collect();
    let after = reconcile::reconcile(&channels, again, a.concurrency, Arc::new(|| {})).await;
    let remaining = after.iter().filter(|f| f.verdict.is_mismatch()).count();
    outln!("\nafter --fix: {remaining} mismatch(es) remain");
    print_summary(&reconcile::summary(&after));
    Ok(u8::from(remaining > 0))
}

/// Arguments of `rescind worker`.
#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// Listen here instead of the configured `worker.listen`.
    #[arg(long)]
    pub listen: Option<String>,
}

/// Resolves on SIGTERM or Ctrl-C. Created before the worker announces itself,
/// so a supervisor that signals right after `listening on` is always heard.
fn termination() -> Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    })
}

pub async fn worker(cfg_path: &Path, a: WorkerArgs) -> Result<u8> {
    let cfg = load_config(cfg_path)?;
    let terminated = termination()?;
    let w = rescind::worker::start_worker(&cfg, a.listen.as_deref())
        .await
        .map_err(|e| anyhow!(e))?;
    // The callback address first: a supervisor that waits for `listening on`
    // (stdout) then reads the log (stderr) must find it already there.
    if w.callback_addr != w.addr {
        eprintln!("callbacks on http://{}", w.callback_addr);
    }
    outln!("listening on http://{}", w.addr);
    eprintln!(
        "recovered {} saga(s) ({} in doubt, {} finished before the stop and marked now, {} could not be resumed)",
        w.recovered.resumed,
        w.recovered.in_doubt,
        w.recovered.marked_finished,
        w.recovered.failed.len()
    );
    terminated.await;
    eprintln!("shutting down: letting sagas reach a safe point");
    w.shutdown().await;
    Ok(0)
}

/// How a saga's task ended, as JSON values a program can match on:
/// `{"state": "finished", "outcome": {"result": "completed", …}}`,
/// `{"state": "stuck", "reason": "…"}`, `{"state": "stopped", "reason": "…"}`,
/// or `{"state": "running"}` when it had not ended when the command stopped waiting.
pub fn exit_json(exit: Option<&SagaExit>) -> serde_json::Value {
    match exit {
        Some(SagaExit::Finished(o)) => serde_json::json!({
            "state": "finished",
            "outcome": serde_json::to_value(o).unwrap_or(serde_json::Value::Null),
        }),
        Some(SagaExit::Stuck { reason }) => serde_json::json!({"state": "stuck", "reason": reason}),
        Some(SagaExit::Stopped { reason }) => {
            serde_json::json!({"state": "stopped", "reason": reason})
        }
        None => serde_json::json!({"state": "running"}),
    }
}

#[cfg(test)]
mod journal_open_error_tests {
    use super::journal_open_error;
    use rescind_core::JournalError;

    const HINT: &str = "holds a sled journal";

    #[test]
    fn the_worker_hint_goes_only_with_a_lock_error() {
        let locked = journal_open_error(JournalError::Locked {
            path: "/var/lib/rescind/journal".into(),
            detail: "another process has the sled database open".into(),
        })
        .to_string();
        assert!(locked.contains(HINT), "{locked}");
        assert!(locked.contains("/var/lib/rescind/journal"), "{locked}");
        for other in [
            JournalError::Backend(
                "invalid configuration: sslmode=verify-full checks the server's certificate against a CA"
                    .into(),
            ),
            JournalError::NewerFormat {
                found: 9,
                supported: 1,
            },
        ] {
            let text = journal_open_error(other.clone()).to_string();
            assert!(!text.contains(HINT), "{other:?}: {text}");
            assert!(text.contains(&other.to_string()), "{text}");
        }
    }
}

#[cfg(test)]
mod exit_json_tests {
    use super::exit_json;
    use rescind_core::{SagaExit, SagaOutcome};

    #[test]
    fn exits_are_json_values_not_debug_strings() {
        let v = exit_json(Some(&SagaExit::Stuck {
            reason: "step 0 gave up".into(),
        }));
        assert_eq!(
            v,
            serde_json::json!({"state": "stuck", "reason": "step 0 gave up"})
        );
        let v = exit_json(Some(&SagaExit::Finished(SagaOutcome::Failed {
            reason: "refused".into(),
        })));
        assert_eq!(v["state"], "finished");
        assert_eq!(v["outcome"]["result"], "failed", "{v}");
        assert_eq!(v["outcome"]["reason"], "refused", "{v}");
        assert_eq!(exit_json(None), serde_json::json!({"state": "running"}));
    }
}

#[cfg(test)]
mod tests {
    use super::stuck_hint;
    use rescind_core::SagaId;

    #[test]
    fn an_in_doubt_stuck_saga_is_pointed_at_resolve_not_resume() {
        let id = SagaId::from_u128(7);
        let in_doubt = "cancel_unpaid tmall-tbc:D1 is still in doubt (its lookup failed): the \
                        channel may have applied it; verify it upstream, then resolve the step \
                        (`journal resolve --applied` or `--not-applied`)";
        let hint = stuck_hint(id, in_doubt);
        assert!(
            hint.contains(&format!("rescind journal resolve {id}")),
            "{hint}"
        );
        assert!(!hint.contains("journal resume"), "{hint}");
        let creds = "credentials: account shop-7: the call of release_stock damai:L1 was refused";
        let hint = stuck_hint(id, creds);
        assert!(
            hint.contains(&format!("rescind journal resume {id}")),
            "{hint}"
        );
    }
}
