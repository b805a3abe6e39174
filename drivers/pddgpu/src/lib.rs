//! # pddgpu — the PDDGPU driver core
//!
//! Memory management of the PDDGPU driver, written to run inside an isolated
//! user-space driver server (`pddgpud`) and to stay portable to other
//! microkernels: this crate is `no_std` + `alloc`, takes its locks from
//! [`spin`] and its flags from [`bitflags`], and knows nothing of schemes,
//! sockets or files.
//!
//! - [`manager`]: the state machine, errors and retry policy shared by the
//!   VRAM and GTT managers.
//! - [`buddy`] / [`vram`]: a drm_buddy-class buddy allocator and the VRAM
//!   manager on top of it.
//! - [`range`] / [`gtt`]: a drm_mm-class range allocator and the GTT manager
//!   on top of it.
#![no_std]
#![deny(missing_docs)]

extern crate alloc;

pub mod bo;
pub mod buddy;
// The device module touches registers and backing memory through raw
// pointers; the rest of the core is safe code.
#[allow(unsafe_code)]
pub mod device;
pub mod driver;
pub mod gtt;
pub mod leak;
pub mod manager;
pub mod range;
pub mod stats;
pub mod tunables;
pub mod vram;
