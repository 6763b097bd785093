//! Files in a sandbox, on real VMs.

mod common;

use bytes::Bytes;
use common::{sh, TestHome};
use hearth_proto::{ErrorCode, FileType};
use sha2::{Digest, Sha256};

#[tokio::test(flavor = "multi_thread")]
async fn a_fifty_megabyte_binary_file_round_trips() {
    let t = TestHome::new();
    let sandbox = t.small().await;
    let mut data = vec![0u8; 50 << 20];
    let mut state = 0x9e3779b97f4a7c15u64;
    for chunk in data.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    let digest = hex::encode(Sha256::digest(&data));
    let written = sandbox
        .write_file("/root/data/blob.bin", Bytes::from(data))
        .await
        .unwrap();
    assert_eq!(written.bytes, 50 << 20);

    let inside = sh(&sandbox, "sha256sum /root/data/blob.bin")
        .await
        .stdout_text();
    assert_eq!(inside.split_whitespace().next(), Some(digest.as_str()));

    let back = sandbox
        .read_file_to_vec("/root/data/blob.bin", 64 << 20)
        .await
        .unwrap();
    assert_eq!(hex::encode(Sha256::digest(&back)), digest);
    sandbox.destroy().await;
    t.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn directory_operations_and_errors() {
    let t = TestHome::new();
    let sandbox = t.small().await;
    sandbox.mkdir("/work/a/b", true).await.unwrap();
    sandbox
        .write_file("/work/a/b/hello.txt", Bytes::from_static(b"hello"))
        .await
        .unwrap();
    sandbox.mkdir("/work/a/c", false).await.unwrap();

    let entries = sandbox.list("/work/a").await.unwrap();
    let names: Vec<_> = entries
        .iter()
        .map(|e| (e.name.as_str(), e.file_type))
        .collect();
    assert_eq!(names, vec![("b", FileType::Dir), ("c", FileType::Dir)]);
    let stat = sandbox.stat("/work/a/b/hello.txt").await.unwrap();
    assert_eq!((stat.file_type, stat.size), (FileType::File, 5));

    let missing = sandbox.stat("/work/nope").await.unwrap_err();
    assert_eq!(missing.guest_code(), Some(ErrorCode::NotFound), "{missing}");
    assert!(missing.to_string().contains("/work/nope"), "{missing}");
    let relative = sandbox.list("work").await.unwrap_err();
    assert_eq!(
        relative.guest_code(),
        Some(ErrorCode::InvalidArgument),
        "{relative}"
    );
    let not_empty = sandbox.remove("/work/a", false).await.unwrap_err();
    assert!(not_empty.guest_code().is_some(), "{not_empty}");

    sandbox.remove("/work/a", true).await.unwrap();
    assert_eq!(
        sandbox.stat("/work/a").await.unwrap_err().guest_code(),
        Some(ErrorCode::NotFound)
    );
    sandbox.destroy().await;
    t.assert_clean().await;
}
