//! `mproxy-client`: see the library docs of [`mproxy_client`]

use std::process::ExitCode;

use mproxy_client::{Cli, Client, Config};
use mproxy_common::cli::{exit_with, parse_args, Shutdown, EXIT_FAILURE, EXIT_USAGE};

fn main() -> ExitCode {
    let cli: Cli = parse_args();
    if let Some(code) = cli.common.run_keygen() {
        return code;
    }
    cli.common.init_tracing();
    let client = match Config::try_from(cli).and_then(Client::new) {
        Ok(c) => c,
        Err(e) => return exit_with(EXIT_USAGE, &e),
    };
    let shutdown = match Shutdown::install() {
        Ok(s) => s,
        Err(e) => return exit_with(EXIT_FAILURE, &e),
    };
    match client.run(&shutdown) {
        Ok(summary) => {
            let code = summary.exit_code();
            if code == 0 {
                tracing::info!("{summary}");
            } else {
                tracing::warn!("{summary}");
            }
            ExitCode::from(code)
        }
        Err(e) if e.is_bad_input() => exit_with(EXIT_USAGE, &e),
        Err(e) => exit_with(EXIT_FAILURE, &e),
    }
}
