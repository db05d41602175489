//! `mproxy-proxy`: see the library docs of [`mproxy_proxy`]

#![forbid(unsafe_code)]

use std::process::ExitCode;

use mproxy_common::cli::{parse_args, runtime_error, usage_error, Shutdown};
use mproxy_proxy::{Cli, Config, Proxy};

fn main() -> ExitCode {
    let cli: Cli = parse_args();
    if let Some(code) = cli.common.run_keygen() {
        return code;
    }
    if let Some(f) = cli.common.key_files.first() {
        // refused rather than ignored: a key that protects nothing must not
        // look as if it did
        eprintln!(
            "mproxy-proxy: error: --key-file {}: keyed mpx is not supported by mproxy-proxy in this version",
            f.display()
        );
        return ExitCode::from(mproxy_common::cli::EXIT_USAGE);
    }
    cli.common.init_tracing();
    let proxy = match Config::try_from(cli).and_then(Proxy::bind) {
        Ok(p) => p,
        Err(e) => return usage_error(&e),
    };
    let shutdown = match Shutdown::install() {
        Ok(s) => s,
        Err(e) => return runtime_error(&e.into()),
    };
    match proxy.run(&shutdown) {
        Ok(summary) => {
            tracing::info!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => runtime_error(&e),
    }
}
