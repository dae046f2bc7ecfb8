//! `--bar` and `--eta`: one status line on a terminal, redrawn in place.
//!
//! The line is drawn only when stderr is a terminal (the caller checks),
//! at most ten times a second, so it costs nothing measurable however
//! fast jobs complete. It is erased before job output is printed (the next
//! redraw puts it back), and drawn a last time, with a newline, at the end.

use std::time::{Duration, Instant};

/// The shortest time between two redraws.
const REDRAW_EVERY: Duration = Duration::from_millis(100);
/// Cells in the bar.
const BAR_WIDTH: u64 = 20;
/// Carriage return and "erase to end of line": the line is drawn over.
const ERASE: &[u8] = b"\r\x1b[K";

/// What the line shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Jobs completed (skipped ones included, for the share).
    pub done: u64,
    /// Jobs running now.
    pub running: u64,
    /// All the jobs, once known.
    pub total: Option<u64>,
}

/// The status line's state.
#[derive(Debug)]
pub(crate) struct Progress {
    bar: bool,
    eta: bool,
    start: Instant,
    last_draw: Option<Instant>,
    /// A change could not be drawn yet (too soon after the last redraw):
    /// it is due a tenth of a second after it.
    pending: bool,
    /// The line is on the screen (and must be erased before other output).
    visible: bool,
}

impl Progress {
    pub(crate) fn new(bar: bool, eta: bool, start: Instant) -> Progress {
        Progress { bar, eta, start, last_draw: None, pending: false, visible: false }
    }

    /// The bytes that redraw the line, unless it was drawn less than a
    /// tenth of a second ago (`force`: draw anyway, the final state).
    pub(crate) fn redraw(&mut self, counts: Counts, now: Instant, force: bool) -> Option<Vec<u8>> {
        if !force && self.last_draw.is_some_and(|at| now.duration_since(at) < REDRAW_EVERY) {
            self.pending = true;
            return None;
        }
        self.last_draw = Some(now);
        self.pending = false;
        self.visible = true;
        let mut out = ERASE.to_vec();
        out.extend_from_slice(self.line(counts, now.duration_since(self.start)).as_bytes());
        Some(out)
    }

    /// The bytes that erase the line, if it is on the screen.
    pub(crate) fn erase(&mut self) -> Option<&'static [u8]> {
        std::mem::replace(&mut self.visible, false).then_some(ERASE)
    }

    /// When the next redraw is due (so a wait can end then): a change not
    /// drawn yet a tenth of a second after the last redraw, else once a
    /// second, for the time left.
    pub(crate) fn next_tick(&self, now: Instant) -> Duration {
        let every = if self.pending { REDRAW_EVERY } else { Duration::from_secs(1) };
        match self.last_draw {
            Some(at) => (at + every).saturating_duration_since(now),
            None => Duration::ZERO,
        }
    }

    fn line(&self, counts: Counts, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64();
        let avg = (counts.done > 0).then(|| secs / counts.done as f64);
        let left = counts.total.map(|t| t.saturating_sub(counts.done));
        let eta = match (avg, left) {
            (Some(avg), Some(left)) => Some(Duration::from_secs_f64(avg * left as f64)),
            (None, Some(0)) => Some(Duration::ZERO),
            _ => None,
        };
        let mut parts = Vec::new();
        if self.bar {
            parts.push(match counts.total {
                Some(total) => {
                    let share = if total == 0 { 1.0 } else { counts.done.min(total) as f64 / total as f64 };
                    let filled = (share * BAR_WIDTH as f64).floor() as u64;
                    let cells: String = (0..BAR_WIDTH).map(|i| if i < filled { '#' } else { '.' }).collect();
                    let eta = eta.map_or("?".to_string(), clock);
                    format!("[{cells}] {}/{total} {:3.0}% ETA {eta}", counts.done, share * 100.0)
                }
                // Streaming input: the total is not known yet.
                None => {
                    let rate = if secs > 0.0 { counts.done as f64 / secs } else { 0.0 };
                    format!("{} done, {} running, {rate:.1}/s", counts.done, counts.running)
                }
            });
        }
        if self.eta {
            let eta = eta.map_or("?".to_string(), |d| format!("{}s", d.as_secs()));
            let left = left.map_or("?".to_string(), |l| l.to_string());
            let avg = avg.unwrap_or(0.0);
            parts.push(format!("ETA: {eta} Left: {left} AVG: {avg:.2}s"));
        }
        parts.join("  ")
    }
}

/// `1:05`, `1:02:03`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    match s / 3600 {
        0 => format!("{}:{:02}", s / 60, s % 60),
        h => format!("{h}:{:02}:{:02}", s / 60 % 60, s % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drawn(progress: &mut Progress, counts: Counts, after: Duration, force: bool) -> Option<String> {
        let now = progress.start + after;
        progress.redraw(counts, now, force).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn the_bar_shows_done_total_share_and_eta() {
        let mut p = Progress::new(true, false, Instant::now());
        let counts = Counts { done: 5, running: 2, total: Some(20) };
        // 5 done in 10 s: 2 s each, 15 left: 30 s.
        let line = drawn(&mut p, counts, Duration::from_secs(10), false).unwrap();
        assert_eq!(line, "\r\x1b[K[#####...............] 5/20  25% ETA 0:30");
    }

    #[test]
    fn an_unknown_total_shows_the_count_and_rate() {
        let mut p = Progress::new(true, true, Instant::now());
        let line =
            drawn(&mut p, Counts { done: 30, running: 4, total: None }, Duration::from_secs(10), false);
        assert_eq!(line.unwrap(), "\r\x1b[K30 done, 4 running, 3.0/s  ETA: ? Left: ? AVG: 0.33s");
    }

    #[test]
    fn eta_alone_is_gnu_parallels_line() {
        let mut p = Progress::new(false, true, Instant::now());
        let line =
            drawn(&mut p, Counts { done: 4, running: 1, total: Some(10) }, Duration::from_secs(2), false);
        assert_eq!(line.unwrap(), "\r\x1b[KETA: 3s Left: 6 AVG: 0.50s");
    }

    #[test]
    fn redraws_are_at_most_ten_a_second_unless_forced() {
        let mut p = Progress::new(true, false, Instant::now());
        let counts = Counts { done: 1, running: 1, total: Some(3) };
        assert!(drawn(&mut p, counts, Duration::from_millis(0), false).is_some());
        assert!(drawn(&mut p, counts, Duration::from_millis(50), false).is_none());
        // The change held back is due 100 ms after the last redraw.
        assert_eq!(p.next_tick(p.start + Duration::from_millis(50)), Duration::from_millis(50));
        assert!(drawn(&mut p, counts, Duration::from_millis(60), true).is_some());
        assert!(drawn(&mut p, counts, Duration::from_millis(200), false).is_some());
        assert_eq!(p.erase(), Some(ERASE));
        assert_eq!(p.erase(), None);
    }

    #[test]
    fn clocks_read_as_minutes_or_hours() {
        assert_eq!(clock(Duration::from_secs(65)), "1:05");
        assert_eq!(clock(Duration::from_secs(3723)), "1:02:03");
    }
}
