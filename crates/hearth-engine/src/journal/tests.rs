use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::digest::args_digest;

fn call(seq: u64, name: &str, args: Value, effect: Effect) -> StepCall {
    StepCall {
        seq,
        name: name.into(),
        args_digest: args_digest(&args),
        effect,
    }
}

fn key(decision: &Decision) -> String {
    match decision {
        Decision::Execute {
            idempotency_key, ..
        } => idempotency_key.clone(),
        other => panic!("expected Execute, got {other:?}"),
    }
}

#[test]
fn a_recorded_step_is_replayed_and_not_run_again() {
    let mut j = Journal::new("run-1");
    let charge = call(0, "charge", json!({"amount": 5}), Effect::Unsafe);
    let first = j.decide(&charge, 0).unwrap();
    assert_eq!(
        first,
        Decision::Execute {
            attempt: 1,
            idempotency_key: idempotency_key("run-1", 0)
        }
    );
    let attempt = j.begin(&charge, 10).unwrap();
    assert_eq!(attempt.number, 1);
    j.succeed(0, 1, json!({"id": "ch_1"}), 20).unwrap();
    for _ in 0..3 {
        assert_eq!(
            j.decide(&charge, 30).unwrap(),
            Decision::Replay(Outcome::Succeeded {
                result: json!({"id": "ch_1"})
            })
        );
    }
    assert!(matches!(
        j.begin(&charge, 40),
        Err(JournalError::MayNotRun { .. })
    ));
    // A retransmitted success is accepted; a different one is not.
    j.succeed(0, 1, json!({"id": "ch_1"}), 50).unwrap();
    assert!(j.succeed(0, 1, json!({"id": "ch_2"}), 50).is_err());
    let step = j.step(0).unwrap();
    assert_eq!(step.attempts.len(), 1);
    assert_eq!(step.attempts[0].ended_ms, Some(20));
}

#[test]
fn a_different_step_at_a_recorded_position_is_non_determinism_naming_both() {
    let mut j = Journal::new("run-1");
    let a = call(0, "fetch", json!({"url": "a"}), Effect::Idempotent);
    j.begin(&a, 0).unwrap();
    j.succeed(0, 1, json!(1), 1).unwrap();
    let other_name = call(0, "charge", json!({"url": "a"}), Effect::Unsafe);
    let Decision::NonDeterminism(nd) = j.decide(&other_name, 2).unwrap() else {
        panic!("expected non-determinism")
    };
    let text = nd.to_string();
    assert!(
        text.contains("\"fetch\"") && text.contains("\"charge\""),
        "{text}"
    );
    let other_args = call(0, "fetch", json!({"url": "b"}), Effect::Idempotent);
    let Decision::NonDeterminism(nd) = j.decide(&other_args, 2).unwrap() else {
        panic!("expected non-determinism")
    };
    assert!(nd.to_string().contains("arguments"), "{nd}");
    // A gap is a protocol error, not a decision.
    assert_eq!(
        j.decide(&call(5, "x", json!(null), Effect::Pure), 0),
        Err(JournalError::OutOfOrder {
            expected: 1,
            got: 5
        })
    );
}

#[test]
fn a_lost_unsafe_step_waits_for_a_decision_and_each_decision_does_what_it_says() {
    for resolution in ["retry", "skip", "fail"] {
        let mut j = Journal::new("run-1");
        let charge = call(0, "charge", json!({"amount": 5}), Effect::Unsafe);
        let first_key = key(&j.decide(&charge, 0).unwrap());
        j.begin(&charge, 0).unwrap();
        // The VM dies before the outcome is recorded.
        assert_eq!(j.interrupt(5).unwrap(), [0]);
        assert_eq!(j.step(0).unwrap().state, StepState::Indeterminate);
        assert_eq!(j.step(0).unwrap().attempts[0].outcome, AttemptOutcome::Lost);
        // The relaunched program reaches it: nothing runs.
        assert_eq!(
            j.decide(&charge, 6).unwrap(),
            Decision::NeedsDecision {
                seq: 0,
                name: "charge".into()
            }
        );
        assert!(j.begin(&charge, 6).is_err());
        assert_eq!(j.needs_decision().map(|s| s.seq), Some(0));
        match resolution {
            "retry" => {
                j.resolve(0, Resolution::Retry, 7).unwrap();
                let decision = j.decide(&charge, 8).unwrap();
                assert_eq!(key(&decision), first_key, "the same idempotency key");
                assert_eq!(j.begin(&charge, 8).unwrap().number, 2);
            }
            "skip" => {
                j.resolve(
                    0,
                    Resolution::SkipWith {
                        result: json!("ok"),
                    },
                    7,
                )
                .unwrap();
                assert_eq!(
                    j.decide(&charge, 8).unwrap(),
                    Decision::Replay(Outcome::Succeeded {
                        result: json!("ok")
                    })
                );
            }
            _ => {
                let error = StepError::permanent("declined", "a person said no");
                j.resolve(
                    0,
                    Resolution::Fail {
                        error: error.clone(),
                    },
                    7,
                )
                .unwrap();
                assert_eq!(
                    j.decide(&charge, 8).unwrap(),
                    Decision::Replay(Outcome::Failed { error })
                );
            }
        }
        assert!(j.needs_decision().is_none());
        // Resolving a step that is not indeterminate is refused.
        assert!(matches!(
            j.resolve(0, Resolution::Retry, 9),
            Err(JournalError::NotIndeterminate { .. })
        ));
    }
}

#[test]
fn a_lost_idempotent_step_is_retried_with_the_same_key() {
    let mut j = Journal::new("run-1");
    let refund = call(0, "refund", json!({"amount": 5}), Effect::Idempotent);
    let first_key = key(&j.decide(&refund, 0).unwrap());
    j.begin(&refund, 0).unwrap();
    // Not even interrupted explicitly: the relaunched program asks again.
    let again = j.decide(&refund, 5).unwrap();
    assert_eq!(
        again,
        Decision::Execute {
            attempt: 2,
            idempotency_key: first_key
        }
    );
    j.begin(&refund, 5).unwrap();
    let step = j.step(0).unwrap();
    assert_eq!(step.attempts[0].outcome, AttemptOutcome::Lost);
    assert_eq!(step.attempts[1].outcome, AttemptOutcome::InFlight);
}

#[test]
fn failures_are_retried_by_the_policy_after_the_backoff_then_fail_for_good() {
    let policy = RetryPolicy {
        max_attempts: 3,
        initial_backoff_ms: 100,
        max_backoff_ms: 1000,
        multiplier: 2.0,
        jitter: 0.0,
        non_retryable: vec![],
    };
    let mut j = Journal::new("run-1");
    let fetch = call(0, "fetch", json!({}), Effect::Idempotent);
    j.begin(&fetch, 0).unwrap();
    let error = StepError::retryable("http_503", "busy");
    assert_eq!(
        j.fail(0, 1, error.clone(), &policy, 0.5, 10).unwrap(),
        AfterFailure::RetryAt(110)
    );
    assert_eq!(
        j.decide(&fetch, 50).unwrap(),
        Decision::Wait { until_ms: 110 }
    );
    assert!(j.begin(&fetch, 50).is_err());
    j.begin(&fetch, 110).unwrap();
    assert_eq!(
        j.fail(0, 2, error.clone(), &policy, 0.5, 120).unwrap(),
        AfterFailure::RetryAt(320)
    );
    j.begin(&fetch, 320).unwrap();
    assert_eq!(
        j.fail(0, 3, error.clone(), &policy, 0.5, 330).unwrap(),
        AfterFailure::Failed
    );
    assert_eq!(
        j.decide(&fetch, 400).unwrap(),
        Decision::Replay(Outcome::Failed { error })
    );
    assert_eq!(j.step(0).unwrap().attempts.len(), 3);
    // Outcomes for attempts that are not in flight are refused.
    assert!(matches!(
        j.succeed(0, 3, json!(1), 500),
        Err(JournalError::NotInFlight { .. })
    ));
}

#[test]
fn stored_journals_must_be_numbered_in_order() {
    let mut j = Journal::new("r");
    j.begin(&call(0, "a", json!(1), Effect::Pure), 0).unwrap();
    j.begin(&call(1, "b", json!(1), Effect::Pure), 0).unwrap();
    let mut steps = j.steps().to_vec();
    assert!(Journal::from_steps("r", steps.clone()).is_ok());
    steps.swap(0, 1);
    assert!(matches!(
        Journal::from_steps("r", steps),
        Err(JournalError::Corrupt(_))
    ));
}

/// One thing that can happen to a run, for the property test.
#[derive(Debug, Clone)]
enum Event {
    /// The program takes its next step; the world answers.
    Progress(WorldAnswer),
    /// The VM (or the server) dies; the program is relaunched from the
    /// start and replays.
    Crash,
    /// A person resolves the step waiting for a decision.
    Resolve(u8),
    /// Time passes.
    Tick(u16),
}

#[derive(Debug, Clone, Copy)]
enum WorldAnswer {
    Ok,
    TransientError,
    PermanentError,
    /// The VM dies after the world acted but before the outcome is
    /// recorded.
    DieAfterActing,
    /// The VM dies before the world acted.
    DieBeforeActing,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => prop_oneof![
            Just(WorldAnswer::Ok),
            Just(WorldAnswer::TransientError),
            Just(WorldAnswer::PermanentError),
            Just(WorldAnswer::DieAfterActing),
            Just(WorldAnswer::DieBeforeActing),
        ]
        .prop_map(Event::Progress),
        1 => Just(Event::Crash),
        2 => any::<u8>().prop_map(Event::Resolve),
        2 => any::<u16>().prop_map(Event::Tick),
    ]
}

fn effect() -> impl Strategy<Value = Effect> {
    prop_oneof![
        Just(Effect::Pure),
        Just(Effect::Idempotent),
        Just(Effect::Unsafe)
    ]
}

/// A program of `effects.len()` steps driven through `events`, against a
/// world that counts how often each step acted and deduplicates by
/// idempotency key where the step is idempotent.
struct Sim {
    journal: Journal,
    program: Vec<StepCall>,
    /// Where the program is in its (re)play.
    cursor: usize,
    now: u64,
    /// Per step: how many times the world acted on it, and for idempotent
    /// steps the keys it saw.
    acted: BTreeMap<u64, u32>,
    keys_seen: BTreeMap<u64, Vec<String>>,
    /// Per step: every state it was observed in, in order.
    states: BTreeMap<u64, Vec<StepState>>,
    /// Recorded successes, which must never change.
    recorded: BTreeMap<u64, Value>,
    /// Decisions made for lost unsafe steps (each allows one more act).
    decisions: BTreeMap<u64, u32>,
    finished: bool,
    policy: RetryPolicy,
}

impl Sim {
    fn new(effects: &[Effect]) -> Self {
        let program = effects
            .iter()
            .enumerate()
            .map(|(i, e)| call(i as u64, &format!("step{i}"), json!({"i": i}), *e))
            .collect();
        Self {
            journal: Journal::new("run-p"),
            program,
            cursor: 0,
            now: 0,
            acted: BTreeMap::new(),
            keys_seen: BTreeMap::new(),
            states: BTreeMap::new(),
            recorded: BTreeMap::new(),
            decisions: BTreeMap::new(),
            finished: false,
            policy: RetryPolicy {
                max_attempts: 3,
                initial_backoff_ms: 10,
                max_backoff_ms: 100,
                multiplier: 2.0,
                jitter: 0.5,
                non_retryable: vec![],
            },
        }
    }

    fn observe(&mut self) {
        for step in self.journal.steps() {
            let seen = self.states.entry(step.seq).or_default();
            if seen.last() != Some(&step.state) {
                seen.push(step.state);
            }
            if let (StepState::Succeeded, Some(result)) = (step.state, &step.result) {
                if let Some(before) = self.recorded.get(&step.seq) {
                    assert_eq!(before, result, "a recorded result changed");
                }
                self.recorded.insert(step.seq, result.clone());
            }
        }
    }

    fn act(&mut self, seq: u64, idempotency_key: &str) {
        let effect = self.program[seq as usize].effect;
        if effect == Effect::Idempotent {
            let keys = self.keys_seen.entry(seq).or_default();
            if keys.iter().any(|k| k == idempotency_key) {
                return; // deduplicated by the world
            }
            keys.push(idempotency_key.to_string());
        }
        *self.acted.entry(seq).or_default() += 1;
    }

    fn apply(&mut self, event: Event) {
        if self.finished {
            return;
        }
        match event {
            Event::Tick(ms) => self.now += u64::from(ms),
            Event::Crash => {
                self.journal.interrupt(self.now).unwrap();
                self.cursor = 0;
            }
            Event::Resolve(choice) => {
                if let Some(step) = self.journal.needs_decision() {
                    let seq = step.seq;
                    let resolution = match choice % 3 {
                        0 => Resolution::Retry,
                        1 => Resolution::SkipWith {
                            result: json!("skipped"),
                        },
                        _ => Resolution::Fail {
                            error: StepError::permanent("decided", "no"),
                        },
                    };
                    if resolution == Resolution::Retry {
                        *self.decisions.entry(seq).or_default() += 1;
                    }
                    self.journal.resolve(seq, resolution, self.now).unwrap();
                    self.cursor = 0;
                }
            }
            Event::Progress(answer) => self.progress(answer),
        }
        self.observe();
    }

    fn progress(&mut self, answer: WorldAnswer) {
        let Some(call) = self.program.get(self.cursor).cloned() else {
            self.finished = true;
            return;
        };
        let decision = self.journal.decide(&call, self.now).unwrap();
        match decision {
            Decision::Replay(Outcome::Succeeded { .. }) => self.cursor += 1,
            // The program stops at a failed step (it does not catch it).
            Decision::Replay(Outcome::Failed { .. }) => self.finished = true,
            Decision::Wait { until_ms } => self.now = until_ms,
            Decision::NeedsDecision { .. } => {}
            Decision::NonDeterminism(nd) => panic!("the program is deterministic: {nd}"),
            Decision::Execute {
                attempt,
                idempotency_key,
            } => {
                // Replay is idempotent: deciding again changes nothing.
                assert_eq!(
                    self.journal.decide(&call, self.now).unwrap(),
                    Decision::Execute {
                        attempt,
                        idempotency_key: idempotency_key.clone()
                    }
                );
                let started = self.journal.begin(&call, self.now).unwrap();
                assert_eq!(started.number, attempt);
                match answer {
                    WorldAnswer::Ok => {
                        self.act(call.seq, &idempotency_key);
                        self.journal
                            .succeed(call.seq, attempt, json!({"seq": call.seq}), self.now)
                            .unwrap();
                        self.cursor += 1;
                    }
                    WorldAnswer::TransientError | WorldAnswer::PermanentError => {
                        let error = match answer {
                            WorldAnswer::TransientError => {
                                StepError::retryable("busy", "try later")
                            }
                            _ => StepError::permanent("bad", "never"),
                        };
                        let after = self
                            .journal
                            .fail(call.seq, attempt, error, &self.policy, 0.5, self.now)
                            .unwrap();
                        if after == AfterFailure::Failed {
                            self.finished = true;
                        }
                    }
                    WorldAnswer::DieAfterActing => {
                        self.act(call.seq, &idempotency_key);
                        self.journal.interrupt(self.now).unwrap();
                        self.cursor = 0;
                    }
                    WorldAnswer::DieBeforeActing => {
                        self.journal.interrupt(self.now).unwrap();
                        self.cursor = 0;
                    }
                }
            }
        }
    }

    fn check(&self) {
        for (seq, states) in &self.states {
            let mut from: Option<StepState> = None;
            for state in states {
                if let Some(from) = from {
                    // Consecutive observations may skip intermediate states
                    // within one operation (e.g. started → scheduled →
                    // started on a lost idempotent attempt), so check that
                    // some legal path links them.
                    assert!(
                        reachable(from, *state),
                        "step {seq}: {from} -> {state} in {states:?}"
                    );
                }
                from = Some(*state);
            }
        }
        for (seq, call) in self.program.iter().enumerate() {
            let seq = seq as u64;
            let acted = self.acted.get(&seq).copied().unwrap_or(0);
            if call.effect == Effect::Unsafe {
                // Every act beyond the first was allowed by a decision
                // to retry a lost attempt.
                let allowed = 1 + self.decisions.get(&seq).copied().unwrap_or(0);
                assert!(
                    acted <= allowed,
                    "unsafe step {seq} acted {acted} times with {} decisions",
                    allowed - 1
                );
            }
            if call.effect == Effect::Idempotent {
                // The world saw one key only.
                assert!(self.keys_seen.get(&seq).map_or(0, Vec::len) <= 1);
            }
        }
    }
}

/// Whether `to` can be reached from `from` in at most two moves.
fn reachable(from: StepState, to: StepState) -> bool {
    from == to
        || from.can_become(to)
        || StepState::ALL
            .iter()
            .any(|mid| from.can_become(*mid) && mid.can_become(to))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Whatever happens (failures, crashes before and after the world
    /// acts, decisions, time), the journal makes only legal moves, never
    /// changes a recorded result, never lets an unsafe step act again
    /// without a decision, gives an idempotent step one key for all its
    /// attempts, and replays recorded steps without running them.
    #[test]
    fn no_completed_step_runs_twice_and_no_unsafe_step_repeats_undecided(
        effects in proptest::collection::vec(effect(), 1..6),
        events in proptest::collection::vec(event(), 0..80),
    ) {
        let mut sim = Sim::new(&effects);
        for event in events {
            sim.apply(event);
        }
        sim.check();
        // Replaying the whole journal again changes nothing.
        let before = sim.journal.clone();
        for call in &sim.program {
            if call.seq >= sim.journal.next_seq() {
                break;
            }
            let decision = sim.journal.decide(call, sim.now).unwrap();
            if let Some(result) = sim.recorded.get(&call.seq) {
                prop_assert_eq!(
                    decision,
                    Decision::Replay(Outcome::Succeeded { result: result.clone() })
                );
            }
        }
        prop_assert_eq!(sim.journal, before);
    }
}
