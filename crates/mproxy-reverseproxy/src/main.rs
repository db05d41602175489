//! `mproxy-reverseproxy`: see the library docs of [`mproxy_reverseproxy`]

use std::process::ExitCode;

use mproxy_common::cli::{parse_args, runtime_error, usage_error, Shutdown};
use mproxy_reverseproxy::{Cli, Config, Error, ReverseProxy};

fn main() -> ExitCode {
    let cli: Cli = parse_args();
    if let Some(code) = cli.common.run_keygen() {
        return code;
    }
    if let Some(f) = cli.common.key_files.first() {
        // refused rather than ignored: a key that protects nothing must not
        // look as if it did
        eprintln!(
            "mproxy-reverseproxy: error: --key-file {}: keyed mpx is not supported by mproxy-reverseproxy in this version",
            f.display()
        );
        return ExitCode::from(mproxy_common::cli::EXIT_USAGE);
    }
    cli.common.init_tracing();
    let config = match Config::try_from(cli) {
        Ok(c) => c,
        Err(e) => return exit(e),
    };
    let shutdown = match Shutdown::install() {
        Ok(s) => s,
        Err(e) => return runtime_error(&e.into()),
    };
    // binding happens here: a port in use or a failed join is bad input
    match ReverseProxy::start(config, shutdown).and_then(ReverseProxy::run) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => exit(e),
    }
}

/// One line on stderr; exit 2 for bad input, 1 for a fault at run time
fn exit(e: Error) -> ExitCode {
    if e.is_bad_input() {
        usage_error(&e.into())
    } else {
        runtime_error(&e.into())
    }
}
