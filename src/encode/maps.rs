//! Feature maps for linear classifiers: the additive χ² kernel map, power
//! normalisation (signed square root: the Hellinger map), L1/L2 rows.
//!
//! # The additive χ² map
//!
//! The χ² kernel `k(x, y) = sum_t 2 x_t y_t / (x_t + y_t)` has, for each
//! non-negative value `x`, the feature map of Vedaldi and Zisserman sampled
//! at `2 s - 1` points with period `L` (`sample_steps = s`,
//! `sample_interval = L`):
//!
//! ```text
//! psi_0(x)      = sqrt(x L)
//! psi_2j-1(x)   = sqrt(2 x L / cosh(pi j L)) cos(j L ln x)     j = 1 .. s - 1
//! psi_2j(x)     = sqrt(2 x L / cosh(pi j L)) sin(j L ln x)
//! ```
//!
//! and 0 for `x = 0`. The output of `n x d` values is `n x (2 s - 1) d`:
//! the `sqrt` block (all `d` features), then the `cos 1`, `sin 1`,
//! `cos 2`, ... blocks: scikit-learn's `AdditiveChi2Sampler` layout. The
//! default `L` for `s = 1, 2, 3` is `0.8, 0.5, 0.4` (scikit-learn's, from
//! the paper's figure 2). Computed in `f64` whatever the input type.
//!
//! # Power normalisation
//!
//! `z -> sign(z) |z|^alpha` (`alpha = 1/2`: signed square root; on L1
//! normalised histograms, the explicit map of the Hellinger (Bhattacharyya)
//! kernel), optionally after and before L1 or L2 row normalisation (rows of
//! zeros stay zero).
//!
//! # References
//! - A. Vedaldi, A. Zisserman, "Efficient additive kernels via explicit
//!   feature maps", IEEE TPAMI 34(3), 2012.
//! - F. Perronnin, J. Sánchez, T. Mensink, "Improving the Fisher kernel for
//!   large-scale image classification", ECCV 2010 (power normalisation).
//! - scikit-learn, `sklearn/kernel_approximation.py` (`AdditiveChi2Sampler`).



use rayon::prelude::*;

use crate::cluster::kmeans::Real;
use crate::error::{BovwError, Result};
use crate::histogram::Norm;

/// Rows per parallel task.
const ROWS: usize = 64;

/// Index of the first value failing `ok`, checked by blocks in parallel
/// (a per-element parallel search costs more than the maps themselves).
/// Each block is tested with a fold that does not stop early, which
/// vectorises (`ok` should use `&`, not `&&`); only a failing block is
/// searched for its first bad value.
fn first_bad<T: Real>(x: &[T], ok: impl Fn(T) -> bool + Sync) -> Option<usize> {
    const BLOCK: usize = 1 << 14;
    x.par_chunks(BLOCK).enumerate().find_map_first(|(b, c)| {
        if c.iter().fold(true, |a, &v| a & ok(v)) {
            None
        } else {
            c.iter().position(|&v| !ok(v)).map(|p| b * BLOCK + p)
        }
    })
}

/// The sampling period: `sample_interval` or scikit-learn's default for
/// `sample_steps` in 1..=3.
///
/// # Errors
/// [`BovwError::InvalidParameter`] naming `sample_steps` (0, or above 3
/// without an interval) or `sample_interval` (not positive and finite).
pub fn chi2_interval(sample_steps: usize, sample_interval: Option<f64>) -> Result<f64> {
    if sample_steps == 0 {
        return Err(BovwError::param("sample_steps", "must be at least 1"));
    }
    match sample_interval {
        Some(l) if !(l > 0.0 && l.is_finite()) => {
            Err(BovwError::param("sample_interval", format!("must be positive and finite, got {l}")))
        }
        Some(l) => Ok(l),
        None => match sample_steps {
            1 => Ok(0.8),
            2 => Ok(0.5),
            3 => Ok(0.4),
            s => Err(BovwError::param(
                "sample_steps",
                format!("sample_steps={s} is not in [1, 2, 3]: give sample_interval too"),
            )),
        },
    }
}

/// The additive χ² map of `x` (`n x d`, non-negative): `n x (2 s - 1) d`.
///
/// # Errors
/// [`BovwError::InvalidInput`] naming the first row and column that is
/// negative or not finite; as [`chi2_interval`].
pub fn additive_chi2<T: Real>(x: &[T], d: usize, sample_steps: usize, sample_interval: Option<f64>) -> Result<Vec<T>> {
    let l = chi2_interval(sample_steps, sample_interval)?;
    if d == 0 {
        return Ok(Vec::new());
    }
    if x.len() % d != 0 {
        return Err(BovwError::Shape { what: "X".into(), expected: format!("(n, {d})"), got: format!("{} values", x.len()) });
    }
    let s = sample_steps;
    let w = (2 * s - 1) * d;
    // sqrt(2 L / cosh(pi j L)), j = 1..s-1
    let factors: Vec<f64> = (1..s).map(|j| (2.0 * l / (std::f64::consts::PI * j as f64 * l).cosh()).sqrt()).collect();
    let n = x.len() / d;
    // Histograms are mostly zeros, whose map is zeros: the output starts
    // zero-filled (see `zeroed_output`: the kernel's fresh pages) and only
    // blocks with a non-zero input are written.
    // The input is checked in the same pass (each row stops at its first
    // span holding a negative or non-finite value); the error names the
    // first such value in row-major order.
    let mut out = super::zeroed_output(n * w, T::zero());
    let all_ok = out.par_chunks_mut(ROWS * w).zip(x.par_chunks(ROWS * d)).map(|(ob, xb)| {
        ob.chunks_mut(w).zip(xb.chunks(d)).fold(true, |ok, (orow, xrow)| ok & chi2_row(xrow, orow, l, &factors))
    }).reduce(|| true, |a, b| a & b);
    if !all_ok {
        let i = first_bad(x, |v| (v.to_f64() >= 0.0) & (v.to_f64() < f64::INFINITY)).expect("a bad value");
        return Err(BovwError::input(format!(
            "X: value {:?} at row {}, column {} is {}: the chi2 map needs finite values >= 0",
            x[i],
            i / d,
            i % d,
            if x[i].is_finite() { "negative" } else { "not finite" }
        )));
    }
    Ok(out)
}

/// Lanes of [`chi2_row`]'s inner blocks.
const LANES: usize = 8;

/// Values [`chi2_row`] tests at once for a run of zeros to skip, and
/// gathers the positive values of.
const SPAN: usize = 64;

/// One row of the chi2 map, with AVX2 + FMA code generation where the CPU
/// has them (the arithmetic is the same: no fused operations are used, so
/// both paths give the same bits).
/// Returns false, leaving the row part-written, when the row holds a
/// negative or non-finite value.
fn chi2_row<T: Real>(x: &[T], out: &mut [T], l: f64, factors: &[f64]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { chi2_row_avx2(x, out, l, factors) };
        }
    }
    chi2_row_body(x, out, l, factors)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn chi2_row_avx2<T: Real>(x: &[T], out: &mut [T], l: f64, factors: &[f64]) -> bool {
    chi2_row_body(x, out, l, factors)
}

/// The map of one row `x` (`d` values, >= 0) into `out` (`(2 s - 1) d`
/// values, zero-filled). Zeros map to zeros and are skipped: spans of
/// [`SPAN`] values are tested at once, and the positive values of a span
/// are gathered and mapped [`LANES`] at a time with branch-free [`ln_pos`]
/// and [`sin_cos`] (which the compiler vectorises), so the work follows the
/// number of non-zeros. Each value's result depends on that value only
/// (the lanes are independent), whatever it is grouped with. Arguments
/// beyond `|theta| < 2^20 pi / 2` use `f64::sin_cos` (never reached: for
/// finite `x > 0`, `|ln x| < 746`).
#[inline(always)]
fn chi2_row_body<T: Real>(x: &[T], out: &mut [T], l: f64, factors: &[f64]) -> bool {
    let d = x.len();
    let sl = l.sqrt();
    let mut idx = [0usize; SPAN];
    let mut val = [1.0f64; SPAN];
    let mut t0 = 0;
    while t0 < d {
        let span = SPAN.min(d - t0);
        let xs = &x[t0..t0 + span];
        // one pass tests for a positive value and for a bad one (negative,
        // infinite or NaN: NaN fails both comparisons)
        let (any_pos, all_ok) = xs.iter().fold((false, true), |(p, ok), &v| {
            let v = v.to_f64();
            (p | (v > 0.0), ok & ((v >= 0.0) & (v < f64::INFINITY)))
        });
        if !all_ok {
            return false;
        }
        if !any_pos {
            t0 += span;
            continue;
        }
        let mut n = 0;
        for (i, &v) in xs.iter().enumerate() {
            let v = v.to_f64();
            if v > 0.0 {
                idx[n] = t0 + i;
                val[n] = v;
                n += 1;
            }
        }
        let mut k0 = 0;
        while k0 < n {
            let m = LANES.min(n - k0);
            let mut v = [1.0f64; LANES];
            v[..m].copy_from_slice(&val[k0..k0 + m]);
            let at = &idx[k0..k0 + m];
            let mut sq = [0.0f64; LANES];
            let mut lg = [0.0f64; LANES];
            for i in 0..LANES {
                sq[i] = v[i].sqrt();
                lg[i] = ln_pos(v[i]);
            }
            for i in 0..m {
                out[at[i]] = T::from_f64(sl * sq[i]);
            }
            for (j, &f) in factors.iter().enumerate() {
                let jl = (j + 1) as f64 * l;
                let mut th = [0.0f64; LANES];
                let mut big = false;
                for i in 0..LANES {
                    th[i] = jl * lg[i];
                    big |= !(th[i].abs() < THETA_MAX);
                }
                let (mut sn, mut cs) = ([0.0f64; LANES], [0.0f64; LANES]);
                if big {
                    for i in 0..LANES {
                        (sn[i], cs[i]) = th[i].sin_cos();
                    }
                } else {
                    for i in 0..LANES {
                        (sn[i], cs[i]) = sin_cos(th[i]);
                    }
                }
                let (oc, os) = ((2 * j + 1) * d, (2 * j + 2) * d);
                for i in 0..m {
                    let a = f * sq[i];
                    out[oc + at[i]] = T::from_f64(a * cs[i]);
                    out[os + at[i]] = T::from_f64(a * sn[i]);
                }
            }
            k0 += m;
        }
        t0 += span;
    }
    true
}

/// Largest `|theta|` for [`sin_cos`]'s argument reduction (`|k| < 2^20`).
const THETA_MAX: f64 = 1.6e6;

/// `ln x` for finite `x > 0`, branch-free (vectorisable): `x = 2^e m` with
/// `m` in `[sqrt(1/2), sqrt(2))`, `ln m = 2 atanh(s)`, `s = (m - 1) / (m + 1)`,
/// by its series `2 s sum_k s^(2k) / (2k + 1)` to `s^24` (`|s| <= 0.1716`,
/// truncation below `1e-19`). Within a few units in the last place of `f64::ln`.
#[inline(always)]
fn ln_pos(x: f64) -> f64 {
    const TWO52: f64 = 4_503_599_627_370_496.0;
    // Subnormals: scale up by 2^54 first.
    let sub = x < f64::MIN_POSITIVE;
    let x = if sub { x * 18_014_398_509_481_984.0 } else { x };
    let bits = x.to_bits();
    // The biased exponent as f64 without an integer conversion.
    let eb = f64::from_bits(0x4330_0000_0000_0000 | (bits >> 52)) - TWO52;
    let m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    let big = m > std::f64::consts::SQRT_2;
    let m = if big { 0.5 * m } else { m };
    let e = eb - 1023.0 + if big { 1.0 } else { 0.0 } - if sub { 54.0 } else { 0.0 };
    let s = (m - 1.0) / (m + 1.0);
    let z = s * s;
    let mut p = 1.0 / 25.0;
    p = p * z + 1.0 / 23.0;
    p = p * z + 1.0 / 21.0;
    p = p * z + 1.0 / 19.0;
    p = p * z + 1.0 / 17.0;
    p = p * z + 1.0 / 15.0;
    p = p * z + 1.0 / 13.0;
    p = p * z + 1.0 / 11.0;
    p = p * z + 1.0 / 9.0;
    p = p * z + 1.0 / 7.0;
    p = p * z + 1.0 / 5.0;
    p = p * z + 1.0 / 3.0;
    let lnm = 2.0 * s + 2.0 * s * z * p;
    e * std::f64::consts::LN_2 + lnm
}

/// `(sin t, cos t)` for `|t| < THETA_MAX`, branch-free (vectorisable):
/// `t = k pi/2 + r` (Cody and Waite's three-part `pi/2`, exact products for
/// `|k| < 2^20`), Taylor series of `sin r` to `r^19` and `cos r` to `r^20`
/// on `|r| <= pi/4` (truncation below `1e-19`), then the quadrant `k mod 4`.
#[inline(always)]
fn sin_cos(t: f64) -> (f64, f64) {
    // pi/2 = P1 + P2 + P3; P1 and P2 have 33 significant bits.
    const P1: f64 = 1.570_796_326_734_125_6;
    const P2: f64 = 6.077_100_506_303_966e-11;
    const P3: f64 = 2.022_266_248_795_950_6e-21;
    const MAGIC: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52: round to an integer
    let kb = t * std::f64::consts::FRAC_2_PI + MAGIC;
    let q = kb.to_bits() & 3;
    let k = kb - MAGIC;
    let r = ((t - k * P1) - k * P2) - k * P3;
    let z = r * r;
    // sin r = r (1 - z/3! + z^2/5! - ...), cos r = 1 - z/2! + z^2/4! - ...
    let mut ps = -1.0 / 121_645_100_408_832_000.0; // -1/19!
    ps = ps * z + 1.0 / 355_687_428_096_000.0; // 1/17!
    ps = ps * z - 1.0 / 1_307_674_368_000.0;
    ps = ps * z + 1.0 / 6_227_020_800.0;
    ps = ps * z - 1.0 / 39_916_800.0;
    ps = ps * z + 1.0 / 362_880.0;
    ps = ps * z - 1.0 / 5_040.0;
    ps = ps * z + 1.0 / 120.0;
    ps = ps * z - 1.0 / 6.0;
    let sr = r + r * z * ps;
    let mut pc = 1.0 / 2_432_902_008_176_640_000.0; // 1/20!
    pc = pc * z - 1.0 / 6_402_373_705_728_000.0; // -1/18!
    pc = pc * z + 1.0 / 20_922_789_888_000.0;
    pc = pc * z - 1.0 / 87_178_291_200.0;
    pc = pc * z + 1.0 / 479_001_600.0;
    pc = pc * z - 1.0 / 3_628_800.0;
    pc = pc * z + 1.0 / 40_320.0;
    pc = pc * z - 1.0 / 720.0;
    pc = pc * z + 1.0 / 24.0;
    pc = pc * z - 0.5;
    let cr = 1.0 + z * pc;
    let swap = q & 1 == 1;
    let (s0, c0) = if swap { (cr, sr) } else { (sr, cr) };
    let s = if q & 2 == 2 { -s0 } else { s0 };
    let c = if (q + 1) & 2 == 2 { -c0 } else { c0 };
    (s, c)
}

fn normalize_row(row: &mut [f64], norm: Norm) {
    let s: f64 = match norm {
        Norm::None => return,
        Norm::L1 => row.iter().map(|v| v.abs()).sum(),
        Norm::L2 => row.iter().map(|v| v * v).sum::<f64>().sqrt(),
    };
    if s > 0.0 {
        row.iter_mut().for_each(|v| *v /= s);
    }
}

/// Power normalisation of the rows of `x` (`n x d`): optional `pre_norm`,
/// then `sign(z) |z|^alpha`, then optional `norm`. In `f64`, rounded to `T`.
///
/// # Errors
/// [`BovwError::InvalidParameter`] naming `alpha` (not positive and finite);
/// [`BovwError::InvalidInput`] naming the first row with NaN or infinity.
pub fn power_normalize<T: Real>(x: &[T], d: usize, alpha: f64, pre_norm: Norm, norm: Norm) -> Result<Vec<T>> {
    if !(alpha > 0.0 && alpha.is_finite()) {
        return Err(BovwError::param("alpha", format!("must be positive and finite, got {alpha}")));
    }
    if d == 0 {
        return Ok(Vec::new());
    }
    if x.len() % d != 0 {
        return Err(BovwError::Shape { what: "X".into(), expected: format!("(n, {d})"), got: format!("{} values", x.len()) });
    }
    if let Some(i) = first_bad(x, |v| v.to_f64().abs() < f64::INFINITY) {
        return Err(BovwError::input(format!("X: row {} contains NaN or infinity", i / d)));
    }
    let mut out = super::output_buffer::<T>(x.len());
    out.par_chunks_mut(ROWS * d).zip(x.par_chunks(ROWS * d)).for_each_init(
        || vec![0f64; d],
        |buf, (ob, xb)| {
            for (orow, xrow) in ob.chunks_mut(d).zip(xb.chunks(d)) {
                buf.iter_mut().zip(xrow).for_each(|(b, v)| *b = v.to_f64());
                normalize_row(buf, pre_norm);
                if alpha == 0.5 {
                    buf.iter_mut().for_each(|z| *z = if *z >= 0.0 { z.sqrt() } else { -(-*z).sqrt() });
                } else if alpha != 1.0 {
                    buf.iter_mut().for_each(|z| *z = z.signum() * z.abs().powf(alpha));
                }
                normalize_row(buf, norm);
                orow.iter_mut().zip(buf.iter()).for_each(|(o, &b)| {
                    o.write(T::from_f64(b));
                });
            }
        },
    );
    // SAFETY: every row of `out` was written in full above.
    Ok(unsafe { super::assume_init(out) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chi2_by_formula() {
        let x = [0.0f64, 0.25, 1.0, 3.0];
        let y = additive_chi2(&x, 2, 2, None).unwrap();
        assert_eq!(y.len(), 2 * 3 * 2);
        let l = 0.5f64;
        let f = (2.0 * l / (std::f64::consts::PI * l).cosh()).sqrt();
        // row 0: x = (0, 0.25)
        assert_eq!(y[0], 0.0);
        assert!((y[1] - (0.25 * l).sqrt()).abs() < 1e-15);
        assert_eq!(y[2], 0.0);
        assert!((y[3] - f * 0.5 * (l * 0.25f64.ln()).cos()).abs() < 1e-15);
        assert!((y[5] - f * 0.5 * (l * 0.25f64.ln()).sin()).abs() < 1e-15);
        // The map approximates the chi2 kernel 2ab / (a + b) = 0.42: coarsely
        // with 3 steps (scikit-learn gives 0.41132469491718177), closely with 10.
        let (a, b) = (0.3f64, 0.7f64);
        let dot = |s, l| {
            let ya = additive_chi2(&[a], 1, s, l).unwrap();
            let yb = additive_chi2(&[b], 1, s, l).unwrap();
            ya.iter().zip(&yb).map(|(p, q)| p * q).sum::<f64>()
        };
        assert!((dot(3, None) - 0.411_324_694_917_181_77).abs() < 1e-14);
        assert!((dot(10, Some(0.2)) - 2.0 * a * b / (a + b)).abs() < 1e-3);
        let e = additive_chi2(&[1.0f32, -1.0], 2, 2, None).unwrap_err().to_string();
        assert!(e.contains("row 0, column 1") && e.contains("negative"), "{e}");
        assert!(additive_chi2(&[1.0f32], 1, 4, None).unwrap_err().to_string().contains("sample_interval"));
    }

    #[test]
    fn vector_math_matches_std() {
        let mut worst_ln = 0.0f64;
        let mut worst_sc = 0.0f64;
        let mut x = 1e-310f64;
        while x < 1e300 {
            for f in [1.0, 1.000_000_1, 1.3, 1.414_213_5, 1.414_213_6, 1.9] {
                let v = x * f;
                let a = ln_pos(v);
                let b = v.ln();
                worst_ln = worst_ln.max((a - b).abs() / b.abs().max(1e-300));
            }
            x *= 7.3;
        }
        assert!(worst_ln < 4.0 * f64::EPSILON, "ln: {worst_ln}");
        assert_eq!(ln_pos(1.0), 0.0);
        let mut t = -2000.0f64;
        while t < 2000.0 {
            let (s, c) = sin_cos(t);
            let (s2, c2) = t.sin_cos();
            worst_sc = worst_sc.max((s - s2).abs()).max((c - c2).abs());
            t += 0.012_345;
        }
        assert!(worst_sc < 4e-16 * 2000.0, "sin/cos: {worst_sc}");
        for t in [0.0, 1e-300, 0.785_398_163_397_448_3, -3.0, 1.5e6] {
            let (s, c) = sin_cos(t);
            assert!((s - t.sin()).abs() < 1e-15 * t.abs().max(1.0) && (c - t.cos()).abs() < 1e-15 * t.abs().max(1.0), "{t}");
        }
    }

    #[test]
    fn power_and_norms() {
        let x = [4.0f32, -9.0, 0.0, 0.0];
        let y = power_normalize(&x, 2, 0.5, Norm::None, Norm::None).unwrap();
        assert_eq!(y, vec![2.0, -3.0, 0.0, 0.0]);
        let y = power_normalize(&x, 2, 0.5, Norm::None, Norm::L2).unwrap();
        assert!((y[0] - 2.0 / 13f32.sqrt()).abs() < 1e-7);
        let y = power_normalize(&[1.0f64, 3.0], 2, 0.5, Norm::L1, Norm::None).unwrap();
        assert!((y[0] - 0.5).abs() < 1e-15 && (y[1] - 0.75f64.sqrt()).abs() < 1e-15);
        assert!(power_normalize(&[1.0f32], 1, 0.0, Norm::None, Norm::None).is_err());
    }
}
