//! Conversions between the wire types of `pddgpu-ipc` and the core's.

use pddgpu::driver::{BoInfo, Domain as CoreDomain};
use pddgpu_ipc::wire::{BoInfoWire, Domain, WIRE_ABI};

/// The core's domain for a wire domain.
pub fn core_domain(d: Domain) -> CoreDomain {
    match d {
        Domain::Vram => CoreDomain::Vram,
        Domain::Gtt => CoreDomain::Gtt,
    }
}

/// The wire domain for a core domain.
pub fn wire_domain(d: CoreDomain) -> Domain {
    match d {
        CoreDomain::Vram => Domain::Vram,
        CoreDomain::Gtt => Domain::Gtt,
    }
}

/// The `Info` call's answer for a BO.
pub fn info_wire(info: &BoInfo) -> BoInfoWire {
    BoInfoWire {
        abi: WIRE_ABI,
        domain: wire_domain(info.domain).to_raw(),
        id: info.id.0,
        size: info.size,
        flags: info.flags.bits(),
        refcount: info.refcount,
        owner: info.owner,
        created_ms: info.created_ms,
        segment_count: u32::try_from(info.segments.len()).unwrap_or(u32::MAX),
        exported: info.exported as u32,
    }
}

/// Copies `src` from `offset` into `buf`; returns the bytes copied (0 at
/// or past the end).
pub fn copy_at(src: &[u8], offset: u64, buf: &mut [u8]) -> usize {
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(src.len());
    let n = buf.len().min(src.len() - start);
    buf[..n].copy_from_slice(&src[start..start + n]);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_round_trip_and_copies_clip() {
        for d in [Domain::Vram, Domain::Gtt] {
            assert_eq!(wire_domain(core_domain(d)), d);
        }
        let mut buf = [0u8; 4];
        assert_eq!(copy_at(b"abcdef", 4, &mut buf), 2);
        assert_eq!(&buf[..2], b"ef");
        assert_eq!(copy_at(b"abc", 9, &mut buf), 0);
    }
}
