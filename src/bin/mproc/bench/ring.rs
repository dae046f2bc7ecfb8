//! `mproc bench ring`: messages/s and GB/s from a forked child to its parent
//! through the shared-memory ring, against a pipe doing the same transfer,
//! measured in the same run.
//!
//! The pipe is the baseline a message-passing program has without shared
//! memory: the child sends each message with one `write` (a 4-byte length,
//! then the payload, in one buffer); the parent reads through a 64 KiB
//! buffer, so its reads are amortised over many messages. On both paths
//! every message is available to the parent as soon as it is sent, and the
//! parent checks each one's length and sequence number.
//!
//! Each figure is the median of `--runs` runs. GB/s counts payload bytes
//! (10^9 per GB). `--tsv` prints one `name<TAB>value<TAB>unit` line per
//! figure, for `make compare`: `ring_msgs_8`, `pipe_msgs_8`, `ratio_msgs_8`,
//! the same for `_64`, then `ring_gbps_65536`, `pipe_gbps_65536`,
//! `ratio_gbps_65536`.

use std::cell::Cell;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

use mproc::ring::{self, Receiver, Sender};
use mproc::Process;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Small (8- and 64-byte) messages per run; 64 KiB messages: COUNT / 50
    #[arg(long, default_value_t = 500_000, value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// Runs per figure (the median is shown)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: u32,
    /// Ring capacity in bytes (rounded up to a power of two)
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    capacity: u64,
    /// Print name<TAB>value<TAB>unit lines instead of the table
    #[arg(long)]
    tsv: bool,
}

/// One transfer to measure: `count` messages of `size` bytes.
struct Transfer {
    size: usize,
    count: u64,
    /// Reported as bytes per second (GB/s) rather than messages per second.
    in_bytes: bool,
}

impl Transfer {
    fn rate(&self, elapsed: Duration) -> f64 {
        let per_second = self.count as f64 / elapsed.as_secs_f64().max(1e-9);
        if self.in_bytes {
            per_second * self.size as f64 / 1e9
        } else {
            per_second
        }
    }

    fn name(&self) -> String {
        if self.in_bytes {
            format!("gbps_{}", self.size)
        } else {
            format!("msgs_{}", self.size)
        }
    }
}

pub fn main(args: Args) -> u8 {
    let mut out = crate::Out::new();
    let transfers = [
        Transfer { size: 8, count: args.count, in_bytes: false },
        Transfer { size: 64, count: args.count, in_bytes: false },
        Transfer { size: 64 * 1024, count: (args.count / 50).max(1), in_bytes: true },
    ];
    let mut rows = Vec::new();
    for transfer in &transfers {
        let ring = median(args.runs, || ring_transfer(transfer, args.capacity as usize));
        let pipe = median(args.runs, || pipe_transfer(transfer));
        match (ring, pipe) {
            (Ok(ring), Ok(pipe)) => rows.push((transfer, transfer.rate(ring), transfer.rate(pipe))),
            (Err(e), _) | (_, Err(e)) => {
                crate::complain(&format!("bench ring: {e}"));
                return crate::EXIT_FAILURE;
            }
        }
    }
    if args.tsv {
        for (transfer, ring, pipe) in rows {
            let name = transfer.name();
            let unit = if transfer.in_bytes { "GB/s" } else { "msgs/s" };
            outln!(out, "ring_{name}\t{ring:.3}\t{unit}");
            outln!(out, "pipe_{name}\t{pipe:.3}\t{unit}");
            outln!(out, "ratio_{name}\t{:.2}\tx", ring / pipe);
        }
    } else {
        print_table(&mut out, &args, &rows);
    }
    out.finish("bench ring")
}

fn print_table(out: &mut crate::Out, args: &Args, rows: &[(&Transfer, f64, f64)]) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    outln!(
        out,
        "ring vs pipe, child -> parent, {} small messages per run, median of {} runs, {} CPUs",
        args.count,
        args.runs,
        cpus
    );
    outln!(out, "{:<14} {:>16} {:>16} {:>10}", "transfer", "ring", "pipe", "ring/pipe");
    for (transfer, ring, pipe) in rows {
        let (what, ring_text, pipe_text) = if transfer.in_bytes {
            (
                format!("{} KiB msgs", transfer.size / 1024),
                format!("{ring:.2} GB/s"),
                format!("{pipe:.2} GB/s"),
            )
        } else {
            (format!("{} B msgs", transfer.size), millions(*ring), millions(*pipe))
        };
        outln!(out, "{what:<14} {ring_text:>16} {pipe_text:>16} {:>9.1}x", ring / pipe);
    }
}

fn millions(per_second: f64) -> String {
    format!("{:.2} M msgs/s", per_second / 1e6)
}

/// Runs `measure` `runs` times and returns the median time.
fn median(runs: u32, mut measure: impl FnMut() -> Result<Duration, String>) -> Result<Duration, String> {
    let mut times = (0..runs).map(|_| measure()).collect::<Result<Vec<_>, _>>()?;
    times.sort();
    Ok(times[times.len() / 2])
}

/// Puts the sequence number (as much of it as fits) at the message's start.
fn stamp(msg: &mut [u8], seq: u64) {
    let n = msg.len().min(8);
    msg[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
}

fn check(msg: &[u8], seq: u64, size: usize) -> Result<(), String> {
    let n = size.min(8);
    if msg.len() != size || msg[..n] != seq.to_le_bytes()[..n] {
        return Err(format!("message {seq} arrived damaged or out of order"));
    }
    Ok(())
}

/// Forks a child that runs `body` with `child_half`, and returns the child
/// and `parent_half`. The child first drops its copy of `parent_half`: a
/// child that kept the parent's descriptors open would hide the parent's
/// death from itself (its own copy would keep the pipe from hanging up).
fn fork_with<C: 'static, P: 'static>(
    child_half: C,
    parent_half: P,
    body: impl FnOnce(C) + 'static,
) -> Result<(Process, P), String> {
    let parent_slot = Rc::new(Cell::new(Some(parent_half)));
    let child_copy = Rc::clone(&parent_slot);
    let mut child = Process::new(move || {
        drop(child_copy.take());
        body(child_half);
    });
    child.start().map_err(|e| e.to_string())?;
    // start() dropped the parent's copy of the closure, and `child_half`
    // with it: the slot is ours alone now.
    let parent_half = parent_slot.take().ok_or("the parent's half went missing")?;
    Ok((child, parent_half))
}

/// Joins the producer; on a failed transfer, kills it first (it may be
/// blocked on a full ring or pipe).
fn finish(child: Process, outcome: Result<Duration, String>) -> Result<Duration, String> {
    if outcome.is_err() {
        let _ = child.kill();
    }
    let code = child.join().map_err(|e| e.to_string())?;
    let elapsed = outcome?;
    if code != 0 {
        return Err(format!("the producing child exited with status {code}"));
    }
    Ok(elapsed)
}

fn ring_transfer(transfer: &Transfer, capacity: usize) -> Result<Duration, String> {
    let (size, count) = (transfer.size, transfer.count);
    let (tx, rx) = ring::channel(capacity).map_err(|e| e.to_string())?;
    let (child, mut rx) = fork_with(tx, rx, move |mut tx: Sender| {
        let mut msg = vec![0u8; size];
        for seq in 0..count {
            stamp(&mut msg, seq);
            if let Err(e) = tx.send(&msg) {
                panic!("ring producer: {e}");
            }
        }
    })?;
    let outcome = receive_ring(&mut rx, size, count);
    drop(rx);
    finish(child, outcome)
}

fn receive_ring(rx: &mut Receiver, size: usize, count: u64) -> Result<Duration, String> {
    let start = Instant::now();
    let mut buf = Vec::with_capacity(size);
    for seq in 0..count {
        rx.recv_into(&mut buf).map_err(|e| e.to_string())?;
        check(&buf, seq, size)?;
    }
    Ok(start.elapsed())
}

fn pipe_transfer(transfer: &Transfer) -> Result<Duration, String> {
    let (size, count) = (transfer.size, transfer.count);
    let (read_end, write_end) = nix::unistd::pipe().map_err(|e| format!("pipe failed: {e}"))?;
    let (child, input) = fork_with(File::from(write_end), File::from(read_end), move |mut out: File| {
        let mut msg = (size as u32).to_le_bytes().to_vec();
        msg.resize(4 + size, 0);
        for seq in 0..count {
            stamp(&mut msg[4..], seq);
            if let Err(e) = out.write_all(&msg) {
                panic!("pipe producer: {e}");
            }
        }
    })?;
    let mut input = BufReader::with_capacity(64 * 1024, input);
    let outcome = receive_pipe(&mut input, size, count);
    drop(input);
    finish(child, outcome)
}

fn receive_pipe(input: &mut impl Read, size: usize, count: u64) -> Result<Duration, String> {
    let start = Instant::now();
    let mut len = [0u8; 4];
    let mut buf = Vec::with_capacity(size);
    for seq in 0..count {
        input.read_exact(&mut len).map_err(|e| format!("pipe read failed: {e}"))?;
        buf.resize(u32::from_le_bytes(len) as usize, 0);
        input.read_exact(&mut buf).map_err(|e| format!("pipe read failed: {e}"))?;
        check(&buf, seq, size)?;
    }
    Ok(start.elapsed())
}
