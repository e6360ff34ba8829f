//! The trivial upstream of the generic two-step saga: `POST /step` answers
//! `{"ok":true,"n":N}` at once. It runs as its own process so that it competes
//! for the CPUs the way a real upstream on the same machine would.

use anyhow::{Context, Result};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::io::Write;

async fn step(Json(body): Json<Value>) -> Json<Value> {
    Json(json!({"ok": true, "n": body.get("n").cloned().unwrap_or(Value::Null)}))
}

/// Serve until killed; the first stdout line is `listening on http://HOST:PORT`.
pub async fn serve(listen: &str) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr().context("no local address")?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
    }
    let app = Router::new().route("/step", post(step));
    axum::serve(listener, app)
        .await
        .context("upstream server")?;
    Ok(())
}
