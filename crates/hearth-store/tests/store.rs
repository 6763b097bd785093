//! The store against a real SQLite file.

use std::collections::BTreeMap;

use hearth_store::{NewSandbox, SandboxFilter, SandboxState, Store, Transition};
use proptest::prelude::*;
use serde_json::json;

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
        created_ms: 1,
        server_pid: std::process::id(),
    }
}

fn to(state: SandboxState) -> Transition {
    Transition {
        state: Some(state),
        ..Transition::default()
    }
}

#[tokio::test]
async fn a_sandbox_life_is_recorded_with_one_event_per_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("hearth.db")).await.unwrap();
    let first = store
        .insert_sandbox(
            &new_sandbox("sb-1", &[("team", "a")]),
            json!({"image": "default"}),
        )
        .await
        .unwrap();
    assert_eq!(first.kind, "sandbox.creating");

    let running = Transition {
        state: Some(SandboxState::Running),
        accelerator: Some("tcg".into()),
        boot_ms: Some(4000),
        ..Transition::default()
    };
    let e = store
        .transition("sb-1", &running, "sandbox.running", json!({}))
        .await
        .unwrap();
    assert!(e.unwrap().seq > first.seq);
    let ended = Transition {
        state: Some(SandboxState::Stopped),
        end_reason: Some("destroyed".into()),
        end_message: Some("destroyed on request".into()),
        ..Transition::default()
    };
    store
        .transition("sb-1", &ended, "sandbox.stopped", json!({}))
        .await
        .unwrap()
        .unwrap();
    // A final state is never left, and nothing is recorded for the attempt.
    let again = store
        .transition(
            "sb-1",
            &to(SandboxState::Failed),
            "sandbox.failed",
            json!({}),
        )
        .await
        .unwrap();
    assert!(again.is_none());

    let record = store.sandbox("sb-1").await.unwrap().unwrap();
    assert_eq!(record.state, SandboxState::Stopped);
    assert_eq!(record.accelerator.as_deref(), Some("tcg"));
    assert_eq!(record.boot_ms, Some(4000));
    assert_eq!(record.end_reason.as_deref(), Some("destroyed"));
    assert!(record.ended_ms.is_some());
    assert_eq!(record.labels.get("team").map(String::as_str), Some("a"));

    let events = store.events(Some("sb-1"), 0, 100).await.unwrap();
    let kinds: Vec<_> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["sandbox.creating", "sandbox.running", "sandbox.stopped"]
    );
    // Resuming after an event gives exactly the ones after it.
    let after = store
        .events(Some("sb-1"), events[0].seq, 100)
        .await
        .unwrap();
    assert_eq!(after, events[1..]);
}

#[tokio::test]
async fn lists_filter_by_state_and_label_and_data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hearth.db");
    {
        let store = Store::open(&path).await.unwrap();
        store
            .insert_sandbox(
                &new_sandbox("sb-a", &[("team", "a"), ("env", "ci")]),
                json!({}),
            )
            .await
            .unwrap();
        store
            .insert_sandbox(&new_sandbox("sb-b", &[("team", "b")]), json!({}))
            .await
            .unwrap();
        store
            .transition(
                "sb-b",
                &to(SandboxState::Running),
                "sandbox.running",
                json!({}),
            )
            .await
            .unwrap();
        store
            .append_event(None, "admission.refused", json!({"limit": "memory"}))
            .await
            .unwrap();
        store.close().await;
    }
    let store = Store::open(&path).await.unwrap();
    let running = store
        .list_sandboxes(&SandboxFilter {
            states: vec![SandboxState::Running],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        running.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["sb-b"]
    );
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
    assert_eq!(
        team_a.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["sb-a"]
    );
    assert_eq!(store.unfinished_sandboxes().await.unwrap().len(), 2);
    let server_events = store.events(None, 0, 100).await.unwrap();
    assert_eq!(server_events.len(), 4);
    assert!(server_events.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(matches!(
        store
            .insert_sandbox(&new_sandbox("sb-a", &[]), json!({}))
            .await,
        Err(hearth_store::StoreError::Duplicate(_))
    ));
    assert!(matches!(
        store
            .transition("sb-zz", &to(SandboxState::Running), "x", json!({}))
            .await,
        Err(hearth_store::StoreError::NotFound(_))
    ));
}

#[tokio::test]
async fn concurrent_writers_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("hearth.db")).await.unwrap();
    store
        .insert_sandbox(&new_sandbox("sb-c", &[]), json!({}))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..25 {
                store
                    .append_event(Some("sb-c"), "exec.finished", json!({"i": i, "j": j}))
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
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Whatever sequence of changes is attempted, the stored state follows
    /// the state machine, and exactly the accepted changes are logged.
    #[test]
    fn the_store_follows_the_state_machine(steps in proptest::collection::vec(0usize..7, 1..12)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("hearth.db")).await.unwrap();
            store.insert_sandbox(&new_sandbox("sb-p", &[]), json!({})).await.unwrap();
            let mut model = SandboxState::Creating;
            let mut accepted = 1;
            for step in steps {
                let next = SandboxState::ALL[step];
                let result = store.transition("sb-p", &to(next), next.as_str(), json!({})).await.unwrap();
                if model.can_become(next) {
                    prop_assert!(result.is_some());
                    model = next;
                    accepted += 1;
                } else {
                    prop_assert!(result.is_none());
                }
            }
            let record = store.sandbox("sb-p").await.unwrap().unwrap();
            prop_assert_eq!(record.state, model);
            prop_assert_eq!(record.ended_ms.is_some(), model.is_final());
            prop_assert_eq!(store.events(Some("sb-p"), 0, 100).await.unwrap().len(), accepted);
            Ok(())
        })?;
    }
}
