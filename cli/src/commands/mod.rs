//! One module per `tally` subcommand: its flags (clap) and what it runs.

pub(crate) mod demo;
pub(crate) mod edge;
pub(crate) mod history;
pub(crate) mod keys;
pub(crate) mod merger;
pub(crate) mod query;
pub(crate) mod token;
