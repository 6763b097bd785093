//! Snapshot of the wire format: one example of every message, serialized.
//! A diff here means the protocol changed; see VERSIONING.md. Regenerate
//! deliberately with `UPDATE_SNAPSHOTS=1 cargo test -p hearth-proto`.

use std::collections::BTreeMap;

use hearth_proto::*;

fn examples() -> serde_json::Value {
    let mut env = BTreeMap::new();
    env.insert("K".to_string(), "V".to_string());
    serde_json::json!({
        "protocol_version": PROTOCOL_VERSION,
        "port_name": GUEST_PORT_NAME,
        "frame_kinds": [
            FrameKind::Request as u8, FrameKind::Stdin as u8, FrameKind::StdinEof as u8,
            FrameKind::Started as u8, FrameKind::Stdout as u8, FrameKind::Stderr as u8,
            FrameKind::Exit as u8, FrameKind::Error as u8,
            FrameKind::TunnelOpen as u8, FrameKind::TunnelReady as u8, FrameKind::TunnelRequest as u8,
            FrameKind::TunnelResponse as u8, FrameKind::TunnelBody as u8,
            FrameKind::EgressStart as u8, FrameKind::EgressReady as u8, FrameKind::EgressOpen as u8,
            FrameKind::EgressRefused as u8,
        ],
        "frame_bytes": Frame::new(FrameKind::Stdout, &b"hi"[..]).encode().to_vec(),
        "hello": Hello { protocol_version: 1, unix_time_ms: 1, hostname: "h".into(), pids_max: 2, agent_reserve_mib: 3, privileged: true },
        "guest_info": GuestInfo { protocol_version: 1, agent_version: "0".into(), kernel_release: "k".into(), vcpus: 1, mem_total_bytes: 2, workload_memory_limit_bytes: 3, disk_total_bytes: 4, boot_ms: 5, workload_isolation: true },
        "exec_request": ExecRequest { id: "x1".into(), argv: vec!["a".into()], env, cwd: Some("/".into()), timeout_ms: Some(1), stdin: true },
        "exec_started": ExecStarted { pid: 7 },
        "exit_report": ExitReport { reason: ExitReason::OomKilled, code: 137, signal: Some(9), message: Some("m".into()), duration_ms: 1, stdout_bytes: 2, stderr_bytes: 3 },
        "exit_reasons": [ExitReason::Exited, ExitReason::Signaled, ExitReason::OomKilled, ExitReason::TimedOut, ExitReason::Killed, ExitReason::SpawnFailed],
        "kill_request": KillRequest { id: "x1".into() },
        "path_query": serde_urlencoded_like(&PathQuery { path: "/a b".into(), mode: Some(420), parents: true, recursive: false, max_bytes: None, timeout_ms: None }),
        "path_query_download": serde_urlencoded_like(&PathQuery { path: "/proc/kmsg".into(), mode: None, parents: false, recursive: false, max_bytes: Some(1024), timeout_ms: Some(5000) }),
        "error_trailer": routes::ERROR_MESSAGE_TRAILER,
        "file_stat": FileStat { name: "n".into(), file_type: FileType::Symlink, size: 1, mode: 0o644, modified_ms: 2 },
        "write_result": WriteResult { bytes: 9 },
        "usage": Usage { workload_cpu_usec: 1, guest_cpu_usec: 2, workload_memory_bytes: 3, workload_memory_peak_bytes: 4, workload_memory_limit_bytes: 5, mem_total_bytes: 6, mem_available_bytes: 7, disk_used_bytes: 8, disk_total_bytes: 9, pids: 10, oom_kills: 11 },
        "error_codes": [ErrorCode::InvalidArgument, ErrorCode::NotFound, ErrorCode::AlreadyExists, ErrorCode::IsADirectory, ErrorCode::NotADirectory, ErrorCode::NotEmpty, ErrorCode::PermissionDenied, ErrorCode::NoSpace, ErrorCode::TooLarge, ErrorCode::VersionMismatch, ErrorCode::Internal, ErrorCode::Busy, ErrorCode::TimedOut],
        "error_body": ErrorBody::new(ErrorCode::NotFound, "no such file: /x"),
        "handshake": [
            String::from_utf8(handshake::Line::Sync("n0nce".into()).encode()).unwrap(),
            String::from_utf8(handshake::Line::Ready("n0nce".into()).encode()).unwrap(),
            String::from_utf8(handshake::Line::Go("n0nce".into()).encode()).unwrap(),
        ],
        "tunnel_open": TunnelOpen { listen: "127.0.0.1:0".into(), max_request_body: 1024 },
        "tunnel_ready": TunnelReady { address: "127.0.0.1:40513".into() },
        "tunnel_request_head": TunnelRequestHead { id: 1, method: "POST".into(), path: "/v1/runs/r1/steps?x=1".into(), content_type: Some("application/json".into()), body_len: 2 },
        "tunnel_response_head": TunnelResponseHead { id: 1, status: 200, content_type: None, body_len: 0 },
        "tunnel_body_frame_bytes": tunnel::body_frame(258, b"hi").encode().to_vec(),
        "egress_start": EgressStart { listen: "127.0.0.1:3128".into(), transparent: true },
        "egress_ready": EgressReady { address: "127.0.0.1:3128".into(), transparent: true },
        "egress_open": EgressOpen { id: 1, host: "pypi.org".into(), port: 443, via: EgressVia::Proxy, transport: EgressTransport::Tcp, exec: None },
        "egress_open_transparent": EgressOpen { id: 2, host: "10.0.0.1".into(), port: 53, via: EgressVia::Transparent, transport: EgressTransport::Udp, exec: Some("x1".into()) },
        "egress_refused": EgressRefused { id: 1, reason: "pypi.org port 443 is not on the allowlist".into() },
        "routes": [routes::HELLO, routes::EXEC, routes::EXEC_KILL, routes::FILES, routes::FILES_STAT, routes::FILES_LIST, routes::FILES_MKDIR, routes::USAGE, routes::SHUTDOWN, routes::TUNNEL, routes::EGRESS, routes::EGRESS_CONN],
    })
}

fn serde_urlencoded_like(q: &PathQuery) -> serde_json::Value {
    serde_json::to_value(q).unwrap()
}

#[test]
fn wire_format_matches_the_snapshot() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/snapshots/schema.json");
    let actual = serde_json::to_string_pretty(&examples()).unwrap() + "\n";
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        actual == expected,
        "the wire format changed; if deliberate, bump PROTOCOL_VERSION as VERSIONING.md says and rerun with UPDATE_SNAPSHOTS=1\n--- expected\n{expected}\n--- actual\n{actual}"
    );
}

/// Peers that predate `privileged` and `workload_isolation` still talk to
/// this one: an old host's hello asks for confined execs, an old guest's
/// answer says it does not confine them.
#[test]
fn old_peers_without_the_isolation_fields_are_understood() {
    let hello: Hello = serde_json::from_str(
        r#"{"protocol_version":1,"unix_time_ms":1,"hostname":"h","pids_max":2,"agent_reserve_mib":3}"#,
    )
    .unwrap();
    assert!(!hello.privileged);
    let info: GuestInfo = serde_json::from_str(
        r#"{"protocol_version":1,"agent_version":"0","kernel_release":"k","vcpus":1,"mem_total_bytes":2,"workload_memory_limit_bytes":3,"disk_total_bytes":4,"boot_ms":5}"#,
    )
    .unwrap();
    assert!(!info.workload_isolation);
}
