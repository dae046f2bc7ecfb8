//! `mproc bench process`: what starting a process costs, and what a pipe
//! round trip costs, next to `std::process::Command` (fork + exec) as the
//! baseline measured in the same run.

use std::time::Instant;

use clap::Args as ClapArgs;

use super::{median, Table};
use crate::fail;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Start+join cycles per round (5 rounds; the median round is reported)
    #[arg(long, value_name = "N", default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    count: u32,
    /// Print `name<TAB>value<TAB>unit` lines instead of a table
    #[arg(long)]
    tsv: bool,
}

/// Mean microseconds per `Process` start + join (median of 5 rounds).
pub fn process_start_join_us(count: u32) -> mproc::Result<f64> {
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..count {
            let mut p = mproc::Process::new(|| {});
            p.start()?;
            p.join()?;
        }
        rounds.push(t.elapsed().as_secs_f64() * 1e6 / f64::from(count));
    }
    Ok(median(&mut rounds))
}

/// Mean microseconds per typed `spawn` + `join` of a `u64`.
fn spawn_join_us(count: u32) -> mproc::Result<f64> {
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for i in 0..count {
            let child = mproc::spawn(move || u64::from(i) * 2)?;
            child.join()?;
        }
        rounds.push(t.elapsed().as_secs_f64() * 1e6 / f64::from(count));
    }
    Ok(median(&mut rounds))
}

/// Mean microseconds per 1-byte round trip between the parent and a
/// forked child over two pipes (median of 5 rounds of `count` trips).
pub fn pipe_pingpong_us(count: u32) -> mproc::Result<f64> {
    use std::io::{Read, Write};
    let os = |e: std::io::Error| {
        mproc::Error::Os(mproc::OsError { call: "pipe", pid: None, errno: e.raw_os_error().unwrap_or(0) })
    };
    let (mut ping_r, mut ping_w) = std::io::pipe().map_err(os)?;
    let (mut pong_r, mut pong_w) = std::io::pipe().map_err(os)?;
    let total = 5 * count;
    let mut child = mproc::Process::new(move || {
        let mut byte = [0u8; 1];
        for _ in 0..total {
            if ping_r.read_exact(&mut byte).is_err() || pong_w.write_all(&byte).is_err() {
                std::process::exit(1);
            }
        }
    });
    child.start()?;
    // Our copies of the child's ends were moved into the closure and
    // dropped in the parent at start(): only the child holds them now.
    let mut rounds = Vec::new();
    let mut byte = [7u8; 1];
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..count {
            ping_w.write_all(&byte).map_err(os)?;
            pong_r.read_exact(&mut byte).map_err(os)?;
        }
        rounds.push(t.elapsed().as_secs_f64() * 1e6 / f64::from(count));
    }
    child.join()?;
    Ok(median(&mut rounds))
}

/// Mean microseconds per `Command::new("/bin/true")` spawn + wait.
fn command_us(count: u32) -> Option<f64> {
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..count {
            std::process::Command::new("/bin/true").status().ok()?;
        }
        rounds.push(t.elapsed().as_secs_f64() * 1e6 / f64::from(count));
    }
    Some(median(&mut rounds))
}

pub fn main(args: Args) -> u8 {
    let mut out = crate::Out::new();
    let measured = process_start_join_us(args.count)
        .and_then(|p| Ok((p, spawn_join_us(args.count)?, pipe_pingpong_us(args.count * 20)?)));
    let (process, spawn, pingpong) = match measured {
        Ok(v) => v,
        Err(e) => return fail("bench process", &e),
    };
    let command = command_us(args.count);
    if args.tsv {
        outln!(out, "process_start_join\t{process:.1}\tus");
        outln!(out, "spawn_join\t{spawn:.1}\tus");
        outln!(out, "pipe_pingpong\t{pingpong:.1}\tus");
        if let Some(c) = command {
            outln!(out, "command_true\t{c:.1}\tus");
        }
        return out.finish("bench process");
    }
    let mut table = Table::new(&["operation", "µs each", "vs Command"]);
    let ratio = |v: f64| command.map_or("-".to_string(), |c| format!("{:.2}x faster", c / v));
    table.row(&[
        "Process start + join (fork, _exit, waitpid)".into(),
        format!("{process:.1}"),
        ratio(process),
    ]);
    table.row(&["spawn + join of a u64 (plus a result pipe)".into(), format!("{spawn:.1}"), ratio(spawn)]);
    table.row(&["pipe ping-pong, 1 byte round trip".into(), format!("{pingpong:.1}"), "-".into()]);
    if let Some(c) = command {
        table.row(&["baseline: Command /bin/true (fork + exec)".into(), format!("{c:.1}"), "1.00x".into()]);
    }
    table.print(&mut out);
    out.finish("bench process")
}
