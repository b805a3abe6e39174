//! The host-transport serving loop: accept clients on a Unix socket (each
//! gets a thread that runs its requests through the scheme), tick the leak
//! monitor, and shut down cleanly on SIGTERM/SIGINT or a `shutdown`
//! command.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pddgpu_ipc::host::{HostServer, ServerLimits};
use pddgpu_scheme::PddgpuScheme;

use crate::options::Options;

/// The transport limits the options ask for.
pub fn server_limits(opts: &Options) -> ServerLimits {
    let l = &opts.limits;
    let ms = Duration::from_millis;
    ServerLimits {
        max_connections: l.max_connections,
        max_connections_per_uid: l.max_connections_per_uid,
        max_handles_per_uid: l.max_handles_per_uid,
        idle_timeout: ms(l.idle_timeout_ms),
        request_timeout: ms(l.request_timeout_ms),
        send_timeout: ms(l.send_timeout_ms),
        shutdown_grace: ms(l.shutdown_grace_ms),
        max_answer_bytes_per_uid: l.max_answer_bytes_per_uid,
        max_answer_bytes: l.max_answer_bytes,
        max_frame_bytes_per_uid: l.max_frame_bytes_per_uid,
        max_frame_bytes: l.max_frame_bytes,
        admin_connections: l.admin_connections,
        admin_uid: opts.admin_uid.or_else(crate::backend::current_uid),
        connects_per_second_per_uid: l.max_connects_per_second_per_uid,
    }
}

/// Serves `scheme` on the host socket until told to stop; returns it, shut
/// down, with every client's handles released.
pub fn serve_host(opts: &Options, mut scheme: PddgpuScheme) -> Result<PddgpuScheme, String> {
    let (mapping, max_connections) = crate::process_limits::fit(opts);
    scheme.set_mapping_limits(mapping);
    let limits = ServerLimits {
        max_connections,
        ..server_limits(opts)
    };
    let socket = opts.socket_path();
    let mut server = HostServer::bind(&socket, limits, scheme)
        .map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
    // Like a render node: any local user may connect; the scheme itself
    // decides what each caller may do (control and config writes need the
    // server's user or root; quotas bound allocations).
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::Permissions::from_mode(opts.socket_mode);
        std::fs::set_permissions(&socket, mode)
            .map_err(|e| format!("cannot set the mode of {}: {e}", socket.display()))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("cannot install signal handler: {e}"))?;
    }
    let tick = Duration::from_millis(opts.tick_ms.max(1));
    let mut last_tick = Instant::now();
    log::info!("serving pddgpu: on {}", socket.display());
    while !stop.load(Ordering::Relaxed) && !server.with_scheme(|s| s.shutdown_requested()) {
        let wait = tick.saturating_sub(last_tick.elapsed());
        server
            .accept(Some(wait))
            .map_err(|e| format!("serving failed: {e}"))?;
        if last_tick.elapsed() >= tick {
            server.with_scheme(|s| s.tick());
            last_tick = Instant::now();
        }
    }
    // Drain: no new BOs from now on; every connection finishes the request
    // it is on, then its client's handles are closed, which frees what it
    // held; then the device goes to SHUTDOWN.
    log::info!(
        "shutting down: draining {} client connection(s)",
        server.connection_count()
    );
    server.with_scheme(|s| s.stop_accepting());
    let mut scheme = server.shutdown();
    scheme.shutdown();
    Ok(scheme)
}
