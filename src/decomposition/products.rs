//! PCA's two matrix products, on faer's matmul: the scatter matrix of the
//! `covariance_eigh` solver and the projection of `transform`.
//!
//! - **Scatter** ([`centered_sums_scatter`]): for row-major $X$ (`n x d`) and
//!   a centre $c$, the column sums $\sum_i (x_i - c)$ and the lower triangle
//!   of $A = \sum_i (x_i - c)(x_i - c)^\top$, both in `f64`. Rows are taken
//!   [`KC`] at a time, centred into a buffer in the input precision, and
//!   the block's $X_c^\top X_c$ (lower triangle, faer's triangular matmul) is
//!   added to an `f64` accumulator: products within a block are in the
//!   input precision, sums across blocks in `f64`, so a `f32` scatter of
//!   400k rows loses no more than one of 256 rows.
//! - **Projection** ([`project`]): $Y = (X C^\top - o) / s$ column-wise,
//!   the product in the input precision by faer for blocks of [`ROWS`]
//!   rows, the shift $o$ and scale $s$ in `f64`.
//!
//! # Determinism
//!
//! The scatter splits the row blocks into a fixed number of groups (a power
//! of two up to 8, chosen from `n` and `d` only), each with its own
//! accumulator, summed in a fixed order; each block's product runs on one
//! thread, or, with a single group (very wide data), with a fixed parallel
//! degree (faer splits work by the degree it is given, not by the threads
//! that run it). Every projected row comes from its own row of $X$ by one
//! single-threaded product. Neither result depends on the number of threads.

use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::pca::Sample;

/// Rows per block of the scatter: products within a block are summed in
/// the input precision.
pub const KC: usize = 256;
/// Rows per block of the projection.
pub const ROWS: usize = 256;
/// Upper bound on the memory of the per-group scatter accumulators.
const ACC_BUDGET: usize = 32 << 20;

/// Number of row groups for `n x d` data: a power of two up to 8, at most
/// `n / (2 KC)`, with accumulators within [`ACC_BUDGET`].
fn n_groups(n: usize, d: usize) -> usize {
    let acc_bytes = 8 * d * d;
    let blocks = n.div_ceil(KC);
    let mut g = 8;
    while g > 1 && (g * acc_bytes > ACC_BUDGET || blocks < 2 * g) {
        g /= 2;
    }
    g
}

/// Columns of the scatter per panel: a block's products for one panel
/// (`d x PANEL` values of `T`) stay in L2 until they are added to the `f64`
/// accumulator.
const PANEL: usize = 64;

/// Add the scatter of `rows` (row-major, `d` wide) about `center` to `acc`
/// (`d x d` column-major, lower triangle) and their centred column sums to
/// `sums`, block by block; `xc` and `tmp` are scratch.
///
/// Each block's lower triangle is computed panel by panel (columns
/// `j0..j0 + PANEL`, rows `j0..d`: a triangle on the diagonal and the
/// rectangle below it), and each panel is added to `acc` right away, while
/// it is in cache.
#[allow(clippy::too_many_arguments)]
fn accumulate<T: Sample>(
    rows: &[T],
    d: usize,
    center: &[T],
    par: Par,
    acc: &mut [f64],
    sums: &mut [f64],
    xc: &mut Vec<T>,
    tmp: &mut Vec<T>,
) {
    let zero = T::from_f64(0.0);
    tmp.resize(d * PANEL.min(d), zero);
    for block in rows.chunks(KC * d) {
        let m = block.len() / d;
        xc.clear();
        for row in block.chunks_exact(d) {
            xc.extend(row.iter().zip(center).map(|(&v, &c)| v - c));
        }
        for row in xc.chunks_exact(d) {
            sums.iter_mut().zip(row).for_each(|(s, v)| *s += v.to_f64());
        }
        let a = MatRef::from_row_major_slice(&xc[..], m, d);
        for j0 in (0..d).step_by(PANEL) {
            let w = PANEL.min(d - j0);
            let h = d - j0;
            // tmp: h x w column-major, rows j0..d of columns j0..j0 + w.
            let t = MatMut::from_column_major_slice_mut(&mut tmp[..h * w], h, w);
            let (top, bottom) = t.split_at_row_mut(w);
            let lhs = a.subcols(j0, h).transpose();
            let rhs = a.subcols(j0, w);
            triangular::matmul(
                top,
                BlockStructure::TriangularLower,
                Accum::Replace,
                lhs.subrows(0, w),
                BlockStructure::Rectangular,
                rhs,
                BlockStructure::Rectangular,
                T::from_f64(1.0),
                par,
            );
            faer::linalg::matmul::matmul(bottom, Accum::Replace, lhs.subrows(w, h - w), rhs, T::from_f64(1.0), par);
            for jj in 0..w {
                let j = j0 + jj;
                let acc_col = &mut acc[j * d + j..(j + 1) * d];
                let tmp_col = &tmp[jj * h + jj..(jj + 1) * h];
                acc_col.iter_mut().zip(tmp_col).for_each(|(a, t)| *a += t.to_f64());
            }
        }
    }
}

/// Column sums $\sum_i (x_i - c)$ (`d`) and the scatter matrix
/// $\sum_i (x_i - c)(x_i - c)^\top$ (`d x d`, row-major, symmetric) of
/// row-major `x` about `center`, accumulated in `f64` (centring and
/// in-block products in `T`). Deterministic for any number of threads.
///
/// # Panics
/// When `d == 0`, `x.len()` is not a multiple of `d` or `center.len() != d`.
pub fn centered_sums_scatter<T: Sample>(x: &[T], d: usize, center: &[T]) -> (Vec<f64>, Vec<f64>) {
    assert!(d > 0 && x.len() % d == 0 && center.len() == d);
    let n = x.len() / d;
    let g = n_groups(n, d);
    let blocks = n.div_ceil(KC);
    let par = if g == 1 { super::pca::det_par(d) } else { Par::Seq };
    let parts: Vec<(Vec<f64>, Vec<f64>)> = (0..g)
        .into_par_iter()
        .map(|gi| {
            let (b0, b1) = (gi * blocks / g, (gi + 1) * blocks / g);
            let rows = &x[(b0 * KC).min(n) * d..(b1 * KC).min(n) * d];
            let (mut acc, mut sums) = (vec![0.0f64; d * d], vec![0.0f64; d]);
            accumulate(rows, d, center, par, &mut acc, &mut sums, &mut Vec::new(), &mut Vec::new());
            (acc, sums)
        })
        .collect();
    let mut sums = vec![0.0f64; d];
    for (_, s) in &parts {
        sums.iter_mut().zip(s).for_each(|(a, b)| *a += b);
    }
    // Lower triangle (column-major) summed over groups in order, then
    // mirrored into a full row-major matrix.
    let mut out = vec![0.0f64; d * d];
    out.par_chunks_mut(d).enumerate().for_each(|(i, row)| {
        for (j, v) in row.iter_mut().enumerate().take(i + 1) {
            *v = parts.iter().fold(0.0, |s, (acc, _)| s + acc[j * d + i]);
        }
    });
    for i in 0..d {
        for j in i + 1..d {
            out[i * d + j] = out[j * d + i];
        }
    }
    (sums, out)
}

/// $Y = (X C^\top - \text{offset}) / \text{scale}$, column-wise: `x` is
/// `n x d` row-major, `components` `k x d` row-major (`f64`, rounded to
/// `T` for the products), `offset` has `k` values, `scale` (when given) `k`
/// values. Returns `n x k` row-major in `T` (products in `T` by faer, the
/// shift and scale in `f64`) and whether every value is finite (found
/// while writing them).
///
/// # Panics
/// When `d == 0`, `x.len()` or `components.len()` is not a multiple of `d`,
/// or `offset` / `scale` do not have `k` values.
// `!(|y| < inf)` is meant: it is true for NaN as well as for infinities.
#[allow(clippy::neg_cmp_op_on_partial_ord)]
pub fn project<T: Sample>(x: &[T], d: usize, components: &[f64], offset: &[f64], scale: Option<&[f64]>) -> (Vec<T>, bool) {
    assert!(d > 0 && x.len() % d == 0 && components.len() % d == 0);
    let (n, k) = (x.len() / d, components.len() / d);
    assert!(offset.len() == k && scale.map_or(true, |s| s.len() == k));
    if n == 0 || k == 0 {
        return (vec![T::from_f64(0.0); n * k], true);
    }
    let comps: Vec<T> = components.iter().map(|&c| T::from_f64(c)).collect();
    let c = MatRef::from_row_major_slice(&comps, k, d);
    let mut out = crate::encode::output_buffer::<T>(n * k);
    let non_finite = std::sync::atomic::AtomicBool::new(false);
    out.par_chunks_mut(ROWS * k).zip(x.par_chunks(ROWS * d)).for_each_init(Vec::new, |prod: &mut Vec<T>, (o, xb)| {
        let m = xb.len() / d;
        prod.resize(m * k, T::from_f64(0.0));
        faer::linalg::matmul::matmul(
            MatMut::from_row_major_slice_mut(&mut prod[..], m, k),
            Accum::Replace,
            MatRef::from_row_major_slice(xb, m, d),
            c.transpose(),
            T::from_f64(1.0),
            Par::Seq,
        );
        // Lane-wise flags (no early exit, no float reduction), so that the
        // loops vectorise.
        let mut bad = 0u32;
        for (orow, prow) in o.chunks_exact_mut(k).zip(prod.chunks_exact(k)) {
            match scale {
                None => {
                    for ((v, &p), &off) in orow.iter_mut().zip(prow).zip(offset) {
                        let y = p.to_f64() - off;
                        bad |= u32::from(!(y.abs() < f64::INFINITY));
                        v.write(T::from_f64(y));
                    }
                }
                Some(sc) => {
                    for (((v, &p), &off), &s) in orow.iter_mut().zip(prow).zip(offset).zip(sc) {
                        let y = (p.to_f64() - off) / s;
                        bad |= u32::from(!(y.abs() < f64::INFINITY));
                        v.write(T::from_f64(y));
                    }
                }
            }
        }
        if bad != 0 {
            non_finite.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    // Every value was written: the chunks above cover all n rows and each
    // row's k columns.
    let mut out = std::mem::ManuallyDrop::new(out);
    let (ptr, len, cap) = (out.as_mut_ptr(), out.len(), out.capacity());
    // SAFETY: MaybeUninit<T> has T's layout, and all `len` values are initialised.
    let out = unsafe { Vec::from_raw_parts(ptr.cast::<T>(), len, cap) };
    (out, !non_finite.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f64 / (1u64 << 31) as f64) - 0.5
            })
            .collect()
    }

    fn naive_scatter(x: &[f64], d: usize, c: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let mut s = vec![0.0; d];
        let mut a = vec![0.0; d * d];
        for row in x.chunks_exact(d) {
            for i in 0..d {
                let ei = row[i] - c[i];
                s[i] += ei;
                for j in 0..d {
                    a[i * d + j] += ei * (row[j] - c[j]);
                }
            }
        }
        (s, a)
    }

    #[test]
    fn scatter_matches_naive_over_edge_sizes() {
        // n around KC and the group split, d small to wide (one group).
        for &(n, d) in &[(1usize, 1usize), (5, 3), (255, 7), (257, 40), (3000, 13), (2100, 700)] {
            let x = data(n * d, 1);
            let c: Vec<f64> = data(d, 2).iter().map(|v| v * 0.1).collect();
            let (s_want, a_want) = naive_scatter(&x, d, &c);
            let (s, a) = centered_sums_scatter(&x, d, &c);
            let scale = n as f64;
            for (g, w) in s.iter().zip(&s_want) {
                assert!((g - w).abs() <= 1e-12 * scale, "{n}x{d}: sum {g} vs {w}");
            }
            for (g, w) in a.iter().zip(&a_want) {
                assert!((g - w).abs() <= 1e-12 * scale, "{n}x{d}: {g} vs {w}");
            }
            // f32: products in f32 within a block, sums in f64.
            let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            let c32: Vec<f32> = c.iter().map(|&v| v as f32).collect();
            let (_, a32) = centered_sums_scatter(&x32, d, &c32);
            for (g, w) in a32.iter().zip(&a_want) {
                assert!((g - w).abs() <= 1e-5 * scale, "f32 {n}x{d}: {g} vs {w}");
            }
        }
    }

    fn naive_project(x: &[f64], d: usize, c: &[f64], offset: &[f64], scale: Option<&[f64]>) -> Vec<f64> {
        let k = c.len() / d;
        x.chunks(d)
            .flat_map(|row| {
                (0..k).map(move |j| {
                    let dot: f64 = row.iter().zip(&c[j * d..(j + 1) * d]).map(|(a, b)| a * b).sum();
                    (dot - offset[j]) / scale.map_or(1.0, |s| s[j])
                })
            })
            .collect()
    }

    #[test]
    fn project_matches_naive_over_edge_sizes() {
        // n around ROWS, d from 1 to a few hundred, k from 1 to 40.
        for &(n, d, k) in &[(1, 1, 1), (7, 3, 2), (97, 257, 9), (300, 600, 17), (256, 256, 8), (13, 5, 40)] {
            let x = data(n * d, 1);
            let c = data(k * d, 2);
            let off = data(k, 3);
            let scale: Vec<f64> = (0..k).map(|j| 1.0 + j as f64).collect();
            for sc in [None, Some(scale.as_slice())] {
                let want = naive_project(&x, d, &c, &off, sc);
                let (got, fin) = project(&x, d, &c, &off, sc);
                assert!(fin);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-12 * (1.0 + w.abs()) * d as f64, "{n}x{d}, k={k}: {g} vs {w}");
                }
                let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
                let (got32, _) = project(&x32, d, &c, &off, sc);
                for (g, w) in got32.iter().zip(&want) {
                    assert!((*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()) * (d as f64).sqrt(), "f32 {n}x{d}: {g} vs {w}");
                }
            }
        }
        let mut x = data(40 * 6, 4);
        x[17 * 6 + 2] = f64::NAN;
        assert!(!project(&x, 6, &data(12, 5), &[0.0, 0.0], None).1);
    }

    #[test]
    fn thread_count_does_not_change_results() {
        let run = |t: usize, f: &(dyn Fn() -> (Vec<f64>, Vec<f64>, Vec<f32>) + Sync)| {
            rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap().install(f)
        };
        // Several groups (n x 30) and a single one with a parallel product (n x 1200).
        for &(n, d) in &[(20_000usize, 30usize), (600, 1200)] {
            let x: Vec<f32> = data(n * d, 6).into_iter().map(|v| v as f32).collect();
            let c = vec![0.125f32; d];
            let comps = data(21 * d, 7);
            let f = || {
                let (s, a) = centered_sums_scatter(&x, d, &c);
                (s, a, project(&x, d, &comps, &[0.25; 21], None).0)
            };
            assert_eq!(run(1, &f), run(3, &f), "{n}x{d}");
        }
    }
}
