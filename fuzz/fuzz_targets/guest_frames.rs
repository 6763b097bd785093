//! Everything the host decodes from a (possibly hostile) guest's exec
//! stream: frames under arbitrary chunking, then their JSON payloads.
#![no_main]

use hearth_proto::{ErrorBody, ExecStarted, ExitReport, FrameDecoder, FrameKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().copied().unwrap_or(1).max(1) as usize;
    let mut decoder = FrameDecoder::new(64 * 1024);
    for piece in data.chunks(split) {
        decoder.push(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    let _ = match frame.kind {
                        FrameKind::Started => frame.parse_json::<ExecStarted>().map(|_| ()),
                        FrameKind::Exit => frame.parse_json::<ExitReport>().map(|_| ()),
                        FrameKind::Error => frame.parse_json::<ErrorBody>().map(|_| ()),
                        _ => Ok(()),
                    };
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = decoder.finish();
});
