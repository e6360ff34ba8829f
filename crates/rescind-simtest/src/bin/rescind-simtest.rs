//! Long mode: `rescind-simtest --seeds 100000 [--start S] [--threads T]` runs
//! that many swarm seeds; `--seed S` replays one and prints its report.
//! `--later-step-failures` runs the later-step-failures mode instead.
//! Exits 1 on the first violations (each printed with its replay command).

use rescind_simtest::{default_threads, run_many, run_seed, SwarmConfig};

fn usage() -> ! {
    eprintln!(
        "usage: rescind-simtest [--later-step-failures] [--seeds N] [--start S] [--threads T] | --seed S"
    );
    std::process::exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut seeds, mut start, mut threads, mut one) = (1_000u64, 0u64, default_threads(), None);
    let mut cfg = SwarmConfig::default();
    while let Some(a) = args.next() {
        if a == "--later-step-failures" {
            cfg.later_step_failures = true;
            continue;
        }
        let mut val = || -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage())
        };
        match a.as_str() {
            "--seeds" => seeds = val(),
            "--start" => start = val(),
            "--threads" => threads = val() as usize,
            "--seed" => one = Some(val()),
            _ => usage(),
        }
    }
    if let Some(seed) = one {
        match run_seed(seed, &cfg) {
            Ok(r) => {
                println!("{r:#?}");
                return;
            }
            Err(v) => {
                eprintln!("{v}");
                std::process::exit(1)
            }
        }
    }
    let t0 = std::time::Instant::now();
    let mut done = 0u64;
    let mut failed = 0usize;
    // Batches, so progress shows and a failure stops a long run early.
    let batch = 1_000u64;
    while done < seeds {
        let n = batch.min(seeds - done);
        let list: Vec<u64> = (start + done..start + done + n).collect();
        let (_ok, bad) = run_many(&list, &cfg, threads);
        for v in &bad {
            eprintln!("{v}");
        }
        failed += bad.len();
        done += n;
        eprintln!(
            "{done}/{seeds} seeds, {failed} violation(s), {:.1} s",
            t0.elapsed().as_secs_f64()
        );
        if failed > 0 {
            std::process::exit(1);
        }
    }
    println!("{seeds} seeds from {start}: no violation");
}
