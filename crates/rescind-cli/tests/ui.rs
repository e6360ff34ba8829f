//! The web console (`/ui`) in a real headless Chromium, over the DevTools
//! protocol, against a real `rescind worker` and `rescind sim` on loopback.
//!
//! Sagas are run into every state the console shows (completed, failed,
//! stuck in doubt, stuck owing work), one with an order id that is HTML
//! meant to run script. The browser then signs in with a read token and
//! sees an action refused with the API's words, signs in with a write
//! token, reads the overview, finds a saga by order id, opens its timeline,
//! resolves the in-doubt saga and resumes the other through the stuck queue
//! (typing the reason), and the test checks through the API that both
//! finished, with the typed reason journaled.
//!
//! Needs Chromium (`chromium` on `PATH`, or `RESCIND_CHROMIUM=PATH`); without
//! it the test fails saying so, unless `RESCIND_SKIP_BROWSER=1`. With
//! `RESCIND_UI_SCREENSHOTS=1` the screenshots are also written to
//! `docs/screenshots/` (always to the test's directory).

mod cdp;
mod common;
mod rig;

use rig::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const TOKENS_ENV: &str = "RESCIND_UI_TEST_TOKENS";
const WRITE_TOKEN: &str = "ui-test-write-token-0123456789";
const READ_TOKEN: &str = "ui-test-read-token-0123456789";
/// An order id that would run script if the page inserted it as HTML.
const EVIL_ORDER: &str = "<img src=x onerror=\"window.__pwned=1\">";
const PAGE_WAIT: Duration = Duration::from_secs(15);

async fn authed(rig: &Rig, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let url = format!("{}{path}", rig.url);
    let req = match method {
        "POST" => rig.http.post(url).json(body.unwrap_or(&json!({}))),
        _ => rig.http.get(url),
    };
    rig.send(req.bearer_auth(WRITE_TOKEN)).await
}

async fn start(rig: &Rig, body: Value) -> String {
    let (status, v) = authed(rig, "POST", "/sagas", Some(&body)).await;
    assert_eq!(status, 201, "POST /sagas {body}: {v}\n{}", rig.logs());
    v["saga_id"].as_str().expect("saga_id").to_owned()
}

async fn wait_state(rig: &Rig, id: &str, want: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let (status, v) = authed(rig, "GET", &format!("/sagas/{id}"), None).await;
        if status == 200 && state_of(&v) == want && v["running"] == false {
            return v;
        }
        assert!(
            t0.elapsed() < WAIT,
            "saga {id} is not {want} after {} s: HTTP {status} {v:#}\n{}",
            WAIT.as_secs(),
            rig.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn screenshots_dir() -> Option<PathBuf> {
    (std::env::var("RESCIND_UI_SCREENSHOTS").as_deref() == Ok("1"))
        .then(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots"))
}

async fn shot(page: &cdp::Page<'_>, rig: &Rig, name: &str) {
    let path = rig.dir.path().join(format!("{name}.png"));
    let n = page
        .screenshot(&path)
        .await
        .unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
    assert!(n > 1000, "screenshot {name} is {n} bytes");
    if let Some(dir) = screenshots_dir() {
        std::fs::create_dir_all(&dir).expect("docs/screenshots");
        std::fs::copy(&path, dir.join(format!("{name}.png"))).expect("copy screenshot");
    }
}

/// Wait until the page finished rendering `view` (the script sets
/// `body[data-loaded]` after each render).
async fn loaded(page: &cdp::Page<'_>, view: &str) {
    page.wait_for(
        &format!("the {view} view"),
        &format!("document.body.dataset.loaded === {}", json!(view)),
        PAGE_WAIT,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

async fn go(page: &cdp::Page<'_>, hash: &str, view: &str) {
    page.eval(&format!(
        "document.body.dataset.loaded = ''; location.hash = {}; true",
        json!(hash)
    ))
    .await
    .expect("navigate");
    loaded(page, view).await;
}

async fn sign_in(page: &cdp::Page<'_>, token: &str) {
    page.wait_for(
        "the sign-in form",
        "!!document.querySelector('#token')",
        PAGE_WAIT,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    page.type_into("#token", token)
        .await
        .expect("type the token");
    page.click("#login-submit").await.expect("sign in");
    loaded(page, "overview").await;
}

async fn js(page: &cdp::Page<'_>, code: &str) -> Value {
    page.eval(code)
        .await
        .unwrap_or_else(|e| panic!("in the page: {e}"))
}

async fn wait_js(page: &cdp::Page<'_>, what: &str, code: &str) -> Value {
    page.wait_for(what, code, PAGE_WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_real_browser_shows_finds_and_acts_on_sagas() {
    let Some(chromium) = cdp::find_chromium() else {
        if std::env::var("RESCIND_SKIP_BROWSER").as_deref() == Ok("1") {
            eprintln!("RESCIND_SKIP_BROWSER=1 and no Chromium: the web console test is skipped");
            return;
        }
        panic!(
            "no Chromium to test the web console with: install it (apt-get install chromium), \
             or point RESCIND_CHROMIUM at the binary; RESCIND_SKIP_BROWSER=1 skips this test"
        );
    };

    let mut rig =
        Rig::with_worker_keys("ui", None, &format!("api_tokens_env = \"{TOKENS_ENV}\"")).await;
    rig.orders(json!([
        tbc_order("U1"),
        tbc_order("U2"),
        tbc_order("U3"),
        damai_lock("LU3"),
        tbc_order("U4"),
        damai_lock("LU4"),
    ]))
    .await;
    let tokens = format!("ops:write:{WRITE_TOKEN},viewer:read:{READ_TOKEN}");
    rig.start_worker(&[(TOKENS_ENV, &tokens)]).await;

    // The page and its assets are public, with a strict CSP; data is not.
    let r = rig
        .http
        .get(format!("{}/ui", rig.url))
        .send()
        .await
        .expect("GET /ui");
    assert_eq!(r.status(), 200);
    let csp = r
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    let (status, _) = rig.get("/ui/api/overview").await;
    assert_eq!(status, 401, "no data without a token");

    // Sagas in every state the console shows.
    let u1 = start(&rig, tbc_cancel("U1", None, "k-u1")).await;
    wait_state(&rig, &u1, "completed").await;
    rig.faults(json!({"tmall.tbc.order.cancel": {"permanent": 1.0}}))
        .await;
    let u2 = start(&rig, tbc_cancel("U2", None, "k-u2")).await;
    wait_state(&rig, &u2, "failed").await;
    let evil = start(&rig, tbc_cancel(EVIL_ORDER, None, "k-evil")).await;
    wait_state(&rig, &evil, "failed").await;
    // In doubt: the cancel applied, its answer lost, every lookup a 5xx.
    rig.faults(json!({
        "tmall.tbc.order.cancel": {"lost_response": 1.0},
        "tmall.tbc.order.get": {"http_5xx": 1.0}
    }))
    .await;
    let u3 = start(&rig, tbc_cancel("U3", Some("LU3"), "k-u3")).await;
    wait_state(&rig, &u3, "stuck").await;
    // Owing work: the cancel applied, the stock release refused for good.
    rig.faults(json!({"alibaba.damai.yuntoc.order.cancellockstock": {"permanent": 1.0}}))
        .await;
    let u4 = start(&rig, tbc_cancel("U4", Some("LU4"), "k-u4")).await;
    wait_state(&rig, &u4, "stuck").await;
    rig.faults(json!({})).await;

    let browser = cdp::Browser::launch(&chromium, rig.dir.path())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let page = browser
        .new_page(&format!("{}/ui", rig.url))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // A read token sees everything but may not act: the API's words show.
    sign_in(&page, READ_TOKEN).await;
    go(&page, "#/stuck", "stuck").await;
    page.click(&format!("tr[data-saga='{u4}'] .act-abort"))
        .await
        .expect("abort button");
    page.type_into("form.action-abort textarea", "testing the read scope")
        .await
        .expect("type a reason");
    page.click("form.action-abort .confirm")
        .await
        .expect("confirm");
    let refused = wait_js(
        &page,
        "the refusal",
        "(document.querySelector('form.action-abort .status.error') || {}).textContent",
    )
    .await;
    let refused = refused.as_str().unwrap_or_default();
    assert!(
        refused.contains("403") && refused.contains("token viewer has the read scope"),
        "{refused}"
    );
    page.click("#signout").await.expect("sign out");

    // Overview, with the write token.
    sign_in(&page, WRITE_TOKEN).await;
    let counts = js(
        &page,
        "Object.fromEntries([...document.querySelectorAll('.card.count[data-state]')].map(c => [c.dataset.state, c.querySelector('.n').textContent]))",
    )
    .await;
    assert_eq!(
        counts,
        json!({"running": "0", "stuck": "2", "completed": "1", "failed": "2", "aborted": "0"})
    );
    let by_channel = js(&page, "document.querySelector('#by-channel').innerText").await;
    assert!(
        by_channel
            .as_str()
            .unwrap_or_default()
            .contains("tmall-tbc"),
        "{by_channel}"
    );
    // Failed and stuck sagas by error code, as the overview endpoint counts them.
    let (status, ov) = authed(&rig, "GET", "/ui/api/overview", None).await;
    assert_eq!(status, 200, "{ov}");
    let api_codes: Vec<(String, u64)> = ov["failures_by_code"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["code"].as_str().unwrap_or("?").to_owned(),
                c["count"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    // U2, the HTML order and U4's stock release: the injected TOP refusal;
    // U3: its lookups' 503s.
    assert_eq!(
        api_codes,
        vec![
            ("41/isv.invalid-parameter".to_owned(), 3),
            ("http_503".to_owned(), 1)
        ],
        "{ov}"
    );
    let page_codes = js(
        &page,
        "[...document.querySelectorAll('#by-code tbody tr')].map(r => [r.children[0].textContent, Number(r.children[1].textContent)])",
    )
    .await;
    assert_eq!(page_codes, json!(api_codes));
    // The HTML order id is shown as text, and ran nothing.
    let recent = js(
        &page,
        "document.querySelector('#recent-failures').innerText",
    )
    .await;
    assert!(
        recent.as_str().unwrap_or_default().contains(EVIL_ORDER),
        "the order id shown literally: {recent}"
    );
    assert_eq!(
        js(
            &page,
            "[typeof window.__pwned, document.querySelectorAll('main img').length]"
        )
        .await,
        json!(["undefined", 0])
    );
    let main_text = js(&page, "document.querySelector('main').innerText").await;
    let main_text = main_text.as_str().unwrap_or_default();
    assert!(
        !main_text.contains("null") && !main_text.contains("undefined"),
        "no placeholder leaks into the page: {main_text}"
    );
    shot(&page, &rig, "overview").await;

    // The saga list, then a search by order id.
    go(&page, "#/sagas", "sagas").await;
    let rows = js(
        &page,
        "document.querySelectorAll('table.sagas tbody tr').length",
    )
    .await;
    assert_eq!(rows, json!(5), "every saga listed");
    shot(&page, &rig, "sagas").await;
    page.type_into("#f-channel", "tmall-tbc")
        .await
        .expect("channel");
    page.type_into("#f-order", "U1").await.expect("order");
    page.click("#search").await.expect("search");
    loaded(&page, "sagas").await;
    let found = js(
        &page,
        "[...document.querySelectorAll('table.sagas tbody tr')].map(r => r.dataset.saga)",
    )
    .await;
    assert_eq!(found, json!([u1]), "the search finds U1 only");
    // A state filter.
    go(&page, "#/sagas?state=failed", "sagas").await;
    let failed = js(
        &page,
        "[...document.querySelectorAll('table.sagas tbody tr')].map(r => r.dataset.saga).sort()",
    )
    .await;
    let mut want = vec![u2.clone(), evil.clone()];
    want.sort();
    assert_eq!(failed, json!(want));

    // U1's timeline.
    go(&page, "#/sagas?channel=tmall-tbc&order=U1", "sagas").await;
    page.click("table.sagas tbody tr a.order")
        .await
        .expect("open U1");
    loaded(&page, "saga").await;
    let order = js(&page, "document.querySelector('#saga-order').textContent").await;
    assert_eq!(order, json!("tmall-tbc:U1"));
    let recs = js(
        &page,
        "[...document.querySelectorAll('#timeline tbody tr')].map(r => r.children[2].textContent)",
    )
    .await;
    assert_eq!(
        recs,
        json!(["started", "intent", "outcome", "finished"]),
        "every record of U1"
    );
    let timeline = js(&page, "document.querySelector('#timeline').innerText").await;
    assert!(
        timeline
            .as_str()
            .unwrap_or_default()
            .contains("about to call cancel_unpaid"),
        "{timeline}"
    );
    shot(&page, &rig, "saga").await;

    // The failed saga's timeline names the upstream code and message.
    go(&page, &format!("#/saga/{u2}"), "saga").await;
    let failed_text = js(&page, "document.querySelector('#timeline').innerText").await;
    let failed_text = failed_text.as_str().unwrap_or_default();
    assert!(failed_text.contains("failed:"), "{failed_text}");

    // The stuck queue: resolve U3 (in doubt) with a typed reason.
    go(&page, "#/stuck", "stuck").await;
    let stuck = js(
        &page,
        "[...document.querySelectorAll('#stuck tbody tr')].map(r => r.dataset.saga).sort()",
    )
    .await;
    let mut want = vec![u3.clone(), u4.clone()];
    want.sort();
    assert_eq!(stuck, json!(want));
    page.click(&format!("tr[data-saga='{u3}'] .act-resolve"))
        .await
        .expect("resolve button");
    wait_js(
        &page,
        "the resolve form",
        "(document.querySelector('form.action-resolve input[name=step]') || {}).value === '0'",
    )
    .await;
    let reason = "seller console shows U3 closed <b>checked</b>";
    page.type_into("form.action-resolve textarea", reason)
        .await
        .expect("type the reason");
    shot(&page, &rig, "stuck").await;
    page.click("form.action-resolve .confirm")
        .await
        .expect("confirm");
    wait_js(
        &page,
        "the resolve accepted",
        "!!document.querySelector('form.action-resolve .status.ok')",
    )
    .await;
    let s = wait_state(&rig, &u3, "completed").await;
    let resolved = records(&s, "resolved");
    assert_eq!(resolved.len(), 1, "{s:#}");
    assert_eq!(resolved[0]["detail"]["reason"], reason, "{s:#}");
    assert_eq!(resolved[0]["detail"]["operator"], "ops", "{s:#}");
    assert!(!rig.lock_held("LU3").await, "U3's lock released");

    // The queue reloads; resume U4 (its fault is gone).
    wait_js(
        &page,
        "the queue without U3",
        &format!(
            "document.body.dataset.loaded === 'stuck' && !document.querySelector(\"tr[data-saga='{u3}']\")"
        ),
    )
    .await;
    page.click(&format!("tr[data-saga='{u4}'] .act-resume"))
        .await
        .expect("resume button");
    page.click("form.action-resume .confirm")
        .await
        .expect("confirm");
    wait_js(
        &page,
        "the resume accepted",
        "!!document.querySelector('form.action-resume .status.ok')",
    )
    .await;
    let s = wait_state(&rig, &u4, "completed").await;
    assert_eq!(records(&s, "resumed")[0]["detail"]["by"], "ops", "{s:#}");
    wait_js(
        &page,
        "an empty queue",
        "document.body.dataset.loaded === 'stuck' && !!document.querySelector('#no-stuck')",
    )
    .await;

    // U3's page after the resolution: the operator's record in the timeline.
    go(&page, &format!("#/saga/{u3}"), "saga").await;
    let t = js(&page, "document.querySelector('#timeline').innerText").await;
    assert!(
        t.as_str()
            .unwrap_or_default()
            .contains("in-doubt step resolved by ops"),
        "{t}"
    );
    shot(&page, &rig, "saga-resolved").await;

    browser.close().await;
    rig.stop_worker().await;
}
