//! The server name a TLS client asks for (SNI), read from the first bytes a
//! program sends, so the host can check it against the name the connection
//! was opened for: a program allowed to reach `api.example.com` must not
//! use that connection to ask the same front server for another site
//! (domain fronting), and a transparent connection opened for one name
//! must not carry a handshake for another.
//!
//! [`client_hello`] is pure and never reads past what it was given; it
//! says when it needs more bytes, up to [`MAX_HELLO`].

use tls_parser::{
    parse_tls_extensions, parse_tls_plaintext, SNIType, TlsExtension, TlsMessage,
    TlsMessageHandshake,
};

/// The most bytes read to find a ClientHello: one TLS record's header and
/// its largest plaintext body. A ClientHello spread over more records is
/// refused rather than buffered without end.
pub const MAX_HELLO: usize = 5 + (1 << 14);

/// What the first bytes of a connection say about TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// Not enough bytes yet to tell; read more (the buffer is below
    /// [`MAX_HELLO`]).
    NeedMore,
    /// Not TLS (no handshake record): nothing to check.
    NotTls,
    /// A ClientHello, with the server name it asks for, if any.
    ClientHello {
        /// The `host_name` of the SNI extension, lowercased, without a
        /// trailing dot.
        server_name: Option<String>,
    },
    /// A handshake record that is not a well-formed ClientHello, or one
    /// larger than [`MAX_HELLO`]: refused, since the name cannot be
    /// checked.
    Malformed(String),
}

/// TLS record type of a handshake.
const HANDSHAKE: u8 = 0x16;

/// Read the ClientHello at the start of `bytes`, the first bytes a program
/// sent on a connection.
pub fn client_hello(bytes: &[u8]) -> Hello {
    let Some(&first) = bytes.first() else {
        return Hello::NeedMore;
    };
    if first != HANDSHAKE {
        return Hello::NotTls;
    }
    if bytes.len() < 5 {
        // A record header's major version is 3; anything else is not TLS.
        if bytes.len() >= 2 && bytes[1] != 3 {
            return Hello::NotTls;
        }
        return Hello::NeedMore;
    }
    if bytes[1] != 3 {
        return Hello::NotTls;
    }
    let length = u16::from_be_bytes([bytes[3], bytes[4]]) as usize;
    if 5 + length > MAX_HELLO {
        return Hello::Malformed(format!(
            "a TLS record of {length} bytes, more than TLS allows"
        ));
    }
    if bytes.len() < 5 + length {
        return Hello::NeedMore;
    }
    let (_, record) = match parse_tls_plaintext(&bytes[..5 + length]) {
        Ok(parsed) => parsed,
        // A ClientHello split over records: its first record parses as
        // incomplete.
        Err(_) => {
            return Hello::Malformed("a TLS handshake that is not a whole ClientHello".into())
        }
    };
    let Some(TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello))) = record.msg.first()
    else {
        return Hello::Malformed("a TLS handshake that does not start with a ClientHello".into());
    };
    let Some(extensions) = hello.ext else {
        return Hello::ClientHello { server_name: None };
    };
    let extensions = match parse_tls_extensions(extensions) {
        Ok((_, extensions)) => extensions,
        Err(_) => return Hello::Malformed("a ClientHello with malformed extensions".into()),
    };
    for extension in extensions {
        if let TlsExtension::SNI(names) = extension {
            for (kind, name) in names {
                if kind == SNIType::HostName {
                    return match std::str::from_utf8(name) {
                        Ok(name) => Hello::ClientHello {
                            server_name: Some(
                                name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase(),
                            ),
                        },
                        Err(_) => Hello::Malformed("a server name that is not text".into()),
                    };
                }
            }
        }
    }
    Hello::ClientHello { server_name: None }
}

/// What the host does with the first bytes a program sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerNameCheck {
    /// Hold them and wait for more.
    NeedMore,
    /// Let them (and the rest of the connection) through.
    Pass,
    /// End the connection before anything reaches the destination, and
    /// why.
    Refuse(String),
}

/// Check the first bytes a program sent on a connection opened for `host`:
/// a TLS ClientHello must name `host` (or no name at all). A connection
/// opened for an address (allowed by an address entry, or in `open` mode)
/// may carry any name: there is no name to hold it to.
pub fn check_server_name(held: &[u8], host: &str) -> ServerNameCheck {
    match client_hello(held) {
        Hello::NeedMore => ServerNameCheck::NeedMore,
        Hello::NotTls | Hello::ClientHello { server_name: None } => ServerNameCheck::Pass,
        Hello::ClientHello {
            server_name: Some(name),
        } => {
            let bare = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            let expected = bare.strip_suffix('.').unwrap_or(bare).to_ascii_lowercase();
            if bare.parse::<std::net::IpAddr>().is_ok() || name == expected {
                ServerNameCheck::Pass
            } else {
                ServerNameCheck::Refuse(format!(
                    "the TLS server name {name:?} is not {expected:?}, the name the connection was opened for"
                ))
            }
        }
        Hello::Malformed(why) => {
            ServerNameCheck::Refuse(format!("the TLS handshake could not be checked: {why}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A minimal TLS 1.2 ClientHello record asking for `name` (none: no SNI
    /// extension).
    fn hello_for(name: Option<&str>) -> Vec<u8> {
        let mut extensions = Vec::new();
        if let Some(name) = name {
            let name = name.as_bytes();
            let mut list = vec![0u8];
            list.extend((name.len() as u16).to_be_bytes());
            list.extend(name);
            let mut data = (list.len() as u16).to_be_bytes().to_vec();
            data.extend(list);
            extensions.extend(0u16.to_be_bytes());
            extensions.extend((data.len() as u16).to_be_bytes());
            extensions.extend(data);
        }
        let mut body = vec![3, 3];
        body.extend([7u8; 32]); // random
        body.push(0); // session id
        body.extend(2u16.to_be_bytes());
        body.extend([0x13, 0x01]); // one cipher suite
        body.extend([1, 0]); // null compression
        body.extend((extensions.len() as u16).to_be_bytes());
        body.extend(extensions);
        let mut handshake = vec![1];
        handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
        handshake.extend(body);
        let mut record = vec![HANDSHAKE, 3, 1];
        record.extend((handshake.len() as u16).to_be_bytes());
        record.extend(handshake);
        record
    }

    #[test]
    fn the_server_name_is_read_from_a_whole_hello() {
        assert_eq!(
            client_hello(&hello_for(Some("API.Example.com."))),
            Hello::ClientHello {
                server_name: Some("api.example.com".into())
            }
        );
        assert_eq!(
            client_hello(&hello_for(None)),
            Hello::ClientHello { server_name: None }
        );
    }

    #[test]
    fn a_partial_hello_asks_for_more_and_other_protocols_are_not_tls() {
        let hello = hello_for(Some("a.test"));
        for cut in 0..hello.len() {
            assert_eq!(client_hello(&hello[..cut]), Hello::NeedMore, "cut at {cut}");
        }
        assert_eq!(client_hello(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(client_hello(b"SSH-2.0-OpenSSH"), Hello::NotTls);
        assert_eq!(client_hello(&[HANDSHAKE, 1]), Hello::NotTls);
    }

    #[test]
    fn a_handshake_that_is_not_a_hello_is_malformed() {
        let mut hello = hello_for(Some("a.test"));
        hello[5] = 2; // ServerHello
        assert!(matches!(client_hello(&hello), Hello::Malformed(_)));
        assert!(matches!(
            client_hello(&[HANDSHAKE, 3, 1, 0xff, 0xff]),
            Hello::Malformed(_)
        ));
    }

    #[test]
    fn a_hello_must_name_the_connections_host() {
        let hello = hello_for(Some("svc.test"));
        assert_eq!(
            check_server_name(&hello, "SVC.test."),
            ServerNameCheck::Pass
        );
        assert_eq!(
            check_server_name(&hello, "127.0.0.1"),
            ServerNameCheck::Pass
        );
        assert_eq!(check_server_name(&hello, "[::1]"), ServerNameCheck::Pass);
        assert!(matches!(
            check_server_name(&hello, "other.test"),
            ServerNameCheck::Refuse(why) if why.contains("\"svc.test\"") && why.contains("\"other.test\"")
        ));
        assert_eq!(
            check_server_name(&hello[..9], "other.test"),
            ServerNameCheck::NeedMore
        );
        assert_eq!(
            check_server_name(&hello_for(None), "other.test"),
            ServerNameCheck::Pass
        );
        assert_eq!(
            check_server_name(b"GET / HTTP/1.1\r\n", "other.test"),
            ServerNameCheck::Pass
        );
        assert!(matches!(
            check_server_name(&[0x16, 3, 1, 0xff, 0xff], "svc.test"),
            ServerNameCheck::Refuse(_)
        ));
    }

    #[test]
    fn a_real_clients_hello_names_its_server() {
        use std::sync::Arc;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut client =
            rustls::ClientConnection::new(Arc::new(config), "svc.example.org".try_into().unwrap())
                .unwrap();
        let mut bytes = Vec::new();
        client.write_tls(&mut bytes).unwrap();
        assert_eq!(
            client_hello(&bytes),
            Hello::ClientHello {
                server_name: Some("svc.example.org".into())
            }
        );
    }

    proptest! {
        #[test]
        fn never_panics_and_never_needs_more_past_the_limit(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let verdict = client_hello(&bytes);
            if bytes.len() >= MAX_HELLO {
                prop_assert_ne!(verdict, Hello::NeedMore);
            }
        }

        #[test]
        fn any_name_survives_the_round_trip(name in "[a-z0-9]{1,20}(\\.[a-z0-9]{1,20}){0,4}") {
            prop_assert_eq!(
                client_hello(&hello_for(Some(&name))),
                Hello::ClientHello { server_name: Some(name.clone()) }
            );
        }

        #[test]
        fn a_mangled_hello_is_never_read_past_its_end(name in "[a-z]{1,30}", at in 0usize..80, byte in any::<u8>()) {
            let mut hello = hello_for(Some(&name));
            let at = at % hello.len();
            hello[at] = byte;
            // Whatever it decides, it decides without panicking.
            let _ = client_hello(&hello);
        }
    }
}
