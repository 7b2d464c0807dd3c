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
//! `CHUNK` rows (the `gemm` crate, single-threaded per block; blocks run on
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

use rayon::prelude::*;

use crate::error::{BovwError, Result};

/// Rows per block of the assignment step.
pub const CHUNK: usize = 256;

/// The floating-point types the kernels run on (`f32`, `f64`).
pub trait Real:
    Copy
    + Send
    + Sync
    + 'static
    + PartialOrd
    + Default
    + std::fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
{
    /// Unit roundoff.
    const EPS: f64;
    /// NumPy's name of the type.
    const NAME: &'static str;
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
    fn zero() -> Self;
    fn one() -> Self;
    fn is_finite(self) -> bool;
    /// Squared distances from `x` to the rows `idx` of `centers` (`k x d`)
    /// by the direct formula `sum_t (x_t - c_t)^2` in the type's own
    /// precision, appended to `out`. Each value is within a relative
    /// `(d + 16) EPS` of the exact one (used as a filter, re-checked in
    /// `f64` where it decides a label).
    fn sqdists(x: &[Self], centers: &[Self], d: usize, idx: &[u32], out: &mut Vec<f64>) {
        out.extend(idx.iter().map(|&j| sqdist_lanes(x, &centers[j as usize * d..(j as usize + 1) * d]).to_f64()));
    }
}

/// Direct squared distance in the input precision with 8 lane-wise partial
/// sums (vectorises on any target).
#[inline(always)]
fn sqdist_lanes<T: Real>(a: &[T], b: &[T]) -> T {
    const L: usize = 8;
    let mut acc = [T::zero(); L];
    let mut ca = a.chunks_exact(L);
    let mut cb = b.chunks_exact(L);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..L {
            let t = x[l] - y[l];
            acc[l] = acc[l] + t * t;
        }
    }
    let mut s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        let t = *x - *y;
        s = s + t * t;
    }
    s
}

/// [`Real::sqdists`] for `f32` with AVX2 and FMA: four centers at a time,
/// each with its own 8-lane accumulator (the row's values are loaded once
/// for the four).
///
/// # Safety
/// The CPU must support AVX2 and FMA; `x` must hold `d` values and
/// `centers` every row in `idx`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sqdists_f32_avx2(x: &[f32], centers: &[f32], d: usize, idx: &[u32], out: &mut Vec<f64>) {
    use std::arch::x86_64::*;
    #[inline(always)]
    unsafe fn hsum(s: __m256) -> f64 {
        let s = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(s)), _mm256_cvtps_pd(_mm256_extractf128_ps(s, 1)));
        let mut lanes = [0f64; 4];
        _mm256_storeu_pd(lanes.as_mut_ptr(), s);
        (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])
    }
    /// Four centers against the row; pushes the first `take` distances.
    #[inline(always)]
    unsafe fn quad(xp: *const f32, cp: [*const f32; 4], d: usize, take: usize, out: &mut Vec<f64>) {
        let main = d / 8 * 8;
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut t = 0;
        while t < main {
            // SAFETY: t + 8 <= main <= d, within the row and each center row.
            let xv = _mm256_loadu_ps(xp.add(t));
            for l in 0..4 {
                let e = _mm256_sub_ps(xv, _mm256_loadu_ps(cp[l].add(t)));
                acc[l] = _mm256_fmadd_ps(e, e, acc[l]);
            }
            t += 8;
        }
        for l in 0..take {
            let mut v = hsum(acc[l]);
            for t in main..d {
                let e = (*xp.add(t) - *cp[l].add(t)) as f64;
                v += e * e;
            }
            out.push(v);
        }
    }
    let main = d / 8 * 8;
    let xp = x.as_ptr();
    let row = |j: u32| centers.as_ptr().add(j as usize * d);
    let mut quads = idx.chunks_exact(4);
    for q in &mut quads {
        quad(xp, [row(q[0]), row(q[1]), row(q[2]), row(q[3])], d, 4, out);
    }
    let rest = quads.remainder();
    if rest.len() == 1 {
        // One center: four accumulators along the row.
        let cp = row(rest[0]);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut t = 0;
        while t + 32 <= main {
            for (l, a) in acc.iter_mut().enumerate() {
                let e = _mm256_sub_ps(_mm256_loadu_ps(xp.add(t + 8 * l)), _mm256_loadu_ps(cp.add(t + 8 * l)));
                *a = _mm256_fmadd_ps(e, e, *a);
            }
            t += 32;
        }
        while t < main {
            let e = _mm256_sub_ps(_mm256_loadu_ps(xp.add(t)), _mm256_loadu_ps(cp.add(t)));
            acc[0] = _mm256_fmadd_ps(e, e, acc[0]);
            t += 8;
        }
        let mut v = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
        for t in main..d {
            let e = (*xp.add(t) - *cp.add(t)) as f64;
            v += e * e;
        }
        out.push(v);
    } else if !rest.is_empty() {
        // The last 2-3 centers as one quad, the last repeated.
        let pick = |l: usize| row(rest[l.min(rest.len() - 1)]);
        quad(xp, [pick(0), pick(1), pick(2), pick(3)], d, rest.len(), out);
    }
}

impl Real for f32 {
    const EPS: f64 = f32::EPSILON as f64;
    const NAME: &'static str = "float32";
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn zero() -> Self {
        0.0
    }
    fn one() -> Self {
        1.0
    }
    fn is_finite(self) -> bool {
        f32::is_finite(self)
    }
    fn sqdists(x: &[Self], centers: &[Self], d: usize, idx: &[u32], out: &mut Vec<f64>) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            assert!(x.len() >= d && idx.iter().all(|&j| (j as usize + 1) * d <= centers.len()));
            // SAFETY: the features are present and the rows are in bounds.
            unsafe { sqdists_f32_avx2(x, centers, d, idx, out) };
            return;
        }
        out.extend(idx.iter().map(|&j| sqdist_lanes(x, &centers[j as usize * d..(j as usize + 1) * d]) as f64));
    }
}

impl Real for f64 {
    const EPS: f64 = f64::EPSILON;
    const NAME: &'static str = "float64";
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
    fn zero() -> Self {
        0.0
    }
    fn one() -> Self {
        1.0
    }
    fn is_finite(self) -> bool {
        f64::is_finite(self)
    }
}

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

// ---------------------------------------------------------------------------
// Small kernels
// ---------------------------------------------------------------------------

/// Direct squared distance accumulated in `f64` (4 accumulators).
#[inline]
pub fn sqdist_exact<T: Real>(a: &[T], b: &[T]) -> f64 {
    let mut acc = [0.0f64; 4];
    let mut ca = a.chunks_exact(4);
    let mut cb = b.chunks_exact(4);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..4 {
            let t = x[l].to_f64() - y[l].to_f64();
            acc[l] += t * t;
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        let t = x.to_f64() - y.to_f64();
        s += t * t;
    }
    s
}

/// Squared norm accumulated in `f64`.
#[inline]
pub(crate) fn sqnorm<T: Real>(a: &[T]) -> f64 {
    let mut acc = [0.0f64; 4];
    let mut ca = a.chunks_exact(4);
    for x in &mut ca {
        for l in 0..4 {
            let t = x[l].to_f64();
            acc[l] += t * t;
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for x in ca.remainder() {
        let t = x.to_f64();
        s += t * t;
    }
    s
}

/// `out (m x n) = a (m x d) . b (n x d)^T`, all row-major, one thread.
pub fn gemm_abt<T: Real>(a: &[T], b: &[T], m: usize, n: usize, d: usize, out: &mut [T]) {
    assert!(a.len() >= m * d && b.len() >= n * d && out.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    if d == 0 {
        out[..m * n].iter_mut().for_each(|v| *v = T::zero());
        return;
    }
    // SAFETY: the asserts above bound every access the strides describe.
    unsafe {
        gemm::gemm(
            m,
            n,
            d,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            d as isize,
            b.as_ptr(),
            d as isize,
            1,
            T::zero(),
            T::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
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

// ---------------------------------------------------------------------------
// Assignment
// ---------------------------------------------------------------------------

/// Centers with their squared norms, ready for the assignment step.
pub struct PreparedCenters<'a, T: Real> {
    pub centers: &'a [T],
    pub k: usize,
    pub d: usize,
    norms: Vec<T>,
    norm_max: f64,
}

impl<'a, T: Real> PreparedCenters<'a, T> {
    pub fn new(centers: &'a [T], d: usize) -> Self {
        let k = centers.len() / d;
        let n64: Vec<f64> = centers.chunks(d).map(sqnorm).collect();
        let norm_max = n64.iter().cloned().fold(0.0, f64::max);
        PreparedCenters { centers, k, d, norms: n64.iter().map(|&v| T::from_f64(v)).collect(), norm_max }
    }

    fn row(&self, j: usize) -> &[T] {
        &self.centers[j * self.d..(j + 1) * self.d]
    }
}

/// Minimum of a slice, with lane-wise accumulators so that it vectorises.
#[inline]
fn min_lanes<T: Real>(v: &[T]) -> T {
    const L: usize = 16;
    let big = T::from_f64(f64::INFINITY);
    let mut acc = [big; L];
    let mut it = v.chunks_exact(L);
    for c in &mut it {
        for l in 0..L {
            acc[l] = if c[l] < acc[l] { c[l] } else { acc[l] };
        }
    }
    let mut m = big;
    for &x in it.remainder().iter().chain(acc.iter()) {
        if x < m {
            m = x;
        }
    }
    m
}

/// Number of values `<= thr` (vectorises).
#[inline]
fn count_le<T: Real>(v: &[T], thr: T) -> usize {
    v.iter().map(|&x| (x <= thr) as usize).sum()
}

/// What [`assign_block`] writes besides the labels.
pub(crate) struct BlockOut<'a> {
    /// Squared distance to the nearest center: direct (exact) if `exact`,
    /// else the expansion's value plus its error bound (an upper bound).
    pub dists: Option<&'a mut [f64]>,
    pub exact: bool,
    /// Per-group lower bounds: `(group of each center, number of groups G,
    /// out (m x G))` receives, for each row and group, a lower bound on the
    /// squared distance to the nearest center of the group other than the
    /// row's own.
    pub second: Option<(&'a [u32], usize, &'a mut [f64])>,
}

/// Assign the rows of one block (`m x d`) to their exact nearest center
/// (ties to the lowest index). `xnorms` are the rows' squared norms if
/// known. `buf` is scratch space.
pub(crate) fn assign_block<T: Real>(
    rows: &[T],
    xnorms: Option<&[f64]>,
    pc: &PreparedCenters<'_, T>,
    buf: &mut Vec<T>,
    labels: &mut [u32],
    mut out: BlockOut<'_>,
) {
    let (k, d) = (pc.k, pc.d);
    let m = rows.len() / d;
    let _ = buf;
    with_scratch(m * k, |buf: &mut [T]| assign_block_in(rows, xnorms, pc, buf, labels, &mut out));
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Run `f` on a per-thread scratch slice of `len` values (reused across
/// calls, so that blocks do not allocate and fault in fresh pages).
fn with_scratch<T: Real, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut v = s.borrow_mut();
        let words = (len * std::mem::size_of::<T>()).div_ceil(8);
        if v.len() < words {
            v.resize(words, 0.0);
        }
        // SAFETY: the f64 storage holds at least `len` values of T (f32 or
        // f64, both plain floats with alignment <= 8), borrowed exclusively.
        let sl = unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut T, len) };
        f(sl)
    })
}

fn assign_block_in<T: Real>(
    rows: &[T],
    xnorms: Option<&[f64]>,
    pc: &PreparedCenters<'_, T>,
    buf: &mut [T],
    labels: &mut [u32],
    out: &mut BlockOut<'_>,
) {
    let (k, d) = (pc.k, pc.d);
    let m = rows.len() / d;
    gemm_abt(rows, pc.centers, m, k, d, buf);
    let two = T::from_f64(2.0);
    let big = T::from_f64(f64::INFINITY);
    for r in 0..m {
        let x = &rows[r * d..(r + 1) * d];
        let dots = &mut buf[r * k..(r + 1) * k];
        // v_j = ||c_j||^2 - 2 x.c_j
        for (v, &cn) in dots.iter_mut().zip(&pc.norms) {
            *v = cn - two * *v;
        }
        let best = min_lanes(dots);
        let xn = match xnorms {
            Some(n) => n[r],
            None => sqnorm(x),
        };
        let delta = (d as f64 + 4.0) * T::EPS * (xn + pc.norm_max);
        let thr = T::from_f64(best.to_f64() + 2.0 * delta);
        let n_cand = count_le(dots, thr);
        let (label, exact_dist) = if n_cand <= 1 {
            let j = dots.iter().position(|&v| v <= thr).unwrap_or(0);
            let e = if out.exact { Some(sqdist_exact(x, pc.row(j))) } else { None };
            (j, e)
        } else {
            let mut bl = usize::MAX;
            let mut bd = f64::INFINITY;
            for (j, &v) in dots.iter().enumerate() {
                if v <= thr {
                    let dj = sqdist_exact(x, pc.row(j));
                    if dj < bd {
                        bd = dj;
                        bl = j;
                    }
                }
            }
            (bl, Some(bd))
        };
        labels[r] = label as u32;
        if let Some(ds) = out.dists.as_deref_mut() {
            ds[r] = match exact_dist {
                Some(e) if out.exact => e,
                _ => (xn + dots[label].to_f64() + delta).max(0.0),
            };
        }
        if let Some((groups, g, s)) = out.second.as_mut() {
            let g = *g;
            let lb = &mut s[r * g..(r + 1) * g];
            if g == 1 {
                let keep = dots[label];
                dots[label] = big;
                let second_v = if k > 1 { min_lanes(dots).to_f64() } else { f64::INFINITY };
                dots[label] = keep;
                lb[0] = (xn + second_v - delta).max(0.0);
            } else {
                lb.iter_mut().for_each(|v| *v = f64::INFINITY);
                for (j, (&v, &gj)) in dots.iter().zip(groups.iter()).enumerate() {
                    let v = v.to_f64();
                    let slot = &mut lb[gj as usize];
                    if j != label && v < *slot {
                        *slot = v;
                    }
                }
                lb.iter_mut().for_each(|v| *v = (xn + *v - delta).max(0.0));
            }
        }
    }
}

/// Exact nearest center of each row (`n x d`, row-major) of `x` among
/// `centers` (`k x d`) and the squared distances, in parallel over blocks.
///
/// # Errors
/// [`BovwError::Shape`] when the slices are not multiples of `d`, or no centers.
pub fn assign<T: Real>(x: &[T], centers: &[T], d: usize) -> Result<(Vec<u32>, Vec<f64>)> {
    let n = check_shape(x, d, "X")?;
    let k = check_shape(centers, d, "centers")?;
    if k == 0 {
        return Err(BovwError::input("centers is empty"));
    }
    let pc = PreparedCenters::new(centers, d);
    let mut labels = vec![0u32; n];
    let mut dists = vec![0f64; n];
    assign_into(x, &pc, &mut labels, &mut dists);
    Ok((labels, dists))
}

/// Labels only (no distances): the fastest path, for `predict`.
///
/// # Errors
/// As [`assign`].
pub fn assign_labels_only<T: Real>(x: &[T], centers: &[T], d: usize) -> Result<Vec<u32>> {
    let n = check_shape(x, d, "X")?;
    let k = check_shape(centers, d, "centers")?;
    if k == 0 {
        return Err(BovwError::input("centers is empty"));
    }
    let pc = PreparedCenters::new(centers, d);
    let mut labels = vec![0u32; n];
    x.par_chunks(CHUNK * d).zip(labels.par_chunks_mut(CHUNK)).for_each_init(Vec::new, |buf, (rows, l)| {
        assign_block(rows, None, &pc, buf, l, BlockOut { dists: None, exact: false, second: None })
    });
    Ok(labels)
}

fn assign_into<T: Real>(x: &[T], pc: &PreparedCenters<'_, T>, labels: &mut [u32], dists: &mut [f64]) {
    let d = pc.d;
    x.par_chunks(CHUNK * d)
        .zip(labels.par_chunks_mut(CHUNK))
        .zip(dists.par_chunks_mut(CHUNK))
        .for_each_init(Vec::new, |buf, ((rows, l), ds)| {
            assign_block(rows, None, pc, buf, l, BlockOut { dists: Some(ds), exact: true, second: None })
        });
}

/// Nearest center of each row of `x` (n x d, row-major) among `centers`
/// (k x d, row-major), by squared Euclidean distance; ties go to the lowest
/// index. Returns (labels, squared distances).
///
/// The fast path: blocked GEMM expansion, with the close candidates
/// re-checked exactly (see the module docs).
///
/// # Panics
/// If the slices are not multiples of `d`, `d == 0` or there are no centers.
pub fn assign_labels(x: &[f32], centers: &[f32], d: usize) -> (Vec<u32>, Vec<f32>) {
    assert!(d > 0 && x.len() % d == 0 && centers.len() % d == 0 && !centers.is_empty());
    let (l, ds) = assign(x, centers, d).expect("shapes checked");
    (l, ds.into_iter().map(|v| v as f32).collect())
}

/// Euclidean distances (not squared) from every row to every center,
/// (n x k) row-major, computed in `f64` (blocks upcast, then GEMM) as
/// scikit-learn's `euclidean_distances` does for `float32`.
///
/// # Errors
/// [`BovwError::Shape`] when the slices are not multiples of `d`.
pub fn distances<T: Real>(x: &[T], centers: &[T], d: usize) -> Result<Vec<T>> {
    distances_as(x, centers, d, T::from_f64)
}

fn distances_as<T: Real, U: Copy + Default + Send + Sync>(
    x: &[T],
    centers: &[T],
    d: usize,
    conv: impl Fn(f64) -> U + Send + Sync,
) -> Result<Vec<U>> {
    let n = check_shape(x, d, "X")?;
    let k = check_shape(centers, d, "centers")?;
    let c64: Vec<f64> = centers.iter().map(|v| v.to_f64()).collect();
    let cn: Vec<f64> = c64.chunks(d).map(sqnorm).collect();
    let mut out = vec![U::default(); n * k];
    if k == 0 {
        return Ok(out);
    }
    x.par_chunks(CHUNK * d).zip(out.par_chunks_mut(CHUNK * k)).for_each_init(
        || (Vec::new(), Vec::new()),
        |(xb, buf): &mut (Vec<f64>, Vec<f64>), (rows, o)| {
            let m = rows.len() / d;
            xb.clear();
            xb.extend(rows.iter().map(|v| v.to_f64()));
            buf.resize(m * k, 0.0);
            gemm_abt(xb, &c64, m, k, d, buf);
            for r in 0..m {
                let xn = sqnorm(&xb[r * d..(r + 1) * d]);
                for j in 0..k {
                    let v = (xn - 2.0 * buf[r * k + j] + cn[j]).max(0.0);
                    o[r * k + j] = conv(v.sqrt());
                }
            }
        },
    );
    Ok(out)
}

// ---------------------------------------------------------------------------
// M-step pieces
// ---------------------------------------------------------------------------

/// Rows per part for the deterministic reductions: depends on `n` only.
fn part_rows(n: usize) -> usize {
    let target = n.div_ceil(16).max(8 * CHUNK);
    target.div_ceil(CHUNK) * CHUNK
}

/// Per-cluster sums (k x d, `f64`), weights (k) and counts (k) of the rows
/// of `x` by `labels`, accumulated over fixed parts and added in order.
pub fn cluster_sums<T: Real>(
    x: &[T],
    d: usize,
    w: Option<&[f64]>,
    labels: &[u32],
    k: usize,
) -> (Vec<f64>, Vec<f64>, Vec<i64>) {
    let n = labels.len();
    let pr = part_rows(n);
    let parts: Vec<(Vec<f64>, Vec<f64>, Vec<i64>)> = (0..n.div_ceil(pr))
        .into_par_iter()
        .map(|p| {
            let (lo, hi) = (p * pr, ((p + 1) * pr).min(n));
            let mut s = vec![0f64; k * d];
            let mut ws = vec![0f64; k];
            let mut cs = vec![0i64; k];
            for i in lo..hi {
                let j = labels[i] as usize;
                let wi = w.map_or(1.0, |w| w[i]);
                let row = &x[i * d..(i + 1) * d];
                let acc = &mut s[j * d..(j + 1) * d];
                if w.is_some() {
                    for (a, v) in acc.iter_mut().zip(row) {
                        *a += wi * v.to_f64();
                    }
                } else {
                    for (a, v) in acc.iter_mut().zip(row) {
                        *a += v.to_f64();
                    }
                }
                ws[j] += wi;
                cs[j] += 1;
            }
            (s, ws, cs)
        })
        .collect();
    let mut it = parts.into_iter();
    let (mut s, mut ws, mut cs) = it.next().unwrap_or_else(|| (vec![0.0; k * d], vec![0.0; k], vec![0; k]));
    for (s2, w2, c2) in it {
        s.iter_mut().zip(&s2).for_each(|(a, b)| *a += b);
        ws.iter_mut().zip(&w2).for_each(|(a, b)| *a += b);
        cs.iter_mut().zip(&c2).for_each(|(a, b)| *a += b);
    }
    (s, ws, cs)
}

/// Weighted sum of squared distances of each row to its labelled center.
pub fn inertia_of<T: Real>(x: &[T], d: usize, w: Option<&[f64]>, centers: &[T], labels: &[u32]) -> f64 {
    let n = labels.len();
    let pr = part_rows(n);
    let parts: Vec<f64> = (0..n.div_ceil(pr))
        .into_par_iter()
        .map(|p| {
            let (lo, hi) = (p * pr, ((p + 1) * pr).min(n));
            let mut s = 0.0;
            for i in lo..hi {
                let j = labels[i] as usize;
                let di = sqdist_exact(&x[i * d..(i + 1) * d], &centers[j * d..(j + 1) * d]);
                s += w.map_or(1.0, |w| w[i]) * di;
            }
            s
        })
        .collect();
    parts.iter().sum()
}

/// Weighted sum of `values`, over the same fixed parts.
fn weighted_sum(values: &[f64], w: Option<&[f64]>) -> f64 {
    let n = values.len();
    let pr = part_rows(n);
    let parts: Vec<f64> = (0..n.div_ceil(pr))
        .into_par_iter()
        .map(|p| {
            let (lo, hi) = (p * pr, ((p + 1) * pr).min(n));
            match w {
                Some(w) => (lo..hi).map(|i| w[i] * values[i]).sum(),
                None => values[lo..hi].iter().sum(),
            }
        })
        .collect();
    parts.iter().sum()
}

/// scikit-learn's empty-cluster relocation on the M-step sums: each empty
/// cluster (zero weight) takes one of the points farthest from their center
/// (`centers_old`), farthest first, ties to the lowest index.
fn relocate_empty<T: Real>(
    x: &[T],
    d: usize,
    w: Option<&[f64]>,
    centers_old: &[T],
    labels: &[u32],
    sums: &mut [f64],
    weights: &mut [f64],
) {
    let empty: Vec<usize> = (0..weights.len()).filter(|&j| weights[j] == 0.0).collect();
    if empty.is_empty() {
        return;
    }
    let n = labels.len();
    let dist: Vec<f64> = (0..n)
        .into_par_iter()
        .map(|i| {
            let j = labels[i] as usize;
            sqdist_exact(&x[i * d..(i + 1) * d], &centers_old[j * d..(j + 1) * d])
        })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    let m = empty.len().min(n);
    let cmp = |a: &usize, b: &usize| dist[*b].total_cmp(&dist[*a]).then(a.cmp(b));
    if m < n {
        order.select_nth_unstable_by(m, cmp);
        order.truncate(m);
    }
    order.sort_by(cmp);
    for (&new_id, &far) in empty.iter().zip(&order) {
        let wi = w.map_or(1.0, |w| w[far]);
        let old_id = labels[far] as usize;
        let row = &x[far * d..(far + 1) * d];
        for t in 0..d {
            sums[old_id * d + t] -= wi * row[t].to_f64();
            sums[new_id * d + t] = wi * row[t].to_f64();
        }
        weights[new_id] = wi;
        weights[old_id] -= wi;
    }
}

/// New centers from the sums; a cluster with no weight keeps its old center.
fn average<T: Real>(sums: &[f64], weights: &[f64], old: &[T], d: usize) -> Vec<T> {
    let mut out = old.to_vec();
    for (j, &wj) in weights.iter().enumerate() {
        if wj > 0.0 {
            for t in 0..d {
                out[j * d + t] = T::from_f64(sums[j * d + t] / wj);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The iterations
// ---------------------------------------------------------------------------

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

/// The M-step sums (`k x d`, `f64`), weights and counts of the rows by their
/// labels. After the first iteration, when fewer than `n / 8` rows changed
/// label and there are no sample weights, the sums are updated by those rows
/// only, in row order (so the result does not depend on the threads);
/// otherwise they are recomputed by [`cluster_sums`].
struct MStep {
    sums: Vec<f64>,
    weights: Vec<f64>,
    counts: Vec<i64>,
    valid: bool,
}

impl MStep {
    fn new(k: usize, d: usize) -> Self {
        MStep { sums: vec![0.0; k * d], weights: vec![0.0; k], counts: vec![0; k], valid: false }
    }

    /// Bring the sums from `old` labels to `labels`; returns whether no
    /// label changed.
    fn update<T: Real>(&mut self, x: &[T], d: usize, w: Option<&[f64]>, labels: &[u32], old: &[u32]) -> bool {
        let n = labels.len();
        let changed: Vec<usize> = (0..n).into_par_iter().filter(|&i| labels[i] != old[i]).collect();
        if changed.is_empty() && self.valid {
            return true;
        }
        if !self.valid || w.is_some() || changed.len() >= n / 8 {
            let k = self.weights.len();
            let (s, ws, cs) = cluster_sums(x, d, w, labels, k);
            (self.sums, self.weights, self.counts) = (s, ws, cs);
            self.valid = true;
            return changed.is_empty();
        }
        for &i in &changed {
            let (a, b) = (old[i] as usize, labels[i] as usize);
            let row = &x[i * d..(i + 1) * d];
            for (t, v) in row.iter().enumerate() {
                let v = v.to_f64();
                self.sums[a * d + t] -= v;
                self.sums[b * d + t] += v;
            }
            self.counts[a] -= 1;
            self.counts[b] += 1;
        }
        for (j, &c) in self.counts.iter().enumerate() {
            self.weights[j] = c as f64;
            if c == 0 {
                // Exactly empty, whatever the rounding of the updates.
                self.sums[j * d..(j + 1) * d].iter_mut().for_each(|v| *v = 0.0);
            }
        }
        false
    }
}

/// Labels only, by the GEMM path.
fn lloyd_assign<T: Real>(x: &[T], xn: &[f64], pc: &PreparedCenters<'_, T>, labels: &mut [u32]) {
    let d = pc.d;
    x.par_chunks(CHUNK * d).zip(xn.par_chunks(CHUNK)).zip(labels.par_chunks_mut(CHUNK)).for_each_init(
        Vec::new,
        |buf, ((rows, xb), l)| assign_block(rows, Some(xb), pc, buf, l, BlockOut { dists: None, exact: false, second: None }),
    );
}

/// Number of groups of lower bounds for `k` centers: about 10 centers per
/// group (Ding et al. 2015 use `k / 10`), at most [`MAX_GROUPS`].
fn n_groups(k: usize) -> usize {
    (k / 10).clamp(1, MAX_GROUPS)
}

/// Cap on the groups of lower bounds (memory: `8 * G` bytes per sample).
const MAX_GROUPS: usize = 32;

/// Groups of centers for the lower bounds: `of[j]` is the group of center
/// `j`, `members[q]` the centers of group `q` in increasing order.
struct Groups {
    of: Vec<u32>,
    members: Vec<Vec<u32>>,
    g: usize,
}

impl Groups {
    fn from_labels(of: Vec<u32>, g: usize) -> Self {
        let mut members = vec![Vec::new(); g];
        for (j, &q) in of.iter().enumerate() {
            members[q as usize].push(j as u32);
        }
        Groups { of, members, g }
    }
}

/// Group the initial centers by a few Lloyd iterations on the centers
/// themselves (Ding et al. 2015, "Yinyang K-means"), see [`n_groups`].
fn center_groups<T: Real>(centers: &[T], d: usize) -> Groups {
    let k = centers.len() / d;
    let g = n_groups(k);
    if g == 1 {
        return Groups::from_labels(vec![0; k], 1);
    }
    let c64: Vec<f64> = centers.iter().map(|v| v.to_f64()).collect();
    // Evenly spaced initial group centers; deterministic.
    let init: Vec<f64> = (0..g).flat_map(|q| c64[(q * k / g) * d..(q * k / g + 1) * d].to_vec()).collect();
    match kmeans_single(&c64, d, None, &init, 10, 0.0, Algorithm::Lloyd) {
        Ok(r) => Groups::from_labels(r.labels, g),
        Err(_) => Groups::from_labels(vec![0; k], 1),
    }
}

/// The bounds of Yinyang K-means, moved lazily.
///
/// Each point stores, as of the last step that looked at it (`stamp`): an
/// upper bound `u` on the distance to its own center, lower bounds `l_q` on
/// the distance to the centers of each group `q` (its own center left out)
/// and their minimum `l`. The drifts of the centers are logged as running
/// sums over the steps (`cum_p` per center, `cum_m` per group of the largest
/// drift in the group, `cum_g` of the largest drift overall), so a point's
/// bounds now are `u + (cum_p[now][a] - cum_p[stamp][a])` and
/// `l - (cum_g[now] - cum_g[stamp])`: the global test reads four numbers per
/// point and writes nothing when it passes, which is most points once the
/// centers settle.
struct Yinyang {
    g: usize,
    k: usize,
    upper: Vec<f64>,
    glb: Vec<f64>,
    stamp: Vec<u32>,
    lower: Vec<f64>,
    cum_p: Vec<f64>,
    cum_m: Vec<f64>,
    cum_g: Vec<f64>,
}

impl Yinyang {
    /// Bounds from a full assignment: `upper` (squared distances to the
    /// nearest center, upper bounds) and `lower` (`n x g` squared lower
    /// bounds per group).
    fn new(mut upper: Vec<f64>, mut lower: Vec<f64>, k: usize, g: usize) -> Self {
        upper.par_iter_mut().for_each(|v| *v = v.sqrt());
        lower.par_iter_mut().for_each(|v| *v = v.sqrt());
        let glb: Vec<f64> = lower.par_chunks(g).map(|l| l.iter().cloned().fold(f64::INFINITY, f64::min)).collect();
        let n = upper.len();
        Yinyang { g, k, upper, glb, stamp: vec![0; n], lower, cum_p: vec![0.0; k], cum_m: vec![0.0; g], cum_g: vec![0.0] }
    }

    /// Log the drifts of one M-step (squared center shifts).
    fn log_drift(&mut self, shifts: &[f64], groups: &Groups) {
        let (k, g) = (self.k, self.g);
        let t = self.cum_g.len() - 1;
        // Rounded up a little so that the moved bounds stay bounds.
        let p: Vec<f64> = shifts.iter().map(|s| s.sqrt() * (1.0 + 1e-12)).collect();
        let mut m = vec![0.0f64; g];
        for (j, &v) in p.iter().enumerate() {
            let q = groups.of[j] as usize;
            m[q] = m[q].max(v);
        }
        let mg = m.iter().cloned().fold(0.0, f64::max);
        for j in 0..k {
            let v = self.cum_p[t * k + j] + p[j];
            self.cum_p.push(v);
        }
        for q in 0..g {
            let v = self.cum_m[t * g + q] + m[q];
            self.cum_m.push(v);
        }
        let v = self.cum_g[t] + mg;
        self.cum_g.push(v);
    }

    /// One assignment step of Yinyang K-means (Ding et al. 2015) with Hamerly's
    /// extra test on `s_j`, exact: every label is the nearest center (ties to
    /// the lowest index), as Lloyd's step gives.
    ///
    /// Per point: move the bounds by the drifts since the point was last looked
    /// at; skip the point if `u < max(min_q l_q, s_a)`; else tighten `u` to the
    /// distance to its center and test again; else compute the distances to the
    /// centers of each group `q` with `l_q` below the best distance found so far
    /// (the group filter), by the direct formula in the input precision
    /// (relative error below `gamma`). Centers within that error of the best
    /// are re-checked in `f64`; the groups computed get fresh lower bounds and
    /// the others keep theirs (plus the old center, if it lost its point). Tests
    /// are strict, so a tie is never skipped.
    fn assign<T: Real>(&mut self, x: &[T], d: usize, centers: &[T], groups: &Groups, labels: &mut [u32]) {
        let (g, k) = (self.g, self.k);
        let now = self.cum_g.len() - 1;
        let pc = PreparedCenters::new(centers, d);
        let half = half_gaps(&pc);
        let gamma = (d as f64 + 16.0) * T::EPS;
        let (lo_f, hi_f) = (1.0 - gamma, 1.0 + gamma);
        // Slack for the rounding of the running sums.
        let slack = |cum_now: f64| 1e-12 * cum_now.abs();
        let (cum_p, cum_m, cum_g) = (&self.cum_p, &self.cum_m, &self.cum_g);
        let p_now = &cum_p[now * k..(now + 1) * k];
        let m_now = &cum_m[now * g..(now + 1) * g];
        let g_now = cum_g[now];
        let sizes: Vec<usize> = groups.members.iter().map(|m| m.len()).collect();
        x.par_chunks(CHUNK * d)
            .zip(labels.par_chunks_mut(CHUNK))
            .zip(self.upper.par_chunks_mut(CHUNK))
            .zip(self.glb.par_chunks_mut(CHUNK))
            .zip(self.stamp.par_chunks_mut(CHUNK))
            .zip(self.lower.par_chunks_mut(CHUNK * g))
            .for_each_init(
                || {
                    (
                        (Vec::<f64>::new(), Vec::<u32>::new(), vec![GroupMin::EMPTY; g], Vec::<usize>::new()),
                        (Vec::<usize>::new(), Vec::<T>::new(), Vec::<u32>::new(), Vec::<f64>::new(), Vec::<f64>::new(), Vec::<T>::new()),
                    )
                },
                |((vals, idx, gmin, done), (fail, gath, glab, gdist, gsec, buf)), (((((rows, l), u), gl), st), lo)| {
                    // Pass 1: the bound tests, without touching the rows.
                    fail.clear();
                    let mut est = 0usize;
                    for r in 0..l.len() {
                        let a = l[r] as usize;
                        let t = st[r] as usize;
                        let du = p_now[a] - cum_p[t * k + a] + slack(p_now[a]);
                        let dg = g_now - cum_g[t] + slack(g_now);
                        let ub = u[r] + du;
                        if ub < half[a].max(gl[r] - dg) {
                            continue;
                        }
                        // Bring the group bounds up to date.
                        let lb = &mut lo[r * g..(r + 1) * g];
                        let m_then = &cum_m[t * g..(t + 1) * g];
                        let mut glb = f64::INFINITY;
                        for q in 0..g {
                            let v = (lb[q] - (m_now[q] - m_then[q] + slack(m_now[q]))).max(0.0);
                            lb[q] = v;
                            glb = glb.min(v);
                        }
                        st[r] = now as u32;
                        gl[r] = glb;
                        u[r] = ub;
                        if ub < half[a].max(glb) {
                            continue;
                        }
                        fail.push(r);
                        est += lb.iter().zip(&sizes).filter(|(&v, _)| v < ub).map(|(_, &s)| s).sum::<usize>();
                    }
                    if fail.is_empty() {
                        return;
                    }
                    // Most of the centers to compute: one matrix product for
                    // the failing rows gives their labels and fresh bounds.
                    if est * DIRECT_COST >= fail.len() * k {
                        let m = fail.len();
                        gath.clear();
                        for &r in fail.iter() {
                            gath.extend_from_slice(&rows[r * d..(r + 1) * d]);
                        }
                        glab.resize(m, 0);
                        gdist.resize(m, 0.0);
                        gsec.resize(m * g, 0.0);
                        assign_block(
                            gath,
                            None,
                            &pc,
                            buf,
                            glab,
                            BlockOut { dists: Some(&mut gdist[..]), exact: false, second: Some((&groups.of, g, &mut gsec[..])) },
                        );
                        for (i, &r) in fail.iter().enumerate() {
                            l[r] = glab[i];
                            u[r] = gdist[i].sqrt();
                            let lb = &mut lo[r * g..(r + 1) * g];
                            let mut glb = f64::INFINITY;
                            for q in 0..g {
                                lb[q] = gsec[i * g + q].sqrt();
                                glb = glb.min(lb[q]);
                            }
                            gl[r] = glb;
                        }
                        return;
                    }
                    // Pass 2: a few rows, by direct distances. The failing
                    // rows are scattered, so the hardware prefetcher does not
                    // fetch them: ask for the row after next.
                    for (i, &r) in fail.iter().enumerate() {
                        if let Some(&next) = fail.get(i + PREFETCH_AHEAD) {
                            prefetch_row(&rows[next * d..(next + 1) * d]);
                        }
                        let a = l[r] as usize;
                        let lb = &mut lo[r * g..(r + 1) * g];
                        let thr = half[a].max(gl[r]);
                        // Tighten the upper bound (filter precision).
                        let row = &rows[r * d..(r + 1) * d];
                        vals.clear();
                        idx.clear();
                        done.clear();
                        idx.push(a as u32);
                        T::sqdists(row, centers, d, &idx[..1], vals);
                        let va = vals[0];
                        let ua = (va * hi_f).sqrt();
                        u[r] = ua;
                        if ua < thr {
                            continue;
                        }
                        // Group filter, on squared values: `best2` bounds the
                        // squared distance of the nearest center from above.
                        let mut best2 = va * hi_f;
                        for q in 0..g {
                            if lb[q] * lb[q] > best2 {
                                continue;
                            }
                            let start = idx.len();
                            idx.extend(groups.members[q].iter().filter(|&&j| j as usize != a));
                            T::sqdists(row, centers, d, &idx[start..], vals);
                            let mut gm = GroupMin::EMPTY;
                            for (&j, &v) in idx[start..].iter().zip(&vals[start..]) {
                                gm.push(j, v);
                            }
                            best2 = best2.min(gm.v1 * hi_f);
                            gmin[q] = gm;
                            done.push(q);
                        }
                        // The candidates: every center that may be the nearest
                        // (`a` first). One candidate is the nearest; several
                        // are decided by the exact distance, ties to the
                        // lowest index.
                        let n_cand = vals.iter().filter(|&&v| v * lo_f <= best2).count();
                        let (b, bd_up) = if n_cand == 1 {
                            let pos = vals.iter().position(|&v| v * lo_f <= best2).expect("one candidate");
                            (idx[pos] as usize, vals[pos] * hi_f)
                        } else {
                            let (mut b, mut bd) = (usize::MAX, f64::INFINITY);
                            for (&j, &v) in idx.iter().zip(vals.iter()) {
                                if v * lo_f <= best2 {
                                    let j = j as usize;
                                    let e = sqdist_exact(row, &centers[j * d..(j + 1) * d]);
                                    if e < bd || (e == bd && j < b) {
                                        b = j;
                                        bd = e;
                                    }
                                }
                            }
                            (b, bd)
                        };
                        // New bounds for the groups computed (the nearest
                        // center of its group left out).
                        for &q in done.iter() {
                            let gm = &gmin[q];
                            let v = if gm.j1 as usize == b { gm.v2 } else { gm.v1 };
                            lb[q] = (v * lo_f).max(0.0).sqrt();
                        }
                        if b != a {
                            // The old center is now one of the others.
                            let qa = groups.of[a] as usize;
                            lb[qa] = lb[qa].min((va * lo_f).max(0.0).sqrt());
                            l[r] = b as u32;
                        }
                        u[r] = bd_up.sqrt();
                        gl[r] = lb.iter().cloned().fold(f64::INFINITY, f64::min);
                    }
                },
            );
    }
}

/// How many failing rows ahead pass 2 prefetches.
const PREFETCH_AHEAD: usize = 2;

/// Ask for the cache lines of `row` (a hint; never faults).
#[inline(always)]
fn prefetch_row<T>(row: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let start = row.as_ptr() as usize;
        let end = start + std::mem::size_of_val(row);
        let mut p = start & !63;
        while p < end {
            // SAFETY: a prefetch is only a hint and never faults; the
            // address lies inside `row`'s cache lines.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8) };
            p += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// Relative cost of a distance by the direct formula to one by the blocked
/// matrix product (measured on SIFT, d = 128): a block's failing rows go to
/// the matrix product when the group filter would compute more than
/// `1 / DIRECT_COST` of all their distances.
const DIRECT_COST: usize = 3;

/// Half the distance from each center to its closest other center (`s_j` of
/// Hamerly's algorithm), rounded down so that it stays a bound.
fn half_gaps<T: Real>(pc: &PreparedCenters<'_, T>) -> Vec<f64> {
    let (k, d) = (pc.k, pc.d);
    if k == 1 {
        return vec![f64::INFINITY];
    }
    let cc = distances_as(pc.centers, pc.centers, d, |v| v).expect("shapes");
    // The f64 expansion is within `delta` of the exact squared distance.
    let delta = (d as f64 + 4.0) * f64::EPSILON * 2.0 * pc.norm_max * 4.0;
    (0..k)
        .into_par_iter()
        .map(|j| {
            let mut m = f64::INFINITY;
            for j2 in 0..k {
                if j2 != j {
                    m = m.min(cc[j * k + j2]);
                }
            }
            0.5 * (m * m - delta).max(0.0).sqrt() * (1.0 - 1e-12)
        })
        .collect()
}

/// The two smallest values of a group's distances and the center of the
/// smallest.
#[derive(Clone, Copy)]
struct GroupMin {
    v1: f64,
    j1: u32,
    v2: f64,
}

impl GroupMin {
    const EMPTY: GroupMin = GroupMin { v1: f64::INFINITY, j1: u32::MAX, v2: f64::INFINITY };

    #[inline]
    fn push(&mut self, j: u32, v: f64) {
        if v < self.v1 {
            self.v2 = self.v1;
            self.v1 = v;
            self.j1 = j;
        } else if v < self.v2 {
            self.v2 = v;
        }
    }
}

// ---------------------------------------------------------------------------
// Pieces of a distributed Lloyd iteration
// ---------------------------------------------------------------------------

/// The statistics of one batch for a distributed Lloyd iteration.
#[derive(Clone, Debug)]
pub struct PartialSums {
    /// Sum of the rows assigned to each center, k x d row-major, `f64`.
    pub sums: Vec<f64>,
    /// Number of rows assigned to each center.
    pub counts: Vec<i64>,
    /// Sum of the squared distances of the rows to their nearest center.
    pub inertia: f64,
}

/// Assign a batch to `centers` and return its per-center sums, counts and
/// inertia: adding these over all batches and dividing sums by counts is one
/// Lloyd iteration.
///
/// # Errors
/// [`BovwError`] for inconsistent shapes or no centers.
pub fn partial_sums<T: Real>(x: &[T], centers: &[T], d: usize) -> Result<PartialSums> {
    let (labels, dists) = assign(x, centers, d)?;
    let k = centers.len() / d;
    let (sums, _, counts) = cluster_sums(x, d, None, &labels, k);
    Ok(PartialSums { sums, counts, inertia: weighted_sum(&dists, None) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn blobs(n: usize, d: usize, k: usize, seed: u64) -> Vec<f32> {
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

    fn brute(x: &[f32], c: &[f32], d: usize) -> Vec<u32> {
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

    #[test]
    fn assign_matches_brute_force() {
        let d = 17;
        let x = blobs(1000, d, 7, 1);
        let c: Vec<f32> = x[..40 * d].to_vec();
        let (l, ds) = assign_labels(&x, &c, d);
        assert_eq!(l, brute(&x, &c, d));
        // Points that are centers are at distance 0, exactly.
        assert!(ds[..40].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn ties_go_to_lowest_index() {
        let x = vec![0.0f32, 0.0];
        let c = vec![1.0f32, 0.0, -1.0, 0.0, 0.0, 1.0];
        let (l, ds) = assign_labels(&x, &c, 2);
        assert_eq!(l, vec![0]);
        assert_eq!(ds, vec![1.0]);
    }

    #[test]
    fn far_from_origin_is_exact() {
        // Large offsets make the expansion lose precision; the re-check fixes it.
        let d = 4;
        let mut x = Vec::new();
        let mut c = Vec::new();
        for j in 0..5 {
            c.extend([1.0e4 + j as f32 * 0.01, 1.0e4, 1.0e4, 1.0e4]);
        }
        for i in 0..50 {
            x.extend([1.0e4 + i as f32 * 0.001, 1.0e4, 1.0e4, 1.0e4]);
        }
        let (l, _) = assign_labels(&x, &c, d);
        assert_eq!(l, brute(&x, &c, d));
    }

    #[test]
    fn lloyd_and_elkan_agree_and_converge() {
        let d = 8;
        let x = blobs(3000, d, 5, 2);
        let init: Vec<f32> = x[..5 * d].to_vec();
        let tol = tolerance(&x, d, 1e-4);
        let a = kmeans_single(&x, d, None, &init, 300, tol, Algorithm::Lloyd).unwrap();
        let b = kmeans_single(&x, d, None, &init, 300, tol, Algorithm::Elkan).unwrap();
        assert_eq!(a.labels, b.labels);
        assert_relative_eq!(a.inertia, b.inertia, max_relative = 1e-9);
        // The labels are the nearest centers of the final centers.
        assert_eq!(a.labels, brute(&x, &a.centers, d));
        // Blobs are recovered: the inertia is about n * d * var(U(0, 5)).
        let expected = 3000.0 * d as f64 * 25.0 / 12.0;
        assert_relative_eq!(a.inertia, expected, max_relative = 0.1);
    }

    #[test]
    fn grouped_bounds_give_lloyds_labels() {
        // 60 centers: 6 groups of lower bounds.
        let d = 12;
        let x = blobs(6000, d, 40, 5);
        let init: Vec<f32> = x[..60 * d].to_vec();
        let a = kmeans_single(&x, d, None, &init, 50, 0.0, Algorithm::Lloyd).unwrap();
        let b = kmeans_single(&x, d, None, &init, 50, 0.0, Algorithm::Elkan).unwrap();
        assert_eq!(a.labels, b.labels);
        assert_eq!(a.n_iter, b.n_iter);
        assert_relative_eq!(a.inertia, b.inertia, max_relative = 1e-9);
    }

    #[test]
    fn yinyang_is_exact_with_ties_and_many_groups() {
        // Integer data on a coarse grid: many exact ties between centers,
        // which must go to the lowest index as in Lloyd's step. 330 centers:
        // 32 groups (the cap); d = 35 exercises the kernel's tail.
        let d = 35;
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let x: Vec<f32> = (0..8000 * d).map(|_| rng.random_range(0..4) as f32).collect();
        let k = 330;
        let init: Vec<f32> = x[..k * d].to_vec();
        for max_iter in [1, 3, 30] {
            let a = kmeans_single(&x, d, None, &init, max_iter, 0.0, Algorithm::Lloyd).unwrap();
            let b = kmeans_single(&x, d, None, &init, max_iter, 0.0, Algorithm::Elkan).unwrap();
            assert_eq!(a.labels, b.labels, "max_iter {max_iter}");
            assert_eq!(a.n_iter, b.n_iter);
            assert_eq!(b.labels, brute(&x, &b.centers, d));
        }
        // f64 input too.
        let x64: Vec<f64> = x.iter().map(|&v| v as f64 + 0.25).collect();
        let i64_: Vec<f64> = x64[..k * d].to_vec();
        let a = kmeans_single(&x64, d, None, &i64_, 20, 0.0, Algorithm::Lloyd).unwrap();
        let b = kmeans_single(&x64, d, None, &i64_, 20, 0.0, Algorithm::Elkan).unwrap();
        assert_eq!(a.labels, b.labels);
    }

    #[test]
    fn sqdists_kernel_matches_exact() {
        // Every width from 1 to 70 and 1..=9 centers per call (the AVX2
        // kernel's quads, padded quads and single path).
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for d in 1..=70 {
            let c: Vec<f32> = (0..9 * d).map(|_| rng.random::<f32>() * 200.0 - 100.0).collect();
            let x: Vec<f32> = (0..d).map(|_| rng.random::<f32>() * 200.0 - 100.0).collect();
            for m in 1..=9u32 {
                let idx: Vec<u32> = (0..m).rev().collect();
                let mut out = Vec::new();
                f32::sqdists(&x, &c, d, &idx, &mut out);
                assert_eq!(out.len(), m as usize);
                for (&j, &v) in idx.iter().zip(&out) {
                    let e = sqdist_exact(&x, &c[j as usize * d..(j as usize + 1) * d]);
                    let gamma = (d as f64 + 16.0) * f32::EPSILON as f64;
                    assert!((v - e).abs() <= gamma * e, "d {d} m {m}: {v} vs {e}");
                }
            }
        }
    }

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
    fn empty_cluster_is_relocated() {
        // Two identical initial centers: the second one gets no points.
        let x: Vec<f64> = vec![0.0, 0.1, 0.2, 10.0, 10.1, 10.2];
        let init = vec![0.0, 0.0];
        let r = kmeans_single(&x, 1, None, &init, 10, 0.0, Algorithm::Lloyd).unwrap();
        let mut c = r.centers.clone();
        c.sort_by(f64::total_cmp);
        assert_relative_eq!(c[0], 0.1, epsilon = 1e-12);
        assert_relative_eq!(c[1], 10.1, epsilon = 1e-12);
    }

    #[test]
    fn partial_sums_add_up() {
        let d = 5;
        let x = blobs(700, d, 3, 4);
        let c: Vec<f32> = x[..3 * d].to_vec();
        let all = partial_sums(&x, &c, d).unwrap();
        let a = partial_sums(&x[..300 * d], &c, d).unwrap();
        let b = partial_sums(&x[300 * d..], &c, d).unwrap();
        assert_eq!(all.counts.iter().sum::<i64>(), 700);
        for j in 0..3 {
            assert_eq!(all.counts[j], a.counts[j] + b.counts[j]);
            for t in 0..d {
                assert_relative_eq!(all.sums[j * d + t], a.sums[j * d + t] + b.sums[j * d + t], max_relative = 1e-12);
            }
        }
        assert_relative_eq!(all.inertia, a.inertia + b.inertia, max_relative = 1e-12);
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
