//! Seeds derived from seeds, so that what happens at a step does not depend on the steps before it.

/// SplitMix64's finaliser (Steele et al. 2014): a cheap, well-mixed 64-bit hash.
pub fn splitmix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A seed for one purpose at one step, derived from the experiment seed: data order, dropout and
/// sampling at step `s` are then the same whether or not the run was interrupted before `s`,
/// which is what makes a resumed run identical to an uninterrupted one.
pub fn step_seed(seed: u64, purpose: u64, step: u64) -> u64 {
    splitmix64(seed ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03))
}

/// Items `first .. first + count` of a run that goes through `items` in epochs, each a
/// permutation drawn from `step_seed(seed, purpose, epoch)`: item k of the whole run is a
/// function of k alone, so a resumed run sees the same batches.
pub fn epoch_items<T>(items: &[T], first: usize, count: usize, seed: u64, purpose: u64) -> Vec<&T> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let n = items.len();
    let mut cached_epoch = usize::MAX;
    let mut permutation: Vec<usize> = Vec::new();
    (first..first + count)
        .map(|k| {
            if k / n != cached_epoch {
                cached_epoch = k / n;
                permutation = (0..n).collect();
                permutation.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(step_seed(seed, purpose, cached_epoch as u64)));
            }
            &items[permutation[k % n]]
        })
        .collect()
}
