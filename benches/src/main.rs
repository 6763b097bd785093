//! Measures and prints Hearth's figures. Nothing is asserted: the numbers
//! depend on the machine, and these machines are shared.
//!
//! ```sh
//! cargo run --release -p hearth-bench -- --runs 10 --execs 200
//! ```

use hearth_bench::{cold_start, ms, percentile};
use std::time::Instant;

use anyhow::Result;
use bytes::Bytes;
use clap::Parser;
use hearth_sandbox::{ExecOptions, HearthHome, Sandbox, SandboxOptions};
use hearth_vm::qemu::QemuDriver;

/// Benchmark options.
#[derive(Debug, Parser)]
struct Args {
    /// Cold starts to measure.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Exec round trips to measure.
    #[arg(long, default_value_t = 200)]
    execs: usize,
    /// MiB to write for the file throughput figure.
    #[arg(long, default_value_t = 64)]
    file_mib: usize,
    /// Guest memory.
    #[arg(long, default_value = "256M")]
    memory: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let scratch = tempfile_dir()?;
    let env_home = HearthHome::from_env();
    let home = HearthHome::new(&scratch, env_home.images_dir());
    let driver = QemuDriver::locate()?;
    let options = SandboxOptions {
        memory: args.memory.parse().map_err(anyhow::Error::msg)?,
        ..SandboxOptions::default()
    };
    let accel = hearth_vm::accel::detect(options.accel)?;
    println!("accelerator: {} ({})", accel.accel, accel.reason);

    // Cold start: create issued → first byte of the command's output.
    let mut cold = Vec::new();
    let mut boots = Vec::new();
    for _ in 0..args.runs {
        let started = cold_start(&home, &driver, options.clone()).await?;
        boots.push(started.boot);
        cold.push(started.first_output);
        started.sandbox.destroy().await;
    }
    cold.sort();
    boots.sort();
    println!(
        "cold start to first output byte ({} runs): p50 {}, min {}, max {} (boot to agent ready p50 {})",
        cold.len(),
        ms(percentile(&cold, 0.5)),
        ms(cold[0]),
        ms(*cold.last().unwrap()),
        ms(percentile(&boots, 0.5)),
    );

    let sandbox = Sandbox::create(&home, &driver, options.clone()).await?;
    // Exec round trip of `true` in a running sandbox.
    let mut trips = Vec::with_capacity(args.execs);
    for _ in 0..args.execs {
        let start = Instant::now();
        let out = sandbox.run(ExecOptions::new(["true"]), None).await?;
        trips.push(start.elapsed());
        anyhow::ensure!(out.report.code == 0, "true failed: {:?}", out.report);
    }
    trips.sort();
    println!(
        "exec round trip of `true` ({} runs): p50 {}, p99 {}",
        trips.len(),
        ms(percentile(&trips, 0.5)),
        ms(percentile(&trips, 0.99)),
    );

    // File write and read throughput.
    let data = Bytes::from(vec![0x5au8; args.file_mib << 20]);
    let start = Instant::now();
    sandbox.write_file("/root/bench.bin", data).await?;
    let write = start.elapsed();
    let start = Instant::now();
    let back = sandbox
        .read_file_to_vec("/root/bench.bin", (args.file_mib << 20) + 1)
        .await?;
    let read = start.elapsed();
    anyhow::ensure!(back.len() == args.file_mib << 20, "short read");
    println!(
        "file write {} MiB: {:.1} MiB/s; read: {:.1} MiB/s",
        args.file_mib,
        args.file_mib as f64 / write.as_secs_f64(),
        args.file_mib as f64 / read.as_secs_f64(),
    );
    sandbox.destroy().await;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("hearth-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
