//! `cargo run -p cartwright-catalog-gen` rewrites `bin-packing/src/catalog/generated.rs` from the CSV files in
//! `data/`; `--check` only compares and fails when the committed file has drifted.

use std::process::ExitCode;

fn main() -> ExitCode {
    let check = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--check") => true,
        Some(other) => {
            eprintln!("unknown argument {other:?}; usage: cartwright-catalog-gen [--check]");
            return ExitCode::from(2);
        }
    };
    let root = cartwright_catalog_gen::workspace_root();
    let out_path = root.join(cartwright_catalog_gen::OUTPUT);
    let generated = match cartwright_catalog_gen::generate(&root) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    for note in &generated.notes {
        eprintln!("note: {note}");
    }
    if check {
        let current = std::fs::read_to_string(&out_path).unwrap_or_default();
        if current != generated.source {
            eprintln!("{} is out of date: run `cargo run -p cartwright-catalog-gen`", out_path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("{} is up to date", out_path.display());
    } else if let Err(e) = std::fs::write(&out_path, &generated.source) {
        eprintln!("error: cannot write {}: {e}", out_path.display());
        return ExitCode::FAILURE;
    } else {
        eprintln!("wrote {}", out_path.display());
    }
    ExitCode::SUCCESS
}
