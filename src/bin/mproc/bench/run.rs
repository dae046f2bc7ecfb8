//! `mproc bench run` (being written).
#[derive(clap::Args, Debug)]
pub struct Args {}
pub fn main(_args: Args) -> u8 {
    1
}
