//! Reconciliation: compare what the backend believes about its orders with
//! what each channel says, give a verdict per order, and plan the sagas that
//! converge the differences.
//!
//! Input rows (CSV with a header, or JSON lines) have `channel`, `order_id`,
//! `local_state` and optionally `refund_id`. `local_state` is one of
//! `pending_pay`, `paid`, `refunding`, `cancelled`, `refunded`.

use rescind_core::{ChannelError, Channels, OrderRef};
use serde::Deserialize;
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
                    let account = local.account.as_deref().map(rescind_core::AccountId::from);
                    l.order_status(
                        &OrderRef::new(local.channel.as_str(), local.order_id.as_str()),
                        account.as_ref(),
                    )
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
/// taken from the first non-blank character. Errors name the line (and, for
/// CSV, the column).
pub fn parse_orders(text: &str) -> Result<Vec<LocalOrder>, String> {
    let first = text.trim_start().chars().next();
    if first == Some('{') {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
            .collect()
    } else {
        parse_csv(text)
    }
}

/// CSV with a header naming the columns (any order; `refund_id` and `account` optional).
fn parse_csv(text: &str) -> Result<Vec<LocalOrder>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let header = reader.headers().map_err(|e| csv_error(text, &e))?.clone();
    if header.is_empty() {
        return Ok(Vec::new());
    }
    for need in ["channel", "order_id", "local_state"] {
        if !header.iter().any(|c| c == need) {
            let line = line_of(text, header.position());
            let got: Vec<&str> = header.iter().collect();
            return Err(format!(
                "line {line}: the CSV header needs a `{need}` column (got {:?})",
                got.join(",")
            ));
        }
    }
    let mut out = Vec::new();
    for row in reader.records() {
        let row = row.map_err(|e| csv_error(text, &e))?;
        let order = row
            .deserialize::<LocalOrder>(Some(&header))
            .map_err(|e| row_error(text, &header, &row, &e))?;
        out.push(order);
    }
    Ok(out)
}

/// The 1-based line a CSV position is on (blank lines count).
fn line_of(text: &str, pos: Option<&csv::Position>) -> usize {
    let mut byte = pos.map_or(0, |p| p.byte() as usize).min(text.len());
    // A record's position is where its parse began, before the blank lines
    // the reader skipped: its line is the first non-blank one from there.
    byte += text.as_bytes()[byte..]
        .iter()
        .take_while(|b| matches!(b, b'\n' | b'\r'))
        .count();
    text.as_bytes()[..byte]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A CSV syntax error as `line N: ...`.
fn csv_error(text: &str, e: &csv::Error) -> String {
    let line = line_of(text, e.position());
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("line {line}: {len} fields, the header has {expected_len}"),
        _ => format!("line {line}: {e}"),
    }
}

/// A row that does not deserialize, as `line N: field `COLUMN`: ...`. csv
/// knows the column for type errors; a bad `local_state` (serde's own
/// "unknown variant" error) it does not, so that column is checked here.
fn row_error(
    text: &str,
    header: &csv::StringRecord,
    row: &csv::StringRecord,
    e: &csv::Error,
) -> String {
    let line = line_of(text, row.position());
    let csv::ErrorKind::Deserialize { err, .. } = e.kind() else {
        return csv_error(text, e);
    };
    let bad_state = || {
        let i = header.iter().position(|c| c == "local_state")?;
        let value = row.get(i)?;
        let de = serde::de::value::StrDeserializer::<serde::de::value::Error>::new(value);
        LocalState::deserialize(de)
            .is_err()
            .then_some("local_state")
    };
    match err
        .field()
        .and_then(|i| header.get(i as usize))
        .or_else(bad_state)
    {
        Some(column) => format!("line {line}: field `{column}`: {}", err.kind()),
        None => format!("line {line}: {}", err.kind()),
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
        let err =
            parse_orders("channel,order_id,local_state\nc,1,paid\n\nc,2,weird\n").unwrap_err();
        assert!(
            err.starts_with("line 4: field `local_state`:") && err.contains("weird"),
            "{err}"
        );
        let err = parse_orders("channel,order_id,local_state\nc,1\n").unwrap_err();
        assert_eq!(err, "line 2: 2 fields, the header has 3");
        // Real CSV: quoted fields, any column order, padding trimmed.
        let v =
            parse_orders("local_state, order_id ,channel,refund_id\npaid,\"1,2\", c ,\"R\"\"1\"\n")
                .unwrap();
        assert_eq!(v[0].order_id, "1,2");
        assert_eq!(v[0].channel, "c");
        assert_eq!(v[0].refund_id.as_deref(), Some("R\"1"));
        assert_eq!(parse_orders("").unwrap(), []);
        assert!(parse_orders("{\"channel\":1}\n")
            .unwrap_err()
            .contains("line 1"));
    }
}
