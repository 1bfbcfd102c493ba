//! `cartwright simulate`: offline capacity planning. The simulator itself is not built yet.

/// Arguments of `cartwright simulate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A scenario file; without one, the embedded default scenario runs.
    pub scenario: Option<std::path::PathBuf>,
}

/// Says plainly that the simulator does not exist yet, and what to use meanwhile.
pub fn run(args: Args) -> anyhow::Result<()> {
    let what = match &args.scenario {
        Some(path) => format!("the scenario {}", path.display()),
        None => "the embedded default scenario".to_owned(),
    };
    println!(
        "The simulator is not built yet, so {what} was not run: no cost, utilisation or pending-time figures \
         were produced.\nWhat works today: `cartwright catalog --region us-east-1` prints the instance catalog \
         the simulator will plan over."
    );
    Ok(())
}
