//! The client's runtime: its stack, a small heap, the panic handler
//! (which prints on the kernel's debug console, where the host sees
//! `panicked at` and fails the run), and the entry point, which finds the
//! IPC buffer the server mapped on the page after the image.

use core::ptr;

use one_shot_mutex::sync::RawOneShotMutex;
use sel4::CapTypeForFrameObjectOfFixedSize;
use sel4_dlmalloc::{StaticDlmalloc, StaticHeap};
// Linked for its `#[panic_handler]`, which prints through the
// `debug_put_char` registered below.
use sel4_panicking as _;

const STACK_SIZE: usize = 64 << 10;
sel4_runtime_common::declare_stack!(STACK_SIZE);

const HEAP_SIZE: usize = 64 << 10;
static HEAP: StaticHeap<HEAP_SIZE> = StaticHeap::new();

#[global_allocator]
static ALLOCATOR: StaticDlmalloc<RawOneShotMutex> = StaticDlmalloc::new(HEAP.bounds());

sel4_panicking_env::register_debug_put_char!(sel4::debug_put_char);

sel4_runtime_common::declare_entrypoint_with_stack_init! {
    entrypoint()
}

fn entrypoint() -> ! {
    let ipc_buffer = ipc_buffer_address() as *mut sel4::IpcBuffer;
    // SAFETY: the server maps one frame, read-write and used by nothing
    // else, as this thread's IPC buffer on the first page boundary after
    // the image (`_end`), and configures the TCB with it; it stays mapped
    // for the thread's whole life.
    #[allow(unsafe_code)]
    let ipc_buffer = unsafe { &mut *ipc_buffer };
    sel4::set_ipc_buffer(ipc_buffer);
    crate::main()
}

/// The first page boundary after the image.
fn ipc_buffer_address() -> usize {
    #[allow(unsafe_code)]
    extern "C" {
        static _end: u8;
    }
    // Only the symbol's address is taken; it is never read.
    let end = ptr::addr_of!(_end) as usize;
    end.next_multiple_of(sel4::cap_type::Granule::FRAME_OBJECT_TYPE.bytes())
}
