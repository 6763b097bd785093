//! Just enough ELF parsing to tell a static executable from a dynamic one.
//!
//! The guest agent runs as `/init` in an initramfs that holds no shared libraries and no
//! dynamic loader, so a binary with a `PT_INTERP` program header would fail to start with
//! a confusing "No such file or directory" from the kernel. We check before packing it.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::error::{ImageError, IoContext, Result};

const PT_INTERP: u32 = 3;

/// Returns `Ok(true)` if `path` is an ELF executable without an interpreter (static),
/// `Ok(false)` if it requests one (dynamically linked), and an error if it is not ELF.
pub fn is_static_elf(path: &Path) -> Result<bool> {
    let mut data = Vec::new();
    File::open(path)
        .ctx(|| format!("opening {}", path.display()))?
        // Program headers sit near the start; 64 KiB is far more than any sane binary needs.
        .take(64 * 1024)
        .read_to_end(&mut data)
        .ctx(|| format!("reading {}", path.display()))?;
    has_interpreter(&data)
        .map(|interp| !interp)
        .map_err(|reason| ImageError::NotElf {
            path: path.to_path_buf(),
            reason,
        })
}

/// Parses the ELF header and program headers in `data`; true if a `PT_INTERP` is present.
fn has_interpreter(data: &[u8]) -> std::result::Result<bool, String> {
    if data.len() < 52 || &data[..4] != b"\x7fELF" {
        return Err("no ELF magic".into());
    }
    let is64 = match data[4] {
        1 => false,
        2 => true,
        c => return Err(format!("unknown ELF class {c}")),
    };
    let little = match data[5] {
        1 => true,
        2 => false,
        e => return Err(format!("unknown ELF data encoding {e}")),
    };
    let rd = |off: usize, len: usize| -> std::result::Result<u64, String> {
        let bytes = data
            .get(off..off + len)
            .ok_or_else(|| format!("truncated at offset {off}"))?;
        let mut v = 0u64;
        for i in 0..len {
            let b = if little { bytes[len - 1 - i] } else { bytes[i] };
            v = (v << 8) | u64::from(b);
        }
        Ok(v)
    };
    let (phoff, phentsize, phnum) = if is64 {
        (rd(32, 8)?, rd(54, 2)?, rd(56, 2)?)
    } else {
        (rd(28, 4)?, rd(42, 2)?, rd(44, 2)?)
    };
    for i in 0..phnum {
        let off = usize::try_from(phoff + i * phentsize).map_err(|e| e.to_string())?;
        if rd(off, 4)? as u32 == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal little-endian ELF64 header with the given program header types.
    fn elf64(types: &[u32]) -> Vec<u8> {
        let mut d = vec![0u8; 64];
        d[..4].copy_from_slice(b"\x7fELF");
        d[4] = 2;
        d[5] = 1;
        d[32..40].copy_from_slice(&64u64.to_le_bytes());
        d[54..56].copy_from_slice(&56u16.to_le_bytes());
        d[56..58].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for t in types {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&t.to_le_bytes());
            d.extend(ph);
        }
        d
    }

    #[test]
    fn detects_interpreter() {
        assert_eq!(has_interpreter(&elf64(&[6, 3, 1])), Ok(true));
        assert_eq!(has_interpreter(&elf64(&[1, 1, 4])), Ok(false));
        assert_eq!(has_interpreter(&elf64(&[])), Ok(false));
    }

    #[test]
    fn rejects_non_elf_and_truncated() {
        assert!(has_interpreter(b"#!/bin/sh\necho hi\n").is_err());
        let mut d = elf64(&[1, 3]);
        d.truncate(64 + 20);
        assert!(has_interpreter(&d).is_err());
    }

    #[test]
    fn host_binaries() {
        // /bin/sh on Debian is dynamically linked dash.
        assert!(!is_static_elf(Path::new("/bin/sh")).unwrap());
        let err = is_static_elf(Path::new("/etc/passwd"));
        assert!(matches!(err, Err(ImageError::NotElf { .. })));
    }
}
