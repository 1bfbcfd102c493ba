//! `cartwright`: the one binary. A thin composition root; each subcommand lives in its own module.
#![forbid(unsafe_code)]

mod cmd;

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cmd::parse();
    cartwright_kube::install_crypto_provider();
    cmd::init_logging(&cli.global);
    match cmd::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stopped early (`cartwright catalog | head`) is not a failure.
        Err(err)
            if err.chain().any(|e| {
                e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
