//! One AFL++ binary for every target: `ringside-fuzz <target>` runs the body of that target
//! (see `fuzz_bodies::TARGETS`) on each input AFL++ feeds it; `ringside-fuzz --list` prints
//! the targets' names. `scripts/fuzz` builds it with `cargo afl build` and runs it.

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(name) = std::env::args().nth(1) else {
        eprintln!("usage: ringside-fuzz <target> | --list");
        return ExitCode::FAILURE;
    };
    if name == "--list" {
        for target in fuzz_bodies::TARGETS {
            println!("{}", target.name);
        }
        return ExitCode::SUCCESS;
    }
    let Some(target) = fuzz_bodies::target(&name) else {
        eprintln!("unknown target {name:?}; ringside-fuzz --list names them");
        return ExitCode::FAILURE;
    };
    afl::fuzz!(|data: &[u8]| {
        (target.body)(data);
    });
    ExitCode::SUCCESS
}
