//! The `control` file: administrator commands (`leak-check`, `recover
//! vram|gtt|all`, `shutdown`, `fault …`).

use pddgpu::driver::Domain as CoreDomain;
use redox_scheme::CallerCtx;
use syscall::error::{Result, EINVAL, EOPNOTSUPP};

use crate::callers::display_pid;
use crate::errno::driver_errno;
use crate::scheme::{err, PddgpuScheme};

/// Fault injection into the device behind the scheme (the simulator
/// supports it), reached through `control` (`fault …`).
pub trait FaultInjector: Send {
    /// Injects the fault named by the words after `fault`; returns what was
    /// done, or a usage message.
    fn inject(&self, args: &[&str]) -> std::result::Result<String, String>;
}

impl PddgpuScheme {
    /// Runs one `control` command.
    pub(crate) fn control(&mut self, command: &str, ctx: &CallerCtx) -> Result<()> {
        let words: Vec<&str> = command.split_whitespace().collect();
        let fail = |reason: String| {
            self.log_refusal(ctx, "write control", EINVAL, &reason);
            Err(err(EINVAL))
        };
        match words.as_slice() {
            ["leak-check"] => {
                let now = self.now_ms();
                let report = self.driver().leak_check(now);
                log::info!("pid {}: leak check: {report:?}", display_pid(ctx.pid));
                Ok(())
            }
            ["recover", which] => {
                let domains: &[CoreDomain] = match *which {
                    "vram" => &[CoreDomain::Vram],
                    "gtt" => &[CoreDomain::Gtt],
                    "all" => &[CoreDomain::Vram, CoreDomain::Gtt],
                    other => return fail(format!("recover what? `{other}` (vram, gtt, all)")),
                };
                for d in domains {
                    self.driver().recover(*d).map_err(|e| {
                        log::warn!("pid {}: recover {which}: {e:?}", display_pid(ctx.pid));
                        err(driver_errno(&e))
                    })?;
                }
                log::info!("pid {}: recovered {which}", display_pid(ctx.pid));
                Ok(())
            }
            ["shutdown"] => {
                // The serving loop sees the request, drains and shuts down.
                log::info!("pid {}: shutdown requested", display_pid(ctx.pid));
                self.stop_accepting();
                Ok(())
            }
            ["fault", args @ ..] => {
                let Some(faults) = self.faults.as_ref() else {
                    self.log_refusal(
                        ctx,
                        "write control",
                        EOPNOTSUPP,
                        "no fault injection on this device",
                    );
                    return Err(err(EOPNOTSUPP));
                };
                match faults.inject(args) {
                    Ok(done) => {
                        log::warn!("pid {}: fault injected: {done}", display_pid(ctx.pid));
                        Ok(())
                    }
                    Err(usage) => fail(format!("fault: {usage}")),
                }
            }
            _ => fail(format!(
                "unknown command {} (leak-check, recover vram|gtt|all, shutdown, fault …)",
                pddgpu_ipc::logline::excerpt(command)
            )),
        }
    }
}
