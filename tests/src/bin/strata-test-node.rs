//! One Strata node for the multi-process tests: reads a TOML configuration file (the only
//! argument) and runs until SIGTERM, or until the test kills it with SIGKILL. With
//! `STRATA_CLOCK_SKEW_FILE` set, its wall clock follows the skew written in that file
//! (`TestNode::skew_clock`).

fn main() -> std::process::ExitCode {
    strata_broker::process::exit_code(run())
}

fn run() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: strata-test-node CONFIG.toml"))?;
    strata_broker::process::init_logging("info");
    if let Some(path) = std::env::var_os("STRATA_CLOCK_SKEW_FILE") {
        strata_storage::clock::follow_skew_file(path.into(), std::time::Duration::from_millis(50));
    }
    let config = strata_broker::Config::from_toml_file(std::path::Path::new(&path))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(strata_broker::run(
        config,
        strata_broker::process::shutdown_signal(),
    ))?;
    Ok(())
}
