//! A short fuzz run of every fuzz target on the stable toolchain, for CI.
//! Each target first runs its seed corpus (`fuzz/corpus/<target>/`) and the
//! regression inputs (`tests/fixtures/fuzz/<target>_*.bin`), then seeded
//! random mutations of them (bit flips, byte values JSON cares about, range
//! deletes, duplicates and inserts, splices, truncation) for
//! `WEBPEFT_FUZZ_SECONDS` (default 5) seconds. A panic fails the test and
//! leaves the input in `target/fuzz-smoke/<target>.bin`. Coverage-guided runs
//! with sanitizers are cargo-fuzz's job (`scripts/fuzz.sh`); this catches
//! regressions on every CI run without a nightly toolchain.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use webpeft::fuzzing::TARGETS;
use webpeft::util::rng::Rng;

const MAX_LEN: usize = 1 << 20;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The seed corpus and regression inputs of `target`.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut read_dir = |dir: &Path, prefix: Option<&str>| {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if p.is_file() && prefix.is_none_or(|pre| name.starts_with(pre)) {
                out.push(std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())));
            }
        }
    };
    read_dir(&root().join("fuzz/corpus").join(target), None);
    read_dir(&root().join("tests/fixtures/fuzz"), Some(&format!("{target}_")));
    out
}

/// One to four random edits of `input`, sometimes spliced with `other`.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    const INTERESTING: &[u8] = b"\x00\xff\x7f\x80\"{}[],:0-9e.\\\n nulltrue";
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        let at = rng.below(len + 1);
        let span = 1 + rng.below(64.min(len.max(1)));
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let end = (at + span).min(len);
                v.drain(at..end);
            }
            3 => {
                let end = (at + span).min(len);
                let piece = v[at..end].to_vec();
                v.splice(at..at, piece);
            }
            4 => {
                let bytes: Vec<u8> = (0..span).map(|_| rng.below(256) as u8).collect();
                v.splice(at..at, bytes);
            }
            5 if !other.is_empty() => {
                let from = rng.below(other.len());
                let end = (from + span * 8).min(other.len());
                v.splice(at..at, other[from..end].iter().copied());
            }
            6 => v.truncate(at),
            _ => {
                // A decimal number where a digit run was: sizes and offsets.
                let n = [0u64, 1, 255, 65535, 1 << 31, u32::MAX as u64, u64::MAX][rng.below(7)];
                v.splice(at..at, n.to_string().into_bytes());
            }
        }
    }
    v.truncate(MAX_LEN);
    v
}

fn run(target: &str) {
    let body = TARGETS.iter().find(|(n, _)| *n == target).map(|(_, f)| *f).expect("a known target");
    let seconds: u64 = std::env::var("WEBPEFT_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let corpus = seeds(target);
    assert!(!corpus.is_empty(), "{target} has no seeds");
    let attempt = |input: &[u8]| {
        if std::panic::catch_unwind(|| body(input)).is_err() {
            let dir = root().join("target/fuzz-smoke");
            let _ = std::fs::create_dir_all(&dir);
            let path = dir.join(format!("{target}.bin"));
            let _ = std::fs::write(&path, input);
            panic!("fuzz target {target} panicked on {} bytes, saved to {}", input.len(), path.display());
        }
    };
    for input in &corpus {
        attempt(input);
    }
    let mut rng = Rng::new(0x5eed ^ target.len() as u64);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut runs = 0u64;
    let empty = Vec::new();
    while Instant::now() < deadline {
        let base = if corpus.is_empty() { &empty } else { &corpus[rng.below(corpus.len())] };
        let other = if corpus.is_empty() { &empty } else { &corpus[rng.below(corpus.len())] };
        attempt(&mutate(&mut rng, base, other));
        runs += 1;
    }
    eprintln!("fuzz smoke {target}: {} seeds, {runs} mutated inputs in {seconds} s, no panic", corpus.len());
}

#[test]
fn safetensors() {
    run("safetensors");
}

#[test]
fn checkpoint() {
    run("checkpoint");
}

#[test]
fn config_json() {
    run("config_json");
}

#[test]
fn tokenizer() {
    run("tokenizer");
}

#[test]
fn chat_template() {
    run("chat_template");
}

#[test]
fn adapter_config() {
    run("adapter_config");
}

#[test]
fn jsonl() {
    run("jsonl");
}

#[test]
fn training_checkpoint() {
    run("training_checkpoint");
}

#[test]
fn every_target_has_a_test_here() {
    let names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    let source = include_str!("fuzz_smoke.rs");
    for n in &names {
        assert!(source.contains(&format!("run(\"{n}\")")), "no smoke test for {n}");
    }
    let bins = std::fs::read_dir(root().join("fuzz/fuzz_targets")).unwrap().count();
    assert_eq!(bins, names.len(), "fuzz/fuzz_targets and fuzzing::TARGETS list the same targets");
}
