//! Everything either side decodes from a tunnel stream: frames under
//! arbitrary chunking, tunnel body payloads, and the reassembly of
//! interleaved requests (what the host takes from a possibly hostile guest)
//! and responses (what the guest takes from a possibly buggy host).
#![no_main]

use hearth_proto::tunnel::decode_body;
use hearth_proto::{
    FrameDecoder, FrameKind, TunnelAssembler, TunnelOpen, TunnelReady, TunnelRequestHead,
    TunnelResponseHead,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().copied().unwrap_or(1).max(1) as usize;
    let mut decoder = FrameDecoder::new(256 * 1024);
    let mut requests = TunnelAssembler::<TunnelRequestHead>::new(1 << 20, 16);
    let mut responses = TunnelAssembler::<TunnelResponseHead>::new(1 << 20, 16);
    let (mut requests_ok, mut responses_ok) = (true, true);
    for piece in data.chunks(split) {
        decoder.push(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    match frame.kind {
                        FrameKind::TunnelOpen => {
                            let _ = frame.parse_json::<TunnelOpen>();
                        }
                        FrameKind::TunnelReady => {
                            let _ = frame.parse_json::<TunnelReady>();
                        }
                        FrameKind::TunnelBody => {
                            let _ = decode_body(&frame.payload);
                        }
                        _ => {}
                    }
                    // After an error the stream is closed: stop feeding.
                    if requests_ok {
                        requests_ok = requests.push(frame.clone()).is_ok();
                        assert!(requests.pending() <= 16);
                    }
                    if responses_ok {
                        responses_ok = responses.push(frame).is_ok();
                        assert!(responses.pending() <= 16);
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = decoder.finish();
});
