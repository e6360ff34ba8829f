//! Markdown tables, JSON files and the chart.

use crate::chart::{self, Series};
use crate::recovery::RecoveryResult;
use crate::sagas::SagasReport;
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::Path;

fn read(p: &str) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// The machine and its load right now.
pub fn machine_markdown() -> String {
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.0} GB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "? GB".into());
    let load = read("/proc/loadavg");
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "machine: {cpus} CPUs ({cpu}), {mem} RAM, Linux {}; load average at start {}",
        read("/proc/sys/kernel/osrelease").trim(),
        load.join(" ")
    )
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// The saga tables.
pub fn sagas_markdown(r: &SagasReport) -> String {
    let mut s = String::new();
    if r.custom.is_empty() {
        return builtin_markdown(r, s);
    }
    let _ = writeln!(
        s,
        "\nraw POST to the trivial upstream, one at a time (no engine, no journal): p50 {} µs, mean {:.0} µs",
        r.raw_post_p50_us, r.raw_post_mean_us
    );
    for w in &r.single_writer {
        let _ = writeln!(
            s,
            "one writer, {}: p50 {} µs, mean {:.0} µs per durable append ({} appends)",
            w.mode, w.p50_us, w.mean_us, w.appends
        );
    }
    if !r.custom.is_empty() {
        let _ = writeln!(s, "\n### Generic two-step saga\n");
        let _ = writeln!(
            s,
            "| concurrency | journal | sagas/s | p50 ms | p99 ms | records/flush | vs flush-per-append | vs bare loop |"
        );
        let _ = writeln!(s, "|---:|---|---:|---:|---:|---:|---:|---:|");
        for c in &r.custom {
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {} | {} | {} | {} | {} |",
                c.concurrency,
                c.label,
                c.run.per_sec,
                ms(c.run.p50_us),
                ms(c.run.p99_us),
                if c.run.batch > 0.0 {
                    format!("{:.1}", c.run.batch)
                } else {
                    "–".into()
                },
                c.vs_baseline
                    .map(|v| format!("{v:.2}×"))
                    .unwrap_or_else(|| "–".into()),
                c.vs_bare
                    .map(|v| format!("{:.0}%", v * 100.0))
                    .unwrap_or_else(|| "–".into())
            );
        }
        let _ = writeln!(s, "\nEngine overhead per step at concurrency 1 ((saga mean − time inside the executor) / 2):\n");
        for (m, us) in &r.overhead_per_step_us {
            let _ = writeln!(s, "- {m}: {us:.0} µs per step");
        }
    }
    builtin_markdown(r, s)
}

fn builtin_markdown(r: &SagasReport, mut s: String) -> String {
    if !r.builtin.is_empty() {
        let _ = writeln!(s, "\n### Built-in sagas against the simulator\n");
        let _ = writeln!(
            s,
            "| saga | upstream calls | durable writes | concurrency | sagas/s | p50 ms | p99 ms | records/flush |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|");
        for b in &r.builtin {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.0} | {} | {} | {:.1} |",
                b.label,
                b.upstream_calls,
                b.durable_writes,
                b.concurrency,
                b.run.per_sec,
                ms(b.run.p50_us),
                ms(b.run.p99_us),
                b.run.batch
            );
        }
    }
    s
}

/// Write `sagas.json` and `sagas.svg` into `out`.
pub fn write_sagas(out: &Path, r: &SagasReport) -> Result<()> {
    let p = out.join("sagas.json");
    std::fs::write(&p, serde_json::to_string_pretty(r)?)
        .with_context(|| format!("cannot write {}", p.display()))?;
    if r.custom.is_empty() {
        return Ok(());
    }
    let mut series: Vec<Series> = Vec::new();
    for row in &r.custom {
        let point = (
            row.concurrency,
            row.run.per_sec,
            row.run.p99_us as f64 / 1000.0,
        );
        match series.iter_mut().find(|s| s.label == row.label) {
            Some(s) => s.points.push(point),
            None => series.push(Series {
                label: row.label.clone(),
                points: vec![point],
            }),
        }
    }
    let svg = out.join("sagas.svg");
    chart::draw(
        &svg,
        "rescind: generic two-step saga (2 POSTs, 4 durable writes) vs concurrency",
        &series,
    )?;
    eprintln!("wrote {} and {}", p.display(), svg.display());
    Ok(())
}

/// The recovery table.
pub fn recovery_markdown(rs: &[RecoveryResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n### Recovery\n");
    let _ = writeln!(
        s,
        "| unfinished sagas | left as | sled cache MiB | journal MB | open ms | recover() returned ms | all resumed ms (in child) | spawn → all resumed ms | RSS before recover MB | RSS in flight MB | RSS per saga bytes |"
    );
    let _ = writeln!(s, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.0} |",
            r.sagas,
            r.mode,
            r.sled_cache_mb.unwrap_or(256),
            r.journal_bytes as f64 / 1e6,
            r.child.open_ms,
            r.child.recover_returned_ms,
            r.child.all_resumed_ms,
            r.spawn_to_all_resumed_ms,
            r.child.rss_before_recover as f64 / 1048576.0,
            r.child.rss_in_flight as f64 / 1048576.0,
            r.rss_per_saga_bytes
        );
    }
    for r in rs {
        let _ = writeln!(
            s,
            "\n{}: child CPU time (all threads) {:.0} ms to open, {:.0} ms to all resumed; recover() phases ms: claim {:.0}, read {:.0} (waited for {:.0}), fold {:.0}, launch {:.0}, writes {:.0}, total {:.0}",
            r.mode,
            r.child.open_cpu_ms,
            r.child.all_resumed_cpu_ms,
            r.child.phases_ms.claim,
            r.child.phases_ms.read,
            r.child.phases_ms.read_wait,
            r.child.phases_ms.fold,
            r.child.phases_ms.launch,
            r.child.phases_ms.writes,
            r.child.phases_ms.total
        );
    }
    for r in rs {
        let _ = writeln!(
            s,
            "\n{}: after Engine::kill RSS {:.1} MB ({:.0} bytes/saga given back); reading + folding every saga afterwards (cache warm): one by one {:.0} ms, 64 at a time {:.0} ms",
            r.mode,
            r.child.rss_after_kill as f64 / 1048576.0,
            r.child.rss_in_flight.saturating_sub(r.child.rss_after_kill) as f64 / r.sagas as f64,
            r.child.read_sequential_ms,
            r.child.read_concurrent64_ms
        );
    }
    if let Some(r) = rs.first() {
        let _ = writeln!(
            s,
            "\nsize_of::<SagaState>() = {} bytes",
            r.child.saga_state_size
        );
    }
    s
}

/// Write `recovery.json` into `out`.
pub fn write_recovery(out: &Path, rs: &[RecoveryResult]) -> Result<()> {
    let p = out.join("recovery.json");
    std::fs::write(&p, serde_json::to_string_pretty(rs)?)
        .with_context(|| format!("cannot write {}", p.display()))?;
    Ok(())
}
