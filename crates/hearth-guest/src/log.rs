//! Console logging: one short line per event, prefixed `hearth-guest:`.
//!
//! As PID 1 our stderr is the serial console, which the host captures and
//! shows to users when a VM fails, so lines must be few and meaningful.
//! Verbose lines appear only with `hearth.debug=1` on the kernel cmdline (or
//! `--debug` in host mode).

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static DEBUG: AtomicBool = AtomicBool::new(false);

/// Turn verbose logging on or off.
pub fn set_debug(enabled: bool) {
    DEBUG.store(enabled, Ordering::Relaxed);
}

/// Whether verbose logging is on.
pub fn debug_enabled() -> bool {
    DEBUG.load(Ordering::Relaxed)
}

/// Write one line to the console. Never panics: a missing console must not
/// bring down PID 1.
pub fn info(message: fmt::Arguments<'_>) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "hearth-guest: {message}");
}

/// Write one line when verbose logging is on.
pub fn debug(message: fmt::Arguments<'_>) {
    if debug_enabled() {
        info(message);
    }
}

/// `info!("...", args)`: log a line to the console.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::info(format_args!($($arg)*)) };
}

/// `debug!("...", args)`: log a line when verbose logging is on.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::debug(format_args!($($arg)*)) };
}
