//! `rescind accounts list`: the `[accounts]` of the configuration, without
//! secrets, with how many sagas in the journal wait on each one's
//! credentials. A running worker reloads the files on `SIGHUP` or
//! `POST /accounts/reload`.

use crate::journal_cmd::safe;
use crate::ops::{load_config, open_journal};
use anyhow::{anyhow, Result};
use std::path::Path;

/// `rescind accounts ...`.
#[derive(clap::Subcommand, Debug)]
pub enum AccountsCmd {
    /// Each account: its channels, session expiry, refresh token, and the
    /// sagas stuck waiting on its credentials. Reads the journal: with a sled
    /// journal, stop the worker first (or use `GET /accounts` on its API).
    List {
        /// One JSON object per account, one per line.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cfg_path: &Path, cmd: AccountsCmd) -> Result<u8> {
    let AccountsCmd::List { json } = cmd;
    let cfg = load_config(cfg_path)?;
    let creds = rescind::wiring::load_credentials(&cfg)
        .map_err(|e| anyhow!("{e}"))?
        .ok_or_else(|| anyhow!("no [accounts] in {}", cfg_path.display()))?;
    let journal = open_journal(&cfg).await?;
    let rows = rescind::accounts_api::list(&creds, journal.journal().as_ref())
        .await
        .map_err(|e| anyhow!("{e}"))?;
    if json {
        for r in &rows {
            outln!("{}", serde_json::to_string(r)?);
        }
        return Ok(0);
    }
    use crate::table::{Align, Table};
    let mut t = Table::new(&[
        ("account", Align::Left),
        ("channels", Align::Left),
        ("session expires", Align::Left),
        ("refresh", Align::Left),
        ("stuck sagas", Align::Right),
    ]);
    for r in &rows {
        let i = &r.info;
        t.row([
            safe(&i.id),
            if i.channels.is_empty() {
                "(all)".to_owned()
            } else {
                safe(&i.channels.join(","))
            },
            match (i.top_session, i.session_expires_at_ms) {
                (false, _) => "(no session)".to_owned(),
                (true, None) => "(no expiry)".to_owned(),
                (true, Some(ms)) => format!("{ms} ms"),
            },
            if i.refreshable { "yes" } else { "no" }.to_owned(),
            r.stuck.to_string(),
        ]);
    }
    for line in t.lines() {
        outln!("{line}");
    }
    Ok(0)
}
