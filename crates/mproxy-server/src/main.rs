//! `mproxy-server`: see the library docs of [`mproxy_server`]

#![forbid(unsafe_code)]

use std::process::ExitCode;

use mproxy_common::cli::{parse_args, runtime_error, usage_error, Shutdown};
use mproxy_server::{Cli, Config, Server};

fn main() -> ExitCode {
    let cli: Cli = parse_args();
    cli.common.init_tracing();
    let server = match Config::try_from(cli).and_then(Server::bind) {
        Ok(s) => s,
        Err(e) => return usage_error(&e),
    };
    let shutdown = match Shutdown::install() {
        Ok(s) => s,
        Err(e) => return runtime_error(&e.into()),
    };
    match server.run(&shutdown) {
        Ok(summary) => {
            tracing::info!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => runtime_error(&e),
    }
}
