//! Sub-seeded random streams for the simulator's own choices: the swarm draw, the fault
//! schedule and each client's workload draw from their own stream, derived from the world seed
//! and the stream's name. Adding a fault kind or a draw to one subsystem therefore leaves the
//! others' choices as they were. The product never draws from here: it keeps drawing from
//! `rt::rand` (madsim's seeded RNG), which also drives the scheduler.

/// A splitmix64 generator: tiny, fast, and stable across platforms and crate versions (unlike a
/// library RNG whose algorithm may change under a semver-compatible update).
#[derive(Clone, Debug, Default)]
pub struct Stream(u64);

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Stream {
    /// The stream called `name` of the world seeded with `seed`.
    pub fn new(seed: u64, name: &str) -> Stream {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Stream(mix(seed ^ mix(h)))
    }

    /// An independent child stream (e.g. one per client), leaving this one untouched.
    pub fn fork(&self, index: u64) -> Stream {
        Stream(mix(self.0 ^ mix(index.wrapping_add(0x9e37_79b9_7f4a_7c15))))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `0..n` (0 when `n` is 0), like `rt::rand::below`.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

#[cfg(test)]
mod tests {
    use super::Stream;

    #[test]
    fn streams_are_reproducible_and_independent() {
        let draw = |s: &mut Stream| (0..8).map(|_| s.below(1000)).collect::<Vec<_>>();
        assert_eq!(
            draw(&mut Stream::new(7, "faults")),
            draw(&mut Stream::new(7, "faults"))
        );
        assert_ne!(
            draw(&mut Stream::new(7, "faults")),
            draw(&mut Stream::new(7, "swarm"))
        );
        assert_ne!(
            draw(&mut Stream::new(7, "faults")),
            draw(&mut Stream::new(8, "faults"))
        );
        let w = Stream::new(7, "workload");
        assert_ne!(draw(&mut w.fork(0)), draw(&mut w.fork(1)));
        assert!((0..1000).all(|_| Stream::new(1, "x").below(5) < 5));
        assert_eq!(Stream::new(1, "x").below(0), 0);
    }
}
