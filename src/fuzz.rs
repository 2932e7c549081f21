//! Seeded randomized tests: every one takes its seed and iteration count
//! from [`Fuzz::new`], which a failing run names so that it can be replayed.
//!
//! The defaults are fixed, so CI runs the same cases every time in a few
//! seconds of a debug build. `APISYNC_FUZZ_SEED=N` and
//! `APISYNC_FUZZ_ITERATIONS=N` explore further:
//!
//! ```text
//! APISYNC_FUZZ_SEED=$RANDOM APISYNC_FUZZ_ITERATIONS=200000 cargo test --lib fuzz
//! ```

/// A seeded generator that prints how to replay its test if the test panics.
pub(crate) struct Fuzz {
    pub rng: fastrand::Rng,
    pub iterations: usize,
    name: &'static str,
    seed: u64,
}

impl Fuzz {
    /// The generator for test `name`: `APISYNC_FUZZ_SEED` or `seed`, for
    /// `APISYNC_FUZZ_ITERATIONS` or `iterations` rounds.
    pub(crate) fn new(name: &'static str, seed: u64, iterations: usize) -> Self {
        let from_env = |var: &str| std::env::var(var).ok().and_then(|v| v.trim().parse().ok());
        let seed = from_env("APISYNC_FUZZ_SEED").unwrap_or(seed);
        let iterations =
            from_env("APISYNC_FUZZ_ITERATIONS").map_or(iterations, |n: u64| n as usize);
        Self {
            rng: fastrand::Rng::with_seed(seed),
            iterations,
            name,
            seed,
        }
    }

    /// One of `items`.
    pub(crate) fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.rng.usize(0..items.len())]
    }

    /// `text` spoilt a few times: bytes flipped, inserted (mostly JSON and
    /// TOML punctuation, NUL, bytes that are not UTF-8), removed, repeated,
    /// or the text cut short.
    pub(crate) fn mutate(&mut self, text: &[u8]) -> Vec<u8> {
        const INSERTS: [&[u8]; 24] = [
            b"\"",
            b"\\",
            b"{",
            b"}",
            b"[",
            b"]",
            b",",
            b":",
            b"=",
            b"\n",
            b"\0",
            b"\xff",
            b"\xc3",
            b"\xed\xa0\x80",
            b"-",
            b".",
            b"e",
            b"9",
            b"1e999",
            b"\\u",
            b"\\ud800",
            b"${",
            b"'''",
            "😀".as_bytes(),
        ];
        let mut out = text.to_vec();
        for _ in 0..self.rng.usize(1..4) {
            let at = self.rng.usize(0..=out.len());
            match self.rng.u8(0..6) {
                0 if at < out.len() => out[at] ^= 1 << self.rng.u8(0..8),
                1 if at < out.len() => {
                    let end = (at + self.rng.usize(1..8)).min(out.len());
                    out.drain(at..end);
                }
                2 if at < out.len() => {
                    let end = (at + self.rng.usize(1..16)).min(out.len());
                    let piece = out[at..end].to_vec();
                    out.splice(at..at, piece);
                }
                3 => out.truncate(at),
                _ => {
                    let insert = INSERTS[self.rng.usize(0..INSERTS.len())];
                    out.splice(at..at, insert.iter().copied());
                }
            }
        }
        out
    }

    /// Up to `max` bytes of anything.
    pub(crate) fn bytes(&mut self, max: usize) -> Vec<u8> {
        (0..self.rng.usize(0..=max))
            .map(|_| self.rng.u8(..))
            .collect()
    }
}

impl Fuzz {
    /// A random JSON value: odd numbers, strings with escapes and
    /// non-ASCII, keys that repeat across levels, empty containers.
    pub(crate) fn json(&mut self, depth: usize) -> serde_json::Value {
        use serde_json::Value;
        const KEYS: [&str; 10] = ["id", "data", "next", "count", "a", "é", "", "~", "/", "x y"];
        const STRINGS: [&str; 10] = [
            "",
            "x",
            "é😀",
            "\"",
            "\\",
            "a\u{0}b",
            "\u{1b}[31m",
            "https://h/?p=2",
            "/rel",
            "%zz",
        ];
        let numbers = || -> [serde_json::Value; 8] {
            [
                0.into(),
                (-1).into(),
                u64::MAX.into(),
                i64::MIN.into(),
                1.5.into(),
                1e300.into(),
                (-0.0).into(),
                123_456_789.into(),
            ]
        };
        match self.rng.u8(0..if depth >= 4 { 5 } else { 7 }) {
            0 => Value::Null,
            1 => Value::Bool(self.rng.bool()),
            2 => numbers()[self.rng.usize(0..8)].clone(),
            3 | 4 => Value::String(self.pick(&STRINGS).to_owned()),
            5 => (0..self.rng.usize(0..4))
                .map(|_| self.json(depth + 1))
                .collect(),
            _ => Value::Object(
                (0..self.rng.usize(0..5))
                    .map(|_| (self.pick(&KEYS).to_owned(), self.json(depth + 1)))
                    .collect(),
            ),
        }
    }
}

impl Drop for Fuzz {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{}: failed with seed {} over {} iterations; replay with \
                 APISYNC_FUZZ_SEED={} APISYNC_FUZZ_ITERATIONS={}",
                self.name, self.seed, self.iterations, self.seed, self.iterations
            );
        }
    }
}
