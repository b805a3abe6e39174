//! Starting and serving `pddgpu:` on Redox (Redox only), in the order the
//! snapshot's own daemons use (`zerod/src/main.rs`, `randd/src/main.rs` of
//! `redox-os/base`):
//!
//! 1. take the readiness pipe (`INIT_NOTIFY`, see [`super::ready`]) —
//!    pcid-spawner blocks on it, so boot goes on only once `/scheme/pddgpu`
//!    exists or pddgpud has given up;
//! 2. open the device (the pcid hand-off and BAR mappings, in
//!    [`crate::backend`]);
//! 3. `Socket::create()` and `register_sync_scheme(…, "pddgpu", …)`;
//! 4. report ready, then `setrens(0, 0)`: from here on the driver can open
//!    nothing new; it keeps the descriptors and mappings it holds (scheme
//!    socket, BARs, pcid channel, logging);
//! 5. the request loop: calls go through `handle_sync`; `OnClose` releases
//!    the handle (a client that exits or dies has all its handles closed by
//!    the kernel, which frees its BOs); fd passing is answered by the
//!    scheme's `on_sendfd`/`on_recvfd` (which refuse it); other kernel
//!    messages and cancellations need no answer.
//!
//! A failure before step 4 is reported on the readiness pipe (a non-zero
//! byte) and pddgpud exits 1; pcid-spawner logs it and goes on.
//!
//! Periodic work (the leak monitor) runs before handling a request once its
//! interval has passed, so a reader of `leaks` always sees a fresh audit;
//! an idle server does no work at all.

use std::time::{Duration, Instant};

use pddgpu_scheme::PddgpuScheme;
use redox_scheme::scheme::{register_sync_scheme, SchemeSync};
use redox_scheme::{RequestKind, Response, SignalBehavior, Socket};

use super::ready;
use crate::backend;
use crate::options::Options;

/// The scheme name: clients open `/scheme/pddgpu/…`.
pub const SCHEME_NAME: &str = "pddgpu";

/// Steps 1–5 above; returns when the scheme is unmounted or told to shut
/// down (with the device in SHUTDOWN), or on an error.
pub fn serve(opts: &Options) -> Result<PddgpuScheme, String> {
    let notifier = ready::notifier_from_env().map_err(|e| e.to_string())?;
    let (socket, mut scheme) = match start(opts) {
        Ok(started) => started,
        Err(e) => {
            if let Err(pipe) = notifier.fail() {
                log::warn!("cannot report the failure to the starter: {pipe}");
            }
            return Err(e);
        }
    };
    if let Err(e) = notifier.ready() {
        // The starter stopped waiting; clients can still use the scheme.
        log::warn!("cannot report readiness to the starter: {e}");
    }
    libredox::call::setrens(0, 0).map_err(|e| format!("cannot enter the null namespace: {e}"))?;
    log::info!("serving /scheme/{SCHEME_NAME}");
    let tick = Duration::from_millis(opts.tick_ms.max(1));
    serve_requests(&socket, &mut scheme, tick)?;
    // Closing the socket unmounts the scheme: clients' open handles fail from
    // now on. The device goes to SHUTDOWN before the process exits.
    drop(socket);
    scheme.shutdown();
    Ok(scheme)
}

/// Steps 2 and 3: the device, wrapped in the scheme, registered.
fn start(opts: &Options) -> Result<(Socket, PddgpuScheme), String> {
    let device = backend::open(opts)?;
    log::info!("device: {}", device.description);
    let mut scheme = device.into_scheme(opts);
    let socket =
        Socket::create().map_err(|e| format!("cannot create the {SCHEME_NAME} scheme: {e}"))?;
    register_sync_scheme(&socket, SCHEME_NAME, &mut scheme)
        .map_err(|e| format!("cannot register the {SCHEME_NAME} scheme: {e}"))?;
    Ok((socket, scheme))
}

/// Step 5, until the scheme is unmounted or a `shutdown` command.
fn serve_requests(
    socket: &Socket,
    scheme: &mut PddgpuScheme,
    tick: Duration,
) -> Result<(), String> {
    let mut last_tick = Instant::now();
    loop {
        let Some(request) = socket
            .next_request(SignalBehavior::Restart)
            .map_err(|e| format!("reading a scheme request failed: {e}"))?
        else {
            log::info!("the {SCHEME_NAME} scheme was unmounted");
            return Ok(());
        };
        if last_tick.elapsed() >= tick {
            scheme.tick();
            last_tick = Instant::now();
        }
        let response = match request.kind() {
            RequestKind::Call(call) => Some(call.handle_sync(scheme)),
            RequestKind::OnClose { id } => {
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
            RequestKind::MsyncMsg | RequestKind::MunmapMsg | RequestKind::MmapMsg => None,
        };
        if let Some(response) = response {
            socket
                .write_response(response, SignalBehavior::Restart)
                .map_err(|e| format!("writing a scheme response failed: {e}"))?;
        }
        if scheme.shutdown_requested() {
            log::info!("shutdown requested");
            return Ok(());
        }
    }
}
