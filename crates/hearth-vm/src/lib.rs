//! VM drivers and accelerator detection.
//!
//! The [`Driver`] / [`Vm`] traits hide which VMM runs a sandbox; the one
//! real backend today is [`qemu::QemuDriver`] (QEMU's `microvm` machine, KVM
//! where usable, TCG otherwise); [`fake::FakeDriver`] runs the guest agent
//! on the host for tests. A VM boots from the kernel, initramfs and root
//! filesystem paths in its [`VmSpec`]; the `hearth-image` crate builds them.

pub mod accel;
pub mod cgroup;
pub mod console;
pub mod driver;
pub mod error;
pub mod fake;
pub mod jail;
pub mod procfs;
pub mod qemu;
pub mod qmp;
pub mod scratch;
#[allow(unsafe_code)] // pre_exec hook; see the SAFETY comment there.
mod spawn;

pub use accel::{Accel, AccelChoice, AccelPreference};
pub use driver::{Checkpoint, Driver, GuestStream, Vm, VmExit, VmSpec};
pub use error::{Result, VmError};
pub use scratch::ScratchDisk;
