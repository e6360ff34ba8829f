//! TLS to PostgreSQL: libpq's `sslmode` values on rustls.
//!
//! tokio-postgres itself knows `disable`, `prefer` and `require` and rejects
//! any other `sslmode` (and `sslrootcert`), so [`parse_url`] takes both out
//! of the URL, hands tokio-postgres the rest with the mode mapped onto its
//! three, and the rustls verifier built by [`connector`] does what the mode
//! promises:
//!
//! | `sslmode`     | TLS                          | certificate checked               |
//! |---------------|------------------------------|-----------------------------------|
//! | `disable`     | never                        | —                                 |
//! | `prefer`      | if the server offers it      | no                                |
//! | `require`     | always                       | no (chain only if a CA is given)  |
//! | `verify-ca`   | always                       | chain up to the CA                |
//! | `verify-full` | always                       | chain up to the CA and host name  |

use crate::config::kv_pairs;
use crate::error::PgError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` (the URL's `sslmode=` parameter). Default: `prefer`,
/// as in libpq. `allow` is not supported (tokio-postgres cannot try a plain
/// connection first and TLS second).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SslMode {
    /// Plain TCP; never TLS.
    Disable,
    /// TLS if the server offers it, else plain; the certificate is not
    /// checked. Protects against passive eavesdropping only.
    Prefer,
    /// TLS or no connection; the certificate is **not** checked (libpq's
    /// meaning of `require`), so an active man in the middle is not noticed.
    /// If a CA file is given (`sslrootcert` / `ca_file`) the chain is checked
    /// as with `verify-ca`, as libpq does.
    Require,
    /// TLS; the server's certificate must chain up to the CA file. The host
    /// name is not checked: any certificate that CA issued is accepted.
    VerifyCa,
    /// TLS; the certificate must chain up to the CA file **and** be issued
    /// for the host name (or IP address) connected to.
    VerifyFull,
}

impl SslMode {
    /// Every value, in order of strength.
    pub const ALL: [SslMode; 5] = [
        SslMode::Disable,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    /// The URL spelling (`verify-full`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Parse the URL spelling; `None` for anything else (`allow` included).
    pub fn parse(value: &str) -> Option<SslMode> {
        SslMode::ALL.into_iter().find(|m| m.as_str() == value)
    }

    fn wire(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as W;
        match self {
            SslMode::Disable => W::Disable,
            SslMode::Prefer => W::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => W::Require,
        }
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A URL taken apart: what tokio-postgres parsed, and the TLS parameters it
/// does not know.
pub(crate) struct ParsedUrl {
    pub(crate) pg: tokio_postgres::Config,
    pub(crate) ssl_mode: SslMode,
    pub(crate) root_cert: Option<PathBuf>,
}

impl std::fmt::Debug for ParsedUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // tokio_postgres::Config's Debug redacts the password.
        f.debug_struct("ParsedUrl")
            .field("pg", &self.pg)
            .field("ssl_mode", &self.ssl_mode)
            .field("root_cert", &self.root_cert)
            .finish()
    }
}

/// Parse `url` (`postgres://…` or `key=value …`), taking `sslmode` and
/// `sslrootcert` out before tokio-postgres sees it.
pub(crate) fn parse_url(url: &str) -> Result<ParsedUrl, PgError> {
    let invalid = |detail: String| PgError::InvalidUrl {
        url: crate::config::redact_url(url),
        detail,
    };
    let (rest, mode, root) = if let Some(q) = url_query_start(url) {
        split_query(url, q)
    } else {
        match kv_pairs(url) {
            Some(pairs) => {
                let mut rest = String::with_capacity(url.len());
                let (mut mode, mut root, mut at) = (None, None, 0);
                for p in pairs {
                    match p.key.as_str() {
                        "sslmode" => mode = Some(p.value),
                        "sslrootcert" => root = Some(p.value),
                        _ => continue,
                    }
                    rest.push_str(&url[at..p.span.start]);
                    at = p.span.end;
                }
                rest.push_str(&url[at..]);
                (rest, mode, root)
            }
            // Unbalanced quotes and the like: tokio-postgres says what is wrong.
            None => (url.to_owned(), None, None),
        }
    };
    let ssl_mode = match mode {
        None => SslMode::Prefer,
        Some(v) => SslMode::parse(&v).ok_or_else(|| PgError::UnknownSslMode {
            value: v.clone(),
            url: crate::config::redact_url(url),
        })?,
    };
    let mut pg: tokio_postgres::Config = rest
        .parse()
        .map_err(|e: tokio_postgres::Error| invalid(e.to_string()))?;
    pg.ssl_mode(ssl_mode.wire());
    Ok(ParsedUrl {
        pg,
        ssl_mode,
        root_cert: root.filter(|r| !r.is_empty()).map(PathBuf::from),
    })
}

/// Where the query of a `postgres://` / `postgresql://` URL starts (after
/// the `?`), `Some(len)` when it has none, `None` for the `key=value` form.
fn url_query_start(url: &str) -> Option<usize> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return None;
    }
    Some(url.find('?').map_or(url.len(), |q| q + 1))
}

/// The URL without `sslmode`/`sslrootcert` query parameters, and their
/// (percent-decoded) values.
fn split_query(url: &str, q: usize) -> (String, Option<String>, Option<String>) {
    if q >= url.len() {
        return (url.trim_end_matches('?').to_owned(), None, None);
    }
    let (mut mode, mut root) = (None, None);
    let mut kept = Vec::new();
    for kv in url[q..].split('&') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let decoded = || {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        };
        match k {
            "sslmode" => mode = Some(decoded()),
            "sslrootcert" => root = Some(decoded()),
            _ => kept.push(kv),
        }
    }
    let base = &url[..q - 1];
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, mode, root)
}

/// The CA file to verify against: the URL's `sslrootcert` or the config's
/// `ca_file` (the same file if both are given).
pub(crate) fn ca_path(
    from_url: Option<&Path>,
    from_config: Option<&Path>,
) -> Result<Option<(PathBuf, &'static str)>, PgError> {
    match (from_url, from_config) {
        (Some(u), Some(c)) if u != c => Err(PgError::InvalidConfig(format!(
            "the URL's sslrootcert ({}) and ca_file ({}) name different CA files; give one",
            u.display(),
            c.display()
        ))),
        (Some(u), _) => Ok(Some((u.to_owned(), "sslrootcert"))),
        (None, Some(c)) => Ok(Some((c.to_owned(), "ca_file"))),
        (None, None) => Ok(None),
    }
}

/// How the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

/// The connector for `mode` (every mode gets one; `disable` never uses it).
pub(crate) async fn connector(
    mode: SslMode,
    ca: Option<(PathBuf, &'static str)>,
) -> Result<MakeRustlsConnect, PgError> {
    let check = match (mode, &ca) {
        (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => Check::Nothing,
        (SslMode::Require | SslMode::VerifyCa, Some(_)) => Check::Chain,
        (SslMode::VerifyFull, Some(_)) => Check::ChainAndName,
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(PgError::InvalidConfig(format!(
                "sslmode={mode} checks the server's certificate against a CA: give the CA \
                 certificate file as sslrootcert=PATH in the URL or as ca_file"
            )))
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match (check, ca) {
        (Check::Nothing, _) | (_, None) => Arc::new(NoVerification(Arc::clone(&provider))),
        (check, Some((path, key))) => {
            let roots = load_roots(&path, key).await?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|e| {
                        PgError::InvalidConfig(format!("{key} {}: {e}", path.display()))
                    })?;
            if check == Check::ChainAndName {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::InvalidConfig(format!("TLS settings: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // What libpq 17 sends; required by servers taking `sslnegotiation=direct`.
    cfg.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(MakeRustlsConnect::new(cfg))
}

async fn load_roots(path: &Path, key: &str) -> Result<RootCertStore, PgError> {
    let bad = |what: String| PgError::InvalidConfig(format!("{key} {}: {what}", path.display()));
    if path.as_os_str() == "system" {
        return Err(bad(
            "the operating system's CA store is not supported; give a CA certificate file".into(),
        ));
    }
    let pem = tokio::fs::read(path)
        .await
        .map_err(|e| bad(format!("cannot read the CA file: {e}")))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("unusable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad(
            "no PEM certificate (BEGIN CERTIFICATE) in the file".into()
        ));
    }
    Ok(roots)
}

/// `require`/`prefer`: encryption without authentication of the server.
/// The handshake signatures are still checked (the server proves it holds
/// the key of the certificate it sent, whoever that is).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the webpki verifier, except that a certificate issued for
/// another name is accepted. webpki checks the chain (and validity dates)
/// before the name, so a name error means the chain was good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// If `e` is a TLS failure, what went wrong in words an operator can act on.
pub(crate) fn tls_failure(e: &tokio_postgres::Error, mode: SslMode) -> Option<String> {
    let rustls_err = find_rustls_error(e);
    let text = e.to_string();
    if rustls_err.is_none() && !text.contains("TLS") {
        return None;
    }
    let why = match rustls_err {
        Some(rustls::Error::InvalidCertificate(
            c @ (CertificateError::NotValidForName
            | CertificateError::NotValidForNameContext { .. }),
        )) => format!(
            "the server's certificate is not issued for the host name connected to ({c}); \
             sslmode=verify-full checks the name: connect by a name the certificate lists, \
             or use verify-ca to check the CA only"
        ),
        Some(rustls::Error::InvalidCertificate(c @ CertificateError::UnknownIssuer)) => format!(
            "the server's certificate is not signed by the given CA ({c}); \
             sslmode={mode} needs the CA that issued it (sslrootcert / ca_file)"
        ),
        Some(rustls::Error::InvalidCertificate(c)) => {
            format!("the server's certificate was refused: {c}")
        }
        Some(other) => format!("TLS handshake failed: {other}"),
        None if text.contains("server does not support TLS") => format!(
            "the server does not offer TLS, and sslmode={mode} requires it \
             (turn `ssl = on` in postgresql.conf, or use sslmode=prefer/disable)"
        ),
        None => crate::error::pg_detail(e),
    };
    Some(why)
}

fn find_rustls_error(e: &tokio_postgres::Error) -> Option<&rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(r);
            }
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(url: &str) -> ParsedUrl {
        parse_url(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn every_mode_round_trips_and_maps_onto_tokio_postgres() {
        use tokio_postgres::config::SslMode as W;
        for (m, wire) in [
            (SslMode::Disable, W::Disable),
            (SslMode::Prefer, W::Prefer),
            (SslMode::Require, W::Require),
            (SslMode::VerifyCa, W::Require),
            (SslMode::VerifyFull, W::Require),
        ] {
            assert_eq!(SslMode::parse(m.as_str()), Some(m));
            let p = parsed(&format!("postgres://u:pw@h:1/db?sslmode={m}"));
            assert_eq!((p.ssl_mode, p.pg.get_ssl_mode()), (m, wire));
            let p = parsed(&format!("host=h user=u sslmode={m} dbname=db"));
            assert_eq!((p.ssl_mode, p.pg.get_ssl_mode()), (m, wire));
            assert_eq!(p.pg.get_dbname(), Some("db"));
        }
        assert_eq!(parsed("postgres://h/db").ssl_mode, SslMode::Prefer);
        assert_eq!(parsed("host=h").ssl_mode, SslMode::Prefer);
    }

    #[test]
    fn sslrootcert_is_taken_out_of_both_forms() {
        let p = parsed(
            "postgres://u:pw@h:1/db?application_name=x&sslrootcert=%2Fetc%2Fca%20dir%2Fca.crt&sslmode=verify-full",
        );
        assert_eq!(
            p.root_cert.as_deref(),
            Some(Path::new("/etc/ca dir/ca.crt"))
        );
        assert_eq!(p.pg.get_application_name(), Some("x"));
        let p = parsed("host=h sslrootcert = '/etc/ca dir/ca.crt' sslmode=verify-ca user=u");
        assert_eq!(
            p.root_cert.as_deref(),
            Some(Path::new("/etc/ca dir/ca.crt"))
        );
        assert_eq!(
            (p.ssl_mode, p.pg.get_user()),
            (SslMode::VerifyCa, Some("u"))
        );
        let p = parsed("postgres://h/db?sslrootcert=/ca.pem");
        assert_eq!(p.root_cert.as_deref(), Some(Path::new("/ca.pem")));
    }

    #[test]
    fn an_unknown_sslmode_is_named_and_the_password_is_not() {
        for url in [
            "postgres://u:hunter2@h/db?sslmode=verify_full",
            "host=h password=hunter2 sslmode=verify_full",
        ] {
            match parse_url(url) {
                Err(e @ PgError::UnknownSslMode { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains("\"verify_full\""), "{msg}");
                    assert!(msg.contains("verify-full"), "lists the valid values: {msg}");
                    assert!(!msg.contains("hunter2") && !format!("{e:?}").contains("hunter2"));
                }
                other => panic!("{url}: expected UnknownSslMode, got {other:?}"),
            }
        }
        assert!(matches!(
            parse_url("host=h sslmode=allow"),
            Err(PgError::UnknownSslMode { value, .. }) if value == "allow"
        ));
    }

    #[test]
    fn ca_file_and_sslrootcert_must_agree() {
        let (a, b) = (Path::new("/a.pem"), Path::new("/b.pem"));
        assert!(
            matches!(ca_path(Some(a), Some(b)), Err(PgError::InvalidConfig(m)) if m.contains("ca_file"))
        );
        assert_eq!(
            ca_path(Some(a), Some(a)).ok().flatten().map(|c| c.1),
            Some("sslrootcert")
        );
        assert_eq!(
            ca_path(None, Some(b)).ok().flatten().map(|c| c.1),
            Some("ca_file")
        );
        assert!(matches!(ca_path(None, None), Ok(None)));
    }

    #[tokio::test]
    async fn verifying_modes_need_a_readable_ca_file() {
        for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
            match connector(mode, None).await {
                Err(PgError::InvalidConfig(m)) => {
                    assert!(
                        m.contains(mode.as_str()) && m.contains("sslrootcert"),
                        "{m}"
                    )
                }
                other => panic!("{mode}: expected InvalidConfig, got {:?}", other.err()),
            }
        }
        for mode in [SslMode::Disable, SslMode::Prefer, SslMode::Require] {
            assert!(connector(mode, None).await.is_ok(), "{mode}");
        }
        let missing = PathBuf::from("/nonexistent/rescind-ca.pem");
        match connector(SslMode::VerifyFull, Some((missing, "ca_file"))).await {
            Err(PgError::InvalidConfig(m)) => {
                assert!(
                    m.contains("ca_file /nonexistent/rescind-ca.pem: cannot read"),
                    "{m}"
                )
            }
            other => panic!("expected InvalidConfig, got {:?}", other.err()),
        }
        let dir = std::env::temp_dir().join(format!("rescind-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap_or_else(|e| panic!("{e}"));
        match connector(SslMode::VerifyCa, Some((not_pem, "sslrootcert"))).await {
            Err(PgError::InvalidConfig(m)) => assert!(m.contains("no PEM certificate"), "{m}"),
            other => panic!("expected InvalidConfig, got {:?}", other.err()),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
