//! Row projection $Y = X C^\top$ (PCA's `transform`) with the register
//! tiles of [`super::syrk`].
//!
//! $X$ is `n x d` row-major (the input, read in place), $C$ is `k x d`
//! row-major (the components, `f64`), and $Y$ is `n x k`. This is a plain
//! GEMM blocked as in BLIS (Van Zee and van de Geijn, "BLIS: A Framework for
//! Rapidly Instantiating BLAS Functionality", ACM TOMS 2015):
//!
//! - **Components, packed once.** $C^\top$ is cut into depth chunks of
//!   [`KC`] features and, within a chunk, into panels of `W` components
//!   (`kc x W`, row after row, zero-padded past `k`): the vector side of a
//!   tile.
//! - **Rows, packed per task.** A task takes [`MB`] rows of $X$ and, per
//!   depth chunk, packs them into micro-panels of 6 rows (`kc x 6`): the
//!   broadcast side. With the panel loop outside the micro-panel loop, one
//!   component panel (16 KiB) stays in L1 while the task's micro-panels
//!   (at most 144 KiB) stream from L2.
//! - **Accumulation.** Each 6 x `W` tile sums its products in the input
//!   precision over one depth chunk and adds them to an `f64` accumulator
//!   (`MB x k`), which is then shifted, scaled and rounded to `T`.
//!
//! Every output row is computed by one task in a fixed order, so the result
//! does not depend on the number of threads.

use rayon::prelude::*;

use super::syrk::{aligned_zeros, SyrkElem, KC, MR, PANEL_PAD};

/// Rows of $X$ per task (a multiple of [`MR`]).
const MB: usize = 72;

/// $Y = (X C^\top - \text{offset}) / \text{scale}$, column-wise: `x` is
/// `n x d` row-major, `components` `k x d` row-major (`f64`, rounded to
/// `T` for the products), `offset` has `k` values, `scale` (when given) `k`
/// values. Returns `n x k` row-major in `T`; products in `T` within a depth
/// chunk of [`KC`] features, sums across chunks and the shift in `f64`.
///
/// # Panics
/// When `d == 0`, `x.len()` or `components.len()` is not a multiple of `d`,
/// or `offset` / `scale` do not have `k` values.
pub fn project<T: SyrkElem>(x: &[T], d: usize, components: &[f64], offset: &[f64], scale: Option<&[f64]>) -> Vec<T> {
    assert!(d > 0 && x.len() % d == 0 && components.len() % d == 0);
    let (n, k) = (x.len() / d, components.len() / d);
    assert!(offset.len() == k && scale.map_or(true, |s| s.len() == k));
    let mut out = vec![T::ZERO; n * k];
    if n == 0 || k == 0 {
        return out;
    }
    let w = T::W;
    let np = k.div_ceil(w);
    let ld = np * w;
    let chunks = d.div_ceil(KC);
    let sa = KC * w + PANEL_PAD;
    let sb = KC * MR + PANEL_PAD;
    let la = chunks * np * sa;
    let (mut abuf, aoff) = aligned_zeros::<T>(la);
    let a = &mut abuf[aoff..aoff + la];
    for q in 0..chunks {
        let (k0, kc) = (q * KC, KC.min(d - q * KC));
        for p in 0..np {
            let panel = &mut a[(q * np + p) * sa..(q * np + p) * sa + kc * w];
            for (c, j) in (p * w..(p * w + w).min(k)).enumerate() {
                for (kk, &v) in components[j * d + k0..j * d + k0 + kc].iter().enumerate() {
                    panel[kk * w + c] = T::narrow(v);
                }
            }
        }
    }
    let a = &*a;
    let tile = T::tile_fn();
    let lb = (MB / MR) * sb;
    // Several row blocks per task, so that the scratch buffers are allocated
    // a few times per call rather than once per block.
    let blocks_per_task = (n.div_ceil(MB) / (8 * rayon::current_num_threads())).max(1);
    let rows_per_task = blocks_per_task * MB;
    let zeros = [T::ZERO; KC];
    out.par_chunks_mut(rows_per_task * k).zip(x.par_chunks(rows_per_task * d)).for_each(|(o_task, x_task)| {
        let (mut bbuf, boff) = aligned_zeros::<T>(lb);
        let b = &mut bbuf[boff..boff + lb];
        let mut acc = vec![0.0f64; MB * ld];
        for (o, xb) in o_task.chunks_mut(MB * k).zip(x_task.chunks(MB * d)) {
            let rows = xb.len() / d;
            let nt = rows.div_ceil(MR);
            acc.fill(0.0);
            for q in 0..chunks {
                let (k0, kc) = (q * KC, KC.min(d - q * KC));
                for t in 0..nt {
                    // Six rows (zeros past the block's end), column by column.
                    let src: [&[T]; MR] = std::array::from_fn(|r| {
                        let i = t * MR + r;
                        if i < rows { &xb[i * d + k0..i * d + k0 + kc] } else { &zeros[..kc] }
                    });
                    for (kk, dst) in b[t * sb..t * sb + kc * MR].chunks_exact_mut(MR).enumerate() {
                        for (v, row) in dst.iter_mut().zip(&src) {
                            *v = row[kk];
                        }
                    }
                }
                for p in 0..np {
                    let panel = &a[(q * np + p) * sa..(q * np + p) * sa + kc * w];
                    for t in 0..nt {
                        let micro = &b[t * sb..t * sb + kc * MR];
                        let tile_out = &mut acc[t * MR * ld + p * w..];
                        assert!(tile_out.len() >= (MR - 1) * ld + w);
                        // SAFETY: `panel` holds kc * W values and `micro`
                        // kc * 6; `tile_out` has rows 0..6 (stride ld) of W
                        // columns (checked just above). The AVX2 kernels are
                        // only returned by `tile_fn` when the features are
                        // detected.
                        unsafe { tile(kc, panel.as_ptr(), micro.as_ptr(), tile_out.as_mut_ptr(), ld) };
                    }
                }
            }
            for (orow, arow) in o.chunks_exact_mut(k).zip(acc.chunks_exact(ld)) {
                for (j, (v, &s)) in orow.iter_mut().zip(arow).enumerate() {
                    let shifted = s - offset[j];
                    *v = T::narrow(match scale {
                        Some(sc) => shifted / sc[j],
                        None => shifted,
                    });
                }
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f64], d: usize, c: &[f64], offset: &[f64], scale: Option<&[f64]>) -> Vec<f64> {
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

    fn data(len: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f64 / (1u64 << 31) as f64) - 0.5
            })
            .collect()
    }

    #[test]
    fn matches_naive_over_edge_sizes() {
        // n around MB and MR, d across one and several depth chunks, k around W.
        for &(n, d, k) in &[(1, 1, 1), (7, 3, 2), (97, 257, 9), (200, 600, 17), (96, 256, 8), (13, 5, 40)] {
            let x = data(n * d, 1);
            let c = data(k * d, 2);
            let off = data(k, 3);
            let scale: Vec<f64> = (0..k).map(|j| 1.0 + j as f64).collect();
            for sc in [None, Some(scale.as_slice())] {
                let want = naive(&x, d, &c, &off, sc);
                let got = project(&x, d, &c, &off, sc);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-12 * (1.0 + w.abs()) * d as f64, "{n}x{d}, k={k}: {g} vs {w}");
                }
                let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
                let got32 = project(&x32, d, &c, &off, sc);
                for (g, w) in got32.iter().zip(&want) {
                    assert!((*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()) * (d as f64).sqrt(), "f32 {n}x{d}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn thread_count_does_not_change_result() {
        let (n, d, k) = (500, 300, 21);
        let x: Vec<f32> = data(n * d, 4).into_iter().map(|v| v as f32).collect();
        let c = data(k * d, 5);
        let off = vec![0.25; k];
        let run = |t| {
            rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap().install(|| project(&x, d, &c, &off, None))
        };
        assert_eq!(run(1), run(3));
    }
}
