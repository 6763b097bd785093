//! Arbitrary bytes as a DNS query to the guest's stub (the transparent
//! egress path): parsing must never panic, an answer stays within a query's
//! size plus one record, and the fake-address pool never grows past its size.
#![no_main]

use hearth_guest::dns::{parse_query, respond, FakePool};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_query(data);
    let mut pool = FakePool::new(4);
    if let Some(answer) = respond(data, &mut pool) {
        assert!(answer.len() <= data.len() + 16);
    }
    assert!(pool.len() <= 4);
});
