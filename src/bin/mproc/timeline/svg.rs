//! The timeline as one self-contained SVG file: no script, no external
//! font, image or link; hover text through `<title>` elements.

use std::collections::HashMap;
use std::fmt::Write;

use mproc::timeline::{Bar, Lane, Outcome, Role, Timeline};

use super::{end_label, format_ms, lane_name, summary, ticks, Title};

const WIDTH: f64 = 1200.0;
/// Where the time axis starts and ends (labels to the left, end markers
/// to the right).
const PLOT_LEFT: f64 = 330.0;
const PLOT_RIGHT: f64 = WIDTH - 90.0;
const LANE_HEIGHT: f64 = 22.0;
const LANES_TOP: f64 = 84.0;
/// Characters of a lane's name shown before it is cut (the whole name is
/// its hover text).
const NAME_CHARS: usize = 44;
/// Characters of the command line shown in the title (the whole line is
/// the picture's hover text).
const COMMAND_CHARS: usize = 130;

const LIFETIME: &str = "#b8c0cc";
const KILL: &str = "#c62828";
const TIMEOUT: &str = "#6a1b9a";

/// A batch's fill.
fn colour(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Ok => "#43a047",
        Outcome::Panicked => "#fb8c00",
        Outcome::Failed => "#fdd835",
        Outcome::WorkerDied => "#37474f",
        Outcome::Timeout => "#8e24aa",
    }
}

/// Text for an XML attribute or element: `&`, `<`, `>` and both quotes
/// escaped, and characters XML 1.0 forbids (control characters other than
/// tab and newline) replaced.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// `text` in at most `n` characters: its start and its end with `…` in
/// between when it is longer (a job's arguments come last).
fn cut(text: &str, n: usize) -> String {
    let len = text.chars().count();
    if len <= n {
        return text.to_string();
    }
    let head = n.saturating_sub(1) * 2 / 3;
    let tail = n.saturating_sub(1) - head;
    let mut short: String = text.chars().take(head).collect();
    short.push('…');
    short.extend(text.chars().skip(len - tail));
    short
}

/// The picture. Writing into a String cannot fail, so every `write!` here
/// is unwrapped with `let _`.
pub fn render(timeline: &Timeline, lanes: &[Lane], title: &Title) -> String {
    let duration = timeline.duration.max(1_000);
    let x = |ns: u64| PLOT_LEFT + (ns.min(duration) as f64 / duration as f64) * (PLOT_RIGHT - PLOT_LEFT);
    let y = |i: usize| LANES_TOP + i as f64 * LANE_HEIGHT + LANE_HEIGHT / 2.0;
    let lanes_bottom = LANES_TOP + lanes.len() as f64 * LANE_HEIGHT;
    let height = lanes_bottom + 78.0;
    let mut s = String::with_capacity(4096 + lanes.len() * 512);
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, "<title>{}</title>", escape(&title.line()));
    let _ = writeln!(
        s,
        r##"<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#455a64"/></marker></defs>"##
    );
    let _ = writeln!(s, r#"<rect width="{WIDTH}" height="{height}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="22" font-size="15" font-weight="bold">{}</text>"#,
        escape(&cut(&title.command, COMMAND_CHARS))
    );
    let _ = writeln!(
        s,
        r##"<text x="10" y="42" fill="#555">{}  ·  {}</text>"##,
        escape(&title.machine()),
        escape(&summary(timeline, lanes))
    );
    axis(&mut s, duration, lanes_bottom, &x);
    // Stripes first, so every lane's marks sit above every stripe.
    for i in (1..lanes.len()).step_by(2) {
        let _ = writeln!(
            s,
            r##"<rect x="0" y="{}" width="{WIDTH}" height="{LANE_HEIGHT}" fill="#f3f5f8"/>"##,
            y(i) - LANE_HEIGHT / 2.0
        );
    }
    let mut row: HashMap<i32, usize> = HashMap::new();
    for (i, lane) in lanes.iter().enumerate() {
        lane_svg(&mut s, lane, y(i), &x, duration, row.get(&lane.parent.unwrap_or(0)).map(|&p| y(p)));
        row.insert(lane.pid, i);
    }
    legend(&mut s, lanes_bottom + 30.0);
    s.push_str("</svg>\n");
    s
}

/// The time axis above the lanes, with grid lines down through them.
fn axis(s: &mut String, duration: u64, bottom: f64, x: &impl Fn(u64) -> f64) {
    let (step, unit, size, decimals) = ticks(duration, 10);
    let top = LANES_TOP - 6.0;
    let _ = writeln!(s, r##"<text x="10" y="{}" fill="#555">time ({unit})</text>"##, top - 6.0);
    let _ = writeln!(s, r##"<g class="axis" stroke="#dde1e6">"##);
    let mut t = 0;
    while t <= duration {
        let _ = writeln!(s, r#"<line x1="{0:.1}" y1="{top}" x2="{0:.1}" y2="{bottom}"/>"#, x(t));
        t += step;
    }
    s.push_str("</g>\n");
    let mut t = 0;
    while t <= duration {
        let label = format_ms(t as f64 / size, decimals);
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{}" text-anchor="middle" fill="#555">{label}</text>"##,
            x(t),
            top - 6.0
        );
        t += step;
    }
}

/// One lane: its name, its lifetime, its batches, the arrow of its fork,
/// and its marks.
/// `parent_y`: the middle of the forking process's lane, for the arrow.
fn lane_svg(
    s: &mut String,
    lane: &Lane,
    y: f64,
    x: &impl Fn(u64) -> f64,
    duration: u64,
    parent_y: Option<f64>,
) {
    let name = lane_name(lane);
    let _ = writeln!(s, r#"<g class="lane" data-pid="{}" data-role="{}">"#, lane.pid, lane.role.name());
    let weight = if lane.role == Role::Parent { r#" font-weight="bold""# } else { "" };
    let _ = writeln!(
        s,
        r#"<text x="10" y="{:.1}" font-family="monospace"{weight}><title>{}</title>{}</text>"#,
        y + 4.0,
        escape(&name),
        escape(&cut(&name, NAME_CHARS))
    );
    let end = lane.end.unwrap_or(duration);
    let (x0, x1) = (x(lane.start), x(end));
    let _ = writeln!(
        s,
        r#"<rect class="life" x="{x0:.1}" y="{:.1}" width="{:.1}" height="6" fill="{LIFETIME}"><title>{} ms to {}</title></rect>"#,
        y - 3.0,
        (x1 - x0).max(1.0),
        format_ms(lane.start as f64 / 1e6, 3),
        lane.end.map_or("the end".to_string(), |e| format!("{} ms", format_ms(e as f64 / 1e6, 3)))
    );
    for group in groups(&lane.bars, x) {
        let what = match (lane.role, group.batches, group.tasks) {
            (Role::Job, _, _) => "job".to_string(),
            (_, 1, 1) => "batch of 1 task".to_string(),
            (_, 1, n) => format!("batch of {n} tasks"),
            (_, b, n) => format!("{b} batches, {n} tasks"),
        };
        let _ = writeln!(
            s,
            r#"<rect class="batch" x="{:.1}" y="{:.1}" width="{:.1}" height="14" fill="{}" stroke="white" stroke-width="0.5"><title>{what}: {}, {} ms from {} ms</title></rect>"#,
            group.x0,
            y - 7.0,
            (group.x1 - group.x0).max(1.0),
            colour(group.outcome),
            group.outcome.name(),
            format_ms(group.end.saturating_sub(group.start) as f64 / 1e6, 3),
            format_ms(group.start as f64 / 1e6, 3)
        );
    }
    if let Some(py) = parent_y {
        // Down (or up) from the parent's lane to where this one starts.
        let tip = if py < y { y - 7.0 } else { y + 7.0 };
        let _ = writeln!(
            s,
            r##"<line class="fork" x1="{x0:.1}" y1="{py:.1}" x2="{x0:.1}" y2="{tip:.1}" stroke="#455a64" marker-end="url(#arrow)"/>"##
        );
    }
    marks(s, lane, y, x);
    s.push_str("</g>\n");
}

/// A lane's marks: the signals sent to it, its timeout, and its end with
/// the exit status or signal.
fn marks(s: &mut String, lane: &Lane, y: f64, x: &impl Fn(u64) -> f64) {
    for kill in &lane.kills {
        let k = x(kill.at);
        let signal = mproc::status::signal_abbrev(kill.signal);
        let _ = writeln!(
            s,
            r#"<path class="kill" d="M{:.1},{:.1} l8,8 m0,-8 l-8,8" stroke="{KILL}" stroke-width="2"><title>kill {signal} at {} ms</title></path>"#,
            k - 4.0,
            y - 4.0,
            format_ms(kill.at as f64 / 1e6, 3)
        );
    }
    if let Some(at) = lane.timeout {
        let t = x(at);
        let _ = writeln!(
            s,
            r#"<path class="timeout" d="M{t:.1},{:.1} l5,5 l-5,5 l-5,-5 z" fill="{TIMEOUT}"><title>timeout at {} ms</title></path>"#,
            y - 5.0,
            format_ms(at as f64 / 1e6, 3)
        );
    }
    if let Some(end) = lane.end {
        let (x1, label) = (x(end), end_label(lane));
        let failed = !matches!(lane.status, Some(mproc::ExitStatus::Exited(0)));
        let fill = if failed { KILL } else { "#263238" };
        let _ = writeln!(
            s,
            r#"<rect class="exit" x="{:.1}" y="{:.1}" width="3" height="14" fill="{fill}"/><text x="{:.1}" y="{:.1}" font-size="10" fill="{fill}">{}</text>"#,
            x1 - 1.5,
            y - 7.0,
            x1 + 4.0,
            y + 4.0,
            escape(&label)
        );
    }
}

/// Bars of one outcome that overlap or touch on screen, drawn as one: a
/// worker running thousands of tiny batches is one green stretch, not
/// thousands of rectangles on top of each other.
struct Group {
    x0: f64,
    x1: f64,
    start: u64,
    end: u64,
    batches: usize,
    tasks: u64,
    outcome: Outcome,
}

/// `bars` in groups of one outcome whose rectangles overlap or are less
/// than a pixel apart, in the order they start.
fn groups(bars: &[Bar], x: &impl Fn(u64) -> f64) -> Vec<Group> {
    let mut sorted: Vec<&Bar> = bars.iter().collect();
    sorted.sort_by_key(|b| b.start);
    let mut groups: Vec<Group> = Vec::new();
    for bar in sorted {
        let (x0, x1) = (x(bar.start), x(bar.end).max(x(bar.start) + 1.0));
        match groups.last_mut() {
            Some(g) if g.outcome == bar.outcome && x0 <= g.x1 + 1.0 => {
                g.x1 = g.x1.max(x1);
                g.end = g.end.max(bar.end);
                g.batches += 1;
                g.tasks += u64::from(bar.tasks);
            }
            _ => groups.push(Group {
                x0,
                x1,
                start: bar.start,
                end: bar.end,
                batches: 1,
                tasks: u64::from(bar.tasks),
                outcome: bar.outcome,
            }),
        }
    }
    groups
}

/// What each colour and mark means, in two rows below the lanes.
fn legend(s: &mut String, top: f64) {
    let _ = writeln!(s, r#"<g class="legend">"#);
    let _ = writeln!(s, r#"<rect x="10" y="{}" width="24" height="6" fill="{LIFETIME}"/>"#, top - 3.0);
    let _ = writeln!(s, r#"<text x="40" y="{}">process lifetime</text>"#, top + 4.0);
    let _ = writeln!(s, r#"<text x="200" y="{}">pool batch or job:</text>"#, top + 4.0);
    let mut x = 320.0;
    for outcome in Outcome::ALL {
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="24" height="14" fill="{}"/>"#,
            top - 7.0,
            colour(outcome)
        );
        let _ = writeln!(s, r#"<text x="{}" y="{}">{}</text>"#, x + 30.0, top + 4.0, outcome.name());
        x += 125.0;
    }
    let row = top + 26.0;
    let _ = writeln!(
        s,
        r##"<line x1="22" y1="{}" x2="22" y2="{}" stroke="#455a64" marker-end="url(#arrow)"/><text x="40" y="{}">fork (from the parent's lane)</text>"##,
        row - 9.0,
        row + 7.0,
        row + 4.0
    );
    let _ = writeln!(
        s,
        r##"<rect x="230" y="{}" width="3" height="14" fill="#263238"/><text x="240" y="{}">exit: code or signal</text>"##,
        row - 7.0,
        row + 4.0
    );
    let _ = writeln!(
        s,
        r#"<path d="M406,{} l8,8 m0,-8 l-8,8" stroke="{KILL}" stroke-width="2"/><text x="422" y="{}">kill (a signal sent)</text>"#,
        row - 4.0,
        row + 4.0
    );
    let _ = writeln!(
        s,
        r#"<path d="M592,{} l5,5 l-5,5 l-5,-5 z" fill="{TIMEOUT}"/><text x="604" y="{}">timed out (killed for its time)</text>"#,
        row - 5.0,
        row + 4.0
    );
    s.push_str("</g>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_quotes_are_escaped() {
        assert_eq!(escape(r#"<a&"b'>"#), "&lt;a&amp;&quot;b&apos;&gt;");
        assert_eq!(escape("bell\u{7}"), "bell\u{fffd}");
        assert_eq!(escape("plain"), "plain");
    }

    #[test]
    fn bars_that_meet_on_screen_are_one_group_of_one_outcome() {
        let bar = |start, end, outcome| Bar { start, end, tasks: 2, outcome };
        let bars = [
            bar(0, 10, Outcome::Ok),
            bar(5, 20, Outcome::Ok),
            bar(20, 30, Outcome::Panicked),
            bar(30, 40, Outcome::Ok),
            bar(90, 95, Outcome::Ok),
        ];
        // One pixel per nanosecond.
        let summary: Vec<_> = groups(&bars, &|ns| ns as f64)
            .iter()
            .map(|g| (g.start, g.end, g.batches, g.tasks, g.outcome))
            .collect();
        assert_eq!(
            summary,
            vec![
                (0, 20, 2, 4, Outcome::Ok),
                (20, 30, 1, 2, Outcome::Panicked),
                (30, 40, 1, 2, Outcome::Ok),
                (90, 95, 1, 2, Outcome::Ok),
            ]
        );
    }

    #[test]
    fn long_names_are_cut_with_an_ellipsis() {
        assert_eq!(cut("abcdefg", 4), "ab…g");
        assert_eq!(cut("sh -c 'sleep $0' 0.5", 12), "sh -c '… 0.5");
        assert_eq!(cut("abcd", 4), "abcd");
    }
}
