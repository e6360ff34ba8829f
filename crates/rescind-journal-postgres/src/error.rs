//! [`PgError`]: what can go wrong opening the journal. Once open, every
//! operation answers with rescind-core's [`JournalError`].

use rescind_core::JournalError;

/// Why [`PgJournal::connect`](crate::PgJournal::connect) failed. Every
/// message names the target as `user@host:port/db` and never the password.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The URL could not be parsed (the message shows it with the password redacted).
    #[error("invalid PostgreSQL URL {url}: {detail}")]
    InvalidUrl {
        /// The URL, password redacted.
        url: String,
        /// The parser's complaint.
        detail: String,
    },
    /// The URL's `sslmode` is none of `disable`, `prefer`, `require`,
    /// `verify-ca`, `verify-full`.
    #[error(
        "invalid PostgreSQL URL {url}: sslmode={value:?} is not one of disable, prefer, require, \
         verify-ca, verify-full"
    )]
    UnknownSslMode {
        /// The value found.
        value: String,
        /// The URL, password redacted.
        url: String,
    },
    /// A [`PgConfig`](crate::PgConfig) limit is out of range, or the TLS
    /// settings cannot work (no CA file for `verify-*`, an unreadable CA file).
    #[error("invalid journal configuration: {0}")]
    InvalidConfig(String),
    /// The TLS handshake failed or the server refused TLS: a certificate not
    /// signed by the CA, not issued for the host name (`verify-full`), or a
    /// server without TLS under `require`/`verify-*`.
    #[error("TLS to PostgreSQL at {target} failed (sslmode={ssl_mode}): {detail}")]
    Tls {
        /// `user@host:port/db`.
        target: String,
        /// The `sslmode` in force.
        ssl_mode: crate::SslMode,
        /// What was wrong and what to change.
        detail: String,
    },
    /// A URL with a password where none may be written; see
    /// [`refuse_url_password`](crate::refuse_url_password).
    #[error(transparent)]
    PasswordInUrl(#[from] crate::PasswordInUrl),
    /// Nothing answered at the address (refused, unresolvable, timed out).
    #[error("PostgreSQL at {target} is unreachable: {detail}")]
    Unreachable {
        /// `user@host:port/db`.
        target: String,
        /// What the connection attempt saw.
        detail: String,
    },
    /// The server refused the credentials.
    #[error("PostgreSQL at {target} refused the login (check user and password): {detail}")]
    Auth {
        /// `user@host:port/db`.
        target: String,
        /// The server's message.
        detail: String,
    },
    /// The server answered but the operation failed.
    #[error("PostgreSQL at {target}: {context}: {detail}")]
    Database {
        /// `user@host:port/db`.
        target: String,
        /// What we were doing.
        context: String,
        /// The server's message (with SQLSTATE).
        detail: String,
    },
    /// A journal-level refusal at start, e.g.
    /// [`JournalError::NewerFormat`] when the schema is newer than this build.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl From<PgError> for JournalError {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Journal(j) => j,
            other => JournalError::Backend(other.to_string()),
        }
    }
}

/// A `Result` with [`PgError`].
pub type Result<T, E = PgError> = std::result::Result<T, E>;

/// Describe a tokio-postgres error for a message: the server's message and
/// SQLSTATE when there is one, else the error and its source chain.
pub(crate) fn pg_detail(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        let m = inner.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = inner.source();
    }
    s
}

/// Classify a failed connection attempt.
pub(crate) fn connect_error(
    target: &str,
    ssl_mode: crate::SslMode,
    e: &tokio_postgres::Error,
) -> PgError {
    use tokio_postgres::error::SqlState;
    if e.code().is_none() {
        if let Some(detail) = crate::tls::tls_failure(e, ssl_mode) {
            return PgError::Tls {
                target: target.to_owned(),
                ssl_mode,
                detail,
            };
        }
    }
    let detail = pg_detail(e);
    match e.code() {
        Some(c)
            if *c == SqlState::INVALID_PASSWORD
                || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
        {
            PgError::Auth {
                target: target.to_owned(),
                detail,
            }
        }
        Some(_) => PgError::Database {
            target: target.to_owned(),
            context: "connecting".into(),
            detail,
        },
        None => PgError::Unreachable {
            target: target.to_owned(),
            detail,
        },
    }
}

/// A database error during normal operation, as a [`JournalError::Backend`].
pub(crate) fn backend(context: &str, e: &tokio_postgres::Error) -> JournalError {
    JournalError::Backend(format!("{context}: {}", pg_detail(e)))
}
