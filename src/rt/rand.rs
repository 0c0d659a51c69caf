//! Seeded randomness. Under madsim every draw comes from the run's seed (rand's own
//! `thread_rng` is not intercepted there and would break replay); in production it is the
//! thread-local CSPRNG.

use madsim::rand::{thread_rng, Rng};

/// A uniform draw from `range` (half-open); `range` must be non-empty.
pub fn below(n: u64) -> u64 {
    thread_rng().gen_range(0..n.max(1))
}

/// True with probability `p` (clamped to `0.0..=1.0`).
pub fn chance(p: f64) -> bool {
    thread_rng().gen_bool(p.clamp(0.0, 1.0))
}

/// A random UUIDv4, e.g. a peer id.
pub fn uuid_v4() -> uuid::Uuid {
    let bytes: [u8; 16] = thread_rng().gen();
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    #[test]
    fn uuid_is_version_4() {
        let id = super::uuid_v4();
        assert_eq!(id.get_version_num(), 4);
        assert_ne!(id, super::uuid_v4());
    }
}
