//! A short proptest per target: arbitrary bytes, and near-valid inputs (a corpus seed with a few
//! bytes replaced, inserted or removed, or cut short). 256 cases per test by default;
//! `PROPTEST_CASES=100000` makes it a long run without AFL++.

use fuzz_bodies::fuzz_dir;
use proptest::prelude::*;

/// One edit of a seed: where (a fraction of its length), what, and which kind.
#[derive(Debug, Clone)]
struct Edit {
    at: u16,
    byte: u8,
    kind: u8,
}

fn edit_strategy() -> impl Strategy<Value = Edit> {
    (any::<u16>(), any::<u8>(), 0u8..4).prop_map(|(at, byte, kind)| Edit { at, byte, kind })
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let folder = fuzz_dir().join("corpus").join(target);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(folder)
        .expect("corpus folder")
        .map(|entry| std::fs::read(entry.expect("directory entry").path()).expect("seed"))
        .collect();
    seeds.sort();
    seeds
}

/// Applies `edits` to a copy of `seed`; the structure survives enough to pass the first checks of
/// a decoder, which random bytes rarely do.
fn near(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for edit in edits {
        let at = if data.is_empty() {
            0
        } else {
            usize::from(edit.at) % data.len()
        };
        match edit.kind {
            0 if !data.is_empty() => data[at] = edit.byte,
            1 => data.insert(at, edit.byte),
            2 if !data.is_empty() => {
                data.remove(at);
            }
            _ => data.truncate(at),
        }
    }
    data
}

macro_rules! target_properties {
    ($($module:ident => $body:path),* $(,)?) => {$(
        mod $module {
            use super::*;

            proptest! {
                #[test]
                fn arbitrary_bytes_return(data in proptest::collection::vec(any::<u8>(), 0..512)) {
                    $body(&data);
                }

                #[test]
                fn near_valid_inputs_return(
                    pick in any::<usize>(),
                    edits in proptest::collection::vec(edit_strategy(), 1..6),
                ) {
                    let seeds = seeds(stringify!($module));
                    let seed = &seeds[pick % seeds.len()];
                    $body(&near(seed, &edits));
                }
            }
        }
    )*};
}

target_properties! {
    client_frame => fuzz_bodies::client_frame,
    admin_body => fuzz_bodies::admin_body,
    device_token => fuzz_bodies::device_token,
    admin_token => fuzz_bodies::admin_token,
    graphql_query => fuzz_bodies::graphql_query,
    page_blob => fuzz_bodies::page_blob,
    kafka_record => fuzz_bodies::kafka_record,
}
