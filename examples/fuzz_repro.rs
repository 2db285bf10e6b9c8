//! Runs one fuzz target's body on one input file, to reproduce a finding:
//! `cargo run --example fuzz_repro -- tokenizer target/fuzz-smoke/tokenizer.bin`
//! (targets: see `webpeft::fuzzing::TARGETS`). Prints "ok" when it returns.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, target, path] = &args[..] else {
        eprintln!("usage: fuzz_repro TARGET FILE");
        std::process::exit(2);
    };
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let Some((_, body)) = webpeft::fuzzing::TARGETS.iter().find(|(n, _)| n == target) else {
        eprintln!("no target {target:?}");
        std::process::exit(2);
    };
    body(&data);
    println!("ok");
}
