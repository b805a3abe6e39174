//! Calls to the server over the badged endpoint in slot
//! [`slots::ENDPOINT`]: the only capability this client has that reaches
//! anything outside itself.

use pddgpu_sel4_proto::{slots, Op, Request, TEXT_MAX};

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

/// Sends `op` with `text` (cut to [`TEXT_MAX`] bytes, zero-padded to
/// whole words) as the message.
fn call_text(op: Op, text: &str) -> sel4::MessageInfo {
    let bytes = &text.as_bytes()[..text.len().min(TEXT_MAX)];
    let words = bytes.len().div_ceil(core::mem::size_of::<u64>());
    sel4::with_ipc_buffer_mut(|buffer| {
        let room = &mut buffer.msg_bytes_mut()[..words * 8];
        room.fill(0);
        room[..bytes.len()].copy_from_slice(bytes);
    });
    endpoint().call(sel4::MessageInfo::new(op as u64, 0, 0, words))
}

/// Has the server print a progress line for this client.
pub fn say(text: &str) {
    call_text(Op::Say, text);
}

/// Tells the server the script failed and never returns: the server does
/// not answer.
pub fn fail(reason: &str) -> ! {
    call_text(Op::Fail, reason);
    unreachable!("the server answered a Fail request")
}
