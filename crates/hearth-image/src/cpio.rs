//! A writer for the "newc" cpio format, the one the Linux kernel unpacks as an initramfs.
//!
//! The format is simple enough that owning it beats a dependency: a 110-byte ASCII header
//! per entry, the NUL-terminated name, the data, each padded to 4 bytes, and a final
//! `TRAILER!!!` entry. Timestamps and owners are fixed (0) so the output is reproducible:
//! the same inputs give the same bytes, and so the same digest.

use std::collections::BTreeSet;
use std::io::{self, Write};

/// File type bits of `st_mode`.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// Writes a newc cpio archive entry by entry.
///
/// Paths are given absolute (`/lib/modules/...`) or relative; they are stored relative.
/// Missing parent directories are added automatically (mode 0755), because the kernel's
/// unpacker does not create them.
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    dirs: BTreeSet<String>,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive written to `out`.
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            next_ino: 1,
            dirs: BTreeSet::new(),
        }
    }

    /// Adds a directory (and its missing parents).
    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        if self.dirs.insert(path.clone()) {
            self.entry(&path, S_IFDIR | perm, 2, (0, 0), &[])?;
        }
        Ok(())
    }

    /// Adds a regular file with `data` as its contents.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        self.entry(&path, S_IFREG | perm, 1, (0, 0), data)
    }

    /// Adds a character device node with the given major and minor numbers.
    pub fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        self.entry(&path, S_IFCHR | perm, 1, (major, minor), &[])
    }

    /// Writes the trailer and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.ino_entry("TRAILER!!!", 0, 0, 1, (0, 0), &[])?;
        Ok(self.out)
    }

    fn parents(&mut self, path: &str) -> io::Result<()> {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if self.dirs.insert(prefix.clone()) {
                let p = prefix.clone();
                self.entry(&p, S_IFDIR | 0o755, 2, (0, 0), &[])?;
            }
        }
        Ok(())
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.ino_entry(name, ino, mode, nlink, rdev, data)
    }

    fn ino_entry(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio entry over 4 GiB"))?;
        let namesize = name.len() as u32 + 1;
        let fields = [
            ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
        ];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(110 + namesize as usize)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    fn pad(&mut self, len: usize) -> io::Result<()> {
        let n = (4 - len % 4) % 4;
        self.out.write_all(&[0u8; 3][..n])
    }
}

/// Strips leading `/`, rejects empty paths and `..` components.
fn normalize(path: &str) -> io::Result<String> {
    let p = path.trim_start_matches('/').trim_end_matches('/');
    if p.is_empty() || p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad cpio path {path:?}"),
        ));
    }
    Ok(p.to_string())
}

/// One entry read back from a newc archive (used by tests to check what was written).
#[cfg(test)]
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub name: String,
    pub mode: u32,
    pub rdev: (u32, u32),
    pub data: Vec<u8>,
}

/// Parses a newc archive up to its trailer.
#[cfg(test)]
pub fn read_archive(mut data: &[u8]) -> Result<Vec<Entry>, String> {
    fn align(off: usize) -> usize {
        (off + 3) & !3
    }
    let mut entries = Vec::new();
    loop {
        if data.len() < 110 || &data[..6] != b"070701" {
            return Err("bad header magic".into());
        }
        let field = |i: usize| -> Result<u32, String> {
            let s = std::str::from_utf8(&data[6 + i * 8..14 + i * 8]).map_err(|e| e.to_string())?;
            u32::from_str_radix(s, 16).map_err(|e| e.to_string())
        };
        let (mode, size, rmaj, rmin, namesize) = (
            field(1)?,
            field(6)? as usize,
            field(9)?,
            field(10)?,
            field(11)? as usize,
        );
        let name_end = 110 + namesize;
        let name = std::str::from_utf8(data.get(110..name_end - 1).ok_or("truncated name")?)
            .map_err(|e| e.to_string())?
            .to_string();
        let data_start = align(name_end);
        let body = data
            .get(data_start..data_start + size)
            .ok_or("truncated data")?
            .to_vec();
        data = &data[align(data_start + size).min(data.len())..];
        if name == "TRAILER!!!" {
            return Ok(entries);
        }
        entries.push(Entry {
            name,
            mode,
            rdev: (rmaj, rmin),
            data: body,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("/dev", 0o755).unwrap();
        w.char_device("/dev/console", 0o600, 5, 1).unwrap();
        w.file("/init", 0o755, b"#!/bin/sh\necho hi\n").unwrap();
        w.file("/lib/modules/6.1/kernel/a.ko", 0o644, b"abcde")
            .unwrap();
        w.dir("/lib", 0o755).unwrap(); // already added as a parent: not repeated
        w.finish().unwrap()
    }

    #[test]
    fn reads_back_with_own_reader() {
        let entries = read_archive(&sample()).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/6.1",
                "lib/modules/6.1/kernel",
                "lib/modules/6.1/kernel/a.ko"
            ]
        );
        assert_eq!(entries[1].mode, S_IFCHR | 0o600);
        assert_eq!(entries[1].rdev, (5, 1));
        assert_eq!(entries[2].data, b"#!/bin/sh\necho hi\n");
        assert_eq!(entries[2].mode, S_IFREG | 0o755);
        assert_eq!(entries[7].data, b"abcde");
    }

    #[test]
    fn rejects_bad_paths() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(w.file("/", 0o644, b"").is_err());
        assert!(w.file("/a/../b", 0o644, b"").is_err());
    }

    #[test]
    fn output_is_reproducible() {
        assert_eq!(sample(), sample());
    }

    #[test]
    fn gnu_cpio_lists_and_extracts_it() {
        if Command::new("cpio").arg("--version").output().is_err() {
            // A missing tool is not missing hardware: in CI this must fail.
            let in_ci = std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"));
            assert!(
                !in_ci,
                "CI is set, so this test must run, but `cpio` is not on PATH (install cpio)"
            );
            eprintln!(
                "SKIPPED gnu_cpio_lists_and_extracts_it: `cpio` is not on PATH (install cpio). \
                 With CI set this is a failure."
            );
            return;
        }
        let archive = sample();
        let run = |args: &[&str], dir: &std::path::Path| {
            let mut child = Command::new("cpio")
                .args(args)
                .current_dir(dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(&archive).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        let tmp = tempfile::tempdir().unwrap();
        let listing = run(&["-t", "--quiet"], tmp.path());
        assert!(listing.lines().any(|l| l == "dev/console"), "{listing}");
        assert!(listing.lines().any(|l| l == "lib/modules/6.1/kernel/a.ko"));
        // Extract without device nodes (mknod may be refused in containers).
        run(
            &[
                "-i",
                "-d",
                "--quiet",
                "--no-absolute-filenames",
                "init",
                "lib/*",
            ],
            tmp.path(),
        );
        assert_eq!(
            std::fs::read(tmp.path().join("lib/modules/6.1/kernel/a.ko")).unwrap(),
            b"abcde"
        );
        assert_eq!(
            std::fs::read(tmp.path().join("init")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
    }
}
