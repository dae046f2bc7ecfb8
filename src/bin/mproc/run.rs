//! `mproc run` (being written).
#[derive(clap::Args, Debug)]
pub struct RunArgs {}
pub fn main(_args: RunArgs) -> u8 {
    1
}
