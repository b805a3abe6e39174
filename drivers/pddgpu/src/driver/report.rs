//! Small result types of driver operations: [`ExitSummary`],
//! [`ClientUsage`], [`Health`].

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::bo::OwnerId;

/// What [`Driver::owner_exit`](super::Driver::owner_exit) did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExitSummary {
    /// The owner.
    pub owner: OwnerId,
    /// BOs whose references by the owner were dropped.
    pub released: u64,
    /// BOs freed because nobody else held them.
    pub freed: u64,
    /// BOs still alive because others hold them (or they are exported).
    pub still_shared: u64,
    /// VRAM bytes freed (allocator granularity).
    pub vram_bytes_freed: u64,
    /// GTT bytes freed.
    pub gtt_bytes_freed: u64,
}

/// One client's usage, for the `clients` listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientUsage {
    /// The client.
    pub owner: OwnerId,
    /// BOs it holds a reference to (created or imported).
    pub bo_count: u64,
    /// Allocated bytes of the VRAM BOs it holds, created or imported (what
    /// its quota is charged).
    pub vram_bytes: u64,
    /// Allocated bytes of the GTT BOs it holds.
    pub gtt_bytes: u64,
    /// Its quota, if quotas are on.
    pub quota: Option<u64>,
    /// The account (user) it belongs to, if it joined one.
    pub account: Option<super::AccountId>,
}

/// The driver's health: healthy, or a list of problems.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// One human-readable line per problem; empty when healthy.
    pub problems: Vec<String>,
}

impl Health {
    /// True when there are no problems.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for Health {
    /// `ok`, or one problem per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.problems.is_empty() {
            return writeln!(f, "ok");
        }
        for p in &self.problems {
            writeln!(f, "{p}")?;
        }
        Ok(())
    }
}
