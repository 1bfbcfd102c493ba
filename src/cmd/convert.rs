//! `cartwright convert`: Karpenter v1 manifests rewritten for Cartwright (apiVersions and the NodeClass
//! group; comments and everything else kept).

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::Context;

/// Arguments of `cartwright convert`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Karpenter YAML files (multi-document); `-` reads standard input. Converted YAML goes to standard
    /// output, documents in input order.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for (i, path) in args.files.iter().enumerate() {
        let (name, text) = if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).context("reading standard input")?;
            ("<stdin>".to_owned(), text)
        } else {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            (path.display().to_string(), text)
        };
        let conversion = cartwright_api::convert::convert(&name, &text)?;
        if i > 0 {
            writeln!(out, "---")?;
        }
        write!(out, "{}", conversion.text)?;
        for object in &conversion.converted {
            eprintln!("converted {object} ({name})");
        }
    }
    Ok(())
}
