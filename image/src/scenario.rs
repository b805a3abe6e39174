//! What runs inside the guest: the programs copied in and the scenario
//! steps `/init` runs (see [`crate::init`]).

use crate::binaries::GuestBinary;
use crate::init::Step;

/// The guest test program (this package's `pddgpu-guest`).
pub const GUEST: GuestBinary = GuestBinary {
    package: "pddgpu-image",
    bin: "pddgpu-guest",
};

/// The name of the step that fails first on a guest without a GPU.
pub const DEVICE_STEP: &str = "probe gpu";

/// What the negative run must print: the clear message of a guest without
/// a PDDGPU-compatible device.
pub const NO_DEVICE_MESSAGE: &str = "no PDDGPU-compatible device";

/// The workspace binaries the guest needs.
pub fn guest_binaries() -> Vec<GuestBinary> {
    vec![GUEST]
}

/// The scenario, in order.
pub fn steps() -> Vec<Step> {
    vec![Step::sub(DEVICE_STEP, "pddgpu-guest probe")]
}
