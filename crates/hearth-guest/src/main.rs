//! The `hearth-guest` binary: PID 1 in a Hearth microVM, or a host-mode
//! server on a Unix socket for development and tests.

use std::path::PathBuf;
use std::process::ExitCode;

use hearth_guest::{Agent, AgentOptions};

const USAGE: &str = "usage: hearth-guest serve-unix <socket-path> [--cgroup-root DIR] [--debug]
       hearth-guest --version
As PID 1 (the initramfs /init) it boots the VM and serves the host channel.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // PID 1 boots the VM, unless told to serve a socket: the fake VM driver
    // runs the agent as PID 1 of a PID namespace on the host.
    if std::process::id() == 1 && args.first().map(String::as_str) != Some("serve-unix") {
        hearth_guest::init::run_pid1();
    }
    match args.first().map(String::as_str) {
        Some("--version") => {
            println!("hearth-guest {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("serve-unix") => match parse_serve_unix(&args[1..]) {
            Ok((socket, options)) => serve_unix(socket, options),
            Err(message) => {
                eprintln!("hearth-guest: {message}\n{USAGE}");
                ExitCode::from(2)
            }
        },
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn parse_serve_unix(args: &[String]) -> Result<(PathBuf, AgentOptions), String> {
    let mut socket = None;
    let mut options = AgentOptions::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--cgroup-root" => {
                let dir = args.next().ok_or("--cgroup-root needs a directory")?;
                options.cgroup_root = Some(PathBuf::from(dir));
            }
            "--debug" => hearth_guest::log::set_debug(true),
            other if other.starts_with('-') => return Err(format!("unknown option {other}")),
            other if socket.is_none() => socket = Some(PathBuf::from(other)),
            other => return Err(format!("unexpected argument {other}")),
        }
    }
    Ok((socket.ok_or("missing <socket-path>")?, options))
}

fn serve_unix(socket: PathBuf, options: AgentOptions) -> ExitCode {
    let runtime = match hearth_guest::agent::runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("hearth-guest: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let agent = Agent::start(options)?;
        agent.serve_unix(&socket).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hearth-guest: {e}");
            ExitCode::FAILURE
        }
    }
}
