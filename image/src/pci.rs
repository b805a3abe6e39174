//! Finding a PCI function in Linux sysfs by vendor and device id (used by
//! the guest test program to look at the GPU independently of pddgpud).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Where Linux lists PCI functions.
pub const SYSFS_PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// Parses a sysfs id file (`0x1234\n`).
pub fn parse_id(text: &str) -> Option<u16> {
    let t = text.trim();
    let hex = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X"))?;
    u16::from_str_radix(hex, 16).ok()
}

/// The functions under `root` (normally [`SYSFS_PCI_DEVICES`]) whose
/// `vendor`/`device` files match, sorted by address. Entries whose id files
/// cannot be read are skipped.
pub fn find(root: &Path, vendor: u16, device: u16) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(root)? {
        let path = entry?.path();
        let id = |f: &str| {
            fs::read_to_string(path.join(f))
                .ok()
                .and_then(|t| parse_id(&t))
        };
        if id("vendor") == Some(vendor) && id("device") == Some(device) {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ids() {
        let cases = [
            ("0x1234\n", Some(0x1234)),
            ("0X1af4", Some(0x1af4)),
            ("1234", None),
            ("0x12345", None),
            ("", None),
        ];
        for (text, id) in cases {
            assert_eq!(parse_id(text), id, "{text:?}");
        }
    }

    #[test]
    fn finds_matching_functions_in_a_fake_sysfs() {
        let root = std::env::temp_dir().join(format!("pddgpu-sysfs-{}", std::process::id()));
        for (bdf, vendor, device) in [
            ("0000:00:03.0", "0x1234\n", "0x1111\n"),
            ("0000:00:01.0", "0x8086\n", "0x7000\n"),
            ("0000:00:02.0", "0x1234\n", "0x1112\n"),
            ("0000:00:04.0", "garbage", "0x1111\n"),
        ] {
            let d = root.join(bdf);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("vendor"), vendor).unwrap();
            fs::write(d.join("device"), device).unwrap();
        }
        fs::create_dir_all(root.join("0000:00:05.0")).unwrap(); // no id files
        let found = find(&root, 0x1234, 0x1111).unwrap();
        assert_eq!(found, [root.join("0000:00:03.0")]);
        assert!(find(&root, 0xdead, 0xbeef).unwrap().is_empty());
        assert!(find(&root.join("missing"), 0x1234, 0x1111).is_err());
        fs::remove_dir_all(&root).unwrap();
    }
}
