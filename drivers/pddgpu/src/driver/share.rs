//! Sharing: more references for a holder, exports and imports. The rules
//! are those of [`super::ownership`].

use super::gate::{Lane, Mode};
use super::ownership::held_entry;
use super::token::ExportToken;
use super::{Driver, DriverError, GTT_BASE};
use crate::bo::{BoId, BoInfo, OwnerId};
use alloc::vec::Vec;

impl Driver {
    /// Adds a reference for `owner`, which must already hold the BO (a
    /// front end opening a second handle on it). Returns its description.
    pub fn bo_ref(&self, owner: OwnerId, id: BoId) -> Result<BoInfo, DriverError> {
        let _pass = self.gate.enter(Lane::Other, Mode::Wait)?;
        let mut shard = self.table.shard(id);
        let entry = held_entry(&mut shard, owner, id)?;
        entry.own.add_reference(owner);
        Ok(entry.info(id, GTT_BASE))
    }

    /// The BOs `owner` holds, in id order.
    pub fn owner_bos(&self, owner: OwnerId) -> Vec<BoId> {
        self.owners.held(owner)
    }

    /// How many BOs `owner` holds (created or imported).
    pub fn owner_bo_count(&self, owner: OwnerId) -> usize {
        self.owners
            .lock(owner)
            .get(&owner)
            .map_or(0, |e| e.held.len())
    }

    /// A fresh export token from the driver's token source.
    fn make_token(&self) -> Result<ExportToken, DriverError> {
        let mut bytes = [0; ExportToken::LEN];
        self.tokens.fill(&mut bytes)?;
        Ok(ExportToken::from_bytes(bytes))
    }

    /// Exports a BO held by `owner`: returns the token with which others
    /// import it. Exporting again (by any holder) returns the same token.
    /// The export lasts while its exporter holds the BO (see
    /// [`super::ownership`]).
    pub fn bo_export(&self, owner: OwnerId, id: BoId) -> Result<ExportToken, DriverError> {
        let _pass = self.gate.enter(Lane::Other, Mode::Wait)?;
        // Drawn before the shard lock (it may be a system call), and
        // dropped if the BO turns out to be exported already.
        let fresh = self.make_token()?;
        let mut shard = self.table.shard(id);
        let entry = held_entry(&mut shard, owner, id)?;
        let token = entry.own.export(owner, fresh);
        self.publish_holders(entry);
        Ok(token)
    }

    /// Withdraws a BO's export (its token stops working). Any holder may;
    /// the BO itself stays.
    pub fn bo_unexport(&self, owner: OwnerId, id: BoId) -> Result<(), DriverError> {
        let _pass = self.gate.enter(Lane::Other, Mode::Wait)?;
        let mut shard = self.table.shard(id);
        let entry = held_entry(&mut shard, owner, id)?;
        entry.own.unexport();
        self.publish_holders(entry);
        Ok(())
    }

    /// Imports an exported BO: `owner` gets a reference to it and, if it
    /// did not hold it yet, is charged its allocated size, and so is its
    /// account (refused with [`DriverError::QuotaExceeded`] or
    /// [`DriverError::AccountQuotaExceeded`] when that would take either
    /// over its quota; see [`super::ownership`]).
    pub fn bo_import(
        &self,
        owner: OwnerId,
        id: BoId,
        token: ExportToken,
    ) -> Result<BoInfo, DriverError> {
        let _pass = self.gate.enter(Lane::Other, Mode::Wait)?;
        let mut owners = self.owners.lock(owner);
        let mut shard = self.table.shard(id);
        let entry = shard.bos.get_mut(&id.0).ok_or(DriverError::NoSuchBo)?;
        if !entry.own.accepts(&token) {
            return Err(DriverError::BadToken);
        }
        if !entry.own.is_held_by(owner) {
            let bytes = entry.placement.allocated_size();
            let domain = entry.placement.domain();
            let limits = self.charge_limits(domain);
            let holder = owners.entry_or_new(owner);
            if let Err(refusal) = holder.try_charge(domain, bytes, limits) {
                owners.remove_if_empty(owner);
                return Err(self.quota_error(owner, domain, limits, refusal, bytes));
            }
        }
        entry.own.add_reference(owner);
        owners.entry_or_new(owner).held.insert(id.0);
        self.publish_holders(entry);
        Ok(entry.info(id, GTT_BASE))
    }
}
