//! A hostile guest (a fake agent speaking the protocol badly on purpose)
//! can fail its own calls, but never crash the host or poison the
//! connection for later calls.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

use hearth_proto::limits::MAX_TUNNEL_IN_FLIGHT;
use hearth_proto::{
    routes, ExecRequest, Frame, FrameKind, Hello, TunnelReady, TunnelRequestHead, PROTOCOL_VERSION,
};
use hearth_sandbox::client::GuestClient;
use hearth_sandbox::SandboxError;

async fn hostile(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_string();
    if path == routes::TUNNEL {
        return Ok(Response::new(Full::new(hostile_tunnel())));
    }
    // Drain the request so the client is not stuck sending it.
    let _ = request.into_body().collect().await;
    let body: Bytes = match path.as_str() {
        // A frame that announces 4 GiB.
        p if p == routes::EXEC => Bytes::from_static(&[5, 0xff, 0xff, 0xff, 0xff, 1, 2, 3]),
        // A JSON body far past the limit.
        p if p == routes::USAGE => Bytes::from(vec![b' '; 8 << 20]),
        // Not JSON at all.
        p if p == routes::HELLO => Bytes::from_static(b"\x00\x01garbage"),
        // An honest answer, to show the connection still works.
        _ => Bytes::from_static(b"[]"),
    };
    Ok(Response::builder()
        .status(StatusCode::OK)
        .body(Full::new(body))
        .unwrap())
}

/// A tunnel that sends one honest request, then far more requests than
/// may be in flight at once, then a head announcing a 1 TiB body.
fn hostile_tunnel() -> Bytes {
    let ready = TunnelReady {
        address: "127.0.0.1:4242".into(),
    };
    let mut wire = Frame::json(FrameKind::TunnelReady, &ready)
        .encode()
        .to_vec();
    let head = |id: u64, body_len: u64| TunnelRequestHead {
        id,
        method: "POST".into(),
        path: format!("/r/{id}"),
        content_type: None,
        body_len,
    };
    for frame in hearth_proto::tunnel::message_frames(&head(1, 2), b"hi", 1) {
        wire.extend_from_slice(&frame.encode());
    }
    for id in 2..=300 {
        wire.extend_from_slice(&Frame::json(FrameKind::TunnelRequest, &head(id, 0)).encode());
    }
    wire.extend_from_slice(&Frame::json(FrameKind::TunnelRequest, &head(301, 1 << 40)).encode());
    Bytes::from(wire)
}

async fn hostile_guest() -> GuestClient {
    let (host_end, guest_end) = tokio::net::UnixStream::pair().unwrap();
    tokio::spawn(async move {
        let stream = hearth_proto::handshake::guest(guest_end).await.unwrap();
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service_fn(hostile))
            .await;
    });
    GuestClient::connect(host_end).await.unwrap()
}

fn exec_request() -> ExecRequest {
    ExecRequest {
        id: "x1".into(),
        argv: vec!["true".into()],
        env: Default::default(),
        cwd: None,
        timeout_ms: None,
        stdin: false,
    }
}

#[tokio::test]
async fn oversized_or_malformed_answers_fail_only_their_call() {
    let client = hostile_guest().await;

    let (_, mut stream) = client.exec(&exec_request()).await.unwrap();
    let err = stream.next_event().await.unwrap_err();
    assert!(matches!(err, SandboxError::Protocol(_)), "{err}");
    assert!(err.to_string().contains("exceeds"), "{err}");

    let err = client.usage().await.unwrap_err();
    assert!(matches!(err, SandboxError::Protocol(_)), "{err}");

    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        unix_time_ms: 0,
        hostname: "h".into(),
        pids_max: 64,
        agent_reserve_mib: 48,
        privileged: false,
    };
    let err = client.hello(&hello).await.unwrap_err();
    assert!(err.to_string().contains("malformed hello"), "{err}");

    // The connection survived all of that.
    assert!(client.is_open());
    assert!(client.list("/").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_tunnel_that_floods_the_host_is_cut_off_at_the_in_flight_limit() {
    let client = hostile_guest().await;
    let mut tunnel = client.open_tunnel("127.0.0.1:0", 1000).await.unwrap();
    assert_eq!(tunnel.address().to_string(), "127.0.0.1:4242");
    let first = tunnel.next().await.expect("the honest request arrives");
    assert_eq!((first.path(), &first.body()[..]), ("/r/1", &b"hi"[..]));
    // Held, not dropped: a dropped call answers and frees its slot.
    let mut held = vec![first];
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(call) = tunnel.next().await {
            held.push(call);
        }
    })
    .await;
    assert!(ended.is_ok(), "the host ends the tunnel");
    assert_eq!(held.len(), MAX_TUNNEL_IN_FLIGHT, "no call past the limit");
    let first = held.swap_remove(0);
    // Answering after the end is harmless, and the connection still works.
    first.respond(200, None, Bytes::from_static(b"late")).await;
    assert!(client.is_open());
    assert!(client.list("/").await.unwrap().is_empty());
}
