//! Starting and restarting `omni-dataplane`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};
use tracing::{info, warn};

pub struct Supervisor {
    bin: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    pub restarts: u64,
    backoff: Duration,
}

/// Where the data-plane binary is: the configured path, `$OMNI_DATAPLANE`, next to this
/// executable, or on `$PATH`.
pub fn dataplane_binary(configured: Option<&Path>) -> PathBuf {
    if let Some(p) = configured {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("OMNI_DATAPLANE") {
        return PathBuf::from(p);
    }
    if let Ok(me) = std::env::current_exe() {
        let sibling = me.with_file_name("omni-dataplane");
        if sibling.exists() {
            return sibling;
        }
    }
    PathBuf::from("omni-dataplane")
}

impl Supervisor {
    pub fn new(bin: PathBuf, args: Vec<String>) -> Self {
        Self { bin, args, child: None, restarts: 0, backoff: Duration::from_millis(100) }
    }

    pub fn spawn(&mut self) -> anyhow::Result<()> {
        let child = Command::new(&self.bin)
            .args(&self.args)
            .stdin(Stdio::null())
            .kill_on_drop(false)
            .spawn()
            .with_context(|| format!("cannot start the data plane {}; build it (cargo build --release) or set [daemon] dataplane", self.bin.display()))?;
        info!(pid = child.id(), bin = %self.bin.display(), "data plane started");
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    pub fn has_child(&self) -> bool {
        self.child.is_some()
    }

    /// Starts a replacement for a data plane this daemon adopted (started by an earlier
    /// daemon) once it has died.
    pub async fn replace_adopted(&mut self) -> anyhow::Result<()> {
        self.restarts += 1;
        warn!(restarts = self.restarts, "adopted data plane exited; starting a new one");
        self.spawn()
    }

    /// Waits for the child to exit (pending forever without a child). Cancel-safe.
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        match self.child.as_mut() {
            Some(c) => match c.wait().await {
                Ok(s) => {
                    self.child = None;
                    s
                }
                Err(_) => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    /// Non-blocking: the exit status if the child is gone.
    pub fn try_exited(&mut self) -> Option<std::process::ExitStatus> {
        let s = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(s)
    }

    /// Restarts after an unexpected exit, with exponential backoff (100 ms to 5 s).
    pub async fn restart(&mut self, status: std::process::ExitStatus) -> anyhow::Result<()> {
        self.restarts += 1;
        warn!(%status, restarts = self.restarts, backoff_ms = self.backoff.as_millis() as u64, "data plane exited; restarting");
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
        self.spawn()
    }

    /// Called when the data plane has run well for a while.
    pub fn healthy(&mut self) {
        self.backoff = Duration::from_millis(100);
    }

    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }

    /// Waits up to `grace` for the child to exit on its own, then kills it.
    pub async fn stop(&mut self, grace: Duration) {
        if let Some(mut c) = self.child.take()
            && tokio::time::timeout(grace, c.wait()).await.is_err()
        {
            warn!("data plane did not stop in {grace:?}; killing it");
            let _ = c.kill().await;
        }
    }
}
