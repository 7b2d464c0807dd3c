//! Principal component analysis.
//!
//! For data $X \in \mathbb{R}^{n \times d}$ with column means $\mu$, the sample
//! covariance is $C = (X - 1\mu^\top)^\top (X - 1\mu^\top) / (n - 1)$. Its
//! eigendecomposition $C = V \Lambda V^\top$ (eigenvalues in decreasing order)
//! gives the principal axes (rows of `components` = columns of $V$), the
//! explained variances $\lambda_i$ and the singular values of the centred data
//! $s_i = \sqrt{\lambda_i (n - 1)}$.
//!
//! Three solvers, named as in scikit-learn's `PCA`:
//! - `covariance_eigh`: one pass over the data accumulates the column sums
//!   and the scatter matrix about a provisional centre ([`mean_scatter`],
//!   with faer's triangular matmul in [`products`]: rows in blocks of
//!   [`products::KC`], centred and multiplied in the input precision, blocks
//!   summed in `f64`),
//!   then faer's self-adjoint eigendecomposition of the covariance
//!   ([`eigh_desc`]), of which the leading eigenpairs are kept, as
//!   scikit-learn keeps them from LAPACK's `syevd`.
//!   Cost $O(n d^2 + d^3)$: the choice for $n \gg d$.
//! - `full`: thin SVD of the centred data in `f64`, $O(n d \min(n, d))$.
//! - `randomized`: Halko, Martinsson and Tropp (2011), Algorithm 4.4 (randomized
//!   subspace iteration, each basis orthonormalised by a thin SVD, which
//!   plays the role of its QR step) followed by an SVD of the small
//!   projected matrix; for wide inputs and few components.
//!
//! Signs follow scikit-learn's `svd_flip(u_based_decision=False)`, which
//! scikit-learn 1.9 applies for every solver: in each component the entry of
//! largest absolute value (first one on ties) is positive.
//!
//! Determinism: row blocks and their grouping depend only on `n` and `d`,
//! group results are summed in a fixed order, and faer runs with a fixed
//! parallel degree, so the output does not depend on the number of threads.

use faer::{Accum, Mat, MatRef, Par};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::products;
use crate::error::{BovwError, Result};

/// Rows per block of the column means.
pub const BLOCK_ROWS: usize = 2048;

/// faer's parallelism for the dense decompositions. faer splits work by the
/// *requested* degree, not by the threads that happen to run it, so a fixed
/// degree keeps results identical whatever the rayon pool size (a pool of
/// one thread simply runs the pieces in turn). Matrices of at most
/// [`SEQ_EIG_DIM`] rows and columns are decomposed on one thread: there the
/// task overhead exceeds the work.
pub(super) fn det_par(dim: usize) -> Par {
    if dim <= SEQ_EIG_DIM {
        Par::Seq
    } else {
        Par::Rayon(std::num::NonZeroUsize::new(4).expect("4 > 0"))
    }
}

/// See [`det_par`].
const SEQ_EIG_DIM: usize = 200;

/// Eigendecomposition of the symmetric `cov` (`d x d` row-major, lower
/// triangle read) by faer's self-adjoint solver (Householder
/// tridiagonalisation, then divide and conquer, or the QR algorithm below
/// 64 rows), with a fixed parallel degree ([`det_par`]).
///
/// Returns the eigenvalues in decreasing order, round-off negatives clipped
/// to 0 as scikit-learn clips them, and the eigenvectors as the rows of a
/// `d x d` row-major matrix (signs not yet flipped).
///
/// # Errors
/// [`BovwError::InvalidInput`] if the eigensolver does not converge.
fn eigh_desc(cov: &[f64], d: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    use faer::dyn_stack::{MemBuffer, MemStack};
    use faer::linalg::evd;
    let par = det_par(d);
    // Row-major `cov` read as column-major is its transpose: the same
    // symmetric matrix, lower triangle for upper.
    let a = MatRef::from_column_major_slice(cov, d, d);
    let scratch = evd::self_adjoint_evd_scratch::<f64>(d, evd::ComputeEigenvectors::Yes, par, Default::default());
    let mut mem = MemBuffer::new(scratch);
    let mut s = faer::diag::Diag::<f64>::zeros(d);
    let mut u = Mat::<f64>::zeros(d, d);
    evd::self_adjoint_evd(a, s.as_mut(), Some(u.as_mut()), par, MemStack::new(&mut mem), Default::default())
        .map_err(|e| BovwError::input(format!("eigendecomposition did not converge: {e:?}")))?;
    // Eigenvalues come out increasing: the leading ones are the last columns.
    let s = s.column_vector();
    let values = (0..d).rev().map(|j| s[j].max(0.0)).collect();
    let mut vectors = Vec::with_capacity(d * d);
    for j in (0..d).rev() {
        vectors.extend(u.col(j).iter().copied());
    }
    Ok((values, vectors))
}

/// Thin SVD `a = U diag(s) V^T` with a fixed parallel degree; singular values decreasing.
fn thin_svd(a: MatRef<'_, f64>) -> Result<(Mat<f64>, Vec<f64>, Mat<f64>)> {
    use faer::dyn_stack::{MemBuffer, MemStack};
    use faer::linalg::svd;
    let (m, n) = a.shape();
    let k = m.min(n);
    let par = det_par(k);
    let mut u = Mat::<f64>::zeros(m, k);
    let mut v = Mat::<f64>::zeros(n, k);
    let mut s = faer::diag::Diag::<f64>::zeros(k);
    let scratch = svd::svd_scratch::<f64>(m, n, svd::ComputeSvdVectors::Thin, svd::ComputeSvdVectors::Thin, par, Default::default());
    svd::svd(a, s.as_mut(), Some(u.as_mut()), Some(v.as_mut()), par, MemStack::new(&mut MemBuffer::new(scratch)), Default::default())
        .map_err(|e| BovwError::input(format!("SVD did not converge: {e:?}")))?;
    let vals = (0..k).map(|i| s.column_vector()[i]).collect();
    Ok((u, vals, v))
}

/// Element types the PCA kernels accept (`f32`, `f64`).
pub trait Sample: faer::traits::RealField + Copy + Send + Sync + std::ops::Sub<Output = Self> + 'static {
    /// Widen to `f64`.
    fn to_f64(self) -> f64;
    /// Narrow from `f64`.
    fn from_f64(v: f64) -> Self;
}
impl Sample for f32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}
impl Sample for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
}

/// How many components to keep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NComponents {
    /// `min(n_samples, n_features)`.
    All,
    /// A fixed number.
    Count(usize),
    /// The smallest number whose cumulated explained-variance ratio exceeds
    /// the fraction (strictly, as scikit-learn's `searchsorted(side="right")`);
    /// `1.0` keeps `min(n_samples, n_features)`.
    Fraction(f64),
}

/// The SVD solver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Solver {
    /// scikit-learn's rule: `covariance_eigh` when `d <= 1000` and `n >= 10 d`,
    /// else `full` when `max(n, d) <= 500`, else `randomized` when
    /// `1 <= k < 0.8 min(n, d)` for an integer `k`, else `full`.
    Auto,
    /// Thin SVD of the centred data.
    Full,
    /// Eigendecomposition of the covariance matrix.
    CovarianceEigh,
    /// Randomized subspace iteration.
    Randomized,
}

impl Solver {
    /// Parse scikit-learn's solver names.
    ///
    /// # Errors
    /// [`BovwError::InvalidParameter`] naming `svd_solver`.
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "auto" => Solver::Auto,
            "full" => Solver::Full,
            "covariance_eigh" => Solver::CovarianceEigh,
            "randomized" => Solver::Randomized,
            other => {
                return Err(BovwError::param(
                    "svd_solver",
                    format!("expected 'auto', 'full', 'covariance_eigh' or 'randomized', got {other:?}"),
                ))
            }
        })
    }

    /// The solver `Auto` resolves to for an `n x d` input.
    pub fn resolve(self, n: usize, d: usize, k: NComponents) -> Solver {
        if self != Solver::Auto {
            return self;
        }
        if d <= 1000 && n >= 10 * d {
            Solver::CovarianceEigh
        } else if n.max(d) <= 500 {
            Solver::Full
        } else {
            match k {
                NComponents::Count(k) if k >= 1 && (k as f64) < 0.8 * n.min(d) as f64 => Solver::Randomized,
                _ => Solver::Full,
            }
        }
    }

    /// scikit-learn's name.
    pub fn name(self) -> &'static str {
        match self {
            Solver::Auto => "auto",
            Solver::Full => "full",
            Solver::CovarianceEigh => "covariance_eigh",
            Solver::Randomized => "randomized",
        }
    }
}

/// Options of the randomized solver (scikit-learn's names).
#[derive(Clone, Copy, Debug)]
pub struct RandomizedOptions {
    /// Extra random directions beyond `n_components` (scikit-learn: 10).
    pub n_oversamples: usize,
    /// Power iterations; `None` = 7 if `k < 0.1 min(n, d)` else 4 (scikit-learn's "auto").
    pub n_iter: Option<usize>,
    /// Seed of the Gaussian test matrix.
    pub seed: u64,
}

impl Default for RandomizedOptions {
    fn default() -> Self {
        RandomizedOptions { n_oversamples: 10, n_iter: None, seed: 0 }
    }
}

/// A fitted PCA. Matrices are row-major `f64`.
#[derive(Clone, Debug)]
pub struct PcaFit {
    /// Per-feature mean, `d`.
    pub mean: Vec<f64>,
    /// Principal axes, `n_components x d`, row-major.
    pub components: Vec<f64>,
    /// Variance along each axis (denominator `n - 1`), `n_components`.
    pub explained_variance: Vec<f64>,
    /// `explained_variance / total variance`, `n_components`.
    pub explained_variance_ratio: Vec<f64>,
    /// Singular values of the centred data, `n_components`.
    pub singular_values: Vec<f64>,
    /// Probabilistic-PCA noise variance (Tipping and Bishop 1999, eq. 12.46
    /// in Bishop's PRML): mean of the discarded variances.
    pub noise_variance: f64,
    /// Total variance (trace of the covariance).
    pub total_variance: f64,
    /// Number of components kept.
    pub n_components: usize,
    /// Number of samples seen.
    pub n_samples: usize,
    /// Number of features.
    pub n_features: usize,
    /// The solver that ran.
    pub solver: Solver,
}

/// Sufficient statistics of a batch of rows: count, column sums and the
/// uncentred Gram matrix $X^\top X$ (`d x d`, row-major, full). Partial sums
/// of several batches add element-wise ([`PartialSums::merge`]).
#[derive(Clone, Debug, PartialEq)]
pub struct PartialSums {
    /// Number of rows.
    pub count: u64,
    /// Column sums, `d`.
    pub sum: Vec<f64>,
    /// $X^\top X$, `d x d` row-major.
    pub gram: Vec<f64>,
    /// Number of features.
    pub n_features: usize,
}

impl PartialSums {
    /// Empty statistics for `d` features.
    pub fn zeros(d: usize) -> Self {
        PartialSums { count: 0, sum: vec![0.0; d], gram: vec![0.0; d * d], n_features: d }
    }

    /// Add another batch's statistics.
    ///
    /// # Errors
    /// [`BovwError::Shape`] when the feature counts differ.
    pub fn merge(&mut self, other: &PartialSums) -> Result<()> {
        if other.n_features != self.n_features {
            return Err(BovwError::Shape {
                what: "partial sums".into(),
                expected: format!("{} features", self.n_features),
                got: format!("{} features", other.n_features),
            });
        }
        self.count += other.count;
        self.sum.iter_mut().zip(&other.sum).for_each(|(a, b)| *a += b);
        self.gram.iter_mut().zip(&other.gram).for_each(|(a, b)| *a += b);
        Ok(())
    }

    /// Mean and covariance matrix (denominator `count - 1`).
    ///
    /// # Errors
    /// [`BovwError::InvalidInput`] when fewer than 2 rows were seen.
    pub fn mean_covariance(&self) -> Result<(Vec<f64>, Vec<f64>)> {
        let n = self.count;
        if n < 2 {
            return Err(BovwError::input(format!("PCA needs at least 2 samples, got {n}")));
        }
        let d = self.n_features;
        let nf = n as f64;
        let mean: Vec<f64> = self.sum.iter().map(|s| s / nf).collect();
        let mut cov = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                cov[i * d + j] = (self.gram[i * d + j] - nf * mean[i] * mean[j]) / (nf - 1.0);
            }
        }
        Ok((mean, cov))
    }
}

/// Check the shape of a row-major `n x d` array; returns `n`.
///
/// # Errors
/// [`BovwError::Shape`] when `x.len()` is not `n * d` or `d == 0`.
pub fn check_shape<T>(x: &[T], d: usize, what: &str) -> Result<usize> {
    if d == 0 || x.len() % d != 0 {
        return Err(BovwError::Shape {
            what: what.into(),
            expected: "(n_samples, n_features) with n_features >= 1".into(),
            got: format!("{} values for {d} features", x.len()),
        });
    }
    Ok(x.len() / d)
}

/// Check shape and finiteness of a row-major `n x d` array.
///
/// # Errors
/// [`BovwError::Shape`] when `x.len()` is not `n * d` or `d == 0`;
/// [`BovwError::InvalidInput`] naming the first row with NaN or infinity.
pub fn check_input<T: Sample>(x: &[T], d: usize, what: &str) -> Result<usize> {
    check_shape(x, d, what)?;
    let bad = x
        .par_chunks(d)
        .position_first(|row| row.iter().any(|v| !v.to_f64().is_finite()));
    if let Some(row) = bad {
        return Err(BovwError::input(format!("{what}: row {row} contains NaN or infinity")));
    }
    Ok(x.len() / d)
}

/// Column means in `f64` (fixed blocks, fixed summation order).
pub fn column_mean<T: Sample>(x: &[T], d: usize) -> Vec<f64> {
    let n = x.len() / d;
    let partial: Vec<Vec<f64>> = x
        .par_chunks(BLOCK_ROWS * d)
        .map(|block| {
            let mut s = vec![0.0f64; d];
            for row in block.chunks_exact(d) {
                for (a, v) in s.iter_mut().zip(row) {
                    *a += v.to_f64();
                }
            }
            s
        })
        .collect();
    let mut mean = vec![0.0f64; d];
    for p in &partial {
        mean.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    if n > 0 {
        mean.iter_mut().for_each(|m| *m /= n as f64);
    }
    mean
}

/// Scatter matrix $\sum_i (x_i - c)(x_i - c)^\top$ about `center`, `d x d`
/// row-major (full, symmetric), accumulated in `f64`.
///
/// Rows are centred and multiplied in the input precision `T` in blocks of
/// [`products::KC`] rows and the blocks summed in `f64`; see [`products`]
/// for the blocking and the fixed partition that keeps the result
/// independent of the number of threads.
pub fn scatter<T: Sample>(x: &[T], d: usize, center: &[f64]) -> Vec<f64> {
    let center_t: Vec<T> = center.iter().map(|&c| T::from_f64(c)).collect();
    products::centered_sums_scatter(x, d, &center_t).1
}

/// Rows whose mean is the provisional centre of [`mean_scatter`].
const SHIFT_ROWS: usize = 1024;

/// Column means and the scatter matrix about them (`d x d`, row-major),
/// in one pass over `x`, which must have `n >= 1` rows.
///
/// The rows are centred on a provisional centre $s$, the mean of the
/// first [`SHIFT_ROWS`] rows rounded to `T`, while the column sums and
/// the scatter about $s$ are accumulated ([`products::centered_sums_scatter`]).
/// Then $\mu = s + \delta$ with $\delta = \sum_i (x_i - s) / n$ and
/// $S = \sum_i (x_i - s)(x_i - s)^\top - n \delta \delta^\top$. Since $s$ is
/// already close to $\mu$, the correction is small and cancels no digits
/// to speak of.
///
/// Non-finite input shows up as a non-finite sum or diagonal entry; only
/// then is `x` scanned again to name the offending row.
///
/// # Errors
/// [`BovwError::InvalidInput`] naming the first row with NaN or infinity.
pub fn mean_scatter<T: Sample>(x: &[T], d: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let n = x.len() / d;
    let m = n.clamp(1, SHIFT_ROWS);
    let mut shift = vec![0.0f64; d];
    for row in x[..m * d].chunks_exact(d) {
        shift.iter_mut().zip(row).for_each(|(a, v)| *a += v.to_f64());
    }
    let shift_t: Vec<T> = shift.iter().map(|s| T::from_f64(s / m as f64)).collect();
    let (sums, mut s) = products::centered_sums_scatter(x, d, &shift_t);
    if sums.iter().chain((0..d).map(|i| &s[i * d + i])).any(|v| !v.is_finite()) {
        check_input(x, d, "X")?;
    }
    let nf = n as f64;
    let delta: Vec<f64> = sums.iter().map(|v| v / nf).collect();
    for (i, row) in s.chunks_exact_mut(d).enumerate() {
        let di = nf * delta[i];
        row.iter_mut().zip(&delta).for_each(|(v, dj)| *v -= di * dj);
    }
    let mean = shift_t.iter().zip(&delta).map(|(c, dl)| c.to_f64() + dl).collect();
    Ok((mean, s))
}

/// Sufficient statistics (count, sums, $X^\top X$) of one batch, computed
/// as mean + centred scatter (accurate) and returned uncentred
/// ($X^\top X = S + n \mu \mu^\top$) so batches add.
///
/// # Errors
/// As [`check_input`].
pub fn partial_sums<T: Sample>(x: &[T], d: usize) -> Result<PartialSums> {
    let n = check_shape(x, d, "X")?;
    if n == 0 {
        return Ok(PartialSums::zeros(d));
    }
    let (mean, mut gram) = mean_scatter(x, d)?;
    let nf = n as f64;
    for i in 0..d {
        for j in 0..d {
            gram[i * d + j] += nf * mean[i] * mean[j];
        }
    }
    Ok(PartialSums { count: n as u64, sum: mean.iter().map(|m| m * nf).collect(), gram, n_features: d })
}

fn check_n_components(k: NComponents, n: usize, d: usize) -> Result<()> {
    let lim = n.min(d);
    match k {
        NComponents::Count(c) if c > lim => Err(BovwError::param(
            "n_components",
            format!("{c} must be between 0 and min(n_samples, n_features)={lim}"),
        )),
        NComponents::Fraction(f) if !(f > 0.0 && f <= 1.0) => Err(BovwError::param(
            "n_components",
            format!("a variance fraction must be in (0, 1], got {f}"),
        )),
        _ => Ok(()),
    }
}

/// Flip each row of `v` (`k x d`, row-major) so that its entry of largest
/// absolute value (first on ties) is positive: scikit-learn's
/// `svd_flip(u_based_decision=False)`.
pub fn svd_flip_rows(v: &mut [f64], d: usize) {
    for row in v.chunks_mut(d) {
        let mut best = 0usize;
        for (j, x) in row.iter().enumerate() {
            if x.abs() > row[best].abs() {
                best = j;
            }
        }
        if row[best] < 0.0 {
            row.iter_mut().for_each(|x| *x = -*x);
        }
    }
}

/// How many leading `variances` (decreasing) have a cumulated ratio to
/// `total_variance` of at most `f` (scikit-learn's `searchsorted(side="right")`).
fn fraction_below(variances: &[f64], total_variance: f64, f: f64) -> usize {
    let mut cum = 0.0;
    variances
        .iter()
        .take_while(|v| {
            cum += *v / total_variance;
            cum <= f
        })
        .count()
}

/// How many of the `variances` (decreasing) to keep for `k`, out of at
/// most `lim = min(n, d)`.
fn kept_count(variances: &[f64], total_variance: f64, lim: usize, k: NComponents) -> usize {
    let m = variances.len();
    let kept = match k {
        NComponents::All => lim,
        NComponents::Count(c) => c,
        NComponents::Fraction(f) if f >= 1.0 => lim,
        NComponents::Fraction(f) => (fraction_below(variances, total_variance, f) + 1).min(lim).min(m),
    };
    kept.min(m)
}

/// Build the fit from the leading spectrum: `variances` (decreasing, length
/// `m`, at least the kept ones), matching `axes` (at least the kept rows of
/// `m x d` row-major, not yet sign-flipped), the total variance and the
/// component choice. `rest_len`: `None` if `variances` is the whole
/// spectrum, else the length of the whole spectrum, whose values after the
/// kept ones are then known only through `total_variance`.
#[allow(clippy::too_many_arguments)]
fn finish(
    mut variances: Vec<f64>,
    mut axes: Vec<f64>,
    total_variance: f64,
    mean: Vec<f64>,
    n: usize,
    d: usize,
    k: NComponents,
    solver: Solver,
    rest_len: Option<usize>,
) -> PcaFit {
    let lim = n.min(d);
    let m = variances.len();
    svd_flip_rows(&mut axes, d);
    let ratio: Vec<f64> = variances.iter().map(|v| v / total_variance).collect();
    let kept = kept_count(&variances, total_variance, lim, k);
    let noise_variance = if kept < lim {
        if let Some(len) = rest_len {
            (total_variance - variances[..kept].iter().sum::<f64>()) / (len - kept) as f64
        } else {
            // scikit-learn averages over the whole spectrum it computed:
            // min(n, d) values for `full`, d eigenvalues for `covariance_eigh`.
            let rest = &variances[kept..m];
            if rest.is_empty() {
                0.0
            } else {
                rest.iter().sum::<f64>() / rest.len() as f64
            }
        }
    } else {
        0.0
    };
    variances.truncate(kept);
    axes.truncate(kept * d);
    let singular_values = variances.iter().map(|v| (v * (n as f64 - 1.0)).sqrt()).collect();
    PcaFit {
        mean,
        components: axes,
        explained_variance: variances,
        explained_variance_ratio: ratio[..kept].to_vec(),
        singular_values,
        noise_variance,
        total_variance,
        n_components: kept,
        n_samples: n,
        n_features: d,
        solver,
    }
}

/// Fit from a mean and a covariance matrix (`d x d` row-major, denominator
/// `n - 1`): the `covariance_eigh` solver's second half, also used on
/// partial sums reduced across a cluster.
///
/// # Errors
/// [`BovwError::InvalidParameter`] for `n_components`;
/// [`BovwError::InvalidInput`] if the eigensolver does not converge or the
/// covariance is not finite.
pub fn fit_covariance(mean: Vec<f64>, cov: &[f64], n: usize, k: NComponents) -> Result<PcaFit> {
    let d = mean.len();
    if cov.len() != d * d {
        return Err(BovwError::Shape {
            what: "covariance".into(),
            expected: format!("({d}, {d})"),
            got: format!("{} values", cov.len()),
        });
    }
    if n < 2 {
        return Err(BovwError::input(format!("PCA needs at least 2 samples, got n_samples={n}")));
    }
    if cov.iter().any(|v| !v.is_finite()) {
        return Err(BovwError::input("covariance contains NaN or infinity"));
    }
    check_n_components(k, n, d)?;
    let (variances, axes) = eigh_desc(cov, d)?;
    // As scikit-learn: the total is the sum of the (clipped) eigenvalues.
    let total = variances.iter().sum();
    Ok(finish(variances, axes, total, mean, n, d, k, Solver::CovarianceEigh, None))
}

/// Fit from reduced [`PartialSums`].
///
/// # Errors
/// As [`PartialSums::mean_covariance`] and [`fit_covariance`].
pub fn fit_partial_sums(ps: &PartialSums, k: NComponents) -> Result<PcaFit> {
    let (mean, cov) = ps.mean_covariance()?;
    fit_covariance(mean, &cov, ps.count as usize, k)
}

/// Centred `f64` copy of `x` as a faer matrix.
fn centered_mat<T: Sample>(x: &[T], d: usize, mean: &[f64]) -> Mat<f64> {
    let n = x.len() / d;
    Mat::from_fn(n, d, |i, j| x[i * d + j].to_f64() - mean[j])
}

fn fit_full<T: Sample>(x: &[T], d: usize, k: NComponents) -> Result<PcaFit> {
    let n = x.len() / d;
    let mean = column_mean(x, d);
    let xc = centered_mat(x, d, &mean);
    let (_, s, v) = thin_svd(xc.as_ref())?;
    let m = n.min(d);
    let denom = n as f64 - 1.0;
    let variances: Vec<f64> = (0..m).map(|i| s[i] * s[i] / denom).collect();
    let mut axes = Vec::with_capacity(m * d);
    for i in 0..m {
        let col = v.col(i);
        axes.extend((0..d).map(|j| col[j]));
    }
    let total = variances.iter().sum();
    Ok(finish(variances, axes, total, mean, n, d, k, Solver::Full, None))
}

/// Standard normal samples (Box-Muller on ChaCha8).
fn gaussian(rows: usize, cols: usize, seed: u64) -> Mat<f64> {
    use rand::Rng;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut vals = Vec::with_capacity(rows * cols + 1);
    while vals.len() < rows * cols {
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        vals.push(r * t.cos());
        vals.push(r * t.sin());
    }
    Mat::from_fn(rows, cols, |i, j| vals[i * cols + j])
}

fn fit_randomized<T: Sample>(x: &[T], d: usize, k: usize, opts: RandomizedOptions) -> Result<PcaFit> {
    let n = x.len() / d;
    let m = n.min(d);
    if k == 0 {
        return Err(BovwError::param("n_components", "must be >= 1 with svd_solver='randomized'"));
    }
    let mean = column_mean(x, d);
    let xc = centered_mat(x, d, &mean);
    let l = (k + opts.n_oversamples).min(m);
    let n_iter = opts.n_iter.unwrap_or(if (k as f64) < 0.1 * m as f64 { 7 } else { 4 });
    let par = det_par(d);
    let omega = gaussian(d, l, opts.seed);
    let mut y = Mat::<f64>::zeros(n, l);
    faer::linalg::matmul::matmul(y.as_mut(), Accum::Replace, xc.as_ref(), omega.as_ref(), 1.0, par);
    // Orthonormal bases by thin SVD (deterministic with a fixed degree).
    let mut q = thin_svd(y.as_ref())?.0;
    let mut z = Mat::<f64>::zeros(d, l);
    for _ in 0..n_iter {
        faer::linalg::matmul::matmul(z.as_mut(), Accum::Replace, xc.transpose(), q.as_ref(), 1.0, par);
        let qz = thin_svd(z.as_ref())?.0;
        faer::linalg::matmul::matmul(y.as_mut(), Accum::Replace, xc.as_ref(), qz.as_ref(), 1.0, par);
        q = thin_svd(y.as_ref())?.0;
    }
    // B = Q^T Xc (l x d); SVD of B^T (d x l) to keep the tall shape.
    let mut bt = Mat::<f64>::zeros(d, l);
    faer::linalg::matmul::matmul(bt.as_mut(), Accum::Replace, xc.transpose(), q.as_ref(), 1.0, par);
    let (u, s, _) = thin_svd(bt.as_ref())?; // u: d x l, right singular vectors of B
    let denom = n as f64 - 1.0;
    let kk = k.min(l);
    let variances: Vec<f64> = (0..kk).map(|i| s[i] * s[i] / denom).collect();
    let mut axes = Vec::with_capacity(kk * d);
    for i in 0..kk {
        let col = u.col(i);
        axes.extend((0..d).map(|j| col[j]));
    }
    let total: f64 = (0..d)
        .into_par_iter()
        .map(|j| (0..n).map(|i| xc[(i, j)] * xc[(i, j)]).sum::<f64>())
        .collect::<Vec<f64>>()
        .iter()
        .sum::<f64>()
        / denom;
    Ok(finish(variances, axes, total, mean, n, d, NComponents::Count(kk), Solver::Randomized, Some(n.min(d))))
}

/// Fit PCA on `x` (`n x d`, row-major).
///
/// # Errors
/// - [`BovwError::Shape`] / [`BovwError::InvalidInput`] from [`check_input`];
/// - [`BovwError::InvalidInput`] when `n < 2`;
/// - [`BovwError::InvalidParameter`] naming `n_components` when a count
///   exceeds `min(n, d)`, a fraction is outside (0, 1], or a fraction is
///   asked of the randomized solver.
pub fn fit<T: Sample>(x: &[T], d: usize, k: NComponents, solver: Solver, opts: RandomizedOptions) -> Result<PcaFit> {
    let n = check_shape(x, d, "X")?;
    let solver = solver.resolve(n, d, k);
    if solver != Solver::CovarianceEigh {
        // The covariance path finds non-finite rows in its single pass.
        check_input(x, d, "X")?;
    }
    if n < 2 {
        return Err(BovwError::input(format!("PCA needs at least 2 samples, got n_samples={n}")));
    }
    check_n_components(k, n, d)?;
    match solver {
        Solver::CovarianceEigh | Solver::Auto => {
            let (mean, mut cov) = mean_scatter(x, d)?;
            let denom = n as f64 - 1.0;
            cov.iter_mut().for_each(|v| *v /= denom);
            fit_covariance(mean, &cov, n, k)
        }
        Solver::Full => fit_full(x, d, k),
        Solver::Randomized => {
            let c = match k {
                NComponents::Count(c) => c,
                NComponents::All => n.min(d),
                NComponents::Fraction(_) => {
                    return Err(BovwError::param(
                        "n_components",
                        "a variance fraction is not supported with svd_solver='randomized'; use 'full', 'covariance_eigh' or 'auto'",
                    ))
                }
            };
            fit_randomized(x, d, c, opts)
        }
    }
}

/// Project rows: `(x - center) @ components^T` (`n x k`, row-major, `f64`
/// accumulation); pass `center = None` for MLlib's uncentred projection.
/// When `scale` is given, column `j` is divided by `scale[j]` (whitening).
///
/// # Errors
/// As [`check_input`] (rows with NaN or infinity are found from their
/// non-finite projections), and [`BovwError::Shape`] when widths differ.
pub fn transform<T: Sample>(
    x: &[T],
    d: usize,
    components: &[f64],
    center: Option<&[f64]>,
    scale: Option<&[f64]>,
) -> Result<Vec<T>> {
    check_shape(x, d, "X")?;
    let k = components.len() / d.max(1);
    if k == 0 {
        check_input(x, d, "X")?;
    }
    // offset_j = center . component_j
    let offset: Vec<f64> = match center {
        Some(c) => components.chunks(d).map(|row| row.iter().zip(c).map(|(a, b)| a * b).sum()).collect(),
        None => vec![0.0; k],
    };
    let (out, finite) = products::project(x, d, &components[..k * d], &offset, scale);
    // NaN or infinity in a row makes its projections non-finite: only then
    // is X scanned (again) to name the row.
    if !finite {
        check_input(x, d, "X")?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    fn data(n: usize, d: usize, seed: u64) -> Vec<f64> {
        let g = gaussian(n, d, seed);
        // Anisotropic: column j scaled by (j + 1).
        (0..n * d).map(|i| g[(i / d, i % d)] * ((i % d) as f64 + 1.0) + 3.0).collect()
    }

    #[test]
    fn covariance_matches_full_svd() {
        let (n, d) = (5000, 7);
        let x = data(n, d, 1);
        let a = fit(&x, d, NComponents::All, Solver::CovarianceEigh, Default::default()).unwrap();
        let b = fit(&x, d, NComponents::All, Solver::Full, Default::default()).unwrap();
        for i in 0..d {
            assert_relative_eq!(a.explained_variance[i], b.explained_variance[i], max_relative = 1e-9);
        }
        for (p, q) in a.components.iter().zip(&b.components) {
            assert!((p - q).abs() < 1e-7, "{p} vs {q}");
        }
        // Largest variance is along the last (most scaled) column.
        assert!(a.components[d - 1].abs() > 0.99);
        assert!(a.components[d - 1] > 0.0);
    }

    /// Covariance `Q diag(spectrum) Q^T` with a random orthogonal `Q`.
    fn covariance_with_spectrum(spectrum: &[f64], seed: u64) -> (Vec<f64>, Mat<f64>) {
        let d = spectrum.len();
        let q = thin_svd(gaussian(d, d, seed).as_ref()).unwrap().0;
        let cov = (0..d * d)
            .map(|idx| (0..d).map(|t| q[(idx / d, t)] * spectrum[t] * q[(idx % d, t)]).sum())
            .collect();
        (cov, q)
    }

    #[test]
    fn covariance_eigh_against_a_known_spectrum() {
        // Distinct values, an exactly repeated block of eigenvalues and a
        // rank deficiency (the discarded variance is round-off).
        let d = 150;
        let distinct: Vec<f64> = (0..d).map(|i| 50.0 * 0.95f64.powi(i as i32)).collect();
        let mut plateau: Vec<f64> = (0..d).map(|i| if i < 10 { 100.0 - i as f64 } else { 1.0 }).collect();
        plateau[d - 1] = 0.5;
        let low_rank: Vec<f64> = (0..d).map(|i| if i < 20 { 20.0 - i as f64 } else { 0.0 }).collect();
        for (spectrum, k) in [
            (&distinct, NComponents::Count(40)),
            (&distinct, NComponents::Fraction(0.9)),
            (&plateau, NComponents::Count(100)),
            (&low_rank, NComponents::Count(20)),
        ] {
            let (cov, q) = covariance_with_spectrum(spectrum, 17);
            let mean = vec![0.0; d];
            let f = fit_covariance(mean, &cov, 10_000, k).unwrap();
            let kept = f.n_components;
            if let NComponents::Count(c) = k {
                assert_eq!(kept, c);
            }
            let total: f64 = spectrum.iter().sum();
            for i in 0..kept {
                assert!((f.explained_variance[i] - spectrum[i]).abs() <= 1e-11 * spectrum[0], "{i}");
                assert!((f.explained_variance_ratio[i] - spectrum[i] / total).abs() <= 1e-12, "{i}");
                let row = &f.components[i * d..(i + 1) * d];
                for j in 0..=i {
                    let p: f64 = row.iter().zip(&f.components[j * d..(j + 1) * d]).map(|(a, b)| a * b).sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((p - want).abs() <= 1e-10, "components {i},{j}: {p}");
                }
                // Away from repeated values the axis is the known one.
                if spectrum[i] != spectrum[(i + 1).min(d - 1)] && (i == 0 || spectrum[i] != spectrum[i - 1]) {
                    let cos: f64 = (0..d).map(|r| row[r] * q[(r, i)]).sum();
                    assert!((cos.abs() - 1.0).abs() <= 1e-9, "axis {i}: |cos| {cos}");
                }
            }
            let rest = &spectrum[kept..];
            let noise = rest.iter().sum::<f64>() / rest.len() as f64;
            assert!((f.noise_variance - noise).abs() <= 1e-11 * spectrum[0], "noise {} vs {noise}", f.noise_variance);
        }
    }

    #[test]
    fn partial_sums_merge_equals_whole() {
        let (n, d) = (3000, 5);
        let x = data(n, d, 2);
        let whole = partial_sums(&x, d).unwrap();
        let mut a = partial_sums(&x[..1000 * d], d).unwrap();
        a.merge(&partial_sums(&x[1000 * d..], d).unwrap()).unwrap();
        assert_eq!(a.count, whole.count);
        for (p, q) in a.gram.iter().zip(&whole.gram) {
            assert_relative_eq!(p, q, max_relative = 1e-10);
        }
        let f1 = fit_partial_sums(&a, NComponents::Count(3)).unwrap();
        let f2 = fit(&x, d, NComponents::Count(3), Solver::CovarianceEigh, Default::default()).unwrap();
        for i in 0..3 {
            assert_relative_eq!(f1.explained_variance[i], f2.explained_variance[i], max_relative = 1e-8);
        }
    }

    #[test]
    fn fraction_and_errors() {
        let (n, d) = (400, 6);
        let x = data(n, d, 3);
        let f = fit(&x, d, NComponents::Fraction(0.5), Solver::Auto, Default::default()).unwrap();
        let cum: f64 = f.explained_variance_ratio.iter().sum();
        assert!(cum > 0.5);
        assert!(cum - f.explained_variance_ratio.last().unwrap() <= 0.5);
        assert!(fit(&x, d, NComponents::Count(7), Solver::Auto, Default::default()).is_err());
        assert!(fit(&x, d, NComponents::Fraction(1.5), Solver::Auto, Default::default()).is_err());
        assert!(fit(&x[..d], d, NComponents::All, Solver::Auto, Default::default()).is_err());
        let mut bad = x.clone();
        bad[3 * d + 1] = f64::NAN;
        let e = fit(&bad, d, NComponents::All, Solver::Auto, Default::default()).unwrap_err();
        assert!(e.to_string().contains("row 3"));
    }

    #[test]
    fn randomized_finds_top_components() {
        let (n, d) = (300, 600);
        // Rank-5 signal with decaying scales plus small noise.
        let a = gaussian(n, 5, 4);
        let b = gaussian(5, d, 5);
        let e = gaussian(n, d, 6);
        let x: Vec<f64> = (0..n * d)
            .map(|i| {
                let (r, c) = (i / d, i % d);
                (0..5).map(|t| a[(r, t)] * b[(t, c)] * (10.0 / (t as f64 + 1.0))).sum::<f64>() + 0.01 * e[(r, c)]
            })
            .collect();
        let a = fit(&x, d, NComponents::Count(3), Solver::Randomized, Default::default()).unwrap();
        let b = fit(&x, d, NComponents::Count(3), Solver::Full, Default::default()).unwrap();
        for i in 0..3 {
            assert_relative_eq!(a.explained_variance[i], b.explained_variance[i], max_relative = 1e-6);
        }
        assert_relative_eq!(a.total_variance, b.total_variance, max_relative = 1e-10);
    }

    #[test]
    fn transform_centres() {
        let (n, d) = (100, 4);
        let x = data(n, d, 5);
        let f = fit(&x, d, NComponents::Count(2), Solver::Full, Default::default()).unwrap();
        let t = transform(&x, d, &f.components, Some(&f.mean), None).unwrap();
        // Projections are centred with variance = explained variance.
        for j in 0..2 {
            let m: f64 = (0..n).map(|i| t[i * 2 + j]).sum::<f64>() / n as f64;
            assert!(m.abs() < 1e-9);
            let v: f64 = (0..n).map(|i| t[i * 2 + j].powi(2)).sum::<f64>() / (n as f64 - 1.0);
            assert_relative_eq!(v, f.explained_variance[j], max_relative = 1e-9);
        }
        let mut bad = x.clone();
        bad[7 * d + 2] = f64::INFINITY;
        let e = transform(&bad, d, &f.components, Some(&f.mean), None).unwrap_err();
        assert!(e.to_string().contains("row 7"), "{e}");
    }

    #[test]
    fn one_pass_mean_scatter_matches_two_pass() {
        for (n, d) in [(3000usize, 13usize), (700, 100), (5000, 1)] {
            let x = data(n, d, 9);
            let (mean, s) = mean_scatter(&x, d).unwrap();
            let m2 = column_mean(&x, d);
            let s2 = scatter(&x, d, &m2);
            for (a, b) in mean.iter().zip(&m2) {
                assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} vs {b}");
            }
            let scale = s2.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for (a, b) in s.iter().zip(&s2) {
                assert!((a - b).abs() <= 1e-11 * scale, "{a} vs {b}");
            }
        }
        let mut bad = data(3000, 5, 1);
        bad[2500 * 5 + 4] = f64::NAN;
        assert!(mean_scatter(&bad, 5).unwrap_err().to_string().contains("row 2500"));
    }
}
