//! Shared core of the mproxy toolkit
//!
//! mproxy routes byte streams (telemetry lines, files, stdin, TCP feeds)
//! over UDP unicast and multicast with four small stateless binaries:
//! `mproxy-client`, `mproxy-proxy`, `mproxy-reverseproxy` and
//! `mproxy-server`. This crate holds what they share, in layers that only
//! depend downward:
//!
//! | layer | modules | does I/O? |
//! |---|---|---|
//! | input syntax | [`addr`], [`rate`], [`cli`], [`config_file`] | no (except name/interface lookups on request, and reading `--config`) |
//! | logging | [`logging`] (`--log-format`, `--log-file`) | yes (the log file) |
//! | mpx wire format | [`wire`] (checked views, never panics) | no |
//! | mpx protocol core | [`mpx`] (`Sender`, `Receiver`: sans-IO, time passed in) | no |
//! | stream → datagrams | [`pack`], [`rate::Pacer`], [`backoff`] | no: sans-IO, time passed in |
//! | blocking helpers | [`io`] (poll, tee, interruptible sleep) | yes |
//! | sockets | [`net`] (the only user of socket2, raw socket options and socket system calls) | yes |
//! | accounting | [`stats`] | no |
//! | process limits | [`sys`] (descriptor limit) | yes |
//!
//! The binaries are thin: they parse flags into a config, open sockets with
//! [`net`], and move bytes, counting everything they drop.

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod addr;
pub mod backoff;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "cli")]
pub mod config_file;
pub mod io;
#[cfg(feature = "cli")]
pub mod logging;
pub mod mpx;
pub mod net;
pub mod pack;
pub mod rate;
#[cfg(feature = "cli")]
pub mod signal;
pub mod stats;
pub mod sys;
#[cfg(feature = "tls")]
pub mod tls;
pub mod wire;

pub use addr::{AddrError, Endpoint, Interface, PathSpec};
pub use net::{Fanout, NetError, SocketOptions};
