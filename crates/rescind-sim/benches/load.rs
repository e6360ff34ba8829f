//! Load benchmark: the TBC cancel path over loopback HTTP, no faults.
//!
//! ```text
//! cargo bench -p rescind-sim --bench load -- --secs 5 --concurrency 64 --orders 200000
//! ```
//!
//! Starts the simulator in-process on 127.0.0.1:0 (its own runtime, 2 worker
//! threads by default, `--workers N`), then `--concurrency` tasks on a
//! client runtime hammer `tmall.tbc.order.cancel` with signed form bodies
//! (pre-signed, so the figure measures the server, not the signer). The first
//! pass over the orders cancels them (effects); later requests answer
//! ORDER_ALREADY_CANCELLED — both are the full path: parse, verify, book, render.

use rescind_sim::{defaults, Mix, Sim, SimConfig};
use rescind_wire::sign::{top_sign, top_timestamp, Secret, SignMethod};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Opts {
    secs: u64,
    concurrency: usize,
    orders: usize,
    workers: usize,
    client_workers: usize,
}

fn opts() -> Opts {
    let mut o = Opts {
        secs: 5,
        concurrency: 64,
        orders: 200_000,
        workers: 2,
        client_workers: 2,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let val = args.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        match (args[i].as_str(), val) {
            ("--secs", Some(v)) => o.secs = v,
            ("--concurrency", Some(v)) => o.concurrency = v as usize,
            ("--orders", Some(v)) => o.orders = v as usize,
            ("--workers", Some(v)) => o.workers = v as usize,
            ("--client-workers", Some(v)) => o.client_workers = v as usize,
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

fn main() {
    let o = opts();
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.workers.max(1))
        .enable_all()
        .build()
        .expect("server runtime");
    let sim = Sim::new(SimConfig::default());
    let mix = Mix {
        channels: vec!["tmall-tbc".into()],
        unpaid: 1,
        paid: 0,
        shipped: 0,
        cancelled: 0,
        refund_open: 0,
        refunded: 0,
    };
    let rows = sim.generate(1, o.orders, &mix);
    let server = server_rt
        .block_on(sim.serve("127.0.0.1:0"))
        .expect("serve on loopback");
    let url = format!("{}/router/rest", server.base_url);

    // Pre-signed bodies, one per order.
    let ts = top_timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    );
    let secret = Secret::new(defaults::APP_SECRET);
    let bodies: Arc<Vec<String>> = Arc::new(
        rows.iter()
            .map(|r| {
                let params = [
                    ("method", defaults::CANCEL_METHOD),
                    ("app_key", defaults::APP_KEY),
                    ("sign_method", "md5"),
                    ("timestamp", ts.as_str()),
                    ("format", "json"),
                    ("v", "2.0"),
                    ("out_order_no", r.order_id.as_str()),
                    ("source_site", "LAZADA_SG"),
                ];
                let sign = top_sign(params, None, &secret, SignMethod::Md5);
                let mut s = String::new();
                for (k, v) in params {
                    s.push_str(k);
                    s.push('=');
                    s.push_str(&v.replace(' ', "+").replace(':', "%3A"));
                    s.push('&');
                }
                s.push_str("sign=");
                s.push_str(&sign);
                s
            })
            .collect(),
    );

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.client_workers.max(1))
        .enable_all()
        .build()
        .expect("client runtime");
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let (elapsed, mut lat) = client_rt.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(o.concurrency)
            .build()
            .expect("client");
        // Warm-up: open the connections.
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..o.concurrency {
            let (client, url, bodies, stop, next, errors) = (
                client.clone(),
                url.clone(),
                bodies.clone(),
                stop.clone(),
                next.clone(),
                errors.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize % bodies.len();
                    let t = Instant::now();
                    let r = client
                        .post(url.as_str())
                        .header(
                            "content-type",
                            "application/x-www-form-urlencoded;charset=utf-8",
                        )
                        .body(bodies[i].clone())
                        .send()
                        .await;
                    let ok = match r {
                        Ok(resp) => match resp.bytes().await {
                            Ok(b) => b.starts_with(b"{\"tmall_tbc_order_cancel_response\""),
                            Err(_) => false,
                        },
                        Err(_) => false,
                    };
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    lat.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                }
                lat
            }));
        }
        tokio::time::sleep(Duration::from_secs(o.secs)).await;
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in tasks {
            if let Ok(l) = t.await {
                all.extend(l);
            }
        }
        (start.elapsed(), all)
    });
    lat.sort_unstable();
    let n = lat.len();
    let pct = |p: f64| -> u32 {
        if n == 0 {
            0
        } else {
            lat[((n as f64 * p) as usize).min(n - 1)]
        }
    };
    let effects = sim.effects().len();
    println!(
        "tbc cancel over loopback: {n} requests in {:.2}s = {:.0} req/s; p50 {} us, p99 {} us, max {} us; \
         errors {}; effects applied {effects}; concurrency {}, server workers {}, client workers {}",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        lat.last().copied().unwrap_or(0),
        errors.load(Ordering::Relaxed),
        o.concurrency,
        o.workers,
        o.client_workers,
    );
    let counts = sim.effect_counts();
    assert!(
        counts.values().all(|c| *c == 1),
        "every order cancelled at most once"
    );
    drop(server);
}
