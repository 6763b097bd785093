//! The first bytes a (possibly hostile) program sends on an egress
//! connection, which the host reads for a TLS server name: any bytes, at
//! any length, give a verdict without panicking, and a verdict that asks
//! for more is only ever given below the limit.
#![no_main]

use hearth_net::sni::{client_hello, Hello, MAX_HELLO};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for end in [data.len() / 3, data.len() / 2, data.len()] {
        let verdict = client_hello(&data[..end]);
        assert!(end < MAX_HELLO || verdict != Hello::NeedMore);
    }
});
