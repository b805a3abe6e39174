//! The scheme's path and query parser: any string either parses or is
//! refused with `ENOENT`/`EINVAL`/`ENAMETOOLONG`, and whatever parses prints
//! back to a path that parses to the same thing (BO descriptions, share
//! tokens, sizes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pddgpu_ipc::size::parse_size;
use pddgpu_ipc::wire::{BoDesc, ShareToken};
use pddgpu_scheme::path::{self, Node};
use syscall::error::{EINVAL, ENAMETOOLONG, ENOENT};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match path::parse(text) {
        Ok(Node::BoNew(desc)) => {
            assert_eq!(
                path::parse(&desc.to_path()),
                Ok(Node::BoNew(desc.clone())),
                "{text:?}"
            );
        }
        Ok(Node::Bo {
            id,
            token: Some(token),
        }) => {
            let again = ShareToken { id, token }.to_path();
            assert_eq!(
                path::parse(&again),
                Ok(Node::Bo {
                    id,
                    token: Some(token)
                })
            );
        }
        Ok(_) => {}
        Err(e) => assert!(
            [ENOENT, EINVAL, ENAMETOOLONG].contains(&e.errno),
            "{text:?}: errno {}",
            e.errno
        ),
    }
    if let Ok(desc) = BoDesc::parse_query(text) {
        let path = desc.to_path();
        let query = path.split_once('?').map_or("", |(_, q)| q);
        assert_eq!(BoDesc::parse_query(query), Ok(desc));
    }
    if let Ok(token) = text.parse::<ShareToken>() {
        assert_eq!(token.to_string().parse::<ShareToken>(), Ok(token));
    }
    if let Ok(n) = parse_size(text) {
        assert_eq!(parse_size(&n.to_string()), Ok(n));
    }
});
