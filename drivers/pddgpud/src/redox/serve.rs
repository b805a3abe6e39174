//! Serving `pddgpu:` on Redox (Redox only), in the order upstream drivers
//! use (`graphics/bgad/src/main.rs` of `redox-os/drivers`):
//!
//! 1. become a daemon: `redox_daemon::Daemon::new` forks; the parent (the
//!    process pcid-spawner started) waits until the child reports ready,
//!    so boot goes on only once `/scheme/pddgpu` exists;
//! 2. `Socket::create()` and `register_sync_scheme(…, "pddgpu", …)`;
//! 3. `daemon.ready()`, then `setrens(0, 0)`: from here on the driver can
//!    open nothing new; it keeps the descriptors and mappings it holds
//!    (scheme socket, BARs, logging);
//! 4. the request loop: calls go through `handle_sync`; `OnClose` releases
//!    the handle (a client that exits or dies has all its handles closed by
//!    the kernel, which frees its BOs); fd passing is answered by the
//!    scheme's `on_sendfd`/`on_recvfd` (which refuse it); other kernel
//!    messages and cancellations need no answer.
//!
//! Periodic work (the leak monitor) runs before handling a request once its
//! interval has passed, so a reader of `leaks` always sees a fresh audit;
//! an idle server does no work at all.

use std::time::{Duration, Instant};

use pddgpu_scheme::PddgpuScheme;
use redox_scheme::scheme::{register_sync_scheme, SchemeState, SchemeSync};
use redox_scheme::{RequestKind, Response, SignalBehavior, Socket};

use crate::options::Options;

/// The scheme name: clients open `/scheme/pddgpu/…`.
pub const SCHEME_NAME: &str = "pddgpu";

/// Daemonizes and serves `scheme` until it is unmounted or told to shut
/// down. Returns only on failure to daemonize; the serving process exits
/// by itself (0 after a clean shutdown, 1 on an error).
pub fn serve(opts: &Options, scheme: &mut PddgpuScheme) -> Result<(), String> {
    let tick = Duration::from_millis(opts.tick_ms.max(1));
    match redox_daemon::Daemon::new(move |daemon| {
        let code = match run(daemon, scheme, tick) {
            Ok(()) => {
                log::info!("pddgpud stopped cleanly");
                0
            }
            Err(e) => {
                log::error!("{e}");
                1
            }
        };
        std::process::exit(code)
    }) {
        Ok(never) => match never {},
        Err(e) => Err(format!("cannot start the pddgpud daemon: {e}")),
    }
}

/// Steps 2–4 above, in the daemon process.
fn run(
    daemon: redox_daemon::Daemon,
    scheme: &mut PddgpuScheme,
    tick: Duration,
) -> Result<(), String> {
    let socket =
        Socket::create().map_err(|e| format!("cannot create the {SCHEME_NAME} scheme: {e}"))?;
    register_sync_scheme(&socket, SCHEME_NAME, scheme)
        .map_err(|e| format!("cannot register the {SCHEME_NAME} scheme: {e}"))?;
    daemon
        .ready()
        .map_err(|e| format!("cannot notify the parent process: {e}"))?;
    libredox::call::setrens(0, 0).map_err(|e| format!("cannot enter the null namespace: {e}"))?;
    log::info!("serving /scheme/{SCHEME_NAME}");

    let mut state = SchemeState::new();
    let mut last_tick = Instant::now();
    loop {
        let Some(request) = socket
            .next_request(SignalBehavior::Restart)
            .map_err(|e| format!("reading a scheme request failed: {e}"))?
        else {
            log::info!("the {SCHEME_NAME} scheme was unmounted");
            break;
        };
        if last_tick.elapsed() >= tick {
            scheme.tick();
            last_tick = Instant::now();
        }
        let response = match request.kind() {
            RequestKind::Call(call) => Some(call.handle_sync(scheme, &mut state)),
            RequestKind::OnClose { id } => {
                state.on_close(id);
                scheme.on_close(id);
                None
            }
            RequestKind::SendFd(req) => {
                let result = scheme.on_sendfd(&req);
                Some(Response::new(result, req))
            }
            RequestKind::RecvFd(req) => {
                let result = scheme.on_recvfd(&req);
                Some(Response::open_dup_like(result, req))
            }
            // Answered synchronously: nothing is ever pending to cancel.
            RequestKind::Cancellation(_) => None,
            // Kernel notifications that need no answer from a driver whose
            // mappings all go through `mmap_prep`.
            RequestKind::MsyncMsg
            | RequestKind::MunmapMsg
            | RequestKind::MmapMsg
            | RequestKind::OnDetach { .. } => None,
        };
        if let Some(response) = response {
            socket
                .write_response(response, SignalBehavior::Restart)
                .map_err(|e| format!("writing a scheme response failed: {e}"))?;
        }
        if scheme.shutdown_requested() {
            log::info!("shutdown requested");
            break;
        }
    }
    // Closing the socket unmounts the scheme: clients' open handles fail from
    // now on. The device goes to SHUTDOWN before the process exits.
    drop(socket);
    scheme.shutdown();
    Ok(())
}
