//! Assigning descriptors to visual words: hard or soft (kernel codebook).
//!
//! **Hard**: each descriptor goes to its nearest word (squared Euclidean
//! distance, ties to the lowest index) with weight 1, by
//! [`crate::cluster::kmeans::assign_labels_only`] (the exact nearest word).
//!
//! **Soft** (`n_neighbors = m`, kernel width `sigma`): each descriptor is
//! spread over its `m` nearest words `j` (exact squared distances `D_j`, ties
//! to the lowest index) with weights
//!
//! ```text
//! w_j = exp(-D_j / (2 sigma^2)) / sum_{j' in the m nearest} exp(-D_j' / (2 sigma^2)),
//! ```
//!
//! computed as `exp(-(D_j - D_min) / (2 sigma^2))` for stability. With
//! `m = n_words` this is van Gemert et al.'s *codeword uncertainty* (the
//! normalised kernel codebook); with small `m`, Liu et al.'s localised soft
//! assignment. Words more than `140 sigma^2` beyond the nearest (weight
//! below `e^-70`) get weight 0. Distances come from one `f32` GEMM per block
//! ([`crate::cluster::kmeans::gemm_abt`], the K-Means kernel) with its
//! rounding bound; every word that may be among the `m` nearest is
//! re-measured exactly in `f64` ([`crate::cluster::kmeans::sqdist_exact`]).
//!
//! # References
//! - J. C. van Gemert, C. J. Veenman, A. W. M. Smeulders, J.-M. Geusebroek,
//!   "Visual word ambiguity", IEEE TPAMI 32(7), 2010.
//! - L. Liu, L. Wang, X. Liu, "In defense of soft-assignment coding",
//!   ICCV 2011.

use rayon::prelude::*;

use crate::cluster::kmeans::{assign_labels_only, gemm_abt, sqdist_exact, CHUNK};
use crate::error::{BovwError, Result};

/// Nats beyond which a soft weight is set to 0 (`e^-70 ~ 4e-31`).
const WINDOW_NATS: f64 = 70.0;

/// How descriptors are assigned to words.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Assignment {
    /// Nearest word, weight 1.
    Hard,
    /// Gaussian-kernel weights over the `n_neighbors` nearest words.
    Soft { n_neighbors: usize, sigma: f64 },
}

impl Assignment {
    /// From the Python parameters: `n_neighbors = 1` without `sigma` is hard.
    ///
    /// # Errors
    /// [`BovwError::InvalidParameter`] naming `n_neighbors` (0) or `sigma`
    /// (missing with `n_neighbors > 1`, or not positive and finite).
    pub fn new(n_neighbors: usize, sigma: Option<f64>) -> Result<Self> {
        if n_neighbors == 0 {
            return Err(BovwError::param("n_neighbors", "must be at least 1"));
        }
        match sigma {
            None if n_neighbors == 1 => Ok(Assignment::Hard),
            None => Err(BovwError::param("sigma", format!("soft assignment (n_neighbors={n_neighbors}) needs a kernel width sigma > 0"))),
            Some(s) if !(s > 0.0 && s.is_finite()) => Err(BovwError::param("sigma", format!("must be positive and finite, got {s}"))),
            Some(_) if n_neighbors == 1 => Ok(Assignment::Hard),
            Some(s) => Ok(Assignment::Soft { n_neighbors, sigma: s }),
        }
    }

    /// Entries per descriptor for `k` words.
    pub fn per_row(&self, k: usize) -> usize {
        match self {
            Assignment::Hard => 1,
            Assignment::Soft { n_neighbors, .. } => (*n_neighbors).min(k),
        }
    }
}

/// Assignments of `n` descriptors, `m` entries each (`n x m`, row-major);
/// entries past the kernel window have weight 0.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignments {
    /// Entries per descriptor.
    pub m: usize,
    /// Word of each entry.
    pub words: Vec<u32>,
    /// Weight of each entry (a row's weights sum to 1).
    pub weights: Vec<f32>,
}

/// Assign the rows of `x` (`n x d`) to the words of `vocabulary` (`k x d`).
/// Inputs are assumed finite (see [`super::check_batch`]).
///
/// # Errors
/// [`BovwError::Shape`] when the slices are not multiples of `d` or the
/// vocabulary is empty.
pub fn assign(x: &[f32], vocabulary: &[f32], d: usize, how: &Assignment) -> Result<Assignments> {
    let k = if d == 0 { 0 } else { vocabulary.len() / d };
    if d == 0 || k == 0 || vocabulary.len() % d != 0 || x.len() % d != 0 {
        return Err(BovwError::Shape {
            what: "vocabulary".into(),
            expected: format!("(n_words >= 1, {d})"),
            got: format!("{} values", vocabulary.len()),
        });
    }
    let n = x.len() / d;
    match *how {
        Assignment::Hard => {
            let words = if n == 0 { Vec::new() } else { assign_labels_only(x, vocabulary, d)? };
            Ok(Assignments { m: 1, words, weights: vec![1.0; n] })
        }
        Assignment::Soft { n_neighbors, sigma } => {
            let m = n_neighbors.min(k);
            let mut words = vec![0u32; n * m];
            let mut weights = vec![0f32; n * m];
            let cn: Vec<f64> = vocabulary.chunks(d).map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum()).collect();
            let cmax = cn.iter().cloned().fold(0.0, f64::max);
            let inv2s2 = 1.0 / (2.0 * sigma * sigma);
            let window = WINDOW_NATS / inv2s2;
            x.par_chunks(CHUNK * d)
                .zip(words.par_chunks_mut(CHUNK * m))
                .zip(weights.par_chunks_mut(CHUNK * m))
                .for_each_init(
                    || (Vec::<f32>::new(), Vec::<f64>::new(), Vec::<f64>::new(), Vec::<(f64, u32)>::new()),
                    |(buf, dhat, tmp, cand), ((rows, wo), ww)| {
                        let mr = rows.len() / d;
                        buf.resize(mr * k, 0.0);
                        gemm_abt(rows, vocabulary, mr, k, d, buf);
                        for r in 0..mr {
                            let xr = &rows[r * d..(r + 1) * d];
                            let xn: f64 = xr.iter().map(|&v| (v as f64) * (v as f64)).sum();
                            let delta = 2.0 * (d as f64 + 4.0) * (f32::EPSILON as f64) * (xn + cmax);
                            dhat.clear();
                            dhat.extend((0..k).map(|j| xn + cn[j] - 2.0 * buf[r * k + j] as f64));
                            tmp.clear();
                            tmp.extend_from_slice(dhat);
                            let (_, vm, _) = tmp.select_nth_unstable_by(m - 1, |a, b| a.total_cmp(b));
                            let vm = *vm;
                            let dmin = dhat.iter().cloned().fold(f64::INFINITY, f64::min);
                            let thr = vm.min(dmin + window) + 2.0 * delta;
                            cand.clear();
                            for (j, &v) in dhat.iter().enumerate() {
                                if !(v > thr) {
                                    cand.push((sqdist_exact(xr, &vocabulary[j * d..(j + 1) * d]), j as u32));
                                }
                            }
                            cand.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                            cand.truncate(m);
                            let best = cand[0].0;
                            let out_w = &mut ww[r * m..(r + 1) * m];
                            let out_j = &mut wo[r * m..(r + 1) * m];
                            tmp.clear();
                            tmp.extend(cand.iter().map(|&(dist, _)| {
                                let z = dist - best;
                                if z > window {
                                    0.0
                                } else {
                                    (-z * inv2s2).exp()
                                }
                            }));
                            let total: f64 = tmp.iter().sum();
                            for (e, (&(_, j), &w)) in cand.iter().zip(tmp.iter()).enumerate() {
                                out_j[e] = j;
                                out_w[e] = (w / total) as f32;
                            }
                            for e in cand.len()..m {
                                out_j[e] = cand[0].1;
                                out_w[e] = 0.0;
                            }
                        }
                    },
                );
            Ok(Assignments { m, words, weights })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_matches_dense_kernel() {
        let d = 3;
        let vocab = [0.0f32, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 2.0, 0.0, 5.0, 5.0, 5.0];
        let x = [0.2f32, 0.1, 0.0, 0.9, 1.1, 0.0, 4.0, 4.0, 4.0];
        let sigma = 0.7;
        let a = assign(&x, &vocab, d, &Assignment::new(3, Some(sigma)).unwrap()).unwrap();
        assert_eq!(a.m, 3);
        for (r, xr) in x.chunks(d).enumerate() {
            let mut ds: Vec<(f64, u32)> =
                vocab.chunks(d).enumerate().map(|(j, c)| (sqdist_exact(xr, c), j as u32)).collect();
            ds.sort_by(|a, b| a.0.total_cmp(&b.0));
            ds.truncate(3);
            let ws: Vec<f64> = ds.iter().map(|(v, _)| (-v / (2.0 * sigma * sigma)).exp()).collect();
            let s: f64 = ws.iter().sum();
            for e in 0..3 {
                assert_eq!(a.words[r * 3 + e], ds[e].1);
                assert!((a.weights[r * 3 + e] as f64 - ws[e] / s).abs() < 1e-6);
            }
        }
        let h = assign(&x, &vocab, d, &Assignment::new(1, None).unwrap()).unwrap();
        assert_eq!(h.words, vec![0, 1, 3]);
        assert!(Assignment::new(2, None).unwrap_err().to_string().contains("sigma"));
        assert!(Assignment::new(0, None).unwrap_err().to_string().contains("n_neighbors"));
    }
}
