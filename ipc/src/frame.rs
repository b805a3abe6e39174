//! Frames of the host transport: a Redox scheme request (`schemev2::Sqe`) or
//! response (`schemev2::Cqe`) plus the payload bytes that the kernel would
//! otherwise have mapped into the server.
//!
//! On Redox the kernel hands the server an `Sqe` whose pointer arguments
//! point into the caller's memory. Over a socket the bytes travel alongside
//! the `Sqe` instead, and the *server* rebuilds the pointer arguments from
//! buffers it owns (see [`crate::host::server`]); nothing a client sends is
//! ever used as an address.
//!
//! Every frame starts with a magic number, a version and explicit lengths,
//! encoded little-endian field by field. Decoding validates all of them, so a
//! truncated, oversized or foreign frame is rejected with an error instead of
//! being misread.

use syscall::schemev2::{Cqe, Sqe, SqeFlags};

/// Identifies a pddgpu host-transport frame (`"PGDP"` in little-endian).
pub const MAGIC: u32 = u32::from_le_bytes(*b"PGDP");
/// Version of the frame layout. Bumped on any incompatible change.
pub const VERSION: u16 = 1;
/// Largest payload a frame may carry in either direction (16 MiB). Larger
/// reads and writes are split by the client library.
pub const MAX_PAYLOAD: usize = 16 << 20;

/// Size of an encoded [`RequestHeader`].
pub const REQUEST_HEADER_LEN: usize = 72;
/// Size of an encoded [`ResponseHeader`].
pub const RESPONSE_HEADER_LEN: usize = 32;

/// Tag of a response the server sends without being asked, right before it
/// closes a connection it refuses (too many connections): its result is
/// the errno. Clients never use this tag for a request.
pub const REFUSAL_TAG: u32 = 0;

/// Bit in [`ResponseHeader::flags`]: a file descriptor travels with this
/// response as `SCM_RIGHTS` ancillary data.
pub const RESPONSE_FLAG_FD: u16 = 1;

/// Why a frame could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The first four bytes are not [`MAGIC`]: not a pddgpu peer.
    #[error("bad frame magic {0:#010x}")]
    BadMagic(u32),
    /// The peer speaks another version of the frame layout.
    #[error("unsupported frame version {0} (this build speaks {VERSION})")]
    BadVersion(u16),
    /// A reserved field is not zero.
    #[error("reserved frame field is {0:#x}, must be 0")]
    Reserved(u32),
    /// A length field exceeds [`MAX_PAYLOAD`].
    #[error("frame length {len} exceeds the maximum {MAX_PAYLOAD}")]
    TooLarge {
        /// The length that was announced.
        len: u64,
    },
    /// Fewer bytes than a header were supplied.
    #[error("truncated frame header: {0} bytes")]
    Truncated(usize),
}

impl FrameError {
    /// The errno reported to a client that sent such a frame.
    pub fn errno(&self) -> i32 {
        match self {
            FrameError::BadMagic(_) | FrameError::Reserved(_) | FrameError::Truncated(_) => {
                syscall::error::EINVAL
            }
            FrameError::BadVersion(_) => syscall::error::EPROTONOSUPPORT,
            FrameError::TooLarge { .. } => syscall::error::EMSGSIZE,
        }
    }
}

/// A decoded request header: the `Sqe` (its pointer arguments are
/// meaningless on the wire) plus the payload and output lengths.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestHeader {
    /// Bytes of payload that follow this header (path, data to write, call
    /// payload).
    pub payload_len: u32,
    /// Bytes the client is prepared to receive back (read, fpath, getdents).
    pub out_len: u32,
    /// The scheme request; `caller` is ignored (the server fills it from the
    /// socket's peer credentials).
    pub sqe: Sqe,
}

impl RequestHeader {
    /// Encodes the header into its fixed-size wire form.
    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        let mut b = [0u8; REQUEST_HEADER_LEN];
        // The 16-bit field is reserved (zero) in a request.
        put_prefix(&mut b, 0, self.payload_len, self.out_len);
        b[16] = self.sqe.opcode;
        b[17] = self.sqe.sqe_flags.bits();
        b[18..20].copy_from_slice(&self.sqe._rsvd.to_le_bytes());
        b[20..24].copy_from_slice(&self.sqe.tag.to_le_bytes());
        for (i, arg) in self.sqe.args.iter().enumerate() {
            let at = 24 + i * 8;
            b[at..at + 8].copy_from_slice(&arg.to_le_bytes());
        }
        b
    }

    /// Decodes and validates a header from the first [`REQUEST_HEADER_LEN`]
    /// bytes of `b`.
    pub fn decode(b: &[u8]) -> Result<Self, FrameError> {
        let b = b
            .get(..REQUEST_HEADER_LEN)
            .ok_or(FrameError::Truncated(b.len()))?;
        let (reserved, payload_len, out_len) = take_prefix(b)?;
        if reserved != 0 {
            return Err(FrameError::Reserved(reserved.into()));
        }
        check_len(payload_len)?;
        check_len(out_len)?;
        let mut args = [0u64; 6];
        for (i, arg) in args.iter_mut().enumerate() {
            let at = 24 + i * 8;
            *arg = le_u64(&b[at..at + 8]);
        }
        Ok(RequestHeader {
            payload_len,
            out_len,
            sqe: Sqe {
                opcode: b[16],
                sqe_flags: SqeFlags::from_bits_retain(b[17]),
                _rsvd: le_u16(&b[18..20]),
                tag: le_u32(&b[20..24]),
                args,
                caller: 0,
            },
        })
    }
}

/// What the start of a server's receive buffer holds.
#[derive(Clone, Copy, Debug)]
pub enum Incoming {
    /// Not a whole frame yet: more bytes must arrive (the header, once
    /// complete, has been validated).
    Incomplete,
    /// A whole request: its header, and the frame's length (header plus
    /// payload) at the start of the buffer.
    Request {
        /// The validated header.
        header: RequestHeader,
        /// Bytes the frame occupies.
        len: usize,
    },
}

/// Splits the first request frame off the bytes a server received: a
/// malformed header is an error as soon as its 72 bytes are there, and a
/// frame is complete when its announced payload has arrived too.
pub fn split_request(buf: &[u8]) -> Result<Incoming, FrameError> {
    if buf.len() < REQUEST_HEADER_LEN {
        return Ok(Incoming::Incomplete);
    }
    let header = RequestHeader::decode(buf)?;
    let len = REQUEST_HEADER_LEN + header.payload_len as usize;
    if buf.len() < len {
        return Ok(Incoming::Incomplete);
    }
    Ok(Incoming::Request { header, len })
}

/// A decoded response header: the `Cqe` plus the payload length.
#[derive(Clone, Copy, Debug, Default)]
pub struct ResponseHeader {
    /// [`RESPONSE_FLAG_FD`] or 0.
    pub flags: u16,
    /// Bytes of payload that follow (data read, call output, path, …).
    pub payload_len: u32,
    /// The scheme response, exactly as the server's dispatch produced it.
    pub cqe: Cqe,
}

impl ResponseHeader {
    /// Encodes the header into its fixed-size wire form.
    pub fn encode(&self) -> [u8; RESPONSE_HEADER_LEN] {
        let mut b = [0u8; RESPONSE_HEADER_LEN];
        // The second length is reserved (zero) in a response.
        put_prefix(&mut b, self.flags, self.payload_len, 0);
        b[16] = self.cqe.flags;
        b[17..20].copy_from_slice(&self.cqe.extra_raw);
        b[20..24].copy_from_slice(&self.cqe.tag.to_le_bytes());
        b[24..32].copy_from_slice(&self.cqe.result.to_le_bytes());
        b
    }

    /// Decodes and validates a header from the first
    /// [`RESPONSE_HEADER_LEN`] bytes of `b`.
    pub fn decode(b: &[u8]) -> Result<Self, FrameError> {
        let b = b
            .get(..RESPONSE_HEADER_LEN)
            .ok_or(FrameError::Truncated(b.len()))?;
        let (flags, payload_len, reserved) = take_prefix(b)?;
        if flags & !RESPONSE_FLAG_FD != 0 {
            return Err(FrameError::Reserved(flags.into()));
        }
        if reserved != 0 {
            return Err(FrameError::Reserved(reserved));
        }
        check_len(payload_len)?;
        Ok(ResponseHeader {
            flags,
            payload_len,
            cqe: Cqe {
                flags: b[16],
                extra_raw: [b[17], b[18], b[19]],
                tag: le_u32(&b[20..24]),
                result: le_u64(&b[24..32]),
            },
        })
    }
}

// Both headers start with the same 16 bytes: magic (0..4), version
// (4..6), a 16-bit field (6..8) and two 32-bit lengths (8..12, 12..16).

/// Writes the common start of a header into `b`.
fn put_prefix(b: &mut [u8], field: u16, first: u32, second: u32) {
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4..6].copy_from_slice(&VERSION.to_le_bytes());
    b[6..8].copy_from_slice(&field.to_le_bytes());
    b[8..12].copy_from_slice(&first.to_le_bytes());
    b[12..16].copy_from_slice(&second.to_le_bytes());
}

/// Checks the magic and version at the start of `b` and returns the
/// 16-bit field and the two lengths, for the header to check.
fn take_prefix(b: &[u8]) -> Result<(u16, u32, u32), FrameError> {
    let magic = le_u32(&b[0..4]);
    if magic != MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    let version = le_u16(&b[4..6]);
    if version != VERSION {
        return Err(FrameError::BadVersion(version));
    }
    Ok((le_u16(&b[6..8]), le_u32(&b[8..12]), le_u32(&b[12..16])))
}

/// A length field is at most [`MAX_PAYLOAD`].
fn check_len(len: u32) -> Result<(), FrameError> {
    if len as usize > MAX_PAYLOAD {
        return Err(FrameError::TooLarge { len: len.into() });
    }
    Ok(())
}

fn le_u16(b: &[u8]) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(b);
    u16::from_le_bytes(a)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_request() -> RequestHeader {
        RequestHeader {
            payload_len: 5,
            out_len: 4096,
            sqe: Sqe {
                opcode: 29,
                sqe_flags: SqeFlags::empty(),
                _rsvd: 0,
                tag: 77,
                args: [1, 2, 3, 4, 5, u64::MAX],
                caller: 999,
            },
        }
    }

    #[test]
    fn request_round_trips_and_drops_caller() {
        let h = sample_request();
        let d = RequestHeader::decode(&h.encode()).unwrap();
        assert_eq!(d.payload_len, 5);
        assert_eq!(d.out_len, 4096);
        assert_eq!(d.sqe.opcode, 29);
        assert_eq!(d.sqe.tag, 77);
        assert_eq!(d.sqe.args, [1, 2, 3, 4, 5, u64::MAX]);
        assert_eq!(d.sqe.caller, 0, "the caller never comes from the wire");
    }

    #[test]
    fn request_rejects_bad_frames() {
        let good = sample_request().encode();
        assert_eq!(
            RequestHeader::decode(&good[..10]).unwrap_err(),
            FrameError::Truncated(10)
        );
        let mut b = good;
        b[0] ^= 0xff;
        assert!(matches!(
            RequestHeader::decode(&b),
            Err(FrameError::BadMagic(_))
        ));
        let mut b = good;
        b[4] = 9;
        assert_eq!(
            RequestHeader::decode(&b).unwrap_err(),
            FrameError::BadVersion(9)
        );
        let mut b = good;
        b[6] = 1;
        assert_eq!(
            RequestHeader::decode(&b).unwrap_err(),
            FrameError::Reserved(1)
        );
        let mut b = good;
        b[8..12].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        let e = RequestHeader::decode(&b).unwrap_err();
        assert!(matches!(e, FrameError::TooLarge { .. }));
        assert_eq!(e.errno(), syscall::error::EMSGSIZE);
        let mut b = good;
        b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            RequestHeader::decode(&b),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn split_request_waits_for_whole_frames_and_refuses_bad_headers() {
        let h = sample_request();
        let mut stream = h.encode().to_vec();
        stream.extend_from_slice(b"hello");
        stream.extend_from_slice(&h.encode()[..10]);
        assert!(matches!(
            split_request(&stream[..REQUEST_HEADER_LEN - 1]),
            Ok(Incoming::Incomplete)
        ));
        assert!(matches!(
            split_request(&stream[..REQUEST_HEADER_LEN + 4]),
            Ok(Incoming::Incomplete)
        ));
        let Ok(Incoming::Request { header, len }) = split_request(&stream) else {
            panic!("a whole frame");
        };
        assert_eq!((header.payload_len, len), (5, REQUEST_HEADER_LEN + 5));
        assert!(matches!(
            split_request(&stream[len..]),
            Ok(Incoming::Incomplete)
        ));
        let mut bad = stream.clone();
        bad[0] ^= 1;
        assert!(matches!(split_request(&bad), Err(FrameError::BadMagic(_))));
    }

    #[test]
    fn response_round_trips_and_validates() {
        let h = ResponseHeader {
            flags: RESPONSE_FLAG_FD,
            payload_len: 12,
            cqe: Cqe {
                flags: 1,
                extra_raw: [1, 2, 3],
                tag: 5,
                result: u64::MAX - 1,
            },
        };
        let enc = h.encode();
        let d = ResponseHeader::decode(&enc).unwrap();
        assert_eq!(d.flags, RESPONSE_FLAG_FD);
        assert_eq!(d.payload_len, 12);
        assert_eq!(d.cqe.extra_raw, [1, 2, 3]);
        assert_eq!(d.cqe.result, u64::MAX - 1);
        let mut b = enc;
        b[6] = 0x80;
        assert!(matches!(
            ResponseHeader::decode(&b),
            Err(FrameError::Reserved(_))
        ));
        let mut b = enc;
        b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            ResponseHeader::decode(&b),
            Err(FrameError::TooLarge { .. })
        ));
    }
}
