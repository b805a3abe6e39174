//! # pddgpu-sel4-proto — requests and replies between the seL4 server and
//! its clients
//!
//! A request is one seL4 IPC `call` on the client's badged endpoint: the
//! message label is the [`Op`], the message registers its arguments. The
//! badge, which the client cannot forge or see, is its owner id in the
//! core. A reply's label is 0 for success (its registers carry the
//! results) or an errno — the same errno the `pddgpu:` scheme gives for
//! the same driver error (the server compiles the scheme's
//! `scheme/src/errno.rs` itself).
//!
//! What is shared with the other transports, and what is not:
//! - the create parameters are the fields of `pddgpu_ipc::BoDesc` (size,
//!   domain, flags, alignment), with the same domain numbers as
//!   `BoInfoWire::domain` and the same flag bits as `BoFlags`, and they are
//!   validated by the core (`Driver::bo_create`) as on every transport;
//! - the encoding is not the path form `bo/new?size=…`: seL4 IPC carries
//!   machine words, and `pddgpu-ipc` is a `std` crate (sockets, clap,
//!   JSON) that cannot be linked into a root task, so [`Request::decode`]
//!   checks the words (unknown op, short message, unknown domain or flag
//!   bits: `EINVAL`) and hands typed values to the core;
//! - there are no handles: a BO is named by its id, and the core's owner
//!   check (the badge) decides who may touch it; there is no label, export
//!   or import (no sharing between clients on seL4 yet).
//!
//! Memory: `Map` makes the server copy the capabilities of the BO's own
//! frames into the client's CNode, starting at [`slots::FIRST_FRAME`]; the
//! client maps them into [`BO_WINDOW`]. Nothing else of the server's memory
//! is ever given out.
#![cfg_attr(not(test), no_std)]

use pddgpu::driver::{BoFlags, Domain};

/// Size of a page and of a frame capability's frame.
pub const PAGE_SIZE: u64 = 4096;

/// Where a client maps BO frames: the server builds the page tables for
/// this window when it creates the client, so mapping needs no memory the
/// client does not have.
pub const BO_WINDOW: usize = 0x4000_0000;
/// Pages in [`BO_WINDOW`] (16 MiB).
pub const BO_WINDOW_PAGES: usize = (16 << 20) / PAGE_SIZE as usize;

/// The capability slots of a client's CNode (a CNode of
/// `2^CNODE_SIZE_BITS` slots, addressed by index alone).
pub mod slots {
    /// Bits of the client CNode's size.
    pub const CNODE_SIZE_BITS: usize = 13;
    /// The badged endpoint to the server (write and grant-reply only).
    pub const ENDPOINT: usize = 1;
    /// The client's own VSpace root (to map the frames it is given).
    pub const VSPACE: usize = 3;
    /// The endpoint again, with the fault badge: the kernel sends the
    /// client's faults through it (without MCS the kernel looks the fault
    /// endpoint up in the faulting thread's own CNode). A client that calls
    /// through it is taken for faulted.
    pub const FAULT_ENDPOINT: usize = 4;
    /// First slot of the frames the server copies in; the server places
    /// them, never the client.
    pub const FIRST_FRAME: usize = 16;
    /// One past the last frame slot.
    pub const END_FRAME: usize = 1 << CNODE_SIZE_BITS;
}

/// Longest text of a `Fail` or `Say` message the server reads.
pub const TEXT_MAX: usize = 240;

/// Set in the badge of a client's fault endpoint (the rest is its owner
/// id).
pub const FAULT_BADGE: u64 = 1 << 63;

/// The operations, as message labels: 1, 2, … in declaration order (a
/// new operation goes at the end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Op {
    /// `[] -> [client number, quota in bytes (0: none)]`.
    Hello = 1,
    /// `[size, domain, flags, align] -> [bo id]`.
    Create,
    /// `[bo] -> []`.
    Free,
    /// `[bo] -> [domain, size, allocated size, flags, owner, refcount]`.
    Info,
    /// `[] -> [vram bo count, vram requested bytes, vram allocated bytes,
    /// gtt bo count, gtt requested bytes, gtt allocated bytes]`.
    Stats,
    /// `[] -> [clean (0/1), live bos, suspects]`.
    LeakCheck,
    /// `[domain] -> []`.
    Recover,
    /// `[bo] -> [first slot, pages]`.
    Map,
    /// `[bo, seed] -> []`: the server reads the BO through its own mapping
    /// and checks [`pattern`]`(seed, i)` at every byte.
    Verify,
    /// `[bytes of text…] -> never answered`: the client gives up.
    Fail,
    /// `[holding (0/1)] -> never answered`: the client's script is over.
    Done,
    /// `[bytes of text…] -> []`: a progress line the server prints for the
    /// client, whole (clients share a priority and would interleave
    /// mid-line on the debug console).
    Say,
}

impl Op {
    /// Decodes a label.
    pub fn from_label(label: u64) -> Option<Self> {
        use Op::*;
        [
            Hello, Create, Free, Info, Stats, LeakCheck, Recover, Map, Verify, Fail, Done, Say,
        ]
        .into_iter()
        .find(|op| *op as u64 == label)
    }

    /// Message registers the request needs at least.
    pub fn min_len(self) -> usize {
        match self {
            Op::Hello | Op::Stats | Op::LeakCheck | Op::Fail | Op::Say => 0,
            Op::Free | Op::Info | Op::Recover | Op::Map | Op::Done => 1,
            Op::Verify => 2,
            Op::Create => 4,
        }
    }
}

/// A decoded request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Who am I (the client's number, 1-based).
    Hello,
    /// Create a BO.
    Create {
        /// Bytes (> 0; the core checks).
        size: u64,
        /// Domain.
        domain: Domain,
        /// Placement flags.
        flags: BoFlags,
        /// 0 or a power of two (the core checks).
        align: u64,
    },
    /// Drop the caller's BO.
    Free {
        /// BO id.
        bo: u64,
    },
    /// Describe the caller's BO.
    Info {
        /// BO id.
        bo: u64,
    },
    /// Memory statistics.
    Stats,
    /// Run the leak check.
    LeakCheck,
    /// Recover a domain in ERROR.
    Recover {
        /// The domain.
        domain: Domain,
    },
    /// Give the caller the frames of its BO.
    Map {
        /// BO id.
        bo: u64,
    },
    /// Check the BO holds the pattern of `seed`.
    Verify {
        /// BO id.
        bo: u64,
        /// Pattern seed.
        seed: u64,
    },
    /// The client failed; its reason is in the message's bytes.
    Fail,
    /// A progress line, in the message's bytes.
    Say,
    /// The client is done; it may still hold BOs.
    Done {
        /// Whether it still holds BOs on purpose.
        holding: bool,
    },
}

/// Why a request could not be decoded (answered with `EINVAL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The label is no [`Op`].
    UnknownOp(u64),
    /// Fewer registers than the op needs.
    Short {
        /// The op.
        op: Op,
        /// Registers sent.
        len: usize,
    },
    /// A domain number other than 0 (VRAM) or 1 (GTT).
    BadDomain(u64),
    /// Flag bits no [`BoFlags`] has.
    BadFlags(u64),
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::UnknownOp(label) => write!(f, "unknown operation {label}"),
            DecodeError::Short { op, len } => {
                write!(f, "{op:?} needs {} words, got {len}", op.min_len())
            }
            DecodeError::BadDomain(d) => write!(f, "unknown domain {d} (0 vram, 1 gtt)"),
            DecodeError::BadFlags(bits) => write!(f, "unknown flag bits {bits:#x}"),
        }
    }
}

/// The domain number of the wire (`BoInfoWire::domain`'s numbering).
pub fn domain_to_raw(domain: Domain) -> u64 {
    domain.index() as u64
}

fn domain_from_raw(raw: u64) -> Result<Domain, DecodeError> {
    match raw {
        0 => Ok(Domain::Vram),
        1 => Ok(Domain::Gtt),
        other => Err(DecodeError::BadDomain(other)),
    }
}

impl Request {
    /// Decodes a request from its label and message registers.
    pub fn decode(label: u64, regs: &[u64]) -> Result<Request, DecodeError> {
        let op = Op::from_label(label).ok_or(DecodeError::UnknownOp(label))?;
        if regs.len() < op.min_len() {
            return Err(DecodeError::Short {
                op,
                len: regs.len(),
            });
        }
        Ok(match op {
            Op::Hello => Request::Hello,
            Op::Create => {
                let flags = u32::try_from(regs[2])
                    .ok()
                    .and_then(BoFlags::from_bits)
                    .ok_or(DecodeError::BadFlags(regs[2]))?;
                Request::Create {
                    size: regs[0],
                    domain: domain_from_raw(regs[1])?,
                    flags,
                    align: regs[3],
                }
            }
            Op::Free => Request::Free { bo: regs[0] },
            Op::Info => Request::Info { bo: regs[0] },
            Op::Stats => Request::Stats,
            Op::LeakCheck => Request::LeakCheck,
            Op::Recover => Request::Recover {
                domain: domain_from_raw(regs[0])?,
            },
            Op::Map => Request::Map { bo: regs[0] },
            Op::Verify => Request::Verify {
                bo: regs[0],
                seed: regs[1],
            },
            Op::Fail => Request::Fail,
            Op::Say => Request::Say,
            Op::Done => Request::Done {
                holding: regs[0] != 0,
            },
        })
    }

    /// The label and the argument words of this request.
    pub fn encode(&self) -> (Op, [u64; 4], usize) {
        let mut w = [0u64; 4];
        let (op, len) = match *self {
            Request::Hello => (Op::Hello, 0),
            Request::Create {
                size,
                domain,
                flags,
                align,
            } => {
                w = [size, domain_to_raw(domain), flags.bits().into(), align];
                (Op::Create, 4)
            }
            Request::Free { bo } => {
                w[0] = bo;
                (Op::Free, 1)
            }
            Request::Info { bo } => {
                w[0] = bo;
                (Op::Info, 1)
            }
            Request::Stats => (Op::Stats, 0),
            Request::LeakCheck => (Op::LeakCheck, 0),
            Request::Recover { domain } => {
                w[0] = domain_to_raw(domain);
                (Op::Recover, 1)
            }
            Request::Map { bo } => {
                w[0] = bo;
                (Op::Map, 1)
            }
            Request::Verify { bo, seed } => {
                w[0] = bo;
                w[1] = seed;
                (Op::Verify, 2)
            }
            Request::Fail => (Op::Fail, 0),
            Request::Say => (Op::Say, 0),
            Request::Done { holding } => {
                w[0] = holding.into();
                (Op::Done, 1)
            }
        };
        (op, w, len)
    }
}

/// Byte `i` of the test pattern of `seed`: what a client writes into its
/// BO and the server expects to read back. It differs between seeds and
/// along the BO, so a wrong page, a shifted copy or another client's bytes
/// do not pass.
pub fn pattern(seed: u64, i: u64) -> u8 {
    // A splitmix64 finalizer over (seed, word index): a bijection of its
    // input, so different seeds give different words everywhere.
    let mut x = seed ^ (i / 8).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x >> ((i % 8) * 8)) as u8
}

/// The errnos of replies: the scheme's numbering (`redox_syscall`'s
/// constants, Linux numbers), so one errno means one thing on every
/// transport.
pub use syscall::error as errno;

#[cfg(test)]
mod tests {
    use super::*;

    fn all_requests() -> [Request; 12] {
        [
            Request::Hello,
            Request::Create {
                size: 1 << 20,
                domain: Domain::Gtt,
                flags: BoFlags::CONTIGUOUS | BoFlags::CLEARED,
                align: 1 << 16,
            },
            Request::Free { bo: 7 },
            Request::Info { bo: 8 },
            Request::Stats,
            Request::LeakCheck,
            Request::Recover {
                domain: Domain::Vram,
            },
            Request::Map { bo: 9 },
            Request::Verify { bo: 10, seed: !0 },
            Request::Fail,
            Request::Done { holding: true },
            Request::Say,
        ]
    }

    #[test]
    fn every_request_survives_encoding() {
        for request in all_requests() {
            let (op, words, len) = request.encode();
            assert!(len >= op.min_len(), "{request:?}");
            assert_eq!(Op::from_label(op as u64), Some(op));
            assert_eq!(Request::decode(op as u64, &words[..len]), Ok(request));
        }
    }

    #[test]
    fn malformed_requests_are_refused_with_the_reason() {
        assert_eq!(Request::decode(0, &[]), Err(DecodeError::UnknownOp(0)));
        assert_eq!(
            Request::decode(99, &[1, 2]),
            Err(DecodeError::UnknownOp(99))
        );
        for request in all_requests() {
            let (op, words, len) = request.encode();
            if len > 0 {
                assert_eq!(
                    Request::decode(op as u64, &words[..len - 1]),
                    Err(DecodeError::Short { op, len: len - 1 }),
                    "{request:?} one word short"
                );
            }
        }
        let create = Op::Create as u64;
        assert_eq!(
            Request::decode(create, &[4096, 2, 0, 0]),
            Err(DecodeError::BadDomain(2))
        );
        assert_eq!(
            Request::decode(create, &[4096, 0, 1 << 4, 0]),
            Err(DecodeError::BadFlags(1 << 4))
        );
        assert_eq!(
            Request::decode(create, &[4096, 0, 1 << 32, 0]),
            Err(DecodeError::BadFlags(1 << 32)),
            "flag words wider than the flags are refused, not truncated"
        );
        assert_eq!(
            Request::decode(Op::Recover as u64, &[u64::MAX]),
            Err(DecodeError::BadDomain(u64::MAX))
        );
    }

    #[test]
    fn flag_bits_and_domain_numbers_match_the_other_transports() {
        // The host and Redox wire (pddgpu_ipc's `flags=` bits and
        // BoInfoWire::domain) carries the same values.
        let bits = [
            (BoFlags::CONTIGUOUS, 1),
            (BoFlags::VISIBLE, 2),
            (BoFlags::TOPDOWN, 4),
            (BoFlags::CLEARED, 8),
        ];
        for (flag, bit) in bits {
            assert_eq!(flag.bits(), bit, "{flag:?}");
        }
        assert_eq!(domain_to_raw(Domain::Vram), 0);
        assert_eq!(domain_to_raw(Domain::Gtt), 1);
    }

    #[test]
    fn patterns_differ_between_seeds_and_along_the_bo() {
        let bytes = |seed| (0..4096u64).map(move |i| pattern(seed, i));
        for (a, b) in [(1, 2), (5, !5), (0, 1 << 63)] {
            let same = bytes(a).zip(bytes(b)).filter(|(x, y)| x == y).count();
            assert!(
                same < 64,
                "seeds {a:#x} and {b:#x} agree on {same} of 4096 bytes"
            );
        }
        let first: [u8; 8] = core::array::from_fn(|i| pattern(3, i as u64));
        let later: [u8; 8] = core::array::from_fn(|i| pattern(3, 4096 + i as u64));
        assert_ne!(first, later, "a shifted page would pass");
        let zeros = bytes(9).filter(|&b| b == 0).count();
        assert!(
            zeros < 64,
            "{zeros} zero bytes: a cleared BO would nearly pass"
        );
    }
}
