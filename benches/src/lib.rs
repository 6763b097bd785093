//! What the benchmark binaries share: order statistics, how times are
//! printed, a cold start, and a call to a server's API.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use hearth_sandbox::{ExecEvent, ExecOptions, HearthHome, Sandbox, SandboxOptions};
use hearth_vm::qemu::QemuDriver;

/// The `p` quantile (0 to 1) of `sorted`, nearest rank; zero when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p.clamp(0.0, 1.0)).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// `d` in milliseconds.
pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `d` as `12.3 ms`.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", millis(d))
}

/// A cold start: the sandbox, how long its create took (boot to the
/// agent's answer) and how long until the first byte of `echo`'s output.
pub struct ColdStart {
    /// The booted sandbox.
    pub sandbox: Sandbox,
    /// Create issued → created.
    pub boot: Duration,
    /// Create issued → first output byte.
    pub first_output: Duration,
}

/// Create a sandbox and run `echo hi` in it, timing both.
pub async fn cold_start(
    home: &HearthHome,
    driver: &QemuDriver,
    options: SandboxOptions,
) -> anyhow::Result<ColdStart> {
    let start = Instant::now();
    let sandbox = Sandbox::create(home, driver, options).await?;
    let boot = start.elapsed();
    let mut execution = sandbox.exec(ExecOptions::new(["echo", "hi"])).await?;
    loop {
        match execution.next_event().await? {
            Some(ExecEvent::Stdout(_)) => break,
            Some(_) => continue,
            None => anyhow::bail!("no output"),
        }
    }
    Ok(ColdStart {
        sandbox,
        boot,
        first_output: start.elapsed(),
    })
}

/// A JSON call to a Hearth server's API with its bearer `token`; the
/// answer's body, or an error naming the URL and status.
pub async fn call(
    http: &reqwest::Client,
    token: &str,
    method: reqwest::Method,
    url: String,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let mut request = http.request(method, &url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status();
    let value: serde_json::Value = response.json().await?;
    if !status.is_success() {
        anyhow::bail!("{url}: {status} {value}");
    }
    Ok(value)
}

/// `VmRSS` of a process, MiB.
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// `VmHWM` of a process (its peak resident memory so far), MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// A `hearth serve` process on its own home, for benchmarks that measure
/// the server as its users see it (its memory included); killed on drop.
pub struct ServeProcess {
    /// The process.
    pub child: Child,
    /// Its URL.
    pub url: String,
    /// Its API token.
    pub token: String,
    /// A client for it.
    pub http: reqwest::Client,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServeProcess {
    /// Start `hearth serve` on `home` with `extra` arguments.
    pub fn start(
        hearth: &PathBuf,
        home: &std::path::Path,
        images: &std::path::Path,
        extra: &[String],
    ) -> anyhow::Result<ServeProcess> {
        let mut child = Command::new(hearth)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("HEARTH_HOME", home)
            .env("HEARTH_IMAGES", images)
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", hearth.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        let url = line
            .trim()
            .strip_prefix("hearth: listening on ")
            .context("the server did not print its address")?
            .to_string();
        let token = std::fs::read_to_string(home.join("token"))?
            .trim()
            .to_string();
        Ok(ServeProcess {
            child,
            url,
            token,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(300))
                .build()?,
        })
    }

    /// POST `body` as JSON to `path`: the status and the JSON answer.
    pub async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_nearest_rank() {
        let sorted: Vec<_> = (1..=5).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 0.5), Duration::from_millis(3));
        assert_eq!(percentile(&sorted, 1.0), Duration::from_millis(5));
        assert_eq!(percentile(&sorted, 0.0), Duration::from_millis(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
        assert_eq!(ms(Duration::from_micros(1250)), "1.2 ms");
    }
}
