use super::*;

fn token(n: u8) -> ExportToken {
    ExportToken::from_bytes([n; ExportToken::LEN])
}

#[test]
fn references_count_holds_only() {
    let mut o = BoOwnership::new(1);
    o.add_reference(2);
    o.add_reference(2);
    assert_eq!(o.export(2, token(9)), token(9));
    assert_eq!(
        o.export(1, token(10)),
        token(9),
        "exporting again gives the same token"
    );
    assert_eq!(o.refcount(), 3, "an export is not a reference");
    assert_eq!(o.drop_reference(2, false), None, "2 still holds one");
    let gone = o.drop_reference(1, false).unwrap();
    assert_eq!(
        gone,
        LetGo {
            revoked_export: false
        },
        "the creator let go: 2's export stays"
    );
    assert_eq!(o.primary_holder(), 2);
    assert!(o.accepts(&token(9)) && !o.accepts(&token(8)) && !o.accepts(&token(0)));
    let gone = o.drop_reference(2, true).unwrap();
    assert!(gone.revoked_export);
    assert!(o.is_unheld());
    assert_eq!(o.primary_holder(), 0);
    assert_eq!(o.token(), None);
    assert!(!o.accepts(&token(9)));
    assert_eq!(o.drop_reference(2, false), None, "2 holds nothing");
}

#[test]
fn the_exporter_letting_go_revokes_the_export_only() {
    let mut o = BoOwnership::new(1);
    let t = o.export(1, token(77));
    o.add_reference(3);
    assert!(o.accepts(&t));
    let gone = o.drop_reference(1, false).unwrap();
    assert!(gone.revoked_export);
    assert!(!o.accepts(&t), "the token dies with the exporter's hold");
    assert!(o.is_held_by(3), "the importer keeps its reference");
}

#[test]
fn emptied_entries_go_and_their_set_is_reused() {
    let mut shard = OwnerShard::default();
    shard.entry_or_new(7).held.insert(1);
    shard.remove_if_empty(7);
    assert!(shard.contains_key(&7), "an owner holding a BO stays");
    shard.get_mut(&7).unwrap().held.remove(&1);
    let no_limits = ChargeLimits::default();
    assert_eq!(
        shard
            .entry_or_new(7)
            .try_charge(Domain::Vram, 10, no_limits),
        Ok(())
    );
    shard.remove_if_empty(7);
    assert!(shard.contains_key(&7), "an owner with charged bytes stays");
    shard.get_mut(&7).unwrap().uncharge(Domain::Vram, 10);
    let cap = shard[&7].held.capacity();
    assert!(cap > 0);
    shard.remove_if_empty(7);
    assert!(!shard.contains_key(&7), "an empty owner is removed");
    let fresh = shard.entry_or_new(8);
    assert!(fresh.is_empty(), "a recycled set starts empty");
    assert_eq!(fresh.held.capacity(), cap, "the set was reused");
    assert_eq!(
        shard.entry_or_new(9).held.capacity(),
        0,
        "one spare only: the next owner starts with a fresh set"
    );
    shard.entry_or_new(9).held.insert(5);
    assert_eq!(
        shard.entry_or_new(9).try_charge(Domain::Gtt, 4, no_limits),
        Ok(())
    );
    shard.let_go(9, BoId(5), Domain::Gtt, 4);
    assert!(!shard.contains_key(&9), "letting go of its last BO ends it");
}

#[test]
fn an_account_is_charged_with_its_owners_and_forgotten_after_them() {
    let owners = Owners::new();
    assert!(owners.join(1, 500));
    assert!(owners.join(2, 500));
    assert!(!owners.join(2, 600), "an owner joins once");
    let limits = ChargeLimits {
        owner: Some(12),
        account: Some(10),
    };
    let charge = |o: OwnerId, d, n| owners.lock(o).entry_or_new(o).try_charge(d, n, limits);
    assert_eq!(charge(1, Domain::Vram, 6), Ok(()));
    assert_eq!(
        charge(2, Domain::Vram, 6),
        Err(Refusal::Account {
            account: 500,
            held: 6
        }),
        "two owners of one account share its limit"
    );
    assert_eq!(charge(2, Domain::Gtt, 6), Ok(()), "per domain");
    assert_eq!(
        charge(1, Domain::Gtt, 7),
        Err(Refusal::Owner { held: 6 }),
        "the owner's own quota holds too"
    );
    assert_eq!(owners.account_charged(500), [6, 6]);
    assert_eq!(owners.account_charged(600), [0, 0]);
    assert!(owners.join(3, 600), "another account has its own share");
    assert_eq!(charge(3, Domain::Vram, 10), Ok(()));
    {
        let mut shard = owners.lock(1);
        let e = shard.entry_or_new(1);
        assert_eq!(e.settle(Domain::Vram, 6, 2, limits), Ok(()));
    }
    assert_eq!(owners.account_charged(500), [2, 6], "settling shrinks both");
    owners.end(1);
    assert_eq!(
        owners.account_charged(500),
        [0, 6],
        "an exit ends its charges"
    );
    owners.end(2);
    owners.end(3);
    assert!(
        owners.accounts.lock().is_empty(),
        "accounts go with their owners"
    );
    assert!(owners.end(2).is_none());
}
