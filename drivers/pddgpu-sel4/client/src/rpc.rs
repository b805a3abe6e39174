//! Calls to the server over the badged endpoint in slot
//! [`slots::ENDPOINT`]: the only capability this client has that reaches
//! anything outside itself.

use pddgpu_sel4_proto::{slots, Op, Request};

/// A reply: `Ok(result words)` or `Err(errno)`.
pub type Reply = Result<[u64; 8], u64>;

fn endpoint() -> sel4::cap::Endpoint {
    sel4::cap::Endpoint::from_bits(slots::ENDPOINT as u64)
}

/// Sends `label` with `args` in the message registers and waits for the
/// reply. Any label and length can be sent: the hostile checks use this to
/// send what no well-behaved client would.
pub fn call_raw(label: u64, args: &[u64]) -> Reply {
    sel4::with_ipc_buffer_mut(|buffer| buffer.msg_regs_mut()[..args.len()].copy_from_slice(args));
    let info = endpoint().call(sel4::MessageInfo::new(label, 0, 0, args.len()));
    let mut out = [0u64; 8];
    let n = info.length().min(out.len());
    sel4::with_ipc_buffer(|buffer| out[..n].copy_from_slice(&buffer.msg_regs()[..n]));
    match info.label() {
        0 => Ok(out),
        errno => Err(errno),
    }
}

/// Sends a well-formed request.
pub fn call(request: Request) -> Reply {
    let (op, words, len) = request.encode();
    call_raw(op as u64, &words[..len])
}

/// Tells the server the script failed (the text goes in the message
/// bytes) and never returns: the server does not answer.
pub fn fail(reason: &str) -> ! {
    let bytes = reason.as_bytes();
    let len = sel4::with_ipc_buffer_mut(|buffer| {
        let room = buffer.msg_bytes_mut();
        let n = bytes.len().min(room.len());
        room[..n].copy_from_slice(&bytes[..n]);
        n
    });
    endpoint().call(sel4::MessageInfo::new(
        Op::Fail as u64,
        0,
        0,
        len.div_ceil(core::mem::size_of::<u64>()),
    ));
    unreachable!("the server answered a Fail request")
}
