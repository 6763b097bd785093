//! What the benchmark binaries share: order statistics, how times are
//! printed, a cold start, and a call to a server's API.

use std::time::{Duration, Instant};

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
