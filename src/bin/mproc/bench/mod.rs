//! `mproc bench`: every benchmark prints its figures next to a baseline
//! measured in the same run, so the ratios mean something on a noisy machine.

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
    /// Ring messages/s and GB/s across two processes, against a pipe
    Ring(ring::Args),
    /// Jobs/s for `mproc run` against `xargs -P` and GNU parallel
    Run(run::Args),
}

pub fn main(args: BenchArgs) -> u8 {
    match args.which {
        Which::Ring(a) => ring::main(a),
        Which::Run(a) => run::main(a),
    }
}
