//! The deterministic simulation over many seeds (issue 9, test 13): the
//! engine's session and journal, driven through seeded schedules of
//! program calls (children spawned and awaited among them), VM deaths, server crashes, store write failures, lost
//! messages and lease expiries, keep every promise.
//!
//! `HEARTH_SIM_SEEDS` sets how many seeds run (default 10,000);
//! `HEARTH_SIM_SEED` replays one seed, printing its schedule.

use std::collections::BTreeMap;
use std::time::Instant;

use hearth_engine::sim::{simulate, SimReport};
use hearth_engine::RunState;

fn seeds() -> u64 {
    std::env::var("HEARTH_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000)
}

#[test]
fn ten_thousand_schedules_keep_every_promise() {
    if let Some(seed) = std::env::var("HEARTH_SIM_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        match simulate(seed) {
            Ok(report) => println!("seed {seed}: {report:?}"),
            Err(violation) => panic!("{violation}"),
        }
        return;
    }
    let count = seeds();
    let started = Instant::now();
    let mut states: BTreeMap<String, u64> = BTreeMap::new();
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (mut launches, mut decisions) = (0u64, 0u64);
    let (mut children, mut child_waits) = (0u64, 0u64);
    for seed in 0..count {
        let report: SimReport = simulate(seed).unwrap_or_else(|violation| {
            panic!(
                "{violation}\n\nreplay it: HEARTH_SIM_SEED={seed} cargo test -p hearth-engine --test simulation -- --nocapture"
            )
        });
        let end = match &report.error {
            Some(code) => format!("{}:{code}", report.state),
            None => report.state.to_string(),
        };
        *states.entry(end).or_default() += 1;
        for (kind, n) in report.faults {
            *faults.entry(kind).or_default() += u64::from(n);
        }
        launches += u64::from(report.launches);
        decisions += u64::from(report.decisions);
        children += u64::from(report.children);
        child_waits += u64::from(report.child_waits);
    }
    let elapsed = started.elapsed();
    println!(
        "{count} schedules in {:.2} s ({:.0}/s); ends {states:?}; {launches} launches; {decisions} decisions; {children} children, waited for {child_waits} times; faults {faults:?}",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64()
    );
    // The schedules exercised what they are for.
    let completed = states.get("completed").copied().unwrap_or(0);
    // A correct program only fails when its crashes use up its relaunches
    // (or is cancelled by a person).
    for end in states.keys().filter(|end| end.starts_with("failed")) {
        assert_eq!(end, "failed:restarts_exhausted", "{states:?}");
    }
    assert!(completed > count / 2, "too few runs completed: {states:?}");
    assert!(decisions > 0, "no schedule needed a person's decision");
    assert!(children > 0, "no schedule spawned a child");
    assert!(child_waits > 0, "no run gave up its VM to wait for a child");
    for kind in [
        "vm_died",
        "server_crashed",
        "store_write_fails",
        "lease_expired",
        "request_lost",
        "answer_lost",
        "vm_died_after_tool_effect",
        "server_crashed_after_tool_effect",
        "checkpoint_failed",
        "cancelled",
    ] {
        assert!(
            faults.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} fault"
        );
    }
    let live = [
        RunState::Pending,
        RunState::Waiting,
        RunState::NeedsAttention,
        RunState::Running,
    ];
    for end in states.keys() {
        let state: RunState = end
            .split(':')
            .next()
            .unwrap_or_default()
            .parse()
            .expect("a run state");
        assert!(state.is_final() || live.contains(&state));
    }
}
