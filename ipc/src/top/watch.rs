//! [`Watcher`]: polls the server once per frame through the client library
//! and turns consecutive polls into what `top` shows ([`Screen`]): rates
//! from counter differences, the last minute of usage, the sorted client
//! table, the connection's fate.
//!
//! It never panics on what the server sends and never gives up on a lost
//! server: a failed poll drops the connection, and every later frame tries
//! to connect again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::model::{ClientInfo, ExtentKind, LeakReport, OccupancyMap, Stats};
use crate::{Device, Error, Result};

/// How far back the usage sparklines reach.
pub const HISTORY: Duration = Duration::from_secs(60);

/// One poll of the server.
#[derive(Clone, Debug)]
pub struct Poll {
    /// When it was taken (monotonic).
    pub at: Instant,
    /// `stats.json`.
    pub stats: Stats,
    /// `clients.json`.
    pub clients: Vec<ClientInfo>,
    /// `health`, trimmed: `ok` or the problems, one per line.
    pub health: String,
    /// `leaks.json`, when it could be read.
    pub leaks: Option<LeakReport>,
    /// The occupancy maps the server has.
    pub maps: Maps,
}

/// The occupancy maps of a poll: each when the server has it (and `top`
/// asked for maps).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Maps {
    /// `vram.map.json`.
    pub vram: Option<OccupancyMap>,
    /// `gtt.map.json`.
    pub gtt: Option<OccupancyMap>,
}

impl Maps {
    /// The maps present, VRAM first.
    pub fn iter(&self) -> impl Iterator<Item = &OccupancyMap> {
        self.vram.iter().chain(self.gtt.iter())
    }
}

impl Poll {
    /// Reads everything `top` shows. Fails only when the core file
    /// (`stats.json`) or the client list cannot be read: the optional files
    /// (leaks, maps) are left out when missing, so `top` also works against
    /// a server without them.
    pub fn take(dev: &Device, with_maps: bool) -> Result<Poll> {
        let stats = dev.stats()?;
        let clients = dev.clients()?;
        let health = dev.health()?.trim_end().to_string();
        let leaks = dev.leaks().ok();
        let map = |domain: &str| {
            if with_maps {
                dev.occupancy_map(domain).ok()
            } else {
                None
            }
        };
        Ok(Poll {
            at: Instant::now(),
            stats,
            clients,
            health,
            leaks,
            maps: Maps {
                vram: map("vram"),
                gtt: map("gtt"),
            },
        })
    }
}

/// The three memory views of `top`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum View {
    /// All of VRAM.
    Vram,
    /// The CPU-visible window of VRAM.
    Visible,
    /// The GTT aperture.
    Gtt,
}

impl View {
    /// In display order.
    pub const ALL: [View; 3] = [View::Vram, View::Visible, View::Gtt];

    /// The heading.
    pub fn title(self) -> &'static str {
        match self {
            View::Vram => "VRAM",
            View::Visible => "CPU-visible VRAM",
            View::Gtt => "GTT",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What the client table is sorted by (descending, ties by owner).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SortKey {
    /// VRAM bytes held.
    Vram,
    /// GTT bytes held.
    Gtt,
    /// Number of BOs held.
    Bos,
    /// Process id (ascending).
    Pid,
}

impl SortKey {
    /// The next key, for the `s` key.
    pub fn next(self) -> SortKey {
        match self {
            SortKey::Vram => SortKey::Gtt,
            SortKey::Gtt => SortKey::Bos,
            SortKey::Bos => SortKey::Pid,
            SortKey::Pid => SortKey::Vram,
        }
    }

    /// The name shown in the table's title.
    pub fn name(self) -> &'static str {
        match self {
            SortKey::Vram => "VRAM",
            SortKey::Gtt => "GTT",
            SortKey::Bos => "BOs",
            SortKey::Pid => "PID",
        }
    }

    /// Sorts `clients` by this key.
    pub fn sort(self, clients: &mut [ClientInfo]) {
        match self {
            SortKey::Vram => clients.sort_by_key(|c| (std::cmp::Reverse(c.vram_bytes), c.owner)),
            SortKey::Gtt => clients.sort_by_key(|c| (std::cmp::Reverse(c.gtt_bytes), c.owner)),
            SortKey::Bos => clients.sort_by_key(|c| (std::cmp::Reverse(c.bos), c.owner)),
            SortKey::Pid => clients.sort_by_key(|c| (c.pid, c.owner)),
        }
    }
}

/// One memory view as shown in a frame, its figures in the order the frame
/// shows them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DomainView {
    /// Manager state (`ready`, `error`, …).
    pub state: String,
    /// Bytes in the view.
    pub total: u64,
    /// Bytes in use.
    pub used: u64,
    /// Bytes free.
    pub free: u64,
    /// The free space's shape, when known (the visible window knows it
    /// only from an occupancy map).
    pub holes: Option<Holes>,
    /// Activity since the previous frame.
    pub activity: Activity,
    /// Bytes in use over the last minute, oldest first, one per frame.
    pub history: Vec<u64>,
}

/// How the free space of a view is cut up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Holes {
    /// Largest free run.
    pub largest_free: u64,
    /// Fragmentation in percent (`100 * (1 - largest_free / free)`).
    pub fragmentation_pct: u64,
}

/// What a view's counters did since the previous frame. Each figure is
/// `None` on the first frame, and for a counter the server did not report
/// (the visible window has no counters of its own).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Activity {
    /// Allocations per second.
    pub allocs_per_s: Option<f64>,
    /// Frees per second.
    pub frees_per_s: Option<f64>,
    /// Failed allocations.
    pub failures: Option<u64>,
    /// Retried allocations.
    pub retries: Option<u64>,
}

/// The connection's state as shown in a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Link {
    /// The last poll succeeded.
    Up,
    /// Not connected yet (before the first poll).
    Connecting,
    /// The server went away (or never answered); we keep trying.
    Lost {
        /// Why the last attempt failed.
        error: String,
        /// How long it has been gone.
        for_secs: u64,
        /// Connection attempts since.
        attempts: u64,
    },
}

/// Everything one frame shows.
#[derive(Clone, Debug)]
pub struct Screen {
    /// Device name and state.
    pub device: String,
    /// Device state.
    pub device_state: String,
    /// The connection.
    pub link: Link,
    /// Whether updates are paused (`p`).
    pub paused: bool,
    /// Refresh interval.
    pub interval: Duration,
    /// VRAM, CPU-visible VRAM, GTT (in [`View::ALL`] order).
    pub views: [DomainView; 3],
    /// Live BOs.
    pub bo_count: u64,
    /// Clients, sorted.
    pub clients: Vec<ClientInfo>,
    /// The sort key.
    pub sort: SortKey,
    /// `ok` or the problems.
    pub health: String,
    /// The last leak audit.
    pub leaks: Option<LeakReport>,
    /// The occupancy maps the server has.
    pub maps: Maps,
    /// Whether any poll succeeded yet (else there is nothing to show but
    /// the link).
    pub has_data: bool,
}

/// How `top` reaches the server: a function that opens a fresh connection,
/// called again whenever the last one failed.
pub type Connector = Box<dyn FnMut() -> Result<Device>>;

/// Polls the server and keeps what consecutive frames need.
pub struct Watcher {
    connect: Connector,
    device: Option<Device>,
    last: Option<Poll>,
    prev: Option<Poll>,
    history: [VecDeque<(Instant, u64)>; 3],
    lost_since: Option<Instant>,
    lost_error: String,
    attempts: u64,
    sort: SortKey,
    paused: bool,
    interval: Duration,
    with_maps: bool,
}

/// Whether an error means the connection is gone (rather than one file
/// being refused).
fn connection_lost(e: &Error) -> bool {
    !matches!(e, Error::Scheme { .. } | Error::Invalid(_))
}

fn rate(now: u64, before: u64, secs: f64) -> Option<f64> {
    if secs <= 0.0 {
        return None;
    }
    Some(now.saturating_sub(before) as f64 / secs)
}

impl Watcher {
    /// A watcher that connects through `connect` and refreshes every
    /// `interval`; `with_maps` also reads the occupancy maps.
    pub fn new(connect: Connector, interval: Duration, with_maps: bool) -> Watcher {
        Watcher {
            connect,
            device: None,
            last: None,
            prev: None,
            history: Default::default(),
            lost_since: None,
            lost_error: String::new(),
            attempts: 0,
            sort: SortKey::Vram,
            paused: false,
            interval,
            with_maps,
        }
    }

    /// Polls once (connecting first if needed). Returns whether the poll
    /// succeeded; a failure is remembered and shown, never returned.
    pub fn poll(&mut self) -> bool {
        if self.device.is_none() {
            self.attempts += 1;
            match (self.connect)() {
                Ok(dev) => self.device = Some(dev),
                Err(e) => {
                    self.lose(e.to_string());
                    return false;
                }
            }
        }
        let Some(dev) = self.device.as_ref() else {
            return false;
        };
        match Poll::take(dev, self.with_maps) {
            Ok(poll) => {
                self.accept(poll);
                true
            }
            Err(e) => {
                if connection_lost(&e) {
                    self.device = None;
                }
                self.lose(e.to_string());
                false
            }
        }
    }

    fn lose(&mut self, error: String) {
        self.lost_since.get_or_insert_with(Instant::now);
        self.lost_error = error;
    }

    /// Takes a poll as the newest frame's data.
    pub fn accept(&mut self, poll: Poll) {
        self.lost_since = None;
        self.lost_error.clear();
        self.attempts = 0;
        let used = [
            poll.stats.vram.used,
            poll.stats.vram.visible_used,
            poll.stats.gtt.used,
        ];
        for (h, used) in self.history.iter_mut().zip(used) {
            h.push_back((poll.at, used));
            while h
                .front()
                .is_some_and(|(t, _)| poll.at.duration_since(*t) > HISTORY)
            {
                h.pop_front();
            }
        }
        self.prev = self.last.replace(poll);
    }

    /// Changes the sort key to the next one (`s`).
    pub fn cycle_sort(&mut self) {
        self.sort = self.sort.next();
    }

    /// Pauses or resumes updates (`p`).
    pub fn toggle_pause(&mut self) {
        self.paused = !self.paused;
    }

    /// Whether updates are paused.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// The current sort key.
    pub fn sort(&self) -> SortKey {
        self.sort
    }

    fn link(&self) -> Link {
        match self.lost_since {
            Some(since) => Link::Lost {
                error: self.lost_error.clone(),
                for_secs: since.elapsed().as_secs(),
                attempts: self.attempts,
            },
            None if self.last.is_none() => Link::Connecting,
            None => Link::Up,
        }
    }

    fn domain_view(&self, view: View, last: &Poll) -> DomainView {
        let s = &last.stats;
        let elapsed = self
            .prev
            .as_ref()
            .map(|p| last.at.duration_since(p.at).as_secs_f64());
        let counter = |poll: &Poll, name: &str| poll.stats.counters.get(name).copied();
        let delta = |name: &str| -> Option<u64> {
            let prev = self.prev.as_ref()?;
            Some(counter(last, name)?.saturating_sub(counter(prev, name)?))
        };
        let per_s = |name: &str| -> Option<f64> {
            let prev = self.prev.as_ref()?;
            rate(counter(last, name)?, counter(prev, name)?, elapsed?)
        };
        let history = self.history[view.index()].iter().map(|(_, v)| *v).collect();
        match view {
            View::Vram | View::Gtt => {
                let (p, name) = if view == View::Vram {
                    (&s.vram, "vram")
                } else {
                    (&s.gtt, "gtt")
                };
                DomainView {
                    total: p.total,
                    used: p.used,
                    free: p.free,
                    holes: Some(Holes {
                        largest_free: p.largest_free,
                        fragmentation_pct: p.fragmentation_pct,
                    }),
                    activity: Activity {
                        allocs_per_s: per_s(&format!("{name}_allocs")),
                        frees_per_s: per_s(&format!("{name}_frees")),
                        failures: delta(&format!("{name}_failures")),
                        retries: delta(&format!("{name}_retries")),
                    },
                    history,
                    state: p.state.clone(),
                }
            }
            View::Visible => {
                let total = s.vram.visible_total;
                let free = total.saturating_sub(s.vram.visible_used);
                // The window's holes come from the map: the allocator keeps
                // no per-window largest-free figure.
                let holes = last.maps.vram.as_ref().map(|m| {
                    let largest_free = m.largest_free_in(0..total);
                    let free_in_map = m.bytes_in(ExtentKind::Free, 0..total);
                    let fragmentation_pct = if free_in_map == 0 {
                        0
                    } else {
                        100 - (largest_free as u128 * 100 / free_in_map as u128) as u64
                    };
                    Holes {
                        largest_free,
                        fragmentation_pct,
                    }
                });
                DomainView {
                    total,
                    used: s.vram.visible_used,
                    free,
                    holes,
                    activity: Activity::default(),
                    history,
                    state: s.vram.state.clone(),
                }
            }
        }
    }

    /// What the next frame shows.
    pub fn screen(&self) -> Screen {
        let link = self.link();
        let Some(last) = self.last.as_ref() else {
            return Screen {
                device: String::new(),
                device_state: String::new(),
                link,
                paused: self.paused,
                interval: self.interval,
                views: Default::default(),
                bo_count: 0,
                clients: Vec::new(),
                sort: self.sort,
                health: String::new(),
                leaks: None,
                maps: Maps::default(),
                has_data: false,
            };
        };
        // `top`'s own connection is a client too while it reads; it holds
        // nothing and is left out.
        let me = u64::from(std::process::id());
        let mut clients: Vec<ClientInfo> = last
            .clients
            .iter()
            .filter(|c| !(c.pid == me && c.bos == 0))
            .cloned()
            .collect();
        self.sort.sort(&mut clients);
        Screen {
            device: last.stats.device.name.clone(),
            device_state: last.stats.device.state.clone(),
            link,
            paused: self.paused,
            interval: self.interval,
            views: View::ALL.map(|v| self.domain_view(v, last)),
            bo_count: last.stats.bos.count,
            clients,
            sort: self.sort,
            health: last.health.clone(),
            leaks: last.leaks.clone(),
            maps: last.maps.clone(),
            has_data: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PoolStats, Stats};

    fn poll(at: Instant, vram_used: u64, allocs: u64, failures: u64) -> Poll {
        let mut stats = Stats::default();
        stats.device.name = "sim".into();
        stats.vram = PoolStats {
            state: "ready".into(),
            total: 1000,
            used: vram_used,
            free: 1000 - vram_used,
            largest_free: 1000 - vram_used,
            visible_total: 400,
            visible_used: vram_used / 2,
            ..PoolStats::default()
        };
        stats.counters.insert("vram_allocs".into(), allocs);
        stats.counters.insert("vram_frees".into(), allocs / 2);
        stats.counters.insert("vram_failures".into(), failures);
        stats.counters.insert("vram_retries".into(), 0);
        Poll {
            at,
            stats,
            clients: vec![
                ClientInfo {
                    owner: 1,
                    pid: 30,
                    vram_bytes: 10,
                    gtt_bytes: 500,
                    bos: 1,
                    ..ClientInfo::default()
                },
                ClientInfo {
                    owner: 2,
                    pid: 20,
                    vram_bytes: 300,
                    gtt_bytes: 0,
                    bos: 7,
                    ..ClientInfo::default()
                },
            ],
            health: "ok".into(),
            leaks: None,
            maps: Maps::default(),
        }
    }

    fn offline() -> Connector {
        Box::new(|| {
            Err(Error::Invalid(
                "no server in this test (the watcher is fed polls)".into(),
            ))
        })
    }

    #[test]
    fn rates_and_deltas_come_from_consecutive_polls() {
        let mut w = Watcher::new(offline(), Duration::from_secs(1), false);
        let t0 = Instant::now();
        w.accept(poll(t0, 100, 10, 1));
        let first = w.screen();
        assert_eq!(first.link, Link::Up);
        assert_eq!(
            first.views[0].activity.allocs_per_s, None,
            "no rate on frame one"
        );
        w.accept(poll(t0 + Duration::from_secs(2), 300, 30, 4));
        let s = w.screen();
        let vram = &s.views[0];
        assert_eq!(vram.used, 300);
        assert_eq!(vram.activity.allocs_per_s, Some(10.0));
        assert_eq!(vram.activity.frees_per_s, Some(5.0));
        assert_eq!(vram.activity.failures, Some(3));
        assert_eq!(vram.activity.retries, Some(0));
        assert_eq!(vram.history, [100, 300]);
        let visible = &s.views[1];
        assert_eq!((visible.total, visible.used, visible.free), (400, 150, 250));
        assert_eq!(
            visible.activity.allocs_per_s, None,
            "the window has no counters"
        );
        assert_eq!(
            s.views[2].activity.allocs_per_s, None,
            "no GTT counters were given"
        );
    }

    #[test]
    fn history_keeps_only_the_last_minute() {
        let mut w = Watcher::new(offline(), Duration::from_secs(1), false);
        let t0 = Instant::now();
        for i in 0..90u64 {
            w.accept(poll(t0 + Duration::from_secs(i), i, i, 0));
        }
        let h = &w.screen().views[0].history;
        assert_eq!(h.len(), 61, "60 s back plus the current frame");
        assert_eq!(h.first(), Some(&29));
        assert_eq!(h.last(), Some(&89));
    }

    #[test]
    fn sort_cycles_through_the_keys() {
        let mut w = Watcher::new(offline(), Duration::from_secs(1), false);
        w.accept(poll(Instant::now(), 0, 0, 0));
        let pids = |w: &Watcher| w.screen().clients.iter().map(|c| c.pid).collect::<Vec<_>>();
        assert_eq!(w.sort(), SortKey::Vram);
        assert_eq!(pids(&w), [20, 30]);
        w.cycle_sort();
        assert_eq!((w.sort(), pids(&w)), (SortKey::Gtt, vec![30, 20]));
        w.cycle_sort();
        assert_eq!((w.sort(), pids(&w)), (SortKey::Bos, vec![20, 30]));
        w.cycle_sort();
        assert_eq!((w.sort(), pids(&w)), (SortKey::Pid, vec![20, 30]));
        w.cycle_sort();
        assert_eq!(w.sort(), SortKey::Vram);
    }

    #[test]
    fn a_failing_connection_is_shown_and_retried() {
        let mut w = Watcher::new(offline(), Duration::from_secs(1), false);
        assert_eq!(w.screen().link, Link::Connecting);
        assert!(!w.poll());
        assert!(!w.poll());
        match w.screen().link {
            Link::Lost {
                error, attempts, ..
            } => {
                assert_eq!(attempts, 2);
                assert!(error.contains("no server"), "{error}");
            }
            other => panic!("expected a lost link, got {other:?}"),
        }
        // Data from before the loss stays on screen.
        w.accept(poll(Instant::now(), 5, 0, 0));
        assert_eq!(w.screen().link, Link::Up);
        assert!(w.screen().has_data);
    }
}
