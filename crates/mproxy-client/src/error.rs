//! What can stop a client, grouped by who is at fault

use std::io;

/// An error of [`crate::Client::new`] or [`crate::Client::run`]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The settings are contradictory or out of range (bad input)
    #[error("{0}")]
    Config(String),
    /// The input cannot be opened or is not readable data (bad input)
    #[error("--path {path}: {reason}")]
    Input {
        /// The path as given
        path: String,
        /// What is wrong with it
        reason: String,
    },
    /// A destination does not resolve, or its socket cannot be set up
    /// (bad input)
    #[error("--server-addr {spec}: {reason}")]
    Destination {
        /// The destination as given
        spec: String,
        /// What went wrong
        reason: String,
    },
    /// Reading the input failed during the run (runtime fault)
    #[error("reading --path {path}")]
    Read {
        /// The path as given
        path: String,
        /// The OS error
        #[source]
        source: io::Error,
    },
    /// The event loop could not be set up or failed (runtime fault)
    #[error("event loop: {what}")]
    Poll {
        /// The step that failed
        what: &'static str,
        /// The OS error
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// True for errors caused by the settings or the environment they
    /// name (exit code 2), false for faults during the run (exit code 1)
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::Config(_) | Self::Input { .. } | Self::Destination { .. }
        )
    }
}
