//! `hearth-bench-checkpoint`: what a durable workspace costs, on a real VM.
//! Per step: the guest's sync plus QEMU freezing the writable layer, when
//! the step wrote a small file, a larger one, or nothing (no new layer);
//! the frozen layers' sizes (what each step stores as a blob); and how long
//! a VM takes to boot on a deep chain of layers against a fresh disk.
//!
//! ```sh
//! cargo run --release -p hearth-bench --bin hearth-bench-checkpoint -- --steps 30
//! ```

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use hearth_bench::{cold_start, ms, percentile};
use hearth_sandbox::{ExecOptions, HearthHome, Sandbox, SandboxOptions};
use hearth_vm::qemu::QemuDriver;
use hearth_vm::{scratch, Checkpoint, ScratchDisk};

#[derive(Debug, Parser)]
#[command(about = "Durable workspace checkpoints on a real VM")]
struct Args {
    /// Checkpoints to time per kind of step.
    #[arg(long, default_value_t = 30)]
    steps: usize,
    /// Guest memory.
    #[arg(long, default_value = "256M")]
    memory: String,
}

async fn sh(sandbox: &Sandbox, script: &str) -> Result<()> {
    let output = sandbox
        .exec(ExecOptions::new(["sh", "-c", script]))
        .await?
        .collect(1 << 20)
        .await?;
    anyhow::ensure!(output.report.code == 0, "{script}: {output:?}");
    Ok(())
}

fn size(dir: &Path, layer: &str) -> u64 {
    std::fs::metadata(dir.join(layer))
        .map(|m| m.len())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let scratch_home = tempfile::Builder::new().prefix("hb").tempdir_in("/tmp")?;
    let env_home = HearthHome::from_env();
    let home = HearthHome::new(scratch_home.path(), env_home.images_dir());
    let driver = QemuDriver::locate()?;
    let dir = scratch_home.path().join("layers");
    std::fs::create_dir_all(&dir)?;
    scratch::create_base_layer(&dir, "base.qcow2", 1 << 30)?;
    println!(
        "base layer (empty 1 GiB ext4): {} KiB",
        size(&dir, "base.qcow2") / 1024
    );
    let layered = |top: &str| SandboxOptions {
        memory: args.memory.parse().expect("memory"),
        scratch: ScratchDisk::Layered {
            dir: dir.clone(),
            top: top.into(),
        },
        ..SandboxOptions::default()
    };
    let started = cold_start(&home, &driver, layered("base.qcow2")).await?;
    let (boot, sandbox) = (started.first_output, started.sandbox);
    println!("boot on the base layer to first output: {}", ms(boot));

    let mut layer = 0usize;
    let mut next = || {
        layer += 1;
        format!("l{layer}.qcow2")
    };
    for (kind, script) in [
        (
            "a 4 KiB file",
            "head -c 4096 /dev/urandom > /root/f-$RANDOM",
        ),
        (
            "a 1 MiB file",
            "head -c 1048576 /dev/urandom > /root/g-$RANDOM",
        ),
        ("nothing", "true"),
    ] {
        let mut times = Vec::new();
        let mut sizes = Vec::new();
        for _ in 0..args.steps {
            sh(&sandbox, script).await?;
            let name = next();
            let start = Instant::now();
            let frozen = sandbox.checkpoint(&name).await?;
            times.push(start.elapsed());
            if let Checkpoint::Frozen { layer } = &frozen {
                sizes.push(size(&dir, layer));
            } else {
                let _ = std::fs::remove_file(dir.join(&name));
            }
        }
        times.sort();
        sizes.sort_unstable();
        let median = sizes.get(sizes.len() / 2).copied().unwrap_or(0);
        println!(
            "checkpoint after writing {kind} ({} steps): p50 {}, p99 {}; {} new layers, median {} KiB",
            times.len(),
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99)),
            sizes.len(),
            median / 1024
        );
    }
    let top = sandbox
        .checkpoint(&next())
        .await
        .context("a last checkpoint")?
        .layer()
        .to_string();
    sandbox.destroy().await;

    // A relaunch on the whole chain, against a fresh ephemeral disk.
    scratch::create_overlay(&dir, "relaunch.qcow2", &top)?;
    let depth = std::fs::read_dir(&dir)?.count() - 1;
    let relaunched = cold_start(&home, &driver, layered("relaunch.qcow2")).await?;
    let chain_boot = relaunched.first_output;
    relaunched.sandbox.destroy().await;
    let fresh = cold_start(
        &home,
        &driver,
        SandboxOptions {
            memory: args.memory.parse().expect("memory"),
            ..SandboxOptions::default()
        },
    )
    .await?;
    let fresh_boot = fresh.first_output;
    fresh.sandbox.destroy().await;
    println!(
        "boot to first output on a chain of {depth} layers: {}; on a fresh ephemeral disk: {}",
        ms(chain_boot),
        ms(fresh_boot)
    );
    Ok(())
}
