//! Export/import between processes: the importer sees the exporter's bytes,
//! a third client gets EPERM for a guessed id and EBADF for a wrong token,
//! and the BO lives until its last holder closes.

use std::time::Duration;

use pddgpu_ipc::ShareToken;
use pddgpu_tests::{wait_until, ClientProc, Daemon};

const DAEMON: &str = env!("CARGO_BIN_EXE_pddgpud-under-test");
const CLIENT: &str = env!("CARGO_BIN_EXE_pddgpu-test-client");

#[test]
fn export_import_and_strangers() {
    let daemon = Daemon::start(DAEMON, &[]);
    let dev = daemon.connect();
    let sock = daemon.socket();

    let mut exporter = ClientProc::spawn(CLIENT, sock, &["export", "2097152", "90"]);
    let line = exporter.line();
    let token: ShareToken = line
        .strip_prefix("token ")
        .unwrap_or_else(|| panic!("exporter said {line}"))
        .parse()
        .unwrap();

    let mut importer = ClientProc::spawn(CLIENT, sock, &["import", &token.to_string(), "90"]);
    assert_eq!(importer.line(), "ok 2097152", "importer sees the bytes");

    // A third client: guessed id without a token, and a wrong token.
    let probe = |path: String| {
        let mut c = ClientProc::spawn(CLIENT, sock, &["open", &path]);
        let line = c.line();
        assert!(c.finish());
        line
    };
    assert_eq!(probe(format!("bo/{}", token.id)), "err EPERM");
    let mut wrong = token;
    wrong.token[15] ^= 1;
    assert_eq!(probe(wrong.to_path()), "err EBADF");
    let zeros = "0".repeat(pddgpu_ipc::wire::TOKEN_HEX_LEN);
    assert_eq!(probe(format!("bo/{}?token={zeros}", token.id)), "err EBADF");
    // A token that is not 32 hex digits is malformed.
    assert_eq!(probe(format!("bo/{}?token=0", token.id)), "err EINVAL");
    // A right token works for anyone (that is what sharing means).
    assert_eq!(probe(token.to_path()), "ok");

    let info = dev.stats().unwrap();
    assert_eq!(info.bos.count, 1);

    // The exporter lets go: the importer still holds it, bytes intact.
    exporter.send("close");
    assert_eq!(exporter.line(), "closed");
    importer.send("again");
    assert_eq!(importer.line(), "still ok");
    assert_eq!(dev.stats().unwrap().bos.count, 1, "alive while imported");
    // The export ended with its exporter: the token no longer opens it.
    assert_eq!(probe(token.to_path()), "err EBADF");
    assert!(exporter.finish());

    // The last holder goes: the BO is freed.
    assert!(importer.finish());
    assert!(
        wait_until(Duration::from_secs(10), || dev
            .stats()
            .map(|s| s.bos.count == 0 && s.vram.used == 0)
            .unwrap_or(false)),
        "BO not freed after its last holder: {:?}",
        dev.stats()
    );
    let report = dev.leak_check().unwrap();
    assert!(report.clean, "{report:?}");
    drop(dev);
    assert_eq!(daemon.stop(), Some(0));
}
