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
//! - `covariance_eigh`: the scatter matrix is accumulated by blocked GEMMs (rows
//!   in blocks of [`BLOCK_ROWS`], each block centred and multiplied in the
//!   input precision, blocks summed in `f64`), then faer's self-adjoint
//!   eigendecomposition. Cost $O(n d^2 + d^3)$: the choice for $n \gg d$.
//! - `full`: thin SVD of the centred data in `f64`, $O(n d \min(n, d))$.
//! - `randomized`: Halko, Martinsson and Tropp (2011), Algorithm 4.4 (randomized
//!   subspace iteration, QR-normalised) followed by an SVD of the small
//!   projected matrix; for wide inputs and few components.
//!
//! Signs follow scikit-learn's `svd_flip(u_based_decision=False)`, which
//! scikit-learn 1.9 applies for every solver: in each component the entry of
//! largest absolute value (first one on ties) is positive.
//!
//! Determinism: row blocks and their grouping depend only on `n` and `d`,
//! and group results are summed in a fixed order, so the output does not
//! depend on the number of threads.

use faer::linalg::matmul::triangular::{matmul as tri_matmul, BlockStructure};
use faer::{Accum, Mat, MatRef, Par};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::error::{BovwError, Result};

/// Rows per block of the scatter-matrix GEMMs.
pub const BLOCK_ROWS: usize = 2048;

/// Element types the PCA kernels accept (`f32`, `f64`).
pub trait Sample: faer::traits::RealField + Copy + Send + Sync + 'static {
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

/// Check shape and finiteness of a row-major `n x d` array.
///
/// # Errors
/// [`BovwError::Shape`] when `x.len()` is not `n * d` or `d == 0`;
/// [`BovwError::InvalidInput`] naming the first row with NaN or infinity.
pub fn check_input<T: Sample>(x: &[T], d: usize, what: &str) -> Result<usize> {
    if d == 0 || x.len() % d != 0 {
        return Err(BovwError::Shape {
            what: what.into(),
            expected: "(n_samples, n_features) with n_features >= 1".into(),
            got: format!("{} values for {d} features", x.len()),
        });
    }
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
/// Rows are taken in blocks of [`BLOCK_ROWS`]; each block is centred and
/// multiplied (lower triangle only) in the input precision `T`, then added
/// to an `f64` accumulator. Blocks are split into a fixed number of groups
/// (depending on `n` and `d` only) that run in parallel.
pub fn scatter<T: Sample>(x: &[T], d: usize, center: &[f64]) -> Vec<f64> {
    let n = x.len() / d;
    let n_blocks = n.div_ceil(BLOCK_ROWS).max(1);
    // Memory cap of ~32 MB of f64 accumulators; at least one group.
    let by_mem = ((32usize << 20) / (8 * d * d).max(1)).max(1);
    let n_groups = n_blocks.min(8).min(by_mem).max(1);
    let blocks_per_group = n_blocks.div_ceil(n_groups);
    let inner_par = if n_groups == 1 { Par::rayon(0) } else { Par::Seq };
    let center_t: Vec<T> = center.iter().map(|&c| T::from_f64(c)).collect();
    let group_sums: Vec<Vec<f64>> = (0..n_groups)
        .into_par_iter()
        .map(|g| {
            let mut acc = vec![0.0f64; d * d];
            let mut block_buf: Vec<T> = Vec::with_capacity(BLOCK_ROWS * d);
            let mut prod = Mat::<T>::zeros(d, d);
            let first = g * blocks_per_group;
            let last = ((g + 1) * blocks_per_group).min(n_blocks);
            for b in first..last {
                let r0 = b * BLOCK_ROWS;
                let r1 = ((b + 1) * BLOCK_ROWS).min(n);
                if r0 >= r1 {
                    continue;
                }
                block_buf.clear();
                for row in x[r0 * d..r1 * d].chunks_exact(d) {
                    block_buf.extend(row.iter().zip(&center_t).map(|(&v, &c)| v - c));
                }
                let rows = r1 - r0;
                let xb = MatRef::from_row_major_slice(&block_buf, rows, d);
                tri_matmul(
                    prod.as_mut(),
                    BlockStructure::TriangularLower,
                    Accum::Replace,
                    xb.transpose(),
                    BlockStructure::Rectangular,
                    xb,
                    BlockStructure::Rectangular,
                    T::from_f64(1.0),
                    inner_par,
                );
                for j in 0..d {
                    let col = prod.col(j);
                    for i in j..d {
                        acc[i * d + j] += col[i].to_f64();
                    }
                }
            }
            acc
        })
        .collect();
    let mut s = vec![0.0f64; d * d];
    for g in &group_sums {
        s.iter_mut().zip(g).for_each(|(a, b)| *a += b);
    }
    for i in 0..d {
        for j in 0..i {
            s[j * d + i] = s[i * d + j];
        }
    }
    s
}

/// Sufficient statistics (count, sums, $X^\top X$) of one batch, computed
/// as mean + centred scatter (accurate) and returned uncentred
/// ($X^\top X = S + n \mu \mu^\top$) so batches add.
///
/// # Errors
/// As [`check_input`].
pub fn partial_sums<T: Sample>(x: &[T], d: usize) -> Result<PartialSums> {
    let n = check_input(x, d, "X")?;
    if n == 0 {
        return Ok(PartialSums::zeros(d));
    }
    let mean = column_mean(x, d);
    let mut gram = scatter(x, d, &mean);
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

/// Build the fit from the full spectrum: `variances` (decreasing, length
/// `m`), matching `axes` (`m x d` row-major, not yet sign-flipped),
/// the total variance and the component choice.
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
    truncated: bool,
) -> PcaFit {
    let lim = n.min(d);
    let m = variances.len();
    svd_flip_rows(&mut axes, d);
    let ratio: Vec<f64> = variances.iter().map(|v| v / total_variance).collect();
    let kept = match k {
        NComponents::All => lim,
        NComponents::Count(c) => c,
        NComponents::Fraction(f) if f >= 1.0 => lim,
        NComponents::Fraction(f) => {
            let mut cum = 0.0;
            let mut below = 0usize;
            for r in &ratio {
                cum += r;
                if cum <= f {
                    below += 1;
                } else {
                    break;
                }
            }
            (below + 1).min(lim).min(m)
        }
    };
    let kept = kept.min(m);
    let noise_variance = if kept < lim {
        if truncated {
            (total_variance - variances[..kept].iter().sum::<f64>()) / (lim - kept) as f64
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
    let c = MatRef::from_row_major_slice(cov, d, d);
    let evd = c
        .self_adjoint_eigen(faer::Side::Lower)
        .map_err(|e| BovwError::input(format!("eigendecomposition did not converge: {e:?}")))?;
    let u = evd.U();
    let s = evd.S().column_vector();
    // Decreasing order; clip round-off negatives as scikit-learn does.
    let mut variances = Vec::with_capacity(d);
    let mut axes = Vec::with_capacity(d * d);
    for idx in (0..d).rev() {
        variances.push(s[idx].max(0.0));
        let col = u.col(idx);
        axes.extend((0..d).map(|i| col[i]));
    }
    let total: f64 = variances.iter().sum();
    Ok(finish(variances, axes, total, mean, n, d, k, Solver::CovarianceEigh, false))
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
    let svd = xc
        .thin_svd()
        .map_err(|e| BovwError::input(format!("SVD did not converge: {e:?}")))?;
    let s = svd.S().column_vector();
    let v = svd.V();
    let m = n.min(d);
    let denom = n as f64 - 1.0;
    let variances: Vec<f64> = (0..m).map(|i| s[i] * s[i] / denom).collect();
    let mut axes = Vec::with_capacity(m * d);
    for i in 0..m {
        let col = v.col(i);
        axes.extend((0..d).map(|j| col[j]));
    }
    let total = variances.iter().sum();
    Ok(finish(variances, axes, total, mean, n, d, k, Solver::Full, false))
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
    let par = Par::rayon(0);
    let omega = gaussian(d, l, opts.seed);
    let mut y = Mat::<f64>::zeros(n, l);
    faer::linalg::matmul::matmul(y.as_mut(), Accum::Replace, xc.as_ref(), omega.as_ref(), 1.0, par);
    let mut q = y.qr().compute_thin_Q();
    let mut z = Mat::<f64>::zeros(d, l);
    for _ in 0..n_iter {
        faer::linalg::matmul::matmul(z.as_mut(), Accum::Replace, xc.transpose(), q.as_ref(), 1.0, par);
        let qz = z.qr().compute_thin_Q();
        faer::linalg::matmul::matmul(y.as_mut(), Accum::Replace, xc.as_ref(), qz.as_ref(), 1.0, par);
        q = y.qr().compute_thin_Q();
    }
    // B = Q^T Xc (l x d); SVD of B^T (d x l) to keep the tall shape.
    let mut bt = Mat::<f64>::zeros(d, l);
    faer::linalg::matmul::matmul(bt.as_mut(), Accum::Replace, xc.transpose(), q.as_ref(), 1.0, par);
    let svd = bt
        .thin_svd()
        .map_err(|e| BovwError::input(format!("SVD did not converge: {e:?}")))?;
    let s = svd.S().column_vector();
    let u = svd.U(); // d x l: right singular vectors of B
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
    Ok(finish(variances, axes, total, mean, n, d, NComponents::Count(kk), Solver::Randomized, true))
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
    let n = check_input(x, d, "X")?;
    if n < 2 {
        return Err(BovwError::input(format!("PCA needs at least 2 samples, got n_samples={n}")));
    }
    check_n_components(k, n, d)?;
    match solver.resolve(n, d, k) {
        Solver::CovarianceEigh | Solver::Auto => {
            let mean = column_mean(x, d);
            let mut cov = scatter(x, d, &mean);
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
                        "a variance fraction needs svd_solver='full', 'covariance_eigh' or 'auto'",
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
/// As [`check_input`], and [`BovwError::Shape`] when widths differ.
pub fn transform<T: Sample>(
    x: &[T],
    d: usize,
    components: &[f64],
    center: Option<&[f64]>,
    scale: Option<&[f64]>,
) -> Result<Vec<T>> {
    let n = check_input(x, d, "X")?;
    let k = components.len() / d.max(1);
    let comps_t: Vec<T> = components.iter().map(|&c| T::from_f64(c)).collect();
    let cm = MatRef::from_row_major_slice(&comps_t, k, d);
    // offset_j = center . component_j
    let offset: Vec<f64> = match center {
        Some(c) => components.chunks(d).map(|row| row.iter().zip(c).map(|(a, b)| a * b).sum()).collect(),
        None => vec![0.0; k],
    };
    let mut out = vec![T::from_f64(0.0); n * k];
    if k == 0 || n == 0 {
        return Ok(out);
    }
    out.par_chunks_mut(BLOCK_ROWS * k)
        .zip(x.par_chunks(BLOCK_ROWS * d))
        .for_each(|(o, xb)| {
            let rows = xb.len() / d;
            let xm = MatRef::from_row_major_slice(xb, rows, d);
            let mut res = Mat::<T>::zeros(rows, k);
            faer::linalg::matmul::matmul(res.as_mut(), Accum::Replace, xm, cm.transpose(), T::from_f64(1.0), Par::Seq);
            for i in 0..rows {
                for j in 0..k {
                    let mut v = res[(i, j)].to_f64() - offset[j];
                    if let Some(s) = scale {
                        v /= s[j];
                    }
                    o[i * k + j] = T::from_f64(v);
                }
            }
        });
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
    }
}
