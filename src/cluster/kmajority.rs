//! K-majority clustering of binary descriptors (Grana et al. 2013).
//!
//! Binary descriptors such as ORB's 256-bit strings live in Hamming space,
//! where the mean of a cluster is not a binary string. K-majority replaces
//! the two steps of Lloyd's K-Means accordingly:
//!
//! - **assignment**: each descriptor $x_i$ goes to the center $c_j$ at the
//!   smallest Hamming distance $d_H(x_i, c_j) = \operatorname{popcount}(x_i \oplus c_j)$
//!   (ties go to the lowest index);
//! - **update**: each center becomes the per-bit majority vote of its members,
//!   bit $b$ of $c_j$ being 1 when more than half of the members have it set
//!   (a tie gives 0); a cluster left empty keeps its previous center.
//!
//! The iteration stops when an update leaves every center unchanged, or after
//! `max_iter` updates. The objective (`inertia`) is $\sum_i d_H(x_i, c_{l_i})$.
//!
//! Seeding is k-means++ (Arthur & Vassilvitskii 2007) with the Hamming
//! distance: the first center is a uniformly drawn descriptor, each next one
//! is drawn with probability proportional to $D(x)^2$, $D(x)$ being the
//! Hamming distance to the nearest center chosen so far.
//!
//! # Parallelisation
//! Assignment and vote counting run over rows with rayon. All reductions are
//! integer sums and the random draws are made sequentially from a
//! `ChaCha8Rng` seeded by `seed`, so results depend on the seed only, never on
//! the number of threads.
//!
//! Reference: C. Grana, D. Borghesani, M. Manfredi, R. Cucchiara, "A fast
//! approach for integrating ORB descriptors in the bag of words model",
//! Proc. SPIE 8667, Multimedia Content and Mobile Devices, 2013.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::error::{BovwError, Result};

/// Hamming distance between two equal-length byte strings.
#[inline(always)]
pub fn hamming(a: &[u8], b: &[u8]) -> u32 {
    let mut d = 0u32;
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        let x = u64::from_le_bytes(x.try_into().unwrap());
        let y = u64::from_le_bytes(y.try_into().unwrap());
        d += (x ^ y).count_ones();
    }
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        d += (x ^ y).count_ones();
    }
    d
}

#[inline(always)]
fn nearest_generic(row: &[u8], centers: &[u8], d: usize) -> (u32, u32) {
    let mut best = (0u32, u32::MAX);
    for (j, c) in centers.chunks_exact(d).enumerate() {
        let dist = hamming(row, c);
        if dist < best.1 {
            best = (j as u32, dist);
        }
    }
    best
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
unsafe fn nearest_popcnt(row: &[u8], centers: &[u8], d: usize) -> (u32, u32) {
    nearest_generic(row, centers, d)
}

/// Index of the nearest center (lowest index on ties) and its distance.
#[inline]
pub fn nearest(row: &[u8], centers: &[u8], d: usize) -> (u32, u32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("popcnt") {
            // SAFETY: the CPU supports the instruction set the function was compiled for.
            return unsafe { nearest_popcnt(row, centers, d) };
        }
    }
    nearest_generic(row, centers, d)
}

/// Nearest center of each `d`-byte row of `x` among `centers` (both
/// row-major). Returns (labels, Hamming distances).
///
/// # Panics
/// If `d == 0` or the slices are not multiples of `d`.
pub fn assign_labels(x: &[u8], centers: &[u8], d: usize) -> (Vec<u32>, Vec<u32>) {
    assert!(d > 0 && x.len() % d == 0 && centers.len() % d == 0 && !centers.is_empty());
    x.par_chunks(d).with_min_len(256).map(|row| nearest(row, centers, d)).unzip()
}

/// Per-bit majority vote of the rows of each cluster. Bit `b` (bit `b % 8`,
/// least significant first, of byte `b / 8`) of center `j` is set when more
/// than half of the rows labelled `j` have it set. Empty clusters keep their
/// row of `previous`.
///
/// # Panics
/// If the sizes are inconsistent.
pub fn majority_centers(x: &[u8], labels: &[u32], previous: &[u8], d: usize) -> Vec<u8> {
    let k = previous.len() / d;
    let bits = d * 8;
    assert_eq!(x.len(), labels.len() * d);
    // (counts of set bits per cluster and bit, members per cluster), summed over chunks
    let (counts, sizes) = x
        .par_chunks(d * 1024)
        .zip(labels.par_chunks(1024))
        .map(|(xs, ls)| {
            let mut c = vec![0u32; k * bits];
            let mut s = vec![0u32; k];
            for (row, &l) in xs.chunks_exact(d).zip(ls) {
                let l = l as usize;
                s[l] += 1;
                let cc = &mut c[l * bits..(l + 1) * bits];
                for (byte_i, &byte) in row.iter().enumerate() {
                    for bit in 0..8 {
                        cc[byte_i * 8 + bit] += ((byte >> bit) & 1) as u32;
                    }
                }
            }
            (c, s)
        })
        .reduce(
            || (vec![0u32; k * bits], vec![0u32; k]),
            |(mut c1, mut s1), (c2, s2)| {
                c1.iter_mut().zip(&c2).for_each(|(a, b)| *a += b);
                s1.iter_mut().zip(&s2).for_each(|(a, b)| *a += b);
                (c1, s1)
            },
        );
    let mut out = previous.to_vec();
    for j in 0..k {
        if sizes[j] == 0 {
            continue;
        }
        let cc = &counts[j * bits..(j + 1) * bits];
        for byte_i in 0..d {
            let mut v = 0u8;
            for bit in 0..8 {
                if 2 * cc[byte_i * 8 + bit] > sizes[j] {
                    v |= 1 << bit;
                }
            }
            out[j * d + byte_i] = v;
        }
    }
    out
}

/// k-means++ seeding with the Hamming distance (see the module docs).
/// Returns `k` rows of `x` (row-major, `d` bytes each).
///
/// # Panics
/// If `k == 0` or `x` has fewer than `k` rows.
pub fn kmeanspp_init(x: &[u8], d: usize, k: usize, seed: u64) -> Vec<u8> {
    let n = x.len() / d;
    assert!(k > 0 && n >= k);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut centers = Vec::with_capacity(k * d);
    let first = rng.random_range(0..n);
    centers.extend_from_slice(&x[first * d..(first + 1) * d]);
    let mut dist: Vec<u64> = x.par_chunks(d).map(|r| hamming(r, &centers[..d]) as u64).collect();
    for _ in 1..k {
        let weights: Vec<u64> = dist.iter().map(|&v| v * v).collect();
        let total: u64 = weights.iter().sum();
        let pick = if total == 0 {
            // all rows coincide with a center: draw uniformly
            rng.random_range(0..n)
        } else {
            let target = rng.random_range(0..total);
            let mut acc = 0u64;
            let mut idx = n - 1;
            for (i, &w) in weights.iter().enumerate() {
                acc += w;
                if acc > target {
                    idx = i;
                    break;
                }
            }
            idx
        };
        let c = x[pick * d..(pick + 1) * d].to_vec();
        dist.par_iter_mut().zip(x.par_chunks(d)).for_each(|(dv, r)| {
            let h = hamming(r, &c) as u64;
            if h < *dv {
                *dv = h;
            }
        });
        centers.extend_from_slice(&c);
    }
    centers
}

/// Result of [`kmajority`].
#[derive(Debug, Clone, PartialEq)]
pub struct KMajorityResult {
    /// `k` centers, row-major, `d` bytes each (the binary vocabulary).
    pub centers: Vec<u8>,
    /// Nearest center of each row.
    pub labels: Vec<u32>,
    /// Sum of the Hamming distances of the rows to their centers.
    pub inertia: u64,
    /// Number of center updates run.
    pub n_iter: usize,
}

/// Fit k-majority on `n` rows of `d` bytes (`x`, row-major).
///
/// `init`: initial centers (`k * d` bytes), or `None` for k-means++ seeding
/// from `seed`.
///
/// # Errors
/// [`BovwError::InvalidParameter`] when `n_clusters` is 0 or larger than the
/// number of rows, `max_iter` is 0, `d` is 0 or `init` has the wrong size.
pub fn kmajority(x: &[u8], d: usize, n_clusters: usize, max_iter: usize, seed: u64, init: Option<&[u8]>) -> Result<KMajorityResult> {
    if d == 0 || x.len() % d != 0 {
        return Err(BovwError::param("X", format!("descriptor width must be positive and divide the data ({} bytes, width {d})", x.len())));
    }
    let n = x.len() / d;
    if n_clusters == 0 {
        return Err(BovwError::param("n_clusters", "must be at least 1"));
    }
    if n_clusters > n {
        return Err(BovwError::param("n_clusters", format!("n_samples={n} should be >= n_clusters={n_clusters}")));
    }
    if max_iter == 0 {
        return Err(BovwError::param("max_iter", "must be at least 1"));
    }
    let mut centers = match init {
        Some(c) => {
            if c.len() != n_clusters * d {
                return Err(BovwError::param("init", format!("expected shape ({n_clusters}, {d}), got {} bytes", c.len())));
            }
            c.to_vec()
        }
        None => kmeanspp_init(x, d, n_clusters, seed),
    };
    let mut n_iter = 0;
    let mut converged_labels: Option<(Vec<u32>, Vec<u32>)> = None;
    for it in 1..=max_iter {
        let (labels, dist) = assign_labels(x, &centers, d);
        let new_centers = majority_centers(x, &labels, &centers, d);
        n_iter = it;
        if new_centers == centers {
            converged_labels = Some((labels, dist));
            break;
        }
        centers = new_centers;
    }
    let (labels, dist) = match converged_labels {
        Some(ld) => ld,
        None => assign_labels(x, &centers, d),
    };
    let inertia = dist.iter().map(|&v| v as u64).sum();
    Ok(KMajorityResult { centers, labels, inertia, n_iter })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hamming_known_answers() {
        assert_eq!(hamming(&[0u8; 32], &[0xFFu8; 32]), 256);
        assert_eq!(hamming(&[0b1010_1010], &[0b0101_0101]), 8);
        let mut a = [0u8; 32];
        a[0] = 1;
        a[31] = 0x80;
        a[13] = 0b0110;
        assert_eq!(hamming(&a, &[0u8; 32]), 4);
        // odd widths use the byte tail
        assert_eq!(hamming(&[1, 2, 3, 4, 5, 6, 7, 8, 9], &[0; 9]), 1 + 1 + 2 + 1 + 2 + 2 + 3 + 1 + 2);
    }

    #[test]
    fn majority_vote_known_answer() {
        // three 1-byte rows in cluster 0: bits set 2 of 3 times win
        let x = [0b0000_0111u8, 0b0000_0011, 0b0000_0001, 0xFF];
        let labels = [0u32, 0, 0, 1];
        let c = majority_centers(&x, &labels, &[0u8, 0, 0x55], 1);
        assert_eq!(c, vec![0b0000_0011, 0xFF, 0x55]); // empty cluster 2 keeps its center
        // a 1-1 tie gives 0
        let c = majority_centers(&[0b01u8, 0b11], &[0, 0], &[0], 1);
        assert_eq!(c, vec![0b01]);
    }

    #[test]
    fn nearest_prefers_lowest_index_on_ties() {
        let centers = [0b11u8, 0b00, 0b11];
        assert_eq!(nearest(&[0b01], &centers, 1), (0, 1));
        assert_eq!(nearest(&[0b11], &centers, 1), (0, 0));
    }

    fn two_blobs(n: usize, seed: u64) -> Vec<u8> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut x = Vec::with_capacity(n * 32);
        for i in 0..n {
            let base = if i % 2 == 0 { 0x00u8 } else { 0xFFu8 };
            for _ in 0..32 {
                // flip each bit with probability 1/8
                let mut flip = 0u8;
                for b in 0..8 {
                    if rng.random_range(0..8) == 0 {
                        flip |= 1 << b;
                    }
                }
                x.push(base ^ flip);
            }
        }
        x
    }

    #[test]
    fn recovers_two_blobs_and_is_thread_independent() {
        let x = two_blobs(2000, 1);
        let r = kmajority(&x, 32, 2, 50, 7, None).unwrap();
        let mut cs: Vec<Vec<u8>> = r.centers.chunks(32).map(|c| c.to_vec()).collect();
        cs.sort();
        assert_eq!(cs, vec![vec![0u8; 32], vec![0xFFu8; 32]]);
        // labels alternate like the blobs
        assert!(r.labels.chunks(2).all(|p| p[0] != p[1]));
        assert!(r.n_iter <= 3);
        let inertia: u64 = x.chunks(32).zip(&r.labels).map(|(row, &l)| hamming(row, &r.centers[l as usize * 32..(l as usize + 1) * 32]) as u64).sum();
        assert_eq!(inertia, r.inertia);
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let r2 = pool.install(|| kmajority(&x, 32, 5, 20, 11, None).unwrap());
            let r1 = kmajority(&x, 32, 5, 20, 11, None).unwrap();
            assert_eq!(r1, r2);
        }
    }

    #[test]
    fn errors_name_the_parameter() {
        let x = vec![0u8; 64];
        assert!(kmajority(&x, 32, 0, 10, 0, None).unwrap_err().to_string().contains("n_clusters"));
        assert!(kmajority(&x, 32, 3, 10, 0, None).unwrap_err().to_string().contains("n_clusters"));
        assert!(kmajority(&x, 32, 1, 0, 0, None).unwrap_err().to_string().contains("max_iter"));
        assert!(kmajority(&x, 32, 2, 10, 0, Some(&[0u8; 10])).unwrap_err().to_string().contains("init"));
    }

    #[test]
    fn kmeanspp_picks_distinct_rows_when_possible() {
        let x = two_blobs(100, 3);
        let c = kmeanspp_init(&x, 32, 2, 5);
        assert!(hamming(&c[..32], &c[32..]) > 128);
    }
}
