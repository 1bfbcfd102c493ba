//! The command-line surface: subcommands, their output formats and their errors.

mod catalog;
mod convert;
mod crds;
mod plan;
mod simulate;

use std::process::{Command, Output};

/// Runs `cartwright ARGS...` and returns its output.
pub fn cartwright(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cartwright")).args(args).output().expect("run cartwright")
}

/// Runs `cartwright ARGS...`, expects success, and returns stdout.
pub fn expect_success(args: &[&str]) -> String {
    let out = cartwright(args);
    assert!(out.status.success(), "cartwright {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Runs `cartwright ARGS...`, expects failure, and returns stderr.
pub fn expect_failure(args: &[&str]) -> String {
    let out = cartwright(args);
    assert!(!out.status.success(), "cartwright {args:?} unexpectedly succeeded");
    String::from_utf8(out.stderr).expect("utf-8 stderr")
}
