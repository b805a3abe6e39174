//! The client side of the host transport: one blocking Unix-socket
//! connection carrying request frames and receiving responses (with passed
//! file descriptors).

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendFlags,
};
use syscall::schemev2::{Cqe, Opcode, Sqe, SqeFlags};

use crate::frame::{
    RequestHeader, ResponseHeader, MAX_PAYLOAD, REFUSAL_TAG, RESPONSE_FLAG_FD, RESPONSE_HEADER_LEN,
};

/// A decoded response.
#[derive(Debug)]
pub struct Reply {
    /// The completion as the server's scheme dispatch produced it.
    pub cqe: Cqe,
    /// Payload bytes (data read, call output, path, dirents, stat).
    pub payload: Vec<u8>,
    /// A file descriptor passed with the response, if any.
    pub fd: Option<OwnedFd>,
}

impl Reply {
    /// The scheme's result: the value, or the errno it failed with.
    pub fn result(&self) -> Result<usize, i32> {
        syscall::error::Error::demux(self.cqe.result as usize).map_err(|e| e.errno)
    }
}

/// One connection to a host-transport server. Requests are strictly
/// sequential: send one frame, read its response.
pub struct HostConnection {
    stream: UnixStream,
    next_tag: u32,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
}

/// How much of a response is read with the first `recvmsg`.
const FIRST_READ: usize = 64 << 10;
/// Requests up to this size are copied into one buffer and sent at once.
const SMALL_SEND: usize = 4096;

impl HostConnection {
    /// Connects to the server listening at `path`.
    pub fn connect(path: &Path) -> io::Result<Self> {
        Ok(Self::from_stream(UnixStream::connect(path)?))
    }

    /// Wraps an already connected stream.
    pub fn from_stream(stream: UnixStream) -> Self {
        HostConnection {
            stream,
            next_tag: 1,
            rbuf: vec![0; FIRST_READ],
            wbuf: Vec::with_capacity(SMALL_SEND),
        }
    }

    /// The underlying socket (for tests that misbehave on purpose).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Sends one request and waits for its response.
    ///
    /// `args` are the `Sqe` arguments as the scheme sees them, except that
    /// pointer/length pairs are replaced by `payload` (bytes sent) and
    /// `out_len` (bytes the caller is ready to receive).
    pub fn request(
        &mut self,
        opcode: Opcode,
        args: [u64; 6],
        payload: &[u8],
        out_len: usize,
    ) -> io::Result<Reply> {
        if payload.len() > MAX_PAYLOAD || out_len > MAX_PAYLOAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("request larger than {MAX_PAYLOAD} bytes"),
            ));
        }
        let tag = self.next_tag;
        self.next_tag = match self.next_tag.wrapping_add(1) {
            REFUSAL_TAG => REFUSAL_TAG + 1,
            next => next,
        };
        let header = RequestHeader {
            payload_len: payload.len() as u32,
            out_len: out_len as u32,
            sqe: Sqe {
                opcode: opcode as u8,
                sqe_flags: SqeFlags::empty(),
                _rsvd: 0,
                tag,
                args,
                caller: 0,
            },
        };
        if let Err(e) = self.send_all(&[&header.encode(), payload]) {
            // A refused connection is closed right after its refusal
            // frame, so sending may fail first: report the refusal.
            return self.pending_refusal().ok_or(e);
        }
        // Only `dup` can pass a descriptor back; everything else is read
        // with plain `recv` (cheaper than `recvmsg` with a control buffer;
        // a descriptor sent anyway would be discarded by the kernel).
        let reply = self.read_response_inner(matches!(opcode, Opcode::Dup))?;
        if reply.cqe.tag == REFUSAL_TAG && reply.result().is_err() {
            // The server refused this connection (its errno says why).
            return Ok(reply);
        }
        if reply.cqe.tag != tag {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("response tag {} for request {tag}", reply.cqe.tag),
            ));
        }
        Ok(reply)
    }

    /// A refusal frame the server left before closing the connection, if
    /// one is waiting (read without blocking).
    fn pending_refusal(&mut self) -> Option<Reply> {
        self.stream.set_nonblocking(true).ok()?;
        let reply = self.read_response_inner(false);
        let _ = self.stream.set_nonblocking(false);
        reply.ok().filter(|r| r.cqe.tag == REFUSAL_TAG)
    }

    /// Writes raw bytes to the server (tests of malformed input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.send_all(&[bytes, &[]])
    }

    fn send_all(&mut self, parts: &[&[u8]; 2]) -> io::Result<()> {
        let total = parts[0].len() + parts[1].len();
        // Small requests go out as one contiguous `send` (cheaper than a
        // vectored `sendmsg`); large payloads are not copied.
        if total <= SMALL_SEND {
            self.wbuf.clear();
            self.wbuf.extend_from_slice(parts[0]);
            self.wbuf.extend_from_slice(parts[1]);
            let mut sent = 0;
            while sent < total {
                match rustix::net::send(&self.stream, &self.wbuf[sent..], SendFlags::NOSIGNAL) {
                    Ok(n) => sent += n,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            return Ok(());
        }
        let mut sent = 0;
        while sent < total {
            // What is still unsent, as at most two slices.
            let (a, b) = if sent < parts[0].len() {
                (&parts[0][sent..], parts[1])
            } else {
                (&parts[1][sent - parts[0].len()..], &[][..])
            };
            let iov = [IoSlice::new(a), IoSlice::new(b)];
            match rustix::net::sendmsg(
                &self.stream,
                &iov,
                &mut SendAncillaryBuffer::default(),
                SendFlags::NOSIGNAL,
            ) {
                Ok(n) => sent += n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Reads one complete response frame (and any descriptor passed with it).
    pub fn read_response(&mut self) -> io::Result<Reply> {
        self.read_response_inner(true)
    }

    fn read_response_inner(&mut self, want_fds: bool) -> io::Result<Reply> {
        let mut fds = Vec::new();
        let mut have = 0;
        while have < RESPONSE_HEADER_LEN {
            let n = self.recv_into(have, want_fds, &mut fds)?;
            have += n;
        }
        let header = ResponseHeader::decode(&self.rbuf[..have])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let len = header.payload_len as usize;
        let mut payload = Vec::with_capacity(len);
        let first = (have - RESPONSE_HEADER_LEN).min(len);
        payload.extend_from_slice(&self.rbuf[RESPONSE_HEADER_LEN..RESPONSE_HEADER_LEN + first]);
        if have > RESPONSE_HEADER_LEN + len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "server sent more than one response",
            ));
        }
        while payload.len() < len {
            let n = self.recv_into(0, want_fds, &mut fds)?;
            let take = n.min(len - payload.len());
            payload.extend_from_slice(&self.rbuf[..take]);
        }
        let fd = if header.flags & RESPONSE_FLAG_FD != 0 {
            if fds.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response announced a file descriptor but none arrived",
                ));
            }
            Some(fds.swap_remove(0))
        } else {
            None
        };
        Ok(Reply {
            cqe: header.cqe,
            payload,
            fd,
        })
    }

    /// One `recvmsg` (or plain `recv`) into `rbuf[at..]`, collecting
    /// passed descriptors when `want_fds`.
    fn recv_into(
        &mut self,
        at: usize,
        want_fds: bool,
        fds: &mut Vec<OwnedFd>,
    ) -> io::Result<usize> {
        if !want_fds {
            loop {
                match rustix::net::recv(&self.stream, &mut self.rbuf[at..], RecvFlags::empty()) {
                    Ok((0, _)) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the pddgpu server closed the connection",
                        ))
                    }
                    Ok((n, _)) => return Ok(n),
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        loop {
            let mut iov = [IoSliceMut::new(&mut self.rbuf[at..])];
            match rustix::net::recvmsg(
                &self.stream,
                &mut iov,
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Ok(msg) if msg.bytes == 0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the pddgpu server closed the connection",
                    ))
                }
                Ok(msg) => {
                    for m in control.drain() {
                        if let RecvAncillaryMessage::ScmRights(received) = m {
                            fds.extend(received);
                        }
                    }
                    return Ok(msg.bytes);
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}
