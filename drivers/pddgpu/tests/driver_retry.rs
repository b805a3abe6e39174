//! The retry helper driving real driver allocations: parked requests are
//! retried when memory is freed or their delay passes, up to the count,
//! while other requests go on.

use pddgpu::device::{SimConfig, SimDevice};
use pddgpu::driver::*;
use pddgpu::retry::{ParkError, RetryQueue};

const MIB: u64 = 1 << 20;

#[derive(Debug)]
struct Request {
    owner: OwnerId,
    size: u64,
    domain: Domain,
}

fn create(d: &Driver, r: &Request, retry: bool) -> Result<BoId, DriverError> {
    let req = BoCreate {
        size: r.size,
        domain: r.domain,
        flags: BoFlags::empty(),
        align: 0,
        label: "parked",
    };
    if retry {
        d.bo_create_retry(r.owner, &req, 0)
    } else {
        d.bo_create(r.owner, &req, 0)
    }
}

#[test]
fn parked_requests_run_after_a_free_or_give_up_after_the_count() {
    let dev = SimDevice::new(SimConfig {
        vram_size: 4 * MIB,
        visible_size: MIB,
        gtt_size: 4 * MIB,
    })
    .unwrap();
    let d = Driver::new(dev.resources(), 0).unwrap();
    let hog = create(
        &d,
        &Request {
            owner: 1,
            size: 4 * MIB,
            domain: Domain::Vram,
        },
        false,
    )
    .unwrap();
    let mut q: RetryQueue<Request> = RetryQueue::new(8);

    // A VRAM request that cannot be served now is parked.
    let waiting = Request {
        owner: 2,
        size: MIB,
        domain: Domain::Vram,
    };
    let epochs = d.free_epochs();
    let Err(e) = create(&d, &waiting, false) else {
        panic!("VRAM is full")
    };
    let DriverError::NoSpace { retry, domain, .. } = e else {
        panic!("{e}")
    };
    assert_eq!(retry.count, 3);
    let ticket = q.park(waiting, domain, retry, epochs, 100).unwrap();
    // A second one that will never fit.
    let hopeless = Request {
        owner: 3,
        size: 4 * MIB,
        domain: Domain::Vram,
    };
    let epochs = d.free_epochs();
    let e = create(&d, &hopeless, false).unwrap_err();
    let DriverError::NoSpace { retry, .. } = e else {
        panic!("{e}")
    };
    let hopeless_ticket = q.park(hopeless, Domain::Vram, retry, epochs, 100).unwrap();

    // Meanwhile other requests are served: GTT is free.
    assert!(create(
        &d,
        &Request {
            owner: 4,
            size: MIB,
            domain: Domain::Gtt
        },
        false
    )
    .is_ok());
    assert!(!q.has_due(105, d.free_epochs()));
    assert!(q
        .poll(105, d.free_epochs(), |r, _| create(&d, r, true))
        .is_empty());

    // A GTT free does not wake VRAM requests; the delay does.
    assert_eq!(q.next_due_ms(), Some(110));
    let done = q.poll(110, d.free_epochs(), |r, _| create(&d, r, true));
    assert!(done.is_empty(), "still full, retries left");
    assert_eq!(d.stats().vram.retries, 2);

    // A VRAM free wakes them at once (before their delay).
    d.bo_unref(1, hog).unwrap();
    // (The hopeless one is woken too, and fails again.)
    let done = q.poll(111, d.free_epochs(), |r, _| create(&d, r, true));
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].ticket, ticket);
    assert_eq!(done[0].attempts, 2);
    let id = done[0].result.clone().unwrap();
    assert_eq!(d.bo_info(2, id).unwrap().size, MIB);

    // The hopeless one ran out of its 3 retries.
    let done = q.poll(200, d.free_epochs(), |r, _| create(&d, r, true));
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].ticket, hopeless_ticket);
    assert_eq!(done[0].attempts, 3);
    assert!(matches!(done[0].result, Err(DriverError::NoSpace { .. })));
    assert!(q.is_empty());
    assert_eq!(d.stats().vram.retries, 5, "2 + 2 + 1 attempts");

    // Retry count 0 means "do not park".
    d.tunables().set("vram_retry_count", "0").unwrap();
    let r = Request {
        owner: 5,
        size: 8 * MIB,
        domain: Domain::Vram,
    };
    let e = create(&d, &r, false).unwrap_err();
    assert!(
        matches!(e, DriverError::InvalidArgument(_)),
        "larger than VRAM: not retryable"
    );
    let r = Request {
        owner: 5,
        size: 4 * MIB,
        domain: Domain::Vram,
    };
    let e = create(&d, &r, false).unwrap_err();
    let DriverError::NoSpace { retry, .. } = e else {
        panic!("{e}")
    };
    assert!(matches!(
        q.park(r, Domain::Vram, retry, d.free_epochs(), 0),
        Err(ParkError::NoRetries(_))
    ));
}
