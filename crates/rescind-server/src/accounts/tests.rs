use super::*;
use std::os::unix::fs::PermissionsExt;

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn write(&self, name: &str, text: &str, mode: u32) {
        let p = self.path(name);
        std::fs::write(&p, text).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    fn config(&self) -> AccountsConfig {
        AccountsConfig {
            file: self.path("accounts.toml"),
            secrets_file: Some(self.path("secrets.toml")),
            refresh_margin_s: 600,
        }
    }
}

const ACCOUNTS: &str = r#"
[[account]]
id = "shopA"
channels = ["tmall-tbc", "damai"]
damai_supplier_key = "supplier-a"

[[account]]
id = "shopB"
top_session_env = "SHOPB_SESSION"
"#;

const SECRETS: &str = r#"
[shopA]
top_session = "session-a-1"
top_session_expires_at_ms = 5000
top_refresh_token = "refresh-a-1"
damai_supplier_secret = "supplier-secret-a"
"#;

fn env(v: &str) -> Option<String> {
    (v == "SHOPB_SESSION").then(|| "session-b-env".to_owned())
}

#[tokio::test]
async fn loads_files_and_environment() {
    let f = Files::new();
    f.write("accounts.toml", ACCOUNTS, 0o644);
    f.write("secrets.toml", SECRETS, 0o600);
    let p = FileCredentials::load(&f.config(), env).expect("load");
    let a = p.top_session("tmall-tbc", "shopA").await.expect("A");
    assert_eq!(a.session.expose(), "session-a-1");
    assert_eq!(a.expires_at_ms, Some(5000));
    assert_eq!(
        a.refresh_token.as_ref().map(Secret::expose),
        Some("refresh-a-1")
    );
    let d = p.damai_supplier("damai", "shopA").await.expect("damai");
    assert_eq!(d.supplier_key, "supplier-a");
    assert!(p.top_session("pandapon-taobao", "shopA").await.is_err());
    let b = p.top_session("tmall-tbc", "shopB").await.expect("B");
    assert_eq!(b.session.expose(), "session-b-env");
    let infos = p.infos();
    assert_eq!(infos.len(), 2);
    assert_eq!(infos[0].session_expires_at_ms, Some(5000));
    assert!(infos[0].refreshable && infos[0].damai && !infos[0].pandapon);
}

#[test]
fn a_secrets_file_readable_by_others_is_refused() {
    let f = Files::new();
    f.write("accounts.toml", ACCOUNTS, 0o644);
    f.write("secrets.toml", SECRETS, 0o644);
    let e = FileCredentials::load(&f.config(), env).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, AccountsError::Mode { mode: 0o644, .. }), "{e}");
    assert!(
        text.contains("secrets.toml") && text.contains("0644"),
        "{text}"
    );
    assert!(text.contains("0600"), "{text}");
}

#[test]
fn errors_name_file_account_and_key_never_a_secret() {
    let f = Files::new();
    f.write("secrets.toml", SECRETS, 0o600);
    let cases: &[(&str, &str)] = &[
        (
            "[[account]]\nid = \"x\"\ntop_session = \"leaked-secret\"\n",
            "account[0] (x).top_session",
        ),
        (
            "[[account]]\nid = \"q\"\n[[account]]\nid = \"q\"\n",
            "duplicate",
        ),
        ("[[account]]\nchannels = []\n", "account[0].id"),
        (
            "[[account]]\nid = \"y\"\ntop_session_env = \"NOPE\"\n",
            "NOPE is not set",
        ),
        (
            "[[account]]\nid = \"z\"\ncolour = 1\n",
            "account[0] (z).colour",
        ),
        // shopA's secrets without shopA in the accounts file.
        ("[[account]]\nid = \"w\"\n", "not in the accounts file"),
    ];
    for (text, words) in cases {
        f.write("accounts.toml", text, 0o644);
        let e = FileCredentials::load(&f.config(), env)
            .unwrap_err()
            .to_string();
        assert!(e.contains(words), "{text:?}: {e}");
        assert!(
            e.contains("accounts.toml") || e.contains("secrets.toml"),
            "{e}"
        );
        assert!(
            !e.contains("leaked-secret") && !e.contains("session-a-1"),
            "{e}"
        );
    }
    // A broken secrets file is not quoted.
    f.write("accounts.toml", ACCOUNTS, 0o644);
    f.write(
        "secrets.toml",
        "[shopA]\ntop_session = \"session-a-1\n",
        0o600,
    );
    let e = FileCredentials::load(&f.config(), env)
        .unwrap_err()
        .to_string();
    assert!(!e.contains("session-a-1"), "{e}");
}

#[tokio::test]
async fn reload_reports_exactly_the_changed_accounts() {
    let f = Files::new();
    f.write("accounts.toml", ACCOUNTS, 0o644);
    f.write("secrets.toml", SECRETS, 0o600);
    let p = FileCredentials::load(&f.config(), env).expect("load");
    let g = p.generation();
    // Nothing changed.
    let c = p.reload().expect("reload");
    assert!(c.accounts.is_empty(), "{c:?}");
    assert_eq!(c.generation, g);
    // shopA gets a new session; shopC appears.
    f.write(
        "secrets.toml",
        &SECRETS.replace("session-a-1", "session-a-2"),
        0o600,
    );
    f.write(
        "accounts.toml",
        &format!("{ACCOUNTS}\n[[account]]\nid = \"shopC\"\n"),
        0o644,
    );
    let c = p.reload().expect("reload");
    assert_eq!(c.accounts, ["shopA", "shopC"]);
    assert_eq!(
        p.top_session("tmall-tbc", "shopA")
            .await
            .expect("A")
            .session
            .expose(),
        "session-a-2"
    );
    // A failed reload changes nothing.
    f.write("secrets.toml", SECRETS, 0o640);
    assert!(p.reload().is_err());
    assert_eq!(
        p.top_session("tmall-tbc", "shopA")
            .await
            .expect("A")
            .session
            .expose(),
        "session-a-2"
    );
}

#[tokio::test]
async fn refreshed_sessions_survive_a_restart_until_the_operator_replaces_them() {
    let f = Files::new();
    f.write("accounts.toml", ACCOUNTS, 0o644);
    f.write("secrets.toml", SECRETS, 0o600);
    let p = FileCredentials::load(&f.config(), env).expect("load");
    let fresh = TopSession {
        session: Secret::new("session-a-refreshed"),
        expires_at_ms: Some(90_000),
        refresh_token: Some(Secret::new("refresh-a-2")),
        refresh_expires_at_ms: Some(99_000),
    };
    p.store_top_session("shopA", fresh).await.expect("store");
    let refreshed = p.refreshed_file().expect("refreshed file");
    let mode = std::fs::metadata(&refreshed)
        .expect("written")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // A restart keeps it.
    let p2 = FileCredentials::load(&f.config(), env).expect("reload");
    let s = p2.top_session("tmall-tbc", "shopA").await.expect("A");
    assert_eq!(s.session.expose(), "session-a-refreshed");
    assert_eq!(s.expires_at_ms, Some(90_000));
    assert_eq!(
        s.refresh_token.as_ref().map(Secret::expose),
        Some("refresh-a-2")
    );
    // The operator writes a new session: it wins over the refreshed one.
    f.write(
        "secrets.toml",
        &SECRETS.replace("session-a-1", "session-a-operator"),
        0o600,
    );
    let c = p2.reload().expect("reload");
    assert_eq!(c.accounts, ["shopA"]);
    let s = p2.top_session("tmall-tbc", "shopA").await.expect("A");
    assert_eq!(s.session.expose(), "session-a-operator");
}

#[test]
fn debug_shows_no_secret() {
    let f = Files::new();
    f.write("accounts.toml", ACCOUNTS, 0o644);
    f.write("secrets.toml", SECRETS, 0o600);
    let p = FileCredentials::load(&f.config(), env).expect("load");
    let dbg = format!("{p:?} {:?} {:?}", p.inner.all(), p.infos());
    for secret in [
        "session-a-1",
        "refresh-a-1",
        "supplier-secret-a",
        "session-b-env",
    ] {
        assert!(!dbg.contains(secret), "{secret} in {dbg}");
    }
}

#[test]
fn the_accounts_section_of_the_configuration() {
    let base = Path::new("/etc/rescind");
    let c = crate::config::Config::from_toml_str(
        "[accounts]\nfile = \"accounts.toml\"\nsecrets_file = \"secrets.toml\"\nrefresh_margin_s = 60\n",
        base,
        &|_| None,
    )
    .expect("parses");
    let a = c.accounts.expect("accounts");
    assert_eq!(a.file, base.join("accounts.toml"));
    assert_eq!(a.secrets_file, Some(base.join("secrets.toml")));
    assert_eq!(a.refresh_margin_ms(), 60_000);
    let e = crate::config::Config::from_toml_str(
        "[accounts]\nfile = \"a.toml\"\nsecret = \"x\"\n",
        base,
        &|_| None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("accounts"), "{e}");
}
