//! Parsing of `pddgpu:` paths into the nodes of the namespace.
//!
//! | path | node |
//! |---|---|
//! | `` or `/` | the root directory |
//! | `config`, `bo` | directories |
//! | `stats`, `stats.json`, `vram`, `gtt`, `vram.map`, `vram.map.json`, `gtt.map`, `gtt.map.json`, `leaks`, `leaks.json`, `clients`, `clients.json`, `health`, `state` | read-only text files |
//! | `control` | write-only command file |
//! | `config/<name>` | one tunable |
//! | `bo/new?size=…&domain=…&align=…&flags=…&label=…` | allocate a BO |
//! | `bo/<id>` | reopen a BO this client already holds |
//! | `bo/<id>?token=<hex>` | import a BO another client exported |

use pddgpu_ipc::logline;
use pddgpu_ipc::wire::{token_from_hex, BoDesc, TOKEN_HEX_LEN, TOKEN_LEN};

/// A read-only generated file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// `stats`: all memory statistics, `key value` per line.
    Stats,
    /// `stats.json`: the same, as JSON.
    StatsJson,
    /// `vram`: the VRAM manager in detail.
    Vram,
    /// `gtt`: the GTT manager in detail.
    Gtt,
    /// `vram.map`: the occupancy map of VRAM, one line per extent.
    VramMap,
    /// `vram.map.json`: the same, as JSON.
    VramMapJson,
    /// `gtt.map`: the occupancy map of the GTT aperture.
    GttMap,
    /// `gtt.map.json`: the same, as JSON.
    GttMapJson,
    /// `leaks`: the last leak audit, one line per suspect.
    Leaks,
    /// `leaks.json`: the same, as JSON.
    LeaksJson,
    /// `clients`: per-client usage.
    Clients,
    /// `clients.json`: the same, as JSON.
    ClientsJson,
    /// `health`: `ok` or one line per problem.
    Health,
    /// `state`: device and manager states.
    State,
}

impl FileKind {
    /// Every file, in listing order, with its name.
    pub const ALL: [(&'static str, FileKind); 14] = [
        ("stats", FileKind::Stats),
        ("stats.json", FileKind::StatsJson),
        ("vram", FileKind::Vram),
        ("gtt", FileKind::Gtt),
        ("vram.map", FileKind::VramMap),
        ("vram.map.json", FileKind::VramMapJson),
        ("gtt.map", FileKind::GttMap),
        ("gtt.map.json", FileKind::GttMapJson),
        ("leaks", FileKind::Leaks),
        ("leaks.json", FileKind::LeaksJson),
        ("clients", FileKind::Clients),
        ("clients.json", FileKind::ClientsJson),
        ("health", FileKind::Health),
        ("state", FileKind::State),
    ];

    /// The file's name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }
}

/// A directory of the namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DirKind {
    /// `/`.
    Root,
    /// `config/`: the tunables.
    Config,
    /// `bo/`: the BOs the caller holds.
    Bo,
}

impl DirKind {
    /// The directory's path (without scheme prefix).
    pub fn path(self) -> &'static str {
        match self {
            DirKind::Root => "",
            DirKind::Config => "config",
            DirKind::Bo => "bo",
        }
    }
}

/// What a path names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A directory.
    Dir(DirKind),
    /// A generated read-only file.
    File(FileKind),
    /// The `control` command file.
    Control,
    /// `config/<name>`; the name is checked against the tunables later.
    Config(String),
    /// `bo/new?…`: allocate.
    BoNew(BoDesc),
    /// `bo/<id>` with an optional import token.
    Bo {
        /// The BO id.
        id: u64,
        /// The token from an export, for importing someone else's BO.
        token: Option<[u8; TOKEN_LEN]>,
    },
}

/// Why a path was refused: the errno and a reason for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathError {
    /// `ENOENT` for names that do not exist, `EINVAL` for malformed
    /// parameters.
    pub errno: i32,
    /// What was wrong, for the log.
    pub reason: String,
}

fn enoent(path: &str) -> PathError {
    PathError {
        errno: syscall::error::ENOENT,
        reason: format!("no such entry `{path}`"),
    }
}

fn einval(reason: String) -> PathError {
    PathError {
        errno: syscall::error::EINVAL,
        reason,
    }
}

/// Longest path accepted.
pub const MAX_PATH: usize = 1024;

/// Parses a path relative to the scheme root.
pub fn parse(path: &str) -> Result<Node, PathError> {
    if path.len() > MAX_PATH {
        return Err(PathError {
            errno: syscall::error::ENAMETOOLONG,
            reason: format!("path longer than {MAX_PATH} bytes"),
        });
    }
    let (name, query) = match path.split_once('?') {
        Some((n, q)) => (n, Some(q)),
        None => (path, None),
    };
    let name = name.trim_start_matches('/');
    let name = name.strip_suffix('/').unwrap_or(name);
    // At most two components, none of them empty, `.` or `..`.
    let (first, second) = match name.split_once('/') {
        None => (name, None),
        Some((first, second)) => (first, Some(second)),
    };
    let bad = |c: &str| c.is_empty() || c == "." || c == "..";
    if !name.is_empty()
        && (bad(first) || second.is_some_and(|s| bad(s) || s.as_bytes().contains(&b'/')))
    {
        return Err(enoent(path));
    }
    let no_query = |node: Node| match query {
        None => Ok(node),
        Some(_) => Err(einval(format!("`{name}` takes no query string"))),
    };
    match (first, second) {
        ("", None) => no_query(Node::Dir(DirKind::Root)),
        ("config", None) => no_query(Node::Dir(DirKind::Config)),
        ("bo", None) => no_query(Node::Dir(DirKind::Bo)),
        ("control", None) => no_query(Node::Control),
        ("config", Some(tunable)) => no_query(Node::Config(tunable.to_string())),
        ("bo", Some("new")) => {
            let q = query.ok_or_else(|| einval("bo/new needs ?size=…".into()))?;
            BoDesc::parse_query(q)
                .map(Node::BoNew)
                .map_err(|e| einval(format!("bo/new: {e}")))
        }
        ("bo", Some(id)) => {
            let id: u64 = id
                .parse()
                .map_err(|_| einval(format!("bo/{id}: not a BO id")))?;
            let token = match query {
                None => None,
                Some(q) => Some(parse_token(q)?),
            };
            Ok(Node::Bo { id, token })
        }
        (file, None) => FileKind::ALL
            .iter()
            .find(|(n, _)| *n == file)
            .map(|(_, k)| *k)
            .ok_or_else(|| enoent(path))
            .and_then(|k| no_query(Node::File(k))),
        _ => Err(enoent(path)),
    }
}

fn parse_token(query: &str) -> Result<[u8; TOKEN_LEN], PathError> {
    let value = query.strip_prefix("token=").ok_or_else(|| {
        einval(format!(
            "bo/<id>: expected ?token=<hex>, got {}",
            logline::excerpt(query)
        ))
    })?;
    token_from_hex(value).ok_or_else(|| {
        einval(format!(
            "bo/<id>: a token is {TOKEN_HEX_LEN} hex digits, got {}",
            logline::excerpt(value)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pddgpu_ipc::wire::{BoFlags, Domain};
    use syscall::error::{EINVAL, ENAMETOOLONG, ENOENT};

    #[test]
    fn names_resolve() {
        assert_eq!(parse(""), Ok(Node::Dir(DirKind::Root)));
        assert_eq!(parse("/"), Ok(Node::Dir(DirKind::Root)));
        assert_eq!(parse("config/"), Ok(Node::Dir(DirKind::Config)));
        assert_eq!(parse("/bo"), Ok(Node::Dir(DirKind::Bo)));
        assert_eq!(parse("stats.json"), Ok(Node::File(FileKind::StatsJson)));
        assert_eq!(parse("/health"), Ok(Node::File(FileKind::Health)));
        assert_eq!(parse("control"), Ok(Node::Control));
        assert_eq!(
            parse("config/leak_threshold_bytes"),
            Ok(Node::Config("leak_threshold_bytes".into()))
        );
        assert_eq!(
            parse("bo/17"),
            Ok(Node::Bo {
                id: 17,
                token: None
            })
        );
        let mut token = [0; TOKEN_LEN];
        token[15] = 0xff;
        assert_eq!(
            parse(&format!("bo/17?token={}", "0".repeat(30) + "ff")),
            Ok(Node::Bo {
                id: 17,
                token: Some(token)
            })
        );
        let Ok(Node::BoNew(d)) = parse("bo/new?size=1M&domain=gtt&flags=cleared") else {
            panic!("bo/new did not parse");
        };
        assert_eq!(d.size, 1 << 20);
        assert_eq!(d.domain, Domain::Gtt);
        assert_eq!(d.flags, BoFlags::CLEARED);
        for (name, kind) in FileKind::ALL {
            assert_eq!(kind.name(), name);
            assert_eq!(parse(name), Ok(Node::File(kind)));
        }
    }

    #[test]
    fn bad_paths_get_their_errno() {
        let errno = |p: &str| parse(p).unwrap_err().errno;
        for p in [
            "nope",
            "stats/x",
            "a/b/c",
            "bo/1/2",
            "bo/../stats",
            "./stats",
            "STATS",
            "config/a/b",
            "bo//1",
            "bo/.",
            "../stats",
            "stats//",
            "bo/1/2/3",
        ] {
            assert_eq!(errno(p), ENOENT, "{p}");
        }
        for p in [
            "stats?x=1",
            "bo/new",
            "bo/new?",
            "bo/new?size=0",
            "bo/new?size=12Q",
            "bo/new?size=4096&align=3",
            "bo/abc",
            "bo/-1",
            "bo/1?tok=1",
            "bo/1?token=",
            "bo/1?token=xyz",
            "bo/1?token=11111111111111111",
            "bo/1?token=ff",
            "bo/1?token=000000000000000000000000000000000",
            "bo/1?token=0000000000000000000000000000000g",
            "control?x",
            "config/x?y",
        ] {
            assert_eq!(errno(p), EINVAL, "{p}");
        }
        assert_eq!(errno(&"a".repeat(MAX_PATH + 1)), ENAMETOOLONG);
        assert!(parse("bo/new?size=4096").is_ok());
        assert_eq!(parse("//stats/"), Ok(Node::File(FileKind::Stats)));
        assert_eq!(parse("config/x/"), Ok(Node::Config("x".into())));
    }
}
