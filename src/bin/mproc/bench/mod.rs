//! `mproc bench`: every benchmark prints its figures next to a baseline
//! measured in the same run, so the ratios mean something on a noisy
//! machine. Absolute figures vary from run to run; compare ratios.

mod compare;
mod measured;
mod pool;
mod process;
mod ring;
mod run;

use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    which: Which,
}

#[derive(Subcommand, Debug)]
enum Which {
    /// Process start+join and typed spawn latency, against Command (fork + exec)
    Process(process::Args),
    /// Ring messages/s and GB/s across two processes, against a pipe
    Ring(ring::Args),
    /// Pool::map tasks/s against a loop and threads; fork_map; CPU speedup
    Pool(pool::Args),
    /// Jobs/s for `mproc run` against `xargs -P` and GNU parallel
    Run(run::Args),
    /// The same operations in C, mproc and Python, in one table
    Compare(compare::Args),
}

impl BenchArgs {
    /// Whether this is `bench pool` (the one benchmark `--timeline` draws).
    pub fn is_pool(&self) -> bool {
        matches!(self.which, Which::Pool(_))
    }
}

pub fn main(args: BenchArgs) -> u8 {
    match args.which {
        Which::Process(a) => process::main(a),
        Which::Ring(a) => ring::main(a),
        Which::Pool(a) => pool::main(a),
        Which::Run(a) => run::main(a),
        Which::Compare(a) => compare::main(a),
    }
}

/// The median of a few measurements (sorts them).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A plain text table with aligned columns.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table { rows: vec![header.iter().map(|h| h.to_string()).collect()] }
    }

    pub fn row(&mut self, cells: &[String]) {
        self.rows.push(cells.to_vec());
    }

    pub fn print(&self, out: &mut crate::Out) {
        let columns = self.rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| self.rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
            .collect();
        for (i, row) in self.rows.iter().enumerate() {
            let line: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(c, cell)| {
                    if c == 0 {
                        format!("{cell:<w$}", w = widths[c])
                    } else {
                        format!("{cell:>w$}", w = widths[c])
                    }
                })
                .collect();
            outln!(out, "  {}", line.join("  ").trim_end());
            if i == 0 {
                outln!(out, "  {}", widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "));
            }
        }
    }
}
