//! Fisher vectors of a diagonal Gaussian mixture.
//!
//! With weights `pi_k`, means `mu_k`, variances `sigma_k^2` and posteriors
//! `gamma_ik` ([`crate::cluster::gmm`]), the Fisher vector of `N`
//! descriptors is, per component (`2 K d` values: all `u_k`, then all `v_k`,
//! VLFeat's layout),
//!
//! ```text
//! u_k = 1 / (N sqrt(pi_k))   sum_i gamma_ik (x_i - mu_k) / sigma_k
//! v_k = 1 / (N sqrt(2 pi_k)) sum_i gamma_ik ((x_i - mu_k)^2 / sigma_k^2 - 1)
//! ```
//!
//! The "improved" Fisher vector (Perronnin, Sánchez, Mensink) then takes the
//! signed square root of every value and divides by `max(||.||_2, 1e-12)`
//! (`square_root` and `normalize`). As in VLFeat's `vl/fisher.c`, posteriors
//! below `posterior_threshold` (default `1e-6`) are skipped, components with
//! `pi_k < prior_threshold` (default `1e-6`) are left out (zero blocks, and
//! no share of the posteriors), and an image without descriptors encodes to
//! zeros. With a spatial pyramid each cell is encoded on its own (its own
//! `N`) and normalised, then the cells are concatenated, each times its
//! level weight (VLFeat's `apps/recognition/encodeImage.m`).
//!
//! Posteriors come from the mixture's E-step kernel (one `f32` GEMM per
//! block of descriptors, exact `f64` log-densities for the components that
//! matter); sums are accumulated in `f64` over the components whose
//! posterior passes the threshold; the output is `f32`.
//!
//! # References
//! - F. Perronnin, J. Sánchez, T. Mensink, "Improving the Fisher kernel for
//!   large-scale image classification", ECCV 2010.
//! - J. Sánchez, F. Perronnin, T. Mensink, J. Verbeek, "Image classification
//!   with the Fisher vector: theory and practice", IJCV 105(3), 2013.
//! - VLFeat, `vl/fisher.c`.

use rayon::prelude::*;

use super::pyramid::Layout;
use super::{check_batch, l2_normalize, signed_sqrt, width_error};
use crate::cluster::gmm::{posteriors_block, DiagGmm, Scratch};
use crate::cluster::kmeans::CHUNK;
use crate::error::{BovwError, Result};

/// Fisher vector options.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FisherOptions {
    /// Signed square root of every value ("improved").
    pub square_root: bool,
    /// L2-normalise the vector (of each cell) ("improved").
    pub normalize: bool,
    /// Posteriors below this are skipped (VLFeat: `1e-6`).
    pub posterior_threshold: f64,
    /// Components with a smaller weight are left out (VLFeat: `1e-6`).
    pub prior_threshold: f64,
}

impl Default for FisherOptions {
    /// The improved Fisher vector with VLFeat's thresholds.
    fn default() -> Self {
        FisherOptions { square_root: true, normalize: true, posterior_threshold: 1e-6, prior_threshold: 1e-6 }
    }
}

/// Fisher vectors of every image of a batch: `n_images x (n_cells * 2 K d)` `f32`.
///
/// # Errors
/// [`BovwError::Shape`] naming `descriptors` when their width is not the
/// mixture's; [`BovwError::InvalidInput`] for NaN or infinity (the row is
/// named) and bad frames; [`BovwError::InvalidParameter`] for bad offsets or
/// negative thresholds.
pub fn fisher(values: &[f32], offsets: &[usize], d: usize, gmm: &DiagGmm, opts: &FisherOptions, layout: &Layout<'_>) -> Result<Vec<f32>> {
    if d != gmm.n_features {
        return Err(width_error("mixture", gmm.n_features, d));
    }
    for (name, v) in [("posterior_threshold", opts.posterior_threshold), ("prior_threshold", opts.prior_threshold)] {
        if !(v >= 0.0 && v.is_finite()) {
            return Err(BovwError::param(name, format!("must be finite and >= 0, got {v}")));
        }
    }
    let n_images = check_batch(values, offsets, d, "mixture")?;
    layout.check(offsets)?;
    let k = gmm.n_components;
    // Components below the prior threshold take no posterior (VLFeat).
    let keep: Vec<bool> = gmm.weights.iter().map(|&w| w >= opts.prior_threshold).collect();
    if !keep.iter().any(|&b| b) {
        return Err(BovwError::param("prior_threshold", "every component's weight is below it"));
    }
    let mut g = gmm.clone();
    g.weights.iter_mut().zip(&keep).for_each(|(w, &kp)| {
        if !kp {
            *w = 0.0
        }
    });
    let pg = g.prepare();
    let sqrt_prec: Vec<f64> = gmm.covariances.iter().map(|v| (1.0 / v).sqrt()).collect();
    let block = 2 * k * d;
    let n_cells = layout.n_cells();
    let width = n_cells * block;
    let levels = layout.levels();
    let cw = layout.cell_weights();
    let mut out = vec![0f32; n_images * width];
    if width == 0 {
        return Ok(out);
    }
    let thr = opts.posterior_threshold;
    out.par_chunks_mut(width).enumerate().with_max_len(1).for_each_init(
        || (vec![0f64; width], vec![0usize; n_cells], Scratch::default(), vec![0f64; d]),
        |(enc, count, s, z), (i, row)| {
            let (o0, o1) = (offsets[i], offsets[i + 1]);
            if o1 == o0 {
                return;
            }
            enc.iter_mut().for_each(|v| *v = 0.0);
            count.iter_mut().for_each(|v| *v = 0);
            let cells = layout.cells(i, o0..o1);
            for &c in &cells {
                count[c] += 1;
            }
            let mut b0 = o0;
            while b0 < o1 {
                let b1 = (b0 + CHUNK).min(o1);
                posteriors_block(&values[b0 * d..b1 * d], &pg, s, |r, _, s| {
                    let rc = &cells[(b0 + r - o0) * levels..(b0 + r - o0 + 1) * levels];
                    for (&j, &p) in s.cand.iter().zip(&s.post) {
                        let j = j as usize;
                        if p < thr || !keep[j] {
                            continue;
                        }
                        let mu = &pg.means[j * d..(j + 1) * d];
                        let sp = &sqrt_prec[j * d..(j + 1) * d];
                        for t in 0..d {
                            z[t] = (s.x[t] - mu[t]) * sp[t];
                        }
                        for &c in rc {
                            let base = c * block;
                            let (u, v) = enc[base..base + block].split_at_mut(k * d);
                            let u = &mut u[j * d..(j + 1) * d];
                            let v = &mut v[j * d..(j + 1) * d];
                            for t in 0..d {
                                let zt = z[t];
                                u[t] += p * zt;
                                v[t] += p * (zt * zt - 1.0);
                            }
                        }
                    }
                });
                b0 = b1;
            }
            for (c, (ec, oc)) in enc.chunks_mut(block).zip(row.chunks_mut(block)).enumerate() {
                let n = count[c] as f64;
                if n > 0.0 {
                    let (u, v) = ec.split_at_mut(k * d);
                    for j in 0..k {
                        let w = gmm.weights[j];
                        if !keep[j] {
                            continue;
                        }
                        let (fu, fv) = (1.0 / (n * w.sqrt()), 1.0 / (n * (2.0 * w).sqrt()));
                        u[j * d..(j + 1) * d].iter_mut().for_each(|z| *z *= fu);
                        v[j * d..(j + 1) * d].iter_mut().for_each(|z| *z *= fv);
                    }
                }
                if opts.square_root {
                    signed_sqrt(ec);
                }
                if opts.normalize {
                    l2_normalize(ec);
                }
                let sc = cw[c];
                oc.iter_mut().zip(ec.iter()).for_each(|(o, &v)| *o = (v * sc) as f32);
            }
        },
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fisher_by_hand_one_component() {
        // One component: posteriors are 1.
        let g = DiagGmm::new(vec![1.0], vec![1.0, 2.0], vec![4.0, 1.0], 2).unwrap();
        let desc = [3.0f32, 2.0, 1.0, 4.0];
        let offsets = [0usize, 2, 2];
        let raw = FisherOptions { square_root: false, normalize: false, ..Default::default() };
        let f = fisher(&desc, &offsets, 2, &g, &raw, &Layout::Whole).unwrap();
        // z = ((3-1)/2, 0), (0, 2)
        let u = [(1.0 + 0.0) / 2.0, (0.0 + 2.0) / 2.0];
        let v = [((1.0 - 1.0) + (0.0 - 1.0)) / (2.0 * 2f64.sqrt()), ((0.0 - 1.0) + (4.0 - 1.0)) / (2.0 * 2f64.sqrt())];
        let want = [u[0], u[1], v[0], v[1]];
        for (a, b) in f[..4].iter().zip(&want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{f:?}");
        }
        assert!(f[4..].iter().all(|&z| z == 0.0));
        let e = fisher(&desc, &[0, 1], 2, &g, &raw, &Layout::Whole).unwrap_err();
        assert!(e.to_string().contains("offsets"), "{e}");
        let e = fisher(&desc[..3], &[0, 1], 3, &g, &raw, &Layout::Whole).unwrap_err();
        assert!(e.to_string().contains("width 2") && e.to_string().contains("width 3"), "{e}");
    }
}
