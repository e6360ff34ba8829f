//! The admin API under `/_admin/`: state, effect log, reset, faults, fixture
//! rows, generation, scheduled events, callback pushes. JSON in and out;
//! errors are `{"error": "..."}` with HTTP 400 or 404.

use axum::extract::{Path, Request, State};
use axum::response::Response;
use http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::accounts::{AccountError, AccountSeed};
use crate::book::{Book, Mix, OrderSeed, ScheduledEvent};
use crate::faults::FaultProfile;
use crate::flow::FlowConfig;
use crate::http_util::{self, json_response};
use crate::{lock, Sim};

/// Largest admin request body (fixtures can be big), bytes.
pub const ADMIN_BODY_BYTES_MAX: usize = 64 << 20;

fn bad(msg: impl std::fmt::Display) -> Response {
    json_response(StatusCode::BAD_REQUEST, &json!({"error": msg.to_string()}))
}

fn ok(v: Value) -> Response {
    json_response(StatusCode::OK, &v)
}

async fn body_json<T: DeserializeOwned>(req: Request) -> Result<T, Response> {
    let bytes = http_util::read_body(req.into_body(), ADMIN_BODY_BYTES_MAX)
        .await
        .map_err(|_| {
            bad(format!(
                "body unreadable or larger than {ADMIN_BODY_BYTES_MAX} bytes"
            ))
        })?;
    serde_json::from_slice(&bytes).map_err(|e| bad(format!("malformed JSON: {e}")))
}

fn state_json(b: &Book) -> Value {
    let mut orders: Vec<_> = b
        .orders
        .keys()
        .filter_map(|(c, id)| b.order_view(c, id))
        .collect();
    orders.sort_by(|a, b| (&a.channel, &a.order_id).cmp(&(&b.channel, &b.order_id)));
    let mut refunds: Vec<_> = b
        .refunds
        .keys()
        .filter_map(|(c, id)| b.refund_view(c, id))
        .collect();
    refunds.sort_by(|a, b| (&a.channel, &a.refund_id).cmp(&(&b.channel, &b.refund_id)));
    let locks: std::collections::BTreeMap<_, _> = b.locks.iter().collect();
    json!({
        "orders": orders,
        "refunds": refunds,
        "stock_locks": locks,
        "effects": b.effects.len(),
        "pending_events": b.pending.iter().map(|(due, e)| json!({"due_ms": due, "event": e})).collect::<Vec<_>>(),
        "event_history": b.history,
    })
}

/// `GET /_admin/state`: every order, refund and stock lock, the number of
/// effects, pending and applied scheduled events.
pub async fn state(State(sim): State<Sim>) -> Response {
    sim.tick();
    let v = state_json(&lock(&sim.inner.book));
    ok(v)
}

type Pair = Result<Path<(String, String)>, axum::extract::rejection::PathRejection>;

/// `GET /_admin/orders/{channel}/{id}`.
pub async fn order(State(sim): State<Sim>, p: Pair) -> Response {
    let Ok(Path((channel, id))) = p else {
        return bad("malformed path");
    };
    match sim.order(&channel, &id) {
        Some(v) => ok(json!(v)),
        None => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no order {channel}:{id}")}),
        ),
    }
}

/// `GET /_admin/refunds/{channel}/{id}`.
pub async fn refund(State(sim): State<Sim>, p: Pair) -> Response {
    let Ok(Path((channel, id))) = p else {
        return bad("malformed path");
    };
    match sim.refund(&channel, &id) {
        Some(v) => ok(json!(v)),
        None => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no refund {channel}:{id}")}),
        ),
    }
}

/// `GET /_admin/effects`: `{effects: [...], counts: [{op, target, count}]}`.
pub async fn effects(State(sim): State<Sim>) -> Response {
    let b = lock(&sim.inner.book);
    let counts: Vec<Value> = b
        .counts
        .iter()
        .map(|((op, target), n)| json!({"op": op, "target": target, "count": n}))
        .collect();
    ok(json!({"effects": b.effects, "counts": counts}))
}

/// `POST /_admin/reset`: empty everything and reload the fixture.
pub async fn reset(State(sim): State<Sim>) -> Response {
    sim.reset();
    ok(json!({"ok": true}))
}

/// `GET /_admin/faults`.
pub async fn get_faults(State(sim): State<Sim>) -> Response {
    ok(json!(sim.faults()))
}

/// `POST /_admin/faults`: replace the fault profile.
pub async fn set_faults(State(sim): State<Sim>, req: Request) -> Response {
    match body_json::<FaultProfile>(req).await {
        Ok(p) => {
            sim.set_faults(p);
            ok(json!({"ok": true}))
        }
        Err(r) => r,
    }
}

/// A fixture row with its optional owner (`account`, a seller nick).
#[derive(Deserialize)]
struct Row {
    #[serde(flatten)]
    seed: OrderSeed,
    #[serde(default)]
    account: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Rows {
    List(Vec<Row>),
    Wrapped { orders: Vec<Row> },
}

/// `POST /_admin/orders`: fixture rows (a list, or `{"orders": [...]}`);
/// all or nothing.
pub async fn add_orders(State(sim): State<Sim>, req: Request) -> Response {
    let rows = match body_json::<Rows>(req).await {
        Ok(Rows::List(r)) | Ok(Rows::Wrapped { orders: r }) => r,
        Err(r) => return r,
    };
    let errors: Vec<String> = rows
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            Book::validate(&r.seed)
                .err()
                .map(|e| format!("row {i}: {e}"))
        })
        .collect();
    if !errors.is_empty() {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "invalid rows", "errors": errors}),
        );
    }
    let n = rows.len();
    for r in rows {
        sim.set_order_account(&r.seed.channel, &r.seed.order_id, r.account);
        sim.add_order(r.seed);
    }
    ok(json!({"added": n}))
}

#[derive(Deserialize)]
struct GenerateReq {
    seed: u64,
    n: usize,
    #[serde(default)]
    mix: Mix,
    /// Owner of every generated order.
    #[serde(default)]
    account: Option<String>,
    /// Owners, round robin (overrides `account`).
    #[serde(default)]
    accounts: Vec<String>,
}

/// Most orders one generate call may create.
pub const GENERATE_N_MAX: usize = 1_000_000;

/// `POST /_admin/generate` `{seed, n, mix?}`: returns the generated rows.
pub async fn generate(State(sim): State<Sim>, req: Request) -> Response {
    let g = match body_json::<GenerateReq>(req).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    if g.n > GENERATE_N_MAX {
        return bad(format!("n must be at most {GENERATE_N_MAX}"));
    }
    let rows = sim.generate(g.seed, g.n, &g.mix);
    let owners: Vec<String> = if g.accounts.is_empty() {
        g.account.into_iter().collect()
    } else {
        g.accounts
    };
    let mut out = Vec::with_capacity(rows.len());
    for (i, r) in rows.into_iter().enumerate() {
        let mut v = json!(r);
        if !owners.is_empty() {
            let owner = owners[i % owners.len()].clone();
            sim.set_order_account(&r.channel, &r.order_id, Some(owner.clone()));
            v["account"] = Value::String(owner);
        }
        out.push(v);
    }
    ok(json!({"orders": out}))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Events {
    One(ScheduledEvent),
    Many(Vec<ScheduledEvent>),
}

/// `POST /_admin/schedule`: one event or a list.
pub async fn schedule(State(sim): State<Sim>, req: Request) -> Response {
    let evs = match body_json::<Events>(req).await {
        Ok(Events::One(e)) => vec![e],
        Ok(Events::Many(v)) => v,
        Err(r) => return r,
    };
    let n = evs.len();
    for e in evs {
        sim.schedule(e);
    }
    ok(json!({"scheduled": n}))
}

/// `GET /_admin/pushes`: every callback push attempt.
pub async fn pushes(State(sim): State<Sim>) -> Response {
    ok(json!({"pushes": sim.pushes()}))
}

#[derive(Deserialize)]
struct CallbackReq {
    url: Option<String>,
}

/// `POST /_admin/callback` `{"url": "http://..."|null}`.
pub async fn set_callback(State(sim): State<Sim>, req: Request) -> Response {
    match body_json::<CallbackReq>(req).await {
        Ok(c) => {
            sim.set_callback_url(c.url);
            ok(json!({"ok": true}))
        }
        Err(r) => r,
    }
}

/// `GET /_admin/tmc`: the message service's settings and counters (messages
/// published, consumed, confirmed; TBC order lookups and refund polls per order).
pub async fn get_tmc(State(sim): State<Sim>) -> Response {
    ok(json!({"settings": sim.tmc_settings(), "stats": sim.tmc_stats()}))
}

/// `POST /_admin/tmc {enabled, group_name, redeliver_after_ms,
/// duplicate_probability, reorder}`: replace the settings (a missing field
/// takes its default); answers with the settings now in force.
pub async fn set_tmc(State(sim): State<Sim>, req: Request) -> Response {
    let settings: crate::tmc::TmcSettings = match body_json(req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match sim.set_tmc(settings) {
        Ok(()) => ok(json!({"settings": sim.tmc_settings()})),
        Err(e) => bad(e),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum AccountRows {
    One(AccountSeed),
    List(Vec<AccountSeed>),
    Wrapped { accounts: Vec<AccountSeed> },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum KeyRows {
    One(crate::pandapon::KeySeed),
    List(Vec<crate::pandapon::KeySeed>),
}

/// `GET /_admin/pandapon/keys`: `{calls: {ACCESS_KEY: n}}`, the
/// authenticated PandaPon calls each access key signed (never a secret).
pub async fn get_pandapon_keys(State(sim): State<Sim>) -> Response {
    ok(json!({"calls": sim.pandapon_key_calls()}))
}

/// `POST /_admin/pandapon/keys`: one `{access_key, secret, user_id}` or a
/// list; each is accepted from then on beside the configured key.
pub async fn add_pandapon_keys(State(sim): State<Sim>, req: Request) -> Response {
    let rows = match body_json::<KeyRows>(req).await {
        Ok(KeyRows::One(k)) => vec![k],
        Ok(KeyRows::List(v)) => v,
        Err(r) => return r,
    };
    let n = rows.len();
    for (i, k) in rows.into_iter().enumerate() {
        if let Err(e) = sim.add_pandapon_key(k) {
            return bad(format!("key row {i}: {e}"));
        }
    }
    ok(json!({"added": n}))
}

/// `GET /_admin/accounts`: `{accounts: [...]}`, each with its sessions
/// (never their keys) and its call, refusal and refresh counters.
pub async fn get_accounts(State(sim): State<Sim>) -> Response {
    ok(json!({"accounts": sim.accounts()}))
}

/// `POST /_admin/accounts`: one account, a list, or `{"accounts": [...]}`;
/// adds or replaces each; all or nothing.
pub async fn add_accounts(State(sim): State<Sim>, req: Request) -> Response {
    let rows = match body_json::<AccountRows>(req).await {
        Ok(AccountRows::One(a)) => vec![a],
        Ok(AccountRows::List(v)) | Ok(AccountRows::Wrapped { accounts: v }) => v,
        Err(r) => return r,
    };
    let n = rows.len();
    for (i, a) in rows.into_iter().enumerate() {
        if let Err(e) = sim.add_account(a) {
            return bad(format!("account row {i}: {e}"));
        }
    }
    ok(json!({"added": n}))
}

fn account_result(r: Result<(), AccountError>) -> Response {
    match r {
        Ok(()) => ok(json!({"ok": true})),
        Err(e @ AccountError::Unknown(_)) => {
            json_response(StatusCode::NOT_FOUND, &json!({"error": e.to_string()}))
        }
        Err(e) => bad(e),
    }
}

/// `GET /_admin/flow`: `{config: {rate_per_s, burst, ban_secs}, app_keys:
/// {KEY: {bans, banned_for_ms, seconds: [{second, accepted, refused}]}}}`.
pub async fn get_flow(State(sim): State<Sim>) -> Response {
    ok(json!({"config": sim.flow(), "app_keys": sim.flow_log()}))
}

/// `POST /_admin/flow` `{rate_per_s, burst, ban_secs}` (each optional; a
/// rate of 0 turns flow control off).
pub async fn set_flow(State(sim): State<Sim>, req: Request) -> Response {
    match body_json::<FlowConfig>(req).await {
        Ok(cfg) => match sim.set_flow(cfg) {
            Ok(()) => ok(json!({"ok": true, "config": cfg})),
            Err(e) => bad(e),
        },
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BanReq {
    app_key: String,
    secs: u64,
}

/// `POST /_admin/flow/ban` `{app_key, secs}`: ban an app key now.
pub async fn ban_app_key(State(sim): State<Sim>, req: Request) -> Response {
    match body_json::<BanReq>(req).await {
        Ok(b) if b.secs == 0 => bad("secs: must be at least 1"),
        Ok(b) => {
            sim.ban_app_key(&b.app_key, b.secs);
            ok(json!({"ok": true}))
        }
        Err(r) => r,
    }
}

/// `POST /_admin/accounts/{id}/expire`: every session of the account expires now.
pub async fn expire_account(
    State(sim): State<Sim>,
    p: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let Ok(Path(id)) = p else {
        return bad("malformed path");
    };
    account_result(sim.expire_account(&id))
}

/// `POST /_admin/accounts/{id}/revoke`: the account's sessions and refresh token stop working.
pub async fn revoke_account(
    State(sim): State<Sim>,
    p: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let Ok(Path(id)) = p else {
        return bad("malformed path");
    };
    account_result(sim.revoke_account(&id))
}
