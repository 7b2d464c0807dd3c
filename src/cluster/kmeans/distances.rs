//! Squared Euclidean distances between rows and centers: the element types
//! ([`Real`]), the direct formula in the input precision (with an AVX2
//! kernel for `f32`) and in `f64`, and the matrix product `X C^T` behind the
//! expansion `||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2` (see the parent
//! module for the error bounds).

use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::{check_shape, CHUNK};
use crate::error::Result;

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
    /// `out (m x n) = a (m x d) . b (n x d)^T` (exact lengths), one thread: see [`gemm_abt`].
    fn matmul_abt(a: &[Self], b: &[Self], m: usize, n: usize, d: usize, out: &mut [Self]);
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
    fn matmul_abt(a: &[Self], b: &[Self], m: usize, n: usize, d: usize, out: &mut [Self]) {
        faer_abt(a, b, m, n, d, out)
    }
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
    fn matmul_abt(a: &[Self], b: &[Self], m: usize, n: usize, d: usize, out: &mut [Self]) {
        faer_abt(a, b, m, n, d, out)
    }
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
pub(super) fn sqnorm<T: Real>(a: &[T]) -> f64 {
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

/// Minimum of a slice, with lane-wise accumulators so that it vectorises.
#[inline]
pub(super) fn min_lanes<T: Real>(v: &[T]) -> T {
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
pub(super) fn count_le<T: Real>(v: &[T], thr: T) -> usize {
    v.iter().map(|&x| (x <= thr) as usize).sum()
}

/// `out (m x n) = a (m x d) . b (n x d)^T`, all row-major, on one thread
/// (faer's matmul; blocks run in parallel on rayon).
///
/// # Panics
/// When `a`, `b` or `out` are shorter than `m x d`, `n x d`, `m x n`.
pub fn gemm_abt<T: Real>(a: &[T], b: &[T], m: usize, n: usize, d: usize, out: &mut [T]) {
    assert!(a.len() >= m * d && b.len() >= n * d && out.len() >= m * n);
    T::matmul_abt(&a[..m * d], &b[..n * d], m, n, d, &mut out[..m * n]);
}

/// [`gemm_abt`] for a faer element type.
fn faer_abt<T: faer::traits::RealField>(a: &[T], b: &[T], m: usize, n: usize, d: usize, out: &mut [T]) {
    faer::linalg::matmul::matmul(
        MatMut::from_row_major_slice_mut(out, m, n),
        Accum::Replace,
        MatRef::from_row_major_slice(a, m, d),
        MatRef::from_row_major_slice(b, n, d).transpose(),
        T::one_impl(),
        Par::Seq,
    );
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

pub(super) fn distances_as<T: Real, U: Copy + Default + Send + Sync>(
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

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
}
