//! `mproxy-client`: see the library docs of [`mproxy_client`]

use std::process::ExitCode;

use mproxy_client::{Cli, Client, Config};
use mproxy_common::cli::{parse_args, runtime_error, usage_error, Shutdown};

fn main() -> ExitCode {
    let cli: Cli = parse_args();
    cli.common.init_tracing();
    let client = match Config::try_from(cli).and_then(Client::new) {
        Ok(c) => c,
        Err(e) => return usage_error(&e),
    };
    let shutdown = match Shutdown::install() {
        Ok(s) => s,
        Err(e) => return runtime_error(&e.into()),
    };
    match client.run(&shutdown) {
        Ok(summary) => {
            tracing::info!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => runtime_error(&e),
    }
}
