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
//! posterior passes the threshold; the output is `f32`. Only the
//! components that received a posterior in a cell are scaled, normalised
//! and written (the others are zero blocks, which change neither the sums
//! nor the norm), so an image of a few dozen descriptors costs a few
//! components, not `K`. Images are encoded in parallel; an image of more
//! than 2,048 descriptors (`PART`) is cut into at most 16 parts whose size depends
//! on its number of descriptors only, summed in parallel and added in order,
//! so the vector does not depend on the number of threads nor on the other
//! images of the batch. Where the CPU has AVX2, the accumulation and the
//! normalisation run an AVX2 build of the same arithmetic (same bits). The
//! output is zero-filled by the kernel (`calloc`, huge pages where large)
//! and only the used components are written.
//!
//! # References
//! - F. Perronnin, J. Sánchez, T. Mensink, "Improving the Fisher kernel for
//!   large-scale image classification", ECCV 2010.
//! - J. Sánchez, F. Perronnin, T. Mensink, J. Verbeek, "Image classification
//!   with the Fisher vector: theory and practice", IJCV 105(3), 2013.
//! - VLFeat, `vl/fisher.c`.

use rayon::prelude::*;

use super::pyramid::Layout;
use super::{check_batch, signed_sqrt, width_error, zeroed_output};
use crate::cluster::gmm::{posteriors_block, DiagGmm, PreparedGmm, Scratch};
use crate::features::use_avx2;
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
    if width == 0 {
        return Ok(Vec::new());
    }
    // Zero-filled (calloc, huge pages): only the used components are written.
    let mut out = zeroed_output(n_images * width, 0f32);
    let ctx = Ctx {
        values,
        d,
        k,
        pg: &pg,
        keep: &keep,
        weights: &gmm.weights,
        sqrt_prec: &sqrt_prec,
        levels,
        cell_weights: &cw,
        opts,
    };
    let avx2 = use_avx2();
    // Images with up to PART descriptors: one task each. Larger ones are
    // left to the second pass.
    out.par_chunks_mut(width).enumerate().with_max_len(1).for_each_init(
        || Worker::new(width, n_cells, k, d),
        |w, (i, row)| {
            let (o0, o1) = (offsets[i], offsets[i + 1]);
            if o1 == o0 || o1 - o0 > PART {
                return;
            }
            let cells = layout.cells(i, o0..o1);
            for &cell in &cells {
                w.count[cell] += 1;
            }
            accumulate_any(avx2, &ctx, &mut w.acc, &mut w.s, &mut w.z, o0, o1, &cells);
            finish_any(avx2, &ctx, &mut w.acc, &mut w.count, row);
        },
    );
    // Larger images: their descriptors cut into parts (sizes from the
    // number of descriptors only) summed in parallel, then added in order.
    for (i, row) in out.chunks_mut(width).enumerate() {
        let (o0, o1) = (offsets[i], offsets[i + 1]);
        if o1 - o0 <= PART {
            continue;
        }
        let cells = layout.cells(i, o0..o1);
        let pr = part_rows(o1 - o0);
        let mut parts: Vec<Acc> = (0..(o1 - o0).div_ceil(pr))
            .into_par_iter()
            .map(|p| {
                let mut acc = Acc::new(width, n_cells, k);
                let (mut s, mut z) = (Scratch::default(), vec![0f64; d]);
                let (r0, r1) = (o0 + p * pr, (o0 + (p + 1) * pr).min(o1));
                let rc = &cells[(r0 - o0) * levels..(r1 - o0) * levels];
                accumulate_any(avx2, &ctx, &mut acc, &mut s, &mut z, r0, r1, rc);
                acc
            })
            .collect();
        let mut total = parts.remove(0);
        for p in &parts {
            total.add(p, k, d);
        }
        let mut count = vec![0usize; n_cells];
        for &cell in &cells {
            count[cell] += 1;
        }
        finish_any(avx2, &ctx, &mut total, &mut count, row);
    }
    Ok(out)
}

/// Descriptors above which an image is summed in parallel parts.
const PART: usize = 8 * CHUNK;

/// Rows per part of an image of `n > PART` descriptors: at most 16 parts,
/// a multiple of [`CHUNK`]; depends on `n` only.
fn part_rows(n: usize) -> usize {
    n.div_ceil(16).max(PART).div_ceil(CHUNK) * CHUNK
}

/// [`accumulate`], built with AVX2 code generation when `avx2` (the same
/// bits: no fused operations).
#[allow(clippy::too_many_arguments)]
fn accumulate_any(avx2: bool, c: &Ctx<'_>, acc: &mut Acc, s: &mut Scratch, z: &mut [f64], r0: usize, r1: usize, cells: &[usize]) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn accumulate_avx2(c: &Ctx<'_>, acc: &mut Acc, s: &mut Scratch, z: &mut [f64], r0: usize, r1: usize, cells: &[usize]) {
            accumulate(c, acc, s, z, r0, r1, cells)
        }
        if avx2 {
            // SAFETY: `avx2` is `use_avx2()`.
            return unsafe { accumulate_avx2(c, acc, s, z, r0, r1, cells) };
        }
    }
    let _ = avx2;
    accumulate(c, acc, s, z, r0, r1, cells)
}

/// [`finish`], built with AVX2 code generation when `avx2`.
fn finish_any(avx2: bool, c: &Ctx<'_>, acc: &mut Acc, count: &mut [usize], row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn finish_avx2(c: &Ctx<'_>, acc: &mut Acc, count: &mut [usize], row: &mut [f32]) {
            finish(c, acc, count, row)
        }
        if avx2 {
            // SAFETY: `avx2` is `use_avx2()`.
            return unsafe { finish_avx2(c, acc, count, row) };
        }
    }
    let _ = avx2;
    finish(c, acc, count, row)
}

/// What every image's encoding reads.
struct Ctx<'a> {
    values: &'a [f32],
    d: usize,
    k: usize,
    pg: &'a PreparedGmm,
    keep: &'a [bool],
    weights: &'a [f64],
    sqrt_prec: &'a [f64],
    levels: usize,
    cell_weights: &'a [f64],
    opts: &'a FisherOptions,
}

/// The `f64` sums of one image (or part of one); `enc` is all zeros and
/// `used` all false after [`finish`].
struct Acc {
    /// The sums of every cell (`n_cells x 2 K d`: the `u` then `v` blocks).
    enc: Vec<f64>,
    /// Whether component `j` of cell `c` received a posterior (`c * K + j`).
    used: Vec<bool>,
    /// Those components, per cell, in the order they first did.
    used_list: Vec<Vec<u32>>,
}

impl Acc {
    fn new(width: usize, n_cells: usize, k: usize) -> Self {
        Acc { enc: vec![0f64; width], used: vec![false; n_cells * k], used_list: vec![Vec::new(); n_cells] }
    }

    #[inline(always)]
    fn mark(&mut self, cell: usize, j: usize, k: usize) {
        if !self.used[cell * k + j] {
            self.used[cell * k + j] = true;
            self.used_list[cell].push(j as u32);
        }
    }

    /// Add another part's sums.
    fn add(&mut self, o: &Acc, k: usize, d: usize) {
        let block = 2 * k * d;
        for (cell, list) in o.used_list.iter().enumerate() {
            for &j in list {
                let j = j as usize;
                self.mark(cell, j, k);
                for h in [0, k * d] {
                    let at = cell * block + h + j * d;
                    self.enc[at..at + d].iter_mut().zip(&o.enc[at..at + d]).for_each(|(a, b)| *a += b);
                }
            }
        }
    }
}

/// Per-thread buffers of the first pass.
struct Worker {
    acc: Acc,
    /// Descriptors per cell (zeros between images).
    count: Vec<usize>,
    s: Scratch,
    /// `(x - mu_k) / sigma_k` of the current descriptor.
    z: Vec<f64>,
}

impl Worker {
    fn new(width: usize, n_cells: usize, k: usize, d: usize) -> Self {
        Worker { acc: Acc::new(width, n_cells, k), count: vec![0; n_cells], s: Scratch::default(), z: vec![0f64; d] }
    }
}

/// Add descriptors `r0..r1` (their cells: `cells`, `levels` per
/// descriptor) to `acc`: for each posterior above the threshold,
/// `gamma z` to `u` and `gamma (z^2 - 1)` to `v`, `z = (x - mu) / sigma`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn accumulate(c: &Ctx<'_>, acc: &mut Acc, s: &mut Scratch, z: &mut [f64], r0: usize, r1: usize, cells: &[usize]) {
    let (d, k, levels) = (c.d, c.k, c.levels);
    let block = 2 * k * d;
    let thr = c.opts.posterior_threshold;
    let z = &mut z[..d];
    let mut b0 = r0;
    while b0 < r1 {
        let b1 = (b0 + CHUNK).min(r1);
        let rows = &c.values[b0 * d..b1 * d];
        posteriors_block(rows, c.pg, s);
        for (r, x) in rows.chunks_exact(d).enumerate() {
            let rc = &cells[(b0 + r - r0) * levels..(b0 + r - r0 + 1) * levels];
            let (cand, post) = s.row(r);
            for (&j, &p) in cand.iter().zip(post) {
                let j = j as usize;
                if p < thr || !c.keep[j] {
                    continue;
                }
                let mu = &c.pg.means[j * d..(j + 1) * d];
                let sp = &c.sqrt_prec[j * d..(j + 1) * d];
                for (((z, &xt), &m), &s) in z.iter_mut().zip(x).zip(mu).zip(sp) {
                    *z = (xt as f64 - m) * s;
                }
                for &cell in rc {
                    acc.mark(cell, j, k);
                    let base = cell * block;
                    let (u, v) = acc.enc[base..base + block].split_at_mut(k * d);
                    let u = &mut u[j * d..(j + 1) * d];
                    let v = &mut v[j * d..(j + 1) * d];
                    for ((u, v), &zt) in u.iter_mut().zip(v.iter_mut()).zip(&*z) {
                        *u += p * zt;
                        *v += p * (zt * zt - 1.0);
                    }
                }
            }
        }
        b0 = b1;
    }
}

/// Normalise the sums of `acc` (`count` descriptors per cell) into `row`
/// (all zeros on entry), and reset `acc` and `count`. Only the components
/// that received a posterior in a cell are scaled, normalised and written:
/// the others are zero blocks, and zeros change neither the sums nor the
/// norm.
#[inline(always)]
fn finish(c: &Ctx<'_>, acc: &mut Acc, count: &mut [usize], row: &mut [f32]) {
    let (d, k) = (c.d, c.k);
    let block = 2 * k * d;
    for (cell, oc) in row.chunks_mut(block).enumerate() {
        let n = count[cell] as f64;
        count[cell] = 0;
        let list = &mut acc.used_list[cell];
        if list.is_empty() {
            continue;
        }
        // Increasing components: the norm adds the non-zero values in the
        // order of the dense vector.
        list.sort_unstable();
        let ec = &mut acc.enc[cell * block..(cell + 1) * block];
        let (u, v) = ec.split_at_mut(k * d);
        for &j in list.iter() {
            let j = j as usize;
            let wj = c.weights[j];
            let (fu, fv) = (1.0 / (n * wj.sqrt()), 1.0 / (n * (2.0 * wj).sqrt()));
            for (half, f) in [(&mut *u, fu), (&mut *v, fv)] {
                let z = &mut half[j * d..(j + 1) * d];
                z.iter_mut().for_each(|z| *z *= f);
                if c.opts.square_root {
                    signed_sqrt(z);
                }
            }
        }
        let scale = c.cell_weights[cell];
        let norm = if c.opts.normalize {
            let mut ss = 0.0;
            for half in [&*u, &*v] {
                for &j in list.iter() {
                    let j = j as usize;
                    for z in &half[j * d..(j + 1) * d] {
                        ss += z * z;
                    }
                }
            }
            Some(ss.sqrt().max(1e-12))
        } else {
            None
        };
        let (ou, ov) = oc.split_at_mut(k * d);
        for (half, out) in [(&mut *u, ou), (&mut *v, ov)] {
            for &j in list.iter() {
                let j = j as usize;
                let (o, z) = (&mut out[j * d..(j + 1) * d], &mut half[j * d..(j + 1) * d]);
                match norm {
                    Some(nrm) => o.iter_mut().zip(z.iter_mut()).for_each(|(o, z)| {
                        *o = (*z / nrm * scale) as f32;
                        *z = 0.0;
                    }),
                    None => o.iter_mut().zip(z.iter_mut()).for_each(|(o, z)| {
                        *o = (*z * scale) as f32;
                        *z = 0.0;
                    }),
                }
            }
        }
        for &j in list.iter() {
            acc.used[cell * k + j as usize] = false;
        }
        list.clear();
    }
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
