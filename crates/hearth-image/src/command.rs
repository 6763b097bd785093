//! Running external tools (apt, dpkg-deb, depmod, debootstrap, mkfs.ext4) with errors that
//! name the command, its exit status and the tail of its stderr.

use std::process::{Command, Output};

use super::error::{ImageError, Result};

/// How many trailing stderr lines an error keeps.
const STDERR_TAIL_LINES: usize = 20;

/// Runs `cmd` to completion, capturing its output; a non-zero exit is an error.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let line = describe(cmd);
    let output = cmd.output().map_err(|source| ImageError::CommandSpawn {
        hint: install_hint(cmd.get_program().to_string_lossy().as_ref()),
        command: line.clone(),
        source,
    })?;
    if !output.status.success() {
        return Err(ImageError::CommandFailed {
            command: line,
            status: output.status.to_string(),
            stderr_tail: tail(&String::from_utf8_lossy(&output.stderr), STDERR_TAIL_LINES),
        });
    }
    Ok(output)
}

/// Runs `cmd` and returns its stdout as text.
pub fn stdout_of(cmd: &mut Command) -> Result<String> {
    Ok(String::from_utf8_lossy(&run(cmd)?.stdout).into_owned())
}

/// The command line as a user would type it (arguments with spaces quoted).
fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        if arg.contains(' ') || arg.is_empty() {
            parts.push(format!("'{arg}'"));
        } else {
            parts.push(arg.into_owned());
        }
    }
    parts.join(" ")
}

/// The last `n` non-empty lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    if lines.is_empty() {
        "(stderr was empty)".into()
    } else {
        lines[start..].join("\n")
    }
}

/// Which Debian package provides a tool we call, as a hint for "command not found".
fn install_hint(program: &str) -> String {
    let package = match program {
        "debootstrap" => "debootstrap",
        "depmod" => "kmod",
        "mkfs.ext4" => "e2fsprogs",
        "dpkg-deb" => "dpkg",
        "apt-get" | "apt-cache" => "apt",
        _ => return String::new(),
    };
    format!(" (install it with `apt-get install {package}`)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_command_status_and_stderr_tail() {
        let err = run(Command::new("sh").args([
            "-c",
            "for i in $(seq 1 30); do echo line$i >&2; done; exit 3",
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("`sh -c 'for i"), "{err}");
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(
            err.contains("line30") && err.contains("line11") && !err.contains("line10\n"),
            "{err}"
        );
    }

    #[test]
    fn missing_program_gives_hint() {
        let err = run(&mut Command::new("debootstrap-that-does-not-exist")).unwrap_err();
        assert!(matches!(err, ImageError::CommandSpawn { .. }));
        assert!(install_hint("depmod").contains("kmod"));
    }
}
