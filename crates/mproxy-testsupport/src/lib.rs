//! Test-only support code for the mproxy workspace.
//!
//! Every test that opens sockets goes through this crate so that traffic stays
//! on loopback or inside a network namespace that the test itself created:
//!
//! * [`in_netns`] runs a closure inside a fresh, private network namespace
//!   (loopback up, multicast enabled on `lo`, `224.0.0.0/4` routed to `lo`),
//!   and [`Netns`] adds veth pairs, runs `ip`/`tc` inside it and shapes links.
//! * [`bin`] finds the workspace's own binaries, [`spawn`] starts them under a
//!   [`ChildGuard`] that kills them on drop and keeps their stderr.
//! * [`wait_until`], [`wait_for_udp_bound`], [`wait_for_tcp_bound`] and
//!   [`wait_for_tcp_listen`] are bounded waits (they never wait forever).
//! * [`TempDir`], [`random_file`], [`line_file`] and [`assert_files_equal`]
//!   make and compare deterministic test data.
//! * [`set_multicast_if_v4`] / [`set_multicast_if_v6`] pick the interface
//!   multicast leaves through.
//! * [`LossyRelay`] relays UDP datagrams with seeded drop / duplicate /
//!   reorder ([`RelayConfig`]) and records, per mpx stream, what an mpx
//!   receiver should deliver and count ([`RelayRecord`], [`StreamRecord`]).
//! * [`socat`] and [`mproxy_peer`] locate external peers for interoperability
//!   tests; [`skip`] reports a skipped test visibly.
//!
//! This crate is test code: failures are reported by panicking with a message
//! that says what went wrong.

#![deny(missing_docs)]
// Panicking is how test-support code reports failure.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

mod data;
mod host;
mod netns;
mod peers;
mod process;
mod relay;
mod sock;
#[cfg(test)]
mod tests;
mod wait;

pub use data::{assert_files_equal, line_file, random_file, SplitMix64, TempDir};
pub use host::{Link, PeerHost};
pub use mproxy_common::mpx::StreamKey;
pub use netns::{current_netns_id, in_netns, netns_available, Netns, VethPair, REEXEC_ENV};
pub use peers::{mproxy_peer, skip, socat, MPROXY_PEER_VERSION};
pub use process::{bin, spawn, spawn_with_stdin, ChildGuard};
pub use relay::{
    Decision, FrameRecord, Impairment, LossyRelay, RelayConfig, RelayRecord, StreamRecord,
};
pub use sock::{set_multicast_if_v4, set_multicast_if_v6};
pub use wait::{
    is_tcp_listening, is_udp_bound, udp_bound_count, wait_for_tcp_bound, wait_for_tcp_listen,
    wait_for_udp_bound, wait_for_udp_bound_more, wait_until,
};
