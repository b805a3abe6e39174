//! Fixtures the driver tests share: size units, a driver on a simulated
//! device, and the reference models' view of who holds which BO.
// Each test crate compiles this module and uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;

use pddgpu::device::{SimConfig, SimDevice};
use pddgpu::driver::{BoId, Driver, OwnerId};

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;

/// A driver on a fresh simulated device with `vram` bytes of VRAM and
/// `gtt` bytes of GTT, and the device (to inject faults through).
pub fn sim_driver(vram: u64, gtt: u64) -> (SimDevice, Driver) {
    let dev = SimDevice::new(SimConfig::sized(vram, gtt)).unwrap();
    let d = Driver::new(dev.resources(), 0).unwrap();
    (dev, d)
}

/// The BOs of a reference model that `owner` holds at least one reference
/// to, in id order; `holders` gives a model BO's references per owner.
pub fn held_by<B>(
    bos: &BTreeMap<BoId, B>,
    owner: OwnerId,
    holders: impl Fn(&B) -> &BTreeMap<OwnerId, u32>,
) -> Vec<BoId> {
    bos.iter()
        .filter(|(_, b)| holders(b).contains_key(&owner))
        .map(|(id, _)| *id)
        .collect()
}
