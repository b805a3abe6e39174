//! The client side of Redox's PCI hand-off: how pddgpud learns which PCI
//! function it drives.
//!
//! `pcid-spawner` matches a `[[drivers]]` entry of `/usr/lib/pcid.d/*.toml`,
//! enables the function and starts the driver with an open pcid channel whose
//! descriptor number is in the environment variable `PCID_CLIENT_CHANNEL`.
//! The driver writes a request to the channel and reads the answer.
//!
//! Upstream keeps this in the `pcid_interface` library, which is not on
//! crates.io. This module re-declares the few types and messages pddgpud
//! needs, following `drivers/pcid/src/driver_interface/mod.rs` (with
//! `bar.rs` and `id.rs` next to it) of `redox-os/base` as in the Redox
//! snapshot this project boots (`../shared/redox`, `SOURCES.md`). That
//! version's `PciFunction` carries the option ROM between the BARs and the
//! interrupt line (older pcid had no `rom` field). The wire format is:
//!
//! - a **request** is one `write` of its bincode 1.x encoding (pcid's channel
//!   treats each write as one message, so it must not be split);
//! - a **response** is a little-endian `u64` length, then that many bytes of
//!   bincode 1.x (fixed-width little-endian integers, `u32` enum variant
//!   indices, `u8` option tags, `u64` lengths), at most 1 MiB.
//!
//! Enum variant *indices* are part of that format, so the enums below list
//! upstream's variants in upstream's order up to the last one used here; an
//! answer with any other variant is reported, not guessed at. (Older pcid
//! versions numbered them differently and used two descriptors,
//! `PCID_TO_CLIENT_FD`/`PCID_FROM_CLIENT_FD`; those are not supported.)
//!
//! Everything here is plain data over `Read + Write`, so it is compiled and
//! tested on the host; only opening the inherited descriptor is Redox-only.

use std::fmt;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// The environment variable holding the channel's descriptor number.
pub const CHANNEL_ENV: &str = "PCID_CLIENT_CHANNEL";

/// The largest response pcid may send (upstream's limit).
pub const MAX_RESPONSE_LEN: u64 = 0x10_0000;

/// A PCI address. Upstream serialises `pci_types::PciAddress` through a
/// remote definition with exactly these fields in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciAddress {
    /// PCI segment group.
    pub segment: u16,
    /// Bus number.
    pub bus: u8,
    /// Device number.
    pub device: u8,
    /// Function number.
    pub function: u8,
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{}",
            self.segment, self.bus, self.device, self.function
        )
    }
}

/// One Base Address Register as pcid decoded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PciBar {
    /// Not implemented by the function.
    None,
    /// A 32-bit memory BAR.
    Memory32 {
        /// Physical base address.
        addr: u32,
        /// Size in bytes.
        size: u32,
    },
    /// A 64-bit memory BAR.
    Memory64 {
        /// Physical base address.
        addr: u64,
        /// Size in bytes.
        size: u64,
    },
    /// An I/O port BAR.
    Port(u16),
}

impl PciBar {
    /// The physical base and size of a memory BAR; `None` for port and
    /// absent BARs.
    pub fn memory(&self) -> Option<(u64, u64)> {
        match *self {
            PciBar::Memory32 { addr, size } => Some((addr.into(), size.into())),
            PciBar::Memory64 { addr, size } => Some((addr, size)),
            PciBar::None | PciBar::Port(_) => None,
        }
    }
}

/// The legacy (INTx) interrupt line. pddgpud does not use interrupts; the
/// type exists so the configuration decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyInterruptLine {
    /// IRQ number.
    pub irq: u8,
    /// Device-tree interrupt description (phandle, cells, cell count).
    /// Upstream's last element is a `usize`, which bincode writes as `u64`.
    pub phandled: Option<(u32, [u32; 3], u64)>,
}

/// Everything that identifies a PCI function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FullDeviceId {
    /// Vendor id.
    pub vendor_id: u16,
    /// Device id.
    pub device_id: u16,
    /// Class code.
    pub class: u8,
    /// Subclass code.
    pub subclass: u8,
    /// Programming interface.
    pub interface: u8,
    /// Revision.
    pub revision: u8,
}

/// QEMU's bochs-display as pcid identifies it (revision 2), for tests.
#[cfg(test)]
pub(crate) const BOCHS_DISPLAY_ID: FullDeviceId = FullDeviceId {
    vendor_id: pddgpu::device::bochs::PCI_VENDOR,
    device_id: pddgpu::device::bochs::PCI_DEVICE,
    class: 3,
    subclass: 0x80,
    interface: 0,
    revision: 2,
};

/// The function's expansion ROM BAR as pcid decoded it (upstream
/// `PciRom`). pddgpud does not use it; it is part of the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciRom {
    /// Physical base address.
    pub addr: u32,
    /// Size in bytes.
    pub size: u32,
    /// Whether ROM decoding is enabled.
    pub enabled: bool,
}

/// The PCI function handed to the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciFunction {
    /// Its address.
    pub addr: PciAddress,
    /// Its six BARs.
    pub bars: [PciBar; 6],
    /// Its option ROM, if it has one.
    pub rom: Option<PciRom>,
    /// Its legacy interrupt line, if it has one.
    pub legacy_interrupt_line: Option<LegacyInterruptLine>,
    /// Its identity.
    pub full_device_id: FullDeviceId,
}

/// What pcid tells a driver about its function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubdriverArguments {
    /// The function.
    pub func: PciFunction,
}

/// Requests to pcid (upstream `PcidClientRequest`, first variants only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Enable memory decoding and bus mastering (variant 0).
    EnableDevice,
    /// Ask for the function's configuration (variant 1).
    RequestConfig,
}

/// Responses from pcid (upstream `PcidClientResponse`, first variants only).
/// (Boxing does not change the bincode encoding.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to [`Request::EnableDevice`] (variant 0).
    EnabledDevice,
    /// Answer to [`Request::RequestConfig`] (variant 1).
    Config(Box<SubdriverArguments>),
}

/// Upstream's names of the response variants, by index, for error messages.
const RESPONSE_NAMES: [&str; 11] = [
    "EnabledDevice",
    "Config",
    "AllFeatures",
    "VendorCapabilities",
    "FeatureEnabled",
    "FeatureStatus",
    "Error",
    "FeatureInfo",
    "SetFeatureInfo",
    "ReadConfig",
    "WriteConfig",
];

/// Why talking to pcid failed.
#[derive(Debug)]
pub enum PcidError {
    /// `PCID_CLIENT_CHANNEL` is missing or not a descriptor number.
    Env(String),
    /// Reading or writing the channel failed (including a short read: pcid
    /// closed the channel mid-message).
    Io(io::Error),
    /// The request was not written in one piece.
    ShortWrite {
        /// Bytes written.
        written: usize,
        /// Bytes in the request.
        len: usize,
    },
    /// The announced response length is over [`MAX_RESPONSE_LEN`].
    TooLarge(u64),
    /// The response did not decode.
    Decode(String),
    /// pcid answered, but not with what was asked for.
    Unexpected {
        /// The response expected.
        expected: &'static str,
        /// Upstream's name of the response received (or its index).
        got: String,
    },
}

impl fmt::Display for PcidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PcidError::Env(why) => write!(
                f,
                "{CHANNEL_ENV}: {why} (is pddgpud started by pcid-spawner?)"
            ),
            PcidError::Io(e) => write!(f, "pcid channel: {e}"),
            PcidError::ShortWrite { written, len } => {
                write!(
                    f,
                    "pcid channel: request written in part ({written} of {len} bytes)"
                )
            }
            PcidError::TooLarge(len) => write!(
                f,
                "pcid channel: response of {len} bytes is over the {MAX_RESPONSE_LEN}-byte limit"
            ),
            PcidError::Decode(why) => write!(f, "pcid channel: undecodable response: {why}"),
            PcidError::Unexpected { expected, got } => {
                write!(f, "pcid channel: expected a {expected} response, got {got}")
            }
        }
    }
}

impl std::error::Error for PcidError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PcidError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for PcidError {
    fn from(e: io::Error) -> Self {
        PcidError::Io(e)
    }
}

/// Parses the value of `PCID_CLIENT_CHANNEL` (`None` when unset).
pub fn parse_channel_fd(value: Option<&str>) -> Result<i32, PcidError> {
    let value = value.ok_or_else(|| PcidError::Env("not set".into()))?;
    match value.trim().parse::<i32>() {
        Ok(fd) if fd >= 0 => Ok(fd),
        _ => Err(PcidError::Env(format!(
            "{value:?} is not a descriptor number"
        ))),
    }
}

/// The bincode 1.x encoding of a request (what is written, unframed).
pub fn encode_request(request: &Request) -> Vec<u8> {
    // Serialising a fieldless enum into a Vec cannot fail.
    bincode::serialize(request).unwrap_or_default()
}

/// Decodes a response payload (without its length prefix).
pub fn decode_response(payload: &[u8]) -> Result<Response, PcidError> {
    bincode::deserialize(payload).map_err(|e| match payload.get(..4) {
        // An enum tag this module does not declare: name it.
        Some(tag) => {
            let index = u32::from_le_bytes([tag[0], tag[1], tag[2], tag[3]]);
            if index > 1 {
                PcidError::Unexpected {
                    expected: "known",
                    got: response_name(index),
                }
            } else {
                PcidError::Decode(e.to_string())
            }
        }
        None => PcidError::Decode(e.to_string()),
    })
}

fn response_name(index: u32) -> String {
    RESPONSE_NAMES
        .get(index as usize)
        .map_or_else(|| format!("variant #{index}"), |n| (*n).to_string())
}

/// Reads one framed response.
pub fn read_response<R: Read>(r: &mut R) -> Result<Response, PcidError> {
    let mut len = [0u8; 8];
    r.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    if len > MAX_RESPONSE_LEN {
        return Err(PcidError::TooLarge(len));
    }
    // `len` is at most 1 MiB, so it fits in usize.
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    decode_response(&payload)
}

/// Writes one request in a single `write`, as pcid's channel expects.
pub fn write_request<W: Write>(w: &mut W, request: &Request) -> Result<(), PcidError> {
    let data = encode_request(request);
    let written = w.write(&data)?;
    if written != data.len() {
        return Err(PcidError::ShortWrite {
            written,
            len: data.len(),
        });
    }
    Ok(())
}

/// A pcid channel: strictly one request, then its response.
#[derive(Debug)]
pub struct PcidChannel<C> {
    chan: C,
}

impl<C: Read + Write> PcidChannel<C> {
    /// Wraps an open channel.
    pub fn new(chan: C) -> Self {
        PcidChannel { chan }
    }

    /// Asks for the function's configuration.
    pub fn request_config(&mut self) -> Result<SubdriverArguments, PcidError> {
        match self.transact(Request::RequestConfig)? {
            Response::Config(args) => Ok(*args),
            other => Err(unexpected("Config", &other)),
        }
    }

    /// Asks pcid to enable the function (pcid-spawner already does this
    /// before starting a driver; harmless to repeat).
    pub fn enable_device(&mut self) -> Result<(), PcidError> {
        match self.transact(Request::EnableDevice)? {
            Response::EnabledDevice => Ok(()),
            other => Err(unexpected("EnabledDevice", &other)),
        }
    }

    /// Gives the channel back.
    pub fn into_inner(self) -> C {
        self.chan
    }

    fn transact(&mut self, request: Request) -> Result<Response, PcidError> {
        write_request(&mut self.chan, &request)?;
        read_response(&mut self.chan)
    }
}

fn unexpected(expected: &'static str, got: &Response) -> PcidError {
    let got = match got {
        Response::EnabledDevice => "EnabledDevice",
        Response::Config(_) => "Config",
    };
    PcidError::Unexpected {
        expected,
        got: got.to_string(),
    }
}

#[cfg(target_os = "redox")]
/// Opens the channel pcid-spawner left in `PCID_CLIENT_CHANNEL`.
///
/// The descriptor is taken over: this must be called at most once.
pub fn connect_from_env() -> Result<PcidChannel<std::fs::File>, PcidError> {
    use std::os::fd::FromRawFd;
    let value = std::env::var(CHANNEL_ENV).ok();
    let fd = parse_channel_fd(value.as_deref())?;
    // SAFETY: pcid-spawner hands this descriptor to us and nothing else in
    // the process owns it; the environment variable is read once, here.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    Ok(PcidChannel::new(file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// The bochs-display function as QEMU presents it: BAR 0 is the 16 MiB
    /// framebuffer, BAR 2 the 4 KiB register window.
    fn bochs() -> SubdriverArguments {
        SubdriverArguments {
            func: PciFunction {
                addr: PciAddress {
                    segment: 0,
                    bus: 0,
                    device: 2,
                    function: 0,
                },
                bars: [
                    PciBar::Memory32 {
                        addr: 0xfd00_0000,
                        size: 0x100_0000,
                    },
                    PciBar::None,
                    PciBar::Memory32 {
                        addr: 0xfebf_0000,
                        size: 0x1000,
                    },
                    PciBar::None,
                    PciBar::Port(0xc000),
                    PciBar::Memory64 {
                        addr: 0x8_0000_0000,
                        size: 0x4000_0000,
                    },
                ],
                rom: Some(PciRom {
                    addr: 0xfeb0_0000,
                    size: 0x1_0000,
                    enabled: false,
                }),
                legacy_interrupt_line: Some(LegacyInterruptLine {
                    irq: 11,
                    phandled: None,
                }),
                full_device_id: BOCHS_DISPLAY_ID,
            },
        }
    }

    /// The bytes upstream pcid sends for `Config(bochs())`, written out by
    /// hand from the bincode 1.x rules (not produced by this module).
    fn bochs_config_payload() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(1u32.to_le_bytes()); // PcidClientResponse::Config
        b.extend(0u16.to_le_bytes()); // segment
        b.extend([0u8, 2, 0]); // bus, device, function
        b.extend(1u32.to_le_bytes()); // BAR0: Memory32
        b.extend(0xfd00_0000u32.to_le_bytes());
        b.extend(0x100_0000u32.to_le_bytes());
        b.extend(0u32.to_le_bytes()); // BAR1: None
        b.extend(1u32.to_le_bytes()); // BAR2: Memory32
        b.extend(0xfebf_0000u32.to_le_bytes());
        b.extend(0x1000u32.to_le_bytes());
        b.extend(0u32.to_le_bytes()); // BAR3: None
        b.extend(3u32.to_le_bytes()); // BAR4: Port
        b.extend(0xc000u16.to_le_bytes());
        b.extend(2u32.to_le_bytes()); // BAR5: Memory64
        b.extend(0x8_0000_0000u64.to_le_bytes());
        b.extend(0x4000_0000u64.to_le_bytes());
        b.push(1); // rom: Some(PciRom)
        b.extend(0xfeb0_0000u32.to_le_bytes());
        b.extend(0x1_0000u32.to_le_bytes());
        b.push(0); // enabled: false
        b.push(1); // Some(LegacyInterruptLine)
        b.push(11); // irq
        b.push(0); // phandled: None
        b.extend(0x1234u16.to_le_bytes());
        b.extend(0x1111u16.to_le_bytes());
        b.extend([3u8, 0x80, 0, 2]); // class, subclass, interface, revision
        b
    }

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(payload);
        f
    }

    /// A stand-in for pcid's channel handle: it checks each write is one
    /// whole request, answers with the next scripted response, and refuses
    /// a write while a response is still unread (as pcid does, EINVAL).
    struct FakePcid {
        script: VecDeque<Vec<u8>>,
        requests: Vec<Vec<u8>>,
        pending: VecDeque<u8>,
        max_write: usize,
    }

    impl FakePcid {
        fn new(script: Vec<Vec<u8>>) -> Self {
            FakePcid {
                script: script.into(),
                requests: Vec::new(),
                pending: VecDeque::new(),
                max_write: usize::MAX,
            }
        }
    }

    impl Write for FakePcid {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if !self.pending.is_empty() {
                return Err(io::Error::from(io::ErrorKind::InvalidInput));
            }
            let n = buf.len().min(self.max_write);
            self.requests.push(buf[..n].to_vec());
            if let Some(answer) = self.script.pop_front() {
                self.pending.extend(answer);
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Read for FakePcid {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            // Hand out at most 5 bytes per read to exercise partial reads.
            let n = buf.len().min(self.pending.len()).min(5);
            for (dst, src) in buf.iter_mut().zip(self.pending.drain(..n)) {
                *dst = src;
            }
            Ok(n)
        }
    }

    #[test]
    fn requests_encode_as_upstream_variant_indices() {
        assert_eq!(encode_request(&Request::EnableDevice), [0, 0, 0, 0]);
        assert_eq!(encode_request(&Request::RequestConfig), [1, 0, 0, 0]);
    }

    #[test]
    fn config_response_decodes_from_hand_written_bytes() {
        let payload = bochs_config_payload();
        assert_eq!(
            decode_response(&payload).unwrap(),
            Response::Config(Box::new(bochs()))
        );
        // And this module's encoding is the same bytes.
        assert_eq!(
            bincode::serialize(&Response::Config(Box::new(bochs()))).unwrap(),
            payload
        );
    }

    #[test]
    fn device_tree_interrupt_line_round_trips_with_u64_cell_count() {
        let line = LegacyInterruptLine {
            irq: 0,
            phandled: Some((7, [1, 2, 3], 3)),
        };
        let bytes = bincode::serialize(&Some(line)).unwrap();
        let mut expect = vec![1u8, 0, 1];
        expect.extend(7u32.to_le_bytes());
        for c in [1u32, 2, 3] {
            expect.extend(c.to_le_bytes());
        }
        expect.extend(3u64.to_le_bytes());
        assert_eq!(bytes, expect);
        let back: Option<LegacyInterruptLine> = bincode::deserialize(&bytes).unwrap();
        assert_eq!(back, Some(line));
    }

    #[test]
    fn channel_sends_one_whole_request_and_reads_a_framed_config() {
        let mut chan = PcidChannel::new(FakePcid::new(vec![framed(&bochs_config_payload())]));
        assert_eq!(chan.request_config().unwrap(), bochs());
        let fake = chan.into_inner();
        assert_eq!(fake.requests, [vec![1u8, 0, 0, 0]]);
        assert!(fake.pending.is_empty(), "the whole response was consumed");
    }

    #[test]
    fn enable_device_round_trip() {
        let mut chan = PcidChannel::new(FakePcid::new(vec![framed(&[0, 0, 0, 0])]));
        chan.enable_device().unwrap();
        assert_eq!(chan.into_inner().requests, [vec![0u8, 0, 0, 0]]);
    }

    #[test]
    fn a_split_write_is_an_error() {
        let mut fake = FakePcid::new(vec![]);
        fake.max_write = 2;
        let err = PcidChannel::new(fake).request_config().unwrap_err();
        assert!(
            matches!(err, PcidError::ShortWrite { written: 2, len: 4 }),
            "{err}"
        );
    }

    #[test]
    fn wrong_answers_are_named() {
        // EnabledDevice where Config was asked for.
        let mut chan = PcidChannel::new(FakePcid::new(vec![framed(&[0, 0, 0, 0])]));
        let err = chan.request_config().unwrap_err();
        assert!(
            err.to_string()
                .contains("expected a Config response, got EnabledDevice"),
            "{err}"
        );

        // A response variant this module does not declare: ReadConfig(7).
        let mut payload = 9u32.to_le_bytes().to_vec();
        payload.extend(7u32.to_le_bytes());
        let mut chan = PcidChannel::new(FakePcid::new(vec![framed(&payload)]));
        let err = chan.request_config().unwrap_err();
        assert!(err.to_string().contains("ReadConfig"), "{err}");

        let err = decode_response(&77u32.to_le_bytes()).unwrap_err();
        assert!(err.to_string().contains("variant #77"), "{err}");
    }

    #[test]
    fn truncated_oversized_and_corrupt_responses_fail_cleanly() {
        let full = framed(&bochs_config_payload());

        // pcid closes the channel mid-response.
        for cut in [0, 3, 8, 20, full.len() - 1] {
            let mut chan = PcidChannel::new(FakePcid::new(vec![full[..cut].to_vec()]));
            let err = chan.request_config().unwrap_err();
            assert!(
                matches!(err, PcidError::Io(ref e) if e.kind() == io::ErrorKind::UnexpectedEof),
                "cut {cut}: {err}"
            );
        }

        // Over the 1 MiB limit: refused before allocating.
        let mut huge = (MAX_RESPONSE_LEN + 1).to_le_bytes().to_vec();
        huge.extend([1, 0, 0, 0]);
        let err = PcidChannel::new(FakePcid::new(vec![huge]))
            .request_config()
            .unwrap_err();
        assert!(
            matches!(err, PcidError::TooLarge(l) if l == MAX_RESPONSE_LEN + 1),
            "{err}"
        );

        // A length that promises less than a Config needs.
        let payload = bochs_config_payload();
        let err = PcidChannel::new(FakePcid::new(vec![framed(&payload[..30])]))
            .request_config()
            .unwrap_err();
        assert!(matches!(err, PcidError::Decode(_)), "{err}");

        // An invalid BAR tag inside an otherwise fine Config.
        let mut bad = payload.clone();
        bad[9] = 9; // BAR0's variant index
        assert!(matches!(decode_response(&bad), Err(PcidError::Decode(_))));

        // An invalid Option tag.
        let mut bad = payload;
        let tag = bad.len() - 11; // Some(LegacyInterruptLine)
        assert_eq!(bad[tag], 1);
        bad[tag] = 2;
        assert!(matches!(decode_response(&bad), Err(PcidError::Decode(_))));

        assert!(matches!(decode_response(&[]), Err(PcidError::Decode(_))));
    }

    #[test]
    fn channel_fd_from_the_environment_value() {
        assert_eq!(parse_channel_fd(Some("7")).unwrap(), 7);
        assert_eq!(parse_channel_fd(Some(" 12\n")).unwrap(), 12);
        for bad in [None, Some(""), Some("-1"), Some("x"), Some("99999999999")] {
            let err = parse_channel_fd(bad).unwrap_err();
            assert!(matches!(err, PcidError::Env(_)), "{bad:?}: {err}");
            assert!(err.to_string().contains(CHANNEL_ENV));
        }
    }

    #[test]
    fn memory_bars_report_base_and_size() {
        let f = bochs().func;
        assert_eq!(f.bars[0].memory(), Some((0xfd00_0000, 0x100_0000)));
        assert_eq!(f.bars[5].memory(), Some((0x8_0000_0000, 0x4000_0000)));
        assert_eq!(f.bars[1].memory(), None);
        assert_eq!(f.bars[4].memory(), None);
        assert_eq!(f.addr.to_string(), "0000:00:02.0");
    }
}
