//! `hearth`: run untrusted code in microVMs.
//!
//! A thin shell over the library crates: parse arguments, set up logging,
//! dispatch to a command module, turn errors into one line and an exit code.

mod cli;
mod doctor;
mod exit;
mod image_cmd;
mod net;
mod remote;
mod run;
mod runs_cmd;
mod serve;
mod telemetry;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let telemetry = telemetry::init(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hearth: error: cannot start the async runtime: {e}");
            std::process::exit(exit::HEARTH_ERROR);
        }
    };
    let code = runtime.block_on(async {
        match cli::dispatch(cli).await {
            Ok(code) => code,
            Err(error) => {
                eprintln!("hearth: error: {}", one_line(&error));
                exit::HEARTH_ERROR
            }
        }
    });
    // Don't wait for blocking tasks (a stdin reader may be parked in read()).
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    telemetry.shutdown();
    std::process::exit(code);
}

/// The error and its causes on one line, without repeating a cause that the
/// outer message already includes.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}
