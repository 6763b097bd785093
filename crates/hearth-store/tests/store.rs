//! The store suite: every test runs against a real SQLite file and a real
//! PostgreSQL database (its own, made for the test).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hearth_store::event::{
    ExecStarted, FileTransfer, SandboxCreating, SandboxEnded, SandboxRunning,
};
use hearth_store::testing::TestDatabase;
use hearth_store::{
    EventPayload, Lease, ManualClock, NewSandbox, NodeCapacity, NodeLoad, NodeSpec, NodeState,
    SandboxFilter, SandboxState, Store, StoreError, Transition,
};

/// Generate `sqlite::$name` and `postgres::$name` from `async fn $name(db)`.
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
    a_sandbox_life_is_recorded_with_one_event_per_change,
    lists_filter_by_state_label_and_node_and_data_survives_reopen,
    concurrent_writers_lose_nothing,
    the_store_follows_the_state_machine,
    a_taken_over_lease_fences_every_owner_write,
    a_restart_takes_a_new_epoch_and_orphans_the_old_one,
    another_home_cannot_take_a_live_node_id,
    heartbeats_renew_and_report_load,
    event_resumption_is_exact_under_concurrent_writers,
    the_store_identity_is_made_once_and_kept,
);

const T0: u64 = 1_800_000_000_000;

async fn open(db: &TestDatabase) -> (Store, Arc<ManualClock>) {
    let clock = ManualClock::new(T0);
    let store = Store::open(&db.url, clock.clone()).await.unwrap();
    (store, clock)
}

fn node(id: &str, home: &str) -> NodeSpec {
    NodeSpec {
        id: id.into(),
        url: format!("http://{id}.local:7070"),
        hostname: "testhost".into(),
        home: home.into(),
        capacity: NodeCapacity {
            sandboxes: 10,
            memory_bytes: 8 << 30,
            vcpus: 8,
        },
    }
}

const TTL: Duration = Duration::from_secs(10);

async fn lease(store: &Store, id: &str) -> Lease {
    let (record, event) = store.register_node(&node(id, "/h"), TTL).await.unwrap();
    assert_eq!(event.kind, "node.joined");
    record.lease().unwrap()
}

fn new_sandbox(id: &str, labels: &[(&str, &str)]) -> NewSandbox {
    NewSandbox {
        id: id.into(),
        image: "default".into(),
        vcpus: 1,
        memory_bytes: 256 << 20,
        disk_bytes: 1 << 30,
        timeout_ms: Some(60_000),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        created_ms: T0,
    }
}

fn creating() -> SandboxCreating {
    SandboxCreating {
        image: "default".into(),
        vcpus: 1,
        ..SandboxCreating::default()
    }
}

/// A transition to `state` with its event.
fn to(state: SandboxState) -> (Transition, EventPayload) {
    let change = Transition {
        state: Some(state),
        ..Transition::default()
    };
    let ended = SandboxEnded {
        reason: "x".into(),
        message: "x".into(),
        ..SandboxEnded::default()
    };
    let payload = match state {
        SandboxState::Creating => EventPayload::SandboxCreating(creating()),
        SandboxState::Running => EventPayload::SandboxRunning(running()),
        SandboxState::Stopping => {
            EventPayload::SandboxStopping(hearth_store::event::SandboxStopping {
                requested_by: hearth_store::event::StopRequester::Api,
            })
        }
        SandboxState::Stopped => EventPayload::SandboxStopped(ended),
        SandboxState::Failed => EventPayload::SandboxFailed(ended),
        SandboxState::TimedOut => EventPayload::SandboxTimedOut(ended),
        SandboxState::Lost => EventPayload::SandboxLost(hearth_store::event::SandboxLost {
            reason: "lost".into(),
            message: "x".into(),
            previous_state: SandboxState::Running,
            node_id: "n".into(),
            node_epoch: 1,
            console_log: None,
        }),
    };
    (change, payload)
}

fn running() -> SandboxRunning {
    SandboxRunning {
        accelerator: "tcg".into(),
        accelerator_reason: "test".into(),
        boot_ms: 4000,
        guest: hearth_proto::GuestInfo {
            protocol_version: 1,
            agent_version: "t".into(),
            kernel_release: "t".into(),
            vcpus: 1,
            mem_total_bytes: 1,
            workload_memory_limit_bytes: 1,
            disk_total_bytes: 1,
            boot_ms: 1,
            workload_isolation: false,
        },
    }
}

async fn a_sandbox_life_is_recorded_with_one_event_per_change(db: TestDatabase) {
    let (store, clock) = open(&db).await;
    let owner = lease(&store, "nd-a").await;
    let first = store
        .insert_sandbox(&new_sandbox("sb-1", &[("team", "a")]), &owner, creating())
        .await
        .unwrap();
    assert_eq!(first.kind, "sandbox.creating");
    assert_eq!(first.node_id.as_deref(), Some("nd-a"));
    assert_eq!(first.version, hearth_store::EVENT_VERSION);

    clock.advance(Duration::from_secs(4));
    let change = Transition {
        state: Some(SandboxState::Running),
        accelerator: Some("tcg".into()),
        boot_ms: Some(4000),
        ..Transition::default()
    };
    let e = store
        .transition(
            "sb-1",
            &owner,
            &change,
            EventPayload::SandboxRunning(running()),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(e.seq > first.seq);
    assert_eq!(e.at_ms, T0 + 4000);
    assert_eq!(
        e.payload().unwrap(),
        EventPayload::SandboxRunning(running())
    );

    let ended = Transition {
        state: Some(SandboxState::Stopped),
        end_reason: Some("destroyed".into()),
        end_message: Some("destroyed on request".into()),
        ..Transition::default()
    };
    let payload = EventPayload::SandboxStopped(SandboxEnded {
        reason: "destroyed".into(),
        message: "destroyed on request".into(),
        ..SandboxEnded::default()
    });
    store
        .transition("sb-1", &owner, &ended, payload)
        .await
        .unwrap()
        .unwrap();
    // A final state is never left, and nothing is recorded for the attempt.
    let (change, payload) = to(SandboxState::Failed);
    let again = store
        .transition("sb-1", &owner, &change, payload)
        .await
        .unwrap();
    assert!(again.is_none());
    // An event that does not match its state change is a caller bug.
    let (change, _) = to(SandboxState::Failed);
    let mismatched = store
        .transition(
            "sb-1",
            &owner,
            &change,
            EventPayload::SandboxRunning(running()),
        )
        .await;
    assert!(matches!(mismatched, Err(StoreError::Invalid(_))));

    let record = store.sandbox("sb-1").await.unwrap().unwrap();
    assert_eq!(record.state, SandboxState::Stopped);
    assert_eq!(record.accelerator.as_deref(), Some("tcg"));
    assert_eq!(record.boot_ms, Some(4000));
    assert_eq!(record.end_reason.as_deref(), Some("destroyed"));
    assert_eq!(record.ended_ms, Some(T0 + 4000));
    assert_eq!(record.labels.get("team").map(String::as_str), Some("a"));
    assert_eq!(
        (record.node_id.as_str(), record.node_epoch),
        ("nd-a", owner.epoch)
    );

    let events = store.events(Some("sb-1"), 0, 100).await.unwrap();
    let kinds: Vec<_> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["sandbox.creating", "sandbox.running", "sandbox.stopped"]
    );
    assert!(events.last().unwrap().ends_sandbox());
    // Resuming after an event gives exactly the ones after it.
    let after = store
        .events(Some("sb-1"), events[0].seq, 100)
        .await
        .unwrap();
    assert_eq!(after, events[1..]);
    assert!(matches!(
        store
            .insert_sandbox(&new_sandbox("sb-1", &[]), &owner, creating())
            .await,
        Err(StoreError::Duplicate(_))
    ));
    let (change, payload) = to(SandboxState::Running);
    assert!(matches!(
        store.transition("sb-zz", &owner, &change, payload).await,
        Err(StoreError::NotFound(_))
    ));
    store.close().await;
}

async fn lists_filter_by_state_label_and_node_and_data_survives_reopen(db: TestDatabase) {
    {
        let (store, _) = open(&db).await;
        let a = lease(&store, "nd-a").await;
        let b = lease(&store, "nd-b").await;
        store
            .insert_sandbox(
                &new_sandbox("sb-a", &[("team", "a"), ("env", "ci")]),
                &a,
                creating(),
            )
            .await
            .unwrap();
        let mut newer = new_sandbox("sb-b", &[("team", "b")]);
        newer.created_ms += 1;
        store.insert_sandbox(&newer, &b, creating()).await.unwrap();
        let (change, payload) = to(SandboxState::Running);
        store
            .transition("sb-b", &b, &change, payload)
            .await
            .unwrap();
        store
            .append_event(
                None,
                Some(&a),
                EventPayload::AdmissionRefused(hearth_store::event::AdmissionRefused {
                    limit: "memory".into(),
                    message: "full".into(),
                    memory_bytes: 1,
                    vcpus: 1,
                }),
            )
            .await
            .unwrap();
        store.close().await;
    }
    let (store, _) = open(&db).await;
    let ids = |records: Vec<hearth_store::SandboxRecord>| {
        records.into_iter().map(|r| r.id).collect::<Vec<_>>()
    };
    let running = store
        .list_sandboxes(&SandboxFilter {
            states: vec![SandboxState::Running],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(running), ["sb-b"]);
    let mut labels = BTreeMap::new();
    labels.insert("team".to_string(), "a".to_string());
    labels.insert("env".to_string(), "ci".to_string());
    let team_a = store
        .list_sandboxes(&SandboxFilter {
            labels,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(team_a), ["sb-a"]);
    let of_b = store
        .list_sandboxes(&SandboxFilter {
            node_id: Some("nd-b".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(of_b), ["sb-b"]);
    // Newest first.
    let all = store
        .list_sandboxes(&SandboxFilter::default())
        .await
        .unwrap();
    assert_eq!(ids(all), ["sb-b", "sb-a"]);
    let limited = store
        .list_sandboxes(&SandboxFilter {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(limited.len(), 1);
    let server_events = store.events(None, 0, 100).await.unwrap();
    let kinds: Vec<_> = server_events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "node.joined",
            "node.joined",
            "sandbox.creating",
            "sandbox.creating",
            "sandbox.running",
            "admission.refused"
        ]
    );
    assert!(server_events.windows(2).all(|w| w[0].seq < w[1].seq));
    let nodes = store.nodes().await.unwrap();
    assert_eq!(nodes.len(), 2);
    assert!(nodes.iter().all(|n| n.state == NodeState::Alive));
    store.close().await;
}

async fn concurrent_writers_lose_nothing(db: TestDatabase) {
    let (store, _) = open(&db).await;
    let owner = lease(&store, "nd-a").await;
    store
        .insert_sandbox(&new_sandbox("sb-c", &[]), &owner, creating())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        let owner = owner.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..25 {
                let payload = EventPayload::FileWritten(FileTransfer {
                    path: format!("/f{i}-{j}"),
                    bytes: 1,
                });
                store
                    .append_event(Some("sb-c"), Some(&owner), payload)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let events = store.events(Some("sb-c"), 0, 1000).await.unwrap();
    assert_eq!(events.len(), 201);
    store.close().await;
}

/// Whatever sequence of changes is attempted, the stored state follows the
/// state machine, and exactly the accepted changes are logged.
async fn the_store_follows_the_state_machine(db: TestDatabase) {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::TestRunner;

    let (store, _) = open(&db).await;
    let owner = lease(&store, "nd-p").await;
    let mut runner = TestRunner::deterministic();
    let steps = proptest::collection::vec(0usize..7, 1..12);
    for case in 0..48 {
        let steps = steps.new_tree(&mut runner).unwrap().current();
        let id = format!("sb-p{case}");
        store
            .insert_sandbox(&new_sandbox(&id, &[]), &owner, creating())
            .await
            .unwrap();
        let mut model = SandboxState::Creating;
        let mut accepted = 1;
        for step in &steps {
            let next = SandboxState::ALL[*step];
            let (change, payload) = to(next);
            let result = store
                .transition(&id, &owner, &change, payload)
                .await
                .unwrap();
            if model.can_become(next) {
                assert!(result.is_some(), "{steps:?}: {model} -> {next}");
                model = next;
                accepted += 1;
            } else {
                assert!(result.is_none(), "{steps:?}: {model} -> {next}");
            }
        }
        let record = store.sandbox(&id).await.unwrap().unwrap();
        assert_eq!(record.state, model, "{steps:?}");
        assert_eq!(record.ended_ms.is_some(), model.is_final());
        assert_eq!(
            store.events(Some(&id), 0, 100).await.unwrap().len(),
            accepted
        );
    }
    store.close().await;
}

async fn a_taken_over_lease_fences_every_owner_write(db: TestDatabase) {
    let (store, clock) = open(&db).await;
    let a = lease(&store, "nd-a").await;
    let b = lease(&store, "nd-b").await;
    store
        .insert_sandbox(&new_sandbox("sb-1", &[]), &a, creating())
        .await
        .unwrap();
    let (change, payload) = to(SandboxState::Running);
    store
        .transition("sb-1", &a, &change, payload)
        .await
        .unwrap()
        .unwrap();
    // B may not write A's sandbox.
    let (change, payload) = to(SandboxState::Stopping);
    let error = store
        .transition("sb-1", &b, &change, payload)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::Fenced { reason, .. } if reason.contains("does not own")),
        "{error}"
    );

    // A goes silent; B expires it.
    clock.advance(Duration::from_secs(30));
    let a_record = store.node("nd-a").await.unwrap().unwrap();
    let expired = store
        .expire_node(&a_record, "nd-b", Duration::from_secs(30))
        .await
        .unwrap()
        .expect("B expires A");
    assert_eq!(expired.kind, "node.expired");
    assert_eq!(expired.node_id.as_deref(), Some("nd-b"));
    // Only once.
    assert!(store
        .expire_node(&a_record, "nd-b", Duration::from_secs(30))
        .await
        .unwrap()
        .is_none());

    // Every write A attempts now is refused, and each refusal is recorded.
    let (change, payload) = to(SandboxState::Stopping);
    let error = store
        .transition("sb-1", &a, &change, payload)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Fenced { .. }), "{error}");
    let error = store
        .append_event(
            Some("sb-1"),
            Some(&a),
            EventPayload::ExecStarted(ExecStarted::default()),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Fenced { .. }), "{error}");
    let error = store
        .insert_sandbox(&new_sandbox("sb-2", &[]), &a, creating())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("fencing"), "{error}");
    let error = store
        .heartbeat(&a, TTL, &NodeLoad::default())
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Fenced { .. }), "{error}");
    assert!(store.sandbox("sb-2").await.unwrap().is_none());

    // B finds A's sandbox orphaned and records it lost, naming A.
    let orphans = store.orphaned_sandboxes().await.unwrap();
    assert_eq!(orphans.len(), 1);
    let lost = store
        .mark_lost(
            &orphans[0],
            Some("nd-b"),
            "node nd-a stopped heartbeating",
            None,
        )
        .await
        .unwrap()
        .unwrap();
    match lost.payload().unwrap() {
        EventPayload::SandboxLost(lost) => {
            assert_eq!(lost.node_id, "nd-a");
            assert_eq!(lost.previous_state, SandboxState::Running);
        }
        other => panic!("{other:?}"),
    }
    assert!(store.orphaned_sandboxes().await.unwrap().is_empty());
    // Marking again does nothing.
    assert!(store
        .mark_lost(&orphans[0], Some("nd-b"), "again", None)
        .await
        .unwrap()
        .is_none());
    let record = store.sandbox("sb-1").await.unwrap().unwrap();
    assert_eq!(record.state, SandboxState::Lost);

    let fenced: Vec<_> = store
        .events(None, 0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "node.fenced")
        .collect();
    // B's attempt on A's sandbox, then A's four.
    assert_eq!(fenced.len(), 5, "{fenced:#?}");
    let attempted: Vec<String> = fenced
        .iter()
        .map(|e| match e.payload().unwrap() {
            EventPayload::NodeFenced(f) => format!("{}:{}", f.fenced_node, f.attempted),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        attempted,
        [
            "nd-b:sandbox.stopping",
            "nd-a:sandbox.stopping",
            "nd-a:exec.started",
            "nd-a:sandbox.creating",
            "nd-a:heartbeat"
        ]
    );
    store.close().await;
}

async fn a_restart_takes_a_new_epoch_and_orphans_the_old_one(db: TestDatabase) {
    let (store, _) = open(&db).await;
    let first = lease(&store, "nd-a").await;
    store
        .insert_sandbox(&new_sandbox("sb-old", &[]), &first, creating())
        .await
        .unwrap();
    // The same home restarts before its lease ran out (after a kill -9).
    let (record, joined) = store.register_node(&node("nd-a", "/h"), TTL).await.unwrap();
    let second = record.lease().unwrap();
    assert_eq!(second.epoch, first.epoch + 1);
    match joined.payload().unwrap() {
        EventPayload::NodeJoined(j) => {
            assert_eq!(j.previous_epoch, Some(first.epoch));
            assert_eq!(j.previous_state.as_deref(), Some("alive"));
        }
        other => panic!("{other:?}"),
    }
    // The old lease can write nothing; the new one cannot touch the old
    // sandbox either, which is an orphan.
    let (change, payload) = to(SandboxState::Running);
    assert!(store
        .transition("sb-old", &first, &change, payload.clone())
        .await
        .is_err());
    assert!(store
        .transition("sb-old", &second, &change, payload)
        .await
        .is_err());
    let orphans = store.orphaned_sandboxes().await.unwrap();
    assert_eq!(
        orphans.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["sb-old"]
    );
    // A clean shutdown gives the lease up.
    let left = store.leave(&second).await.unwrap().unwrap();
    assert_eq!(left.kind, "node.left");
    assert_eq!(
        store.node("nd-a").await.unwrap().unwrap().state,
        NodeState::Left
    );
    store.close().await;
}

async fn another_home_cannot_take_a_live_node_id(db: TestDatabase) {
    let (store, clock) = open(&db).await;
    lease(&store, "nd-a").await;
    let error = store
        .register_node(&node("nd-a", "/elsewhere"), TTL)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::NodeIdInUse { .. }), "{error}");
    // Once that lease ran out, it may.
    clock.advance(TTL + Duration::from_secs(1));
    let (record, _) = store
        .register_node(&node("nd-a", "/elsewhere"), TTL)
        .await
        .unwrap();
    assert_eq!(record.home, "/elsewhere");
    store.close().await;
}

async fn heartbeats_renew_and_report_load(db: TestDatabase) {
    let (store, clock) = open(&db).await;
    let a = lease(&store, "nd-a").await;
    assert_eq!(a.expires_ms, T0 + TTL.as_millis() as u64);
    clock.advance(Duration::from_secs(3));
    let load = NodeLoad {
        sandboxes: 2,
        memory_bytes: 1 << 30,
        vcpus: 2,
    };
    let renewed = store.heartbeat(&a, TTL, &load).await.unwrap();
    assert_eq!(renewed.expires_ms, T0 + 3000 + TTL.as_millis() as u64);
    let record = store.node("nd-a").await.unwrap().unwrap();
    assert_eq!(record.load, load);
    assert_eq!(record.heartbeat_seq, 1);
    assert_eq!(record.heartbeat_ms, T0 + 3000);
    assert!(record.has_room(1 << 30, 1));
    assert!(!record.has_room(8 << 30, 1));
    // A node read before a heartbeat cannot be expired by what it saw.
    let stale = record.clone();
    store.heartbeat(&a, TTL, &load).await.unwrap();
    assert!(store
        .expire_node(&stale, "nd-b", Duration::from_secs(30))
        .await
        .unwrap()
        .is_none());
    store.close().await;
}

/// Several writers append events to several sandboxes while readers page
/// through the log from random points: every reader sees every event after
/// its starting point exactly once, in order per sandbox.
async fn event_resumption_is_exact_under_concurrent_writers(db: TestDatabase) {
    let (store, _) = open(&db).await;
    let owner = lease(&store, "nd-a").await;
    for s in 0..4 {
        store
            .insert_sandbox(&new_sandbox(&format!("sb-{s}"), &[]), &owner, creating())
            .await
            .unwrap();
    }
    let base = store
        .events(None, 0, 1000)
        .await
        .unwrap()
        .last()
        .unwrap()
        .seq;
    const WRITERS: usize = 6;
    const PER_WRITER: usize = 40;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        // Separate connections (on PostgreSQL, separate pools like
        // separate processes).
        let store = Store::open(&db.url, store.clock().clone()).await.unwrap();
        let owner = owner.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                let payload = EventPayload::FileWritten(FileTransfer {
                    path: format!("/w{w}"),
                    bytes: i as u64,
                });
                store
                    .append_event(Some(&format!("sb-{}", (w + i) % 4)), Some(&owner), payload)
                    .await
                    .unwrap();
            }
            store.close().await;
        }));
    }
    // Readers start at random points while the writers write, page with
    // small pages, and stop once they have seen everything.
    let total = WRITERS * PER_WRITER;
    let mut readers = Vec::new();
    for r in 0..4u64 {
        let store = store.clone();
        readers.push(tokio::spawn(async move {
            let start = base + (r * 37) as i64 % 60;
            let mut after = start;
            let mut seen = Vec::new();
            loop {
                let page = store.events(None, after, 7).await.unwrap();
                if let Some(last) = page.last() {
                    after = last.seq;
                }
                let empty = page.is_empty();
                seen.extend(page);
                if after >= base + total as i64 {
                    break;
                }
                if empty {
                    tokio::task::yield_now().await;
                }
            }
            (start, seen)
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let all = store.events(None, base, 1000).await.unwrap();
    assert_eq!(all.len(), total);
    for reader in readers {
        let (start, seen) = reader.await.unwrap();
        let expected: Vec<i64> = all.iter().map(|e| e.seq).filter(|s| *s > start).collect();
        let got: Vec<i64> = seen.iter().map(|e| e.seq).collect();
        assert_eq!(got, expected, "reader from {start}");
        // In order per writer within each sandbox (the writer's i grows).
        let mut last: BTreeMap<(String, String), u64> = BTreeMap::new();
        for event in &seen {
            let EventPayload::FileWritten(f) = event.payload().unwrap() else {
                panic!("unexpected {event:?}")
            };
            let key = (event.sandbox_id.clone().unwrap(), f.path.clone());
            if let Some(prev) = last.insert(key, f.bytes) {
                assert!(prev < f.bytes, "out of order: {prev} then {}", f.bytes);
            }
        }
    }
    store.close().await;
}

async fn the_store_identity_is_made_once_and_kept(db: TestDatabase) {
    let (store, _clock) = open(&db).await;
    assert_eq!(
        store.identity().await.unwrap(),
        None,
        "a new store has none"
    );
    // Two servers adopting one new store at once end up with the same.
    let (a, b) = tokio::join!(store.adopt_identity("st-a"), store.adopt_identity("st-b"));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b);
    assert!(a == "st-a" || a == "st-b");
    assert_eq!(store.adopt_identity("st-c").await.unwrap(), a);
    store.close().await;
    let (store, _clock) = open(&db).await;
    assert_eq!(store.identity().await.unwrap(), Some(a));
    store.close().await;
}
