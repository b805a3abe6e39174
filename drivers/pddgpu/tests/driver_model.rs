//! Property test of the whole driver against a model: random interleavings
//! of create, unref, export, import, unexport, write, owner exit,
//! injected allocation failures, device errors and corruption with
//! recovery. After every step the driver must agree with the model (ids,
//! holders, references, tokens, errors), BOs keep their placement and
//! contents, statistics match, and the audit is clean. The model's export
//! rule: an export belongs to its exporter and is revoked when the exporter
//! lets go of the BO; a BO lives exactly while someone holds it.

use std::collections::BTreeMap;

mod common;

use common::{held_by, sim_driver, KIB, MIB};
use pddgpu::device::SimDevice;
use pddgpu::driver::*;
use pddgpu::manager::ManagerState;
use proptest::prelude::*;
const OWNERS: u64 = 3;

#[derive(Clone, Debug)]
enum Op {
    Create {
        owner: u64,
        gtt: bool,
        size: u64,
        contiguous: bool,
    },
    Unref {
        owner: u64,
        pick: usize,
    },
    Export {
        owner: u64,
        pick: usize,
    },
    Import {
        owner: u64,
        pick: usize,
        good: bool,
    },
    Unexport {
        owner: u64,
        pick: usize,
    },
    Write {
        owner: u64,
        pick: usize,
        byte: u8,
    },
    Exit {
        owner: u64,
    },
    NoneUnheld,
    FailNextAlloc,
    ErrorAndRecover,
    CorruptAndRecover {
        gtt: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let owner = 1..=OWNERS;
    prop_oneof![
        6 => (owner.clone(), any::<bool>(), 1..256 * KIB, any::<bool>())
            .prop_map(|(owner, gtt, size, contiguous)| Op::Create { owner, gtt, size, contiguous }),
        4 => (owner.clone(), any::<usize>()).prop_map(|(owner, pick)| Op::Unref { owner, pick }),
        2 => (owner.clone(), any::<usize>()).prop_map(|(owner, pick)| Op::Export { owner, pick }),
        2 => (owner.clone(), any::<usize>(), any::<bool>())
            .prop_map(|(owner, pick, good)| Op::Import { owner, pick, good }),
        1 => (owner.clone(), any::<usize>()).prop_map(|(owner, pick)| Op::Unexport { owner, pick }),
        2 => (owner.clone(), any::<usize>(), any::<u8>())
            .prop_map(|(owner, pick, byte)| Op::Write { owner, pick, byte }),
        1 => owner.prop_map(|owner| Op::Exit { owner }),
        1 => Just(Op::NoneUnheld),
        1 => Just(Op::FailNextAlloc),
        1 => Just(Op::ErrorAndRecover),
        1 => any::<bool>().prop_map(|gtt| Op::CorruptAndRecover { gtt }),
    ]
}

#[derive(Debug)]
struct ModelBo {
    size: u64,
    holders: BTreeMap<u64, u32>,
    token: Option<ExportToken>,
    exporter: Option<u64>,
    fill: u8,
    segments: Vec<(u64, u64, u64)>,
}

impl ModelBo {
    fn refs(&self) -> u32 {
        self.holders.values().sum::<u32>()
    }

    /// `owner` holds no reference any more: its export, if any, ends.
    fn let_go(&mut self, owner: u64) {
        self.holders.remove(&owner);
        if self.exporter == Some(owner) {
            self.token = None;
            self.exporter = None;
        }
    }
}

struct World {
    dev: SimDevice,
    d: Driver,
    bos: BTreeMap<BoId, ModelBo>,
    gone: Vec<BoId>,
    pending_fail: bool,
    now: u64,
}

impl World {
    /// An id to act on: usually a live one, sometimes a freed one.
    fn pick(&self, pick: usize) -> BoId {
        if !self.gone.is_empty() && (pick % 8 == 7 || self.bos.is_empty()) {
            return self.gone[pick % self.gone.len()];
        }
        match self.bos.keys().nth(pick % self.bos.len().max(1)) {
            Some(id) => *id,
            None => BoId((pick as u64).wrapping_mul(2).wrapping_add(2)),
        }
    }

    /// The error the driver must give `owner` acting on `id` as a holder.
    fn access(&self, owner: u64, id: BoId) -> Result<(), DriverError> {
        match self.bos.get(&id) {
            None => Err(DriverError::NoSuchBo),
            Some(b) if !b.holders.contains_key(&owner) => Err(DriverError::PermissionDenied),
            Some(_) => Ok(()),
        }
    }

    /// Makes `call`, which only a holder may make, as `owner` on the BO
    /// `pick` selects: the driver must answer as [`access`](Self::access)
    /// predicts. The BO's id when the call was allowed.
    fn holder_call(
        &self,
        owner: u64,
        pick: usize,
        call: impl FnOnce(&Driver, BoId) -> Result<(), DriverError>,
    ) -> Option<BoId> {
        let id = self.pick(pick);
        let expect = self.access(owner, id);
        assert_eq!(call(&self.d, id), expect);
        expect.ok().map(|()| id)
    }

    fn drop_if_unreferenced(&mut self, id: BoId) -> bool {
        if self.bos[&id].refs() == 0 {
            self.bos.remove(&id);
            self.gone.push(id);
            true
        } else {
            false
        }
    }

    fn check(&self, deep: bool) {
        let s = self.d.stats();
        assert_eq!(s.vram.bo_count + s.gtt.bo_count, self.bos.len() as u64);
        let r = self.d.leak_check(self.now);
        for a in &r.audits {
            assert_eq!(a.verdict, AuditVerdict::Clean, "{a:?}");
        }
        assert_eq!(r.live_bos, self.bos.len() as u64);
        // Every holder is charged each BO it holds at its allocated size
        // (whole pages): (bytes, BOs) per owner.
        let mut charges: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        for (id, b) in &self.bos {
            let Some((&holder, _)) = b.holders.iter().next() else {
                continue;
            };
            let info = self.d.bo_info(holder, *id).unwrap();
            assert!(
                info.allocated_size >= b.size && info.allocated_size % PAGE_SIZE == 0,
                "BO {id}: {} bytes allocated for {}",
                info.allocated_size,
                b.size
            );
            for &owner in b.holders.keys() {
                let c = charges.entry(owner).or_default();
                c.0 += info.allocated_size;
                c.1 += 1;
            }
            assert_eq!(info.refcount, b.refs(), "BO {id}");
            assert_eq!(info.segments, b.segments, "BO {id} moved");
            assert_eq!(info.exported, b.token.is_some());
            if deep {
                let mut buf = vec![0u8; b.size as usize];
                self.d.bo_read(holder, *id, 0, &mut buf).unwrap();
                assert!(buf.iter().all(|&x| x == b.fill), "BO {id} contents changed");
            }
        }
        let charged: BTreeMap<u64, (u64, u64)> = self
            .d
            .clients()
            .iter()
            .map(|c| (c.owner, (c.vram_bytes + c.gtt_bytes, c.bo_count)))
            .collect();
        assert_eq!(charged, charges, "charges per owner");
    }

    fn apply(&mut self, op: &Op) {
        self.now += 1;
        match *op {
            Op::Create {
                owner,
                gtt,
                size,
                contiguous,
            } => {
                let domain = if gtt { Domain::Gtt } else { Domain::Vram };
                let flags = if contiguous {
                    BoFlags::CONTIGUOUS
                } else {
                    BoFlags::empty()
                };
                let req = BoCreate::new(size, domain, "model").with_flags(flags);
                let fail = std::mem::take(&mut self.pending_fail);
                match self.d.bo_create(owner, &req, self.now) {
                    Ok(id) => {
                        assert!(!fail, "an injected failure was pending");
                        let fill = id.0 as u8;
                        self.d
                            .bo_write(owner, id, 0, &vec![fill; size as usize])
                            .unwrap();
                        let segments = self.d.bo_info(owner, id).unwrap().segments;
                        let holders = BTreeMap::from([(owner, 1)]);
                        self.bos.insert(
                            id,
                            ModelBo {
                                size,
                                holders,
                                token: None,
                                exporter: None,
                                fill,
                                segments,
                            },
                        );
                    }
                    Err(DriverError::NoSpace { .. }) => {}
                    Err(e) => panic!("create: {e}"),
                }
            }
            Op::Unref { owner, pick } => {
                if let Some(id) = self.holder_call(owner, pick, |d, id| d.bo_unref(owner, id)) {
                    let b = self.bos.get_mut(&id).unwrap();
                    let n = b.holders.get_mut(&owner).unwrap();
                    *n -= 1;
                    if *n == 0 {
                        b.let_go(owner);
                    }
                    self.drop_if_unreferenced(id);
                }
            }
            Op::Export { owner, pick } => {
                let id = self.pick(pick);
                match (self.access(owner, id), self.d.bo_export(owner, id)) {
                    (Ok(()), Ok(token)) => {
                        let b = self.bos.get_mut(&id).unwrap();
                        assert_eq!(*b.token.get_or_insert(token), token);
                        b.exporter.get_or_insert(owner);
                    }
                    (Err(e), got) => assert_eq!(got, Err(e)),
                    (Ok(()), Err(e)) => panic!("export: {e}"),
                }
            }
            Op::Import { owner, pick, good } => {
                let id = self.pick(pick);
                let token = self.bos.get(&id).and_then(|b| b.token);
                let given = match (token, good) {
                    (Some(t), true) => t,
                    (Some(t), false) => {
                        let mut wrong = t.to_bytes();
                        wrong[1] ^= 0x80;
                        ExportToken::from_bytes(wrong)
                    }
                    (None, _) => ExportToken::from_bytes([0x39; ExportToken::LEN]),
                };
                let got = self.d.bo_import(owner, id, given);
                match self.bos.get_mut(&id) {
                    None => assert_eq!(got.unwrap_err(), DriverError::NoSuchBo),
                    Some(b) if token.is_none() || !good => {
                        assert_eq!(got.unwrap_err(), DriverError::BadToken);
                        let _ = b;
                    }
                    Some(b) => {
                        *b.holders.entry(owner).or_default() += 1;
                        assert_eq!(got.unwrap().refcount, b.refs());
                    }
                }
            }
            Op::Unexport { owner, pick } => {
                if let Some(id) = self.holder_call(owner, pick, |d, id| d.bo_unexport(owner, id)) {
                    let b = self.bos.get_mut(&id).unwrap();
                    b.token = None;
                    b.exporter = None;
                }
            }
            Op::Write { owner, pick, byte } => {
                let id = self.pick(pick);
                let expect = self.access(owner, id);
                let size = self.bos.get(&id).map_or(16, |b| b.size);
                let got = self.d.bo_write(owner, id, 0, &vec![byte; size as usize]);
                match expect {
                    Ok(()) => {
                        assert_eq!(got, Ok(size as usize));
                        self.bos.get_mut(&id).unwrap().fill = byte;
                    }
                    Err(e) => assert_eq!(got, Err(e)),
                }
            }
            Op::Exit { owner } => {
                let held = held_by(&self.bos, owner, |b| &b.holders);
                let summary = self.d.owner_exit(owner);
                assert_eq!(summary.released, held.len() as u64);
                let mut freed = 0;
                for id in held {
                    self.bos.get_mut(&id).unwrap().let_go(owner);
                    freed += u64::from(self.drop_if_unreferenced(id));
                }
                assert_eq!(summary.freed, freed);
                assert_eq!(summary.still_shared, summary.released - freed);
            }
            Op::NoneUnheld => {
                assert!(self.bos.values().all(|b| !b.holders.is_empty()));
                let r = self.d.leak_check(self.now);
                assert!(
                    r.suspects.iter().all(|s| s.reason != SuspectReason::Unheld),
                    "{r:?}"
                );
            }
            Op::FailNextAlloc => {
                if !self.pending_fail {
                    self.dev.fail_next_allocations(1);
                    self.pending_fail = true;
                }
            }
            Op::ErrorAndRecover => {
                self.dev.inject_error();
                self.d.tick(self.now);
                assert_eq!(self.d.vram_stats().state, ManagerState::Error);
                assert_eq!(self.d.gtt_stats().state, ManagerState::Error);
                self.d.recover(Domain::Vram).unwrap();
                self.d.recover(Domain::Gtt).unwrap();
                self.check(true);
            }
            Op::CorruptAndRecover { gtt } => {
                let domain = if gtt { Domain::Gtt } else { Domain::Vram };
                self.dev.corrupt_manager(domain);
                self.d.tick(self.now);
                let r = self.d.leak_check(self.now);
                let audit = r.audit(domain).unwrap();
                if audit.verdict == AuditVerdict::Mismatch {
                    self.d.recover(domain).unwrap();
                } else {
                    // Only possible when the domain was too full to leak a page.
                    assert_eq!(audit.verdict, AuditVerdict::Clean);
                }
                self.check(true);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn driver_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
        let (dev, d) = sim_driver(2 * MIB, 2 * MIB);
        let mut w = World { dev, d, bos: BTreeMap::new(), gone: Vec::new(), pending_fail: false, now: 0 };
        for (i, op) in ops.iter().enumerate() {
            w.apply(op);
            w.check(i % 8 == 7);
        }
        w.check(true);
        for owner in 1..=OWNERS {
            w.apply(&Op::Exit { owner });
        }
        w.apply(&Op::NoneUnheld);
        prop_assert!(w.bos.is_empty());
        prop_assert_eq!(w.d.vram_stats().used_size, 0);
        prop_assert_eq!(w.d.gtt_stats().used_size, 0);
        prop_assert!(w.d.leak_check(w.now).is_clean());
    }
}
