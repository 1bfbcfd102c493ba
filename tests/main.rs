//! End-to-end tests of the `cartwright` binary: each runs the real executable, as a user would.

mod apiserver;
mod aws;
mod cli;
mod controller;
mod deploy;
