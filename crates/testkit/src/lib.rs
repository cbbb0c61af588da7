//! Deterministic test inputs, one generator for the CPU tests (qtune-kernels, qtune-optim) and
//! the GPU check (xtask), which each had a copy: the same seed gives the same values everywhere,
//! with no RNG crate.

/// `n` pseudo-random values in [-scale, scale) from `seed`: xorshift64 (13, 7, 17) from an odd
/// multiple of the seed, the top 24 bits of each state as a fraction.
pub fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn same_seed_same_values_in_range() {
        let a = super::values(1000, 7, 0.5);
        assert_eq!(a, super::values(1000, 7, 0.5));
        assert_ne!(a, super::values(1000, 8, 0.5));
        assert!(a.iter().all(|v| (-0.5..0.5).contains(v)));
    }
}
