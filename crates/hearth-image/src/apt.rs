//! Talking to apt: which kernel package to use, fetching and unpacking `.deb` files, and
//! which Debian mirror the host uses (so debootstrap pulls from the same place).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::command::{run, stdout_of};
use super::error::{ImageError, IoContext, Result};

/// The meta-package whose dependency names the current cloud kernel.
pub const KERNEL_META_PACKAGE: &str = "linux-image-cloud-amd64";
/// The package that provides a static `/bin/busybox`.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

/// A Debian package pinned to the version apt would install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageVersion {
    /// Package name, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub name: String,
    /// Candidate version, e.g. `6.1.192-2`.
    pub version: String,
}

/// Resolves `linux-image-cloud-amd64` to the versioned kernel package it depends on.
pub fn resolve_kernel_package() -> Result<PackageVersion> {
    let out = stdout_of(Command::new("apt-cache").args(["depends", KERNEL_META_PACKAGE]))?;
    let name = parse_kernel_dependency(&out).ok_or_else(|| {
        ImageError::Apt(format!(
            "`apt-cache depends {KERNEL_META_PACKAGE}` names no linux-image package; run `apt-get update`"
        ))
    })?;
    let version = candidate_version(&name)?;
    Ok(PackageVersion { name, version })
}

/// The version `apt-get download <package>` would fetch.
pub fn candidate_version(package: &str) -> Result<String> {
    let out = stdout_of(Command::new("apt-cache").args(["policy", package]))?;
    parse_candidate(&out).ok_or_else(|| {
        ImageError::Apt(format!(
            "apt knows no installable version of {package}; run `apt-get update` (and check the apt sources)"
        ))
    })
}

/// Downloads `package` at exactly `version` into `dir` and unpacks it into `dir/root`.
/// Returns the unpacked root.
pub fn fetch_and_extract(pkg: &PackageVersion, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    // apt drops privileges to `_apt` for downloads; let it write here to avoid its
    // "unsandboxed download" warning. If the user doesn't exist, apt falls back to root.
    let _ = Command::new("chown").arg("_apt").arg(dir).output();
    run(Command::new("apt-get")
        .args(["download", "-q"])
        .arg(format!("{}={}", pkg.name, pkg.version))
        .current_dir(dir))?;
    let deb = find_deb(dir, &pkg.name)?;
    let root = dir.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    Ok(root)
}

fn find_deb(dir: &Path, name: &str) -> Result<PathBuf> {
    let prefix = format!("{name}_");
    for entry in std::fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))? {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.starts_with(&prefix) && file.ends_with(".deb") {
            return Ok(entry.path());
        }
    }
    Err(ImageError::Apt(format!(
        "apt-get download {name} left no {name}_*.deb in {}",
        dir.display()
    )))
}

/// Picks the first `Depends: linux-image-…` line of `apt-cache depends` output.
fn parse_kernel_dependency(out: &str) -> Option<String> {
    out.lines().find_map(|line| {
        let dep = line
            .trim()
            .trim_start_matches('|')
            .strip_prefix("Depends:")?
            .trim();
        (dep.starts_with("linux-image-") && !dep.starts_with('<')).then(|| dep.to_string())
    })
}

/// Reads the `Candidate:` line of `apt-cache policy` output.
fn parse_candidate(out: &str) -> Option<String> {
    out.lines().find_map(|line| {
        let v = line.trim().strip_prefix("Candidate:")?.trim();
        (!v.is_empty() && v != "(none)").then(|| v.to_string())
    })
}

/// The host's Debian mirror, read from its apt sources: deb822 files in
/// `/etc/apt/sources.list.d/*.sources` first, then one-line `*.list` files and
/// `/etc/apt/sources.list`. The first Debian main archive URI (not `-security`) wins.
pub fn host_mirror() -> Result<String> {
    let mut files: Vec<PathBuf> = Vec::new();
    let list_d = Path::new("/etc/apt/sources.list.d");
    let mut sources = Vec::new();
    let mut lists = Vec::new();
    if let Ok(rd) = std::fs::read_dir(list_d) {
        for entry in rd.flatten() {
            let p = entry.path();
            match p.extension().and_then(|e| e.to_str()) {
                Some("sources") => sources.push(p),
                Some("list") => lists.push(p),
                _ => {}
            }
        }
    }
    sources.sort();
    lists.sort();
    files.extend(sources);
    files.push(PathBuf::from("/etc/apt/sources.list"));
    files.extend(lists);
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        let found = if file.extension().is_some_and(|e| e == "sources") {
            mirror_from_deb822(&text)
        } else {
            mirror_from_one_line(&text)
        };
        if let Some(uri) = found {
            return Ok(uri);
        }
    }
    Err(ImageError::Apt(
        "found no Debian main archive (e.g. http://deb.debian.org/debian) in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list; pass a mirror explicitly".into(),
    ))
}

/// Is `uri` a Debian main archive (not security, not a third-party repository)?
fn is_debian_archive(uri: &str) -> bool {
    let u = uri.trim_end_matches('/');
    !u.contains("debian-security")
        && (u.ends_with("/debian") || u.contains("snapshot.debian.org/archive/debian/"))
}

/// First Debian main archive URI in deb822 text (`Types: deb`, `URIs:`, `Components: main`).
pub(crate) fn mirror_from_deb822(text: &str) -> Option<String> {
    for stanza in text.split("\n\n") {
        let mut types = Vec::new();
        let mut uris = Vec::new();
        let mut components = Vec::new();
        let mut suites = Vec::new();
        let mut enabled = true;
        for line in stanza.lines() {
            if line.starts_with('#') || line.starts_with(char::is_whitespace) {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let values = value.split_whitespace().map(str::to_string);
            match key.trim().to_ascii_lowercase().as_str() {
                "types" => types.extend(values),
                "uris" => uris.extend(values),
                "components" => components.extend(values),
                "suites" => suites.extend(values),
                "enabled" => enabled = !value.trim().eq_ignore_ascii_case("no"),
                _ => {}
            }
        }
        let security = suites.iter().any(|s| s.ends_with("-security"));
        if enabled
            && !security
            && types.iter().any(|t| t == "deb")
            && components.iter().any(|c| c == "main")
        {
            if let Some(uri) = uris.iter().find(|u| is_debian_archive(u)) {
                return Some(uri.trim_end_matches('/').to_string());
            }
        }
    }
    None
}

/// First Debian main archive URI in one-line `sources.list` text
/// (`deb [options] uri suite component...`).
pub(crate) fn mirror_from_one_line(text: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            continue;
        }
        let mut rest: Vec<&str> = words.collect();
        if rest.first().is_some_and(|w| w.starts_with('[')) {
            // Options may span several words: drop up to the one ending in ']'.
            let end = rest.iter().position(|w| w.ends_with(']'))?;
            rest.drain(..=end);
        }
        let [uri, suite, components @ ..] = rest.as_slice() else {
            continue;
        };
        if !suite.ends_with("-security") && components.contains(&"main") && is_debian_archive(uri) {
            return Some(uri.trim_end_matches('/').to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_skips_security_and_third_party() {
        let text = "\
Types: deb
URIs: https://deb.nodesource.com/node_20.x
Suites: nodistro
Components: main

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main

Types: deb deb-src
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian/
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";
        assert_eq!(
            mirror_from_deb822(text).as_deref(),
            Some("http://deb.debian.org/debian")
        );
    }

    #[test]
    fn deb822_respects_enabled_no() {
        let text = "Types: deb\nURIs: http://a.example/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n\n\
Types: deb\nURIs: http://b.example/debian\nSuites: bookworm\nComponents: main\n";
        assert_eq!(
            mirror_from_deb822(text).as_deref(),
            Some("http://b.example/debian")
        );
        assert_eq!(
            mirror_from_deb822(
                "Types: deb-src\nURIs: http://a/debian\nSuites: x\nComponents: main\n"
            ),
            None
        );
    }

    #[test]
    fn one_line_format() {
        let text = "\
# deb http://commented.example/debian bookworm main
deb http://security.debian.org/debian-security bookworm-security main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] https://download.docker.com/linux/debian bookworm stable
deb [ arch=amd64 ] http://ftp.de.debian.org/debian/ bookworm main non-free-firmware
deb http://deb.debian.org/debian bookworm main
";
        assert_eq!(
            mirror_from_one_line(text).as_deref(),
            Some("http://ftp.de.debian.org/debian")
        );
        assert_eq!(
            mirror_from_one_line("deb-src http://deb.debian.org/debian bookworm main"),
            None
        );
    }

    #[test]
    fn parses_apt_cache_output() {
        let depends = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            parse_kernel_dependency(depends).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        let policy = "busybox-static:\n  Installed: (none)\n  Candidate: 1:1.35.0-4+deb12u1+b1\n  Version table:\n";
        assert_eq!(
            parse_candidate(policy).as_deref(),
            Some("1:1.35.0-4+deb12u1+b1")
        );
        assert_eq!(
            parse_candidate("x:\n  Installed: (none)\n  Candidate: (none)\n"),
            None
        );
    }
}
