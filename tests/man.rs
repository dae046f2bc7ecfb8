//! The man pages must not drift from the binary.
//!
//! Every subcommand and option that `mproc --help` (and each `SUB --help`,
//! all the way down) lists must appear in `man/mproc.1`, and every long
//! option the page names must exist in the binary. Both pages must be clean
//! under `mandoc -Tlint -Wwarning` (or, where there is no mandoc, outside
//! CI, under `groff -mdoc -ww -z`).
//!
//! In the mdoc source, a subcommand is written `Cm name` and an option
//! `Fl -name` (long) or `Fl j` (short). Options of other programs (xargs,
//! parallel) belong in `Ql` or `Li`, never in `Fl`, or the reverse check
//! will flag them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

const MPROC: &str = env!("CARGO_BIN_EXE_mproc");

fn man_page(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("man").join(name)
}

/// What one `--help` screen lists.
#[derive(Debug, Default)]
struct Help {
    subcommands: Vec<String>,
    long_options: BTreeSet<String>,
    short_options: BTreeSet<String>,
}

/// `mproc bench ring`, for messages.
fn command_line(path: &[String]) -> String {
    std::iter::once("mproc").chain(path.iter().map(String::as_str)).collect::<Vec<_>>().join(" ")
}

/// Runs `mproc <path> --help`; help is a success and goes to stdout.
fn help_text(path: &[String]) -> String {
    let out = Command::new(MPROC).args(path).arg("--help").output().expect("run mproc --help");
    let shown = command_line(path);
    assert!(
        out.status.success(),
        "`{shown} --help` exited {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// Parses clap's help layout: `Commands:` lists `  name  description`
/// (exactly two spaces of indent; wrapped descriptions are indented more),
/// and `Options:` lists `  -j, --jobs <N>  description`.
fn parse_help(text: &str) -> Help {
    let mut help = Help::default();
    let mut section = "";
    for line in text.lines() {
        if !line.starts_with(' ') {
            section = line.trim_end();
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let body = line.trim_start();
        match section {
            "Commands:" if indent == 2 => {
                let name = body.split_whitespace().next().unwrap_or_default();
                help.subcommands.push(name.to_string());
            }
            "Options:" if body.starts_with('-') && indent <= 6 => {
                // The option spec ends where the description starts: the
                // first word that is neither a flag nor a `<VALUE>`.
                for word in body.split_whitespace() {
                    let word = word.trim_end_matches(',');
                    if let Some(long) = word.strip_prefix("--") {
                        let name = long.split(['=', '[', '<']).next().unwrap_or_default();
                        help.long_options.insert(format!("--{name}"));
                    } else if word.starts_with('-') && word.len() == 2 {
                        help.short_options.insert(word.to_string());
                    } else if !(word.starts_with('<') || word.starts_with('[')) {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    help
}

/// Every help screen of the binary, keyed by its subcommand path
/// (`[]`, `["run"]`, `["bench", "ring"]`, ...).
fn all_help() -> Vec<(Vec<String>, Help)> {
    let mut screens = Vec::new();
    let mut todo = vec![Vec::<String>::new()];
    while let Some(path) = todo.pop() {
        let help = parse_help(&help_text(&path));
        for sub in &help.subcommands {
            // clap's `help` subcommand has no help screen of its own.
            if sub != "help" {
                let mut next = path.clone();
                next.push(sub.clone());
                todo.push(next);
            }
        }
        screens.push((path, help));
    }
    screens
}

/// The subcommands (`Cm`) and options (`Fl`) an mdoc page names.
#[derive(Debug, Default)]
struct Page {
    commands: BTreeSet<String>,
    long_options: BTreeSet<String>,
    short_options: BTreeSet<String>,
}

/// A callable mdoc macro: `Ar`, `Fl`, `Op`, `Bsx`, ... (two or three letters,
/// capitalised). Ends the arguments of the `Cm` or `Fl` before it.
fn is_macro(token: &str) -> bool {
    let mut chars = token.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_uppercase())
        && (2..=3).contains(&token.len())
        && chars.all(|c| c.is_ascii_lowercase())
}

fn parse_page(source: &str) -> Page {
    let mut page = Page::default();
    for line in source.lines().filter(|l| l.starts_with('.') && !l.starts_with(".\\\"")) {
        let mut mode = None;
        for token in line[1..].split_whitespace() {
            // `\&` is mdoc's zero-width escape (used to keep `:::` from
            // being read as punctuation); it is not part of the word.
            let token = token.replace("\\&", "");
            if is_macro(&token) {
                mode = Some(token);
                continue;
            }
            let word_like = token.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '-');
            match mode.as_deref() {
                Some("Cm") if word_like => {
                    page.commands.insert(token);
                }
                // `Fl -jobs` is `--jobs`; `Fl j` is `-j`; a lone `Fl -` is `--`.
                Some("Fl") if token.len() > 1 && token.starts_with('-') => {
                    page.long_options.insert(format!("-{token}"));
                }
                Some("Fl") if word_like && !token.starts_with('-') => {
                    page.short_options.insert(format!("-{token}"));
                }
                _ => {}
            }
        }
    }
    page
}

fn mproc_1() -> Page {
    let path = man_page("mproc.1");
    let source = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    parse_page(&source)
}

#[test]
fn every_subcommand_in_help_is_documented() {
    let page = mproc_1();
    let mut missing = Vec::new();
    for (path, help) in all_help() {
        for sub in help.subcommands {
            if !page.commands.contains(&sub) {
                missing.push(format!("{} {sub}", command_line(&path)));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "subcommands missing from man/mproc.1 (write them as `Cm name`): {missing:?}"
    );
}

#[test]
fn every_option_in_help_is_documented() {
    let page = mproc_1();
    let mut missing = Vec::new();
    for (path, help) in all_help() {
        let shown = command_line(&path);
        for option in &help.long_options {
            if !page.long_options.contains(option) {
                missing.push(format!("{shown} {option}"));
            }
        }
        for option in &help.short_options {
            if !page.short_options.contains(option) {
                missing.push(format!("{shown} {option}"));
            }
        }
    }
    assert!(missing.is_empty(), "options missing from man/mproc.1 (write `Fl -name` or `Fl j`): {missing:?}");
}

#[test]
fn every_option_in_the_man_page_exists() {
    let page = mproc_1();
    let known: BTreeSet<String> = all_help().into_iter().flat_map(|(_, help)| help.long_options).collect();
    let unknown: Vec<&String> = page.long_options.difference(&known).collect();
    assert!(unknown.is_empty(), "man/mproc.1 names options no --help lists: {unknown:?}");
}

#[test]
fn help_parser_reads_the_options_and_subcommands() {
    // Guards the drift tests against passing vacuously on a layout change.
    let top = parse_help(&help_text(&[]));
    for sub in ["square", "numbers", "cube", "isolation", "speedup", "bench", "run"] {
        assert!(top.subcommands.iter().any(|s| s == sub), "`mproc --help` lists no {sub}: {top:?}");
    }
    assert!(top.long_options.contains("--trace"), "`mproc --help` lists no --trace: {top:?}");
    let numbers = parse_help(&help_text(&["numbers".to_string()]));
    assert!(numbers.long_options.contains("--count"), "`mproc numbers --help` lists no --count: {numbers:?}");
    let page = mproc_1();
    assert!(page.commands.contains("isolation") && page.long_options.contains("--trace"), "{page:?}");
}

/// The linter to run: mandoc; else groff, which is there wherever man(1)
/// is; else none (the lint is skipped, except under CI, which fails).
fn man_linter() -> Option<&'static [&'static str]> {
    if common::on_path("mandoc") {
        return Some(&["mandoc", "-Tlint", "-Wwarning"]);
    }
    if !common::under_ci() && common::on_path("groff") {
        println!("note: mandoc is not installed; linting with groff -mdoc -ww -z");
        return Some(&["groff", "-mdoc", "-ww", "-z"]);
    }
    common::require_tool("mandoc", "the man page lint");
    None
}

#[test]
fn man_pages_are_lint_clean() {
    let Some(lint) = man_linter() else { return };
    for name in ["mproc.1", "mproc.7"] {
        let path = man_page(name);
        let out =
            Command::new(lint[0]).args(&lint[1..]).arg(&path).output().expect("run the man page linter");
        let report =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success() && report.is_empty(),
            "{} {} ({:?}):\n{report}",
            lint.join(" "),
            path.display(),
            out.status
        );
    }
}
