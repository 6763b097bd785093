//! What a run is launched from: its pinned program (a set of files and the
//! entry to run) and how each launch is shaped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::canonical_json;

/// Largest program, all files together.
pub const MAX_PROGRAM_BYTES: u64 = 64 << 20;
/// Most files in one program.
pub const MAX_PROGRAM_FILES: usize = 10_000;
/// Where a program's files are put in the VM, and its working directory.
pub const PROGRAM_DIR: &str = "/work";

/// A program: its files by relative path, and the file to run. Stored as
/// the canonical JSON of this struct, so the same files and entry always
/// have the same digest, and every launch runs exactly those bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Program {
    /// Relative path → contents, hex-free: base64 in JSON.
    #[serde(with = "files_b64")]
    pub files: BTreeMap<String, Vec<u8>>,
    /// The file to run, one of `files`.
    pub entry: String,
}

/// Why a program is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProgramError {
    /// It has no files.
    #[error("the program has no files; give a file or a directory with at least one file")]
    Empty,
    /// Past the size limit.
    #[error("the program is {got} bytes, more than the {max} allowed; leave data out of it and fetch it from a step, or persist it")]
    TooLarge {
        /// Its size.
        got: u64,
        /// The limit.
        max: u64,
    },
    /// Too many files.
    #[error("the program has {0} files, more than the {MAX_PROGRAM_FILES} allowed")]
    TooManyFiles(usize),
    /// A path that is absolute, empty, or climbs out.
    #[error("program file path {0:?} is not a plain relative path (no leading /, no .. or . parts, no empty parts)")]
    BadPath(String),
    /// The entry is not one of the files.
    #[error("the program's entry {entry:?} is not one of its files ({files})")]
    NoEntry {
        /// The entry.
        entry: String,
        /// Some of the files there are.
        files: String,
    },
    /// Stored bytes that do not decode.
    #[error("stored program is unreadable: {0}")]
    Corrupt(String),
}

impl Program {
    /// Check the program's shape.
    pub fn check(&self) -> Result<(), ProgramError> {
        if self.files.is_empty() {
            return Err(ProgramError::Empty);
        }
        if self.files.len() > MAX_PROGRAM_FILES {
            return Err(ProgramError::TooManyFiles(self.files.len()));
        }
        let size: u64 = self.files.values().map(|f| f.len() as u64).sum();
        if size > MAX_PROGRAM_BYTES {
            return Err(ProgramError::TooLarge {
                got: size,
                max: MAX_PROGRAM_BYTES,
            });
        }
        for path in self.files.keys() {
            check_path(path)?;
        }
        if !self.files.contains_key(&self.entry) {
            let files: Vec<_> = self.files.keys().take(5).cloned().collect();
            return Err(ProgramError::NoEntry {
                entry: self.entry.clone(),
                files: files.join(", "),
            });
        }
        Ok(())
    }

    /// The bytes it is stored as (canonical JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        // A map of strings and a string: serializing cannot fail.
        let value = serde_json::to_value(self).unwrap_or_default();
        canonical_json(&value).into_bytes()
    }

    /// Decode stored bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProgramError> {
        serde_json::from_slice(bytes).map_err(|e| ProgramError::Corrupt(e.to_string()))
    }

    /// The same files with another entry (a child run's program).
    pub fn with_entry(&self, entry: &str) -> Result<Self, ProgramError> {
        let program = Program {
            files: self.files.clone(),
            entry: entry.trim_start_matches("./").to_string(),
        };
        program.check()?;
        Ok(program)
    }

    /// The command that runs the entry installed in `dir`: `python3` for
    /// `.py`, `sh` for `.sh`, else the file itself.
    pub fn default_command(&self, dir: &str) -> Vec<String> {
        let path = format!("{dir}/{}", self.entry);
        if self.entry.ends_with(".py") {
            vec!["python3".into(), "-u".into(), path]
        } else if self.entry.ends_with(".sh") {
            vec!["sh".into(), path]
        } else {
            vec![path]
        }
    }
}

fn check_path(path: &str) -> Result<(), ProgramError> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.len() > 1024
        || path.contains('\0')
        || path
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..");
    if bad {
        return Err(ProgramError::BadPath(path.to_string()));
    }
    Ok(())
}

mod files_b64 {
    use std::collections::BTreeMap;

    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        files: &BTreeMap<String, Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let encoded: BTreeMap<&String, String> = files
            .iter()
            .map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v)))
            .collect();
        encoded.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
        let encoded = BTreeMap::<String, String>::deserialize(d)?;
        encoded
            .into_iter()
            .map(|(k, v)| {
                base64::engine::general_purpose::STANDARD
                    .decode(v.as_bytes())
                    .map(|bytes| (k.clone(), bytes))
                    .map_err(|e| serde::de::Error::custom(format!("file {k:?}: {e}")))
            })
            .collect()
    }
}

/// How a run's launches are shaped: what each VM gets and how crashes are
/// retried. Stored with the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunSpec {
    /// The command run in the VM, in the program's directory; empty:
    /// [`Program::default_command`].
    pub command: Vec<String>,
    /// Guest image.
    pub image: String,
    /// Guest memory, MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Longest one launch may run, ms (`None`: no limit).
    pub timeout_ms: Option<u64>,
    /// Relaunches allowed after the program or its VM crashed.
    pub max_restarts: u32,
    /// Wait before the first relaunch, ms; doubled each time, at most
    /// [`RunSpec::max_restart_backoff_ms`].
    pub restart_backoff_ms: u64,
    /// Longest wait before a relaunch, ms.
    pub max_restart_backoff_ms: u64,
    /// Environment of the program.
    pub env: BTreeMap<String, String>,
    /// Whether the VM's files survive it.
    pub workspace: WorkspaceMode,
    /// What each launch's programs may reach on the network; none when
    /// absent. Checked when the run starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<RunNetwork>,
}

/// A run's network, as its start asked for it (limits apply to each
/// launch's VM, unset ones take the node's defaults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunNetwork {
    /// `none`, `allowlist` or `open`.
    pub mode: String,
    /// The allowlist's entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Most bytes per second, both ways together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
    /// Most bytes over a launch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Most connections open at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
}

/// What becomes of the files a run's program writes in its VM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkspaceMode {
    /// They go with the VM; only `ctx.persist`ed files come back.
    #[default]
    Ephemeral,
    /// They are checkpointed at every step's end: a relaunch (or a fork at
    /// step N) boots on the files as they stood at the last recorded step
    /// (at step N).
    Durable,
}

impl std::str::FromStr for WorkspaceMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ephemeral" => Ok(Self::Ephemeral),
            "durable" => Ok(Self::Durable),
            other => Err(format!(
                "unknown workspace {other:?}; expected ephemeral or durable"
            )),
        }
    }
}

impl Default for RunSpec {
    fn default() -> Self {
        Self {
            command: Vec::new(),
            image: "default".into(),
            memory_mib: 512,
            vcpus: 1,
            timeout_ms: None,
            max_restarts: 3,
            restart_backoff_ms: 1_000,
            max_restart_backoff_ms: 60_000,
            env: BTreeMap::new(),
            workspace: WorkspaceMode::Ephemeral,
            network: None,
        }
    }
}

impl RunSpec {
    /// The wait before relaunch number `restart` (1 for the first).
    pub fn restart_backoff(&self, restart: u32) -> u64 {
        let doublings = restart.saturating_sub(1).min(32);
        self.restart_backoff_ms
            .saturating_mul(1u64 << doublings)
            .min(self.max_restart_backoff_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(files: &[(&str, &str)], entry: &str) -> Program {
        Program {
            files: files
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
            entry: entry.into(),
        }
    }

    #[test]
    fn programs_round_trip_and_their_bytes_are_canonical() {
        let p = program(&[("main.py", "print(1)"), ("lib/a.py", "x=1")], "main.py");
        p.check().unwrap();
        let bytes = p.to_bytes();
        assert_eq!(Program::from_bytes(&bytes).unwrap(), p);
        // Same files, built in another order: same bytes.
        let q = program(&[("lib/a.py", "x=1"), ("main.py", "print(1)")], "main.py");
        assert_eq!(q.to_bytes(), bytes);
        assert_eq!(
            p.default_command(PROGRAM_DIR),
            ["python3", "-u", "/work/main.py"]
        );
        let child = p.with_entry("./lib/a.py").unwrap();
        assert_eq!(child.entry, "lib/a.py");
        assert!(p.with_entry("nope.py").is_err());
    }

    #[test]
    fn bad_programs_say_what_is_wrong() {
        assert_eq!(program(&[], "x").check(), Err(ProgramError::Empty));
        for bad in ["/etc/passwd", "../x", "a//b", "./a", ""] {
            let error = program(&[(bad, "x")], bad).check().unwrap_err();
            assert!(matches!(error, ProgramError::BadPath(_)), "{bad}: {error}");
        }
        let error = program(&[("a.py", "")], "b.py").check().unwrap_err();
        assert!(error.to_string().contains("a.py"), "{error}");
    }

    #[test]
    fn restart_backoff_doubles_up_to_its_cap() {
        let spec = RunSpec::default();
        assert_eq!(spec.restart_backoff(1), 1_000);
        assert_eq!(spec.restart_backoff(2), 2_000);
        assert_eq!(spec.restart_backoff(40), 60_000);
    }
}
