//! `rescind sim` takes its secrets from flags or environment variables:
//! a simulator started with a non-default TOP app secret refuses a request
//! signed with the default one and accepts one signed with the new one, and
//! `--help` never shows a secret's value.

mod common;

use rescind_sim::defaults;
use rescind_wire::sign::{top_sign, top_timestamp, Secret, SignMethod};
use serde_json::Value;

const NEW_TOP_SECRET: &str = "h3-top-secret-4f1c";

/// A signed `tmall.tbc.order.get` form, signed with `secret`.
fn order_get(secret: &str) -> Vec<(String, String)> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let mut p: Vec<(String, String)> = vec![
        ("method".into(), defaults::ORDER_GET_METHOD.into()),
        ("app_key".into(), defaults::APP_KEY.into()),
        ("sign_method".into(), "hmac-sha256".into()),
        ("timestamp".into(), top_timestamp(now_ms)),
        ("format".into(), "json".into()),
        ("v".into(), "2.0".into()),
        ("tid".into(), "1000001".into()),
    ];
    let sign = top_sign(
        p.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        None,
        &Secret::new(secret),
        SignMethod::HmacSha256,
    );
    p.push(("sign".into(), sign));
    p
}

/// The TOP error code of an answer, if it is an `error_response`.
fn error_code(v: &Value) -> Option<String> {
    let code = &v.get("error_response")?["code"];
    Some(match code {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

async fn post(url: &str, form: &[(String, String)]) -> Value {
    let r = common::http_client()
        .post(format!("{url}/router/rest"))
        .form(form)
        .send()
        .await
        .expect("post to the simulator");
    let bytes = r.bytes().await.expect("body");
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_verifies_top_signatures_with_the_secret_it_was_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (how, args, envs) in [
        (
            "environment variable",
            vec!["sim", "--listen", "127.0.0.1:0"],
            vec![("RESCIND_SIM_TOP_APP_SECRET", NEW_TOP_SECRET)],
        ),
        (
            "flag",
            vec![
                "sim",
                "--listen",
                "127.0.0.1:0",
                "--top-app-secret",
                NEW_TOP_SECRET,
            ],
            vec![],
        ),
    ] {
        let mut sim = common::spawn_proc(&args, dir.path(), "sim.log", &envs).expect("spawn sim");
        let (url, _) = sim
            .wait_listening()
            .await
            .unwrap_or_else(|e| panic!("{how}: the simulator did not start: {e}"));

        let old = post(&url, &order_get(defaults::APP_SECRET)).await;
        assert_eq!(
            error_code(&old).as_deref(),
            Some("25"),
            "{how}: signed with the default secret must be refused as an invalid signature: {old}"
        );
        let new = post(&url, &order_get(NEW_TOP_SECRET)).await;
        assert_ne!(
            error_code(&new).as_deref(),
            Some("25"),
            "{how}: signed with the configured secret passes the signature check: {new}"
        );
        assert!(new.is_object(), "{how}: {new}");
        let _ = sim.child.kill().await;
    }

    // Without the variable or flag, the default secret is still the one.
    let mut sim = common::spawn_proc(
        &["sim", "--listen", "127.0.0.1:0"],
        dir.path(),
        "sim-default.log",
        &[],
    )
    .expect("spawn sim");
    let (url, _) = sim.wait_listening().await.expect("sim starts");
    let old = post(&url, &order_get(defaults::APP_SECRET)).await;
    assert_ne!(error_code(&old).as_deref(), Some("25"), "{old}");
    let _ = sim.child.kill().await;
}

#[test]
fn sim_help_shows_no_secret_values() {
    let out = std::process::Command::new(common::exe())
        .args(["sim", "--help"])
        .env("RESCIND_SIM_TOP_APP_SECRET", NEW_TOP_SECRET)
        .env("RESCIND_SIM_DAMAI_SUPPLIER_SECRET", "h3-damai-secret-9")
        .env("RESCIND_SIM_PANDAPON_SECRET", "h3-pandapon-secret-7")
        .output()
        .expect("run rescind sim --help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    for flag in [
        "--top-app-secret",
        "--damai-supplier-secret",
        "--pandapon-secret",
        "RESCIND_SIM_TOP_APP_SECRET",
    ] {
        assert!(help.contains(flag), "{flag} is documented:\n{help}");
    }
    // The flag `--pandapon-secret` spells the default PandaPon secret
    // (`pandapon-secret`); names are not values, so take them out first.
    let values_only = help.replace("--pandapon-secret", "--FLAG");
    for secret in [
        NEW_TOP_SECRET,
        "h3-damai-secret-9",
        "h3-pandapon-secret-7",
        defaults::APP_SECRET,
        defaults::SUPPLIER_SECRET,
        defaults::PANDAPON_SECRET,
    ] {
        assert!(
            !values_only.contains(secret),
            "{secret:?} shown in --help:\n{help}"
        );
    }
}
