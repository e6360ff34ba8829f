//! A headless Chromium driven over the DevTools protocol, for the web
//! console's test.
//!
//! The browser is the distribution's `chromium`, started with
//! `--remote-debugging-pipe`: the protocol's JSON messages, each ended by a
//! NUL byte, go in on the browser's fd 3 and come out on its fd 4 (a `sh`
//! wrapper points those at our stdin/stdout pipes). No WebSocket, no
//! driver binary, no download: what the distribution ships is enough.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::oneshot;

/// How long one protocol command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// The Chromium binary: `$RESCIND_CHROMIUM` (none if that is not a file),
/// else the first of `chromium`, `chromium-browser`, `google-chrome` on `PATH`.
pub fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RESCIND_CHROMIUM") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// A running headless browser.
pub struct Browser {
    child: Child,
    stdin: Arc<tokio::sync::Mutex<ChildStdin>>,
    pending: Pending,
    next_id: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
    log: PathBuf,
}

/// One tab, attached with its own session.
pub struct Page<'b> {
    browser: &'b Browser,
    session: String,
}

impl Browser {
    /// Start `chromium` headless with its profile in `dir` (stderr to
    /// `dir/chromium.log`), a 1200×800 window, no proxy.
    pub async fn launch(chromium: &Path, dir: &Path) -> Result<Browser, String> {
        let log = dir.join("chromium.log");
        let err = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let profile = dir.join("chromium-profile");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 </dev/null >/dev/null"#)
            .arg(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-sync",
                "--no-proxy-server",
                "--hide-scrollbars",
                "--window-size=1200,800",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", chromium.display()))?;
        let stdin = child.stdin.take().ok_or("no stdin pipe")?;
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        let pending: Pending = Arc::default();
        let p2 = pending.clone();
        let reader = tokio::spawn(async move {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(0, &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                let Ok(msg) = serde_json::from_slice::<Value>(&buf) else {
                    continue;
                };
                // Replies carry the id of their command; events are ignored.
                if let Some(id) = msg.get("id").and_then(Value::as_u64) {
                    if let Some(tx) = p2.lock().unwrap().remove(&id) {
                        let _ = tx.send(msg);
                    }
                }
            }
            // The browser went away: every waiting command learns it.
            p2.lock().unwrap().clear();
        });
        let b = Browser {
            child,
            stdin: Arc::new(tokio::sync::Mutex::new(stdin)),
            pending,
            next_id: AtomicU64::new(1),
            reader,
            log,
        };
        b.call(None, "Browser.getVersion", json!({}))
            .await
            .map_err(|e| format!("chromium does not answer on the DevTools pipe: {e}"))?;
        Ok(b)
    }

    /// The browser's log (for failure messages).
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Send one protocol command (to the page `session`, or the browser)
    /// and wait for its result; a protocol error is an `Err` with its words.
    pub async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let mut bytes = serde_json::to_vec(&msg).map_err(|e| e.to_string())?;
        bytes.push(0);
        {
            let mut w = self.stdin.lock().await;
            w.write_all(&bytes)
                .await
                .map_err(|e| format!("{method}: writing to chromium: {e}"))?;
            w.flush().await.map_err(|e| e.to_string())?;
        }
        let reply = match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => return Err(format!("{method}: chromium exited")),
            Err(_) => {
                self.pending.lock().unwrap().remove(&id);
                return Err(format!(
                    "{method}: no answer within {} s",
                    COMMAND_TIMEOUT.as_secs()
                ));
            }
        };
        if let Some(e) = reply.get("error") {
            return Err(format!("{method}: {e}"));
        }
        Ok(reply.get("result").cloned().unwrap_or(Value::Null))
    }

    /// Open a tab at `url`, 1200×800, and attach to it.
    pub async fn new_page(&self, url: &str) -> Result<Page<'_>, String> {
        let t = self
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await?;
        let target = t["targetId"].as_str().ok_or("no targetId")?.to_owned();
        let a = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await?;
        let session = a["sessionId"].as_str().ok_or("no sessionId")?.to_owned();
        let page = Page {
            browser: self,
            session,
        };
        page.cmd("Page.enable", json!({})).await?;
        page.cmd("Runtime.enable", json!({})).await?;
        page.cmd(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1200, "height": 800, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await?;
        page.cmd("Page.navigate", json!({"url": url})).await?;
        Ok(page)
    }

    /// Close the browser and wait for it to exit (killed after 5 s).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            self.call(None, "Browser.close", json!({})),
        )
        .await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        self.reader.abort();
    }
}

impl Page<'_> {
    /// A protocol command for this page.
    pub async fn cmd(&self, method: &str, params: Value) -> Result<Value, String> {
        self.browser.call(Some(&self.session), method, params).await
    }

    /// Evaluate `js` in the page (promises awaited) and return its value; a
    /// thrown exception is an `Err` with its description.
    pub async fn eval(&self, js: &str) -> Result<Value, String> {
        let r = self
            .cmd(
                "Runtime.evaluate",
                json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(ex) = r.get("exceptionDetails") {
            let words = ex["exception"]["description"]
                .as_str()
                .or_else(|| ex["text"].as_str())
                .unwrap_or("exception");
            return Err(format!("{js}: {words}"));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Poll `js` until it is truthy; on timeout the error names `what` and
    /// the page's text.
    pub async fn wait_for(&self, what: &str, js: &str, within: Duration) -> Result<Value, String> {
        let t0 = Instant::now();
        loop {
            // A navigation in progress can make one evaluation fail: retry.
            if let Ok(v) = self.eval(js).await {
                let truthy = !matches!(&v, Value::Null | Value::Bool(false))
                    && v != json!(0)
                    && v != json!("");
                if truthy {
                    return Ok(v);
                }
            }
            if t0.elapsed() > within {
                let text = self
                    .eval("document.body ? document.body.innerText : ''")
                    .await
                    .unwrap_or_default();
                return Err(format!(
                    "{what}: not seen within {} s ({js}); the page shows:\n{}",
                    within.as_secs(),
                    text.as_str().unwrap_or_default()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Click the first element matching `selector`.
    pub async fn click(&self, selector: &str) -> Result<(), String> {
        let js = format!(
            "(() => {{ const e = document.querySelector({s}); if (!e) throw new Error('no element ' + {s}); e.click(); return true; }})()",
            s = json!(selector)
        );
        self.eval(&js).await.map(|_| ())
    }

    /// Focus the field matching `selector`, clear it and type `text` into it
    /// as keyboard input would (`Input.insertText`).
    pub async fn type_into(&self, selector: &str, text: &str) -> Result<(), String> {
        let js = format!(
            "(() => {{ const e = document.querySelector({s}); if (!e) throw new Error('no field ' + {s}); e.focus(); e.value = ''; return true; }})()",
            s = json!(selector)
        );
        self.eval(&js).await?;
        self.cmd("Input.insertText", json!({"text": text})).await?;
        Ok(())
    }

    /// The page's visible text.
    pub async fn text(&self) -> Result<String, String> {
        Ok(self
            .eval("document.body.innerText")
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// A PNG of the viewport, written to `path`.
    pub async fn screenshot(&self, path: &Path) -> Result<usize, String> {
        let r = self
            .cmd(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": false}),
            )
            .await?;
        let data = r["data"].as_str().ok_or("no screenshot data")?;
        let png = base64_decode(data)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(path, &png).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(png.len())
    }
}

/// Standard base64 (with padding), as the protocol sends screenshots.
pub fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    let val = |c: u8| -> Result<u32, String> {
        Ok(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(format!("not base64: byte {c}")),
        } as u32)
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let pad = chunk.iter().rev().take_while(|c| **c == b'=').count();
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            let v = if *c == b'=' { 0 } else { val(*c)? };
            n |= v << (18 - 6 * i);
        }
        let got = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&got[..3usize.saturating_sub(pad).min(chunk.len() - 1)]);
    }
    Ok(out)
}
