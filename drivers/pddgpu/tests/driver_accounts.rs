//! Property test of per-owner and per-account charging against a model:
//! random creates, exports, imports, unrefs and owner exits over several
//! owners, two accounts (users) and one owner in no account, under random
//! quotas. After every step each owner's and each account's charge per
//! domain equals the model's (the allocated sizes of the BOs its owners
//! hold, an import counted for every holder), no charge is above its
//! limit, and every refusal is the one the model predicts: the owner's
//! quota first (`QuotaExceeded`), then the account's share
//! (`AccountQuotaExceeded`). At the end every owner exits and nothing is
//! charged or allocated.

use std::collections::{BTreeMap, BTreeSet};

mod common;

use common::{held_by, sim_driver, KIB};
use pddgpu::driver::*;
use proptest::prelude::*;

const DOMAIN: u64 = 1 << 20;
/// The account of each owner slot (`None`: the owner joins no account).
const SLOTS: [Option<AccountId>; 4] = [Some(1000), Some(1000), Some(2000), None];

#[derive(Clone, Debug)]
enum Op {
    Create { slot: usize, gtt: bool, pages: u32 },
    Export { slot: usize, pick: usize },
    Import { slot: usize, pick: usize },
    Unref { slot: usize, pick: usize },
    Exit { slot: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS.len();
    prop_oneof![
        6 => (slot.clone(), any::<bool>(), 0..6u32)
            .prop_map(|(slot, gtt, pages)| Op::Create { slot, gtt, pages }),
        2 => (slot.clone(), any::<usize>()).prop_map(|(slot, pick)| Op::Export { slot, pick }),
        3 => (slot.clone(), any::<usize>()).prop_map(|(slot, pick)| Op::Import { slot, pick }),
        3 => (slot.clone(), any::<usize>()).prop_map(|(slot, pick)| Op::Unref { slot, pick }),
        1 => slot.prop_map(|slot| Op::Exit { slot }),
    ]
}

struct ModelBo {
    domain: Domain,
    bytes: u64,
    holders: BTreeMap<OwnerId, u32>,
    token: Option<(ExportToken, OwnerId)>,
}

struct World {
    d: Driver,
    /// The owner in each slot now (a slot's owner is replaced on exit).
    owners: Vec<OwnerId>,
    next_owner: OwnerId,
    bos: BTreeMap<BoId, ModelBo>,
    owner_quota: Option<u64>,
    account_quota: Option<u64>,
}

fn index(d: Domain) -> usize {
    match d {
        Domain::Vram => 0,
        Domain::Gtt => 1,
    }
}

impl World {
    fn new(owner_quota: u64, percent: u64) -> World {
        let (_, d) = sim_driver(DOMAIN, DOMAIN);
        d.tunables()
            .set_value(Tunable::ClientQuotaBytes, owner_quota)
            .unwrap();
        d.tunables()
            .set_value(Tunable::UidQuotaPercent, percent)
            .unwrap();
        let mut w = World {
            d,
            owners: Vec::new(),
            next_owner: 1,
            bos: BTreeMap::new(),
            owner_quota: Some(owner_quota).filter(|&q| q > 0),
            account_quota: (percent < 100).then(|| DOMAIN * percent / 100 / PAGE_SIZE * PAGE_SIZE),
        };
        for slot in 0..SLOTS.len() {
            let owner = w.fresh_owner(slot);
            w.owners.push(owner);
        }
        w
    }

    fn fresh_owner(&mut self, slot: usize) -> OwnerId {
        let owner = self.next_owner;
        self.next_owner += 1;
        if let Some(account) = SLOTS[slot] {
            assert!(self.d.owner_join(owner, account));
            assert!(!self.d.owner_join(owner, account), "an owner joins once");
        }
        owner
    }

    fn account_of(&self, owner: OwnerId) -> Option<AccountId> {
        let slot = self.owners.iter().position(|&o| o == owner)?;
        SLOTS[slot]
    }

    /// The model's charge of `owner` per domain.
    fn owner_charge(&self, owner: OwnerId) -> [u64; 2] {
        let mut c = [0; 2];
        for b in self.bos.values().filter(|b| b.holders.contains_key(&owner)) {
            c[index(b.domain)] += b.bytes;
        }
        c
    }

    /// The model's charge of `account` per domain: its owners' sum.
    fn account_charge(&self, account: AccountId) -> [u64; 2] {
        let mut c = [0; 2];
        for &owner in &self.owners {
            if self.account_of(owner) == Some(account) {
                let o = self.owner_charge(owner);
                c[0] += o[0];
                c[1] += o[1];
            }
        }
        c
    }

    /// The refusal the driver must give a charge of `bytes` in `domain`
    /// to `owner`, if any.
    fn refusal(&self, owner: OwnerId, domain: Domain, bytes: u64) -> Option<DriverError> {
        let held = self.owner_charge(owner);
        let total = held[0] + held[1];
        if let Some(q) = self.owner_quota {
            if total + bytes > q {
                return Some(DriverError::QuotaExceeded {
                    owner,
                    quota: q,
                    held: total,
                    requested: bytes,
                });
            }
        }
        let account = self.account_of(owner)?;
        let q = self.account_quota?;
        let held = self.account_charge(account)[index(domain)];
        (held + bytes > q).then_some(DriverError::AccountQuotaExceeded {
            account,
            domain,
            quota: q,
            held,
            requested: bytes,
        })
    }

    fn pick(&self, pick: usize) -> Option<BoId> {
        self.bos.keys().nth(pick % self.bos.len().max(1)).copied()
    }

    fn let_go(&mut self, id: BoId, owner: OwnerId) {
        let b = self.bos.get_mut(&id).unwrap();
        b.holders.remove(&owner);
        if b.token.is_some_and(|(_, exporter)| exporter == owner) {
            b.token = None;
        }
        if b.holders.is_empty() {
            self.bos.remove(&id);
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Create { slot, gtt, pages } => {
                let owner = self.owners[slot];
                let domain = if gtt { Domain::Gtt } else { Domain::Vram };
                // Powers of two of whole pages: the allocated size is the
                // size in both domains.
                let bytes = PAGE_SIZE << pages;
                let expect = self.refusal(owner, domain, bytes);
                let got = self
                    .d
                    .bo_create(owner, &BoCreate::new(bytes, domain, "acct"), 0);
                match (got, expect) {
                    (Ok(id), None) => {
                        let info = self.d.bo_info(owner, id).unwrap();
                        assert_eq!(info.allocated_size, bytes);
                        self.bos.insert(
                            id,
                            ModelBo {
                                domain,
                                bytes,
                                holders: BTreeMap::from([(owner, 1)]),
                                token: None,
                            },
                        );
                    }
                    // The device may be full before any quota is reached.
                    (Err(DriverError::NoSpace { .. }), None) => {}
                    (Err(e), Some(want)) => assert_eq!(e, want),
                    (got, want) => panic!("create: got {got:?}, the model says {want:?}"),
                }
            }
            Op::Export { slot, pick } => {
                let owner = self.owners[slot];
                let Some(id) = self.pick(pick) else { return };
                let holds = self.bos[&id].holders.contains_key(&owner);
                match self.d.bo_export(owner, id) {
                    Ok(token) => {
                        assert!(holds);
                        let b = self.bos.get_mut(&id).unwrap();
                        assert_eq!(b.token.get_or_insert((token, owner)).0, token);
                    }
                    Err(e) => assert!(!holds && e == DriverError::PermissionDenied, "{e}"),
                }
            }
            Op::Import { slot, pick } => {
                let owner = self.owners[slot];
                let Some(id) = self.pick(pick) else { return };
                let b = &self.bos[&id];
                let Some((token, _)) = b.token else {
                    return;
                };
                let expect = if b.holders.contains_key(&owner) {
                    None
                } else {
                    self.refusal(owner, b.domain, b.bytes)
                };
                match (self.d.bo_import(owner, id, token), expect) {
                    (Ok(_), None) => {
                        *self
                            .bos
                            .get_mut(&id)
                            .unwrap()
                            .holders
                            .entry(owner)
                            .or_default() += 1;
                    }
                    (Err(e), Some(want)) => assert_eq!(e, want),
                    (got, want) => panic!("import: got {got:?}, the model says {want:?}"),
                }
            }
            Op::Unref { slot, pick } => {
                let owner = self.owners[slot];
                let Some(id) = self.pick(pick) else { return };
                let held = self.bos[&id].holders.get(&owner).copied();
                let got = self.d.bo_unref(owner, id);
                match held {
                    None => assert_eq!(got, Err(DriverError::PermissionDenied)),
                    Some(n) => {
                        assert_eq!(got, Ok(()));
                        if n == 1 {
                            self.let_go(id, owner);
                        } else {
                            *self
                                .bos
                                .get_mut(&id)
                                .unwrap()
                                .holders
                                .get_mut(&owner)
                                .unwrap() -= 1;
                        }
                    }
                }
            }
            Op::Exit { slot } => {
                let owner = self.owners[slot];
                self.d.owner_exit(owner);
                for id in held_by(&self.bos, owner, |b| &b.holders) {
                    self.let_go(id, owner);
                }
                self.owners[slot] = self.fresh_owner(slot);
            }
        }
    }

    fn check(&self) {
        let usage: BTreeMap<OwnerId, ClientUsage> =
            self.d.clients().into_iter().map(|c| (c.owner, c)).collect();
        for (slot, &owner) in self.owners.iter().enumerate() {
            let want = self.owner_charge(owner);
            let got = usage
                .get(&owner)
                .map_or([0, 0], |u| [u.vram_bytes, u.gtt_bytes]);
            assert_eq!(got, want, "charges of owner {owner}");
            if let Some(q) = self.owner_quota {
                assert!(got[0] + got[1] <= q, "owner {owner} above its quota");
            }
            assert_eq!(
                usage.get(&owner).and_then(|u| u.account),
                SLOTS[slot],
                "owner {owner}'s account"
            );
        }
        let live: BTreeSet<OwnerId> = self.owners.iter().copied().collect();
        for u in usage.values() {
            assert!(
                live.contains(&u.owner),
                "owner {} outlived its exit",
                u.owner
            );
        }
        let accounts: BTreeSet<AccountId> = SLOTS.iter().flatten().copied().collect();
        for account in accounts {
            let got = self.d.account_charged(account);
            assert_eq!(got, self.account_charge(account), "account {account}");
            if let Some(q) = self.account_quota {
                assert!(
                    got[0] <= q && got[1] <= q,
                    "account {account} above its share"
                );
            }
        }
        let allocated: u64 = self.bos.values().map(|b| b.bytes).sum();
        assert_eq!(
            self.d.vram_stats().used_size + self.d.gtt_stats().used_size,
            allocated
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn owner_and_account_charges_match_the_model(
        owner_quota in prop_oneof![Just(0u64), Just(256 * KIB), Just(512 * KIB)],
        percent in prop_oneof![Just(25u64), Just(50), Just(75), Just(100)],
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let mut w = World::new(owner_quota, percent);
        for op in &ops {
            w.apply(op);
            w.check();
        }
        for slot in 0..SLOTS.len() {
            w.apply(&Op::Exit { slot });
            w.check();
        }
        prop_assert!(w.bos.is_empty());
        prop_assert_eq!(w.d.account_charged(1000), [0, 0]);
        prop_assert_eq!(w.d.account_charged(2000), [0, 0]);
        prop_assert_eq!(w.d.vram_stats().used_size + w.d.gtt_stats().used_size, 0);
        prop_assert!(w.d.leak_check(0).is_clean());
    }
}
