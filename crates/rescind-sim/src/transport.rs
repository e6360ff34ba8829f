//! [`SimTransport`]: the simulator's router as an in-process
//! [`Transport`], for deterministic whole-system simulation (no sockets).

use async_trait::async_trait;
use rescind_wire::transport::{HttpRequest, HttpResponse, Transport, TransportError};
use tower::ServiceExt;

use crate::http_util::LostResponse;
use crate::Sim;

/// Largest response body read back in-process, bytes.
pub const RESPONSE_BYTES_MAX: usize = 16 << 20;

/// Sends requests to a [`Sim`]'s router in-process. The URL's scheme and
/// authority are ignored; its path and query are routed. A lost response
/// (the effect applied, the answer lost) is `TransportError::NoResponse`.
#[derive(Clone, Debug)]
pub struct SimTransport {
    sim: Sim,
    router: axum::Router,
}

impl SimTransport {
    /// A transport to `sim`.
    pub fn new(sim: &Sim) -> Self {
        SimTransport {
            router: sim.router(),
            sim: sim.clone(),
        }
    }

    /// The simulator behind it.
    pub fn sim(&self) -> &Sim {
        &self.sim
    }
}

/// `/path?query` of an absolute or relative URL.
fn path_and_query(url: &str) -> &str {
    let rest = match url.find("://") {
        Some(i) => &url[i + 3..],
        None => return if url.is_empty() { "/" } else { url },
    };
    match rest.find('/') {
        Some(i) => &rest[i..],
        None => match rest.find('?') {
            Some(i) => &rest[i..],
            None => "/",
        },
    }
}

#[async_trait]
impl Transport for SimTransport {
    async fn send(&self, req: HttpRequest) -> Result<HttpResponse, TransportError> {
        let pq = path_and_query(&req.url);
        let pq = if pq.starts_with('?') {
            format!("/{pq}")
        } else {
            pq.to_owned()
        };
        let mut builder = http::Request::builder().method(req.method.clone()).uri(pq);
        for (k, v) in &req.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let request = builder
            .body(axum::body::Body::from(req.body.clone()))
            .map_err(|e| TransportError::NotSent(format!("invalid request: {e}")))?;
        let resp = self
            .router
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| TransportError::NotSent(format!("router: {e}")))?;
        if resp.extensions().get::<LostResponse>().is_some() {
            return Err(TransportError::NoResponse("simulated lost response".into()));
        }
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = axum::body::to_bytes(resp.into_body(), RESPONSE_BYTES_MAX)
            .await
            .map_err(|e| TransportError::NoResponse(format!("body: {e}")))?;
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::path_and_query;

    #[test]
    fn urls() {
        assert_eq!(
            path_and_query("http://h:1/router/rest?a=1"),
            "/router/rest?a=1"
        );
        assert_eq!(path_and_query("http://h:1"), "/");
        assert_eq!(path_and_query("http://h?x=1"), "?x=1");
        assert_eq!(path_and_query("/v2/x"), "/v2/x");
    }
}
