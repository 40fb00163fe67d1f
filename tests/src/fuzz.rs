//! A small fuzzing harness that runs on stable Rust: a seeded generator, byte-level mutators,
//! and a time-boxed loop that catches panics and saves the input that caused one.
//!
//! Each target runs for `ENVD_FUZZ_SECS` seconds (default 3: the short run in the suite;
//! `scripts/fuzz` runs longer). `ENVD_FUZZ_SEED` replays a run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// xorshift64*: fast, seedable, good enough to explore inputs.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is replaced: xorshift needs a non-zero state).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// True with probability 1/n.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// One element of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Up to `max - 1` random bytes.
    pub fn some_bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        self.bytes(n)
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Mutates `input` a few times: flips, inserts, deletes, duplicates and splices of
/// interesting bytes (quotes, brackets, newlines, NUL, high bytes).
pub fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    const INTERESTING: &[&[u8]] = &[
        b"\"",
        b"'",
        b"\\",
        b"\n",
        b"\0",
        b"[",
        b"]",
        b"{",
        b"}",
        b"(",
        b")",
        b",",
        b"=",
        b"#",
        b"${",
        b"$${",
        b"}}",
        b"\xff",
        b"\xc3\x28",
        b"-1",
        b"4294967296",
        b"9999999999999999999",
        b"\"\"\"",
        b"None",
        b"True",
        b" ",
        b"\t",
        b"\r\n",
        b"..",
        b"/",
        b"~",
    ];
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = if out.is_empty() {
            0
        } else {
            rng.below(out.len() + 1)
        };
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 => {
                let piece = *rng.pick(INTERESTING);
                out.splice(at..at, piece.iter().copied());
            }
            2 if !out.is_empty() => {
                let end = (at + rng.below(16)).min(out.len());
                out.drain(at.min(end)..end);
            }
            3 if !out.is_empty() => {
                let start = rng.below(out.len());
                let end = (start + rng.below(32)).min(out.len());
                let piece = out[start..end].to_vec();
                out.splice(at..at, piece);
            }
            4 => {
                let n = rng.below(8);
                let piece = rng.bytes(n);
                out.splice(at..at, piece);
            }
            _ => {
                let piece = *rng.pick(INTERESTING);
                out.extend_from_slice(piece);
            }
        }
    }
    out
}

/// Seconds per target.
pub fn budget() -> Duration {
    let secs = std::env::var("ENVD_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(secs)
}

/// The run's seed: `ENVD_FUZZ_SEED` or the clock.
pub fn seed() -> u64 {
    std::env::var("ENVD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// Where inputs that failed are kept.
pub fn failures_dir() -> PathBuf {
    crate::workspace_root().join("target/fuzz-failures")
}

/// Runs `one` on generated inputs for [`budget`]: `make` builds an input from the generator,
/// `one` checks it (returning a description of what is wrong, if anything). A panic or an
/// error fails the test with the seed, the case number and the saved input. Returns the
/// number of inputs tried.
pub fn run<I: AsRef<[u8]>>(
    target: &str,
    mut make: impl FnMut(&mut Rng) -> I,
    mut one: impl FnMut(&[u8]) -> Result<(), String>,
) -> usize {
    let seed = seed();
    let mut rng = Rng::new(seed);
    let end = Instant::now() + budget();
    let mut cases = 0;
    while Instant::now() < end {
        let input = make(&mut rng);
        let bytes = input.as_ref();
        let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| one(bytes)))
            .unwrap_or_else(|p| {
                let what = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(format!("panicked: {what}"))
            });
        if let Err(why) = verdict {
            let dir = failures_dir();
            let _ = std::fs::create_dir_all(&dir);
            let saved = dir.join(format!("{target}-{seed}-{cases}"));
            let _ = std::fs::write(&saved, bytes);
            panic!(
                "fuzz {target}: case {cases} (ENVD_FUZZ_SEED={seed}) failed: {why}\ninput saved to {}",
                saved.display()
            );
        }
        cases += 1;
    }
    eprintln!(
        "fuzz {target}: {cases} inputs in {:?}, seed {seed}",
        budget()
    );
    cases
}
