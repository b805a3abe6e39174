//! # pddgpud — the PDDGPU driver server
//!
//! Picks a device backend ([`backend`]), builds the driver core on it,
//! wraps it in the `pddgpu:` scheme and serves that scheme to client
//! processes: over a Unix socket on Linux and other hosts ([`serve`]), or
//! through the kernel's scheme socket on Redox (module `redox`).
//!
//! Shutdown is clean: SIGTERM or SIGINT (or `shutdown` written to
//! `pddgpu:control`) stops accepting work, closes every client's handles
//! (freeing what they held), puts the device into SHUTDOWN and exits 0.
#![deny(missing_docs)]

// Device backends: register windows and backing memory mapped from the
// device or a memfd, the only unsafe code of the daemon besides Redox's.
#[allow(unsafe_code)]
pub mod backend;
pub mod entropy;
pub mod options;
// Redox device access: physical memory, BARs and the pcid channel.
#[cfg(not(target_os = "redox"))]
pub mod process_limits;
#[allow(unsafe_code)]
pub mod redox;
#[cfg(not(target_os = "redox"))]
pub mod serve;

pub use options::{BackendKind, Options};

/// Runs the daemon with the given command line; returns the exit code.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let opts = match pddgpu_ipc::cli::parse_args::<Options, _, _>(args) {
        Ok(o) => o,
        Err(code) => return code,
    };
    init_logging(&opts);
    match run_with(&opts) {
        Ok(()) => {
            log::info!("pddgpud stopped cleanly");
            0
        }
        Err(e) => {
            log::error!("{e}");
            1
        }
    }
}

fn init_logging(opts: &Options) {
    let _ = env_logger::Builder::new()
        .filter_level(opts.log_level)
        .parse_default_env()
        .format_timestamp_millis()
        .try_init();
}

/// Opens the device and serves it until told to stop.
pub fn run_with(opts: &Options) -> Result<(), String> {
    #[cfg(not(target_os = "redox"))]
    let scheme = {
        let device = backend::open(opts)?;
        log::info!("device: {}", device.description);
        serve::serve_host(opts, device.into_scheme(opts))?
    };
    // On Redox the device is opened between taking the readiness pipe and
    // registering the scheme (see `redox::serve`).
    #[cfg(target_os = "redox")]
    let scheme = redox::serve(opts)?;
    let stats = scheme.driver().stats();
    log::info!("final state: {stats:?}");
    Ok(())
}
