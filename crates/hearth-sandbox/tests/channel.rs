//! The guest agent survives its host channel closing and reopening (a server
//! restart, or a restore from a snapshot, reconnects to a running guest).

mod common;

use std::time::Duration;

use common::TestHome;
use hearth_proto::{ExecRequest, Hello, PROTOCOL_VERSION};
use hearth_sandbox::client::GuestClient;
use hearth_sandbox::ExecEvent;
use hearth_vm::{Driver, VmSpec};

fn hello() -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        unix_time_ms: 1_700_000_000_000,
        hostname: "reconnect".into(),
        pids_max: 256,
        agent_reserve_mib: 48,
        privileged: false,
    }
}

async fn run(client: &GuestClient, id: &str, script: &str) -> Vec<u8> {
    let request = ExecRequest {
        id: id.into(),
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: Default::default(),
        cwd: None,
        timeout_ms: None,
        stdin: false,
    };
    let (_, mut stream) = client.exec(&request).await.unwrap();
    let mut out = Vec::new();
    while let Some(event) = stream.next_event().await.unwrap() {
        if let ExecEvent::Stdout(data) = event {
            out.extend_from_slice(&data);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_serves_a_new_connection_after_the_host_reconnects() {
    let t = TestHome::new();
    let image = hearth_image::open(t.home.images_dir(), "default").unwrap();
    let accel = hearth_vm::accel::detect(hearth_vm::AccelPreference::Auto).unwrap();
    let state_dir = t.home.sandboxes_dir().join("sb-reconnect");
    let vm = t
        .driver
        .launch(VmSpec {
            name: "sb-reconnect".into(),
            state_dir: state_dir.clone(),
            kernel: image.kernel(),
            initramfs: image.initramfs(),
            rootfs: image.rootfs(),
            disk_bytes: 64 << 20,
            vcpus: 1,
            memory_mib: 256,
            accel: accel.accel,
            kernel_args: vec!["hearth.debug=1".into()],
            scratch: Default::default(),
        })
        .await
        .unwrap();

    let console = vm.console_log().to_path_buf();
    let connect = || async {
        let stream = vm.connect().await.unwrap();
        match tokio::time::timeout(Duration::from_secs(60), GuestClient::connect(stream)).await {
            Ok(client) => client.unwrap(),
            Err(_) => panic!(
                "no handshake within 60s: {}",
                std::fs::read_to_string(&console).unwrap()
            ),
        }
    };
    let first = connect().await;
    first.hello(&hello()).await.unwrap();
    // A background process that must survive the reconnect.
    run(
        &first,
        "a",
        "sleep 1000 >/dev/null 2>&1 & echo $! > /tmp/bg.pid",
    )
    .await;
    assert_eq!(run(&first, "b", "echo one").await, b"one\n");
    drop(first);

    for round in 0..2 {
        let client = connect().await;
        let info = match client.hello(&hello()).await {
            Ok(info) => info,
            Err(e) => panic!(
                "{e}: {}",
                std::fs::read_to_string(vm.console_log()).unwrap()
            ),
        };
        assert_eq!(info.protocol_version, PROTOCOL_VERSION);
        let alive = run(
            &client,
            &format!("c{round}"),
            "kill -0 $(cat /tmp/bg.pid) && echo alive",
        )
        .await;
        assert_eq!(alive, b"alive\n", "round {round}");
    }

    vm.kill();
    vm.wait().await;
    std::fs::remove_dir_all(&state_dir).unwrap();
    t.assert_clean().await;
}
