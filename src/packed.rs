//! GEMM $X C^\top$ of row-major data with a small, fixed right-hand side,
//! on the register tiles of [`crate::decomposition::syrk`]: PCA's projection
//! ([`project`], built on the block kernel [`Panels::products`]). K-Means'
//! assignment keeps the `gemm` crate's kernel: at `d = 128` and `k` = 100-1000
//! these tiles made `predict` slower than it.
//!
//! $X$ is `n x d` row-major (read in place), $C$ is `k x d` row-major and
//! known in advance (components, cluster centers). The blocking is BLIS's
//! (Van Zee and van de Geijn, "BLIS: A Framework for Rapidly Instantiating
//! BLAS Functionality", ACM TOMS 2015):
//!
//! - **$C$, packed once** ([`Panels`]): $C^\top$ is cut into depth chunks of
//!   [`KC`] features and, within a chunk, into panels of `W` rows of $C$
//!   (`kc x W`, row after row, zero-padded past `k`): the vector side of a
//!   tile.
//! - **Rows, in place.** A block of at most [`MB`] rows of $X$ is the
//!   broadcast side, read straight from the input six rows at a time. With
//!   the panel loop outside the row loop, one panel (16 KiB) stays in L1
//!   while the block's rows (at most 72 KiB per depth chunk) stream from L2.
//!   Packing the rows into `kc x 6` micro-panels first, as BLIS does, was
//!   no faster on two threads (a few per cent slower for small `k`, where
//!   each micro-panel serves few panels).
//! - **Accumulation.** Each 6 x `W` tile sums its products in the input
//!   precision over one depth chunk and adds them to an `f64` accumulator
//!   (`rows x ld`, `ld = W ceil(k / W)`).
//!
//! Every output row is computed from its own row of $X$ in a fixed order,
//! so results do not depend on the number of threads.

use rayon::prelude::*;

use crate::decomposition::syrk::{aligned_zeros, SyrkElem, KC, MR, PANEL_PAD};

/// Rows of $X$ per block (a multiple of [`MR`]).
pub const MB: usize = 72;

/// $C$ (`k x d`) packed for the tiles: `chunks x np` panels of `kc x W`.
pub struct Panels<T> {
    buf: Vec<T>,
    off: usize,
    d: usize,
    np: usize,
    chunks: usize,
}

/// Values per panel, padding included.
const fn panel_stride(w: usize) -> usize {
    KC * w + PANEL_PAD
}

impl<T: SyrkElem> Panels<T> {
    /// Pack `c` (`k x d` row-major, converted by `conv`).
    ///
    /// # Panics
    /// When `d == 0` or `c.len()` is not a multiple of `d`.
    pub fn new<S: Copy>(c: &[S], d: usize, conv: impl Fn(S) -> T) -> Self {
        assert!(d > 0 && c.len() % d == 0);
        let k = c.len() / d;
        let w = T::W;
        let np = k.div_ceil(w);
        let chunks = d.div_ceil(KC);
        let sa = panel_stride(w);
        let la = chunks * np * sa;
        let (mut buf, off) = aligned_zeros::<T>(la);
        let a = &mut buf[off..off + la];
        for q in 0..chunks {
            let (k0, kc) = (q * KC, KC.min(d - q * KC));
            for p in 0..np {
                let panel = &mut a[(q * np + p) * sa..(q * np + p) * sa + kc * w];
                for (col, j) in (p * w..(p * w + w).min(k)).enumerate() {
                    for (kk, &v) in c[j * d + k0..j * d + k0 + kc].iter().enumerate() {
                        panel[kk * w + col] = conv(v);
                    }
                }
            }
        }
        Panels { buf, off, d, np, chunks }
    }

    /// Leading dimension of the accumulator: `k` rounded up to `W`.
    pub fn ld(&self) -> usize {
        self.np * T::W
    }

    /// `acc[r * ld + j] = x_r . c_j` for the rows of `xb` (at most [`MB`],
    /// `d` wide), `j < k` (columns `k..ld` are 0); the accumulator is
    /// returned (`rows x ld`, `f64`), in `acc`, which grows as needed.
    ///
    /// # Panics
    /// When `xb` has more than [`MB`] rows or its length is not a multiple of `d`.
    pub fn products<'s>(&self, xb: &[T], acc: &'s mut Vec<f64>) -> &'s mut [f64] {
        let (d, w, np, ld) = (self.d, T::W, self.np, self.ld());
        assert!(xb.len() % d == 0 && xb.len() <= MB * d);
        let rows = xb.len() / d;
        let nt = rows.div_ceil(MR);
        let sa = panel_stride(w);
        let a = &self.buf[self.off..self.off + self.chunks * np * sa];
        if acc.len() < MB * ld {
            acc.resize(MB * ld, 0.0);
        }
        let tiles = &mut acc[..nt * MR * ld];
        tiles.fill(0.0);
        let zeros = [T::ZERO; KC];
        // Six rows of the block from feature `k0` on (zeros past its end).
        let six = |t: usize, k0: usize, kc: usize| -> [&[T]; MR] {
            std::array::from_fn(|r| {
                let i = t * MR + r;
                if i < rows {
                    &xb[i * d + k0..i * d + k0 + kc]
                } else {
                    &zeros[..kc]
                }
            })
        };
        let tile = T::tile_rows_fn();
        for q in 0..self.chunks {
            let (k0, kc) = (q * KC, KC.min(d - q * KC));
            for p in 0..np {
                let panel = &a[(q * np + p) * sa..(q * np + p) * sa + kc * w];
                for t in 0..nt {
                    let src = six(t, k0, kc).map(|r| r.as_ptr());
                    let tile_out = &mut tiles[t * MR * ld + p * w..];
                    assert!(tile_out.len() >= (MR - 1) * ld + w);
                    // SAFETY: `panel` holds kc * W values and each row
                    // kc (slices taken by `six`); `tile_out` has rows 0..6
                    // (stride ld) of W columns (checked just above). The
                    // AVX2 kernels are only returned by `tile_rows_fn`
                    // when the features are detected.
                    unsafe { tile(kc, panel.as_ptr(), &src, tile_out.as_mut_ptr(), ld) };
                }
            }
        }
        &mut acc[..rows * ld]
    }
}

/// An uninitialised vector of `len` values for a large output, to be
/// written in full before use. Not zeroed: the allocator may hand back
/// memory a previous call freed (glibc serves blocks up to 32 MiB from its
/// heap once one such block was freed), which then costs neither page
/// faults nor a memset. On Linux, pages of a fresh mapping are marked for
/// transparent huge pages (`madvise(MADV_HUGEPAGE)`), so that writing them
/// takes one page fault per 2 MiB instead of one per 4 KiB: for a
/// projection onto a few dozen components the faults otherwise cost as much
/// as the arithmetic.
fn output_buffer<T: SyrkElem>(len: usize) -> Vec<std::mem::MaybeUninit<T>> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: MaybeUninit needs no initialisation; capacity is `len`.
    unsafe { v.set_len(len) };
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let bytes = std::mem::size_of_val(v.as_slice());
        if bytes >= 2 * HUGE {
            let start = v.as_ptr() as usize;
            let lo = start.div_ceil(HUGE) * HUGE;
            let hi = (start + bytes) / HUGE * HUGE;
            if hi > lo {
                // SAFETY: advice on whole pages inside the allocation; it
                // changes how they are backed, never their contents.
                unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE) };
            }
        }
    }
    v
}

/// $Y = (X C^\top - \text{offset}) / \text{scale}$, column-wise: `x` is
/// `n x d` row-major, `components` `k x d` row-major (`f64`, rounded to
/// `T` for the products), `offset` has `k` values, `scale` (when given) `k`
/// values. Returns `n x k` row-major in `T` (products in `T` within a depth
/// chunk of [`KC`] features, sums across chunks and the shift in `f64`) and
/// whether every value is finite (found while writing them).
///
/// # Panics
/// When `d == 0`, `x.len()` or `components.len()` is not a multiple of `d`,
/// or `offset` / `scale` do not have `k` values.
// `!(|y| < inf)` is meant: it is true for NaN as well as for infinities.
#[allow(clippy::neg_cmp_op_on_partial_ord)]
pub fn project<T: SyrkElem>(
    x: &[T],
    d: usize,
    components: &[f64],
    offset: &[f64],
    scale: Option<&[f64]>,
) -> (Vec<T>, bool) {
    assert!(d > 0 && x.len() % d == 0 && components.len() % d == 0);
    let (n, k) = (x.len() / d, components.len() / d);
    assert!(offset.len() == k && scale.map_or(true, |s| s.len() == k));
    if n == 0 || k == 0 {
        return (vec![T::ZERO; n * k], true);
    }
    let mut out = output_buffer::<T>(n * k);
    let panels = Panels::new(components, d, T::narrow);
    let non_finite = std::sync::atomic::AtomicBool::new(false);
    let ld = panels.ld();
    // Several blocks per task, so that the accumulator is allocated a few
    // times per call rather than once per block.
    let blocks_per_task = (n.div_ceil(MB) / (8 * rayon::current_num_threads())).max(1);
    let rows_per_task = blocks_per_task * MB;
    out.par_chunks_mut(rows_per_task * k).zip(x.par_chunks(rows_per_task * d)).for_each(|(o_task, x_task)| {
        let mut acc = Vec::new();
        // Lane-wise flags (no early exit, no float reduction), so that the
        // loops below vectorise.
        let mut bad = 0u32;
        for (o, xb) in o_task.chunks_mut(MB * k).zip(x_task.chunks(MB * d)) {
            let dots = panels.products(xb, &mut acc);
            for (orow, arow) in o.chunks_exact_mut(k).zip(dots.chunks_exact(ld)) {
                let arow = &arow[..k];
                match scale {
                    None => {
                        for ((v, &s), &off) in orow.iter_mut().zip(arow).zip(offset) {
                            let y = s - off;
                            bad |= u32::from(!(y.abs() < f64::INFINITY));
                            v.write(T::narrow(y));
                        }
                    }
                    Some(sc) => {
                        for (((v, &s), &off), &c) in orow.iter_mut().zip(arow).zip(offset).zip(sc) {
                            let y = (s - off) / c;
                            bad |= u32::from(!(y.abs() < f64::INFINITY));
                            v.write(T::narrow(y));
                        }
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
    }

    #[test]
    fn thread_count_does_not_change_result() {
        let (n, d, k) = (500, 300, 21);
        let x: Vec<f32> = data(n * d, 4).into_iter().map(|v| v as f32).collect();
        let c = data(k * d, 5);
        let off = vec![0.25; k];
        let run = |t| {
            rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap().install(|| project(&x, d, &c, &off, None).0)
        };
        assert_eq!(run(1), run(3));
    }
}
