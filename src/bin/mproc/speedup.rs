//! `mproc speedup`: the processes-vs-threads lesson, measured. The same
//! CPU-bound function runs sequentially, on N processes through the Pool,
//! and on N threads; every figure printed is measured in this run.

use std::time::{Duration, Instant};

use clap::Args;

#[derive(Args, Debug)]
pub struct SpeedupArgs {
    /// Worker processes and threads to use [default: number of CPUs]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    workers: Option<u32>,
    /// How many tasks to split the work into
    #[arg(long, value_name = "M", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    tasks: u32,
    /// Numbers each task checks for primality (the size of one task)
    #[arg(long, value_name = "W", default_value_t = 500_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    work: u64,
}

/// Counts the primes in `[start, start + len)` by trial division: pure
/// CPU, no memory traffic, the kind of work processes and threads both
/// speed up.
pub fn count_primes((start, len): (u64, u64)) -> u64 {
    (start..start + len).filter(|&n| is_prime(n)).count() as u64
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// The measured times of one speedup run.
pub struct Timings {
    pub sequential: Duration,
    pub processes: Duration,
    pub threads: Duration,
    pub primes: u64,
}

/// Runs the three variants on `ranges`; `Err` names what failed.
pub fn measure(workers: usize, ranges: &[(u64, u64)]) -> Result<Timings, String> {
    let t = Instant::now();
    let sequential_count: u64 = ranges.iter().map(|&r| count_primes(r)).sum();
    let sequential = t.elapsed();

    // The pool is made before the clock starts, as a long-lived pool would be.
    let pool = mproc::Pool::new(workers).map_err(|e| format!("pool: {e}"))?;
    let t = Instant::now();
    let counts = pool.map_chunked(count_primes, ranges.to_vec(), 1).map_err(|e| format!("pool map: {e}"))?;
    let processes = t.elapsed();
    drop(pool);
    let process_count: u64 = counts.iter().sum();

    let t = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let thread_count: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut sum = 0;
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&r) = ranges.get(i) else { return sum };
                        sum += count_primes(r);
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    let threads = t.elapsed();
    if process_count != sequential_count || thread_count != sequential_count {
        return Err(format!("counts differ: {sequential_count} / {process_count} / {thread_count}"));
    }
    Ok(Timings { sequential, processes, threads, primes: sequential_count })
}

pub fn main(args: SpeedupArgs) -> u8 {
    let mut out = crate::Out::new();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = args.workers.map_or(cpus, |w| w as usize);
    let ranges: Vec<(u64, u64)> = (0..args.tasks as u64).map(|i| (i * args.work, args.work)).collect();
    let timings = match measure(workers, &ranges) {
        Ok(t) => t,
        Err(e) => {
            crate::complain(&format!("speedup: {e}"));
            return crate::EXIT_FAILURE;
        }
    };
    let secs = |d: Duration| d.as_secs_f64();
    let speedup = |d: Duration| secs(timings.sequential) / secs(d).max(1e-9);
    outln!(
        out,
        "CPU-bound work: counting primes below {} in {} tasks, {} workers, {} CPUs",
        args.tasks as u64 * args.work,
        args.tasks,
        workers,
        cpus
    );
    outln!(out, "  {:<22} {:>9.3} s  {:>6.2}x", "sequential", secs(timings.sequential), 1.0);
    outln!(
        out,
        "  {:<22} {:>9.3} s  {:>6.2}x",
        format!("{workers} processes (Pool)"),
        secs(timings.processes),
        speedup(timings.processes)
    );
    outln!(
        out,
        "  {:<22} {:>9.3} s  {:>6.2}x",
        format!("{workers} threads"),
        secs(timings.threads),
        speedup(timings.threads)
    );
    outln!(out, "  all three found {} primes", timings.primes);
    let ratio = secs(timings.processes) / secs(timings.threads).max(1e-9);
    outln!(
        out,
        "In Rust there is no GIL: threads speed CPU-bound work up as well as processes do. \
         Here the processes took {ratio:.2}x the threads' time: that is the price of isolation \
         (fork, results copied through shared memory), and it buys tasks that can crash \
         without taking the program down."
    );
    out.finish("speedup")
}
