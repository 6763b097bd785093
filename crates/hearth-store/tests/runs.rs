//! Durable runs in the store, against a real SQLite file and a real
//! PostgreSQL database each: the run state machine, claiming, fencing of
//! journal writes, signals, children waking parents, and content-addressed
//! results.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use hearth_engine::{Attempt, AttemptOutcome, Effect, RunState, StepRecord, StepState};
use hearth_store::event::{RunFailed, RunRunning, RunWaiting};
use hearth_store::testing::TestDatabase;
use hearth_store::{
    EventPayload, Lease, ManualClock, NewRun, NodeCapacity, NodeSpec, RunChange, RunFilter,
    RunWriter, StepWrite, Store, StoreError,
};

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(hearth_store::testing::TestDatabase::sqlite()).await
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(hearth_store::testing::TestDatabase::postgres().await).await
            })*
        }
    };
}

on_both!(
    a_run_and_its_journal_are_recorded_with_events,
    claims_take_due_runs_once_and_never_a_live_owners,
    concurrent_claims_take_disjoint_runs,
    a_node_that_lost_its_lease_cannot_write_the_journal,
    signals_wake_only_runs_waiting_for_them,
    an_ended_child_wakes_its_waiting_parent,
    large_results_are_stored_once_as_blobs,
    a_batch_commits_each_good_write_and_refuses_each_bad_one,
    a_fork_copies_finished_steps_and_refuses_unfinished_ones,
    journal_writes_and_other_writes_interleave_without_loss,
    large_files_are_stored_in_chunks_and_read_back_whole,
);

const T0: u64 = 1_800_000_000_000;
const TTL: Duration = Duration::from_secs(10);

async fn open(db: &TestDatabase) -> (Store, Arc<ManualClock>) {
    let clock = ManualClock::new(T0);
    let store = Store::open(&db.url, clock.clone()).await.unwrap();
    (store, clock)
}

async fn lease(store: &Store, id: &str) -> Lease {
    let spec = NodeSpec {
        id: id.into(),
        url: format!("http://{id}.local:7070"),
        hostname: "testhost".into(),
        home: format!("/h/{id}"),
        capacity: NodeCapacity {
            sandboxes: 10,
            memory_bytes: 8 << 30,
            vcpus: 8,
        },
    };
    store
        .register_node(&spec, TTL)
        .await
        .unwrap()
        .0
        .lease()
        .unwrap()
}

async fn new_run(store: &Store, id: &str) -> NewRun {
    let program = store.put_blob(b"print('hello')\n").await.unwrap();
    NewRun {
        id: id.into(),
        name: Some(format!("{id}-name")),
        program,
        spec: json!({"command": ["python3", "main.py"]}),
        input: json!({"n": 3}),
        parent: None,
        deadline_ms: None,
    }
}

/// Claim `id` for `lease` and move it to running in sandbox `sb-<id>`.
async fn launch(store: &Store, lease: &Lease, id: &str) {
    let claimed = store.claim_runs(lease, 10, Some(id)).await.unwrap();
    assert_eq!(claimed.len(), 1, "{id} is claimable");
    let change = RunChange {
        state: Some(RunState::Running),
        sandbox_id: Some(Some(format!("sb-{id}"))),
        launched: true,
        ..RunChange::default()
    };
    let payload = EventPayload::RunRunning(RunRunning {
        launch: claimed[0].0.launches + 1,
        sandbox_id: format!("sb-{id}"),
    });
    store
        .change_run(id, RunWriter::Owner(lease), &change, payload)
        .await
        .unwrap()
        .expect("pending -> running");
}

fn step(seq: u64, state: StepState, result: Option<Value>) -> StepRecord {
    StepRecord {
        seq,
        name: format!("charge-{seq}"),
        args_digest: format!("sha256:{seq:064}"),
        effect: Effect::Unsafe,
        state,
        result,
        error: None,
        attempts: vec![Attempt {
            number: 1,
            started_ms: T0,
            ended_ms: (state != StepState::Started).then_some(T0 + 5),
            outcome: if state == StepState::Started {
                AttemptOutcome::InFlight
            } else {
                AttemptOutcome::Succeeded
            },
        }],
        retry_at_ms: None,
        checkpoint: None,
    }
}

fn waiting_on(on: &str, until_ms: Option<u64>) -> (RunChange, EventPayload) {
    (
        RunChange {
            state: Some(RunState::Waiting),
            wake_ms: Some(until_ms),
            waiting_for: Some(Some(json!({"reason": "signal", "on": on, "seq": 1}))),
            release: true,
            ..RunChange::default()
        },
        EventPayload::RunWaiting(RunWaiting {
            seq: 1,
            reason: "signal".into(),
            on: Some(on.into()),
            until_ms,
        }),
    )
}

async fn a_run_and_its_journal_are_recorded_with_events(db: TestDatabase) {
    let (store, _clock) = open(&db).await;
    let a = lease(&store, "nd-a").await;

    // A program must be stored before a run can pin it.
    let mut missing = new_run(&store, "run-x").await;
    missing.program = "sha256:0000".into();
    let error = store.insert_run(&missing).await.unwrap_err();
    assert!(
        error.to_string().contains("not in the blob store"),
        "{error}"
    );

    let new = new_run(&store, "run-1").await;
    let created = store.insert_run(&new).await.unwrap();
    assert_eq!(created.kind, "run.created");
    assert_eq!(created.run_id.as_deref(), Some("run-1"));
    assert!(matches!(
        store.insert_run(&new).await.unwrap_err(),
        StoreError::Duplicate(_)
    ));
    let run = store.run("run-1").await.unwrap().unwrap();
    assert_eq!(run.state, RunState::Pending);
    assert_eq!(run.node_id, None);
    assert_eq!(run.input, json!({"n": 3}));
    assert_eq!(
        store.blob(&run.program).await.unwrap().unwrap(),
        b"print('hello')\n"
    );

    launch(&store, &a, "run-1").await;
    let run = store.run("run-1").await.unwrap().unwrap();
    assert_eq!(run.state, RunState::Running);
    assert_eq!(run.launches, 1);
    assert_eq!(run.node_id.as_deref(), Some("nd-a"));
    assert_eq!(run.sandbox_id.as_deref(), Some("sb-run-1"));

    // Steps: started, then succeeded; the record round-trips exactly.
    store
        .put_steps("run-1", &a, 1, &[step(0, StepState::Started, None)])
        .await
        .unwrap();
    let done = step(0, StepState::Succeeded, Some(json!({"charged": 500})));
    let events = store
        .put_steps(
            "run-1",
            &a,
            1,
            &[done.clone(), step(1, StepState::Started, None)],
        )
        .await
        .unwrap();
    let kinds: Vec<_> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["step.succeeded", "step.started"]);
    assert_eq!(events[0].sandbox_id.as_deref(), Some("sb-run-1"));
    let journal = store.steps("run-1").await.unwrap();
    assert_eq!(journal.len(), 2);
    assert_eq!(journal[0], done);

    // Only a running run completes; an ended run changes no more.
    let complete = RunChange {
        state: Some(RunState::Completed),
        output: Some(json!("ok")),
        release: true,
        ..RunChange::default()
    };
    let payload = EventPayload::RunCompleted(hearth_store::event::RunCompleted { output_bytes: 4 });
    let (run, _) = store
        .change_run("run-1", RunWriter::Owner(&a), &complete, payload.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.state, RunState::Completed);
    assert_eq!(run.output, Some(json!("ok")));
    assert!(run.ended_ms.is_some());
    assert!(store
        .change_run("run-1", RunWriter::Unowned, &complete, payload)
        .await
        .unwrap()
        .is_none());
    // Its journal is closed to writes.
    let error = store
        .put_steps(
            "run-1",
            &a,
            1,
            &[step(1, StepState::Succeeded, Some(json!(1)))],
        )
        .await
        .unwrap_err();
    assert!(error.to_string().contains("no longer running"), "{error}");

    let history: Vec<_> = store
        .run_events("run-1", 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        history,
        [
            "run.created",
            "run.claimed",
            "run.running",
            "step.started",
            "step.succeeded",
            "step.started",
            "run.completed",
        ]
    );
    // An event that names the wrong state is a caller bug.
    let wrong = store
        .change_run(
            "run-1",
            RunWriter::Unowned,
            &RunChange {
                state: Some(RunState::Failed),
                ..RunChange::default()
            },
            EventPayload::RunWaiting(RunWaiting::default()),
        )
        .await
        .unwrap_err();
    assert!(matches!(wrong, StoreError::Invalid(_)), "{wrong}");
    let listed = store
        .list_runs(&RunFilter {
            states: vec![RunState::Completed],
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
}

async fn claims_take_due_runs_once_and_never_a_live_owners(db: TestDatabase) {
    let (store, clock) = open(&db).await;
    let a = lease(&store, "nd-a").await;
    let b = lease(&store, "nd-b").await;
    for id in ["run-1", "run-2", "run-3"] {
        store.insert_run(&new_run(&store, id).await).await.unwrap();
    }
    let claimed = store.claim_runs(&a, 2, None).await.unwrap();
    let ids: Vec<_> = claimed.iter().map(|(r, _)| r.id.clone()).collect();
    assert_eq!(ids, ["run-1", "run-2"], "oldest first, at most the limit");
    assert!(claimed
        .iter()
        .all(|(r, e)| r.node_id.as_deref() == Some("nd-a")
            && r.node_epoch == Some(a.epoch)
            && e.kind == "run.claimed"));
    // A live owner's runs are not claimable; the rest is.
    let claimed = store.claim_runs(&b, 10, None).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].0.id, "run-3");
    assert!(store.claim_runs(&b, 10, None).await.unwrap().is_empty());

    // run-1 runs, then waits for a signal until T0 + 60 s, holding no node.
    launch_claimed(&store, &a, "run-1").await;
    let (change, payload) = waiting_on("approve", Some(T0 + 60_000));
    let (run, _) = store
        .change_run("run-1", RunWriter::Owner(&a), &change, payload)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.node_id, None);
    assert!(store.claim_runs(&b, 10, None).await.unwrap().is_empty());
    clock.advance(Duration::from_secs(61));
    let claimed = store.claim_runs(&b, 10, None).await.unwrap();
    assert_eq!(claimed.len(), 1, "its timer came");
    assert_eq!(claimed[0].0.state, RunState::Pending);
    assert_eq!(claimed[0].0.waiting_for, None);
    assert_eq!(
        claimed[0].1.data["previous_state"], "waiting",
        "{:?}",
        claimed[0].1
    );

    // run-2 runs on A; A dies; B takes it over once A's lease is expired.
    launch_claimed(&store, &a, "run-2").await;
    assert!(store
        .claim_runs(&b, 10, Some("run-2"))
        .await
        .unwrap()
        .is_empty());
    let a_node = store.node("nd-a").await.unwrap().unwrap();
    store
        .expire_node(&a_node, "nd-b", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let claimed = store.claim_runs(&b, 10, None).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].0.id, "run-2");
    assert_eq!(claimed[0].1.data["previous_node"], "nd-a");
    assert_eq!(claimed[0].1.data["previous_state"], "running");
    // A, fenced, can neither claim nor change it.
    let error = store.claim_runs(&a, 10, None).await.unwrap_err();
    assert!(matches!(error, StoreError::Fenced { .. }), "{error}");
}

/// Move a run already claimed by `lease` to running.
async fn launch_claimed(store: &Store, lease: &Lease, id: &str) {
    let change = RunChange {
        state: Some(RunState::Running),
        launched: true,
        ..RunChange::default()
    };
    let payload = EventPayload::RunRunning(RunRunning {
        launch: 1,
        sandbox_id: format!("sb-{id}"),
    });
    store
        .change_run(id, RunWriter::Owner(lease), &change, payload)
        .await
        .unwrap()
        .expect("pending -> running");
}

async fn concurrent_claims_take_disjoint_runs(db: TestDatabase) {
    let (store, _clock) = open(&db).await;
    let a = lease(&store, "nd-a").await;
    let b = lease(&store, "nd-b").await;
    for i in 0..40 {
        store
            .insert_run(&new_run(&store, &format!("run-{i:02}")).await)
            .await
            .unwrap();
    }
    // Two nodes claim in small batches at once until nothing is left.
    let claimer = |store: Store, lease: Lease| async move {
        let mut mine = Vec::new();
        loop {
            let claimed = store.claim_runs(&lease, 3, None).await.unwrap();
            if claimed.is_empty() {
                return mine;
            }
            mine.extend(claimed.into_iter().map(|(r, _)| r.id));
        }
    };
    let (got_a, got_b) = tokio::join!(
        tokio::spawn(claimer(store.clone(), a)),
        tokio::spawn(claimer(store.clone(), b))
    );
    let (got_a, got_b) = (got_a.unwrap(), got_b.unwrap());
    let set_a: BTreeSet<_> = got_a.iter().cloned().collect();
    let set_b: BTreeSet<_> = got_b.iter().cloned().collect();
    assert_eq!(set_a.len(), got_a.len(), "no run claimed twice by A");
    assert!(set_a.is_disjoint(&set_b), "{set_a:?} / {set_b:?}");
    assert_eq!(set_a.len() + set_b.len(), 40);
    let claims = store.events(None, 0, 1000).await.unwrap();
    assert_eq!(
        claims.iter().filter(|e| e.kind == "run.claimed").count(),
        40
    );
}

async fn a_node_that_lost_its_lease_cannot_write_the_journal(db: TestDatabase) {
    let (store, clock) = open(&db).await;
    let a = lease(&store, "nd-a").await;
    let b = lease(&store, "nd-b").await;
    store
        .insert_run(&new_run(&store, "run-1").await)
        .await
        .unwrap();
    launch(&store, &a, "run-1").await;
    store
        .put_steps("run-1", &a, 1, &[step(0, StepState::Started, None)])
        .await
        .unwrap();
    // B may not write A's run, owner or not.
    let error = store
        .put_steps(
            "run-1",
            &b,
            1,
            &[step(0, StepState::Succeeded, Some(json!(1)))],
        )
        .await
        .unwrap_err();
    assert!(error.to_string().contains("nd-a"), "{error}");
    let error = store
        .change_run(
            "run-1",
            RunWriter::Unowned,
            &RunChange {
                state: Some(RunState::Failed),
                ..RunChange::default()
            },
            EventPayload::RunFailed(RunFailed::default()),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::RunOwned { .. }), "{error}");

    // A goes silent and is expired; B takes the run over.
    clock.advance(Duration::from_secs(30));
    let a_node = store.node("nd-a").await.unwrap().unwrap();
    store
        .expire_node(&a_node, "nd-b", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let error = store
        .put_steps(
            "run-1",
            &a,
            1,
            &[step(0, StepState::Succeeded, Some(json!(1)))],
        )
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Fenced { .. }), "{error}");
    let fenced = store.events(None, 0, 1000).await.unwrap();
    assert!(fenced
        .iter()
        .any(|e| e.kind == "node.fenced" && e.data["attempted"] == "step"));
    assert_eq!(
        store.steps("run-1").await.unwrap()[0].state,
        StepState::Started,
        "the refused write changed nothing"
    );
    store.claim_runs(&b, 1, Some("run-1")).await.unwrap();
    launch_claimed(&store, &b, "run-1").await;
    store
        .put_steps(
            "run-1",
            &b,
            2,
            &[step(0, StepState::Succeeded, Some(json!(2)))],
        )
        .await
        .unwrap();
    // A launch that is over writes nothing, even on the node that owns
    // the run now.
    let error = store
        .put_steps("run-1", &b, 1, &[step(0, StepState::Failed, None)])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("launch 1 is over"), "{error}");
    assert_eq!(
        store.steps("run-1").await.unwrap()[0].result,
        Some(json!(2))
    );
}

/// Writes of several runs commit together; each is checked on its own,
/// and a refused one (another node's run, an ended launch) writes nothing
/// while the others are written, in order.
async fn a_batch_commits_each_good_write_and_refuses_each_bad_one(db: TestDatabase) {
    let (store, _clock) = open(&db).await;
    let a = lease(&store, "nd-a").await;
    let b = lease(&store, "nd-b").await;
    for id in ["run-1", "run-2", "run-3"] {
        store.insert_run(&new_run(&store, id).await).await.unwrap();
    }
    launch(&store, &a, "run-1").await;
    launch(&store, &a, "run-2").await;
    launch(&store, &b, "run-3").await;
    let write = |run: &str, lease: &Lease, launch: u32, steps: Vec<StepRecord>| StepWrite {
        run_id: run.into(),
        lease: lease.clone(),
        launch,
        steps,
    };
    let started = step(0, StepState::Started, None);
    let done = step(0, StepState::Succeeded, Some(json!({"ok": 1})));
    let outcomes = store
        .put_step_batch(&[
            write("run-1", &a, 1, vec![started.clone()]),
            write("run-3", &a, 1, vec![done.clone()]),
            write("run-2", &a, 2, vec![done.clone()]),
            write("run-2", &a, 1, vec![started.clone()]),
            // A later write of the same run replaces the earlier one.
            write("run-1", &a, 1, vec![done.clone()]),
        ])
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 5);
    let kinds = |i: usize| -> Vec<String> {
        outcomes[i]
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| e.kind.clone())
            .collect()
    };
    assert_eq!(kinds(0), ["step.started"]);
    let refused = outcomes[1].as_ref().unwrap_err().to_string();
    assert!(refused.contains("nd-b"), "another node's run: {refused}");
    let refused = outcomes[2].as_ref().unwrap_err().to_string();
    assert!(refused.contains("launch 2 is over"), "{refused}");
    assert_eq!(kinds(3), ["step.started"]);
    assert_eq!(kinds(4), ["step.succeeded"]);
    assert_eq!(store.steps("run-1").await.unwrap(), vec![done]);
    assert_eq!(store.steps("run-2").await.unwrap(), vec![started]);
    assert!(store.steps("run-3").await.unwrap().is_empty());
    let events: Vec<String> = store
        .run_events("run-1", 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .filter(|k| k.starts_with("step."))
        .collect();
    assert_eq!(events, ["step.started", "step.succeeded"]);
    // An empty batch is a no-op.
    assert!(store.put_step_batch(&[]).await.unwrap().is_empty());
}

/// A fork starts pending with a copy of the first steps (large results
/// included) and says where it came from; both journals then go on apart.
/// A fork past the journal or keeping an unfinished step is refused.
async fn a_fork_copies_finished_steps_and_refuses_unfinished_ones(db: TestDatabase) {
    let (store, _clock) = open(&db).await;
    let a = lease(&store, "nd-a").await;
    let source = new_run(&store, "run-1").await;
    store.insert_run(&source).await.unwrap();
    launch(&store, &a, "run-1").await;
    let big = json!("x".repeat(40_000));
    let steps = vec![
        step(0, StepState::Succeeded, Some(json!(1))),
        step(1, StepState::Succeeded, Some(big.clone())),
        step(2, StepState::Started, None),
    ];
    store.put_steps("run-1", &a, 1, &steps).await.unwrap();
    let fork = |id: &str| NewRun {
        id: id.into(),
        ..source.clone()
    };
    let event = store.fork_run(&fork("run-2"), "run-1", 2).await.unwrap();
    assert_eq!(event.kind, "run.created");
    assert_eq!(
        event.data["forked_from"],
        json!({"run_id": "run-1", "at_step": 2})
    );
    let forked = store.run("run-2").await.unwrap().unwrap();
    assert_eq!(forked.state, RunState::Pending);
    assert_eq!(forked.program, source.program);
    assert_eq!(store.steps("run-2").await.unwrap(), steps[..2].to_vec());
    assert_eq!(store.steps("run-2").await.unwrap()[1].result, Some(big));
    // A fork of zero steps is a fresh start.
    store.fork_run(&fork("run-3"), "run-1", 0).await.unwrap();
    assert!(store.steps("run-3").await.unwrap().is_empty());
    for (at, says) in [(4, "has 3 steps"), (3, "fork at step")] {
        let error = store
            .fork_run(&fork(&format!("run-x{at}")), "run-1", at)
            .await
            .unwrap_err();
        assert!(error.to_string().contains(says), "{error}");
    }
    // Apart from here on.
    store
        .put_steps(
            "run-1",
            &a,
            1,
            &[step(2, StepState::Succeeded, Some(json!(3)))],
        )
        .await
        .unwrap();
    assert_eq!(store.steps("run-2").await.unwrap().len(), 2);
    store
        .put_steps("run-1", &a, 1, &[step(3, StepState::Started, None)])
        .await
        .unwrap();
    let error = store
        .fork_run(&fork("run-x"), "run-1", 4)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("step 3"), "{error}");
    assert!(
        store.run("run-x").await.unwrap().is_none(),
        "nothing written"
    );
}

async fn signals_wake_only_runs_waiting_for_them(db: TestDatabase) {
    let (store, _clock) = open(&db).await;
    let a = lease(&store, "nd-a").await;
    store
        .insert_run(&new_run(&store, "run-1").await)
        .await
        .unwrap();
    launch(&store, &a, "run-1").await;
    let (change, payload) = waiting_on("approve", None);
    store
        .change_run("run-1", RunWriter::Owner(&a), &change, payload)
        .await
        .unwrap()
        .unwrap();
    // Waiting without a timeout: never due by itself.
    assert!(store.claim_runs(&a, 10, None).await.unwrap().is_empty());
    let (first, event) = store
        .send_signal("run-1", "other", &json!({"x": 1}))
        .await
        .unwrap();
    assert_eq!(event.kind, "run.signalled");
    assert!(
        store.claim_runs(&a, 10, None).await.unwrap().is_empty(),
        "a signal it does not wait for leaves it waiting"
    );
    let (second, _) = store
        .send_signal("run-1", "approve", &json!({"ok": true}))
        .await
        .unwrap();
    assert!(second.id > first.id);
    let claimed = store.claim_runs(&a, 10, None).await.unwrap();
    assert_eq!(claimed.len(), 1, "the awaited signal wakes it");
    let signals = store.signals("run-1", "approve").await.unwrap();
    assert_eq!(signals.len(), 1);
    assert_eq!(signals[0].data, json!({"ok": true}));

    assert!(matches!(
        store.send_signal("run-404", "approve", &json!(null)).await,
        Err(StoreError::RunNotFound(_))
    ));
    store
        .change_run(
            "run-1",
            RunWriter::Owner(&a),
            &RunChange {
                state: Some(RunState::Cancelled),
                release: true,
                cancelled_by: Some("api".into()),
                ..RunChange::default()
            },
            EventPayload::RunCancelled(hearth_store::event::RunCancelled { by: "api".into() }),
        )
        .await
        .unwrap()
        .unwrap();
    let error = store
        .send_signal("run-1", "approve", &json!(null))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("cancelled"), "{error}");
}

async fn an_ended_child_wakes_its_waiting_parent(db: TestDatabase) {
    let (store, _clock) = open(&db).await;
    let a = lease(&store, "nd-a").await;
    store
        .insert_run(&new_run(&store, "run-p").await)
        .await
        .unwrap();
    launch(&store, &a, "run-p").await;
    let mut child = new_run(&store, "run-c").await;
    child.parent = Some(("run-p".into(), 2));
    store.insert_run(&child).await.unwrap();
    let (change, payload) = waiting_on("run-c", None);
    store
        .change_run("run-p", RunWriter::Owner(&a), &change, payload)
        .await
        .unwrap()
        .unwrap();
    let children = store
        .list_runs(&RunFilter {
            parent_id: Some("run-p".into()),
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(children.len(), 1);
    assert_eq!(children[0].parent_seq, Some(2));

    launch(&store, &a, "run-c").await;
    assert!(store
        .claim_runs(&a, 10, Some("run-p"))
        .await
        .unwrap()
        .is_empty());
    store
        .change_run(
            "run-c",
            RunWriter::Owner(&a),
            &RunChange {
                state: Some(RunState::Failed),
                error: Some(json!({"code": "program", "message": "boom"})),
                release: true,
                ..RunChange::default()
            },
            EventPayload::RunFailed(RunFailed {
                code: "program".into(),
                message: "boom".into(),
            }),
        )
        .await
        .unwrap()
        .unwrap();
    let claimed = store.claim_runs(&a, 10, Some("run-p")).await.unwrap();
    assert_eq!(claimed.len(), 1, "the parent is due once its child ended");
}

async fn large_results_are_stored_once_as_blobs(db: TestDatabase) {
    let (store, _clock) = open(&db).await;
    let a = lease(&store, "nd-a").await;
    store
        .insert_run(&new_run(&store, "run-1").await)
        .await
        .unwrap();
    launch(&store, &a, "run-1").await;
    let big = json!({"body": "x".repeat(3 << 20)});
    let steps: Vec<_> = (0..2)
        .map(|seq| step(seq, StepState::Succeeded, Some(big.clone())))
        .collect();
    store.put_steps("run-1", &a, 1, &steps).await.unwrap();
    let journal = store.steps("run-1").await.unwrap();
    assert_eq!(journal, steps);
    // Same bytes, same digest: stored once.
    let digest = store.put_blob(b"abc").await.unwrap();
    assert_eq!(store.put_blob(b"abc").await.unwrap(), digest);
    assert_eq!(store.blob(&digest).await.unwrap().unwrap(), b"abc");
    assert_eq!(store.blob("sha256:none").await.unwrap(), None);
}

/// Journal writes (on SQLite, the journal writer's own connection) run
/// concurrently with the store's other writes (run events, heartbeats)
/// and lose nothing: every step lands, and the event log stays one
/// strictly increasing sequence holding every event a write was told of.
/// its answer said.
async fn journal_writes_and_other_writes_interleave_without_loss(db: TestDatabase) {
    const RUNS: usize = 6;
    const STEPS: u64 = 15;
    let (store, _clock) = open(&db).await;
    let a = lease(&store, "nd-a").await;
    let ids: Vec<String> = (0..RUNS).map(|r| format!("run-{r}")).collect();
    for id in &ids {
        store.insert_run(&new_run(&store, id).await).await.unwrap();
        launch(&store, &a, id).await;
    }
    let mut tasks = Vec::new();
    for id in ids.clone() {
        let (store, a) = (store.clone(), a.clone());
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for seq in 0..STEPS {
                let started = step(seq, StepState::Started, None);
                let done = step(seq, StepState::Succeeded, Some(json!({"seq": seq})));
                let events = store.put_steps(&id, &a, 1, &[started, done]).await.unwrap();
                assert_eq!(events.len(), 2);
                assert!(events
                    .iter()
                    .all(|e| e.run_id.as_deref() == Some(id.as_str())));
                seqs.extend(events.iter().map(|e| e.seq));
            }
            seqs
        }));
    }
    let other = {
        let (store, a, ids) = (store.clone(), a.clone(), ids.clone());
        tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..STEPS as usize * 2 {
                let id = &ids[i % RUNS];
                let payload = EventPayload::RunRunning(RunRunning {
                    launch: 1,
                    sandbox_id: format!("sb-{id}"),
                });
                let event = store
                    .append_run_event(id, None, Some(&a), payload)
                    .await
                    .unwrap();
                seqs.push(event.seq);
                store
                    .heartbeat(&a, TTL, &hearth_store::NodeLoad::default())
                    .await
                    .unwrap();
            }
            seqs
        })
    };
    let mut answered: Vec<i64> = other.await.unwrap();
    for task in tasks {
        answered.extend(task.await.unwrap());
    }
    for id in &ids {
        let steps = store.steps(id).await.unwrap();
        assert_eq!(steps.len(), STEPS as usize, "{id}");
        assert!(steps.iter().all(|s| s.state == StepState::Succeeded));
    }
    let mut logged = Vec::new();
    let mut after = 0;
    loop {
        let page = store.events(None, after, 1000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        logged.extend(page.into_iter().map(|e| e.seq));
    }
    assert!(
        logged.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing"
    );
    let logged: BTreeSet<i64> = logged.into_iter().collect();
    let answered: BTreeSet<i64> = answered.into_iter().collect();
    assert_eq!(
        answered.len(),
        RUNS * STEPS as usize * 2 + STEPS as usize * 2
    );
    assert!(
        answered.is_subset(&logged),
        "every answered event is in the log"
    );
}

/// A file larger than a chunk is stored a chunk at a time under the
/// digest of its whole bytes, and comes back whole (to a file, or as
/// bytes); a small one is stored whole; a missing blob writes no file.
async fn large_files_are_stored_in_chunks_and_read_back_whole(db: TestDatabase) {
    let (store, _clock) = open(&db).await;
    let dir = tempfile::tempdir().unwrap();
    // Two chunks alike, then a third, then a partial one.
    let chunk = hearth_store::BLOB_CHUNK;
    let mut bytes: Vec<u8> = (0..chunk).map(|i| (i * 7 % 251) as u8).collect();
    bytes.extend_from_within(..chunk);
    bytes.extend((0..chunk + 12_345).map(|i| (i * 13 % 241) as u8));
    let big = dir.path().join("big.qcow2");
    std::fs::write(&big, &bytes).unwrap();
    let (digest, size) = store.put_blob_file(&big).await.unwrap();
    assert_eq!(digest, hearth_engine::digest::bytes_digest(&bytes));
    assert_eq!(size, bytes.len() as u64);
    // Stored again: the same blob.
    assert_eq!(store.put_blob_file(&big).await.unwrap().0, digest);
    // Each chunk is a blob of its own; the two alike are one.
    let first = hearth_engine::digest::bytes_digest(&bytes[..chunk]);
    assert_eq!(store.blob(&first).await.unwrap().unwrap(), bytes[..chunk]);

    let back = dir.path().join("back.qcow2");
    assert_eq!(
        store.blob_to_file(&digest, &back).await.unwrap(),
        Some(bytes.len() as u64)
    );
    assert!(std::fs::read(&back).unwrap() == bytes, "the same bytes");
    assert!(store.blob(&digest).await.unwrap().unwrap() == bytes);
    // The target must be new: nothing is overwritten.
    assert!(store.blob_to_file(&digest, &back).await.is_err());

    let small = dir.path().join("small");
    std::fs::write(&small, b"a few bytes").unwrap();
    let (digest, size) = store.put_blob_file(&small).await.unwrap();
    assert_eq!(
        (digest.as_str(), size),
        (
            hearth_engine::digest::bytes_digest(b"a few bytes").as_str(),
            11
        )
    );
    assert_eq!(store.blob(&digest).await.unwrap().unwrap(), b"a few bytes");
    let out = dir.path().join("small.out");
    assert_eq!(store.blob_to_file(&digest, &out).await.unwrap(), Some(11));
    assert_eq!(std::fs::read(&out).unwrap(), b"a few bytes");

    let none = dir.path().join("none");
    assert_eq!(store.blob_to_file("sha256:00", &none).await.unwrap(), None);
    assert!(!none.exists());
    let missing = store.put_blob_file(&dir.path().join("no-such-file")).await;
    assert!(missing.unwrap_err().to_string().contains("no-such-file"));
}
