//! `mproxy-server`: see the library docs of [`mproxy_server`]

#![forbid(unsafe_code)]

use std::process::ExitCode;

use mproxy_common::cli::{parse_args, runtime_error, usage_error, Shutdown, EXIT_FAILURE};
use mproxy_server::{Cli, Config, Server};

fn main() -> ExitCode {
    let cli: Cli = parse_args();
    if let Some(code) = cli.common.run_keygen() {
        return code;
    }
    if let Some(f) = cli.common.key_files.first() {
        // refused rather than ignored: a key that protects nothing must not
        // look as if it did
        eprintln!(
            "mproxy-server: error: --key-file {}: keyed mpx is not supported by mproxy-server in this version",
            f.display()
        );
        return ExitCode::from(mproxy_common::cli::EXIT_USAGE);
    }
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
        Ok(summary) if summary.output_closed => {
            // the reader of stdout went away (`| head`): a fault, after the summary
            tracing::error!("{summary}");
            ExitCode::from(EXIT_FAILURE)
        }
        Ok(summary) => {
            tracing::info!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => runtime_error(&e),
    }
}
