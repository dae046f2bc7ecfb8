//! Cutting a job's output into what is written: `--tag` puts the job's
//! inputs before each line, and `--line-buffer` writes whole lines only,
//! holding back an unfinished one until its newline (or the job's end).

/// An unfinished line held back is written anyway past this length, so a
/// job that never writes a newline cannot grow the runner without bound.
pub(crate) const LONGEST_HELD_LINE: usize = 1 << 20;

/// One output stream of one job, between writes.
#[derive(Debug, Default)]
pub(crate) struct LineState {
    /// The last byte written was not a newline: the next one continues a
    /// line (and gets no tag).
    mid_line: bool,
    /// `--line-buffer`: the unfinished line, not yet written or tagged.
    held: Vec<u8>,
}

impl LineState {
    /// Appends to `out` what may be written of `data` now: everything, or
    /// with `whole_lines` everything up to its last newline (the rest is
    /// held). Each line that starts gets `tag` (empty: no tag).
    pub(crate) fn cut(&mut self, tag: &[u8], whole_lines: bool, data: &[u8], out: &mut Vec<u8>) {
        let ready = match whole_lines {
            false => data.len(),
            true => data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1),
        };
        if ready > 0 || self.held.len() + data.len() > LONGEST_HELD_LINE {
            let ready = if ready > 0 { ready } else { data.len() };
            let held = std::mem::take(&mut self.held);
            self.tag_into(tag, &held, out);
            self.tag_into(tag, &data[..ready], out);
            self.held.extend_from_slice(&data[ready..]);
        } else {
            self.held.extend_from_slice(data);
        }
    }

    /// Appends the held unfinished line, if any, to `out` (the job ended).
    pub(crate) fn finish(&mut self, tag: &[u8], out: &mut Vec<u8>) {
        let held = std::mem::take(&mut self.held);
        self.tag_into(tag, &held, out);
    }

    /// Whether an unfinished line is held back.
    pub(crate) fn holds_a_line(&self) -> bool {
        !self.held.is_empty()
    }

    /// Whether bytes can go out as they are: no tag, nothing held.
    pub(crate) fn passes_through(&self, tag: &[u8], whole_lines: bool) -> bool {
        tag.is_empty() && !whole_lines && self.held.is_empty()
    }

    fn tag_into(&mut self, tag: &[u8], data: &[u8], out: &mut Vec<u8>) {
        if data.is_empty() {
            return;
        }
        if tag.is_empty() {
            out.extend_from_slice(data);
        } else {
            for line in data.split_inclusive(|&b| b == b'\n') {
                if !self.mid_line {
                    out.extend_from_slice(tag);
                }
                out.extend_from_slice(line);
                self.mid_line = !line.ends_with(b"\n");
            }
            return;
        }
        self.mid_line = !data.ends_with(b"\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut_all(tag: &str, whole_lines: bool, pieces: &[&str]) -> Vec<String> {
        let mut state = LineState::default();
        let mut writes: Vec<String> = pieces
            .iter()
            .map(|p| {
                let mut out = Vec::new();
                state.cut(tag.as_bytes(), whole_lines, p.as_bytes(), &mut out);
                String::from_utf8(out).unwrap()
            })
            .collect();
        let mut out = Vec::new();
        state.finish(tag.as_bytes(), &mut out);
        writes.push(String::from_utf8(out).unwrap());
        writes
    }

    #[test]
    fn tags_start_each_line_across_writes() {
        assert_eq!(cut_all("t\t", false, &["a\nb", "c\n\nd"]), ["t\ta\nt\tb", "c\nt\t\nt\td", ""]);
    }

    #[test]
    fn whole_lines_hold_the_unfinished_one() {
        assert_eq!(cut_all("", true, &["ab", "c\nd", "e", "\nf"]), ["", "abc\n", "", "de\n", "f"]);
        assert_eq!(cut_all("x ", true, &["ab", "c\nd"]), ["", "x abc\n", "x d"]);
    }

    #[test]
    fn a_held_line_too_long_is_written_anyway() {
        let long = "y".repeat(LONGEST_HELD_LINE + 1);
        let writes = cut_all("", true, &["a", &long]);
        assert_eq!(writes[1].len(), LONGEST_HELD_LINE + 2);
    }
}
