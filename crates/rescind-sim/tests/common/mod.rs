//! Helpers for the HTTP tests: start a simulator on 127.0.0.1:0, sign TOP
//! and PandaPon requests, read the admin API.
#![allow(dead_code)]

use rescind_sim::{defaults, OrderSeed, RefundSeed, Sim, SimConfig, SimServer};
use rescind_wire::sign::{
    top_sign, top_timestamp, PandaponSigner, Secret, SignMethod, SortedMd5Signer,
};
use serde_json::Value;

pub struct Harness {
    pub sim: Sim,
    pub server: SimServer,
    pub http: reqwest::Client,
}

impl Harness {
    pub async fn start(cfg: SimConfig) -> Harness {
        let sim = Sim::new(cfg);
        let server = sim.serve("127.0.0.1:0").await.expect("bind loopback");
        Harness {
            sim,
            server,
            http: reqwest::Client::new(),
        }
    }

    pub async fn new() -> Harness {
        Self::start(SimConfig::default()).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.server.base_url, path)
    }

    pub fn now_ms(&self) -> u64 {
        self.sim.config().clock.now_ms()
    }

    /// Context printed when an assertion fails: the effect log.
    pub fn context(&self) -> String {
        format!("effects: {:#?}", self.sim.effects())
    }

    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(path))
            .send()
            .await
            .expect("admin get");
        let s = r.status().as_u16();
        (
            s,
            serde_json::from_slice(&r.bytes().await.expect("body")).expect("admin json"),
        )
    }

    pub async fn admin_post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("admin post");
        let s = r.status().as_u16();
        (
            s,
            serde_json::from_slice(&r.bytes().await.expect("body")).expect("admin json"),
        )
    }

    /// `(op, target)` count as the admin API reports it.
    pub async fn effect_count(&self, op: &str, target: &str) -> u64 {
        let (_, v) = self.admin_get("/_admin/effects").await;
        v["counts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["op"] == op && c["target"] == target)
            .and_then(|c| c["count"].as_u64())
            .unwrap_or(0)
    }
}

pub fn order(channel: &str, id: &str, status: &str) -> OrderSeed {
    OrderSeed {
        channel: channel.into(),
        order_id: id.into(),
        status: status.into(),
        refund: None,
        stock_lock: None,
    }
}

pub fn order_with_refund(
    channel: &str,
    id: &str,
    status: &str,
    refund_id: &str,
    refund_status: &str,
) -> OrderSeed {
    OrderSeed {
        refund: Some(RefundSeed {
            refund_id: refund_id.into(),
            status: refund_status.into(),
        }),
        ..order(channel, id, status)
    }
}

/// TOP system + API parameters, signed.
pub fn top_params(
    method: &str,
    api: &[(&str, &str)],
    ts: &str,
    sign_method: SignMethod,
) -> Vec<(String, String)> {
    let mut p: Vec<(String, String)> = vec![
        ("method".into(), method.into()),
        ("app_key".into(), defaults::APP_KEY.into()),
        ("sign_method".into(), sign_method.as_str().into()),
        ("timestamp".into(), ts.into()),
        ("format".into(), "json".into()),
        ("v".into(), "2.0".into()),
    ];
    for (k, v) in api {
        p.push((k.to_string(), v.to_string()));
    }
    sign_top(&mut p, sign_method);
    p
}

pub fn sign_top(p: &mut Vec<(String, String)>, m: SignMethod) {
    p.retain(|(k, _)| k != "sign");
    let sign = top_sign(
        p.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        None,
        &Secret::new(defaults::APP_SECRET),
        m,
    );
    p.push(("sign".into(), sign));
}

pub fn form(p: &[(String, String)]) -> String {
    let mut s = String::new();
    for (k, v) in p {
        if !s.is_empty() {
            s.push('&');
        }
        s.push_str(&enc(k));
        s.push('=');
        s.push_str(&enc(v));
    }
    s
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl Harness {
    pub fn ts_now(&self) -> String {
        top_timestamp(self.now_ms())
    }

    /// POST a form to `/router/rest`; the JSON answer.
    pub async fn top_post(&self, body: String) -> Value {
        let r = self
            .http
            .post(self.url("/router/rest"))
            .header(
                "content-type",
                "application/x-www-form-urlencoded;charset=utf-8",
            )
            .body(body)
            .send()
            .await
            .expect("top post");
        assert_eq!(r.status(), 200);
        serde_json::from_slice(&r.bytes().await.expect("body")).expect("top json")
    }

    /// Call a TOP method with every parameter in the form body.
    pub async fn top(&self, method: &str, api: &[(&str, &str)]) -> Value {
        let p = top_params(method, api, &self.ts_now(), SignMethod::HmacSha256);
        self.top_post(form(&p)).await
    }

    /// Signed PandaPon headers at the sim's time.
    pub fn pp_headers(&self, nonce: Option<&str>) -> Vec<(String, String)> {
        pp_headers_at(self.now_ms(), nonce)
    }

    pub async fn pp_get(&self, path: &str) -> Value {
        let mut rb = self.http.get(self.url(path));
        for (k, v) in self.pp_headers(Some("0123456789abcdef0123456789abcdef")) {
            rb = rb.header(k, v);
        }
        let r = rb.send().await.expect("pandapon get");
        assert_eq!(r.status(), 200);
        serde_json::from_slice(&r.bytes().await.expect("body")).expect("pandapon json")
    }

    pub async fn pp_post_raw(&self, path: &str, body: String) -> (u16, String) {
        let mut rb = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json");
        for (k, v) in self.pp_headers(None) {
            rb = rb.header(k, v);
        }
        let r = rb.body(body).send().await.expect("pandapon post");
        let s = r.status().as_u16();
        (
            s,
            String::from_utf8(r.bytes().await.expect("body").to_vec()).expect("utf8"),
        )
    }

    pub async fn pp_post(&self, path: &str, body: &str) -> Value {
        let (s, text) = self.pp_post_raw(path, body.to_owned()).await;
        assert_eq!(s, 200, "{text}");
        serde_json::from_str(&text).expect("pandapon json")
    }
}

pub fn pp_headers_at(ts_ms: u64, nonce: Option<&str>) -> Vec<(String, String)> {
    let ts = ts_ms.to_string();
    let mut signed = vec![
        ("access-key", defaults::PANDAPON_ACCESS_KEY),
        ("timestamp", ts.as_str()),
    ];
    if let Some(n) = nonce {
        signed.push(("nonce-str", n));
    }
    let sig = SortedMd5Signer.sign(&signed, &Secret::new(defaults::PANDAPON_SECRET));
    let mut h = vec![
        (
            "access-key".to_owned(),
            defaults::PANDAPON_ACCESS_KEY.to_owned(),
        ),
        ("timestamp".to_owned(), ts.clone()),
        ("user-id".to_owned(), defaults::PANDAPON_USER_ID.to_owned()),
        ("signature".to_owned(), sig),
    ];
    if let Some(n) = nonce {
        h.push(("nonce-str".to_owned(), n.to_owned()));
    }
    h
}
