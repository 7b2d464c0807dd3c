//! Gaussian mixture with diagonal covariances, fitted by expectation-maximisation:
//! the vocabulary of Fisher vectors.
//!
//! # The maths
//!
//! A mixture of `K` Gaussians in `R^d` with weights `w_k` (`sum_k w_k = 1`),
//! means `mu_k` and diagonal covariances `sigma_k^2` has the log-density
//!
//! ```text
//! l_k(x) = ln w_k - 1/2 (d ln 2pi + sum_t ln sigma_kt^2 + q_k(x)),
//! q_k(x) = sum_t (x_t - mu_kt)^2 / sigma_kt^2,
//! ln p(x) = logsumexp_k l_k(x),   gamma_k(x) = exp(l_k(x) - ln p(x)).
//! ```
//!
//! EM alternates the posteriors `gamma_k(x_i)` (E-step) and, from the
//! sufficient statistics `N_k = sum_i gamma_ik`, `S1_k = sum_i gamma_ik x_i`,
//! `S2_k = sum_i gamma_ik x_i^2` (M-step, scikit-learn's formulas):
//!
//! ```text
//! N_k' = N_k + 10 eps,  w_k = N_k' / sum_j N_j',  mu_k = S1_k / N_k',
//! sigma_k^2 = S2_k / N_k' - mu_k^2 + reg_covar .
//! ```
//!
//! `eps` is the machine epsilon of the input's dtype, as in scikit-learn. The
//! lower bound of an iteration is the mean of `ln p(x_i)` under the parameters
//! the iteration started from; EM stops when it changes by less than `tol`.
//! A component that receives no mass keeps weight `~10 eps / n`, its mean goes
//! to `S1 / (10 eps) ~ 0` and its variance to `reg_covar` (scikit-learn's
//! behaviour). `reg_covar` (default `1e-6` in Python) is what regularises a
//! collapsing component (all its mass on one point, or on points equal in a
//! feature). If a variance is not positive and finite after the M-step, or,
//! with `reg_covar = 0`, not above the rounding noise of `E[x^2] - mu^2`
//! (`4 eps E[x^2]`), the fit stops with [`BovwError::InvalidInput`] naming
//! the component and the feature: the component collapsed.
//!
//! # The E-step kernel
//!
//! `q_k(x) = sum_t p_kt x_t^2 - 2 sum_t p_kt mu_kt x_t + c_k` with
//! `p = 1 / sigma^2` and `c_k = sum_t p_kt mu_kt^2` is one matrix product of
//! `[x^2, x]` (`n x 2d`) by `[p_k, -2 p_k mu_k]` (`K x 2d`), computed in `f32`
//! by blocks of [`CHUNK`] rows with the crate's GEMM ([`gemm_abt`]). Its error
//! is at most `gamma_{2d+5} S` with `S` the sum of the absolute terms, and
//! `S <= 4 q + 5 c_k` (from `x^2 <= 2 (x - mu)^2 + 2 mu^2` and
//! `2 |mu x| <= mu^2 + x^2`), so every `l_k` is known within a bound `e_k`.
//! Every component that may lie within [`LOG_WINDOW`] nats (`e^-70 ~ 4e-31`)
//! of the best one is recomputed exactly in `f64` by the direct formula; the
//! others have posteriors below `4e-31` relative to the best and are dropped
//! from the log-sum-exp and the statistics (in the dense outputs of
//! [`log_prob_resp`] they get `exp(l_k - ln p)` from the `f32` estimate).
//! Rows whose estimate is not finite (overflow) are computed exactly for every
//! component. So `ln p(x)` and the statistics are those of the exact posterior
//! to `f64` rounding, at the cost of one `f32` GEMM and a few exact distances
//! per row; the M-step adds `gamma x` and `gamma x^2` only for these few
//! components.
//!
//! Per kept component the row loop costs one exact distance (16 partial
//! sums, four 256-bit vectors' worth) and one exponential: with `b` the best
//! exact `l_j`, `e_j = exp(l_j - b)` by the branch-free [`exp_f64`] (a
//! couple of ulp from `f64::exp`; loops over it vectorise), `ln p = b +
//! ln sum_j e_j` and `gamma_j = e_j / sum_i e_i`. The M-step sorts a
//! block's (row, component, posterior) triples by component and adds each
//! component's rows into `S1`, `S2` 16 values at a time from registers,
//! which gives each sum the same terms in the same order as row by row.
//! Early EM iterations are dense (from a broad initialisation, about half
//! of the components are within the window of a row's best), later ones
//! sparse (two or three). Where the CPU has AVX2 the row loop and the
//! M-step run an AVX2 build of the same arithmetic (explicit 256-bit
//! vectors for the distances and the M-step sums, no fused multiply-add),
//! so both builds give the same bits.
//!
//! # Determinism
//!
//! Rows are cut into parts whose size depends on `n` only; each part is
//! processed in order by one thread with `f64` accumulators, and the parts'
//! statistics are added in order: the fit does not depend on the number of
//! threads.
//!
//! # References
//! - A. P. Dempster, N. M. Laird, D. B. Rubin, "Maximum likelihood from
//!   incomplete data via the EM algorithm", JRSS B 39(1), 1977.
//! - scikit-learn, `sklearn/mixture/_gaussian_mixture.py` and `_base.py`
//!   (`GaussianMixture(covariance_type="diag")`).
//! - VLFeat, `vl/gmm.c` (`vl_get_gmm_data_posteriors`): the same posteriors.

use rayon::prelude::*;

use super::kmeans::{gemm_abt, Real, CHUNK};
use crate::error::{BovwError, Result};
use crate::features::use_avx2;

/// `ln(2 pi)`.
const LN_2PI: f64 = 1.837_877_066_409_345_5;

/// Components more than this many nats below a row's best are dropped from
/// its posteriors (`e^-70 ~ 4e-31`).
pub const LOG_WINDOW: f64 = 70.0;

/// A Gaussian mixture with diagonal covariances (row-major, `f64`).
#[derive(Clone, Debug, PartialEq)]
pub struct DiagGmm {
    /// Number of components `K`.
    pub n_components: usize,
    /// Dimension `d`.
    pub n_features: usize,
    /// Mixture weights, `K`.
    pub weights: Vec<f64>,
    /// Means, `K x d`.
    pub means: Vec<f64>,
    /// Variances (the covariance diagonals), `K x d`.
    pub covariances: Vec<f64>,
}

impl DiagGmm {
    /// A mixture from its parameters, checked.
    ///
    /// # Errors
    /// [`BovwError::Shape`] naming `means` or `covariances` when they are not
    /// `K x d` with `K = weights.len() >= 1`, `d >= 1`;
    /// [`BovwError::InvalidParameter`] naming `weights` (negative, not finite
    /// or summing to 0), `means` (not finite) or `covariances` (not positive
    /// and finite), with the component and feature.
    pub fn new(weights: Vec<f64>, means: Vec<f64>, covariances: Vec<f64>, d: usize) -> Result<Self> {
        let k = weights.len();
        if k == 0 {
            return Err(BovwError::param("weights", "the mixture needs at least one component"));
        }
        if d == 0 {
            return Err(BovwError::param("means", "the mixture needs at least one feature"));
        }
        for (what, v) in [("means", &means), ("covariances", &covariances)] {
            if v.len() != k * d {
                return Err(BovwError::Shape {
                    what: what.into(),
                    expected: format!("({k}, {d})"),
                    got: format!("{} values", v.len()),
                });
            }
        }
        if let Some(j) = weights.iter().position(|w| !(w.is_finite() && *w >= 0.0)) {
            return Err(BovwError::param("weights", format!("weight {j} is {} (must be finite and >= 0)", weights[j])));
        }
        if weights.iter().sum::<f64>() <= 0.0 {
            return Err(BovwError::param("weights", "the weights sum to 0"));
        }
        if let Some(i) = means.iter().position(|v| !v.is_finite()) {
            return Err(BovwError::param("means", format!("component {}, feature {} is not finite", i / d, i % d)));
        }
        if let Some(i) = covariances.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(BovwError::param(
                "covariances",
                format!("component {}, feature {} is {} (variances must be positive and finite)", i / d, i % d, covariances[i]),
            ));
        }
        Ok(DiagGmm { n_components: k, n_features: d, weights, means, covariances })
    }

    /// Precompute what the E-step needs.
    pub fn prepare(&self) -> PreparedGmm {
        let (k, d) = (self.n_components, self.n_features);
        let mut b = vec![0f32; k * 2 * d];
        let mut c = vec![0f64; k];
        let mut log_norm = vec![0f64; k];
        let mut prec = vec![0f64; k * d];
        for j in 0..k {
            let mut logdet = 0.0;
            let mut cj = 0.0;
            for t in 0..d {
                let var = self.covariances[j * d + t];
                let p = 1.0 / var;
                let mu = self.means[j * d + t];
                prec[j * d + t] = p;
                b[j * 2 * d + t] = p as f32;
                b[j * 2 * d + d + t] = (-2.0 * p * mu) as f32;
                cj += p * mu * mu;
                logdet += var.ln();
            }
            c[j] = cj;
            let w = self.weights[j];
            log_norm[j] = if w > 0.0 { w.ln() - 0.5 * (d as f64 * LN_2PI + logdet) } else { f64::NEG_INFINITY };
        }
        // gamma_{2d+5} for f32, doubled for safety.
        let u = f32::EPSILON as f64 / 2.0;
        let n = (2 * d + 5) as f64;
        let gamma = 2.0 * n * u / (1.0 - n * u);
        PreparedGmm { k, d, b, c, log_norm, prec, means: self.means.clone(), gamma }
    }
}

/// A mixture ready for the E-step (see the module docs).
#[derive(Clone, Debug)]
pub struct PreparedGmm {
    pub k: usize,
    pub d: usize,
    /// `[p_k, -2 p_k mu_k]`, `K x 2d`, `f32`.
    b: Vec<f32>,
    /// `c_k = sum_t p_kt mu_kt^2`.
    c: Vec<f64>,
    /// `ln w_k - (d ln 2pi + sum_t ln sigma_kt^2) / 2` (`-inf` for `w_k = 0`).
    pub(crate) log_norm: Vec<f64>,
    /// Precisions `1 / sigma^2`, `K x d`.
    pub(crate) prec: Vec<f64>,
    /// Means, `K x d`.
    pub(crate) means: Vec<f64>,
    /// Relative error factor of the `f32` GEMM.
    gamma: f64,
}

/// Per-thread buffers of the E-step, and its output for one block of rows.
#[derive(Default)]
pub(crate) struct Scratch {
    a: Vec<f32>,
    /// `f32` estimates of `q_k(x_r) - c_k`, `m x K`.
    buf: Vec<f32>,
    /// Upper bounds `lhat_k + e_k` of the current row.
    hi: Vec<f64>,
    /// Lower bounds `lhat_k - e_k` of the current row.
    low: Vec<f64>,
    /// Candidates of the current row before they are appended to `cand`.
    row_cand: Vec<u32>,
    /// The current row in `f64`.
    x: Vec<f64>,
    /// Row `r`'s kept components are `cand[start[r]..start[r + 1]]`.
    start: Vec<usize>,
    /// Kept components of every row of the block, in increasing order per row.
    cand: Vec<u32>,
    /// Their posteriors.
    post: Vec<f64>,
    /// `ln p(x_r)` of every row of the block.
    pub(crate) lse: Vec<f64>,
}

impl Scratch {
    /// Row `r`'s kept components and their posteriors.
    #[inline(always)]
    pub(crate) fn row(&self, r: usize) -> (&[u32], &[f64]) {
        let (a, b) = (self.start[r], self.start[r + 1]);
        (&self.cand[a..b], &self.post[a..b])
    }

    /// The `f32`-GEMM estimate of `l_j(x_r)`.
    #[inline(always)]
    pub(crate) fn lhat(&self, g: &PreparedGmm, r: usize, j: usize) -> f64 {
        let q = self.buf[r * g.k + j] as f64 + g.c[j];
        g.log_norm[j] - 0.5 * q
    }
}

/// Partial sums of the exact distances: 16 independent sums (four 256-bit
/// vectors), so that the additions (4 cycles of latency) do not wait on
/// each other.
const ACC: usize = 16;

/// `q = sum_t p_t (x_t - m_t)^2` with [`ACC`] partial sums (value `t` goes
/// to sum `t mod ACC` while `t < d - d mod ACC`), added as a tree
/// (`s_l += s_{l+8}`, then `s_l += s_{l+4}`, `+2`, `+1`), then the rest of
/// the values in order. [`sq_mahalanobis_avx2`] computes the same sums in
/// the same order.
#[inline(always)]
fn sq_mahalanobis(x: &[f64], m: &[f64], p: &[f64]) -> f64 {
    let d = x.len();
    let (m, p) = (&m[..d], &p[..d]);
    let mut acc = [0.0f64; ACC];
    let whole = d - d % ACC;
    for ((xc, mc), pc) in x[..whole].chunks_exact(ACC).zip(m[..whole].chunks_exact(ACC)).zip(p[..whole].chunks_exact(ACC)) {
        for l in 0..ACC {
            let e = xc[l] - mc[l];
            acc[l] += pc[l] * e * e;
        }
    }
    let mut w = ACC / 2;
    while w > 0 {
        for l in 0..w {
            acc[l] += acc[l + w];
        }
        w /= 2;
    }
    let mut q = acc[0];
    for t in whole..d {
        let e = x[t] - m[t];
        q += p[t] * e * e;
    }
    q
}

/// [`sq_mahalanobis`] with 256-bit vectors (the same bits).
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn sq_mahalanobis_avx2(x: &[f64], m: &[f64], p: &[f64]) -> f64 {
    use std::arch::x86_64::*;
    let d = x.len();
    let (m, p) = (&m[..d], &p[..d]);
    let whole = d - d % ACC;
    let (xp, mp, pp) = (x.as_ptr(), m.as_ptr(), p.as_ptr());
    let mut a = [_mm256_setzero_pd(); 4];
    let mut t = 0;
    while t < whole {
        for (v, acc) in a.iter_mut().enumerate() {
            // SAFETY: t + 4 v + 4 <= whole <= d, the length of all three.
            let o = t + 4 * v;
            let e = _mm256_sub_pd(_mm256_loadu_pd(xp.add(o)), _mm256_loadu_pd(mp.add(o)));
            *acc = _mm256_add_pd(*acc, _mm256_mul_pd(_mm256_mul_pd(_mm256_loadu_pd(pp.add(o)), e), e));
        }
        t += ACC;
    }
    let s0 = _mm256_add_pd(a[0], a[2]);
    let s1 = _mm256_add_pd(a[1], a[3]);
    let s = _mm256_add_pd(s0, s1);
    let h = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    let mut q = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
    for t in whole..d {
        let e = x[t] - m[t];
        q += p[t] * e * e;
    }
    q
}

/// Exact `l_k(x)` by the direct formula (see [`sq_mahalanobis`]).
#[inline(always)]
fn exact_log_density<const AVX2: bool>(g: &PreparedGmm, j: usize, x: &[f64]) -> f64 {
    let d = g.d;
    let (p, m) = (&g.prec[j * d..(j + 1) * d], &g.means[j * d..(j + 1) * d]);
    #[cfg(target_arch = "x86_64")]
    {
        if AVX2 {
            // SAFETY: AVX2 is only true in code the CPU check selected.
            return g.log_norm[j] - 0.5 * unsafe { sq_mahalanobis_avx2(x, m, p) };
        }
    }
    g.log_norm[j] - 0.5 * sq_mahalanobis(x, m, p)
}

/// `e^x` for `f64`, branch-free so that loops over it vectorise:
/// `x = k ln 2 + r` with `k` the nearest integer to `x / ln 2` and
/// `|r| <= ln 2 / 2` (Cody and Waite's two-part `ln 2`: `k ln2_hi` is exact
/// for `|k| < 2^21`), `e^r` by its Taylor series to `r^13` (truncation
/// below `5e-18` relative), then times `2^k` built in the exponent bits (in
/// two factors when `2^k` is not a normal number). Within a couple of units
/// in the last place of `f64::exp` for normal results; 0 below `-745.2`,
/// infinity above `709.79`, NaN for NaN.
#[inline(always)]
pub(crate) fn exp_f64(x: f64) -> f64 {
    // ln 2 = LN2_HI + LN2_LO; LN2_HI has 32 significant bits.
    const LN2_HI: f64 = 0.693_147_180_369_123_8; // 0x3fe62e42fee00000
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10; // 0x3dea39ef35793c76
    const MAGIC: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52: round to an integer
    let xc = x.clamp(-746.0, 710.0);
    let kb = xc * std::f64::consts::LOG2_E + MAGIC;
    let k = kb - MAGIC;
    let ki = (kb.to_bits() as i64).wrapping_sub(MAGIC.to_bits() as i64);
    let r = (xc - k * LN2_HI) - k * LN2_LO;
    let mut p = 1.0 / 6_227_020_800.0; // 1/13!
    p = p * r + 1.0 / 479_001_600.0;
    p = p * r + 1.0 / 39_916_800.0;
    p = p * r + 1.0 / 3_628_800.0;
    p = p * r + 1.0 / 362_880.0;
    p = p * r + 1.0 / 40_320.0;
    p = p * r + 1.0 / 5_040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    // 2^k as 2^(k - o) * 2^o, o = -1000, 0 or 1000, so that both factors
    // are normal (k is in -1076..=1025 after the clamp).
    let o = if ki < -1020 {
        -1000
    } else if ki > 1020 {
        1000
    } else {
        0
    };
    let scale = f64::from_bits(((ki - o + 1023) as u64) << 52);
    let post = f64::from_bits(((o + 1023) as u64) << 52);
    let y = p * scale * post;
    let y = if x < -745.2 { 0.0 } else { y };
    let y = if x > 709.79 { f64::INFINITY } else { y };
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// E-step on one block of rows (`m x d`, `m <= CHUNK`): afterwards
/// `s.row(r)` gives row `r`'s kept components and their posteriors,
/// `s.lse[r]` its `ln p(x_r)` and `s.lhat(g, r, j)` the `f32` estimate of
/// every `l_j(x_r)`.
pub(crate) fn posteriors_block<T: Real>(rows: &[T], g: &PreparedGmm, s: &mut Scratch) {
    let (k, d) = (g.k, g.d);
    let m = rows.len() / d;
    s.start.clear();
    s.start.push(0);
    s.cand.clear();
    s.post.clear();
    s.lse.clear();
    if m == 0 {
        return;
    }
    s.a.resize(m * 2 * d, 0.0);
    for (r, x) in rows.chunks_exact(d).enumerate() {
        let a = &mut s.a[r * 2 * d..(r + 1) * 2 * d];
        for t in 0..d {
            let v = x[t].to_f64();
            a[t] = (v * v) as f32;
            a[d + t] = v as f32;
        }
    }
    s.buf.resize(m * k, 0.0);
    gemm_abt(&s.a, &g.b, m, k, 2 * d, &mut s.buf);
    s.hi.resize(k, 0.0);
    s.low.resize(k, 0.0);
    s.row_cand.resize(k, 0);
    s.x.resize(d, 0.0);
    #[cfg(target_arch = "x86_64")]
    {
        if use_avx2() {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { posterior_rows_avx2(rows, g, s) };
            return;
        }
    }
    posterior_rows::<T, false>(rows, g, s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn posterior_rows_avx2<T: Real>(rows: &[T], g: &PreparedGmm, s: &mut Scratch) {
    posterior_rows::<T, true>(rows, g, s)
}

/// The row loop of [`posteriors_block`] (see the module docs): bounds from
/// the `f32` estimates, the candidates, their exact log-densities, one
/// [`exp_f64`] per candidate and the posteriors `e_j / sum_i e_i`.
#[inline(always)]
fn posterior_rows<T: Real, const AVX2: bool>(rows: &[T], g: &PreparedGmm, s: &mut Scratch) {
    let (k, d) = (g.k, g.d);
    let half_gamma = 0.5 * g.gamma;
    let Scratch { buf, hi, low, row_cand, x: xs, start, cand, post, lse, .. } = s;
    let (hi, low, row_cand, xs) = (&mut hi[..k], &mut low[..k], &mut row_cand[..k], &mut xs[..d]);
    let (c, log_norm) = (&g.c[..k], &g.log_norm[..k]);
    for (r, x) in rows.chunks_exact(d).enumerate() {
        for (xv, v) in xs.iter_mut().zip(x) {
            *xv = v.to_f64();
        }
        let qrow = &buf[r * k..(r + 1) * k];
        let mut bad = false;
        for j in 0..k {
            let q = qrow[j] as f64 + c[j];
            let l = log_norm[j] - 0.5 * q;
            let e = half_gamma * (4.0 * q.max(0.0) + 5.0 * c[j]);
            hi[j] = l + e;
            low[j] = l - e;
            bad |= !q.is_finite();
        }
        // Lane-wise maximum of the lower bounds (NaN never wins).
        let mut lo4 = [f64::NEG_INFINITY; 4];
        let whole = k - k % 4;
        for c in low[..whole].chunks_exact(4) {
            for l in 0..4 {
                lo4[l] = if c[l] > lo4[l] { c[l] } else { lo4[l] };
            }
        }
        let mut lo = f64::NEG_INFINITY;
        for &v in lo4.iter().chain(&low[whole..]) {
            lo = if v > lo { v } else { lo };
        }
        let base = cand.len();
        if !bad && lo.is_finite() {
            let thr = lo - LOG_WINDOW;
            // Branch-free compaction; NaN-safe: anything not provably below
            // the window is kept.
            let mut n = 0;
            for (j, &h) in hi.iter().enumerate() {
                row_cand[n] = j as u32;
                n += !(h < thr) as usize;
            }
            cand.extend_from_slice(&row_cand[..n]);
        } else {
            cand.extend(0..k as u32);
        }
        let mut best = f64::NEG_INFINITY;
        for &j in &cand[base..] {
            let l = exact_log_density::<AVX2>(g, j as usize, xs);
            post.push(l);
            if l > best {
                best = l;
            }
        }
        let p = &mut post[base..];
        for v in p.iter_mut() {
            *v = exp_f64(*v - best);
        }
        let sum: f64 = p.iter().sum();
        for v in p.iter_mut() {
            *v /= sum;
        }
        lse.push(best + sum.ln());
        start.push(cand.len());
    }
}

/// Sufficient statistics of a batch for one EM iteration.
#[derive(Clone, Debug, PartialEq)]
pub struct SuffStats {
    /// `N_k = sum_i gamma_ik`, `K`.
    pub nk: Vec<f64>,
    /// `S1_k = sum_i gamma_ik x_i`, `K x d`.
    pub s1: Vec<f64>,
    /// `S2_k = sum_i gamma_ik x_i^2`, `K x d`.
    pub s2: Vec<f64>,
    /// `sum_i ln p(x_i)` (0 for statistics from labels).
    pub log_likelihood: f64,
    /// Number of rows.
    pub n_samples: usize,
}

impl SuffStats {
    /// Zero statistics for `k` components in `d` dimensions.
    pub fn zeros(k: usize, d: usize) -> Self {
        SuffStats { nk: vec![0.0; k], s1: vec![0.0; k * d], s2: vec![0.0; k * d], log_likelihood: 0.0, n_samples: 0 }
    }

    /// Add another batch's statistics (same `K` and `d`).
    ///
    /// # Errors
    /// [`BovwError::Shape`] naming `stats` when the sizes differ.
    pub fn merge(&mut self, o: &SuffStats) -> Result<()> {
        if o.nk.len() != self.nk.len() || o.s1.len() != self.s1.len() || o.s2.len() != self.s2.len() {
            return Err(BovwError::Shape {
                what: "stats".into(),
                expected: format!("{} components x {} values", self.nk.len(), self.s1.len()),
                got: format!("{} components x {} values", o.nk.len(), o.s1.len()),
            });
        }
        self.nk.iter_mut().zip(&o.nk).for_each(|(a, b)| *a += b);
        self.s1.iter_mut().zip(&o.s1).for_each(|(a, b)| *a += b);
        self.s2.iter_mut().zip(&o.s2).for_each(|(a, b)| *a += b);
        self.log_likelihood += o.log_likelihood;
        self.n_samples += o.n_samples;
        Ok(())
    }
}

fn check_x<T>(x: &[T], d: usize) -> Result<usize> {
    if d == 0 || x.len() % d != 0 {
        return Err(BovwError::Shape {
            what: "X".into(),
            expected: format!("(n_samples, {d})"),
            got: format!("{} values", x.len()),
        });
    }
    Ok(x.len() / d)
}

/// Rows per part of the deterministic reductions: depends on `n` only.
fn part_rows(n: usize) -> usize {
    let target = n.div_ceil(32).max(4 * CHUNK);
    target.div_ceil(CHUNK) * CHUNK
}

/// Sum per-part statistics computed by `f(first_row, rows, stats)`, in order.
fn reduce_parts<T: Real>(
    x: &[T],
    d: usize,
    k: usize,
    f: impl Fn(usize, &[T], &mut SuffStats) + Send + Sync,
) -> SuffStats {
    let n = x.len() / d;
    let pr = part_rows(n);
    let parts: Vec<SuffStats> = (0..n.div_ceil(pr))
        .into_par_iter()
        .map(|p| {
            let mut st = SuffStats::zeros(k, d);
            let rows = &x[p * pr * d..((p + 1) * pr).min(n) * d];
            st.n_samples = rows.len() / d;
            f(p * pr, rows, &mut st);
            st
        })
        .collect();
    let mut out = SuffStats::zeros(k, d);
    for p in &parts {
        out.merge(p).expect("same sizes");
    }
    out
}

#[inline(always)]
fn axpy2(r: f64, x: &[f64], s1: &mut [f64], s2: &mut [f64]) {
    for ((a, b), &v) in s1.iter_mut().zip(s2.iter_mut()).zip(x) {
        let rv = r * v;
        *a += rv;
        *b += rv * v;
    }
}

/// E-step statistics of a batch under the mixture `g`: one EM iteration's
/// contribution of these rows (`X`: `n x d`, row-major).
///
/// # Errors
/// [`BovwError::Shape`] when `X` is not `n x d` with the mixture's `d`.
pub fn suff_stats<T: Real>(x: &[T], d: usize, g: &PreparedGmm) -> Result<SuffStats> {
    check_x(x, d)?;
    if d != g.d {
        return Err(BovwError::Shape {
            what: "X".into(),
            expected: format!("(n_samples, {}) like the mixture", g.d),
            got: format!("(n_samples, {d})"),
        });
    }
    let k = g.k;
    Ok(reduce_parts(x, d, k, |_, rows, st| {
        let mut s = Scratch::default();
        let mut ms = MStepScratch::default();
        let avx2 = use_avx2();
        for block in rows.chunks(CHUNK * d) {
            posteriors_block(block, g, &mut s);
            #[cfg(target_arch = "x86_64")]
            {
                if avx2 {
                    // SAFETY: the CPU supports AVX2 (checked by `use_avx2`).
                    unsafe { accumulate_block_avx2(block, &s, st, &mut ms) };
                    continue;
                }
            }
            let _ = avx2;
            accumulate_block::<T, false>(block, &s, st, &mut ms);
        }
    }))
}

/// Buffers of [`accumulate_block`]: the block's posteriors by component.
#[derive(Default)]
struct MStepScratch {
    /// The block in `f64`, `m x d`.
    xf: Vec<f64>,
    /// Component `j`'s entries are `at[j]..at[j + 1]` of `rows` and `post`.
    at: Vec<usize>,
    /// Fill pointers while sorting.
    fill: Vec<usize>,
    rows: Vec<u32>,
    post: Vec<f64>,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn accumulate_block_avx2<T: Real>(rows: &[T], s: &Scratch, st: &mut SuffStats, ms: &mut MStepScratch) {
    accumulate_block::<T, true>(rows, s, st, ms)
}

/// Values per chunk of [`accumulate_block`]: two sums of 16 `f64` (eight
/// 256-bit registers) stay in registers while a component's rows are added.
const MCHUNK: usize = 16;

/// Add one block's posteriors to the statistics: `N_k += gamma`,
/// `S1_k += gamma x`, `S2_k += gamma x^2` (as `(gamma x) x`). The block's
/// (row, component, posterior) triples are sorted by component (rows stay
/// in order), and each component's sums are updated [`MCHUNK`] values at a
/// time with every row in turn, in registers: every sum receives the same
/// terms in the same order as row by row, so the bits do not depend on
/// this blocking.
#[inline(always)]
fn accumulate_block<T: Real, const AVX2: bool>(rows: &[T], s: &Scratch, st: &mut SuffStats, ms: &mut MStepScratch) {
    let d = st.s1.len() / st.nk.len().max(1);
    let k = st.nk.len();
    let m = rows.len() / d;
    ms.xf.resize(m * d, 0.0);
    ms.xf.iter_mut().zip(rows).for_each(|(a, v)| *a = v.to_f64());
    ms.at.clear();
    ms.at.resize(k + 1, 0);
    for r in 0..m {
        st.log_likelihood += s.lse[r];
        let (cand, post) = s.row(r);
        for (&j, &p) in cand.iter().zip(post) {
            if p > 0.0 {
                ms.at[j as usize + 1] += 1;
            }
        }
    }
    for j in 0..k {
        ms.at[j + 1] += ms.at[j];
    }
    let nnz = ms.at[k];
    ms.rows.resize(nnz, 0);
    ms.post.resize(nnz, 0.0);
    ms.fill.clear();
    ms.fill.extend_from_slice(&ms.at[..k]);
    for r in 0..m {
        let (cand, post) = s.row(r);
        for (&j, &p) in cand.iter().zip(post) {
            if p > 0.0 {
                let f = &mut ms.fill[j as usize];
                ms.rows[*f] = r as u32;
                ms.post[*f] = p;
                *f += 1;
            }
        }
    }
    let whole = d - d % MCHUNK;
    for j in 0..k {
        let (e0, e1) = (ms.at[j], ms.at[j + 1]);
        if e0 == e1 {
            continue;
        }
        let (er, ep) = (&ms.rows[e0..e1], &ms.post[e0..e1]);
        for &p in ep {
            st.nk[j] += p;
        }
        let s1 = &mut st.s1[j * d..(j + 1) * d];
        let s2 = &mut st.s2[j * d..(j + 1) * d];
        let mut t0 = 0;
        while t0 < whole {
            #[cfg(target_arch = "x86_64")]
            {
                if AVX2 {
                    // SAFETY: AVX2 is only true in code the CPU check
                    // selected; t0 + MCHUNK <= d.
                    unsafe { add_chunk_avx2(&ms.xf, d, t0, er, ep, s1, s2) };
                    t0 += MCHUNK;
                    continue;
                }
            }
            add_chunk(&ms.xf, d, t0, MCHUNK, er, ep, s1, s2);
            t0 += MCHUNK;
        }
        if whole < d {
            add_chunk(&ms.xf, d, whole, d - whole, er, ep, s1, s2);
        }
    }
}

/// `s1[t] += (p x_t)`, `s2[t] += (p x_t) x_t` for `t` in `t0..t0 + w`, for
/// every entry (row of `xf`, posterior `p`) in order.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn add_chunk(xf: &[f64], d: usize, t0: usize, w: usize, er: &[u32], ep: &[f64], s1: &mut [f64], s2: &mut [f64]) {
    let mut a = [0.0f64; MCHUNK];
    let mut b = [0.0f64; MCHUNK];
    a[..w].copy_from_slice(&s1[t0..t0 + w]);
    b[..w].copy_from_slice(&s2[t0..t0 + w]);
    for (&r, &p) in er.iter().zip(ep) {
        let x = &xf[r as usize * d + t0..r as usize * d + t0 + w];
        for l in 0..w {
            let rv = p * x[l];
            a[l] += rv;
            b[l] += rv * x[l];
        }
    }
    s1[t0..t0 + w].copy_from_slice(&a[..w]);
    s2[t0..t0 + w].copy_from_slice(&b[..w]);
}

/// [`add_chunk`] for `w = MCHUNK` with 256-bit vectors (the same bits).
///
/// # Safety
/// The CPU must support AVX2; `t0 + MCHUNK <= d`, every row of `er` is a
/// row of `xf` (`m x d`), and `s1`, `s2` have `d` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn add_chunk_avx2(xf: &[f64], d: usize, t0: usize, er: &[u32], ep: &[f64], s1: &mut [f64], s2: &mut [f64]) {
    use std::arch::x86_64::*;
    let (p1, p2) = (s1.as_mut_ptr().add(t0), s2.as_mut_ptr().add(t0));
    let mut a = [_mm256_setzero_pd(); 4];
    let mut b = [_mm256_setzero_pd(); 4];
    for v in 0..4 {
        a[v] = _mm256_loadu_pd(p1.add(4 * v));
        b[v] = _mm256_loadu_pd(p2.add(4 * v));
    }
    for (&r, &p) in er.iter().zip(ep) {
        let xp = xf.as_ptr().add(r as usize * d + t0);
        let pv = _mm256_set1_pd(p);
        for v in 0..4 {
            let x = _mm256_loadu_pd(xp.add(4 * v));
            let rv = _mm256_mul_pd(pv, x);
            a[v] = _mm256_add_pd(a[v], rv);
            b[v] = _mm256_add_pd(b[v], _mm256_mul_pd(rv, x));
        }
    }
    for v in 0..4 {
        _mm256_storeu_pd(p1.add(4 * v), a[v]);
        _mm256_storeu_pd(p2.add(4 * v), b[v]);
    }
}

/// Statistics of a hard assignment (`labels[i]` in `0..k`, or `-1` for
/// none): the one-hot responsibilities scikit-learn builds from a K-Means or
/// k-means++ initialisation.
///
/// # Errors
/// [`BovwError::Shape`] for `X` or `labels` of the wrong size;
/// [`BovwError::InvalidParameter`] naming `labels` for a value outside `-1..k`.
pub fn stats_from_labels<T: Real>(x: &[T], d: usize, labels: &[i64], k: usize) -> Result<SuffStats> {
    let n = check_x(x, d)?;
    if labels.len() != n {
        return Err(BovwError::Shape { what: "labels".into(), expected: format!("({n},)"), got: format!("({},)", labels.len()) });
    }
    if let Some(i) = labels.iter().position(|&l| l < -1 || l >= k as i64) {
        return Err(BovwError::param("labels", format!("label {} at position {i} is outside [-1, {k})", labels[i])));
    }
    Ok(reduce_parts(x, d, k, |first, rows, st| {
        let mut xf = vec![0f64; d];
        for (i, row) in rows.chunks_exact(d).enumerate() {
            let l = labels[first + i];
            if l < 0 {
                continue;
            }
            let j = l as usize;
            xf.iter_mut().zip(row).for_each(|(a, v)| *a = v.to_f64());
            st.nk[j] += 1.0;
            axpy2(1.0, &xf, &mut st.s1[j * d..(j + 1) * d], &mut st.s2[j * d..(j + 1) * d]);
        }
    }))
}

/// Statistics of dense responsibilities `resp` (`n x k`, row-major), as
/// scikit-learn's `init_params="random"` builds them.
///
/// # Errors
/// [`BovwError::Shape`] for `X` or `resp` of the wrong size;
/// [`BovwError::InvalidParameter`] naming `resp` for a negative or
/// non-finite value.
pub fn stats_from_resp<T: Real>(x: &[T], d: usize, resp: &[f64], k: usize) -> Result<SuffStats> {
    let n = check_x(x, d)?;
    if resp.len() != n * k {
        return Err(BovwError::Shape { what: "resp".into(), expected: format!("({n}, {k})"), got: format!("{} values", resp.len()) });
    }
    if let Some(i) = resp.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
        return Err(BovwError::param("resp", format!("row {}, component {} is {}", i / k.max(1), i % k.max(1), resp[i])));
    }
    Ok(reduce_parts(x, d, k, |first, rows, st| {
        let mut xf = vec![0f64; d];
        for (i, row) in rows.chunks_exact(d).enumerate() {
            xf.iter_mut().zip(row).for_each(|(a, v)| *a = v.to_f64());
            let rr = &resp[(first + i) * k..(first + i + 1) * k];
            for (j, &r) in rr.iter().enumerate() {
                if r > 0.0 {
                    st.nk[j] += r;
                    axpy2(r, &xf, &mut st.s1[j * d..(j + 1) * d], &mut st.s2[j * d..(j + 1) * d]);
                }
            }
        }
    }))
}

/// How the weights are normalised by [`params_from_stats`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WeightNorm {
    /// `w_k = N_k' / sum_j N_j'` (the M-step).
    Sum,
    /// `w_k = N_k' / n` (scikit-learn's initialisation from responsibilities).
    Samples,
}

/// Parameters from statistics (see the module docs): the M-step.
///
/// `eps_nk` is the `10 eps` added to each `N_k`.
///
/// # Errors
/// [`BovwError::InvalidInput`] when a variance is not positive and finite,
/// or with `reg_covar = 0` within rounding of 0 (a collapsed component: the
/// message names it and suggests `reg_covar`);
/// [`BovwError::InvalidParameter`] naming `reg_covar` when it is negative.
pub fn params_from_stats(st: &SuffStats, d: usize, reg_covar: f64, eps_nk: f64, norm: WeightNorm) -> Result<DiagGmm> {
    if !(reg_covar >= 0.0 && reg_covar.is_finite()) {
        return Err(BovwError::param("reg_covar", format!("must be finite and >= 0, got {reg_covar}")));
    }
    let k = st.nk.len();
    if k == 0 || st.s1.len() != k * d || st.s2.len() != k * d {
        return Err(BovwError::Shape { what: "stats".into(), expected: format!("(K, {d})"), got: format!("{} values for {k} components", st.s1.len()) });
    }
    let mut weights = vec![0f64; k];
    let mut means = vec![0f64; k * d];
    let mut cov = vec![0f64; k * d];
    for j in 0..k {
        let nk = st.nk[j] + eps_nk;
        weights[j] = nk;
        for t in 0..d {
            let mu = st.s1[j * d + t] / nk;
            let m2 = st.s2[j * d + t] / nk;
            let raw = m2 - mu * mu;
            let v = raw + reg_covar;
            // Without regularisation, a variance within the rounding noise of
            // `E[x^2] - mu^2` is a collapse, not a value.
            let lost = reg_covar == 0.0 && raw <= 4.0 * f64::EPSILON * m2.abs();
            if !(v > 0.0 && v.is_finite()) || lost {
                return Err(BovwError::input(format!(
                    "the mixture collapsed: component {j} has variance {v} in feature {t} (mass {}); \
                     increase reg_covar, decrease n_components or scale the data",
                    st.nk[j]
                )));
            }
            means[j * d + t] = mu;
            cov[j * d + t] = v;
        }
    }
    let total = match norm {
        WeightNorm::Sum => weights.iter().sum::<f64>(),
        WeightNorm::Samples => st.n_samples as f64,
    };
    if !(total > 0.0) {
        return Err(BovwError::input("no samples: the statistics have no mass"));
    }
    weights.iter_mut().for_each(|w| *w /= total);
    Ok(DiagGmm { n_components: k, n_features: d, weights, means, covariances: cov })
}

/// The result of one EM run.
#[derive(Clone, Debug)]
pub struct EmFit {
    /// The fitted mixture.
    pub gmm: DiagGmm,
    /// Mean log-likelihood per sample at the start of the last iteration
    /// (scikit-learn's `lower_bound_`); `-inf` when no iteration ran.
    pub lower_bound: f64,
    /// The lower bound of each iteration.
    pub lower_bounds: Vec<f64>,
    /// Iterations run.
    pub n_iter: usize,
    /// Whether the lower bound changed by less than `tol`.
    pub converged: bool,
}

/// EM from `init` on `X` (`n x d`): at most `max_iter` iterations, stopping
/// when the lower bound changes by less than `tol` (scikit-learn's loop;
/// `start_lower_bound` is `-inf`, or the previous fit's for a warm start).
///
/// # Errors
/// [`BovwError::Shape`] when `X` does not match the mixture;
/// [`BovwError::InvalidInput`] when `X` has no rows or a component collapses
/// (see [`params_from_stats`]).
#[allow(clippy::too_many_arguments)]
pub fn fit_em<T: Real>(
    x: &[T],
    d: usize,
    init: &DiagGmm,
    max_iter: usize,
    tol: f64,
    reg_covar: f64,
    eps_nk: f64,
    start_lower_bound: f64,
) -> Result<EmFit> {
    let n = check_x(x, d)?;
    if n == 0 {
        return Err(BovwError::input("X has no samples"));
    }
    let mut gmm = init.clone();
    let mut lower_bound = start_lower_bound;
    let mut lower_bounds = Vec::new();
    let mut converged = false;
    let mut n_iter = 0;
    for it in 1..=max_iter {
        n_iter = it;
        let prev = lower_bound;
        let st = suff_stats(x, d, &gmm.prepare())?;
        gmm = params_from_stats(&st, d, reg_covar, eps_nk, WeightNorm::Sum)?;
        lower_bound = st.log_likelihood / n as f64;
        lower_bounds.push(lower_bound);
        if (lower_bound - prev).abs() < tol {
            converged = true;
            break;
        }
    }
    Ok(EmFit { gmm, lower_bound, lower_bounds, n_iter, converged })
}

/// `ln p(x)` of every row and, with `resp`, the dense posteriors (`n x K`,
/// row-major; components outside the [`LOG_WINDOW`] get their `f32`
/// estimate, below `~1e-30`). Parallel over blocks.
///
/// # Errors
/// [`BovwError::Shape`] when `X` does not match the mixture.
pub fn log_prob_resp<T: Real>(x: &[T], d: usize, g: &PreparedGmm, resp: bool) -> Result<(Vec<f64>, Option<Vec<f64>>)> {
    let n = check_x(x, d)?;
    if d != g.d {
        return Err(BovwError::Shape {
            what: "X".into(),
            expected: format!("(n_samples, {}) like the mixture", g.d),
            got: format!("(n_samples, {d})"),
        });
    }
    let k = g.k;
    let mut lp = vec![0f64; n];
    let mut rs = if resp { vec![0f64; n * k] } else { Vec::new() };
    let rs_chunks: Vec<&mut [f64]> = if resp { rs.chunks_mut(CHUNK * k).collect() } else { Vec::new() };
    let mut rs_iter: Vec<Option<&mut [f64]>> = rs_chunks.into_iter().map(Some).collect();
    rs_iter.resize_with(n.div_ceil(CHUNK), || None);
    x.par_chunks(CHUNK * d).zip(lp.par_chunks_mut(CHUNK)).zip(rs_iter.into_par_iter()).for_each_init(
        Scratch::default,
        |s, ((block, lpb), mut rb)| {
            posteriors_block(block, g, s);
            lpb.copy_from_slice(&s.lse);
            if let Some(rb) = rb.as_deref_mut() {
                for (r, row) in rb.chunks_exact_mut(k).enumerate() {
                    let lse = s.lse[r];
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = (s.lhat(g, r, j) - lse).exp();
                    }
                    let (cand, post) = s.row(r);
                    for (&j, &p) in cand.iter().zip(post) {
                        row[j as usize] = p;
                    }
                }
            }
        },
    );
    Ok((lp, if resp { Some(rs) } else { None }))
}

/// The most probable component of every row (ties to the lowest index).
///
/// # Errors
/// As [`log_prob_resp`].
pub fn predict<T: Real>(x: &[T], d: usize, g: &PreparedGmm) -> Result<Vec<u32>> {
    let n = check_x(x, d)?;
    if d != g.d {
        return Err(BovwError::Shape {
            what: "X".into(),
            expected: format!("(n_samples, {}) like the mixture", g.d),
            got: format!("(n_samples, {d})"),
        });
    }
    let mut labels = vec![0u32; n];
    x.par_chunks(CHUNK * d).zip(labels.par_chunks_mut(CHUNK)).for_each_init(Scratch::default, |s, (block, lb)| {
        posteriors_block(block, g, s);
        for (r, l) in lb.iter_mut().enumerate() {
            let (cand, post) = s.row(r);
            let mut best = (u32::MAX, f64::NEG_INFINITY);
            for (&j, &p) in cand.iter().zip(post) {
                if p > best.1 || (p == best.1 && j < best.0) {
                    best = (j, p);
                }
            }
            *l = best.0;
        }
    });
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn blobs(n: usize, d: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let c: Vec<f32> = (0..k * d).map(|_| rng.random::<f32>() * 50.0).collect();
        (0..n).flat_map(|i| (0..d).map(|t| c[(i % k) * d + t] + rng.random::<f32>() * 4.0).collect::<Vec<_>>()).collect()
    }

    fn gmm_for(x: &[f32], d: usize, k: usize) -> DiagGmm {
        let means: Vec<f64> = x[..k * d].iter().map(|&v| v as f64).collect();
        DiagGmm::new(vec![1.0 / k as f64; k], means, vec![3.0; k * d], d).unwrap()
    }

    /// Dense reference in f64: ln p and posteriors by the direct formula.
    fn reference(x: &[f32], d: usize, g: &DiagGmm) -> (Vec<f64>, Vec<f64>) {
        let k = g.n_components;
        let mut lp = Vec::new();
        let mut post = Vec::new();
        for row in x.chunks(d) {
            let l: Vec<f64> = (0..k)
                .map(|j| {
                    let mut q = 0.0;
                    let mut ld = 0.0;
                    for t in 0..d {
                        let v = g.covariances[j * d + t];
                        let e = row[t] as f64 - g.means[j * d + t];
                        q += e * e / v;
                        ld += v.ln();
                    }
                    g.weights[j].ln() - 0.5 * (d as f64 * LN_2PI + ld + q)
                })
                .collect();
            let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = l.iter().map(|v| (v - m).exp()).sum();
            let lse = m + s.ln();
            lp.push(lse);
            post.extend(l.iter().map(|v| (v - lse).exp()));
        }
        (lp, post)
    }

    #[test]
    fn posteriors_match_dense_reference() {
        let (d, k) = (13, 6);
        let x = blobs(700, d, k, 3);
        let g = gmm_for(&x, d, k);
        let (lp, post) = log_prob_resp(&x, d, &g.prepare(), true).unwrap();
        let (lr, pr) = reference(&x, d, &g);
        for (a, b) in lp.iter().zip(&lr) {
            assert!((a - b).abs() <= 1e-10 * b.abs().max(1.0), "{a} vs {b}");
        }
        for (a, b) in post.unwrap().iter().zip(&pr) {
            assert!((a - b).abs() <= 1e-12, "{a} vs {b}");
        }
        let labels = predict(&x, d, &g.prepare()).unwrap();
        for (i, l) in labels.iter().enumerate() {
            let row = &pr[i * k..(i + 1) * k];
            let best = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            assert_eq!(row[*l as usize], best);
        }
    }

    #[test]
    fn stats_do_not_depend_on_threads() {
        let (d, k) = (8, 5);
        let x = blobs(20_000, d, k, 5);
        let g = gmm_for(&x, d, k).prepare();
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(|| suff_stats(&x, d, &g).unwrap());
        let four = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap().install(|| suff_stats(&x, d, &g).unwrap());
        assert_eq!(one, four);
        assert_eq!(one.n_samples, 20_000);
        assert!((one.nk.iter().sum::<f64>() - 20_000.0).abs() < 1e-6);
    }

    #[test]
    fn em_increases_likelihood_and_recovers_blobs() {
        let (d, k) = (4, 3);
        let x = blobs(3000, d, k, 9);
        let init = gmm_for(&x, d, k);
        let fit = fit_em(&x, d, &init, 100, 1e-6, 1e-6, 10.0 * f32::EPSILON as f64, f64::NEG_INFINITY).unwrap();
        assert!(fit.converged);
        for w in fit.lower_bounds.windows(2) {
            assert!(w[1] >= w[0] - 1e-9, "EM decreased the likelihood: {w:?}");
        }
        // Uniform noise of width 4: variance 16 / 12.
        for v in &fit.gmm.covariances {
            assert!((v - 4.0 / 3.0).abs() < 0.2, "variance {v}");
        }
        for w in &fit.gmm.weights {
            assert!((w - 1.0 / 3.0).abs() < 1e-3);
        }
    }

    #[test]
    fn bad_inputs_are_named() {
        assert!(DiagGmm::new(vec![], vec![], vec![], 2).unwrap_err().to_string().contains("weights"));
        let e = DiagGmm::new(vec![1.0], vec![0.0, 0.0], vec![1.0, 0.0], 2).unwrap_err().to_string();
        assert!(e.contains("covariances") && e.contains("feature 1"), "{e}");
        let e = DiagGmm::new(vec![1.0], vec![0.0], vec![1.0, 1.0], 2).unwrap_err().to_string();
        assert!(e.contains("means"), "{e}");
        // A component on one repeated point collapses without reg_covar.
        let x = vec![1.0f32, 1.0, 1.0, 1.0, 5.0, 5.0, 6.0, 6.0];
        let st = stats_from_labels(&x, 2, &[0, 0, 1, 1], 2).unwrap();
        let e = params_from_stats(&st, 2, 0.0, 0.0, WeightNorm::Samples).unwrap_err().to_string();
        assert!(e.contains("component 0") && e.contains("reg_covar"), "{e}");
        let ok = params_from_stats(&st, 2, 1e-6, 0.0, WeightNorm::Samples).unwrap();
        assert!((ok.covariances[0] - 1e-6).abs() < 1e-18);
        assert!(stats_from_labels(&x, 2, &[0, 2, 1, 1], 2).unwrap_err().to_string().contains("position 1"));
    }

    /// Distance in units in the last place between two positive normal `f64`.
    fn ulps(a: f64, b: f64) -> u64 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs()
    }

    #[test]
    fn exp_matches_libm() {
        // The posteriors' range, densely, then the whole finite range.
        let mut worst = 0;
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let xs = (0..200_000)
            .map(|i| -80.0 * i as f64 / 200_000.0)
            .chain((0..200_000).map(|_| rng.random::<f64>() * (709.7 + 708.3) - 708.3))
            .chain([0.0, -0.0, 1e-300, -1e-300, 0.5 * std::f64::consts::LN_2, -0.5 * std::f64::consts::LN_2, 709.7, -708.3]);
        for x in xs {
            let (a, b) = (exp_f64(x), x.exp());
            assert!(b.is_normal() && a.is_normal(), "exp({x}) = {a}, libm {b}");
            let u = ulps(a, b);
            assert!(u <= 2, "exp({x}) = {a}, libm {b}: {u} ulp");
            worst = worst.max(u);
        }
        assert!(worst >= 1, "suspiciously exact");
        // Subnormal results: within 2 units of the smallest subnormal.
        for i in 0..10_000 {
            let x = -708.5 - 36.6 * i as f64 / 10_000.0;
            let (a, b) = (exp_f64(x), x.exp());
            assert!((a - b).abs() <= 2.0 * 4.9e-324, "exp({x}) = {a:e}, libm {b:e}");
        }
        // Underflow to 0, overflow, and the special values.
        for x in [-745.3, -746.0, -800.0, -1e10, -1e300, f64::MIN, f64::NEG_INFINITY] {
            assert_eq!(exp_f64(x).to_bits(), 0, "exp({x})");
            assert_eq!(x.exp(), 0.0);
        }
        for x in [709.8, 710.0, 1e300, f64::INFINITY] {
            assert_eq!(exp_f64(x), f64::INFINITY, "exp({x})");
        }
        assert!(exp_f64(f64::NAN).is_nan());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_kernels_give_the_same_bits() {
        if !use_avx2() {
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for d in [1, 7, 16, 37, 128] {
            let v = |rng: &mut ChaCha8Rng, s: f64| (0..d).map(|_| (rng.random::<f64>() - 0.3) * s).collect::<Vec<_>>();
            let (x, m) = (v(&mut rng, 300.0), v(&mut rng, 300.0));
            let p: Vec<f64> = v(&mut rng, 1.0).iter().map(|z| z.abs() + 1e-3).collect();
            // SAFETY: the CPU supports AVX2 (checked above).
            assert_eq!(sq_mahalanobis(&x, &m, &p).to_bits(), unsafe { sq_mahalanobis_avx2(&x, &m, &p) }.to_bits());
        }
        // Whole E-step and M-step, float32 and float64 input, against the
        // baseline build of the same code, on overlapping components.
        let (d, k) = (37, 9);
        let x = blobs(3000, d, k, 4);
        let mut gm = gmm_for(&x, d, k);
        gm.covariances.iter_mut().enumerate().for_each(|(i, v)| *v = 1500.0 + (i % 7) as f64 * 200.0);
        let g = gm.prepare();
        let x64: Vec<f64> = x.iter().map(|&v| v as f64 * 1.01).collect();
        fn run<T: Real>(x: &[T], g: &PreparedGmm, avx2: bool) -> (SuffStats, Vec<f64>, Vec<u32>) {
            let d = g.d;
            let mut st = SuffStats::zeros(g.k, d);
            let mut ms = MStepScratch::default();
            let (mut post, mut cand) = (Vec::new(), Vec::new());
            let mut s = Scratch::default();
            for block in x.chunks(CHUNK * d) {
                // Sets up the buffers, then the rows again with the build asked for.
                posteriors_block(block, g, &mut s);
                s.start.truncate(1);
                s.cand.clear();
                s.post.clear();
                s.lse.clear();
                if avx2 {
                    // SAFETY: the CPU supports AVX2 (checked by the caller).
                    unsafe {
                        posterior_rows_avx2(block, g, &mut s);
                        accumulate_block_avx2(block, &s, &mut st, &mut ms);
                    }
                } else {
                    posterior_rows::<T, false>(block, g, &mut s);
                    accumulate_block::<T, false>(block, &s, &mut st, &mut ms);
                }
                post.extend_from_slice(&s.post);
                cand.extend_from_slice(&s.cand);
            }
            (st, post, cand)
        }
        fn bits(v: &[f64]) -> Vec<u64> {
            v.iter().map(|z| z.to_bits()).collect()
        }
        for ((sa, pa, ca), (sb, pb, cb)) in [(run(&x, &g, true), run(&x, &g, false)), (run(&x64, &g, true), run(&x64, &g, false))] {
            assert_eq!(ca, cb);
            assert!(ca.len() > 2 * 3000, "{} candidates: the components should overlap", ca.len());
            assert!(pa.iter().any(|&p| p > 1e-3 && p < 0.999));
            assert!(bits(&pa) == bits(&pb), "posteriors differ");
            assert_eq!(sa, sb);
            assert!(sa.nk.iter().all(|&v| v > 0.0));
        }
    }

    #[test]
    fn blocked_m_step_equals_row_by_row() {
        // The M-step by component adds the same terms in the same order as
        // the plain row-by-row update.
        let (d, k) = (37, 9);
        let x = blobs(2000, d, k, 6);
        let g = gmm_for(&x, d, k).prepare();
        let st = suff_stats(&x, d, &g).unwrap();
        let mut want = SuffStats::zeros(k, d);
        let pr = part_rows(2000);
        let mut s = Scratch::default();
        let mut parts = Vec::new();
        for part in x.chunks(pr * d) {
            let mut p = SuffStats::zeros(k, d);
            p.n_samples = part.len() / d;
            for block in part.chunks(CHUNK * d) {
                posteriors_block(block, &g, &mut s);
                for (r, row) in block.chunks_exact(d).enumerate() {
                    let xf: Vec<f64> = row.iter().map(|&v| v as f64).collect();
                    p.log_likelihood += s.lse[r];
                    let (cand, post) = s.row(r);
                    for (&j, &q) in cand.iter().zip(post) {
                        let j = j as usize;
                        if q > 0.0 {
                            p.nk[j] += q;
                            axpy2(q, &xf, &mut p.s1[j * d..(j + 1) * d], &mut p.s2[j * d..(j + 1) * d]);
                        }
                    }
                }
            }
            parts.push(p);
        }
        for p in &parts {
            want.merge(p).unwrap();
        }
        assert_eq!(st, want);
    }

    #[test]
    fn overflowing_rows_use_the_exact_path() {
        let d = 2;
        let g = DiagGmm::new(vec![0.5, 0.5], vec![0.0, 0.0, 1e20, 1e20], vec![1e40, 1e40, 1e40, 1e40], d).unwrap();
        let x = vec![1e20f64, 1e20, 0.0, 0.0];
        let (lp, post) = log_prob_resp(&x, d, &g.prepare(), true).unwrap();
        assert!(lp.iter().all(|v| v.is_finite()));
        let post = post.unwrap();
        assert!(post[1] > 0.5 && post[2] > 0.5, "{post:?}");
    }
}
