//! K-Means: Lloyd's algorithm and its exact triangle-inequality variant (Yinyang
//! ("elkan"), with the building blocks that a distributed Lloyd iteration needs.
//!
//! # The maths
//!
//! Given `n` points `x_i` in `R^d` with weights `w_i` and `k` centers `c_j`,
//! K-Means minimises the inertia
//!
//! ```text
//! J(c) = sum_i w_i min_j ||x_i - c_j||^2 .
//! ```
//!
//! Lloyd's algorithm [Lloyd 1982] alternates two steps until the labels stop
//! changing or the centers move by at most `tol` in total squared distance:
//!
//! - **E-step**: `a_i = argmin_j ||x_i - c_j||^2`, ties to the lowest `j`;
//! - **M-step**: `c_j = sum_{a_i = j} w_i x_i / sum_{a_i = j} w_i`.
//!
//! The E-step uses the expansion `||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2`,
//! so that the bulk of the work is one matrix product `X C^T` per block of
//! `CHUNK` rows (faer's matmul, single-threaded per block; blocks run on
//! rayon). The expansion loses precision when `x` and `c` are far from the
//! origin: in floating point with unit roundoff `eps`, each value is within
//! `delta = (d + 4) eps (||x||^2 + max_j ||c_j||^2)` of the exact distance
//! (the standard bound for a dot product of length `d`). Every center whose
//! expanded distance lies within `2 delta` of the row's minimum is therefore
//! re-checked with the direct formula `sum_t (x_t - c_t)^2` in `f64`, so the
//! label is the exact nearest center (ties to the lowest index) and the
//! returned squared distance is the direct one.
//!
//! The "elkan" algorithm (scikit-learn's name for the triangle-inequality
//! variant) runs Yinyang K-means [Ding et al. 2015], which keeps for each
//! point an upper bound `u_i >= ||x_i - c_{a_i}||` and a lower bound per
//! group of about ten centers (grouped once by K-Means on the initial
//! centers), plus Hamerly's test on `s_j = min_{j' != j} ||c_j - c_j'|| / 2`
//! [Hamerly 2010]. After the M-step moves center `j` by `p_j`, `u_i` grows by
//! `p_{a_i}` and the bound of group `q` shrinks by the largest drift in `q`
//! (applied lazily, see `Yinyang`). A point whose `u_i < max(min_q l_q,
//! s_{a_i})` keeps its label without any distance; otherwise `u_i` is
//! tightened and only the groups whose bound is below it are computed (the
//! group filter). The distances are computed by the direct formula in the
//! input precision with a known error bound, and candidates within it are
//! re-checked in `f64`: the labels are exactly Lloyd's. Memory: `8 (G + 2) + 4`
//! bytes per point for `G <= 32` groups. When few labels change (late
//! iterations) the M-step sums are updated by the moved points only.
//!
//! Empty clusters are handled as scikit-learn does: each empty cluster takes
//! one of the points farthest from their current center (the farthest first),
//! which leaves its old cluster.
//!
//! # Determinism
//!
//! Rows are processed in fixed blocks of `CHUNK` rows and the M-step sums are
//! accumulated in `f64` over fixed parts of the data (their size depends on
//! `n` only), then added part by part in order: the results do not depend on
//! the number of threads.
//!
//! # References
//! - S. Lloyd, "Least squares quantization in PCM", IEEE Trans. Inf. Theory 28(2), 1982.
//! - C. Elkan, "Using the triangle inequality to accelerate k-means", ICML 2003.
//! - G. Hamerly, "Making k-means even faster", SDM 2010.
//! - Y. Ding, Y. Zhao, X. Shen, M. Musuvathi, T. Mytkowicz, "Yinyang K-Means: a
//!   drop-in replacement of the classic K-Means with consistent speedup", ICML 2015.
//! - scikit-learn, `sklearn/cluster/_kmeans.py` and `_k_means_lloyd.pyx`.
//!
//! # Layout
//!
//! [`distances`] (element types, direct and expanded distances, the matrix
//! product), [`assign`] (E-step), [`update`] (M-step), [`yinyang`] (the
//! bounds of "elkan"), [`distributed`] (per-batch sums); this module holds
//! the iteration itself ([`kmeans_single`]) and the input checks.

mod assign;
mod distances;
mod distributed;
mod update;
mod yinyang;

use rayon::prelude::*;

use crate::error::{BovwError, Result};

pub use assign::{assign, assign_labels, assign_labels_only, PreparedCenters};
pub use distances::{distances, gemm_abt, sqdist_exact, Real};
pub use distributed::{partial_sums, PartialSums};
pub use update::{cluster_sums, inertia_of};

use assign::{assign_block, lloyd_assign, BlockOut};
use distances::sqnorm;
use update::{average, part_rows, relocate_empty, MStep};
use yinyang::{center_groups, Groups, Yinyang};

/// Rows per block of the assignment step.
pub const CHUNK: usize = 256;

/// Which iteration to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// Lloyd's algorithm, the assignment by blocked matrix products.
    Lloyd,
    /// Yinyang K-means bounds (accepted under scikit-learn's name "elkan").
    Elkan,
}

impl Algorithm {
    /// Parse scikit-learn's names ("lloyd", "elkan"; "auto" and "full" are Lloyd).
    ///
    /// # Errors
    /// [`BovwError::InvalidParameter`] naming `algorithm`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "lloyd" | "full" | "auto" => Ok(Algorithm::Lloyd),
            "elkan" => Ok(Algorithm::Elkan),
            other => Err(BovwError::param("algorithm", format!("expected 'lloyd' or 'elkan', got {other:?}"))),
        }
    }
}

/// Check that every value is finite.
///
/// # Errors
/// [`BovwError::InvalidInput`] naming `what` and the first bad row.
pub fn check_finite<T: Real>(x: &[T], d: usize, what: &str) -> Result<()> {
    let d = d.max(1);
    let bad = x
        .par_chunks(CHUNK * d)
        .enumerate()
        .filter_map(|(ci, block)| block.iter().position(|v| !v.is_finite()).map(|p| ci * CHUNK + p / d))
        .min();
    match bad {
        Some(row) => Err(BovwError::input(format!("{what} contains NaN or infinity (row {row})"))),
        None => Ok(()),
    }
}

/// Check that `x` holds whole rows of `d >= 1` values; returns the row count.
///
/// # Errors
/// [`BovwError::InvalidInput`] when `d == 0`, [`BovwError::Shape`] naming `what`
/// otherwise.
fn check_shape<T>(x: &[T], d: usize, what: &str) -> Result<usize> {
    if d == 0 {
        return Err(BovwError::input(format!("{what} has zero features")));
    }
    if x.len() % d != 0 {
        return Err(BovwError::Shape {
            what: what.into(),
            expected: format!("a multiple of {d} values"),
            got: format!("{} values", x.len()),
        });
    }
    Ok(x.len() / d)
}


/// The result of one K-Means run.
#[derive(Clone, Debug)]
pub struct KMeansResult<T> {
    /// Final centers, k x d row-major.
    pub centers: Vec<T>,
    /// Label of each row.
    pub labels: Vec<u32>,
    /// Weighted sum of squared distances to the final centers.
    pub inertia: f64,
    /// Iterations run.
    pub n_iter: usize,
}

/// scikit-learn's absolute tolerance: `tol` times the mean over features of
/// the (unweighted) variance of `x`.
pub fn tolerance<T: Real>(x: &[T], d: usize, tol: f64) -> f64 {
    let n = x.len() / d.max(1);
    if n == 0 || tol == 0.0 {
        return 0.0;
    }
    let pr = part_rows(n);
    let np = n.div_ceil(pr);
    let sums: Vec<Vec<f64>> = (0..np)
        .into_par_iter()
        .map(|p| {
            let mut s = vec![0f64; d];
            for row in x[p * pr * d..((p + 1) * pr).min(n) * d].chunks(d) {
                s.iter_mut().zip(row).for_each(|(a, v)| *a += v.to_f64());
            }
            s
        })
        .collect();
    let mut mean = vec![0f64; d];
    for s in &sums {
        mean.iter_mut().zip(s).for_each(|(a, b)| *a += b);
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let vars: Vec<Vec<f64>> = (0..np)
        .into_par_iter()
        .map(|p| {
            let mut s = vec![0f64; d];
            for row in x[p * pr * d..((p + 1) * pr).min(n) * d].chunks(d) {
                for t in 0..d {
                    let e = row[t].to_f64() - mean[t];
                    s[t] += e * e;
                }
            }
            s
        })
        .collect();
    let mut var = vec![0f64; d];
    for s in &vars {
        var.iter_mut().zip(s).for_each(|(a, b)| *a += b);
    }
    let mean_var = var.iter().sum::<f64>() / (n as f64 * d as f64);
    mean_var * tol
}

/// Validate the inputs of a run; returns (n, k).
fn check_run<T: Real>(x: &[T], d: usize, w: Option<&[f64]>, init: &[T]) -> Result<(usize, usize)> {
    let n = check_shape(x, d, "X")?;
    if n == 0 {
        return Err(BovwError::input("X has no samples"));
    }
    if init.len() % d != 0 {
        return Err(BovwError::Shape {
            what: "init".into(),
            expected: format!("(n_clusters, {d})"),
            got: format!("{} values", init.len()),
        });
    }
    let k = init.len() / d;
    check_clusters_and_weights(n, k, w)?;
    Ok((n, k))
}

/// Check `1 <= k <= n` and that `w`, if given, has one weight per sample.
///
/// # Errors
/// [`BovwError::InvalidParameter`] naming `n_clusters`, or [`BovwError::Shape`]
/// naming `sample_weight`.
pub(crate) fn check_clusters_and_weights(n: usize, k: usize, w: Option<&[f64]>) -> Result<()> {
    if k == 0 {
        return Err(BovwError::param("n_clusters", "must be at least 1"));
    }
    if k > n {
        return Err(BovwError::param("n_clusters", format!("n_samples={n} should be >= n_clusters={k}")));
    }
    if let Some(w) = w {
        if w.len() != n {
            return Err(BovwError::Shape { what: "sample_weight".into(), expected: format!("({n},)"), got: format!("({},)", w.len()) });
        }
    }
    Ok(())
}

/// One K-Means run from the given initial centers (k x d row-major).
///
/// `tol` is absolute (see [`tolerance`]); the run stops when the labels do not
/// change between two iterations, when the total squared center shift is at
/// most `tol`, or after `max_iter` iterations. As in scikit-learn, if it did
/// not stop on unchanged labels, the labels are recomputed for the final
/// centers.
///
/// # Errors
/// [`BovwError`] for inconsistent shapes, no samples, or more clusters than samples.
pub fn kmeans_single<T: Real>(
    x: &[T],
    d: usize,
    w: Option<&[f64]>,
    init: &[T],
    max_iter: usize,
    tol: f64,
    algorithm: Algorithm,
) -> Result<KMeansResult<T>> {
    let (n, k) = check_run(x, d, w, init)?;
    let mut centers = init.to_vec();
    let mut labels = vec![0u32; n];
    let mut labels_old = vec![u32::MAX; n];
    let mut strict = false;
    let mut n_iter = 0;
    let xn: Vec<f64> = x.par_chunks(d).map(sqnorm).collect();
    // Yinyang's bounds, from a first full assignment.
    let groups = if algorithm == Algorithm::Elkan { center_groups(&centers, d) } else { Groups::from_labels(vec![0; k], 1) };
    let g = groups.g;
    let mut bounds: Option<Yinyang> = None;
    if algorithm == Algorithm::Elkan && max_iter > 0 {
        let mut upper = vec![0f64; n];
        let mut lower = vec![0f64; n * g];
        let pc = PreparedCenters::new(&centers, d);
        x.par_chunks(CHUNK * d)
            .zip(xn.par_chunks(CHUNK))
            .zip(labels.par_chunks_mut(CHUNK))
            .zip(upper.par_chunks_mut(CHUNK))
            .zip(lower.par_chunks_mut(CHUNK * g))
            .for_each_init(Vec::new, |buf, ((((rows, xb), l), u), lo)| {
                assign_block(
                    rows,
                    Some(xb),
                    &pc,
                    buf,
                    l,
                    BlockOut { dists: Some(&mut *u), exact: false, second: Some((&groups.of, g, &mut *lo)) },
                );
            });
        bounds = Some(Yinyang::new(upper, lower, k, g));
    }
    // M-step sums of the rows by `labels_old` (kept up to date by the rows
    // whose label changed when few did, see [`MStep`]).
    let mut mstep = MStep::new(k, d);
    for it in 0..max_iter {
        n_iter = it + 1;
        match algorithm {
            Algorithm::Lloyd => {
                let pc = PreparedCenters::new(&centers, d);
                lloyd_assign(x, &xn, &pc, &mut labels);
            }
            Algorithm::Elkan => {
                if it > 0 {
                    if let Some(yy) = bounds.as_mut() {
                        yy.assign(x, d, &centers, &groups, &mut labels);
                    }
                }
            }
        }
        let unchanged = mstep.update(x, d, w, &labels, &labels_old);
        let (mut sums, mut weights) = (mstep.sums.clone(), mstep.weights.clone());
        relocate_empty(x, d, w, &centers, &labels, &mut sums, &mut weights);
        let new_centers = average(&sums, &weights, &centers, d);
        let shifts: Vec<f64> =
            (0..k).map(|j| sqdist_exact(&new_centers[j * d..(j + 1) * d], &centers[j * d..(j + 1) * d])).collect();
        let shift_tot: f64 = shifts.iter().sum();
        centers = new_centers;
        if let Some(yy) = bounds.as_mut() {
            yy.log_drift(&shifts, &groups);
        }
        if unchanged {
            strict = true;
            break;
        }
        if shift_tot <= tol {
            break;
        }
        labels_old.copy_from_slice(&labels);
    }
    if !strict {
        if let Some(yy) = bounds.as_mut() {
            yy.assign(x, d, &centers, &groups, &mut labels);
        } else {
            let pc = PreparedCenters::new(&centers, d);
            lloyd_assign(x, &xn, &pc, &mut labels);
        }
    }
    let inertia = inertia_of(x, d, w, &centers, &labels);
    Ok(KMeansResult { centers, labels, inertia, n_iter })
}

/// Synthetic data shared by the tests of the submodules.
#[cfg(test)]
pub(crate) mod testdata {
    use super::sqdist_exact;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    pub(crate) fn blobs(n: usize, d: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let centers: Vec<f32> = (0..k * d).map(|_| rng.random::<f32>() * 100.0).collect();
        let mut x = Vec::with_capacity(n * d);
        for i in 0..n {
            let c = i % k;
            for t in 0..d {
                x.push(centers[c * d + t] + rng.random::<f32>() * 5.0);
            }
        }
        x
    }

    pub(crate) fn brute(x: &[f32], c: &[f32], d: usize) -> Vec<u32> {
        x.chunks(d)
            .map(|r| {
                let mut b = (0u32, f64::INFINITY);
                for (j, cj) in c.chunks(d).enumerate() {
                    let v = sqdist_exact(r, cj);
                    if v < b.1 {
                        b = (j as u32, v);
                    }
                }
                b.0
            })
            .collect()
    }
}


#[cfg(test)]
mod tests {
    use super::testdata::blobs;
    use super::*;

    #[test]
    fn same_result_whatever_the_threads() {
        let d = 16;
        let x = blobs(20000, d, 30, 3);
        // Lloyd for 20 iterations; Yinyang (60 centers: 6 groups) to convergence.
        for (algorithm, k, max_iter, tol) in [(Algorithm::Lloyd, 30, 20, 0.0), (Algorithm::Elkan, 60, 100, 1e-3)] {
            let init: Vec<f32> = x[..k * d].to_vec();
            let run = |t| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(t)
                    .build()
                    .unwrap()
                    .install(|| kmeans_single(&x, d, None, &init, max_iter, tol, algorithm).unwrap())
            };
            let a = run(1);
            let b = run(3);
            assert_eq!(a.labels, b.labels);
            assert_eq!(a.centers, b.centers);
            assert_eq!(a.n_iter, b.n_iter);
            assert_eq!(a.inertia.to_bits(), b.inertia.to_bits());
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let x = vec![1.0f32, f32::NAN];
        assert!(check_finite(&x, 1, "X").is_err());
        assert!(kmeans_single(&[1.0f32, 2.0], 1, None, &[0.0, 1.0, 2.0], 10, 0.0, Algorithm::Lloyd).is_err());
        assert!(kmeans_single::<f32>(&[], 1, None, &[0.0], 10, 0.0, Algorithm::Lloyd).is_err());
        assert!(Algorithm::parse("fast").is_err());
    }
}
