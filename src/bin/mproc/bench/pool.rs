//! `mproc bench pool`: tasks per second for `Pool::map` on a trivial
//! function, against a sequential loop and `std::thread` workers fed by a
//! channel; one task at a time (`imap` at chunksize 1, `apply` from eight
//! threads at once, `apply_async` one by one, and as a baseline eight
//! threads that each block for an answer from one in-process thread);
//! `fork_map` against
//! `Pool::map` on a large input; and the speedup on CPU-bound work.

use std::sync::mpsc;
use std::time::Instant;

use clap::Args as ClapArgs;

use super::Table;
use crate::speedup;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Items for the trivial-function map
    #[arg(long, value_name = "N", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    items: u64,
    /// Worker processes (and threads)
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    workers: u32,
    /// Print `name<TAB>value<TAB>unit` lines instead of tables
    #[arg(long)]
    tsv: bool,
}

fn trivial(x: u64) -> u64 {
    x.wrapping_mul(2654435761) >> 3
}

/// How many times the map and its sequential baseline run. The first run
/// of each pays for memory the process had not touched (a page fault per
/// 4 KiB) and later ones reuse it, as a program that maps again does: both
/// the first run and the median are reported.
const MAP_RUNS: usize = 5;

/// Tasks/s of `Pool::map(trivial, 0..items)` on a pool made beforehand:
/// the first map's, and the median of [`MAP_RUNS`].
pub fn pool_map_rate(workers: usize, items: u64) -> mproc::Result<Rates> {
    let pool = mproc::Pool::new(workers)?;
    let mut rates = Vec::with_capacity(MAP_RUNS);
    for _ in 0..MAP_RUNS {
        let t = Instant::now();
        let out = pool.map(trivial, 0..items)?;
        let secs = t.elapsed().as_secs_f64();
        if out.len() as u64 != items || out.last() != Some(&trivial(items - 1)) {
            return Err(mproc::Error::InvalidState("pool map returned wrong results"));
        }
        rates.push(items as f64 / secs);
    }
    Ok(Rates::of(rates))
}

/// A rate's first measurement (on fresh memory) and the median of all.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    pub first: f64,
    pub median: f64,
}

impl Rates {
    fn of(mut runs: Vec<f64>) -> Rates {
        Rates { first: runs[0], median: super::median(&mut runs) }
    }
}

/// Tasks/s of the same map as a plain loop in this process (the first,
/// and the median of [`MAP_RUNS`]); `black_box` keeps each call a call of
/// its own, as a pool's tasks are.
fn sequential_rate(items: u64) -> Rates {
    let rates: Vec<f64> = (0..MAP_RUNS)
        .map(|_| {
            let t = Instant::now();
            let out: Vec<u64> = (0..items).map(|x| std::hint::black_box(trivial(x))).collect();
            std::hint::black_box(&out);
            items as f64 / t.elapsed().as_secs_f64()
        })
        .collect();
    Rates::of(rates)
}

/// Threads fed one task at a time through a channel (the naive design
/// a Rust programmer would write first), results sent back by channel.
fn threads_rate(workers: usize, items: u64) -> f64 {
    let t = Instant::now();
    let (task_tx, task_rx) = mpsc::channel::<(usize, u64)>();
    let task_rx = std::sync::Arc::new(std::sync::Mutex::new(task_rx));
    let (result_tx, result_rx) = mpsc::channel::<(usize, u64)>();
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let rx = task_rx.clone();
            let tx = result_tx.clone();
            std::thread::spawn(move || loop {
                let next = rx.lock().map(|r| r.recv());
                match next {
                    Ok(Ok((i, x))) => {
                        let _ = tx.send((i, trivial(x)));
                    }
                    _ => return,
                }
            })
        })
        .collect();
    drop(result_tx);
    for (i, x) in (0..items).enumerate() {
        let _ = task_tx.send((i, x));
    }
    drop(task_tx);
    let mut out = vec![0u64; items as usize];
    for (i, r) in result_rx {
        out[i] = r;
    }
    for h in handles {
        let _ = h.join();
    }
    std::hint::black_box(&out);
    items as f64 / t.elapsed().as_secs_f64()
}

/// Tasks/s for trivial tasks sent one at a time on one pool: `imap` at
/// chunksize 1 from one thread; `apply` from eight threads sharing the
/// pool; 20,000 `apply_async` submitted, then each `get`. Each is run
/// [`ONE_BY_ONE_RUNS`] times, the three in turn, on one pool: the first run
/// and the median are reported, and the ratios are of medians.
struct OneByOne {
    imap: Rates,
    apply_8_threads: Rates,
    /// Times a thread of this process went to sleep (voluntary context
    /// switches) per task of the 8-thread `apply` runs; `None` where
    /// `getrusage` fails.
    apply_8_threads_sleeps: Option<f64>,
    apply_async: Rates,
    handoff_8_threads: f64,
}

const THREADS: u64 = 8;

/// How many times each one-by-one variant runs. One run of each was too
/// few on two vCPUs: three busy processes (and here eight threads more)
/// take turns on two CPUs, and one run could measure a third of the others
/// (`apply` from eight threads: 0.3 M tasks/s in one run of eight, 1.6 to
/// 1.9 M in the rest), so a single run decided the ratio.
const ONE_BY_ONE_RUNS: usize = 5;

fn one_by_one(workers: usize) -> mproc::Result<OneByOne> {
    let wrong = || mproc::Error::InvalidState("a one-by-one run returned wrong results");
    let pool = mproc::Pool::new(workers)?;
    let n = 40_000u64;
    let per_thread = n / THREADS;
    let m = 20_000u64;
    let (mut imap, mut apply_8_threads, mut apply_async) = (Vec::new(), Vec::new(), Vec::new());
    let mut slept = Some(0u64);
    for _ in 0..ONE_BY_ONE_RUNS {
        let t = Instant::now();
        let mut sum = 0u64;
        for r in pool.imap(trivial, 0..n) {
            sum = sum.wrapping_add(r?);
        }
        imap.push(n as f64 / t.elapsed().as_secs_f64());
        if sum != (0..n).map(trivial).fold(0, u64::wrapping_add) {
            return Err(wrong());
        }

        let slept_before = voluntary_switches();
        let t = Instant::now();
        let sums = std::thread::scope(|s| {
            let threads: Vec<_> = (0..THREADS)
                .map(|k| {
                    let pool = &pool;
                    s.spawn(move || -> mproc::Result<u64> {
                        let mut sum = 0u64;
                        for x in k * per_thread..(k + 1) * per_thread {
                            sum = sum.wrapping_add(pool.apply(trivial, x)?);
                        }
                        Ok(sum)
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|h| h.join().unwrap_or(Err(mproc::Error::Closed)))
                .collect::<mproc::Result<Vec<u64>>>()
        })?;
        apply_8_threads.push((per_thread * THREADS) as f64 / t.elapsed().as_secs_f64());
        slept = slept
            .zip(slept_before.zip(voluntary_switches()))
            .map(|(total, (before, after))| total + after.saturating_sub(before));
        if sums.into_iter().fold(0, u64::wrapping_add)
            != (0..per_thread * THREADS).map(trivial).fold(0, u64::wrapping_add)
        {
            return Err(wrong());
        }

        let t = Instant::now();
        let mut pending = Vec::with_capacity(m as usize);
        for x in 0..m {
            pending.push(pool.apply_async(trivial, x)?);
        }
        for (x, r) in (0..m).zip(pending.iter_mut()) {
            if r.get()? != trivial(x) {
                return Err(wrong());
            }
        }
        apply_async.push(m as f64 / t.elapsed().as_secs_f64());
    }
    let apply_8_threads_sleeps =
        slept.map(|s| s as f64 / (per_thread * THREADS * ONE_BY_ONE_RUNS as u64) as f64);
    let handoff_8_threads = handoff_rate(n / THREADS);
    Ok(OneByOne {
        imap: Rates::of(imap),
        apply_8_threads: Rates::of(apply_8_threads),
        apply_8_threads_sleeps,
        apply_async: Rates::of(apply_async),
        handoff_8_threads,
    })
}

/// Voluntary context switches of every thread of this process so far:
/// each is a thread going to sleep (a futex wait, a `poll`), not a
/// preemption. Threads that ended count too.
fn voluntary_switches() -> Option<u64> {
    use nix::sys::resource::{getrusage, UsageWho};
    let usage = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    u64::try_from(usage.voluntary_context_switches()).ok()
}

/// The baseline for `apply` from many threads: `THREADS` threads each hand
/// one number to a server thread (a queue behind a `Mutex` and a
/// `Condvar`) and sleep on a `Condvar` of their own until the answer is
/// back; no processes, no encoding, no rings. Every round trip costs a
/// sleep and a wake-up; a waiting `apply` yields its CPU for a while
/// first, and sleeps only if its result is not in by then, which is why
/// the pool's rate is printed with its sleeps per task. Round trips per
/// second.
fn handoff_rate(per_thread: u64) -> f64 {
    use std::collections::VecDeque;
    use std::sync::{Condvar, Mutex};

    struct Answer {
        value: Mutex<Option<u64>>,
        ready: Condvar,
    }
    let queue: Mutex<(VecDeque<(usize, u64)>, bool)> = Mutex::new((VecDeque::new(), false));
    let queued = Condvar::new();
    let answers: Vec<Answer> =
        (0..THREADS).map(|_| Answer { value: Mutex::new(None), ready: Condvar::new() }).collect();
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }
    let t = Instant::now();
    std::thread::scope(|s| {
        let (queue, queued, answers) = (&queue, &queued, &answers);
        s.spawn(move || loop {
            let mut q = lock(queue);
            while q.0.is_empty() && !q.1 {
                q = queued.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            if q.0.is_empty() {
                return; // every client is done
            }
            let batch: Vec<(usize, u64)> = q.0.drain(..).collect();
            drop(q);
            for (client, x) in batch {
                *lock(&answers[client].value) = Some(trivial(x));
                answers[client].ready.notify_one();
            }
        });
        let clients: Vec<_> = (0..THREADS as usize)
            .map(|k| {
                s.spawn(move || {
                    for x in 0..per_thread {
                        lock(queue).0.push_back((k, x));
                        queued.notify_one();
                        let mut answer = lock(&answers[k].value);
                        while answer.is_none() {
                            answer = answers[k].ready.wait(answer).unwrap_or_else(|e| e.into_inner());
                        }
                        *answer = None;
                    }
                })
            })
            .collect();
        for c in clients {
            let _ = c.join();
        }
        lock(queue).1 = true;
        queued.notify_one();
    });
    (per_thread * THREADS) as f64 / t.elapsed().as_secs_f64()
}

/// Seconds for `Pool::map` and `fork_map` over a large input (many
/// strings): the pool encodes and copies every item, fork_map copies none.
/// The median of three runs of each, alternating.
fn large_input(workers: usize) -> mproc::Result<(f64, f64)> {
    fn len_of(s: String) -> u64 {
        s.len() as u64
    }
    let input: Vec<String> = (0..200_000u64).map(|i| format!("{i:0>200}")).collect();
    let pool = mproc::Pool::new(workers)?;
    let (mut pool_runs, mut fork_runs) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let t = Instant::now();
        let a = pool.map(len_of, input.clone())?;
        pool_runs.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let b = mproc::fork_map(workers, &input, |s| s.len() as u64)?;
        fork_runs.push(t.elapsed().as_secs_f64());
        if a != b {
            return Err(mproc::Error::InvalidState("fork_map and Pool::map disagree"));
        }
    }
    Ok((super::median(&mut pool_runs), super::median(&mut fork_runs)))
}

pub fn main(args: Args) -> u8 {
    let mut out = crate::Out::new();
    let workers = args.workers as usize;
    // The loop first: its first run is on memory this process never
    // touched, as a program's first loop is (a fault per 4 KiB page).
    let seq = sequential_rate(args.items);
    let pool = match pool_map_rate(workers, args.items) {
        Ok(r) => r,
        Err(e) => return crate::fail("bench pool", &e),
    };
    let threads = threads_rate(workers, args.items);
    let single = match one_by_one(workers) {
        Ok(v) => v,
        Err(e) => return crate::fail("bench pool", &e),
    };
    let (pool_big, fork_big) = match large_input(workers) {
        Ok(v) => v,
        Err(e) => return crate::fail("bench pool", &e),
    };
    let ranges: Vec<(u64, u64)> = (0..16u64).map(|i| (i * 250_000, 250_000)).collect();
    let timings = match speedup::measure(workers, &ranges) {
        Ok(t) => t,
        Err(e) => {
            crate::complain(&format!("bench pool: {e}"));
            return crate::EXIT_FAILURE;
        }
    };
    let cpu_speedup = timings.sequential.as_secs_f64() / timings.processes.as_secs_f64();
    if args.tsv {
        outln!(out, "pool_map_trivial\t{:.0}\ttasks/s", pool.median);
        outln!(out, "pool_map_trivial_first\t{:.0}\ttasks/s", pool.first);
        outln!(out, "sequential_trivial\t{:.0}\ttasks/s", seq.median);
        outln!(out, "sequential_trivial_first\t{:.0}\ttasks/s", seq.first);
        outln!(out, "threads_channel_trivial\t{threads:.0}\ttasks/s");
        outln!(out, "imap_chunksize_1\t{:.0}\ttasks/s", single.imap.median);
        outln!(out, "imap_chunksize_1_first\t{:.0}\ttasks/s", single.imap.first);
        outln!(out, "apply_8_threads\t{:.0}\ttasks/s", single.apply_8_threads.median);
        outln!(out, "apply_8_threads_first\t{:.0}\ttasks/s", single.apply_8_threads.first);
        if let Some(sleeps) = single.apply_8_threads_sleeps {
            outln!(out, "apply_8_threads_sleeps\t{sleeps:.3}\tper task");
        }
        outln!(out, "apply_async_one_by_one\t{:.0}\ttasks/s", single.apply_async.median);
        outln!(out, "apply_async_one_by_one_first\t{:.0}\ttasks/s", single.apply_async.first);
        outln!(out, "handoff_8_threads\t{:.0}\tround trips/s", single.handoff_8_threads);
        outln!(out, "pool_map_large_input\t{pool_big:.3}\ts");
        outln!(out, "fork_map_large_input\t{fork_big:.3}\ts");
        outln!(out, "pool_cpu_speedup\t{cpu_speedup:.2}\tx");
        return out.finish("bench pool");
    }
    outln!(
        out,
        "Pool::map of a trivial function over {} items, {workers} workers (the first run and the median of {MAP_RUNS}; target: >= 0.5x the sequential loop):",
        args.items
    );
    let mut table =
        Table::new(&["variant", "first, tasks/s", "median, tasks/s", "pool / variant (first, median)"]);
    let vs = |other: Rates| format!("{:.2}x, {:.2}x", pool.first / other.first, pool.median / other.median);
    table.row(&[
        "Pool::map (default chunksize)".into(),
        format!("{:.0}", pool.first),
        format!("{:.0}", pool.median),
        vs(pool),
    ]);
    table.row(&[
        "sequential loop".into(),
        format!("{:.0}", seq.first),
        format!("{:.0}", seq.median),
        vs(seq),
    ]);
    table.row(&[
        format!("{workers} threads fed by a channel"),
        format!("{threads:.0}"),
        "-".into(),
        format!("{:.2}x, -", pool.first / threads),
    ]);
    table.print(&mut out);
    outln!(out);
    outln!(
        out,
        "One trivial task at a time, {workers} workers (the pool shared by {THREADS} threads, or not; the first run and the median of {ONE_BY_ONE_RUNS}, ratios of medians):"
    );
    let mut table = Table::new(&["variant", "first, tasks/s", "median, tasks/s", "vs imap"]);
    let rates = |r: Rates| [format!("{:.0}", r.first), format!("{:.0}", r.median)];
    let [first, median] = rates(single.imap);
    table.row(&["imap, chunksize 1, one thread".into(), first, median, "1.00x".into()]);
    let [first, median] = rates(single.apply_8_threads);
    table.row(&[
        format!("apply from {THREADS} threads at once"),
        first,
        median,
        format!("{:.2}x (target >= 0.8x)", single.apply_8_threads.median / single.imap.median),
    ]);
    let [first, median] = rates(single.apply_async);
    table.row(&[
        "apply_async x 20,000, then get each".into(),
        first,
        median,
        format!("{:.2}x", single.apply_async.median / single.imap.median),
    ]);
    table.row(&[
        format!("baseline: {THREADS} threads waiting on one thread, no processes"),
        "-".into(),
        format!("{:.0}", single.handoff_8_threads),
        format!("{:.2}x", single.handoff_8_threads / single.imap.median),
    ]);
    table.print(&mut out);
    outln!(
        out,
        "  apply from {THREADS} threads runs {:.2}x the baseline's round trips: each round trip there is a sleep and a wake-up,",
        single.apply_8_threads.median / single.handoff_8_threads
    );
    match single.apply_8_threads_sleeps {
        Some(sleeps) => outln!(
            out,
            "  while a waiting caller yields its CPU before it sleeps: {sleeps:.3} sleeps per task here"
        ),
        None => outln!(out, "  while a waiting caller yields its CPU before it sleeps"),
    }
    outln!(out);
    outln!(out, "200,000 strings of 200 bytes, {workers} workers (the input crosses a wire, or not):");
    let mut table = Table::new(&["variant", "seconds", "vs Pool::map"]);
    table.row(&[
        "Pool::map (encode, copy through the ring)".into(),
        format!("{pool_big:.3}"),
        "1.00x".into(),
    ]);
    table.row(&[
        "fork_map (copy-on-write, nothing encoded)".into(),
        format!("{fork_big:.3}"),
        format!("{:.2}x faster", pool_big / fork_big),
    ]);
    table.print(&mut out);
    outln!(out);
    outln!(out,
        "CPU-bound work (16 prime-counting tasks): sequential {:.3} s, Pool {:.3} s: {cpu_speedup:.2}x on {workers} workers (target >= 1.8x on 2 cores)",
        timings.sequential.as_secs_f64(),
        timings.processes.as_secs_f64()
    );
    out.finish("bench pool")
}
