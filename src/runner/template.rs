//! The command template: `COMMAND [ARGS...]` with replacement strings, and
//! the shell quoting used to show a command (`--dry-run`, the job log).

use crate::error::{Error, Result};

/// A replacement string, with GNU parallel's meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sub {
    /// `{}`: the input.
    Whole,
    /// `{.}`: the input without its extension (`dir/a.tar.gz` → `dir/a.tar`).
    NoExt,
    /// `{/}`: the input's basename (`dir/a.txt` → `a.txt`).
    Base,
    /// `{//}`: the input's directory, as dirname(1) gives it (`dir/a.txt` →
    /// `dir`; `a.txt` → `.`; `/a` → `/`; `a/b/` → `a`).
    Dir,
    /// `{/.}`: the basename without its extension (`dir/a.txt` → `a`).
    BaseNoExt,
}

/// The path forms after `{` (or `{N`), longest first, so `{//}` is not
/// read as `{/}` followed by `/}`.
const SUBS: [(&[u8], Sub); 5] = [
    (b"//}", Sub::Dir),
    (b"/.}", Sub::BaseNoExt),
    (b"/}", Sub::Base),
    (b".}", Sub::NoExt),
    (b"}", Sub::Whole),
];

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Literal(Vec<u8>),
    /// `{}`-style: every source's value, joined by spaces; `{N}`-style:
    /// source `N` (from 1).
    Input {
        source: Option<usize>,
        sub: Sub,
    },
    /// `{#}`: the job's sequence number.
    Seq,
    /// `{%}`: the job's slot, from 1 to the number of jobs at once.
    Slot,
}

/// What one job's command line is built from.
#[derive(Clone, Copy, Debug)]
pub struct JobArgs<'a> {
    /// One value per input source.
    pub values: &'a [Vec<u8>],
    /// The job's sequence number, from 1.
    pub seq: u64,
    /// The job's slot, from 1.
    pub slot: usize,
}

/// A command line with replacement strings, expanded once per input.
///
/// Replacement strings may appear anywhere inside any word, the command
/// name included: `{}` (the input), `{.}` (without extension), `{/}`
/// (basename), `{//}` (directory) and `{/.}` (basename without extension);
/// `{1}`, `{2.}`, `{3/}`, ... the same for one input source; `{#}` the job's
/// number and `{%}` its slot. When no word holds a replacement string, the
/// inputs are appended as last arguments, as `xargs -n 1` and GNU parallel
/// do.
#[derive(Clone, Debug)]
pub struct Template {
    words: Vec<Vec<Piece>>,
    append_input: bool,
}

impl Template {
    /// Parses `COMMAND [ARGS...]`. Fails on an empty command line.
    pub fn new(words: Vec<Vec<u8>>) -> Result<Template> {
        if words.is_empty() {
            return Err(Error::InvalidArgument("empty command".into()));
        }
        let words: Vec<Vec<Piece>> = words.iter().map(|w| parse_word(w)).collect();
        // As in GNU parallel, any replacement string, `{#}` too, means the
        // command says where its inputs go.
        let append_input = words.iter().flatten().all(|p| matches!(p, Piece::Literal(_)));
        Ok(Template { words, append_input })
    }

    /// Whether a word holds `{%}` (the job's slot).
    pub fn uses_slot(&self) -> bool {
        self.words.iter().flatten().any(|p| matches!(p, Piece::Slot))
    }

    /// The highest input source a `{N}` string names (0 when none does).
    pub fn max_source(&self) -> usize {
        let source = |p: &Piece| match p {
            Piece::Input { source: Some(n), .. } => *n,
            _ => 0,
        };
        self.words.iter().flatten().map(source).max().unwrap_or(0)
    }

    /// The command line for one job.
    pub fn expand(&self, job: JobArgs<'_>) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = self
            .words
            .iter()
            .map(|pieces| {
                let mut word = Vec::new();
                for piece in pieces {
                    match piece {
                        Piece::Literal(bytes) => word.extend_from_slice(bytes),
                        Piece::Input { source: Some(n), sub } => {
                            let value = job.values.get(n - 1).map_or(&[][..], Vec::as_slice);
                            word.extend_from_slice(&substitute(*sub, value));
                        }
                        Piece::Input { source: None, sub } => {
                            for (i, value) in job.values.iter().enumerate() {
                                if i > 0 {
                                    word.push(b' ');
                                }
                                word.extend_from_slice(&substitute(*sub, value));
                            }
                        }
                        Piece::Seq => word.extend_from_slice(job.seq.to_string().as_bytes()),
                        Piece::Slot => word.extend_from_slice(job.slot.to_string().as_bytes()),
                    }
                }
                word
            })
            .collect();
        if self.append_input {
            out.extend(job.values.iter().cloned());
        }
        out
    }
}

/// The replacement string at the start of `rest` (which starts with `{`),
/// and its length.
fn parse_replacement(rest: &[u8]) -> Option<(Piece, usize)> {
    match rest.get(..3) {
        Some(b"{#}") => return Some((Piece::Seq, 3)),
        Some(b"{%}") => return Some((Piece::Slot, 3)),
        _ => {}
    }
    let digits = rest[1..].iter().take_while(|b| b.is_ascii_digit()).count();
    let source = match digits {
        0 => None,
        // `{0}` and absurdly long numbers are not replacement strings.
        _ => match std::str::from_utf8(&rest[1..1 + digits]).ok()?.parse::<usize>() {
            Ok(n) if n >= 1 && digits <= 6 => Some(n),
            _ => return None,
        },
    };
    let after = &rest[1 + digits..];
    SUBS.iter()
        .find(|(form, _)| after.starts_with(form))
        .map(|&(form, sub)| (Piece::Input { source, sub }, 1 + digits + form.len()))
}

fn parse_word(word: &[u8]) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut literal = Vec::new();
    let mut i = 0;
    while i < word.len() {
        if word[i] == b'{' {
            if let Some((piece, len)) = parse_replacement(&word[i..]) {
                if !literal.is_empty() {
                    pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                }
                pieces.push(piece);
                i += len;
                continue;
            }
        }
        literal.push(word[i]);
        i += 1;
    }
    if !literal.is_empty() || pieces.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    pieces
}

fn substitute(sub: Sub, input: &[u8]) -> Vec<u8> {
    match sub {
        Sub::Whole => input.to_vec(),
        Sub::NoExt => strip_extension(input).to_vec(),
        Sub::Base => basename(input).to_vec(),
        Sub::Dir => dirname(input).to_vec(),
        Sub::BaseNoExt => strip_extension(basename(input)).to_vec(),
    }
}

/// dirname(1), as GNU parallel's `{//}` (Perl's `File::Basename::dirname`):
/// trailing slashes do not count (`a/b/` → `a`), repeated ones collapse
/// (`a//b` → `a`), the root stays (`/abs`, `/` → `/`), no slash gives `.`.
fn dirname(input: &[u8]) -> &[u8] {
    let trim_slashes = |s: &[u8]| -> usize { s.iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1) };
    if !input.is_empty() && input.iter().all(|&b| b == b'/') {
        return b"/";
    }
    let path = &input[..trim_slashes(input)];
    let Some(last_slash) = path.iter().rposition(|&b| b == b'/') else { return b"." };
    match trim_slashes(&path[..last_slash]) {
        0 => b"/",
        end => &path[..end],
    }
}

/// GNU parallel's `s:^.*/::`.
fn basename(input: &[u8]) -> &[u8] {
    match input.iter().rposition(|&b| b == b'/') {
        Some(slash) => &input[slash + 1..],
        None => input,
    }
}

/// GNU parallel's `s:\.[^/.]*$::`: the last dot, if no slash follows it.
fn strip_extension(input: &[u8]) -> &[u8] {
    match input.iter().rposition(|&b| b == b'.' || b == b'/') {
        Some(i) if input[i] == b'.' => &input[..i],
        _ => input,
    }
}

/// Quotes one word so a POSIX shell reads it back unchanged.
///
/// Plain words stay bare; others go in single quotes (`'it'\''s'`). Words
/// with control characters use `$'...'` with escapes (`$'a\tb'`, understood
/// by bash, zsh, ksh and POSIX.1-2024 sh), so a quoted command always fits
/// on one line — which the one-command-per-line outputs rely on.
pub fn shell_quote(word: &[u8]) -> Vec<u8> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(&b) || b >= 0x80;
    if !word.is_empty() && word.iter().all(|&b| plain(b)) {
        return word.to_vec();
    }
    if !word.iter().any(|&b| b < 0x20 || b == 0x7f) {
        let mut out = vec![b'\''];
        for &b in word {
            if b == b'\'' {
                out.extend_from_slice(b"'\\''");
            } else {
                out.push(b);
            }
        }
        out.push(b'\'');
        return out;
    }
    let mut out = b"$'".to_vec();
    for &b in word {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\'' => out.extend_from_slice(b"\\'"),
            b if b < 0x20 || b == 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            b => out.push(b),
        }
    }
    out.push(b'\'');
    out
}

/// A whole command line, each word quoted with [`shell_quote`], separated
/// by spaces; the first word is quoted also when, bare, a shell would read
/// it as an assignment (`a=b`) or a reserved word (`if`, `time`), so that
/// the line runs the same command.
pub fn shell_line(words: &[Vec<u8>]) -> Vec<u8> {
    let mut line = Vec::new();
    for (i, word) in words.iter().enumerate() {
        if i > 0 {
            line.push(b' ');
            line.extend_from_slice(&shell_quote(word));
        } else if is_special_as_command(word) {
            // Bare, the shell would read it as an assignment or a keyword.
            line.push(b'\'');
            line.extend_from_slice(word);
            line.push(b'\'');
        } else {
            line.extend_from_slice(&shell_quote(word));
        }
    }
    line
}

/// Whether a word that [`shell_quote`] leaves bare means something else to
/// a shell in a command's first position: `a=b` is an assignment, `if` or
/// `time` a reserved word (POSIX's, and bash's and ksh's own).
fn is_special_as_command(word: &[u8]) -> bool {
    const RESERVED: [&[u8]; 17] = [
        b"if",
        b"then",
        b"else",
        b"elif",
        b"fi",
        b"case",
        b"esac",
        b"for",
        b"while",
        b"until",
        b"do",
        b"done",
        b"in",
        b"function",
        b"select",
        b"time",
        b"coproc",
    ];
    shell_quote(word) == word && (word.contains(&b'=') || RESERVED.contains(&word))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    fn expand_job(template: &[&str], values: &[&str], seq: u64, slot: usize) -> Vec<String> {
        let values: Vec<Vec<u8>> = words(values);
        Template::new(words(template))
            .unwrap()
            .expand(JobArgs { values: &values, seq, slot })
            .into_iter()
            .map(|w| String::from_utf8(w).unwrap())
            .collect()
    }

    fn expand(template: &[&str], input: &str) -> Vec<String> {
        expand_job(template, &[input], 1, 1)
    }

    #[test]
    fn positional_strings_pick_one_source() {
        let t = ["echo", "{2}-{1}", "{1.}", "{2/}", "{1//}", "{2/.}", "{3}"];
        assert_eq!(
            expand_job(&t, &["a/b.c", "d/e.f"], 1, 1),
            ["echo", "d/e.f-a/b.c", "a/b", "e.f", "a", "e", ""]
        );
        assert_eq!(Template::new(words(&t)).unwrap().max_source(), 3);
        assert_eq!(expand_job(&["echo", "{}"], &["A", "D"], 1, 1), ["echo", "A D"]);
        assert_eq!(expand_job(&["echo"], &["A", "D"], 1, 1), ["echo", "A", "D"]);
    }

    #[test]
    fn sequence_and_slot_numbers() {
        assert_eq!(expand_job(&["echo", "{#}/{%}", "{}"], &["x"], 12, 3), ["echo", "12/3", "x"]);
        assert!(Template::new(words(&["echo", "{%}"])).unwrap().uses_slot());
        assert!(!Template::new(words(&["echo", "{#}"])).unwrap().uses_slot());
        // A replacement string, as for GNU parallel: nothing is appended.
        assert_eq!(expand_job(&["echo", "{#}"], &["x"], 2, 1), ["echo", "2"]);
        assert_eq!(expand(&["echo", "{0}", "{1x}", "{-1}"], "a"), ["echo", "{0}", "{1x}", "{-1}", "a"]);
    }

    #[test]
    fn replacement_strings_follow_gnu_parallel() {
        let t = ["echo", "{}", "{.}", "{/}", "{//}", "{/.}"];
        assert_eq!(
            expand(&t, "dir.d/a.tar.gz"),
            ["echo", "dir.d/a.tar.gz", "dir.d/a.tar", "a.tar.gz", "dir.d", "a.tar"]
        );
        assert_eq!(
            expand(&t, "sub.dir/bar"),
            ["echo", "sub.dir/bar", "sub.dir/bar", "bar", "sub.dir", "bar"]
        );
        assert_eq!(expand(&t, "plain"), ["echo", "plain", "plain", "plain", ".", "plain"]);
    }

    #[test]
    fn dirname_follows_dirname_1() {
        let cases: [(&str, &str); 10] = [
            ("/abs", "/"),
            ("/", "/"),
            ("//", "/"),
            ("a/b/", "a"),
            ("a//b", "a"),
            ("/a.b/", "/"),
            ("//x//", "/"),
            ("a", "."),
            ("", "."),
            ("/a/b//c", "/a/b"),
        ];
        for (input, dir) in cases {
            assert_eq!(dirname(input.as_bytes()), dir.as_bytes(), "dirname {input:?}");
        }
    }

    #[test]
    fn replacement_inside_words_and_in_the_command() {
        assert_eq!(expand(&["cp", "{}", "out/{/.}.bak"], "in/x.txt"), ["cp", "in/x.txt", "out/x.bak"]);
        assert_eq!(expand(&["{}", "-n"], "/bin/echo"), ["/bin/echo", "-n"]);
        assert_eq!(expand(&["echo", "{x}", "{"], "a"), ["echo", "{x}", "{", "a"]);
    }

    #[test]
    fn input_is_appended_without_replacement_strings() {
        assert_eq!(expand(&["echo", "-n"], "a b"), ["echo", "-n", "a b"]);
        assert_eq!(expand(&["echo", ""], ""), ["echo", "", ""]);
    }

    #[test]
    fn empty_command_is_rejected() {
        assert!(Template::new(vec![]).is_err());
    }

    #[test]
    fn quoting_follows_posix_shell_rules() {
        assert_eq!(shell_quote(b"abc/d-e.f"), b"abc/d-e.f");
        assert_eq!(shell_quote(b""), b"''");
        assert_eq!(shell_quote(b"a b"), b"'a b'");
        assert_eq!(shell_quote(b"it's"), b"'it'\\''s'");
        assert_eq!(shell_quote(b"a\tb\n'"), b"$'a\\tb\\n\\''");
        // First words a shell would read as an assignment or a keyword are
        // quoted there (and only there).
        let line = |list: &[&str]| String::from_utf8(shell_line(&words(list))).unwrap();
        assert_eq!(line(&["a=b", "c=d"]), "'a=b' c=d");
        assert_eq!(line(&["if", "then", "x"]), "'if' then x");
        assert_eq!(line(&["time", "sleep", "1"]), "'time' sleep 1");
        assert_eq!(line(&["echo", "a=b", "if"]), "echo a=b if");
        assert_eq!(line(&["it's", "a"]), "'it'\\''s' a");
        assert_eq!(shell_line(&words(&["echo", "a b", "$x"])), b"echo 'a b' '$x'");
    }
}
