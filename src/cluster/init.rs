//! K-Means initialisation: greedy k-means++ and k-means|| (scalable k-means++).
//!
//! # The maths
//!
//! **k-means++** [Arthur & Vassilvitskii 2007] picks the first center at
//! random (probability proportional to the sample weight `w_i`), then each
//! next center with probability proportional to `w_i D(x_i)^2`, where
//! `D(x)` is the distance to the nearest center chosen so far. The *greedy*
//! variant (scikit-learn's default) draws `2 + floor(ln k)` candidates per
//! step and keeps the one that minimises the potential
//! `phi = sum_i w_i D(x_i)^2` after adding it.
//!
//! **k-means||** [Bahmani et al. 2012] replaces the `k` sequential draws by a
//! few rounds: starting from one random center with potential `phi`, each
//! round keeps every point independently with probability
//! `min(1, l w_i D(x_i)^2 / phi)` (oversampling factor `l`, about `2 k`), so
//! that about `l` points join per round. The `O(l * rounds)` candidates are
//! weighted by the total sample weight of the points nearest to them and
//! reduced to `k` centers by weighted k-means++ followed by a few Lloyd
//! iterations on the candidates. Each round is one pass over the data, which
//! is what makes it fit Spark: [`kmeans_parallel_sample`] is one round on one
//! partition.
//!
//! Distances to the candidates use the expansion `||x||^2 - 2 x.c + ||c||^2`
//! with blocked GEMM (see [`super::kmeans`]). Random draws come from ChaCha8
//! streams seeded from `seed` (and the block index where rows are drawn
//! independently), and the potentials are summed over fixed blocks in order:
//! the result does not depend on the number of threads.
//!
//! # References
//! - D. Arthur, S. Vassilvitskii, "k-means++: the advantages of careful seeding", SODA 2007.
//! - B. Bahmani, B. Moseley, A. Vattani, R. Kumar, S. Vassilvitskii,
//!   "Scalable K-Means++", PVLDB 5(7), 2012.
//! - scikit-learn, `sklearn/cluster/_kmeans.py` (`_kmeans_plusplus`).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::kmeans::{assign, gemm_abt, kmeans_single, sqdist_exact, Algorithm, Real, CHUNK};
use crate::error::{BovwError, Result};

/// Draw an index with probability proportional to `p` (non-negative), given
/// per-block sums `block` of `p` over blocks of `CHUNK` and their total.
fn draw(p: &[f64], block: &[f64], total: f64, u: f64) -> usize {
    let n = p.len();
    let mut r = u * total;
    for (b, &s) in block.iter().enumerate() {
        if r < s {
            let lo = b * CHUNK;
            let hi = (lo + CHUNK).min(n);
            for (i, &v) in p[lo..hi].iter().enumerate() {
                if r < v {
                    return lo + i;
                }
                r -= v;
            }
            // Rounding: fall back to the last positive entry of this block.
            return (lo..hi).rev().find(|&i| p[i] > 0.0).unwrap_or(hi - 1);
        }
        r -= s;
    }
    // Rounding at the very end: the last positive entry.
    (0..n).rev().find(|&i| p[i] > 0.0).unwrap_or(n - 1)
}

fn block_sums(p: &[f64]) -> Vec<f64> {
    p.par_chunks(CHUNK).map(|c| c.iter().sum()).collect()
}

/// Squared distances from every row of `x` to each of the `t` rows of
/// `cands`, passed to `f(block_index, rows_offset, dists (m x t))`.
fn for_distance_blocks<T: Real>(
    x: &[T],
    d: usize,
    xn: &[f64],
    cands: &[T],
    f: impl Fn(usize, &[f64]) + Send + Sync,
) {
    let t = cands.len() / d;
    let cn: Vec<f64> = cands.chunks(d).map(|c| sqdist_exact(c, &vec![T::zero(); d])).collect();
    x.par_chunks(CHUNK * d).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(buf, dist): &mut (Vec<T>, Vec<f64>), (b, rows)| {
            let m = rows.len() / d;
            buf.resize(m * t, T::zero());
            gemm_abt(rows, cands, m, t, d, buf);
            dist.resize(m * t, 0.0);
            for r in 0..m {
                let xr = xn[b * CHUNK + r];
                for c in 0..t {
                    dist[r * t + c] = (xr + cn[c] - 2.0 * buf[r * t + c].to_f64()).max(0.0);
                }
            }
            f(b, dist);
        },
    );
}

/// Greedy k-means++: `k` rows of `x` (`n x d`, row-major) chosen as initial
/// centers. Returns (centers k x d, their row indices).
///
/// `n_local_trials` defaults to `2 + floor(ln k)` as in scikit-learn.
///
/// # Errors
/// [`BovwError`] when `k` is 0 or larger than the number of rows, on shape
/// mismatch, or when the weights do not sum to a positive number.
pub fn kmeans_plusplus<T: Real>(
    x: &[T],
    d: usize,
    k: usize,
    w: Option<&[f64]>,
    seed: u64,
    n_local_trials: Option<usize>,
) -> Result<(Vec<T>, Vec<usize>)> {
    if d == 0 || x.len() % d != 0 {
        return Err(BovwError::input("X must be a non-empty (n_samples, n_features) array"));
    }
    let n = x.len() / d;
    crate::cluster::kmeans::check_clusters_and_weights(n, k, w)?;
    let trials = n_local_trials.unwrap_or(2 + (k as f64).ln() as usize).max(1);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let zero = vec![T::zero(); d];
    let xn: Vec<f64> = x.par_chunks(d).map(|r| sqdist_exact(r, &zero)).collect();
    let wv: Vec<f64> = match w {
        Some(w) => w.to_vec(),
        None => vec![1.0; n],
    };
    let wsum_blocks = block_sums(&wv);
    let wsum: f64 = wsum_blocks.iter().sum();
    if wsum.is_nan() || wsum <= 0.0 {
        return Err(BovwError::param("sample_weight", "must sum to a positive number"));
    }
    let first = draw(&wv, &wsum_blocks, wsum, rng.random::<f64>());
    let mut idx = vec![first];
    let mut centers: Vec<T> = x[first * d..(first + 1) * d].to_vec();
    // closest[i] = D(x_i)^2 ; pot[i] = w_i D(x_i)^2
    let mut closest = vec![0f64; n];
    {
        let cl = SyncPtr(closest.as_mut_ptr());
        for_distance_blocks(x, d, &xn, &centers, |b, dist| {
            for (r, &v) in dist.iter().enumerate() {
                // SAFETY: blocks write disjoint ranges.
                unsafe { *cl.get().add(b * CHUNK + r) = v };
            }
        });
    }
    closest[first] = 0.0;
    let weighted = |c: &[f64]| -> Vec<f64> { c.iter().zip(&wv).map(|(a, b)| a * b).collect() };
    let mut pot = weighted(&closest);
    let mut blocks = block_sums(&pot);
    let mut total: f64 = blocks.iter().sum();
    let nb = n.div_ceil(CHUNK);
    let mut new_d = vec![0f64; trials * n];
    let mut cand_blocks = vec![0f64; trials * nb];
    for _ in 1..k {
        let cand: Vec<usize> = (0..trials)
            .map(|_| {
                let u = rng.random::<f64>();
                if total > 0.0 {
                    draw(&pot, &blocks, total, u)
                } else {
                    // Every point coincides with a center: any row will do.
                    ((u * n as f64) as usize).min(n - 1)
                }
            })
            .collect();
        let crow: Vec<T> = cand.iter().flat_map(|&c| x[c * d..(c + 1) * d].iter().copied()).collect();
        {
            let nd = SyncPtr(new_d.as_mut_ptr());
            let cbk = SyncPtr(cand_blocks.as_mut_ptr());
            let (closest, wv) = (&closest, &wv);
            for_distance_blocks(x, d, &xn, &crow, |b, dist| {
                let m = dist.len() / trials;
                for c in 0..trials {
                    let mut s = 0.0;
                    for r in 0..m {
                        let i = b * CHUNK + r;
                        let v = dist[r * trials + c].min(closest[i]);
                        s += v * wv[i];
                        // SAFETY: blocks write disjoint ranges.
                        unsafe { *nd.get().add(c * n + i) = v };
                    }
                    unsafe { *cbk.get().add(c * nb + b) = s };
                }
            });
        }
        let mut best = (0usize, f64::INFINITY);
        for c in 0..trials {
            let s: f64 = cand_blocks[c * nb..(c + 1) * nb].iter().sum();
            if s < best.1 {
                best = (c, s);
            }
        }
        let (c, _) = best;
        closest.copy_from_slice(&new_d[c * n..(c + 1) * n]);
        closest[cand[c]] = 0.0;
        pot = weighted(&closest);
        blocks = block_sums(&pot);
        total = blocks.iter().sum();
        idx.push(cand[c]);
        centers.extend_from_slice(&x[cand[c] * d..(cand[c] + 1) * d]);
    }
    Ok((centers, idx))
}

#[derive(Clone, Copy)]
struct SyncPtr(*mut f64);
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}
impl SyncPtr {
    fn get(&self) -> *mut f64 {
        self.0
    }
}

/// One k-means|| round on a batch: the rows kept with probability
/// `min(1, l * w_i * D(x_i)^2 / phi)`, `D` the distance to the nearest of
/// `centers`. Draws for block `b` of `CHUNK` rows come from a ChaCha8 stream
/// seeded with `(seed, b)`, so the result does not depend on threads.
///
/// Returns (indices of the kept rows, their count is random; the batch's
/// cost `sum_i w_i D(x_i)^2`).
///
/// # Errors
/// [`BovwError`] on shape mismatch or no centers.
pub fn kmeans_parallel_sample<T: Real>(
    x: &[T],
    d: usize,
    centers: &[T],
    w: Option<&[f64]>,
    oversampling: f64,
    phi: f64,
    seed: u64,
) -> Result<(Vec<usize>, f64)> {
    let (_, dists) = assign(x, centers, d)?;
    let kept: Vec<Vec<usize>> = dists
        .par_chunks(CHUNK)
        .enumerate()
        .map(|(b, ds)| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(b as u64 + 1);
            let mut out = Vec::new();
            for (r, &v) in ds.iter().enumerate() {
                let i = b * CHUNK + r;
                let p = if phi > 0.0 { oversampling * w.map_or(1.0, |w| w[i]) * v / phi } else { 0.0 };
                let u = rng.random::<f64>();
                if u < p {
                    out.push(i);
                }
            }
            out
        })
        .collect();
    let cost: f64 = dists
        .par_chunks(CHUNK)
        .enumerate()
        .map(|(b, ds)| ds.iter().enumerate().map(|(r, v)| v * w.map_or(1.0, |w| w[b * CHUNK + r])).sum::<f64>())
        .collect::<Vec<f64>>()
        .iter()
        .sum();
    Ok((kept.into_iter().flatten().collect(), cost))
}

/// k-means|| initialisation: `k` centers (k x d row-major) from `rounds`
/// rounds with oversampling factor `oversampling` (`l`), then weighted
/// k-means++ and 30 Lloyd iterations on the candidates (as Spark MLlib does).
///
/// # Errors
/// [`BovwError`] when `k` is 0 or larger than the number of rows, or on shape mismatch.
pub fn kmeans_parallel<T: Real>(
    x: &[T],
    d: usize,
    k: usize,
    w: Option<&[f64]>,
    seed: u64,
    oversampling: f64,
    rounds: usize,
) -> Result<Vec<T>> {
    if d == 0 || x.len() % d != 0 {
        return Err(BovwError::input("X must be a non-empty (n_samples, n_features) array"));
    }
    let n = x.len() / d;
    if k == 0 || k > n {
        return Err(BovwError::param("n_clusters", format!("n_samples={n} should be >= n_clusters={k} >= 1")));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let wv: Vec<f64> = w.map_or_else(|| vec![1.0; n], |w| w.to_vec());
    let wb = block_sums(&wv);
    let first = draw(&wv, &wb, wb.iter().sum(), rng.random::<f64>());
    let mut chosen = vec![first];
    let mut is_chosen = vec![false; n];
    is_chosen[first] = true;
    let mut cands: Vec<T> = x[first * d..(first + 1) * d].to_vec();
    let (_, mut phi) = kmeans_parallel_sample(x, d, &cands, w, 0.0, 0.0, 0)?;
    for round in 0..rounds {
        if phi <= 0.0 {
            break;
        }
        let s = rng.random::<u64>() ^ round as u64;
        let (kept, _) = kmeans_parallel_sample(x, d, &cands, w, oversampling, phi, s)?;
        for i in kept {
            if !is_chosen[i] {
                is_chosen[i] = true;
                chosen.push(i);
                cands.extend_from_slice(&x[i * d..(i + 1) * d]);
            }
        }
        phi = kmeans_parallel_sample(x, d, &cands, w, 0.0, 0.0, 0)?.1;
    }
    // Too few distinct candidates: top up with random rows not chosen yet.
    let mut guard = 0;
    while chosen.len() < k && guard < 100 * n {
        let i = rng.random_range(0..n);
        if !is_chosen[i] {
            is_chosen[i] = true;
            chosen.push(i);
            cands.extend_from_slice(&x[i * d..(i + 1) * d]);
        }
        guard += 1;
    }
    let m = cands.len() / d;
    if m <= k {
        return Ok(cands[..k * d].to_vec());
    }
    // Weight each candidate by the weight of the points nearest to it.
    let (labels, _) = assign(x, &cands, d)?;
    let mut cw = vec![0f64; m];
    for (i, &l) in labels.iter().enumerate() {
        cw[l as usize] += wv[i];
    }
    let (init, _) = kmeans_plusplus(&cands, d, k, Some(&cw), rng.random::<u64>(), None)?;
    let r = kmeans_single(&cands, d, Some(&cw), &init, 30, 0.0, Algorithm::Lloyd)?;
    Ok(r.centers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::kmeans::{inertia_of, tolerance};

    fn blobs(n: usize, d: usize, k: usize, seed: u64) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let centers: Vec<f64> = (0..k * d).map(|_| rng.random::<f64>() * 100.0).collect();
        (0..n).flat_map(|i| (0..d).map(move |t| (i, t)).collect::<Vec<_>>()).map(|(i, t)| centers[(i % k) * d + t] + rng.random::<f64>()).collect()
    }

    #[test]
    fn plusplus_picks_distinct_rows_and_one_per_blob() {
        let (d, k) = (3, 6);
        let x = blobs(600, d, k, 7);
        let (c, idx) = kmeans_plusplus(&x, d, k, None, 1, None).unwrap();
        let mut blobs_hit: Vec<usize> = idx.iter().map(|i| i % k).collect();
        blobs_hit.sort();
        blobs_hit.dedup();
        assert_eq!(blobs_hit.len(), k, "greedy k-means++ seeds each well separated blob");
        for (j, &i) in idx.iter().enumerate() {
            assert_eq!(&c[j * d..(j + 1) * d], &x[i * d..(i + 1) * d]);
        }
        // Same seed, same result; whatever the threads.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let (_, idx2) = pool.install(|| kmeans_plusplus(&x, d, k, None, 1, None).unwrap());
        assert_eq!(idx, idx2);
    }

    #[test]
    fn plusplus_with_duplicates_and_k1() {
        let x = vec![1.0f32; 20];
        let (c, idx) = kmeans_plusplus(&x, 2, 4, None, 0, None).unwrap();
        assert_eq!(c.len(), 8);
        assert_eq!(idx.len(), 4);
        let (c1, _) = kmeans_plusplus(&x, 2, 1, None, 0, None).unwrap();
        assert_eq!(c1, vec![1.0, 1.0]);
        assert!(kmeans_plusplus(&x, 2, 11, None, 0, None).is_err());
    }

    #[test]
    fn parallel_init_finds_the_blobs() {
        let (d, k) = (4, 8);
        let x = blobs(4000, d, k, 9);
        let c = kmeans_parallel(&x, d, k, None, 3, 2.0 * k as f64, 5).unwrap();
        let r = kmeans_single(&x, d, None, &c, 100, tolerance(&x, d, 1e-4), Algorithm::Lloyd).unwrap();
        // Uniform(0, 1) noise: inertia per point about d / 12.
        assert!(r.inertia / 4000.0 < d as f64 / 12.0 * 1.2, "inertia {}", r.inertia);
        let labels = assign(&x, &c, d).unwrap().0;
        assert!(inertia_of(&x, d, None, &c, &labels) > 0.0);
    }
}
