//! `cartwright crds`: the CustomResourceDefinitions of NodePool, NodeClaim and EC2NodeClass.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

/// Arguments of `cartwright crds`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write one file per CRD (`<plural>.<group>.yaml`) into this folder instead of printing them all.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
}

/// Prints (or writes) the CRDs.
pub fn run(args: Args) -> anyhow::Result<()> {
    let crds = cartwright_api::crds::all();
    match &args.output_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for crd in &crds {
                let path = dir.join(cartwright_api::crds::file_name(crd));
                let yaml = cartwright_api::crds::to_yaml(crd).map_err(anyhow::Error::msg)?;
                std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
                println!("wrote {}", path.display());
            }
        }
        None => {
            let mut out = std::io::stdout().lock();
            for crd in &crds {
                writeln!(out, "---")?;
                write!(out, "{}", cartwright_api::crds::to_yaml(crd).map_err(anyhow::Error::msg)?)?;
            }
        }
    }
    Ok(())
}
