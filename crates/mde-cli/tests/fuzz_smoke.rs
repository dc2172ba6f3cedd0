//! Short seeded fuzz runs of every parser that takes outside data, in the normal test suite.
//!
//! The long coverage-guided runs use cargo-fuzz on nightly (`fuzz/`, numbers in
//! docs/RELIABILITY.md); this test calls the same harness functions (`fuzz/harness.rs`) on the
//! committed seeds (`fuzz/seeds/<target>/`) and on a fixed number of seeded mutations of them
//! (bit flips, truncations, byte and token insertions, chunk duplication, splices of two seeds).
//! A panic in any parser fails the test and prints the input that caused it, written to a file.
#[path = "../../../fuzz/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};

/// Mutations per seed file. A few thousand inputs per target in all, a few seconds each.
const ROUNDS: usize = 400;

/// Tokens that tend to reach deeper into the parsers than random bytes.
const TOKENS: &[&[u8]] = &[
    b"\t",
    b"\n",
    b"\r\n",
    b"\"",
    b"\"\"",
    b"NaN",
    b"nan",
    b"-1",
    b"0",
    b"1e309",
    b"18446744073709551616",
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b":",
    b"null",
    b"true",
    b"=",
    b"[[",
    b"]]",
    b"\\",
    b"\xff\xfe",
    b"Question:",
    b"Choices:",
    b"Answer:",
    b"(A)",
    b"(Z)",
    b"[0.1, 0.2, 0.3, 0.4]",
    b"PK\x03\x04",
    b"\x80\x02",
    b"num_attention_heads = 0",
    b"steps = 0",
    b"..",
    b"/etc/passwd",
];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic, no dependency.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 => v.truncate(at),
            2 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                v.splice(at..at, t.iter().copied());
            }
            3 if !v.is_empty() => {
                let len = rng.below(64.min(v.len() - at.min(v.len())) + 1);
                let end = (at + len).min(v.len());
                let chunk = v[at.min(end)..end].to_vec();
                v.splice(at..at, chunk);
            }
            4 => {
                let cut = rng.below(other.len() + 1);
                v.truncate(at);
                v.extend_from_slice(&other[cut..]);
            }
            5 if !v.is_empty() => {
                let end = (at + rng.below(16)).min(v.len());
                v.drain(at.min(end)..end);
            }
            _ => {
                let b = rng.next() as u8;
                v.insert(at.min(v.len()), b);
            }
        }
    }
    v
}

fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

fn run_target(name: &str, f: fn(&[u8])) {
    let seeds = seeds(name);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
    let check = |input: &[u8], what: &str| {
        if std::panic::catch_unwind(|| f(input)).is_err() {
            let p = std::env::temp_dir().join(format!("mde-fuzz-{name}-crash.bin"));
            std::fs::write(&p, input).unwrap();
            panic!(
                "{name}: the parser panicked on {what}; input written to {}",
                p.display()
            );
        }
    };
    for (path, s) in &seeds {
        check(s, &format!("seed {}", path.display()));
    }
    for round in 0..ROUNDS {
        for (i, (path, s)) in seeds.iter().enumerate() {
            let other = &seeds[(i + 1 + round) % seeds.len()].1;
            let input = mutate(&mut rng, s, other);
            check(
                &input,
                &format!("mutation {round} of seed {}", path.display()),
            );
        }
    }
}

#[test]
fn fuzz_smoke_tsv() {
    run_target("tsv", harness::tsv);
}

#[test]
fn fuzz_smoke_bench_json() {
    run_target("bench_json", harness::bench_json);
}

#[test]
fn fuzz_smoke_teacher_reply() {
    run_target("teacher_reply", harness::teacher_reply);
}

#[test]
fn fuzz_smoke_weights() {
    run_target("weights", harness::weights);
}

#[test]
fn fuzz_smoke_toml_config() {
    run_target("toml_config", harness::toml_config);
}

#[test]
fn every_harness_target_has_a_test() {
    let names: Vec<&str> = harness::TARGETS.iter().map(|t| t.0).collect();
    assert_eq!(
        names,
        [
            "tsv",
            "bench_json",
            "teacher_reply",
            "weights",
            "toml_config"
        ]
    );
}
