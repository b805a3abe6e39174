//! Structures shared by the scheme and its clients on every transport: the
//! binary `call` operations on a BO handle, BO creation parameters and their
//! path form, and the errno names used in messages.
//!
//! The `#[repr(C)]` structs are encoded field by field in little-endian
//! order (`encode`/`decode`), so neither side ever reinterprets raw bytes,
//! and every decode checks the length and the ABI version.

use core::fmt;
use core::str::FromStr;

/// Version of the binary `call` ABI. Carried in every struct that has an
/// `abi` field; a mismatch is `EINVAL`.
pub const WIRE_ABI: u32 = 2;

/// `call` operation codes, passed in `metadata[0]` of a `call` on a BO
/// handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoCall {
    /// Payload out: one [`BoInfoWire`].
    Info = 1,
    /// Payload out: up to `payload.len() / SegmentWire::SIZE` segments
    /// starting at segment index `metadata[1]`; the result is the number
    /// written.
    Segments = 2,
    /// Payload out: one [`ExportWire`] (the token another client needs).
    Export = 3,
}

impl BoCall {
    /// Decodes `metadata[0]`.
    pub fn from_raw(raw: u64) -> Option<Self> {
        match raw {
            1 => Some(BoCall::Info),
            2 => Some(BoCall::Segments),
            3 => Some(BoCall::Export),
            _ => None,
        }
    }
}

/// The `dup` name that asks a BO handle for a file descriptor of the BO's
/// own memory (host transport): byte 0 of the descriptor is byte 0 of the
/// BO, it is exactly the BO's pages long, and it is read-only for a
/// read-only handle. `EOPNOTSUPP` where the backend has no per-BO memory
/// (the linux-pci VRAM BAR).
pub const DUP_BACKING: &[u8] = b"backing";

/// The `dup` name that asks a BO handle for a descriptor of its whole
/// domain, where no per-BO descriptor exists (the linux-pci VRAM BAR):
/// only for privileged callers (`EACCES` otherwise); the client maps the
/// BO's segments from it.
pub const DUP_DOMAIN_BACKING: &[u8] = b"domain-backing";

/// Memory domain of a BO.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Domain {
    /// Device memory (VRAM), managed by the buddy allocator.
    Vram,
    /// System memory mapped through the GTT, managed by the range allocator.
    Gtt,
}

impl Domain {
    /// The lower-case name used in paths and text files.
    pub const fn name(self) -> &'static str {
        match self {
            Domain::Vram => "vram",
            Domain::Gtt => "gtt",
        }
    }
    /// The number used in [`BoInfoWire::domain`].
    pub const fn to_raw(self) -> u32 {
        match self {
            Domain::Vram => 0,
            Domain::Gtt => 1,
        }
    }
    /// Decodes [`BoInfoWire::domain`].
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(Domain::Vram),
            1 => Some(Domain::Gtt),
            _ => None,
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Domain {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vram" => Ok(Domain::Vram),
            "gtt" => Ok(Domain::Gtt),
            other => Err(format!("unknown domain `{other}` (expected vram or gtt)")),
        }
    }
}

/// Placement flags of a new BO: the core's own flags, whose bits are the
/// wire's (the `flags=` query key names them, comma separated).
pub use pddgpu::driver::BoFlags;

const FLAG_NAMES: [(&str, BoFlags); 4] = [
    ("contiguous", BoFlags::CONTIGUOUS),
    ("visible", BoFlags::VISIBLE),
    ("topdown", BoFlags::TOPDOWN),
    ("cleared", BoFlags::CLEARED),
];

/// Parses a `flags=` list, `contiguous,visible,…` (empty: no flags).
pub fn parse_flags(s: &str) -> Result<BoFlags, String> {
    let mut flags = BoFlags::empty();
    for word in s.split(',').filter(|w| !w.is_empty()) {
        let (_, f) = FLAG_NAMES.iter().find(|(n, _)| *n == word).ok_or_else(|| {
            format!("unknown flag `{word}` (expected contiguous, visible, topdown, cleared)")
        })?;
        flags |= *f;
    }
    Ok(flags)
}

/// The `flags=` list form of `flags`.
pub fn flags_list(flags: BoFlags) -> String {
    FLAG_NAMES
        .iter()
        .filter(|(_, f)| flags.contains(*f))
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(",")
}

/// Longest BO label accepted.
pub const MAX_LABEL_LEN: usize = 48;

/// Parameters of a new BO; its path form is `bo/new?size=…&domain=…&…`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoDesc {
    /// Size in bytes (> 0).
    pub size: u64,
    /// Memory domain.
    pub domain: Domain,
    /// Placement flags.
    pub flags: BoFlags,
    /// Alignment in bytes: 0 (default) or a power of two.
    pub align: u64,
    /// Free-form label shown in `leaks` and `clients`
    /// (`[A-Za-z0-9_.-]`, at most [`MAX_LABEL_LEN`] bytes).
    pub label: String,
    /// 0 for a first attempt; n for the n-th retry after `EAGAIN` (counted
    /// in the server's retry statistics).
    pub attempt: u32,
}

impl BoDesc {
    /// A description with default alignment and no label.
    pub fn new(size: u64, domain: Domain, flags: BoFlags) -> Self {
        BoDesc {
            size,
            domain,
            flags,
            align: 0,
            label: String::new(),
            attempt: 0,
        }
    }

    /// The scheme path that creates this BO.
    pub fn to_path(&self) -> String {
        let mut p = format!("bo/new?size={}&domain={}", self.size, self.domain);
        if self.align != 0 {
            p += &format!("&align={}", self.align);
        }
        if !self.flags.is_empty() {
            p += &format!("&flags={}", flags_list(self.flags));
        }
        if !self.label.is_empty() {
            p += &format!("&label={}", self.label);
        }
        if self.attempt != 0 {
            p += &format!("&attempt={}", self.attempt);
        }
        p
    }

    /// Parses the query string of `bo/new?…` (the part after `?`).
    /// Every problem is reported with the offending key, for the log.
    pub fn parse_query(query: &str) -> Result<Self, String> {
        let mut size = None;
        let mut domain = None;
        let mut flags = None;
        let mut align = None;
        let mut label = None;
        let mut attempt = None;
        for pair in query.split('&') {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("query item `{pair}` is not key=value"))?;
            let dup = || format!("query key `{key}` given twice");
            match key {
                "size" => {
                    let v = crate::size::parse_size(value).map_err(|e| format!("size: {e}"))?;
                    if size.replace(v).is_some() {
                        return Err(dup());
                    }
                }
                "domain" => {
                    let v: Domain = value.parse()?;
                    if domain.replace(v).is_some() {
                        return Err(dup());
                    }
                }
                "flags" => {
                    let v = parse_flags(value)?;
                    if flags.replace(v).is_some() {
                        return Err(dup());
                    }
                }
                "align" => {
                    let v = crate::size::parse_size(value).map_err(|e| format!("align: {e}"))?;
                    if v != 0 && !v.is_power_of_two() {
                        return Err(format!("align {v} is not a power of two"));
                    }
                    if align.replace(v).is_some() {
                        return Err(dup());
                    }
                }
                "label" => {
                    check_label(value)?;
                    if label.replace(value.to_string()).is_some() {
                        return Err(dup());
                    }
                }
                "attempt" => {
                    let v: u32 = value
                        .parse()
                        .map_err(|_| format!("attempt `{value}` is not a small number"))?;
                    if attempt.replace(v).is_some() {
                        return Err(dup());
                    }
                }
                other => return Err(format!("unknown query key `{other}`")),
            }
        }
        let size = size.ok_or("missing size=")?;
        if size == 0 {
            return Err("size must be greater than 0".into());
        }
        Ok(BoDesc {
            size,
            domain: domain.unwrap_or(Domain::Vram),
            flags: flags.unwrap_or_default(),
            align: align.unwrap_or(0),
            label: label.unwrap_or_default(),
            attempt: attempt.unwrap_or(0),
        })
    }
}

/// Checks a label: at most [`MAX_LABEL_LEN`] bytes of `[A-Za-z0-9_.-]`.
pub fn check_label(label: &str) -> Result<(), String> {
    if label.len() > MAX_LABEL_LEN {
        return Err(format!("label longer than {MAX_LABEL_LEN} bytes"));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!("label contains `{c}` (allowed: A-Z a-z 0-9 _ . -)"));
    }
    Ok(())
}

/// Bytes in an export token: 128 bits the server draws from the operating
/// system's random source.
pub const TOKEN_LEN: usize = 16;

/// Digits in the text form of a token.
pub const TOKEN_HEX_LEN: usize = 2 * TOKEN_LEN;

/// The text form of a token: exactly [`TOKEN_HEX_LEN`] lowercase hex
/// digits, byte 0 first.
pub fn token_to_hex(token: &[u8; TOKEN_LEN]) -> String {
    token.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses the text form of a token: exactly [`TOKEN_HEX_LEN`] hex digits
/// (either case); anything else is `None`.
pub fn token_from_hex(s: &str) -> Option<[u8; TOKEN_LEN]> {
    let digits = s.as_bytes();
    if digits.len() != TOKEN_HEX_LEN {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut token = [0; TOKEN_LEN];
    for (byte, pair) in token.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(token)
}

/// The credential another client needs to import a BO: its id and the
/// secret token from [`BoCall::Export`]. Text form `<id>:<32 hex digits>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShareToken {
    /// The BO id.
    pub id: u64,
    /// The secret token.
    pub token: [u8; TOKEN_LEN],
}

impl ShareToken {
    /// The scheme path that imports this BO.
    pub fn to_path(&self) -> String {
        format!("bo/{}?token={}", self.id, token_to_hex(&self.token))
    }
}

impl fmt::Display for ShareToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.id, token_to_hex(&self.token))
    }
}

impl FromStr for ShareToken {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (id, token) = s
            .split_once(':')
            .ok_or("a share token looks like <id>:<32 hex digits>")?;
        Ok(ShareToken {
            id: id.parse().map_err(|_| format!("bad BO id `{id}`"))?,
            token: token_from_hex(token).ok_or_else(|| {
                format!("bad token `{token}`: expected {TOKEN_HEX_LEN} hex digits")
            })?,
        })
    }
}

/// Declares a fixed-size wire record: the struct, its encoded `SIZE` (the
/// fields' sizes added up, no padding), `encode`, and a private `read` that
/// decodes exactly `SIZE` bytes. Fields are little-endian, in declaration
/// order, so the layout is written once, in the struct.
macro_rules! wire_record {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* pub $field:ident: $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[$field_meta])* pub $field: $ty, )*
        }

        impl $name {
            /// Encoded size in bytes.
            pub const SIZE: usize = 0 $( + <$ty as Field>::SIZE )*;

            /// Encodes into exactly [`Self::SIZE`] bytes.
            pub fn encode(&self) -> [u8; Self::SIZE] {
                let mut w = Writer::<{ Self::SIZE }>::new();
                $( w.put(&self.$field); )*
                w.finish()
            }

            /// Decodes `b`, which must be exactly [`Self::SIZE`] bytes long.
            fn read(b: &[u8]) -> Option<Self> {
                let mut r = Reader::new(b, Self::SIZE)?;
                Some($name { $( $field: r.get(), )* })
            }
        }
    };
}

wire_record! {
    /// Reply of [`BoCall::Info`].
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    #[repr(C)]
    pub struct BoInfoWire {
        /// [`WIRE_ABI`].
        pub abi: u32,
        /// [`Domain::to_raw`].
        pub domain: u32,
        /// BO id (never reused within a run of the server).
        pub id: u64,
        /// Size in bytes as requested.
        pub size: u64,
        /// [`BoFlags`] bits.
        pub flags: u32,
        /// References held (creator plus importers).
        pub refcount: u32,
        /// Owner (client) id of the creator.
        pub owner: u64,
        /// Creation time, milliseconds since the server started.
        pub created_ms: u64,
        /// Number of backing segments (see [`BoCall::Segments`]).
        pub segment_count: u32,
        /// 1 when exported.
        pub exported: u32,
    }
}

impl BoInfoWire {
    /// Decodes and checks the ABI version.
    pub fn decode(b: &[u8]) -> Option<Self> {
        Self::read(b).filter(|v| v.abi == WIRE_ABI)
    }
}

wire_record! {
    /// One backing segment of a BO: `len` bytes at `bo_offset` in the BO live
    /// at `backing_offset` in the domain's backing memory.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    #[repr(C)]
    pub struct SegmentWire {
        /// Offset inside the BO.
        pub bo_offset: u64,
        /// Offset inside the VRAM or GTT backing.
        pub backing_offset: u64,
        /// Length in bytes.
        pub len: u64,
    }
}

impl SegmentWire {
    /// Decodes one segment.
    pub fn decode(b: &[u8]) -> Option<Self> {
        Self::read(b)
    }
}

wire_record! {
    /// Reply of [`BoCall::Export`].
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    #[repr(C)]
    pub struct ExportWire {
        /// [`WIRE_ABI`].
        pub abi: u32,
        /// Zero.
        pub reserved: u32,
        /// The BO id.
        pub id: u64,
        /// The secret import token.
        pub token: [u8; TOKEN_LEN],
    }
}

impl ExportWire {
    /// Decodes and checks the ABI version.
    pub fn decode(b: &[u8]) -> Option<Self> {
        Self::read(b).filter(|v| v.abi == WIRE_ABI)
    }
}

/// A field of a wire record: a fixed number of little-endian bytes.
trait Field: Sized {
    /// Encoded size in bytes.
    const SIZE: usize;
    /// Writes the value into `out` (exactly `SIZE` bytes).
    fn put(&self, out: &mut [u8]);
    /// Reads a value from `b` (exactly `SIZE` bytes).
    fn get(b: &[u8]) -> Self;
}

/// [`Field`] for little-endian integers.
macro_rules! int_field {
    ($($int:ty),*) => {$(
        impl Field for $int {
            const SIZE: usize = core::mem::size_of::<$int>();
            fn put(&self, out: &mut [u8]) {
                out.copy_from_slice(&self.to_le_bytes());
            }
            fn get(b: &[u8]) -> Self {
                <$int>::from_le_bytes(b.try_into().expect("a field is read at its size"))
            }
        }
    )*};
}

int_field!(u32, u64);

impl<const N: usize> Field for [u8; N] {
    const SIZE: usize = N;
    fn put(&self, out: &mut [u8]) {
        out.copy_from_slice(self);
    }
    fn get(b: &[u8]) -> Self {
        b.try_into().expect("a field is read at its size")
    }
}

struct Writer<const N: usize> {
    buf: [u8; N],
    at: usize,
}

impl<const N: usize> Writer<N> {
    fn new() -> Self {
        Writer { buf: [0; N], at: 0 }
    }
    fn put<F: Field>(&mut self, v: &F) {
        v.put(&mut self.buf[self.at..self.at + F::SIZE]);
        self.at += F::SIZE;
    }
    fn finish(self) -> [u8; N] {
        debug_assert_eq!(self.at, N);
        self.buf
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// Succeeds only when `b` is exactly `len` bytes long.
    fn new(b: &'a [u8], len: usize) -> Option<Self> {
        (b.len() == len).then_some(Reader { b, at: 0 })
    }
    fn get<F: Field>(&mut self) -> F {
        let v = F::get(&self.b[self.at..self.at + F::SIZE]);
        self.at += F::SIZE;
        v
    }
}

/// The symbolic name of an errno (`"ENOSPC"`), for messages.
pub fn errno_name(errno: i32) -> &'static str {
    ERRNO_NAMES
        .iter()
        .find(|&&(n, _)| n == errno)
        .map_or("E?", |&(_, name)| name)
}

/// Every errno of the system-call ABI (`syscall::error`, whose numbers
/// Linux shares) with its name, in numeric order; one name per number
/// (`ENOTSUP` is `EOPNOTSUPP`).
#[rustfmt::skip]
const ERRNO_NAMES: &[(i32, &str)] = {
    use syscall::error::*;
    &[
        (EPERM, "EPERM"),
        (ENOENT, "ENOENT"),
        (ESRCH, "ESRCH"),
        (EINTR, "EINTR"),
        (EIO, "EIO"),
        (ENXIO, "ENXIO"),
        (E2BIG, "E2BIG"),
        (ENOEXEC, "ENOEXEC"),
        (EBADF, "EBADF"),
        (ECHILD, "ECHILD"),
        (EAGAIN, "EAGAIN"),
        (ENOMEM, "ENOMEM"),
        (EACCES, "EACCES"),
        (EFAULT, "EFAULT"),
        (ENOTBLK, "ENOTBLK"),
        (EBUSY, "EBUSY"),
        (EEXIST, "EEXIST"),
        (EXDEV, "EXDEV"),
        (ENODEV, "ENODEV"),
        (ENOTDIR, "ENOTDIR"),
        (EISDIR, "EISDIR"),
        (EINVAL, "EINVAL"),
        (ENFILE, "ENFILE"),
        (EMFILE, "EMFILE"),
        (ENOTTY, "ENOTTY"),
        (ETXTBSY, "ETXTBSY"),
        (EFBIG, "EFBIG"),
        (ENOSPC, "ENOSPC"),
        (ESPIPE, "ESPIPE"),
        (EROFS, "EROFS"),
        (EMLINK, "EMLINK"),
        (EPIPE, "EPIPE"),
        (EDOM, "EDOM"),
        (ERANGE, "ERANGE"),
        (EDEADLK, "EDEADLK"),
        (ENAMETOOLONG, "ENAMETOOLONG"),
        (ENOLCK, "ENOLCK"),
        (ENOSYS, "ENOSYS"),
        (ENOTEMPTY, "ENOTEMPTY"),
        (ELOOP, "ELOOP"),
        (EWOULDBLOCK, "EWOULDBLOCK"),
        (ENOMSG, "ENOMSG"),
        (EIDRM, "EIDRM"),
        (ECHRNG, "ECHRNG"),
        (EL2NSYNC, "EL2NSYNC"),
        (EL3HLT, "EL3HLT"),
        (EL3RST, "EL3RST"),
        (ELNRNG, "ELNRNG"),
        (EUNATCH, "EUNATCH"),
        (ENOCSI, "ENOCSI"),
        (EL2HLT, "EL2HLT"),
        (EBADE, "EBADE"),
        (EBADR, "EBADR"),
        (EXFULL, "EXFULL"),
        (ENOANO, "ENOANO"),
        (EBADRQC, "EBADRQC"),
        (EBADSLT, "EBADSLT"),
        (EDEADLOCK, "EDEADLOCK"),
        (EBFONT, "EBFONT"),
        (ENOSTR, "ENOSTR"),
        (ENODATA, "ENODATA"),
        (ETIME, "ETIME"),
        (ENOSR, "ENOSR"),
        (ENONET, "ENONET"),
        (ENOPKG, "ENOPKG"),
        (EREMOTE, "EREMOTE"),
        (ENOLINK, "ENOLINK"),
        (EADV, "EADV"),
        (ESRMNT, "ESRMNT"),
        (ECOMM, "ECOMM"),
        (EPROTO, "EPROTO"),
        (EMULTIHOP, "EMULTIHOP"),
        (EDOTDOT, "EDOTDOT"),
        (EBADMSG, "EBADMSG"),
        (EOVERFLOW, "EOVERFLOW"),
        (ENOTUNIQ, "ENOTUNIQ"),
        (EBADFD, "EBADFD"),
        (EREMCHG, "EREMCHG"),
        (ELIBACC, "ELIBACC"),
        (ELIBBAD, "ELIBBAD"),
        (ELIBSCN, "ELIBSCN"),
        (ELIBMAX, "ELIBMAX"),
        (ELIBEXEC, "ELIBEXEC"),
        (EILSEQ, "EILSEQ"),
        (ERESTART, "ERESTART"),
        (ESTRPIPE, "ESTRPIPE"),
        (EUSERS, "EUSERS"),
        (ENOTSOCK, "ENOTSOCK"),
        (EDESTADDRREQ, "EDESTADDRREQ"),
        (EMSGSIZE, "EMSGSIZE"),
        (EPROTOTYPE, "EPROTOTYPE"),
        (ENOPROTOOPT, "ENOPROTOOPT"),
        (EPROTONOSUPPORT, "EPROTONOSUPPORT"),
        (ESOCKTNOSUPPORT, "ESOCKTNOSUPPORT"),
        (EOPNOTSUPP, "EOPNOTSUPP"),
        (EPFNOSUPPORT, "EPFNOSUPPORT"),
        (EAFNOSUPPORT, "EAFNOSUPPORT"),
        (EADDRINUSE, "EADDRINUSE"),
        (EADDRNOTAVAIL, "EADDRNOTAVAIL"),
        (ENETDOWN, "ENETDOWN"),
        (ENETUNREACH, "ENETUNREACH"),
        (ENETRESET, "ENETRESET"),
        (ECONNABORTED, "ECONNABORTED"),
        (ECONNRESET, "ECONNRESET"),
        (ENOBUFS, "ENOBUFS"),
        (EISCONN, "EISCONN"),
        (ENOTCONN, "ENOTCONN"),
        (ESHUTDOWN, "ESHUTDOWN"),
        (ETOOMANYREFS, "ETOOMANYREFS"),
        (ETIMEDOUT, "ETIMEDOUT"),
        (ECONNREFUSED, "ECONNREFUSED"),
        (EHOSTDOWN, "EHOSTDOWN"),
        (EHOSTUNREACH, "EHOSTUNREACH"),
        (EALREADY, "EALREADY"),
        (EINPROGRESS, "EINPROGRESS"),
        (ESTALE, "ESTALE"),
        (EUCLEAN, "EUCLEAN"),
        (ENOTNAM, "ENOTNAM"),
        (ENAVAIL, "ENAVAIL"),
        (EISNAM, "EISNAM"),
        (EREMOTEIO, "EREMOTEIO"),
        (EDQUOT, "EDQUOT"),
        (ENOMEDIUM, "ENOMEDIUM"),
        (EMEDIUMTYPE, "EMEDIUMTYPE"),
        (ECANCELED, "ECANCELED"),
        (ENOKEY, "ENOKEY"),
        (EKEYEXPIRED, "EKEYEXPIRED"),
        (EKEYREVOKED, "EKEYREVOKED"),
        (EKEYREJECTED, "EKEYREJECTED"),
        (EOWNERDEAD, "EOWNERDEAD"),
        (ENOTRECOVERABLE, "ENOTRECOVERABLE"),
    ]
};

/// The description of an errno (`"No space left on device"`).
pub fn errno_text(errno: i32) -> &'static str {
    usize::try_from(errno)
        .ok()
        .and_then(|i| syscall::error::STR_ERROR.get(i))
        .copied()
        .unwrap_or("Unknown error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structs_round_trip_and_check_length_and_abi() {
        let info = BoInfoWire {
            abi: WIRE_ABI,
            domain: 1,
            id: 42,
            size: 1 << 20,
            flags: 3,
            refcount: 2,
            owner: 7,
            created_ms: 1234,
            segment_count: 5,
            exported: 1,
        };
        let b = info.encode();
        assert_eq!(BoInfoWire::decode(&b), Some(info));
        assert_eq!(BoInfoWire::decode(&b[..55]), None);
        let mut wrong = b;
        wrong[0] = WIRE_ABI as u8 + 1;
        assert_eq!(BoInfoWire::decode(&wrong), None);
        let seg = SegmentWire {
            bo_offset: 4096,
            backing_offset: 1 << 30,
            len: 8192,
        };
        assert_eq!(SegmentWire::decode(&seg.encode()), Some(seg));
        let ex = ExportWire {
            abi: WIRE_ABI,
            reserved: 0,
            id: 9,
            token: [0xA5; TOKEN_LEN],
        };
        assert_eq!(ExportWire::decode(&ex.encode()), Some(ex));
        assert_eq!(ExportWire::decode(&[0; ExportWire::SIZE - 1]), None);
    }

    #[test]
    fn record_sizes_are_their_fields_with_no_padding() {
        assert_eq!(BoInfoWire::SIZE, 56);
        assert_eq!(SegmentWire::SIZE, 24);
        assert_eq!(ExportWire::SIZE, 16 + TOKEN_LEN);
        assert_eq!(BoInfoWire::SIZE, std::mem::size_of::<BoInfoWire>());
        assert_eq!(SegmentWire::SIZE, std::mem::size_of::<SegmentWire>());
        assert_eq!(ExportWire::SIZE, std::mem::size_of::<ExportWire>());
        // Little-endian, in declaration order.
        let seg = SegmentWire {
            bo_offset: 1,
            backing_offset: 0x0203,
            len: 4,
        };
        let b = seg.encode();
        assert_eq!(&b[..9], &[1, 0, 0, 0, 0, 0, 0, 0, 3]);
        assert_eq!(b[9], 2);
        assert_eq!(b[16], 4);
    }

    #[test]
    fn bo_desc_path_round_trips() {
        let mut d = BoDesc::new(
            64 << 20,
            Domain::Gtt,
            BoFlags::CONTIGUOUS | BoFlags::CLEARED,
        );
        d.align = 65536;
        d.label = "tex_0.a-b".into();
        d.attempt = 2;
        let path = d.to_path();
        let query = path.strip_prefix("bo/new?").unwrap();
        assert_eq!(BoDesc::parse_query(query).unwrap(), d);
        let plain = BoDesc::parse_query("size=4K").unwrap();
        assert_eq!(plain, BoDesc::new(4096, Domain::Vram, BoFlags::empty()));
    }

    #[test]
    fn bo_desc_rejects_bad_queries() {
        for q in [
            "",
            "size=0",
            "size=abc",
            "size=-1",
            "size=99999999999999999999999",
            "size=4096&size=4096",
            "size=4096&domain=cpu",
            "size=4096&align=3",
            "size=4096&align=x",
            "size=4096&flags=fast",
            "size=4096&label=a%20b",
            "size=4096&label=a/b",
            "size=4096&bogus=1",
            "size=4096&attempt=x",
            "size=4096&attempt=1&attempt=2",
            "size",
            "domain=vram",
            "size=4096&&domain=vram",
        ] {
            assert!(BoDesc::parse_query(q).is_err(), "accepted `{q}`");
        }
        let long = format!("size=1&label={}", "a".repeat(MAX_LABEL_LEN + 1));
        assert!(BoDesc::parse_query(&long).is_err());
    }

    #[test]
    fn share_tokens_parse() {
        let mut token = [0; TOKEN_LEN];
        token[0] = 0xab;
        token[15] = 0x0c;
        let t = ShareToken { id: 17, token };
        let hex = "ab00000000000000000000000000000c";
        assert_eq!(t.to_string(), format!("17:{hex}"));
        assert_eq!(format!("17:{hex}").parse::<ShareToken>().unwrap(), t);
        assert_eq!(
            format!("17:{}", hex.to_uppercase())
                .parse::<ShareToken>()
                .unwrap(),
            t
        );
        assert_eq!(t.to_path(), format!("bo/17?token={hex}"));
        assert!("17".parse::<ShareToken>().is_err());
        assert!(format!("x:{hex}").parse::<ShareToken>().is_err());
        for bad in [
            "1:zz",
            "1:abc",
            &format!("1:{hex}0"),
            &format!("1:{}", &hex[1..]),
        ] {
            assert!(bad.parse::<ShareToken>().is_err(), "{bad}");
        }
        assert!(token_from_hex(&format!("{}+1", &hex[..30])).is_none());
        assert_eq!(token_from_hex(hex), Some(token));
    }

    #[test]
    fn errno_names_and_texts() {
        assert_eq!(errno_name(syscall::error::ENOSPC), "ENOSPC");
        for (errno, name) in [
            (syscall::error::ENFILE, "ENFILE"),
            (syscall::error::EPIPE, "EPIPE"),
            (syscall::error::EOPNOTSUPP, "EOPNOTSUPP"),
            (syscall::error::ETIMEDOUT, "ETIMEDOUT"),
            (syscall::error::ECONNRESET, "ECONNRESET"),
        ] {
            assert_eq!(errno_name(errno), name);
        }
        // Every errno the ABI defines has its name, in numeric order.
        for (i, &(n, _)) in ERRNO_NAMES.iter().enumerate() {
            assert_eq!(n, i as i32 + 1, "table order at {i}");
        }
        assert_eq!(errno_name(0), "E?");
        assert_eq!(
            errno_text(syscall::error::ENOENT),
            "No such file or directory"
        );
        assert_eq!(errno_text(-5), "Unknown error");
    }
}
