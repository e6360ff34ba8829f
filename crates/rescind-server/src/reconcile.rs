//! Reconciliation: compare what the backend believes about its orders with
//! what each channel says, give a verdict per order, and plan the sagas that
//! converge the differences.
//!
//! Input rows (CSV with a header, or JSON lines) have `channel`, `order_id`,
//! `local_state` and optionally `refund_id`. `local_state` is one of
//! `pending_pay`, `paid`, `refunding`, `cancelled`, `refunded`.

use rescind_core::{ChannelError, Channels, OrderRef};
use std::sync::Arc;

pub use rescind_core::reconcile::{judge, summary, Finding, LocalOrder, LocalState, Verdict};

/// Look every order up (at most `concurrency` at once; each channel's own
/// rate-limit layer paces its calls) and judge it. `progress` is called once
/// per order done. Results come back in input order.
pub async fn reconcile(
    channels: &Channels,
    orders: Vec<LocalOrder>,
    concurrency: usize,
    progress: Arc<dyn Fn() + Send + Sync>,
) -> Vec<Finding> {
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, local) in orders.into_iter().enumerate() {
        let channels = channels.clone();
        let sem = sem.clone();
        let progress = progress.clone();
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let name = rescind_core::ChannelName::from(local.channel.as_str());
            let lookup = match channels.lookup(&name) {
                Some(l) => {
                    l.order_status(&OrderRef::new(
                        local.channel.as_str(),
                        local.order_id.as_str(),
                    ))
                    .await
                }
                None => Err(ChannelError::unsupported(
                    &name,
                    "order lookup (is the channel configured?)",
                )),
            };
            let f = judge(&local, lookup);
            progress();
            (i, f)
        });
    }
    let mut out: Vec<(usize, Finding)> = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(pair) = r {
            out.push(pair);
        }
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, f)| f).collect()
}

/// Parse local orders from CSV (with a header) or JSON lines; the format is
/// taken from the first non-blank character. Errors name the line.
pub fn parse_orders(text: &str) -> Result<Vec<LocalOrder>, String> {
    let first = text.trim_start().chars().next();
    if first == Some('{') {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
            .collect()
    } else {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let Some((_, header)) = lines.next() else {
            return Ok(Vec::new());
        };
        let cols: Vec<&str> = header.split(',').map(str::trim).collect();
        for need in ["channel", "order_id", "local_state"] {
            if !cols.contains(&need) {
                return Err(format!(
                    "line 1: the CSV header needs a `{need}` column (got {header:?})"
                ));
            }
        }
        lines
            .map(|(i, l)| {
                let vals: Vec<&str> = l.split(',').map(str::trim).collect();
                if vals.len() != cols.len() {
                    return Err(format!(
                        "line {}: {} fields, the header has {}",
                        i + 1,
                        vals.len(),
                        cols.len()
                    ));
                }
                let obj: serde_json::Map<String, serde_json::Value> = cols
                    .iter()
                    .zip(vals)
                    .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_owned())))
                    .collect();
                serde_json::from_value(serde_json::Value::Object(obj))
                    .map_err(|e| format!("line {}: {e}", i + 1))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_csv_and_json_lines_and_names_bad_lines() {
        let csv = "channel,order_id,local_state,refund_id\ntmall-tbc,1,paid,\npandapon-1688,2542285634920880794,cancelled,\n";
        let v = parse_orders(csv).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].order_id, "2542285634920880794");
        assert_eq!(v[0].refund_id, None);
        let jl = "{\"channel\":\"c\",\"order_id\":\"1\",\"local_state\":\"refunding\",\"refund_id\":\"R\"}\n";
        assert_eq!(
            parse_orders(jl).unwrap()[0].local_state,
            LocalState::Refunding
        );
        assert!(parse_orders("channel,order_id\n")
            .unwrap_err()
            .contains("local_state"));
        assert!(parse_orders("channel,order_id,local_state\nc,1,weird\n")
            .unwrap_err()
            .contains("line 2"));
        assert!(parse_orders("{\"channel\":1}\n")
            .unwrap_err()
            .contains("line 1"));
    }
}
