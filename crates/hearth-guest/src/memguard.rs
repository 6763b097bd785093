//! The memory-pressure guard: kill the biggest exec when the workload is
//! thrashing at its memory limit, before the kernel OOM killer would.
//!
//! At its `memory.max` the kernel reclaims the workload's page cache,
//! including the executables it runs, and re-reads it from disk; the OOM
//! killer fires only once reclaim makes no progress at all, which can take
//! many seconds. Meanwhile every process of the workload, including a new
//! exec's `sh`, crawls. Like systemd-oomd or earlyoom, the guard watches the
//! workload's pressure stall information (`memory.pressure`) and acts first.
//!
//! Every [`TICK`] it samples the `full` stall counter (microseconds during
//! which every runnable task of the workload waited on memory) and the
//! memory use. It fires when, over the last [`WINDOW`]:
//! - the full stall grew by at least [`STALL_THRESHOLD`] of the wall time,
//!   and by at least [`HALF_STALL_THRESHOLD`] in each half of the window
//!   (sustained, not one burst), and
//! - every sample had `memory.current` at least [`USAGE_THRESHOLD`] of
//!   `memory.max`, so I/O stalls and growth below the limit never count,
//!
//! and that held at [`CONSECUTIVE`] ticks in a row.
//!
//! It then kills ([`Cgroups::guard_kill`]) the populated `workload/exec-*`
//! leaf with the largest `memory.current`, and waits [`COOLDOWN`] (with a
//! fresh window) before it may kill again. The pure decision logic is
//! [`Detector`], [`parse_psi`] and [`choose_victim`]; [`spawn`] runs it.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;

use crate::agent::AgentState;
use crate::cgroup::{parse_single, Cgroups, LeafUsage};

/// How often the guard samples the workload.
pub const TICK: Duration = Duration::from_millis(200);
/// The span over which the stall fraction is measured.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Least span of samples needed for a decision (timer jitter allowance).
pub const MIN_SPAN: Duration = Duration::from_millis(900);
/// Full-stall share of wall time over the window that means thrashing.
pub const STALL_THRESHOLD: f64 = 0.40;
/// Full-stall share each half of the window must reach as well.
pub const HALF_STALL_THRESHOLD: f64 = 0.20;
/// Share of `memory.max` that `memory.current` must reach in every sample.
pub const USAGE_THRESHOLD: f64 = 0.90;
/// Consecutive ticks the condition must hold before the guard fires.
pub const CONSECUTIVE: u32 = 2;
/// Least time between two kills.
pub const COOLDOWN: Duration = Duration::from_secs(2);

const MIB: u64 = 1024 * 1024;

/// The cumulative stall counters of a PSI file, microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PsiTotals {
    /// `some ... total=`: time at least one task stalled.
    pub some_us: u64,
    /// `full ... total=`: time every non-idle task stalled.
    pub full_us: u64,
}

/// Parse a PSI file (`memory.pressure`):
/// `some avg10=0.00 avg60=0.00 avg300=0.00 total=N` and the same for
/// `full`. `None` without a `full` line (as in the system-wide CPU file).
pub fn parse_psi(text: &str) -> Option<PsiTotals> {
    let total = |kind: &str| {
        text.lines().find_map(|line| {
            let mut fields = line.split_whitespace();
            if fields.next()? != kind {
                return None;
            }
            fields.find_map(|field| field.strip_prefix("total=")?.parse::<u64>().ok())
        })
    };
    Some(PsiTotals {
        some_us: total("some").unwrap_or(0),
        full_us: total("full")?,
    })
}

/// One observation of the workload cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Monotonic time of the sample (from any fixed origin).
    pub at: Duration,
    /// `full` stall total from `memory.pressure`, microseconds.
    pub full_stall_us: u64,
    /// `memory.current`, bytes.
    pub memory_current: u64,
    /// `memory.max`, bytes; `None` when unlimited.
    pub memory_max: Option<u64>,
}

impl Sample {
    fn near_limit(&self) -> bool {
        match self.memory_max {
            Some(max) if max > 0 => self.memory_current as f64 >= max as f64 * USAGE_THRESHOLD,
            _ => false,
        }
    }
}

/// Why the guard decided to kill.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trigger {
    /// Full-stall share of wall time over the window, 0 to 1.
    pub stall_fraction: f64,
    /// The span the fraction was measured over.
    pub window: Duration,
    /// The workload's `memory.max` at the last sample, bytes.
    pub memory_limit: u64,
}

/// The trigger decision over a stream of samples, with the cooldown.
#[derive(Debug, Default)]
pub struct Detector {
    samples: VecDeque<Sample>,
    last_trigger: Option<Duration>,
    /// Ticks in a row at which the condition held.
    streak: u32,
}

/// Full-stall share of wall time between two samples, clamped to 0..=1.
fn stall_fraction(from: &Sample, to: &Sample) -> f64 {
    let wall_us = to.at.saturating_sub(from.at).as_micros() as f64;
    if wall_us <= 0.0 {
        return 0.0;
    }
    let stall_us = to.full_stall_us.saturating_sub(from.full_stall_us) as f64;
    (stall_us / wall_us).min(1.0)
}

impl Detector {
    /// Feed the next sample; `Some` when the workload must be relieved now.
    /// A trigger starts the cooldown and a fresh window.
    pub fn observe(&mut self, sample: Sample) -> Option<Trigger> {
        // Time going backwards (should not happen): start over.
        if self.samples.back().is_some_and(|last| last.at > sample.at) {
            self.samples.clear();
        }
        self.samples.push_back(sample);
        // Keep the newest sample at least WINDOW old as the window start.
        while self.samples.len() > 2 && sample.at.saturating_sub(self.samples[1].at) >= WINDOW {
            self.samples.pop_front();
        }
        if let Some(last) = self.last_trigger {
            if sample.at.saturating_sub(last) < COOLDOWN {
                return None;
            }
        }
        let Some(trigger) = self.thrashing() else {
            self.streak = 0;
            return None;
        };
        self.streak += 1;
        if self.streak < CONSECUTIVE {
            return None;
        }
        self.streak = 0;
        self.last_trigger = Some(sample.at);
        self.samples.clear();
        self.samples.push_back(sample);
        Some(trigger)
    }

    /// Whether the samples in the window show thrashing at the limit.
    fn thrashing(&self) -> Option<Trigger> {
        let oldest = self.samples.front()?;
        let sample = *self.samples.back()?;
        let span = sample.at.saturating_sub(oldest.at);
        if span < MIN_SPAN || !self.samples.iter().all(Sample::near_limit) {
            return None;
        }
        let fraction = stall_fraction(oldest, &sample);
        if fraction < STALL_THRESHOLD {
            return None;
        }
        // The sample nearest the middle splits the window in two halves.
        let middle = oldest.at + span / 2;
        let split = self
            .samples
            .iter()
            .min_by_key(|s| s.at.abs_diff(middle))
            .copied()?;
        if stall_fraction(oldest, &split) < HALF_STALL_THRESHOLD
            || stall_fraction(&split, &sample) < HALF_STALL_THRESHOLD
        {
            return None;
        }
        Some(Trigger {
            stall_fraction: fraction,
            window: span,
            memory_limit: sample.memory_max.unwrap_or(0),
        })
    }
}

/// The leaf to kill: the one with the most memory charged.
pub fn choose_victim(leaves: &[LeafUsage]) -> Option<&LeafUsage> {
    leaves.iter().max_by_key(|leaf| leaf.memory)
}

/// Why the guard killed, as the exec's report and the console show it.
fn why(trigger: &Trigger) -> String {
    format!(
        "the workload was thrashing at its {} MiB memory limit (full memory stall {:.0}% of the last {:.1} s)",
        trigger.memory_limit / MIB,
        trigger.stall_fraction * 100.0,
        trigger.window.as_secs_f64()
    )
}

/// The message of a killed exec's report.
pub fn kill_message(trigger: &Trigger, victim: &LeafUsage) -> String {
    format!(
        "killed by the guest's memory guard: {}; the command used {} MiB",
        why(trigger),
        victim.memory / MIB
    )
}

/// Start the guard for `state`'s workload cgroup, if there is one with
/// pressure stall information; otherwise do nothing. Must be called inside
/// a Tokio runtime. The task ends when the agent state is dropped.
pub fn spawn(state: &Arc<AgentState>) {
    let Some(cgroups) = state.cgroups.as_ref() else {
        return;
    };
    if cgroups
        .read_workload("memory.pressure")
        .and_then(|text| parse_psi(&text))
        .is_none()
    {
        crate::info!("no memory pressure information (PSI): the memory guard is off");
        return;
    }
    tokio::spawn(run(Arc::downgrade(state)));
}

async fn run(state: Weak<AgentState>) {
    let origin = Instant::now();
    let mut detector = Detector::default();
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(state) = state.upgrade() else {
            return;
        };
        let Some(cgroups) = state.cgroups.as_ref() else {
            return;
        };
        // Reads of in-memory cgroup files: microseconds, fine on this task.
        let Some(sample) = read_sample(cgroups, origin.elapsed()) else {
            continue;
        };
        if let Some(trigger) = detector.observe(sample) {
            relieve(cgroups, &trigger);
        }
    }
}

fn read_sample(cgroups: &Cgroups, at: Duration) -> Option<Sample> {
    let psi = parse_psi(&cgroups.read_workload("memory.pressure")?)?;
    Some(Sample {
        at,
        full_stall_us: psi.full_us,
        memory_current: parse_single(&cgroups.read_workload("memory.current")?)?,
        memory_max: cgroups
            .read_workload("memory.max")
            .and_then(|t| parse_single(&t)),
    })
}

/// Kill the biggest exec leaf and say so on the console, once per kill.
fn relieve(cgroups: &Cgroups, trigger: &Trigger) {
    let leaves = cgroups.populated_leaves();
    let Some(victim) = choose_victim(&leaves) else {
        crate::debug!("memory guard: {}, but no exec to kill", why(trigger));
        return;
    };
    match cgroups.guard_kill(&victim.name, kill_message(trigger, victim)) {
        Ok(()) => crate::info!(
            "memory guard killed {} ({} MiB): {}",
            victim.name,
            victim.memory / MIB,
            why(trigger)
        ),
        Err(e) => crate::info!("memory guard could not kill {}: {e}", victim.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u64 = 180 * MIB;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// Samples every 200 ms from `start_ms` for `count` ticks, with the
    /// full stall growing by `stall_per_tick_ms` and memory at `usage` of
    /// the limit; continues the stall counter from `stall_us`.
    fn run(
        detector: &mut Detector,
        start_ms: u64,
        count: u64,
        stall_us: &mut u64,
        stall_per_tick_ms: u64,
        usage: f64,
    ) -> Vec<(u64, Trigger)> {
        let mut triggers = Vec::new();
        for i in 0..count {
            let at = start_ms + i * 200;
            if i > 0 {
                *stall_us += stall_per_tick_ms * 1000;
            }
            let sample = Sample {
                at: ms(at),
                full_stall_us: *stall_us,
                memory_current: (LIMIT as f64 * usage) as u64,
                memory_max: Some(LIMIT),
            };
            if let Some(trigger) = detector.observe(sample) {
                triggers.push((at, trigger));
            }
        }
        triggers
    }

    #[test]
    fn parses_psi() {
        let text = "some avg10=61.23 avg60=40.00 avg300=10.00 total=123456789\n\
                    full avg10=52.29 avg60=30.10 avg300=8.00 total=98765432\n";
        assert_eq!(
            parse_psi(text),
            Some(PsiTotals {
                some_us: 123_456_789,
                full_us: 98_765_432
            })
        );
        assert_eq!(
            parse_psi("some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n"),
            None
        );
        assert_eq!(parse_psi(""), None);
        assert_eq!(parse_psi("full avg10=x total=nope\n"), None);
    }

    #[test]
    fn healthy_heavy_workload_does_not_trigger() {
        let mut d = Detector::default();
        let mut stall = 0;
        // At the limit (page cache filling it) with light reclaim stalls:
        // 30 ms of every 200 ms (15%), for a minute.
        assert!(run(&mut d, 0, 300, &mut stall, 30, 0.97).is_empty());
        // Just under the threshold: 78 ms per 200 ms (39%).
        assert!(run(&mut d, 60_000, 50, &mut stall, 78, 0.99).is_empty());
    }

    #[test]
    fn below_the_usage_threshold_never_triggers() {
        let mut d = Detector::default();
        let mut stall = 0;
        // Fully stalled (I/O bound, say) but at 60% and 89% of the limit.
        assert!(run(&mut d, 0, 50, &mut stall, 200, 0.60).is_empty());
        assert!(run(&mut d, 10_000, 50, &mut stall, 200, 0.89).is_empty());
        // No limit at all.
        let sample = |at, full| Sample {
            at: ms(at),
            full_stall_us: full,
            memory_current: LIMIT,
            memory_max: None,
        };
        for i in 0..20 {
            assert_eq!(d.observe(sample(20_000 + i * 200, i * 200_000)), None);
        }
    }

    #[test]
    fn sustained_thrashing_triggers_once_then_respects_the_cooldown() {
        let mut d = Detector::default();
        let mut stall = 0;
        // Healthy first, then thrashing: 126 ms stalled of every 200 ms.
        assert!(run(&mut d, 0, 10, &mut stall, 10, 0.95).is_empty());
        let triggers = run(&mut d, 2000, 14, &mut stall, 126, 0.99);
        assert_eq!(triggers.len(), 1, "{triggers:?}");
        let (at, trigger) = triggers[0];
        // A window of thrashing, seen at two ticks: 2800 ms (0.8 s of it
        // in the window) and 3000 ms.
        assert_eq!(at, 3000);
        assert!((trigger.stall_fraction - 0.63).abs() < 0.01, "{trigger:?}");
        assert_eq!(trigger.memory_limit, LIMIT);
        let message = kill_message(
            &trigger,
            &LeafUsage {
                name: "exec-3".into(),
                memory: 150 * MIB,
            },
        );
        assert!(
            message.starts_with(
                "killed by the guest's memory guard: the workload was thrashing at its 180 MiB memory limit (full memory stall 63% of the last 1."
            ),
            "{message}"
        );
        assert!(message.ends_with("; the command used 150 MiB"), "{message}");

        // Still thrashing: the next kill comes only after the cooldown.
        let later = run(&mut d, 4800, 20, &mut stall, 126, 0.99);
        assert!(!later.is_empty());
        assert!(later[0].0 >= at + COOLDOWN.as_millis() as u64, "{later:?}");
        for pair in later.windows(2) {
            assert!(pair[1].0 - pair[0].0 >= COOLDOWN.as_millis() as u64);
        }
    }

    #[test]
    fn recovery_after_a_kill_does_not_trigger_again() {
        let mut d = Detector::default();
        let mut stall = 0;
        let first = run(&mut d, 0, 8, &mut stall, 150, 0.99);
        assert_eq!(first.len(), 1);
        // Memory freed and stalls gone.
        assert!(run(&mut d, 1600, 50, &mut stall, 0, 0.40).is_empty());
    }

    #[test]
    fn a_single_burst_is_not_thrashing() {
        let mut d = Detector::default();
        let mut stall = 0;
        // Quiet at the limit, one 500 ms full stall, quiet again.
        assert!(run(&mut d, 0, 10, &mut stall, 0, 0.99).is_empty());
        let burst: Vec<_> = [200, 200, 100]
            .into_iter()
            .enumerate()
            .filter_map(|(i, ms_stalled)| {
                stall += ms_stalled * 1000;
                d.observe(Sample {
                    at: ms(2000 + i as u64 * 200),
                    full_stall_us: stall,
                    memory_current: LIMIT,
                    memory_max: Some(LIMIT),
                })
            })
            .collect();
        assert!(burst.is_empty(), "{burst:?}");
        assert!(run(&mut d, 2600, 20, &mut stall, 0, 0.99).is_empty());
    }

    #[test]
    fn a_late_tick_is_measured_over_its_real_span() {
        let mut d = Detector::default();
        let at = |t, full| Sample {
            at: ms(t),
            full_stall_us: full,
            memory_current: LIMIT,
            memory_max: Some(LIMIT),
        };
        assert_eq!(d.observe(at(0, 0)), None);
        // The agent was late: 3 s passed, 2.4 s of it fully stalled, but
        // with no sample in between the halves cannot be told apart.
        assert_eq!(d.observe(at(3000, 2_400_000)), None);
        // The next ticks split the span at the late sample; both parts are
        // stalled, so this is sustained thrashing, measured over 3.4 s.
        assert_eq!(d.observe(at(3200, 2_500_000)), None, "first hit");
        let trigger = d.observe(at(3400, 2_600_000)).expect("second hit");
        assert_eq!(trigger.window, ms(3400));
        assert!((trigger.stall_fraction - 2.6 / 3.4).abs() < 1e-9);
    }

    #[test]
    fn the_victim_is_the_largest_leaf() {
        let leaves = vec![
            LeafUsage {
                name: "exec-1".into(),
                memory: 3 * MIB,
            },
            LeafUsage {
                name: "exec-7".into(),
                memory: 150 * MIB,
            },
            LeafUsage {
                name: "exec-9".into(),
                memory: 20 * MIB,
            },
        ];
        assert_eq!(choose_victim(&leaves).unwrap().name, "exec-7");
        assert_eq!(choose_victim(&[]), None);
    }
}
