//! Random identifiers: sandbox ids, channel handshake nonces, and (in the
//! server) API tokens.
//!
//! Every byte comes from the operating system's random number generator
//! (`getrandom(2)`). If that fails, this panics: an id, nonce or token that
//! cannot be random must not quietly become predictable, and a kernel that
//! refuses `getrandom` (a seccomp filter, no `/dev/urandom` on a pre-3.17
//! kernel) is a broken host that no caller could work around. This is the
//! choice `uuid::Uuid::new_v4` and `rand::thread_rng` make too, and it keeps
//! every caller (some outside fallible code) simple.

/// `bytes` random bytes from the operating system as lowercase hex.
///
/// # Panics
///
/// If the operating system's random number generator fails.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    fill_random(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Fill `buf` from the operating system's random number generator.
///
/// # Panics
///
/// If the operating system's random number generator fails.
fn fill_random(buf: &mut [u8]) {
    if let Err(error) = getrandom::fill(buf) {
        panic!(
            "the operating system's random number generator failed ({error}); \
             refusing to make a predictable id, nonce or token"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_of_the_requested_length() {
        let id = random_hex(6);
        assert_eq!(id.len(), 12);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(random_hex(8), random_hex(8));
        assert_eq!(random_hex(0), "");
    }

    #[test]
    fn bytes_are_not_constant() {
        // 32 random bytes are all equal with probability 2^-248.
        let mut buf = [0u8; 32];
        fill_random(&mut buf);
        assert!(buf.iter().any(|&b| b != buf[0]), "{buf:?}");
    }
}
