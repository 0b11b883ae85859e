//! The default-run face of the fuzz targets: every seed of `fuzz/corpus/<target>/` and every
//! committed finding of `fuzz/regressions/<target>/` goes through the target's body, which must
//! return (the decoder answered `Ok` or a typed error) without panicking and within a generous
//! bound that only a pathology (the "slow input" kind of finding) exceeds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fuzz_bodies::{TARGETS, Target, fuzz_dir};

/// Far above what any input of these decoders takes, even unoptimized on a loaded machine.
const INPUT_TIME_BOUND: Duration = Duration::from_secs(10);

fn inputs(folder: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .filter(|path| {
            !path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with('.'))
        })
        .collect();
    files.sort();
    files
}

fn replay(target: Target, kind: &str) -> usize {
    let folder = fuzz_dir().join(kind).join(target.name);
    let files = inputs(&folder);
    for file in &files {
        let data = std::fs::read(file).expect("readable input");
        let started = Instant::now();
        (target.body)(&data);
        let took = started.elapsed();
        assert!(
            took < INPUT_TIME_BOUND,
            "{} took {took:?} on {}",
            target.name,
            file.display()
        );
    }
    files.len()
}

fn replay_target(name: &str) {
    let target = fuzz_bodies::target(name).expect("a known target");
    let seeds = replay(target, "corpus");
    assert!(seeds > 0, "fuzz/corpus/{name}/ holds seeds");
    replay(target, "regressions");
}

#[test]
fn client_frame_inputs_replay() {
    replay_target("client_frame");
}

#[test]
fn admin_body_inputs_replay() {
    replay_target("admin_body");
}

#[test]
fn device_token_inputs_replay() {
    replay_target("device_token");
}

#[test]
fn admin_token_inputs_replay() {
    replay_target("admin_token");
}

#[test]
fn graphql_query_inputs_replay() {
    replay_target("graphql_query");
}

#[test]
fn page_blob_inputs_replay() {
    replay_target("page_blob");
}

#[test]
fn kafka_record_inputs_replay() {
    replay_target("kafka_record");
}

/// A folder under `fuzz/corpus/` or `fuzz/regressions/` that names no target would never be
/// replayed: refuse it, and a target without its folders.
#[test]
fn every_input_folder_belongs_to_a_target() {
    for kind in ["corpus", "regressions"] {
        let root = fuzz_dir().join(kind);
        for entry in std::fs::read_dir(&root).expect("fuzz folder") {
            let path = entry.expect("directory entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            assert!(
                TARGETS.iter().any(|target| target.name == name),
                "fuzz/{kind}/{name} names no target"
            );
        }
        for target in TARGETS {
            assert!(
                root.join(target.name).is_dir(),
                "fuzz/{kind}/{} is missing",
                target.name
            );
        }
    }
}
