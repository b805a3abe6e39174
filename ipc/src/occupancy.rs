//! Reading an [`OccupancyMap`] for display: a stable colour and letter per
//! client ([`Palette`]) and the coarse view `top` draws, where one cell
//! stands for a fixed run of addresses ([`coarse`]). The SVG drawing
//! ([`crate::map_svg`]) uses the same palette, so a client has the same
//! colour in both.

use std::collections::BTreeMap;

use crate::model::{ExtentKind, OccupancyMap};

/// Fill colours of clients, in the order they are handed out: distinct
/// hues, readable on white and on a dark terminal. No red and no dark grey:
/// those mark memory no BO holds and retired memory.
pub const COLOURS: [(u8, u8, u8); 12] = rgb([
    0x1f77b4, 0xff7f0e, 0x2ca02c, 0x9467bd, 0x17becf, 0xe377c2, 0xbcbd22, 0x8c564b, 0x393b79,
    0x008080, 0xffbb78, 0x98df8a,
]);

/// `0xRRGGBB` colour codes as `(red, green, blue)` triples.
const fn rgb<const N: usize>(codes: [u32; N]) -> [(u8, u8, u8); N] {
    let mut out = [(0, 0, 0); N];
    let mut i = 0;
    while i < N {
        let c = codes[i];
        out[i] = ((c >> 16) as u8, (c >> 8) as u8, c as u8);
        i += 1;
    }
    out
}

/// Letters of clients in text views (`A`…`Z`, `a`…`z`, then `#`).
fn letter(index: usize) -> char {
    match index {
        0..=25 => (b'A' + index as u8) as char,
        26..=51 => (b'a' + (index - 26) as u8) as char,
        _ => '#',
    }
}

/// One client as the map shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaletteEntry {
    /// Owner id.
    pub owner: u64,
    /// Process id (0 when unknown).
    pub pid: u64,
    /// Its letter in text views.
    pub letter: char,
    /// Its fill colour.
    pub colour: (u8, u8, u8),
    /// Bytes of its extents (over all maps given).
    pub bytes: u64,
    /// BOs of its extents.
    pub bos: u64,
}

/// A colour and letter per owner, by ascending owner id, so they stay put
/// from one frame to the next while the same clients run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Palette {
    entries: Vec<PaletteEntry>,
    index: BTreeMap<u64, usize>,
}

impl Palette {
    /// The owners of the BOs in `maps`.
    pub fn of<'a>(maps: impl IntoIterator<Item = &'a OccupancyMap>) -> Palette {
        let mut owners: BTreeMap<u64, (u64, u64, std::collections::BTreeSet<u64>)> =
            BTreeMap::new();
        for m in maps {
            for e in m.extents.iter().filter(|e| e.kind == ExtentKind::Bo) {
                let o = owners.entry(e.owner).or_default();
                if o.0 == 0 {
                    o.0 = e.pid;
                }
                o.1 += e.size;
                o.2.insert(e.bo);
            }
        }
        let entries: Vec<PaletteEntry> = owners
            .into_iter()
            .enumerate()
            .map(|(i, (owner, (pid, bytes, bos)))| PaletteEntry {
                owner,
                pid,
                letter: letter(i),
                colour: COLOURS[i % COLOURS.len()],
                bytes,
                bos: bos.len() as u64,
            })
            .collect();
        let index = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.owner, i))
            .collect();
        Palette { entries, index }
    }

    /// The entry of `owner`.
    pub fn get(&self, owner: u64) -> Option<&PaletteEntry> {
        self.index.get(&owner).map(|&i| &self.entries[i])
    }

    /// All entries, by owner id.
    pub fn entries(&self) -> &[PaletteEntry] {
        &self.entries
    }
}

/// What one coarse cell shows: what holds most of its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell {
    /// Nothing allocated in it.
    Free,
    /// Mostly free, but something is allocated in it.
    MostlyFree,
    /// Mostly this owner's BOs.
    Owner(u64),
    /// Mostly retired bad VRAM.
    Retired,
    /// Mostly allocated memory no BO holds.
    Unowned,
}

impl Cell {
    /// The character of this cell in text views.
    pub fn symbol(self, palette: &Palette) -> char {
        match self {
            Cell::Free => '.',
            Cell::MostlyFree => ',',
            Cell::Owner(o) => palette.get(o).map_or('?', |e| e.letter),
            Cell::Retired => 'x',
            Cell::Unowned => '!',
        }
    }
}

/// The map cut into `cells` equal runs of addresses (the last may be
/// shorter), each shown as what holds most of its bytes.
pub fn coarse(map: &OccupancyMap, cells: usize) -> Vec<Cell> {
    if cells == 0 || map.size == 0 {
        return Vec::new();
    }
    let per_cell = map.size.div_ceil(cells as u64).max(1);
    let cells = map.size.div_ceil(per_cell) as usize;
    let mut out = Vec::with_capacity(cells);
    let mut extents = map.extents.iter().peekable();
    for i in 0..cells as u64 {
        let start = i * per_cell;
        let end = (start + per_cell).min(map.size);
        // Bytes per occupant inside start..end.
        let mut by: BTreeMap<(u8, u64), u64> = BTreeMap::new();
        let mut used = 0;
        while let Some(e) = extents.peek() {
            if e.start >= end {
                break;
            }
            let overlap = e.end().min(end).saturating_sub(e.start.max(start));
            let key = match e.kind {
                ExtentKind::Free => (0, 0),
                ExtentKind::Bo => (1, e.owner),
                ExtentKind::Retired => (2, 0),
                ExtentKind::Unowned | ExtentKind::Other => (3, 0),
            };
            *by.entry(key).or_default() += overlap;
            if key.0 != 0 {
                used += overlap;
            }
            if e.end() > end {
                break;
            }
            extents.next();
        }
        let winner = by
            .iter()
            // Ties go to what is allocated, so a half-used cell shows it.
            .max_by_key(|(k, bytes)| (**bytes, k.0 != 0, std::cmp::Reverse(**k)))
            .map(|(k, _)| *k);
        out.push(match winner {
            None | Some((0, _)) if used == 0 => Cell::Free,
            None | Some((0, _)) => Cell::MostlyFree,
            Some((1, owner)) => Cell::Owner(owner),
            Some((2, _)) => Cell::Retired,
            Some(_) => Cell::Unowned,
        });
    }
    out
}

/// The map as a text picture: `rows` lines of `columns` cells, each line
/// led by its first address and a `v` while inside the CPU-visible window,
/// then one legend line per client.
pub fn picture(map: &OccupancyMap, columns: usize, rows: usize) -> String {
    use std::fmt::Write;
    let palette = Palette::of([map]);
    let cells = coarse(map, columns.max(1) * rows.max(1));
    let per_cell = if cells.is_empty() {
        0
    } else {
        map.size.div_ceil(cells.len() as u64)
    };
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{} occupancy, {} bytes per cell ({}), '.' free, ',' mostly free, 'x' retired, '!' unowned",
        map.domain,
        per_cell,
        crate::size::format_size(per_cell)
    );
    for (row, chunk) in cells.chunks(columns.max(1)).enumerate() {
        let start = row as u64 * columns.max(1) as u64 * per_cell;
        let line: String = chunk.iter().map(|c| c.symbol(&palette)).collect();
        let mark = if start < map.visible_size { 'v' } else { ' ' };
        let _ = writeln!(text, "{start:#012x} {mark} {line}");
    }
    if map.visible_size > 0 {
        let _ = writeln!(
            text,
            "v: rows in the CPU-visible window (first {})",
            crate::size::format_size(map.visible_size)
        );
    }
    for e in palette.entries() {
        let _ = writeln!(
            text,
            "{}: pid {} (owner {}), {} BO{}, {}",
            e.letter,
            e.pid,
            e.owner,
            e.bos,
            if e.bos == 1 { "" } else { "s" },
            crate::size::format_size(e.bytes)
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MapExtent;

    #[test]
    fn colour_codes_split_into_red_green_blue() {
        assert_eq!(COLOURS[0], (0x1f, 0x77, 0xb4));
        assert_eq!(COLOURS[9], (0x00, 0x80, 0x80));
        assert_eq!(COLOURS[11], (0x98, 0xdf, 0x8a));
    }

    fn map(extents: &[(u64, u64, ExtentKind, u64)]) -> OccupancyMap {
        let extents: Vec<MapExtent> = extents
            .iter()
            .map(|&(start, size, kind, owner)| MapExtent {
                start,
                size,
                kind,
                bo: if kind == ExtentKind::Bo { start + 1 } else { 0 },
                owner,
                pid: owner * 100,
                label: String::new(),
            })
            .collect();
        let size = extents.last().map_or(0, |e| e.end());
        OccupancyMap {
            size,
            extents,
            ..OccupancyMap::default()
        }
    }

    #[test]
    fn cells_show_the_main_occupant() {
        use ExtentKind::*;
        let m = map(&[
            (0, 100, Bo, 7),
            (100, 60, Free, 0),
            (160, 10, Bo, 3),
            (170, 30, Free, 0),
            (200, 100, Retired, 0),
            (300, 100, Unowned, 0),
        ]);
        assert_eq!(m.check_tiling(), Ok(()));
        let cells = coarse(&m, 4);
        assert_eq!(
            cells,
            [
                Cell::Owner(7),
                Cell::MostlyFree,
                Cell::Retired,
                Cell::Unowned
            ]
        );
        let p = Palette::of([&m]);
        // Owners by id: 3 is A, 7 is B.
        assert_eq!(
            p.get(3).map(|e| (e.letter, e.pid, e.bytes)),
            Some(('A', 300, 10))
        );
        assert_eq!(p.get(7).map(|e| e.letter), Some('B'));
        let text: String = cells.iter().map(|c| c.symbol(&p)).collect();
        assert_eq!(text, "B,x!");
        // Runs of 40 bytes: a cell half BO, half free shows the BO; a tie
        // between two kinds of allocated memory goes to the lower kind.
        let fine: String = coarse(&m, 10).iter().map(|c| c.symbol(&p)).collect();
        assert_eq!(fine, "BBB.,xxx!!");
    }

    #[test]
    fn more_cells_than_bytes_and_empty_maps() {
        let m = map(&[(0, 3, ExtentKind::Free, 0)]);
        assert_eq!(coarse(&m, 10).len(), 3);
        assert!(coarse(&OccupancyMap::default(), 10).is_empty());
        assert!(coarse(&m, 0).is_empty());
    }
}
