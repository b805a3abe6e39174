//! What the core offers a front end that retries: `NoSpace` carries the
//! domain's retry policy (from the tunables), a free in a domain moves that
//! domain's free epoch (and only that one), retries are counted, and a
//! request that can never fit is not retryable.

mod common;

use common::{sim_driver, MIB};
use pddgpu::driver::*;

fn req(size: u64, domain: Domain) -> BoCreate<'static> {
    BoCreate::new(size, domain, "parked")
}

#[test]
fn no_space_carries_the_policy_and_frees_move_the_epoch() {
    let (_dev, d) = sim_driver(4 * MIB, 4 * MIB);
    let hog = d.bo_create(1, &req(4 * MIB, Domain::Vram), 0).unwrap();

    let vram_epoch = d.free_epoch(Domain::Vram);
    let e = d.bo_create(2, &req(MIB, Domain::Vram), 0).unwrap_err();
    let DriverError::NoSpace { retry, domain, .. } = e else {
        panic!("{e}")
    };
    assert_eq!((retry.count, domain), (3, Domain::Vram));
    assert!(e.is_retryable());

    // Other domains are served meanwhile, and a GTT free does not move the
    // VRAM epoch.
    let g = d.bo_create(4, &req(MIB, Domain::Gtt), 0).unwrap();
    d.bo_unref(4, g).unwrap();
    assert_eq!(d.free_epoch(Domain::Gtt), 1);
    assert_eq!(d.free_epoch(Domain::Vram), vram_epoch);

    // A retry while still full fails again and is counted.
    d.note_retry(Domain::Vram);
    assert!(d.bo_create(2, &req(MIB, Domain::Vram), 0).is_err());
    assert_eq!(d.stats().vram.retries, 1);

    // A VRAM free moves the VRAM epoch; the retry then succeeds.
    d.bo_unref(1, hog).unwrap();
    assert_eq!(d.free_epoch(Domain::Vram), vram_epoch + 1);
    d.note_retry(Domain::Vram);
    let id = d.bo_create(2, &req(MIB, Domain::Vram), 0).unwrap();
    assert_eq!(d.bo_info(2, id).unwrap().size, MIB);
    assert_eq!(d.stats().vram.retries, 2);

    // The policy follows the tunables; larger than VRAM is not retryable.
    d.tunables().set("vram_retry_count", "0").unwrap();
    let e = d.bo_create(5, &req(8 * MIB, Domain::Vram), 0).unwrap_err();
    assert!(
        matches!(e, DriverError::InvalidArgument(_)) && !e.is_retryable(),
        "larger than VRAM: not retryable"
    );
    let e = d.bo_create(5, &req(4 * MIB, Domain::Vram), 0).unwrap_err();
    let DriverError::NoSpace { retry, .. } = e else {
        panic!("{e}")
    };
    assert_eq!(retry.count, 0, "count 0: the front end must not retry");
}
