//! `hearth doctor`: what this host can do and what is missing.

use anyhow::Result;
use hearth_sandbox::HearthHome;
use hearth_vm::qemu::{find_on_path, QemuDriver};

use crate::cli::DoctorArgs;

/// Print a report; exit code 0 when sandboxes can run, 1 otherwise.
pub async fn run(home: &HearthHome, args: DoctorArgs) -> Result<i32> {
    let mut ok = true;
    println!("hearth {}", env!("CARGO_PKG_VERSION"));
    match hearth_vm::accel::detect(args.accel) {
        Ok(choice) => println!("accelerator: {} ({})", choice.accel, choice.reason),
        Err(e) => {
            ok = false;
            println!("accelerator: unavailable: {e}");
        }
    }
    match QemuDriver::locate() {
        Ok(driver) => {
            let version = driver
                .version()
                .unwrap_or_else(|e| format!("version unknown: {e}"));
            println!("qemu: {} ({version})", driver.binary().display());
            for line in driver.jail().report() {
                println!("vmm jail: {line}");
            }
        }
        Err(e) => {
            ok = false;
            println!("qemu: missing: {e}");
        }
    }
    println!("home: {}", home.root().display());
    println!("images: {}", home.images_dir().display());
    let images_dir = home.images_dir().to_path_buf();
    let verify = args.verify;
    let image = tokio::task::spawn_blocking(move || {
        let image = hearth_image::open(&images_dir, "default")?;
        if verify {
            image.verify()?;
        }
        Ok::<_, hearth_image::ImageError>(image)
    })
    .await?;
    match image {
        Ok(image) => {
            let m = image.manifest();
            let total: u64 = m.files.values().map(|f| f.size).sum();
            println!(
                "image default: ok{} (kernel {}, {} files, {} MiB, built {})",
                if verify { ", digests verified" } else { "" },
                m.inputs.kernel_release,
                m.files.len(),
                total >> 20,
                m.created
            );
        }
        Err(e) => {
            ok = false;
            println!("image default: {e}");
        }
    }
    let tools = ["debootstrap", "mkfs.ext4", "depmod", "apt-get", "dpkg-deb"];
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| find_on_path(t).is_none())
        .collect();
    if missing.is_empty() {
        println!("image tools: ok ({})", tools.join(", "));
    } else {
        println!(
            "image tools: missing {} (run scripts/setup.sh to install them)",
            missing.join(", ")
        );
    }
    match hearth_image::default_guest_agent_path() {
        Some(path) => println!("guest agent: {}", path.display()),
        None => println!("guest agent: not built (run scripts/build-guest.sh)"),
    }
    println!("status: {}", if ok { "ready" } else { "not ready" });
    Ok(if ok { 0 } else { 1 })
}
