//! The transparent path's DNS stub: answers a program's A queries with
//! fake addresses that stand for names, so that a TCP connection to one is
//! asked of the host **by name** and the host resolves and checks the real
//! name (the guest never learns a real address, and DNS rebinding inside
//! the guest is meaningless).
//!
//! This module is pure: [`respond`] turns one query datagram into at most
//! one answer datagram, with a [`FakePool`] as its only state. It parses
//! untrusted bytes, so it is hand-written, bounded and total: every length
//! is checked before use, names have at most [`MAX_NAME`] bytes, there is
//! no recursion and no compression pointer is followed (a query has no
//! reason to carry one). A small parser keeps the static agent small; the
//! DNS crates that would fit (`simple-dns`, `hickory-proto`) bring far more
//! than one question and one answer need.
//!
//! Answers:
//! - `A`/`IN`: one record with the name's fake address, [`ANSWER_TTL`];
//! - `AAAA`: no records (`NOERROR`, "NODATA"): the VM has no IPv6 route, and
//!   an empty answer makes resolvers fall back to `A` at once;
//! - any other type or class: `NOTIMP`; a name with characters no host name
//!   has: `REFUSED`;
//! - a query with more or fewer than one question, or a bad name: `FORMERR`;
//! - a datagram too short for a header, or a response: dropped (no answer).

use std::collections::HashMap;
use std::net::Ipv4Addr;

/// Longest name accepted, in presentation form without the final dot.
pub const MAX_NAME: usize = 253;

/// Time to live of an answer, in seconds: short, because a fake address is
/// reused for another name once the pool has given out all of its own.
pub const ANSWER_TTL: u32 = 30;

/// Fake addresses handed out by default before the oldest is reused.
pub const DEFAULT_POOL_SIZE: u32 = 4096;

/// The reserved range fake addresses come from: 198.18.0.0/15 (RFC 2544,
/// benchmarking), which no real destination uses.
pub const POOL_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
/// Prefix length of [`POOL_NET`].
pub const POOL_PREFIX: u8 = 15;
/// First fake address: 198.18.0.0/24 is kept for the agent's own
/// addresses (the device, the stub).
const POOL_FIRST: u32 = u32::from_be_bytes([198, 18, 1, 0]);
/// Addresses available in the range after the reserved /24.
const POOL_ROOM: u32 = (1 << (32 - POOL_PREFIX as u32)) - 256;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

/// Response codes the stub answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    /// An answer (possibly empty).
    NoError = 0,
    /// The query is malformed.
    FormErr = 1,
    /// The stub does not do this (type, class or opcode).
    NotImp = 4,
    /// The stub will not answer for this name.
    Refused = 5,
}

/// One parsed question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The query's id, echoed in the answer.
    pub id: u16,
    /// Whether the program asked for recursion (echoed).
    pub recursion_desired: bool,
    /// The name, lowercase, without the final dot; `None` when it has
    /// characters no host name has.
    pub name: Option<String>,
    /// QTYPE.
    pub qtype: u16,
    /// QCLASS.
    pub qclass: u16,
    /// The question section as sent (echoed byte for byte, so resolvers
    /// that randomise the case of names accept the answer).
    pub question: Vec<u8>,
}

/// Why a datagram gets no [`Query`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Not worth an answer: shorter than a header, or a response.
    Drop,
    /// Answer with this code and no question.
    Reply {
        /// The query's id.
        id: u16,
        /// The code.
        rcode: Rcode,
    },
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// Parse a query datagram with exactly one question.
pub fn parse_query(packet: &[u8]) -> Result<Query, ParseError> {
    if packet.len() < 12 {
        return Err(ParseError::Drop);
    }
    let id = be16(packet, 0).ok_or(ParseError::Drop)?;
    let flags = be16(packet, 2).ok_or(ParseError::Drop)?;
    if flags & 0x8000 != 0 {
        return Err(ParseError::Drop);
    }
    let opcode = (flags >> 11) & 0xf;
    if opcode != 0 {
        return Err(ParseError::Reply {
            id,
            rcode: Rcode::NotImp,
        });
    }
    let formerr = ParseError::Reply {
        id,
        rcode: Rcode::FormErr,
    };
    if be16(packet, 4) != Some(1) || be16(packet, 6) != Some(0) || be16(packet, 8) != Some(0) {
        return Err(formerr);
    }
    // The name: labels up to 63 bytes, at most MAX_NAME + 2 bytes in all
    // on the wire, ending with the root label; no compression.
    let mut at = 12;
    let mut name = String::new();
    let mut valid = true;
    loop {
        let len = *packet.get(at).ok_or(formerr.clone())? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 || at - 12 + len > MAX_NAME + 1 {
            return Err(formerr);
        }
        let label = packet.get(at..at + len).ok_or(formerr.clone())?;
        at += len;
        if !name.is_empty() {
            name.push('.');
        }
        for &byte in label {
            let c = byte.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == b'-' || c == b'_' {
                name.push(c as char);
            } else {
                valid = false;
            }
        }
    }
    let qtype = be16(packet, at).ok_or(formerr.clone())?;
    let qclass = be16(packet, at + 2).ok_or(formerr)?;
    let question = packet[12..at + 4].to_vec();
    Ok(Query {
        id,
        recursion_desired: flags & 0x0100 != 0,
        name: (valid && !name.is_empty()).then_some(name),
        qtype,
        qclass,
        question,
    })
}

fn header(id: u16, recursion_desired: bool, rcode: Rcode, questions: u16, answers: u16) -> Vec<u8> {
    // QR, AA and RA set; the opcode is 0.
    let mut flags: u16 = 0x8000 | 0x0400 | 0x0080 | rcode as u16;
    if recursion_desired {
        flags |= 0x0100;
    }
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&questions.to_be_bytes());
    out.extend_from_slice(&answers.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out
}

/// Answer one query datagram; `None` when it deserves no answer.
pub fn respond(packet: &[u8], pool: &mut FakePool) -> Option<Vec<u8>> {
    let query = match parse_query(packet) {
        Ok(query) => query,
        Err(ParseError::Drop) => return None,
        Err(ParseError::Reply { id, rcode }) => return Some(header(id, false, rcode, 0, 0)),
    };
    let reply = |rcode, answers| {
        let mut out = header(query.id, query.recursion_desired, rcode, 1, answers);
        out.extend_from_slice(&query.question);
        out
    };
    if query.qclass != CLASS_IN || !matches!(query.qtype, TYPE_A | TYPE_AAAA) {
        return Some(reply(Rcode::NotImp, 0));
    }
    let Some(name) = &query.name else {
        return Some(reply(Rcode::Refused, 0));
    };
    if query.qtype == TYPE_AAAA {
        return Some(reply(Rcode::NoError, 0));
    }
    let address = pool.address_for(name);
    let mut out = reply(Rcode::NoError, 1);
    // The owner is the question's name, by a pointer to offset 12.
    out.extend_from_slice(&[0xc0, 12]);
    out.extend_from_slice(&TYPE_A.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ANSWER_TTL.to_be_bytes());
    out.extend_from_slice(&4u16.to_be_bytes());
    out.extend_from_slice(&address.octets());
    Some(out)
}

/// Whether `address` is in the fake range (given out or not).
pub fn is_fake(address: Ipv4Addr) -> bool {
    let value = u32::from(address);
    (POOL_FIRST..POOL_FIRST + POOL_ROOM).contains(&value)
}

/// Fake addresses and the names they stand for: a fixed number of slots,
/// given out in turn, so that once all are used the oldest name loses its
/// address to the next new one. Memory is bounded by the slot count
/// (each name at most [`MAX_NAME`] bytes).
#[derive(Debug)]
pub struct FakePool {
    /// Slot `i` is address `POOL_FIRST + i`, and the name it stands for.
    slots: Vec<Option<String>>,
    by_name: HashMap<String, u32>,
    /// The slot the next new name takes.
    next: u32,
}

impl Default for FakePool {
    fn default() -> Self {
        Self::new(DEFAULT_POOL_SIZE)
    }
}

impl FakePool {
    /// A pool of `size` addresses (at least 1, at most what the range
    /// holds).
    pub fn new(size: u32) -> Self {
        let size = size.clamp(1, POOL_ROOM);
        Self {
            slots: vec![None; size as usize],
            by_name: HashMap::new(),
            next: 0,
        }
    }

    /// The fake address of `name`, giving it one (the oldest slot) if it
    /// has none.
    pub fn address_for(&mut self, name: &str) -> Ipv4Addr {
        if let Some(&slot) = self.by_name.get(name) {
            return Ipv4Addr::from(POOL_FIRST + slot);
        }
        let slot = self.next;
        self.next = (self.next + 1) % self.slots.len() as u32;
        if let Some(old) = self.slots[slot as usize].replace(name.to_owned()) {
            self.by_name.remove(&old);
        }
        self.by_name.insert(name.to_owned(), slot);
        Ipv4Addr::from(POOL_FIRST + slot)
    }

    /// The name `address` stands for, if it is a fake address given out
    /// and not reused since.
    pub fn name_of(&self, address: Ipv4Addr) -> Option<&str> {
        let slot = u32::from(address).checked_sub(POOL_FIRST)?;
        self.slots.get(slot as usize)?.as_deref()
    }

    /// Names currently holding an address.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no name holds an address.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut out = vec![];
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.') {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out.extend_from_slice(&qtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out
    }

    fn rcode(answer: &[u8]) -> u8 {
        answer[3] & 0xf
    }

    fn answers(answer: &[u8]) -> u16 {
        u16::from_be_bytes([answer[6], answer[7]])
    }

    #[test]
    fn a_query_gets_a_fake_address_that_maps_back_to_the_name() {
        let mut pool = FakePool::default();
        let q = query(0x1234, "Svc.Test", TYPE_A);
        let answer = respond(&q, &mut pool).unwrap();
        assert_eq!(&answer[..2], &[0x12, 0x34]);
        assert_eq!(answer[2] & 0x80, 0x80, "a response");
        assert_eq!(answer[2] & 0x01, 0x01, "RD echoed");
        assert_eq!(rcode(&answer), 0);
        assert_eq!(answers(&answer), 1);
        // The question is echoed as sent, case included.
        assert_eq!(&answer[12..q.len()], &q[12..]);
        let address = Ipv4Addr::new(
            answer[answer.len() - 4],
            answer[answer.len() - 3],
            answer[answer.len() - 2],
            answer[answer.len() - 1],
        );
        assert!(is_fake(address));
        assert_eq!(pool.name_of(address), Some("svc.test"));
        // The same name keeps its address.
        let again = respond(&query(1, "svc.test", TYPE_A), &mut pool).unwrap();
        assert_eq!(&again[again.len() - 4..], &address.octets());
    }

    #[test]
    fn aaaa_is_nodata_and_other_types_are_notimp() {
        let mut pool = FakePool::default();
        let aaaa = respond(&query(7, "svc.test", TYPE_AAAA), &mut pool).unwrap();
        assert_eq!((rcode(&aaaa), answers(&aaaa)), (0, 0));
        let mx = respond(&query(7, "svc.test", 15), &mut pool).unwrap();
        assert_eq!((rcode(&mx), answers(&mx)), (Rcode::NotImp as u8, 0));
        assert!(pool.is_empty(), "only A queries take an address");
    }

    #[test]
    fn odd_names_are_refused_and_malformed_queries_are_formerr_or_dropped() {
        let mut pool = FakePool::default();
        let odd = respond(&query(1, "a b.test", TYPE_A), &mut pool).unwrap();
        assert_eq!(rcode(&odd), Rcode::Refused as u8);
        // The root name is no host.
        let root = respond(
            &[0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1],
            &mut pool,
        );
        assert_eq!(rcode(&root.unwrap()), Rcode::Refused as u8);
        // Too short for a header; a response.
        assert_eq!(respond(&[0; 11], &mut pool), None);
        let mut response = query(1, "svc.test", TYPE_A);
        response[2] |= 0x80;
        assert_eq!(respond(&response, &mut pool), None);
        // Two questions; a truncated name; a compression pointer; a label
        // past 63 bytes.
        let mut two = query(1, "svc.test", TYPE_A);
        two[5] = 2;
        assert_eq!(rcode(&respond(&two, &mut pool).unwrap()), 1);
        let q = query(1, "svc.test", TYPE_A);
        assert_eq!(rcode(&respond(&q[..16], &mut pool).unwrap()), 1);
        let mut pointer = q[..12].to_vec();
        pointer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(rcode(&respond(&pointer, &mut pool).unwrap()), 1);
        let long = query(1, &"a".repeat(64), TYPE_A);
        assert_eq!(rcode(&respond(&long, &mut pool).unwrap()), 1);
        // A name past 253 bytes.
        let huge = query(1, &vec!["a".repeat(63); 5].join("."), TYPE_A);
        assert_eq!(rcode(&respond(&huge, &mut pool).unwrap()), 1);
        // Another opcode.
        let mut status = query(1, "svc.test", TYPE_A);
        status[2] |= 2 << 3;
        assert_eq!(
            rcode(&respond(&status, &mut pool).unwrap()),
            Rcode::NotImp as u8
        );
        assert!(pool.is_empty());
    }

    #[test]
    fn the_oldest_name_loses_its_address_when_the_pool_is_full() {
        let mut pool = FakePool::new(2);
        let a = pool.address_for("a.test");
        let b = pool.address_for("b.test");
        assert_ne!(a, b);
        let c = pool.address_for("c.test");
        assert_eq!(c, a, "the oldest slot is reused");
        assert_eq!(pool.name_of(a), Some("c.test"));
        assert_eq!(pool.name_of(b), Some("b.test"));
        assert_eq!(pool.len(), 2);
        assert_eq!(pool.address_for("b.test"), b);
        assert_eq!(pool.name_of(Ipv4Addr::new(198, 18, 0, 2)), None);
        assert_eq!(pool.name_of(Ipv4Addr::new(10, 0, 0, 1)), None);
        assert!(!is_fake(Ipv4Addr::new(198, 18, 0, 2)));
        assert!(is_fake(Ipv4Addr::new(198, 19, 255, 255)));
        assert!(!is_fake(Ipv4Addr::new(198, 20, 0, 0)));
    }

    proptest! {
        #[test]
        fn any_bytes_get_at_most_a_bounded_answer(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut pool = FakePool::new(8);
            if let Some(answer) = respond(&bytes, &mut pool) {
                // Header + echoed question + one A record at most.
                prop_assert!(answer.len() <= bytes.len() + 16);
                prop_assert_eq!(&answer[..2], &bytes[..2]);
            }
            prop_assert!(pool.len() <= 8);
        }

        #[test]
        fn every_host_name_round_trips(labels in proptest::collection::vec("[a-z0-9][a-z0-9-]{0,20}", 1..5)) {
            let name = labels.join(".");
            let mut pool = FakePool::new(16);
            let answer = respond(&query(9, &name, TYPE_A), &mut pool).unwrap();
            let octets: [u8; 4] = answer[answer.len() - 4..].try_into().unwrap();
            prop_assert_eq!(pool.name_of(Ipv4Addr::from(octets)), Some(name.as_str()));
        }

        #[test]
        fn the_pool_never_holds_more_than_its_size(names in proptest::collection::vec("[a-z]{1,8}", 0..200), size in 1u32..32) {
            let mut pool = FakePool::new(size);
            for name in &names {
                let address = pool.address_for(name);
                prop_assert!(is_fake(address));
                prop_assert_eq!(pool.name_of(address), Some(name.as_str()));
            }
            prop_assert!(pool.len() <= size as usize);
        }
    }
}
