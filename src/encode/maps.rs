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
    if let Some(i) = x.par_iter().position_first(|v| !(v.is_finite() && v.to_f64() >= 0.0)) {
        return Err(BovwError::input(format!(
            "X: value {:?} at row {}, column {} is {}: the chi2 map needs finite values >= 0",
            x[i],
            i / d,
            i % d,
            if x[i].is_finite() { "negative" } else { "not finite" }
        )));
    }
    let s = sample_steps;
    let w = (2 * s - 1) * d;
    // sqrt(2 L / cosh(pi j L)), j = 1..s-1
    let factors: Vec<f64> = (1..s).map(|j| (2.0 * l / (std::f64::consts::PI * j as f64 * l).cosh()).sqrt()).collect();
    let mut out = vec![T::zero(); (x.len() / d) * w];
    out.par_chunks_mut(ROWS * w).zip(x.par_chunks(ROWS * d)).for_each(|(ob, xb)| {
        for (orow, xrow) in ob.chunks_mut(w).zip(xb.chunks(d)) {
            for (t, &xv) in xrow.iter().enumerate() {
                let v = xv.to_f64();
                if v == 0.0 {
                    continue;
                }
                let sq = v.sqrt();
                orow[t] = T::from_f64((v * l).sqrt());
                if s > 1 {
                    let lg = l * v.ln();
                    for (j, &f) in factors.iter().enumerate() {
                        let (sn, cs) = ((j + 1) as f64 * lg).sin_cos();
                        let a = f * sq;
                        orow[(2 * j + 1) * d + t] = T::from_f64(a * cs);
                        orow[(2 * j + 2) * d + t] = T::from_f64(a * sn);
                    }
                }
            }
        }
    });
    Ok(out)
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
    if let Some(i) = x.par_iter().position_first(|v| !v.is_finite()) {
        return Err(BovwError::input(format!("X: row {} contains NaN or infinity", i / d)));
    }
    let mut out = vec![T::zero(); x.len()];
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
                orow.iter_mut().zip(buf.iter()).for_each(|(o, &b)| *o = T::from_f64(b));
            }
        },
    );
    Ok(out)
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
