//! `hearth image build`.

use anyhow::{Context, Result};
use hearth_image::BuildOptions;
use hearth_sandbox::HearthHome;

use crate::cli::ImageBuildArgs;

/// Build or reuse the image; print where it is.
pub async fn build(home: &HearthHome, args: ImageBuildArgs) -> Result<i32> {
    let guest_agent = args
        .guest_agent
        .or_else(hearth_image::default_guest_agent_path)
        .context(
        "no guest agent binary found: build it with scripts/build-guest.sh or pass --guest-agent",
    )?;
    let mut options = BuildOptions::new(home.images_dir(), guest_agent);
    options.name = args.name;
    options.force = args.force;
    options.mirror = args.mirror;
    options.suite = args.suite;
    options.extra_packages = args.packages;
    let built = tokio::task::spawn_blocking(move || {
        hearth_image::build(&options, &mut |line: &str| eprintln!("image: {line}"))
    })
    .await??;
    let m = built.manifest();
    println!(
        "image {} ready in {} (kernel {})",
        m.name,
        built.dir().display(),
        m.inputs.kernel_release
    );
    Ok(0)
}
