//! Hostile clients against the log: one user's refusals cannot hide
//! another user's, and a refused request never writes a live export token
//! to the log. Each attack runs against a real `pddgpud` process over the
//! real host transport and ends with the server intact.

use std::time::Duration;

use pddgpu_ipc::{BoFlags, Domain};
use pddgpu_tests::Daemon;
use syscall::flag::O_RDONLY;

mod hostile_common;

use hostile_common::*;

/// A user flooding the server with refusals (tens of thousands a second)
/// gets its share of the log, not all of it: another user's refusals in
/// the same seconds — here forged-token opens, the lines an admin looks
/// for — are all written, and the summary of what was held back names the
/// flooding user. Without a second user (not root) the flood and the
/// probes come from one user, and only the summary is checked.
#[test]
fn one_users_refusals_cannot_hide_another_users() {
    let mut daemon = Daemon::start(&daemon_bin(), &[]);
    let flooder_uid = is_root().then_some(OTHER_UID);
    let mut flooder = spawn_helper(&daemon, &["refusal-flood", "4000"], flooder_uid);
    // Let the flood fill the current window first.
    std::thread::sleep(Duration::from_millis(300));
    let mut c = pddgpu_ipc::host::HostConnection::connect(daemon.socket()).unwrap();
    let probes: Vec<String> = (0..6)
        .map(|i| format!("bo/{}?token={}", 900_001 + i, "0".repeat(32)))
        .collect();
    for probe in &probes {
        assert!(open(&mut c, probe, O_RDONLY).is_err(), "{probe} was opened");
        // Two probes a second at most: this user's own share.
        std::thread::sleep(Duration::from_millis(600));
    }
    let answer = first_line(&mut flooder);
    let _ = flooder.wait();
    let refused: u64 = answer
        .strip_prefix("refused ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("flooder said {answer:?}"));
    assert!(refused > 1000, "the flood made only {refused} refusals");
    // A quiet second later, the next line brings the summary.
    std::thread::sleep(Duration::from_millis(1100));
    let _ = open(&mut c, "no/such/file", O_RDONLY);
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
    let log = daemon.log();
    if let Some(uid) = flooder_uid {
        for probe in &probes {
            let id = probe.split('?').next().unwrap();
            assert!(
                log.contains(&format!("{id}?token=0000…")),
                "the refusal of {id} was hidden by uid {uid}'s {refused} refusals:\n{log}"
            );
        }
        assert!(
            log.lines().any(
                |l| l.contains("lines suppressed (uid ") && l.contains(&format!("uid {uid}: "))
            ),
            "no summary names the flooding uid {uid}:\n{log}"
        );
    } else {
        assert!(log.contains("lines suppressed"), "nothing counted:\n{log}");
    }
    let lines = log.lines().count() as u64;
    assert!(
        lines < refused / 10,
        "{lines} log lines for {refused} refusals"
    );
    assert_server_intact(&mut daemon);
}

/// A refused import names the path it was given, but not the live token
/// in it: anyone who can read the log could otherwise open the BO. Here
/// the importer is over its quota (`EDQUOT`), so the token was right.
#[test]
fn a_refused_import_does_not_write_the_token_to_the_log() {
    let mut daemon = Daemon::start(&daemon_bin(), &[]);
    let owner = daemon.connect();
    owner.set_config("client_quota_bytes", "4096").unwrap();
    let bo = owner
        .create_bo(4096, Domain::Gtt, BoFlags::empty())
        .unwrap();
    let token = bo.export().unwrap();
    let hex = token.to_string();
    let hex = hex.split_once(':').unwrap().1.to_string();
    assert_eq!(hex.len(), 32);
    let importer = daemon.connect();
    let _full = importer
        .create_bo(4096, Domain::Gtt, BoFlags::empty())
        .unwrap();
    let refused = importer.import(token).map(|_| ()).unwrap_err();
    assert_eq!(refused.errno(), Some(syscall::error::EDQUOT), "{refused}");
    std::thread::sleep(Duration::from_millis(200));
    let log = daemon.log();
    let line = format!("bo/{}?token={}…", bo.id(), &hex[..4]);
    assert!(
        log.lines()
            .any(|l| l.contains(&line) && l.contains("EDQUOT")),
        "the refusal was not logged as {line}:\n{log}"
    );
    assert!(
        !log.contains(&hex[4..]),
        "the live token {hex} is in the log:\n{log}"
    );
    owner.set_config("client_quota_bytes", "0").unwrap();
    drop((_full, bo, importer, owner));
    assert_server_intact(&mut daemon);
}
