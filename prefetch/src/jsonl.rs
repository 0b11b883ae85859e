//! Datasets as JSON lines: `titles.jsonl`, `profiles.jsonl` and `events.jsonl` in one folder,
//! one object per line in the shapes of [`crate::catalog::Title`], [`crate::catalog::Profile`]
//! and [`crate::catalog::EventContent`]. This is how users bring their own catalog.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::catalog::{Catalog, CatalogError};
use crate::generate::Dataset;

pub const TITLES_FILE: &str = "titles.jsonl";
pub const PROFILES_FILE: &str = "profiles.jsonl";
pub const EVENTS_FILE: &str = "events.jsonl";

fn read_lines<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, CatalogError> {
    let io_error = |source| CatalogError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_error)?;
    let mut items = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io_error)?;
        if line.trim().is_empty() {
            continue;
        }
        let item = serde_json::from_str(&line).map_err(|error| CatalogError::Invalid {
            line: index + 1,
            message: format!("{}: {error}", path.display()),
        })?;
        items.push(item);
    }
    Ok(items)
}

fn write_lines<T: Serialize>(path: &Path, items: &[T]) -> std::io::Result<()> {
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    for item in items {
        serde_json::to_writer(&mut out, item)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Loads and indexes the catalog in `dir`.
pub fn load(dir: &Path) -> Result<Catalog, CatalogError> {
    Catalog::build(
        read_lines(&dir.join(TITLES_FILE))?,
        read_lines(&dir.join(PROFILES_FILE))?,
        read_lines(&dir.join(EVENTS_FILE))?,
    )
}

/// Writes a dataset to `dir` (created if needed).
pub fn write(dir: &Path, dataset: &Dataset) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    write_lines(&dir.join(TITLES_FILE), &dataset.titles)?;
    write_lines(&dir.join(PROFILES_FILE), &dataset.profiles)?;
    write_lines(&dir.join(EVENTS_FILE), &dataset.events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{DatasetSize, generate};

    #[test]
    fn a_written_dataset_loads_back_identically() {
        let dir = std::env::temp_dir().join(format!("ringside-jsonl-{}", std::process::id()));
        let dataset = generate(DatasetSize {
            titles: 300,
            profiles: 200,
            seed: 3,
        });
        write(&dir, &dataset).expect("written");
        let catalog = load(&dir).expect("loaded");
        assert_eq!(catalog.titles.len(), 300);
        assert_eq!(catalog.profiles.len(), 200);
        assert_eq!(catalog.titles[17].title, dataset.titles[17]);
        std::fs::write(dir.join(PROFILES_FILE), "{\"id\":\"p\",\"affinities\":{\"Opera\":1},\"recent\":[],\"maturity_limit\":\"ALL\"}\n")
            .expect("written");
        let error = load(&dir).expect_err("unknown genre");
        assert!(error.to_string().contains("Opera"), "{error}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
