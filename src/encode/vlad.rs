//! VLAD: vectors of locally aggregated descriptors.
//!
//! With words `mu_k` and assignment weights `q_ik` (hard: 1 for the nearest
//! word; soft: see [`super::assign`]), an image's VLAD is, per word,
//!
//! ```text
//! v_k = sum_i q_ik (x_i - mu_k) = sum_i q_ik x_i - m_k mu_k,   m_k = sum_i q_ik
//! ```
//!
//! (`K x d` values, word-major), then, in VLFeat's order (`vl/vlad.c`), each
//! an option:
//!
//! 1. `normalize_mass`: `v_k = sum_i q_ik x_i / m_k - mu_k` (words with
//!    `m_k = 0` stay 0);
//! 2. `square_root`: signed square root `sign(z) sqrt(|z|)`;
//! 3. `normalize_components` (intra-normalisation, Arandjelović and
//!    Zisserman): `v_k / max(||v_k||, 1e-12)`;
//! 4. `normalize`: the whole vector divided by `max(||v||, 1e-12)`.
//!
//! These are `cyvlfeat.vlad.vlad`'s `normalize_mass`, `square_root`,
//! `normalize_components` and `not unnormalized`, with the assignments
//! passed as its `assignments` matrix. With a spatial pyramid each cell is
//! encoded (and normalised) on its own and the cells are concatenated, each
//! times its level weight, as VLFeat's `apps/recognition/encodeImage.m` does.
//! Sums are accumulated in `f64`; the output is `f32`. An image (or cell)
//! without descriptors encodes to zeros.
//!
//! The work per image follows its descriptors, not `n_cells * K * d`: only
//! the words an image touches are accumulated, finished and written (into a
//! zero-filled output); a word's block sum of squares is taken in order,
//! and a cell's squared norm (step 4) is the sum of its blocks' in word
//! order, so results do not depend on the number of threads.
//!
//! # References
//! - H. Jégou, M. Douze, C. Schmid, P. Pérez, "Aggregating local descriptors
//!   into a compact image representation", CVPR 2010.
//! - R. Arandjelović, A. Zisserman, "All about VLAD", CVPR 2013.
//! - VLFeat, `vl/vlad.c`.

use rayon::prelude::*;

use super::assign::Assignment;
use super::pyramid::{for_assigned_chunks, Layout};
use super::{check_batch, signed_sqrt, zeroed_output};
use crate::error::{BovwError, Result};

/// VLAD normalisations (VLFeat's flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VladOptions {
    /// Divide each word's residual sum by its mass.
    pub normalize_mass: bool,
    /// Signed square root of every value.
    pub square_root: bool,
    /// L2-normalise each word's block (intra-normalisation).
    pub normalize_components: bool,
    /// L2-normalise the whole vector (of each cell).
    pub normalize: bool,
}

impl Default for VladOptions {
    /// Intra-normalisation then L2 (Arandjelović and Zisserman).
    fn default() -> Self {
        VladOptions { normalize_mass: false, square_root: false, normalize_components: true, normalize: true }
    }
}

/// Steps 1 and 2 of the module docs on one word's raw sums `v` (mass `m`,
/// word `mu`). A word without descriptors (`v` all zeros, `m = 0`) stays
/// all zeros, so only the words an image touches need finishing.
#[inline]
fn residual_word(v: &mut [f64], m: f64, mu: &[f32], o: &VladOptions) {
    if m > 0.0 {
        if o.normalize_mass {
            v.iter_mut().zip(mu).for_each(|(z, &c)| *z = *z / m - c as f64);
        } else {
            v.iter_mut().zip(mu).for_each(|(z, &c)| *z -= m * c as f64);
        }
    }
    if o.square_root {
        signed_sqrt(v);
    }
}

/// The sum of squares of each block `enc[b d .. (b + 1) d]`, `b` in
/// `blocks`, into `out`: each summed in order (`sum_t z_t^2`, as
/// [`super::l2_normalize`] does), four blocks at a time so that the four
/// dependent chains of additions overlap.
fn block_sumsq(enc: &[f64], blocks: &[usize], d: usize, out: &mut Vec<f64>) {
    out.clear();
    let mut quads = blocks.chunks_exact(4);
    for q in &mut quads {
        let v: [&[f64]; 4] = std::array::from_fn(|j| &enc[q[j] * d..(q[j] + 1) * d]);
        let mut acc = [0.0f64; 4];
        for t in 0..d {
            for j in 0..4 {
                acc[j] += v[j][t] * v[j][t];
            }
        }
        out.extend_from_slice(&acc);
    }
    for &b in quads.remainder() {
        out.push(enc[b * d..(b + 1) * d].iter().map(|z| z * z).sum());
    }
}

/// VLAD of every image of a batch: `n_images x (n_cells * K * d)` `f32`.
///
/// `values`: descriptors `offsets[n_images] x d`; `vocabulary`: `K x d`.
///
/// # Errors
/// [`BovwError::Shape`] naming `descriptors` when the widths differ, or
/// `vocabulary` when it is empty; [`BovwError::InvalidInput`] for NaN or
/// infinity (the row is named) and bad frames (see
/// [`super::Frames::check`]); [`BovwError::InvalidParameter`] for bad offsets.
pub fn vlad(
    values: &[f32],
    offsets: &[usize],
    d: usize,
    vocabulary: &[f32],
    how: &Assignment,
    opts: &VladOptions,
    layout: &Layout<'_>,
) -> Result<Vec<f32>> {
    if d == 0 || vocabulary.is_empty() || vocabulary.len() % d != 0 {
        return Err(BovwError::Shape {
            what: "vocabulary".into(),
            expected: format!("(n_words >= 1, {d})"),
            got: format!("{} values", vocabulary.len()),
        });
    }
    if vocabulary.iter().any(|v| !v.is_finite()) {
        return Err(BovwError::input("vocabulary contains NaN or infinity"));
    }
    let n_images = check_batch(values, offsets, d, "vocabulary")?;
    layout.check(offsets)?;
    let k = vocabulary.len() / d;
    let block = k * d;
    let n_cells = layout.n_cells();
    let width = n_cells * block;
    let levels = layout.levels();
    let cw = layout.cell_weights();
    if width == 0 {
        return Ok(Vec::new());
    }
    let mut out = zeroed_output(n_images * width, 0f32);
    for_assigned_chunks(values, offsets, d, vocabulary, how, |start, end, r0, a| {
        let m = a.m;
        // Sparse per image: an image of n descriptors touches at most
        // n * levels of the n_cells * K word blocks. `enc` and `mass` are all
        // zeros between images; `touched` lists the blocks (cell * K + word)
        // whose mass became non-zero (weights are > 0). Untouched blocks
        // finish to zeros and add exact zeros to their cell's norm, so
        // skipping them changes no bit of the result.
        out[start * width..end * width].par_chunks_mut(width).enumerate().for_each_init(
            || (vec![0f64; width], vec![0f64; n_cells * k], Vec::<usize>::new(), Vec::<f64>::new()),
            |(enc, mass, touched, sumsq), (e, row)| {
                let i = start + e;
                let (o0, o1) = (offsets[i], offsets[i + 1]);
                if o1 == o0 {
                    return;
                }
                let cells = layout.cells(i, o0..o1);
                for r in o0..o1 {
                    let x = &values[r * d..(r + 1) * d];
                    let local = r - r0;
                    for ent in 0..m {
                        let (w, q) = (a.words[local * m + ent] as usize, a.weights[local * m + ent] as f64);
                        if q == 0.0 {
                            continue;
                        }
                        for &c in &cells[(r - o0) * levels..(r - o0 + 1) * levels] {
                            let b = c * k + w;
                            if mass[b] == 0.0 {
                                touched.push(b);
                            }
                            mass[b] += q;
                            let acc = &mut enc[b * d..(b + 1) * d];
                            acc.iter_mut().zip(x).for_each(|(s, &v)| *s += q * v as f64);
                        }
                    }
                }
                touched.sort_unstable();
                for &b in touched.iter() {
                    let w = b % k;
                    residual_word(&mut enc[b * d..(b + 1) * d], mass[b], &vocabulary[w * d..(w + 1) * d], opts);
                }
                if opts.normalize_components {
                    // Step 3, as `l2_normalize` of each block.
                    block_sumsq(enc, touched, d, sumsq);
                    for (&b, &ss) in touched.iter().zip(sumsq.iter()) {
                        let n = ss.sqrt().max(1e-12);
                        enc[b * d..(b + 1) * d].iter_mut().for_each(|z| *z /= n);
                    }
                }
                if opts.normalize {
                    block_sumsq(enc, touched, d, sumsq);
                }
                // Per cell: the L2 norm (step 4) from its touched blocks'
                // sums of squares, added in block order (untouched blocks
                // are zeros), then the touched blocks of the zero-filled row.
                let mut t = 0;
                while t < touched.len() {
                    let c = touched[t] / k;
                    let mut u = t;
                    while u < touched.len() && touched[u] / k == c {
                        u += 1;
                    }
                    let cell = &touched[t..u];
                    let norm = if opts.normalize {
                        let ss: f64 = sumsq[t..u].iter().sum();
                        Some(ss.sqrt().max(1e-12))
                    } else {
                        None
                    };
                    let s = cw[c];
                    for &b in cell {
                        let v = &mut enc[b * d..(b + 1) * d];
                        for (o, z) in row[b * d..(b + 1) * d].iter_mut().zip(v.iter_mut()) {
                            let z1 = match norm {
                                Some(n) => *z / n,
                                None => *z,
                            };
                            *o = (z1 * s) as f32;
                            *z = 0.0;
                        }
                        mass[b] = 0.0;
                    }
                    t = u;
                }
                touched.clear();
            },
        );
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vlad_by_hand() {
        let vocab = [0.0f32, 0.0, 10.0, 10.0];
        let desc = [1.0f32, 2.0, 9.0, 9.0, 11.0, 12.0];
        let offsets = [0usize, 3, 3];
        let raw = VladOptions { normalize_mass: false, square_root: false, normalize_components: false, normalize: false };
        let v = vlad(&desc, &offsets, 2, &vocab, &Assignment::Hard, &raw, &Layout::Whole).unwrap();
        assert_eq!(v, vec![1.0, 2.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        let mass = VladOptions { normalize_mass: true, ..raw };
        let v = vlad(&desc, &offsets, 2, &vocab, &Assignment::Hard, &mass, &Layout::Whole).unwrap();
        assert_eq!(&v[..4], &[1.0, 2.0, 0.0, 0.5]);
        let v = vlad(&desc, &offsets, 2, &vocab, &Assignment::Hard, &VladOptions::default(), &Layout::Whole).unwrap();
        let s = 0.5f32.sqrt();
        let n5 = 5f32.sqrt();
        let want = [1.0 / n5 * s, 2.0 / n5 * s, 0.0, s];
        for (a, b) in v[..4].iter().zip(&want) {
            assert!((a - b).abs() < 1e-6);
        }
        assert!(v[4..].iter().all(|&z| z == 0.0));
        let e = vlad(&desc, &offsets, 3, &vocab, &Assignment::Hard, &raw, &Layout::Whole).unwrap_err();
        assert!(e.to_string().contains("vocabulary") || e.to_string().contains("descriptors"), "{e}");
    }
}
