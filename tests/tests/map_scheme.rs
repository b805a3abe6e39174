//! The occupancy map through a real `pddgpud`: the `vram.map` / `gtt.map`
//! files and their JSON twins while client processes hold memory, the SVG
//! that `pddgpu map --svg` draws from them (it parses as XML and shows
//! every BO), the text picture, and the coarse map in `top`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Output;

use pddgpu_ipc::model::{ExtentKind, OccupancyMap};
use pddgpu_tests::{run_cli, ClientProc, Daemon, TempDir};

const DAEMON: &str = env!("CARGO_BIN_EXE_pddgpud-under-test");
const CLI: &str = env!("CARGO_BIN_EXE_pddgpu-cli-under-test");

fn cli(socket: &Path, args: &[&str]) -> Output {
    run_cli(CLI, socket, args)
}

fn holder(socket: &Path, args: &[&str]) -> ClientProc {
    ClientProc::holding(CLI, socket, args)
}

/// BO id -> (pid, label, bytes) as a map shows it.
fn bos_in(map: &OccupancyMap) -> BTreeMap<u64, (u64, String, u64)> {
    let mut bos: BTreeMap<u64, (u64, String, u64)> = BTreeMap::new();
    for e in map.extents.iter().filter(|e| e.kind == ExtentKind::Bo) {
        let b = bos
            .entry(e.bo)
            .or_insert_with(|| (e.pid, e.label.clone(), 0));
        assert_eq!((b.0, &b.1), (e.pid, &e.label), "one BO, one holder");
        b.2 += e.size;
    }
    bos
}

#[test]
fn map_files_svg_and_pictures_show_every_bo() {
    let daemon = Daemon::start(DAEMON, &["--visible-size", "16M"]);
    let socket = daemon.socket();
    let textures = holder(
        socket,
        &["--size", "6M", "--count", "3", "--label", "textures"],
    );
    let cursor = holder(
        socket,
        &[
            "--size", "64K", "--count", "4", "--flags", "visible", "--label", "cursor",
        ],
    );
    let staging = holder(
        socket,
        &[
            "--size", "3M", "--count", "4", "--domain", "gtt", "--label", "staging",
        ],
    );
    let (t, c, s) = (
        u64::from(textures.child.id()),
        u64::from(cursor.child.id()),
        u64::from(staging.child.id()),
    );
    let dev = daemon.connect();
    let stats = dev.stats().unwrap();

    // The JSON twins: tiling, settled, free bytes as the allocator says,
    // every held BO with its client's pid and label.
    let vram = dev.occupancy_map("vram").unwrap();
    let gtt = dev.occupancy_map("gtt").unwrap();
    for (m, pool) in [(&vram, &stats.vram), (&gtt, &stats.gtt)] {
        assert_eq!(m.check_tiling(), Ok(()), "{}", m.domain);
        assert!(m.settled, "{}: nothing was in flight", m.domain);
        assert_eq!(m.size, pool.total);
        assert_eq!(m.bytes_in(ExtentKind::Free, 0..m.size), pool.free);
        assert!(m.largest_free_in(0..m.size) >= pool.largest_free);
    }
    assert_eq!(vram.visible_size, 16 << 20);
    let vram_bos = bos_in(&vram);
    let gtt_bos = bos_in(&gtt);
    let count = |bos: &BTreeMap<u64, (u64, String, u64)>, pid: u64, label: &str, bytes: u64| {
        bos.values()
            .filter(|b| b.0 == pid && b.1 == label && b.2 == bytes)
            .count()
    };
    assert_eq!(count(&vram_bos, t, "textures", 6 << 20), 3, "{vram_bos:?}");
    assert_eq!(count(&vram_bos, c, "cursor", 64 << 10), 4, "{vram_bos:?}");
    assert_eq!(count(&gtt_bos, s, "staging", 3 << 20), 4, "{gtt_bos:?}");
    assert_eq!(vram_bos.len() + gtt_bos.len(), stats.bos.count as usize);
    // Visible BOs lie in the CPU-visible window.
    for e in vram.extents.iter().filter(|e| e.pid == c) {
        assert!(e.end() <= vram.visible_size, "{e:?}");
    }

    // The text file says the same, one extent per line.
    let text = dev.read_text("vram.map").unwrap();
    assert!(
        text.contains(&format!("extents {}\n", vram.extents.len())),
        "{text}"
    );
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("extent ")).collect();
    assert_eq!(lines.len(), vram.extents.len(), "{text}");
    for (line, e) in lines.iter().zip(&vram.extents) {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(u64::from_str_radix(&words[1][2..], 16).unwrap(), e.start);
        assert_eq!(u64::from_str_radix(&words[2][2..], 16).unwrap(), e.end());
        assert_eq!(words[3], e.kind.name());
        if e.kind == ExtentKind::Bo {
            assert_eq!(
                words[4..],
                [
                    "id",
                    &e.bo.to_string(),
                    "owner",
                    &e.owner.to_string(),
                    "pid",
                    &e.pid.to_string(),
                    "label",
                    &format!("{:?}", e.label)
                ]
            );
        }
    }
    // The map files are read-only, like every generated file.
    assert!(dev.write_file("vram.map.json", b"{}").is_err());

    // The SVG parses as XML and shows every BO of the domain.
    let dir = TempDir::new("map-svg");
    for (domain, map) in [("vram", &vram), ("gtt", &gtt)] {
        let file = dir.path().join(format!("{domain}.svg"));
        let out = cli(
            socket,
            &["map", "--domain", domain, "--svg", file.to_str().unwrap()],
        );
        assert!(out.status.success(), "{out:?}");
        let svg = std::fs::read_to_string(&file).unwrap();
        let doc = roxmltree::Document::parse(&svg)
            .unwrap_or_else(|e| panic!("{domain}.svg is not XML: {e}\n{svg}"));
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert_eq!(
            root.tag_name().namespace(),
            Some("http://www.w3.org/2000/svg")
        );
        let mut drawn: BTreeSet<u64> = BTreeSet::new();
        for g in root
            .descendants()
            .filter(|n| n.attribute("data-bo").is_some())
        {
            let id: u64 = g.attribute("data-bo").unwrap().parse().unwrap();
            let rects = g
                .children()
                .filter(|n| n.tag_name().name() == "rect")
                .count();
            assert!(rects > 0, "{domain}: BO {id} has no rectangle");
            let title = g
                .children()
                .find(|n| n.tag_name().name() == "title")
                .and_then(|n| n.text())
                .unwrap_or_default();
            assert!(title.starts_with(&format!("BO {id} ")), "{title}");
            drawn.insert(id);
        }
        let expected: BTreeSet<u64> = bos_in(map).into_keys().collect();
        assert_eq!(drawn, expected, "{domain}: every BO, and only BOs, drawn");
        // The legend names every client of the domain.
        let legend: String = root
            .descendants()
            .filter(|n| n.tag_name().name() == "text")
            .filter_map(|n| n.text())
            .collect::<Vec<_>>()
            .join("\n");
        for (pid, ..) in bos_in(map).values() {
            assert!(legend.contains(&format!("client pid {pid} ")), "{legend}");
        }
        if domain == "vram" {
            assert!(
                root.descendants()
                    .any(|n| n.attribute("id") == Some("visible")),
                "the visible window is marked"
            );
            assert!(
                legend.contains("CPU-visible window (first 16.0 MiB)"),
                "{legend}"
            );
        }
    }

    // The text picture: a legend line per client.
    let out = cli(socket, &["map"]);
    let picture = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{picture}");
    assert!(picture.contains(&format!(": pid {t} ")), "{picture}");
    assert!(picture.contains(&format!(": pid {c} ")), "{picture}");
    assert!(
        picture.lines().any(|l| l.contains(" v ")),
        "visible rows marked: {picture}"
    );

    // `top` draws the coarse map with a letter per client.
    let out = cli(socket, &["top", "--plain", "--frames", "1"]);
    let frame = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(frame.contains(" Occupancy "), "{frame}");
    let legend = frame
        .lines()
        .find(|l| l.contains("│clients "))
        .unwrap_or_else(|| panic!("no map legend in\n{frame}"));
    for pid in [t, c, s] {
        assert!(legend.contains(&format!(" pid {pid} ")), "{legend}");
    }
    let gtt_row = frame.lines().find(|l| l.starts_with("│gtt ")).unwrap();
    let letter = legend
        .split("pid ")
        .zip(legend.split("pid ").skip(1))
        .find(|(_, after)| after.starts_with(&s.to_string()))
        .and_then(|(before, _)| before.trim_end().chars().last())
        .unwrap();
    assert!(gtt_row.contains(letter), "{letter} in {gtt_row}");

    drop(dev);
    textures.kill();
    cursor.kill();
    staging.kill();
    assert_eq!(daemon.stop(), Some(0));
}
