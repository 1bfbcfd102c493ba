//! Reading a catalog file (the JSON `cartwright catalog --output json` prints) for `plan` and scenarios.

use std::path::Path;

use cartwright_binpack::Catalog;
use cartwright_binpack::catalog::file::CatalogEntry;
use cartwright_binpack::labels;

/// Reads the catalog at `path`. Its region is the one its entries' `topology.kubernetes.io/region` labels
/// name, or `default_region` when they name none.
pub fn read(path: &Path, default_region: &str) -> Result<Catalog, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let entries: Vec<CatalogEntry> =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(&text))
            .map_err(|e| format!("{}: {}: {}", path.display(), e.path(), e.inner()))?;
    let region = entries
        .iter()
        .find_map(|e| e.labels.get(labels::REGION))
        .map_or(default_region, String::as_str)
        .to_owned();
    Catalog::from_entries(&region, &entries).map_err(|e| format!("{}: {e}", path.display()))
}
