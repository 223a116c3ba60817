//! The operation mix (`get=90,set=10`) and the tiny PRNG that draws from it.

use std::fmt;
use std::str::FromStr;

/// One kind of request the kv scenario sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `GET /get?key=K`.
    Get,
    /// `POST /set?key=K` with the value as the body.
    Set,
}

impl Op {
    /// Every operation, in report order.
    pub const ALL: [Op; 2] = [Op::Get, Op::Set];

    /// The name used in `--mix` and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
        }
    }

    /// This operation's position in [`Op::ALL`].
    pub fn index(self) -> usize {
        match self {
            Op::Get => 0,
            Op::Set => 1,
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.name() == name)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Relative weights of the operations, parsed from `get=90,set=10`. Operations not named
/// get weight 0; at least one weight is positive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mix {
    weights: [(Op, u32); 2],
    total: u64,
}

impl Mix {
    /// Parses `op=weight[,op=weight…]`, e.g. `get=90,set=10` or `set=100`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut weights = Op::ALL.map(|op| (op, 0_u32));
        let mut seen = [false; Op::ALL.len()];
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(format!(
                    "invalid mix {s:?}: empty entry (expected e.g. get=90,set=10)"
                ));
            }
            let Some((name, weight)) = part.split_once('=') else {
                return Err(format!(
                    "invalid mix entry {part:?}: expected op=weight, e.g. get=90"
                ));
            };
            let name = name.trim();
            let Some(op) = Op::from_name(name) else {
                let known: Vec<&str> = Op::ALL.iter().map(|op| op.name()).collect();
                return Err(format!(
                    "unknown operation {name:?} in mix: use {}",
                    known.join(" or ")
                ));
            };
            let weight: u32 = weight.trim().parse().map_err(|_| {
                format!(
                    "invalid weight {:?} for {name}: expected a non-negative integer",
                    weight.trim()
                )
            })?;
            let index = op.index();
            if seen[index] {
                return Err(format!("operation {name:?} appears twice in mix {s:?}"));
            }
            seen[index] = true;
            weights[index].1 = weight;
        }
        let total = weights.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return Err(format!(
                "invalid mix {s:?}: every weight is zero; give at least one operation a positive weight"
            ));
        }
        Ok(Self { weights, total })
    }

    /// The operations with a positive weight, in report order.
    pub fn ops(&self) -> impl Iterator<Item = Op> + '_ {
        self.weights
            .iter()
            .filter(|(_, w)| *w > 0)
            .map(|(op, _)| *op)
    }

    /// The weight of `op` (0 when not in the mix).
    pub fn weight(&self, op: Op) -> u32 {
        self.weights
            .iter()
            .find(|(o, _)| *o == op)
            .map_or(0, |(_, w)| *w)
    }

    /// Picks an operation from a uniformly random `u64`, in proportion to the weights.
    pub fn pick(&self, random: u64) -> Op {
        let mut roll = below(random, self.total);
        for (op, weight) in self.weights {
            let weight = u64::from(weight);
            if roll < weight {
                return op;
            }
            roll -= weight;
        }
        // Unreachable: roll < total = sum of the weights.
        self.weights[0].0
    }
}

impl FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (op, weight) in self.weights.iter().filter(|(_, w)| *w > 0) {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{op}={weight}")?;
        }
        Ok(())
    }
}

/// Maps a uniformly random `u64` onto `0..n` (Lemire's multiply-shift; `n > 0`).
pub(crate) fn below(random: u64, n: u64) -> u64 {
    ((u128::from(random) * u128::from(n)) >> 64) as u64
}

/// xorshift64*: a few instructions per number, plenty random for picking keys and ops, and
/// no dependency. One per task, so there is no shared state to contend on.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    /// Seeds through splitmix64, so nearby seeds (task 0, 1, 2…) give unrelated streams.
    pub(crate) fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // xorshift's one forbidden state.
        Self(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    /// The next number.
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        below(self.next_u64(), n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mixes() {
        let mix = Mix::parse("get=90,set=10").expect("mix");
        assert_eq!(mix.weight(Op::Get), 90);
        assert_eq!(mix.weight(Op::Set), 10);
        assert_eq!(mix.to_string(), "get=90,set=10");
        assert_eq!(mix.ops().collect::<Vec<_>>(), vec![Op::Get, Op::Set]);

        let mix = Mix::parse(" set = 100 ").expect("mix");
        assert_eq!(mix.weight(Op::Get), 0);
        assert_eq!(mix.to_string(), "set=100");
        assert_eq!(mix.ops().collect::<Vec<_>>(), vec![Op::Set]);

        let mix = Mix::parse("get=100,set=0").expect("mix");
        assert_eq!(mix.to_string(), "get=100");
    }

    #[test]
    fn rejects_bad_mixes() {
        let err = Mix::parse("get=90,delete=10").expect_err("unknown op");
        assert!(err.contains("unknown operation \"delete\""), "{err}");
        let err = Mix::parse("get=0,set=0").expect_err("all zero");
        assert!(err.contains("every weight is zero"), "{err}");
        assert!(Mix::parse("get").is_err());
        assert!(Mix::parse("get=-1").is_err());
        assert!(Mix::parse("get=x").is_err());
        assert!(Mix::parse("").is_err());
        assert!(Mix::parse("get=1,,set=1").is_err());
        assert!(Mix::parse("get=1,get=2").is_err());
    }

    #[test]
    fn picks_in_proportion() {
        let mix = Mix::parse("get=90,set=10").expect("mix");
        let mut rng = Rng::new(7);
        let n = 100_000;
        let gets = (0..n)
            .filter(|_| mix.pick(rng.next_u64()) == Op::Get)
            .count();
        let share = gets as f64 / f64::from(n);
        assert!((0.88..0.92).contains(&share), "get share {share}");

        let only_sets = Mix::parse("set=1").expect("mix");
        assert!((0..1000).all(|_| only_sets.pick(rng.next_u64()) == Op::Set));
    }

    #[test]
    fn rng_stays_in_range_and_differs_per_seed() {
        let mut a = Rng::new(0);
        let mut b = Rng::new(1);
        assert_ne!(a.next_u64(), b.next_u64());
        assert!((0..10_000).all(|_| a.below(17) < 17));
        assert_eq!(below(u64::MAX, 10), 9);
        assert_eq!(below(0, 10), 0);
    }
}
