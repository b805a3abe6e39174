//! What runs inside the guest: the programs copied in and the scenario
//! steps `/init` runs (see [`crate::init`]).
//!
//! 1. `start pddgpud`: the daemon on the bochs-display through sysfs
//!    (`--backend linux-pci`); it must answer on its socket. Without a GPU it
//!    exits non-zero with "no PDDGPU-compatible device", and this step fails.
//! 2. `device`: pddgpud drives the GPU found in sysfs, VRAM size as the BAR.
//! 3. `pddgpu cat stats`, `vram`, `gtt`, `health` through the CLI.
//! 4. `clients`: 4 client processes allocate VRAM and GTT BOs, map them,
//!    write patterns, read them back through the scheme and (VRAM) the BAR;
//!    one is SIGKILLed holding its BOs, which the server must free.
//! 5. `leak-check` and `stats after`: clean, nothing used, no BOs.
//! 6. `stop pddgpud`: SIGTERM, clean exit 0.

use crate::binaries::GuestBinary;
pub use crate::binaries::{CLI, PDDGPUD};
use crate::init::Step;

/// The guest test program (this package's `pddgpu-guest`).
pub const GUEST: GuestBinary = GuestBinary::new("pddgpu-image", "pddgpu-guest");

/// The socket pddgpud listens on in the guest.
pub const SOCKET: &str = "/run/pddgpu/pddgpu.sock";

/// The name of the step that fails first on a guest without a GPU.
pub const DEVICE_STEP: &str = "start pddgpud";

/// What the negative run must print: pddgpud's clear message on a guest
/// without a PDDGPU-compatible device.
pub const NO_DEVICE_MESSAGE: &str = "no PDDGPU-compatible device";

/// The workspace binaries the guest needs.
pub fn guest_binaries() -> Vec<GuestBinary> {
    vec![PDDGPUD, CLI, GUEST]
}

const START_PDDGPUD: &str = r#"alive() {
    [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}
mkdir -p "$(dirname "$PDDGPU_SOCKET")"
pddgpud --backend linux-pci --gtt-size 64M --socket "$PDDGPU_SOCKET" --log-level info &
PDDGPUD_PID=$!
n=0
until pddgpu cat state >/dev/null 2>&1; do
    if ! alive "$PDDGPUD_PID"; then
        wait "$PDDGPUD_PID"
        fail "pddgpud exited with status $? before serving"
    fi
    n=$((n + 1))
    [ "$n" -le 300 ] || fail "pddgpud did not answer on $PDDGPU_SOCKET within 30 s"
    usleep 100000
done
echo "pddgpud (pid $PDDGPUD_PID) is serving on $PDDGPU_SOCKET"
"#;

const STOP_PDDGPUD: &str = r#"kill -TERM "$PDDGPUD_PID"
wait "$PDDGPUD_PID"
rc=$?
[ "$rc" -eq 0 ] || fail "pddgpud exited with status $rc after SIGTERM"
echo "pddgpud stopped cleanly"
"#;

/// The scenario, in order.
pub fn steps() -> Vec<Step> {
    let sock = format!("export PDDGPU_SOCKET={SOCKET}\n");
    vec![
        Step::main(DEVICE_STEP, &(sock + START_PDDGPUD)),
        Step::sub("device", "pddgpu-guest device"),
        Step::sub("cat stats", "pddgpu cat stats"),
        Step::sub("cat vram", "pddgpu cat vram"),
        Step::sub("cat gtt", "pddgpu cat gtt"),
        Step::sub(
            "cat health",
            "pddgpu cat health\n[ \"$(pddgpu cat health)\" = ok ]",
        ),
        Step::sub("clients", "pddgpu-guest clients --count 4"),
        Step::sub("leak-check", "pddgpu leak-check"),
        Step::sub("stats after", "pddgpu cat stats\npddgpu-guest check-idle"),
        Step::main("stop pddgpud", STOP_PDDGPUD),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_covers_the_issue_and_starts_with_the_daemon() {
        let steps = steps();
        assert_eq!(steps[0].name, DEVICE_STEP);
        let script = crate::init::render(&steps).unwrap();
        for needle in [
            "pddgpud --backend linux-pci",
            "pddgpu cat stats",
            "pddgpu cat vram",
            "pddgpu cat gtt",
            "pddgpu cat health",
            "pddgpu-guest clients --count 4",
            "pddgpu leak-check",
            "pddgpu-guest check-idle",
            "kill -TERM",
        ] {
            assert!(script.contains(needle), "{needle}");
        }
        let bins = guest_binaries();
        assert!(bins.contains(&PDDGPUD) && bins.contains(&CLI) && bins.contains(&GUEST));
    }
}
