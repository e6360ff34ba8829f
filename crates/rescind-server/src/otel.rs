//! OpenTelemetry traces over OTLP/HTTP (feature `otel`).
//!
//! The engine already describes its work as [`tracing`] spans: a `saga` span
//! for each run of a saga (the root of its trace), a `step` span for each
//! step, and a `call`, `lookup` or `poll` span for each upstream request,
//! with the saga id, kind, channel, action, attempt, outcome and upstream
//! error code as fields. [`Telemetry`] turns them into OpenTelemetry spans
//! (through `tracing-opentelemetry`) and sends them in batches to an OTLP
//! receiver as protobuf over HTTP (`POST {endpoint}/v1/traces`).
//!
//! ```no_run
//! use rescind_server::config::TelemetryConfig;
//! use rescind_server::otel::{OtelSettings, Telemetry};
//! use tracing_subscriber::layer::SubscriberExt as _;
//! use tracing_subscriber::util::SubscriberInitExt as _;
//!
//! let file = TelemetryConfig {
//!     otlp_endpoint: Some("http://127.0.0.1:4318".into()),
//!     service_name: None,
//! };
//! let settings = OtelSettings::resolve(&file, &|v| std::env::var(v).ok())?;
//! let telemetry = settings.map(Telemetry::start).transpose()?;
//! tracing_subscriber::registry()
//!     .with(telemetry.as_ref().map(|t| t.layer()))
//!     .init();
//! // ... run the worker ...
//! if let Some(t) = telemetry {
//!     t.shutdown()?; // sends what is still buffered
//! }
//! # Ok::<(), rescind_server::otel::OtelError>(())
//! ```
//!
//! Span names and attributes are listed in `docs/operations.md`, "Traces
//! (OpenTelemetry)".

use crate::config::{redact_url, TelemetryConfig};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use std::time::Duration;
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::filter::{filter_fn, Filtered};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The `service.name` of the spans when `[telemetry] service_name` is unset.
pub const DEFAULT_SERVICE_NAME: &str = "rescind";
/// The standard variable with the receiver's base URL; it overrides
/// `[telemetry] otlp_endpoint`.
pub const ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The standard variable with the full URL traces are sent to; it overrides
/// both [`ENDPOINT_ENV`] and the file.
pub const TRACES_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// The path under a base URL that OTLP/HTTP receivers take traces on.
pub const TRACES_PATH: &str = "/v1/traces";

/// Why traces could not be set up or sent. URLs are shown without their
/// password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtelError {
    /// An endpoint (from `source`: a variable or the configuration key) is
    /// not a usable URL.
    #[error("OpenTelemetry endpoint from {source_name} ({url}): {reason}")]
    Endpoint {
        /// Where the URL came from: an environment variable or
        /// `telemetry.otlp_endpoint`.
        source_name: &'static str,
        /// The URL, its password hidden.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The OTLP exporter could not be built.
    #[error("cannot build the OTLP trace exporter: {0}")]
    Exporter(String),
    /// Buffered spans could not be sent (flush or shutdown).
    #[error("cannot send traces to {url}: {reason}")]
    Send {
        /// Where they were sent, its password hidden.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// Where and how traces are exported, resolved from `[telemetry]` and the
/// environment by [`OtelSettings::resolve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtelSettings {
    /// The full URL spans are POSTed to (`…/v1/traces`).
    pub traces_url: String,
    /// `service.name` of the spans.
    pub service_name: String,
    /// How long one export request may take.
    pub export_timeout: Duration,
    /// How often buffered spans are sent (and a batch is sent sooner when
    /// it is full).
    pub batch_delay: Duration,
}

impl OtelSettings {
    /// The settings for a configuration, or `None` when no endpoint is
    /// named anywhere (nothing is exported). The traces URL is, in order:
    /// [`TRACES_ENDPOINT_ENV`] as is, [`ENDPOINT_ENV`] + `/v1/traces`,
    /// `[telemetry] otlp_endpoint` + `/v1/traces`. `env` looks up
    /// environment variables (pass `|v| std::env::var(v).ok()`); empty ones
    /// count as unset.
    pub fn resolve(
        config: &TelemetryConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<OtelSettings>, OtelError> {
        let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let traces_url = if let Some(url) = var(TRACES_ENDPOINT_ENV) {
            check_url(TRACES_ENDPOINT_ENV, url.trim())?
        } else if let Some(base) = var(ENDPOINT_ENV) {
            with_traces_path(&check_url(ENDPOINT_ENV, base.trim())?)
        } else if let Some(base) = &config.otlp_endpoint {
            with_traces_path(&check_url("telemetry.otlp_endpoint", base.trim())?)
        } else {
            return Ok(None);
        };
        let service_name = config
            .service_name
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .unwrap_or(DEFAULT_SERVICE_NAME)
            .to_owned();
        Ok(Some(OtelSettings {
            traces_url,
            service_name,
            export_timeout: Duration::from_secs(10),
            batch_delay: Duration::from_secs(5),
        }))
    }
}

/// `base` + `/v1/traces`, without a doubled slash.
fn with_traces_path(base: &str) -> String {
    format!("{}{TRACES_PATH}", base.trim_end_matches('/'))
}

/// An `http://` or `https://` URL with a host; returned as given.
fn check_url(source_name: &'static str, url: &str) -> Result<String, OtelError> {
    let bad = |reason: &str| OtelError::Endpoint {
        source_name,
        url: redact_url(url),
        reason: reason.to_owned(),
    };
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| bad("not an http:// or https:// URL (e.g. http://127.0.0.1:4318)"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() {
        return Err(bad("names no host"));
    }
    if url.parse::<hyper::Uri>().is_err() {
        return Err(bad("is not a valid URL"));
    }
    Ok(url.to_owned())
}

/// The OpenTelemetry pipeline of a process: a tracer provider exporting in
/// batches to one OTLP/HTTP receiver from a background thread, and the
/// [`tracing`] layer that feeds it ([`Telemetry::layer`]).
///
/// Dropping it shuts the pipeline down like [`Telemetry::shutdown`] but
/// ignores errors. Both block until buffered spans are sent (at most the
/// export timeout): from async code, call them through
/// `tokio::task::spawn_blocking`.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    traces_url: String,
}

impl Telemetry {
    /// Build the exporter and the provider. Nothing is sent until spans
    /// end; an unreachable receiver is reported by the background thread
    /// (and spans are dropped), never to the code being traced.
    pub fn start(settings: OtelSettings) -> Result<Telemetry, OtelError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(settings.traces_url.clone())
            .with_timeout(settings.export_timeout)
            .build()
            .map_err(|e| OtelError::Exporter(e.to_string()))?;
        let batch = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(settings.batch_delay)
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batch)
            .with_resource(
                Resource::builder()
                    .with_service_name(settings.service_name)
                    .build(),
            )
            .build();
        Ok(Telemetry {
            provider,
            traces_url: redact_url(&settings.traces_url),
        })
    }

    /// The [`tracing`] layer that turns rescind's spans into OpenTelemetry
    /// spans. It has its own filter, independent of the log filter: spans
    /// at `INFO` and above and events at `WARN` and above (as span events),
    /// from rescind's crates only.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        let tracer = self.provider.tracer(DEFAULT_SERVICE_NAME);
        let layer: Filtered<_, _, S> = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_threads(false)
            .with_filter(filter_fn(exported));
        layer
    }

    /// Send the spans buffered so far now (blocking).
    pub fn flush(&self) -> Result<(), OtelError> {
        self.provider.force_flush().map_err(|e| OtelError::Send {
            url: self.traces_url.clone(),
            reason: e.to_string(),
        })
    }

    /// Send what is buffered and stop the background thread (blocking).
    pub fn shutdown(self) -> Result<(), OtelError> {
        self.provider.shutdown().map_err(|e| OtelError::Send {
            url: self.traces_url.clone(),
            reason: e.to_string(),
        })
    }
}

/// What the layer exports: rescind's spans at INFO and above, its events at
/// WARN and above.
fn exported(meta: &Metadata<'_>) -> bool {
    let ours = meta.target().starts_with("rescind");
    let floor = if meta.is_span() {
        Level::INFO
    } else {
        Level::WARN
    };
    ours && *meta.level() <= floor
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(endpoint: Option<&str>) -> TelemetryConfig {
        TelemetryConfig {
            otlp_endpoint: endpoint.map(str::to_owned),
            service_name: None,
        }
    }

    #[test]
    fn the_traces_url_comes_from_the_environment_first_then_the_file() {
        let none = |_: &str| None;
        assert_eq!(OtelSettings::resolve(&file(None), &none).unwrap(), None);
        let s = OtelSettings::resolve(&file(Some("http://collector:4318/")), &none)
            .unwrap()
            .unwrap();
        assert_eq!(s.traces_url, "http://collector:4318/v1/traces");
        assert_eq!(s.service_name, "rescind");
        let base = |v: &str| (v == ENDPOINT_ENV).then(|| "https://otel.example:4318".to_owned());
        let s = OtelSettings::resolve(&file(Some("http://collector:4318")), &base)
            .unwrap()
            .unwrap();
        assert_eq!(s.traces_url, "https://otel.example:4318/v1/traces");
        // The variable alone turns export on.
        let s = OtelSettings::resolve(&file(None), &base).unwrap().unwrap();
        assert_eq!(s.traces_url, "https://otel.example:4318/v1/traces");
        let full = |v: &str| match v {
            TRACES_ENDPOINT_ENV => Some("http://t:4318/custom/traces".to_owned()),
            ENDPOINT_ENV => Some("http://ignored:4318".to_owned()),
            _ => None,
        };
        let s = OtelSettings::resolve(&file(Some("http://c:4318")), &full)
            .unwrap()
            .unwrap();
        assert_eq!(s.traces_url, "http://t:4318/custom/traces");
        let empty = |_: &str| Some(String::new());
        let s = OtelSettings::resolve(&file(Some("http://c:4318")), &empty)
            .unwrap()
            .unwrap();
        assert_eq!(s.traces_url, "http://c:4318/v1/traces");
        let mut named = file(Some("http://c:4318"));
        named.service_name = Some("rescind-eu".into());
        let s = OtelSettings::resolve(&named, &none).unwrap().unwrap();
        assert_eq!(s.service_name, "rescind-eu");
    }

    #[test]
    fn a_bad_endpoint_names_where_it_came_from_without_its_password() {
        let bad = |v: &str| (v == ENDPOINT_ENV).then(|| "grpc://u:hunter2@h:4317".to_owned());
        let err = OtelSettings::resolve(&file(None), &bad).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(ENDPOINT_ENV), "{text}");
        assert!(text.contains("not an http:// or https:// URL"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let err = OtelSettings::resolve(&file(Some("http:///v1")), &|_| None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("telemetry.otlp_endpoint"), "{text}");
        assert!(text.contains("names no host"), "{text}");
    }
}
