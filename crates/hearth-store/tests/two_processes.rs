//! Two processes changing the same sandboxes at once on one PostgreSQL
//! database lose no change and make no illegal one: the property behind
//! running several nodes on one database.
//!
//! The parent makes random plans (proptest strategies), runs this same test
//! binary twice as writer processes (the `writer_process` entry, ignored in
//! normal runs), and checks the store against what each writer saw accepted.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;

use hearth_store::event::{
    SandboxCreating, SandboxEnded, SandboxRunning, SandboxStopping, StopRequester,
};
use hearth_store::testing::TestDatabase;
use hearth_store::{
    DatabaseUrl, EventPayload, Lease, NewSandbox, NodeCapacity, NodeSpec, SandboxState, Store,
    SystemClock, Transition,
};

const SANDBOXES: usize = 12;
const STEPS: usize = 80;
const PLAN_ENV: &str = "HEARTH_TEST_WRITER_PLAN";
const DB_ENV: &str = "HEARTH_TEST_WRITER_DB";
const LEASE_ENV: &str = "HEARTH_TEST_WRITER_LEASE";
const ROUND_ENV: &str = "HEARTH_TEST_WRITER_ROUND";

fn sandbox_id(round: usize, sandbox: usize) -> String {
    format!("sb-{round}-{sandbox}")
}

fn payload_for(state: SandboxState) -> EventPayload {
    let ended = SandboxEnded {
        reason: "test".into(),
        message: "test".into(),
        ..SandboxEnded::default()
    };
    match state {
        SandboxState::Running => EventPayload::SandboxRunning(SandboxRunning {
            accelerator: "tcg".into(),
            accelerator_reason: "test".into(),
            boot_ms: 1,
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
        }),
        SandboxState::Stopping => EventPayload::SandboxStopping(SandboxStopping {
            requested_by: StopRequester::Api,
        }),
        SandboxState::Stopped => EventPayload::SandboxStopped(ended),
        SandboxState::Failed => EventPayload::SandboxFailed(ended),
        SandboxState::TimedOut => EventPayload::SandboxTimedOut(ended),
        other => panic!("the plans never ask for {other}"),
    }
}

/// States a writer may ask for (not `creating`, which only an insert sets,
/// nor `lost`, which only a takeover sets).
const TARGETS: [SandboxState; 5] = [
    SandboxState::Running,
    SandboxState::Stopping,
    SandboxState::Stopped,
    SandboxState::Failed,
    SandboxState::TimedOut,
];

/// One writer process: apply the plan from the environment and print each
/// accepted change as `ACCEPTED <sandbox> <seq> <state>`.
#[test]
#[ignore = "a child process of two_processes_lose_no_change_and_make_no_illegal_one"]
fn writer_process() {
    let plan: Vec<(usize, usize)> =
        serde_json::from_str(&std::env::var(PLAN_ENV).expect("plan")).unwrap();
    let url = DatabaseUrl::parse(&std::env::var(DB_ENV).expect("database")).unwrap();
    let lease: Lease = serde_json::from_str(&std::env::var(LEASE_ENV).expect("lease")).unwrap();
    let round: usize = std::env::var(ROUND_ENV).expect("round").parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = Store::open(&url, SystemClock::shared()).await.unwrap();
        for (sandbox, target) in plan {
            let state = TARGETS[target];
            let id = sandbox_id(round, sandbox);
            let change = Transition {
                state: Some(state),
                ..Transition::default()
            };
            if let Some(event) = store
                .transition(&id, &lease, &change, payload_for(state))
                .await
                .unwrap()
            {
                println!("ACCEPTED {id} {} {state}", event.seq);
            }
        }
        store.close().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_lose_no_change_and_make_no_illegal_one() {
    let db = TestDatabase::postgres().await;
    let DatabaseUrl::Postgres(url_text) = &db.url else {
        unreachable!()
    };
    let store = Store::open(&db.url, SystemClock::shared()).await.unwrap();
    let spec = NodeSpec {
        id: "nd-a".into(),
        url: "http://a".into(),
        hostname: "h".into(),
        home: "/h".into(),
        capacity: NodeCapacity::default(),
    };
    let (node, _) = store
        .register_node(&spec, std::time::Duration::from_secs(600))
        .await
        .unwrap();
    let lease = node.lease().unwrap();
    let strategy = proptest::collection::vec((0..SANDBOXES, 0..TARGETS.len()), STEPS);
    let mut runner = TestRunner::deterministic();
    for round in 0..3 {
        for s in 0..SANDBOXES {
            let new = NewSandbox {
                id: sandbox_id(round, s),
                image: "default".into(),
                vcpus: 1,
                memory_bytes: 1,
                disk_bytes: 1,
                timeout_ms: None,
                labels: BTreeMap::new(),
                created_ms: 0,
            };
            store
                .insert_sandbox(&new, &lease, SandboxCreating::default())
                .await
                .unwrap();
        }
        let plans: Vec<Vec<(usize, usize)>> = (0..2)
            .map(|_| strategy.new_tree(&mut runner).unwrap().current())
            .collect();
        let children: Vec<_> = plans
            .iter()
            .map(|plan| {
                Command::new(std::env::current_exe().unwrap())
                    .args([
                        "--exact",
                        "writer_process",
                        "--ignored",
                        "--nocapture",
                        "--quiet",
                    ])
                    .env(PLAN_ENV, serde_json::to_string(plan).unwrap())
                    .env(DB_ENV, url_text)
                    .env(LEASE_ENV, serde_json::to_string(&lease).unwrap())
                    .env(ROUND_ENV, round.to_string())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut accepted: Vec<(String, i64, String)> = Vec::new();
        for child in children {
            let output = tokio::task::spawn_blocking(move || child.wait_with_output())
                .await
                .unwrap()
                .unwrap();
            assert!(output.status.success(), "a writer process failed");
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                if let Some(rest) = line.strip_prefix("ACCEPTED ") {
                    let parts: Vec<&str> = rest.split(' ').collect();
                    accepted.push((parts[0].into(), parts[1].parse().unwrap(), parts[2].into()));
                }
            }
        }
        check(&store, round, &accepted).await;
    }
    store.close().await;
}

/// Every accepted change is in the log exactly where it was reported, each
/// sandbox's history is a legal path, and its record matches its last
/// state event.
async fn check(store: &Store, round: usize, accepted: &[(String, i64, String)]) {
    let mut more = Vec::new();
    let mut after = 0;
    loop {
        let page = store.events(None, after, 1000).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().unwrap().seq;
        more.extend(page);
    }
    let by_seq: BTreeMap<i64, &hearth_store::Event> = more.iter().map(|e| (e.seq, e)).collect();
    for (id, seq, state) in accepted {
        let event = by_seq.get(seq).unwrap_or_else(|| {
            panic!("accepted change {id} -> {state} (#{seq}) is not in the log")
        });
        assert_eq!(event.sandbox_id.as_deref(), Some(id.as_str()));
        assert_eq!(event.kind, format!("sandbox.{state}"));
    }
    assert!(
        accepted.len() > SANDBOXES,
        "the plans should get many changes through, got {}",
        accepted.len()
    );
    for s in 0..SANDBOXES {
        let id = sandbox_id(round, s);
        let states: Vec<SandboxState> = more
            .iter()
            .filter(|e| e.sandbox_id.as_deref() == Some(id.as_str()))
            .filter_map(|e| e.payload().ok()?.sandbox_state())
            .collect();
        assert_eq!(states.first(), Some(&SandboxState::Creating), "{id}");
        for pair in states.windows(2) {
            assert!(
                pair[0].can_become(pair[1]),
                "{id}: illegal {} -> {} in {states:?}",
                pair[0],
                pair[1]
            );
        }
        let record = store.sandbox(&id).await.unwrap().unwrap();
        assert_eq!(Some(&record.state), states.last(), "{id}");
    }
}
