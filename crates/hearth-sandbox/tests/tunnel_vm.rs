//! The reverse tunnel on a real VM: python3 inside the guest reaches the
//! host over plain HTTP at a loopback address, with no network device.
//! One VM boot.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::TestHome;
use hearth_sandbox::ExecOptions;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn python_in_a_real_vm_reaches_the_host_through_the_tunnel() {
    let t = TestHome::new();
    let sandbox = t.small().await;
    let mut tunnel = sandbox.open_tunnel("127.0.0.1:0", 1 << 20).await.unwrap();
    let address = tunnel.address();
    assert!(address.ip().is_loopback(), "{address}");

    let host = tokio::spawn(async move {
        let call = tunnel.next().await.expect("the program's request arrives");
        assert_eq!(call.method(), "POST");
        assert_eq!(call.path(), "/v1/runs/r1/values");
        assert_eq!(call.content_type(), Some("application/json"));
        let request: Value = serde_json::from_slice(call.body()).unwrap();
        let answer =
            json!({"value": request["seq"].as_i64().unwrap() * 100, "kind": request["kind"]});
        call.respond(
            200,
            Some("application/json"),
            Bytes::from(answer.to_string()),
        )
        .await;
        tunnel
    });

    let script = r#"
import json, os, urllib.request
req = urllib.request.Request(os.environ["HEARTH_RUN_URL"] + "/values",
                             data=json.dumps({"seq": 5, "kind": "now"}).encode(), method="POST",
                             headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=60) as r:
    print(r.status, json.dumps(json.loads(r.read()), sort_keys=True))
"#;
    let mut env = BTreeMap::new();
    env.insert(
        "HEARTH_RUN_URL".to_owned(),
        format!("http://{address}/v1/runs/r1"),
    );
    let options = ExecOptions {
        env,
        timeout: Some(Duration::from_secs(120)),
        ..ExecOptions::new(["python3", "-c", script])
    };
    let out = sandbox.run(options, None).await.unwrap();
    assert_eq!(
        out.stdout_text(),
        "200 {\"kind\": \"now\", \"value\": 500}\n",
        "{}",
        out.stderr_text()
    );
    let tunnel = host.await.unwrap();
    drop(tunnel);

    sandbox.destroy().await;
    t.assert_clean().await;
}
