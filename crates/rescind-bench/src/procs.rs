//! Child processes: the simulator, the trivial upstream and the recovery child.
//! Each prints `listening on URL` (or a JSON line) as its first stdout line.

use anyhow::{anyhow, Context, Result};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running child and the URL it printed.
pub struct Server {
    /// The process, held so that dropping the server kills it (`kill_on_drop`).
    _child: Child,
    /// `http://HOST:PORT`.
    pub url: String,
}

/// The `rescind-sim` binary next to this one (`target/release/`).
pub fn sim_binary() -> Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find this binary's path")?;
    let dir = me
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", me.display()))?;
    let sim = dir.join(format!("rescind-sim{}", std::env::consts::EXE_SUFFIX));
    if !sim.is_file() {
        return Err(anyhow!(
            "the simulator binary {} is missing; build it first: \
             cargo build --release -p rescind-sim -p rescind-bench",
            sim.display()
        ));
    }
    Ok(sim)
}

/// Start `cmd` and wait for its `listening on URL` line.
pub async fn spawn_server(mut cmd: Command, what: &str) -> Result<Server> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start the {what}"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("{what}: stdout not captured"))?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .map_err(|_| anyhow!("the {what} did not start within 30 s"))?
        .with_context(|| format!("reading the {what}'s first line"))?
        .ok_or_else(|| anyhow!("the {what} exited at start"))?;
    let url = first
        .strip_prefix("listening on ")
        .ok_or_else(|| anyhow!("unexpected first line from the {what}: {first:?}"))?
        .trim()
        .to_owned();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Server { _child: child, url })
}

/// Start the simulator as its own process on loopback.
pub async fn start_sim() -> Result<Server> {
    let mut cmd = Command::new(sim_binary()?);
    cmd.args(["--listen", "127.0.0.1:0", "--seed", "1"]);
    spawn_server(cmd, "simulator").await
}

/// Start the trivial upstream (`rescind-bench upstream`) as its own process.
pub async fn start_upstream() -> Result<Server> {
    let me = std::env::current_exe().context("cannot find this binary's path")?;
    let mut cmd = Command::new(me);
    cmd.args(["upstream", "--listen", "127.0.0.1:0"]);
    spawn_server(cmd, "upstream").await
}

/// Resident set size of this process, bytes (`VmRSS` in `/proc/self/status`).
pub fn rss_bytes() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/self/status")
        .context("cannot read /proc/self/status (Linux only)")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow!("no VmRSS line in /proc/self/status"))?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("cannot parse {line:?}"))?;
    Ok(kb * 1024)
}
