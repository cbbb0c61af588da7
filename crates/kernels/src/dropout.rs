//! Dropout with a counter-based mask: element `i` of a tensor is kept iff
//! `hash(seed, i) ≥ threshold`, so the mask is a pure function of `(seed, index)`. The backward
//! re-derives it instead of storing it, a recomputed (checkpointed) block draws the same mask,
//! and CPU and CUDA agree bit for bit (the CUDA kernel runs the same 32-bit integer hash).
//! Scaled as torch: kept values are multiplied by `1/(1−p)` (f32).

/// murmur3's 32-bit finalizer: a bijection on u32 with full avalanche.
pub(crate) fn mix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// The 32-bit hash of element `i` under `seed` (both halves of the seed enter).
pub(crate) fn hash(seed: u64, i: u32) -> u32 {
    mix32(mix32(i ^ seed as u32) ^ (seed >> 32) as u32)
}

/// `(threshold, scale)` for drop probability `p ∈ [0, 1)`: an element is dropped iff its hash
/// is below `threshold = round(p·2³²)`, kept ones are multiplied by `scale = 1/(1−p)`.
pub(crate) fn params(p: f32) -> (u32, f32) {
    let t = (f64::from(p) * 4_294_967_296.0).round();
    (t.clamp(0.0, f64::from(u32::MAX)) as u32, 1.0 / (1.0 - p))
}

/// Whether element `i` is kept (the host-side reference of the CUDA kernel).
pub(crate) fn keep(seed: u64, i: u32, threshold: u32) -> bool {
    hash(seed, i) >= threshold
}
