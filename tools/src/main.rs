//! `strata`: the command-line tool. See `strata --help`.

use clap::Parser;
use strata_broker::process;

/// mimalloc keeps freed memory for reuse: glibc returns large request buffers to the kernel
/// and takes fresh zeroed pages back for the next request, which cost the broker about 40%
/// of its CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    process::exit_code(run())
}

fn run() -> anyhow::Result<()> {
    let cli = strata_tools::Cli::parse();
    process::init_logging("warn");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(strata_tools::run(cli))
}
