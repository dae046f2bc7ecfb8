//! The timeline as text: the same lanes, one line each, drawn with Unicode
//! block characters across the width of a terminal.

use mproc::timeline::{Lane, Outcome, Timeline};

use super::{end_label, format_ms, lane_name, summary, Title};

/// Columns for a lane's name, at most (a third of the width at most).
const NAME_COLUMNS: usize = 28;
/// Columns for how a lane ended (`exit 0`, `SIGKILL`).
const END_COLUMNS: usize = 8;
/// Fewest columns of time drawn, however narrow the terminal.
const MIN_CELLS: usize = 10;

const LIFETIME: char = '░';
const KILL: char = '╳';
const TIMEOUT: char = '◆';

/// A batch's character.
fn block(outcome: Outcome) -> char {
    match outcome {
        Outcome::Ok => '█',
        Outcome::Panicked => '▓',
        Outcome::Failed => '▒',
        Outcome::WorkerDied => '▚',
        Outcome::Timeout => '▞',
    }
}

/// The first `n` characters of `text`, padded with spaces to `n`.
fn fit(text: &str, n: usize) -> String {
    let mut out: String = text.chars().take(n).collect();
    let len = out.chars().count();
    out.extend(std::iter::repeat_n(' ', n - len));
    out
}

/// The picture, at most `width` columns wide (wider only when `width` is
/// too small for a useful picture).
pub fn render(timeline: &Timeline, lanes: &[Lane], title: &Title, width: usize) -> String {
    let name_columns = NAME_COLUMNS.min(width / 3);
    // "name │cells│ end"
    let cells = width.saturating_sub(name_columns + END_COLUMNS + 3).max(MIN_CELLS);
    let duration = timeline.duration.max(1_000);
    // The column of instant `ns`.
    let col = |ns: u64| ((u128::from(ns.min(duration)) * cells as u128) / u128::from(duration)) as usize;
    let mut out = String::new();
    let width = width.max(name_columns + cells + END_COLUMNS + 3);
    for line in wrap(&title.line(), " ", width).into_iter().chain(wrap(&summary(timeline, lanes), " ", width))
    {
        out.push_str(&line);
        out.push('\n');
    }
    let end = format!("{} ms", format_ms(duration as f64 / 1e6, 3));
    let axis = format!("0 ms{}{end}", " ".repeat(cells.saturating_sub(4 + end.chars().count())));
    out.push_str(&format!("{} {}\n", fit("", name_columns), axis));
    for lane in lanes {
        let mut row = vec![' '; cells];
        let (first, last) = (col(lane.start), col(lane.end.unwrap_or(duration)).min(cells - 1));
        for cell in row.iter_mut().take(last + 1).skip(first.min(last)) {
            *cell = LIFETIME;
        }
        // The worst outcome of the batches in a cell wins it.
        let mut worst: Vec<Option<Outcome>> = vec![None; cells];
        for bar in &lane.bars {
            let (b0, b1) = (col(bar.start).min(cells - 1), col(bar.end).min(cells - 1));
            for w in &mut worst[b0..=b1.max(b0)] {
                *w = Some(w.map_or(bar.outcome, |o| o.max(bar.outcome)));
            }
        }
        for (cell, w) in row.iter_mut().zip(&worst) {
            if let Some(outcome) = w {
                *cell = block(*outcome);
            }
        }
        for kill in &lane.kills {
            row[col(kill.at).min(cells - 1)] = KILL;
        }
        if let Some(at) = lane.timeout {
            row[col(at).min(cells - 1)] = TIMEOUT;
        }
        let row: String = row.into_iter().collect();
        let line = format!("{} │{row}│ {}", fit(&lane_name(lane), name_columns), end_label(lane));
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let mut legend = format!("{LIFETIME} lifetime");
    for outcome in Outcome::ALL {
        legend.push_str(&format!("  {} {}", block(outcome), outcome.name()));
    }
    legend.push_str(&format!("  {KILL} kill  {TIMEOUT} timed out"));
    for line in wrap(&legend, "  ", width) {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// `text` in lines of at most `width` characters, broken where `gap`
/// separates words (a single space), or entries (a double space, in the
/// legend). A word longer than `width` is cut.
fn wrap(text: &str, gap: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split(gap) {
        let Some(line) = lines.last_mut() else { break };
        let len = line.chars().count();
        if len > 0 && len + gap.len() + word.chars().count() > width {
            lines.push(word.chars().take(width).collect());
        } else {
            if len > 0 {
                line.push_str(gap);
            }
            line.extend(word.chars().take(width - len.min(width)));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use mproc::timeline::{Bar, Role};

    fn lane(pid: i32, start: u64, end: Option<u64>, bars: Vec<Bar>) -> Lane {
        Lane {
            pid,
            role: if pid == 1 { Role::Parent } else { Role::Worker },
            label: String::new(),
            parent: None,
            start,
            end,
            status: end.map(|_| mproc::ExitStatus::Exited(0)),
            kills: Vec::new(),
            timeout: None,
            bars,
        }
    }

    #[test]
    fn lanes_fill_the_width_and_batches_show_their_outcome() {
        let timeline = Timeline { owner: 1, duration: 100_000_000, events: Vec::new(), dropped: 0 };
        let bars = vec![
            Bar { start: 0, end: 40_000_000, tasks: 3, outcome: Outcome::Ok },
            Bar { start: 60_000_000, end: 70_000_000, tasks: 1, outcome: Outcome::Panicked },
        ];
        let lanes = vec![lane(1, 0, None, Vec::new()), lane(2, 0, Some(80_000_000), bars)];
        let title = Title { command: "mproc cube".into(), date: "2026-11-30 07:00:00 UTC".into(), cpus: 2 };
        let text = render(&timeline, &lanes, &title, 80);
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "{line:?} is wider than 80 columns");
        }
        let worker = text.lines().find(|l| l.starts_with("2 worker")).expect("a worker lane");
        assert!(worker.contains('█') && worker.contains('▓') && worker.ends_with("│ exit 0"), "{worker}");
        let parent = text.lines().find(|l| l.starts_with("1 parent")).expect("the parent's lane");
        let cells = parent.split('│').nth(1).expect("the parent's cells");
        assert!(!cells.is_empty() && cells.chars().all(|c| c == LIFETIME), "{parent}");
    }

    #[test]
    fn legends_wrap_between_entries() {
        assert_eq!(wrap("a b  c d  e", "  ", 7), vec!["a b", "c d  e"]);
        assert_eq!(wrap("one two three", " ", 8), vec!["one two", "three"]);
    }
}
