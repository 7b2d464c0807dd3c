//! Blocked symmetric rank-k update: the scatter matrix of PCA's
//! `covariance_eigh` solver.
//!
//! For row-major data $X$ (`n x d`) and a centre $c$ this accumulates
//! $A = \sum_i (x_i - c)(x_i - c)^\top$ and the column sums
//! $\sum_i (x_i - c)$, both in `f64`, in one pass over $X$.
//!
//! # Blocking
//!
//! - **Row blocks.** Rows are taken [`KC`] at a time. Each block is centred
//!   and *packed* into column panels of [`SyrkElem::W`] columns (8 for `f64`,
//!   16 for `f32`: two AVX2 registers): panel `p` holds columns
//!   `p W .. p W + W` of the block, row after row, so one row of a panel is
//!   one contiguous load. The last panels are zero-padded, which lets every
//!   register tile run at full size. Packing reads each input row once,
//!   front to back, and also adds the centred values to the column sums.
//! - **Register tiles.** The update of one block is a set of 6 x W tiles of
//!   $A$: for columns `b0 .. b0 + 6` (broadcast side, read from whichever
//!   panels hold them) and panel `p` (vector side), the kernel keeps the 6 x W
//!   products in 12 registers over the block's rows, then adds them to the
//!   `f64` accumulator. Only tiles touching the upper triangle
//!   (column of `p` >= `b0`) are computed; the lower triangle is mirrored at
//!   the end. Products within a block are in the input precision (`f32`
//!   blocks of at most [`KC`] rows), sums across blocks in `f64`.
//! - **Cache blocking.** Broadcast-side columns are swept [`MC`] at a time:
//!   their part of the packed block (`MC x KC` values) stays in L2 while
//!   each vector-side panel (`KC x W`, 16 KiB) is streamed once through L1
//!   and used by up to `MC / 6` tiles. With `KC = 256` the accumulator is
//!   read and written once per 256 rows, so even a `d = 1000` accumulator
//!   (8 MB, in L3) costs little bandwidth.
//! - **Threads.** Row blocks are split into a fixed number of groups (a
//!   power of two up to 8, chosen from `n` and `d` only), each with its own
//!   accumulator; groups run in parallel and are summed in a fixed order.
//!   With a single group (very wide data), the tiles of each block are
//!   shared out by rows of the accumulator, which are disjoint. The result
//!   therefore does not depend on the number of threads.
//!
//! The AVX2 + FMA kernels are chosen at run time (`is_x86_feature_detected!`);
//! other machines use a portable kernel with the same blocking.

use rayon::prelude::*;


/// Rows per packed block (the inner dimension of one kernel call).
pub const KC: usize = 256;
/// Broadcast-side height of a register tile.
pub(crate) const MR: usize = 6;
/// Broadcast-side columns per sweep (a multiple of [`MR`]).
const MC: usize = 96;
/// Upper bound on the memory of the per-group accumulators.
const ACC_BUDGET: usize = 32 << 20;

/// One register tile: adds $\sum_{k < kc} b[k][r]\, a[k][c]$ to
/// `acc[r * ld + c]` for `r < 6`, `c < W`, where `a` points at a packed
/// panel (`kc x W`, row stride `W`) and `b` at a broadcast-side
/// micro-panel (`kc x 6`, row stride 6).
pub(crate) type TileFn<T> = unsafe fn(kc: usize, a: *const T, b: *const T, acc: *mut f64, ld: usize);

/// [`TileFn`] with the broadcast side read in place: `rows[r]` points at
/// `kc` values of row `r` of the left operand (no micro-panel).
pub(crate) type TileRowsFn<T> = unsafe fn(kc: usize, a: *const T, rows: &[*const T; MR], acc: *mut f64, ld: usize);

/// Element types with a packed layout and a register-tile kernel.
pub trait SyrkElem: Copy + Send + Sync + 'static {
    /// Columns per packed panel (vector side of a tile).
    const W: usize;
    /// The fastest kernel for this machine.
    fn tile_fn() -> TileFn<Self>;
    /// The fastest in-place-rows kernel for this machine.
    fn tile_rows_fn() -> TileRowsFn<Self>;
    /// `self - c` in the element precision.
    fn sub(self, c: Self) -> Self;
    /// Widen to `f64`.
    fn widen(self) -> f64;
    /// Round from `f64`.
    fn narrow(v: f64) -> Self;
    /// Zero.
    const ZERO: Self;
    /// One.
    const ONE: Self;
}

/// Where a tile reads its broadcast side: value `r` (`< 6`) of step `k`.
pub(crate) trait Bcast<T>: Copy {
    /// # Safety
    /// `k < kc` and `r < 6` for the `kc` the caller of the kernel vouches for.
    unsafe fn at(self, k: usize, r: usize) -> *const T;
}

/// A packed micro-panel (`kc x 6`, row after row).
#[derive(Clone, Copy)]
pub(crate) struct Micro<T>(pub *const T);

impl<T: Copy> Bcast<T> for Micro<T> {
    #[inline(always)]
    unsafe fn at(self, k: usize, r: usize) -> *const T {
        // SAFETY: inside the `kc x 6` micro-panel by the caller's contract.
        unsafe { self.0.add(k * MR + r) }
    }
}

/// Six rows read in place (`kc` values each).
#[derive(Clone, Copy)]
pub(crate) struct Rows<'a, T>(pub &'a [*const T; MR]);

impl<T: Copy> Bcast<T> for Rows<'_, T> {
    #[inline(always)]
    unsafe fn at(self, k: usize, r: usize) -> *const T {
        // SAFETY: inside row r's `kc` values by the caller's contract.
        unsafe { self.0[r].add(k) }
    }
}

/// Portable tile (any `T`, plain multiply-add in `T`).
///
/// # Safety
/// `a` valid for `kc * W` reads, `b` for every `(k, r)` with `k < kc`,
/// `r < 6`, and `acc` for `r * ld + c`, `r < 6`, `c < W`.
unsafe fn tile_portable_with<T, B>(kc: usize, a: *const T, b: B, acc: *mut f64, ld: usize)
where
    T: SyrkElem + std::ops::Mul<Output = T> + std::ops::Add<Output = T>,
    B: Bcast<T>,
{
    let w = T::W;
    let mut c = [[T::ZERO; 16]; MR];
    for k in 0..kc {
        // SAFETY: in bounds by the caller's contract (k < kc, cc < W, r < 6).
        let ak = unsafe { std::slice::from_raw_parts(a.add(k * w), w) };
        for (r, cr) in c.iter_mut().enumerate() {
            // SAFETY: as above.
            let br = unsafe { *b.at(k, r) };
            for cc in 0..w {
                cr[cc] = cr[cc] + br * ak[cc];
            }
        }
    }
    for (r, cr) in c.iter().enumerate() {
        // SAFETY: row r < 6 of the tile, W columns, by the caller's contract.
        let row = unsafe { std::slice::from_raw_parts_mut(acc.add(r * ld), w) };
        for cc in 0..w {
            row[cc] += cr[cc].widen();
        }
    }
}

/// Portable [`TileFn`].
///
/// # Safety
/// As [`TileFn`].
unsafe fn tile_portable<T: SyrkElem + std::ops::Mul<Output = T> + std::ops::Add<Output = T>>(
    kc: usize,
    a: *const T,
    b: *const T,
    acc: *mut f64,
    ld: usize,
) {
    // SAFETY: the caller's contract is the generic kernel's.
    unsafe { tile_portable_with(kc, a, Micro(b), acc, ld) }
}

/// Portable [`TileRowsFn`].
///
/// # Safety
/// As [`TileRowsFn`].
unsafe fn tile_rows_portable<T: SyrkElem + std::ops::Mul<Output = T> + std::ops::Add<Output = T>>(
    kc: usize,
    a: *const T,
    rows: &[*const T; MR],
    acc: *mut f64,
    ld: usize,
) {
    // SAFETY: the caller's contract is the generic kernel's.
    unsafe { tile_portable_with(kc, a, Rows(rows), acc, ld) }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Bcast, Micro, Rows, MR};
    use std::arch::x86_64::*;

    /// Ask for the accumulator rows of a tile (6 x `w` `f64`) now: they are
    /// needed only after the tile's `kc` rows, and for wide data they come
    /// from L3 or memory at addresses the hardware prefetcher cannot guess.
    #[inline(always)]
    fn prefetch_tile(acc: *mut f64, ld: usize, w: usize) {
        for r in 0..MR {
            let row = acc.wrapping_add(r * ld);
            // SAFETY: prefetches are hints and never fault, whatever the address.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(row as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(w - 1) as *const i8);
            }
        }
    }

    /// 6 x 8 `f64` tile: 12 accumulators, per step 2 loads + 6 broadcasts + 12 FMAs.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; `a` valid for `kc * 8` reads, `b` for
    /// every `(k, r)` with `k < kc`, `r < 6`, `acc` for `r * ld + c`, `r < 6`,
    /// `c < 8`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tile_f64_with<B: Bcast<f64>>(kc: usize, a: *const f64, b: B, acc: *mut f64, ld: usize) {
        // SAFETY (whole body): every load is at `a + 8k + {0, 4}` or
        // `b.at(k, r)` with k < kc, r < 6, and every store at `acc + r ld + {0, 4}`
        // (4 lanes each), all inside the regions the caller vouches for.
        unsafe {
            prefetch_tile(acc, ld, 8);
            let mut c = [[_mm256_setzero_pd(); 2]; MR];
            for k in 0..kc {
                let ak = a.add(k * 8);
                let a0 = _mm256_loadu_pd(ak);
                let a1 = _mm256_loadu_pd(ak.add(4));
                for (r, cr) in c.iter_mut().enumerate() {
                    let br = _mm256_broadcast_sd(&*b.at(k, r));
                    cr[0] = _mm256_fmadd_pd(br, a0, cr[0]);
                    cr[1] = _mm256_fmadd_pd(br, a1, cr[1]);
                }
            }
            for (r, cr) in c.iter().enumerate() {
                let row = acc.add(r * ld);
                _mm256_storeu_pd(row, _mm256_add_pd(_mm256_loadu_pd(row), cr[0]));
                _mm256_storeu_pd(row.add(4), _mm256_add_pd(_mm256_loadu_pd(row.add(4)), cr[1]));
            }
        }
    }

    /// 6 x 16 `f32` tile: products summed in `f32` over the block, then
    /// widened and added to the `f64` accumulator.
    ///
    /// # Safety
    /// As [`tile_f64_with`] with 16 columns.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tile_f32_with<B: Bcast<f32>>(kc: usize, a: *const f32, b: B, acc: *mut f64, ld: usize) {
        // SAFETY (whole body): loads at `a + 16k + {0, 8}` and `b.at(k, r)`
        // with k < kc, r < 6; stores at `acc + r ld + {0, 4, 8, 12}` (4 lanes
        // each); all inside the caller's regions.
        unsafe {
            prefetch_tile(acc, ld, 16);
            let mut c = [[_mm256_setzero_ps(); 2]; MR];
            for k in 0..kc {
                let ak = a.add(k * 16);
                let a0 = _mm256_loadu_ps(ak);
                let a1 = _mm256_loadu_ps(ak.add(8));
                for (r, cr) in c.iter_mut().enumerate() {
                    let br = _mm256_broadcast_ss(&*b.at(k, r));
                    cr[0] = _mm256_fmadd_ps(br, a0, cr[0]);
                    cr[1] = _mm256_fmadd_ps(br, a1, cr[1]);
                }
            }
            for (r, cr) in c.iter().enumerate() {
                let row = acc.add(r * ld);
                for (h, v) in cr.iter().enumerate() {
                    let lo = _mm256_cvtps_pd(_mm256_castps256_ps128(*v));
                    let hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(*v));
                    let p = row.add(8 * h);
                    _mm256_storeu_pd(p, _mm256_add_pd(_mm256_loadu_pd(p), lo));
                    _mm256_storeu_pd(p.add(4), _mm256_add_pd(_mm256_loadu_pd(p.add(4)), hi));
                }
            }
        }
    }

    /// [`super::TileFn`] for `f64` (`W = 8`).
    ///
    /// # Safety
    /// AVX2 and FMA must be available, and the pointers valid as for [`super::TileFn`].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile_f64(kc: usize, a: *const f64, b: *const f64, acc: *mut f64, ld: usize) {
        // SAFETY: the same contract.
        unsafe { tile_f64_with(kc, a, Micro(b), acc, ld) }
    }

    /// [`super::TileFn`] for `f32` (`W = 16`).
    ///
    /// # Safety
    /// As [`tile_f64`].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile_f32(kc: usize, a: *const f32, b: *const f32, acc: *mut f64, ld: usize) {
        // SAFETY: the same contract.
        unsafe { tile_f32_with(kc, a, Micro(b), acc, ld) }
    }

    /// [`super::TileRowsFn`] for `f64` (`W = 8`).
    ///
    /// # Safety
    /// AVX2 and FMA must be available, and the pointers valid as for [`super::TileRowsFn`].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile_rows_f64(kc: usize, a: *const f64, rows: &[*const f64; MR], acc: *mut f64, ld: usize) {
        // SAFETY: the same contract.
        unsafe { tile_f64_with(kc, a, Rows(rows), acc, ld) }
    }

    /// [`super::TileRowsFn`] for `f32` (`W = 16`).
    ///
    /// # Safety
    /// As [`tile_rows_f64`].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile_rows_f32(kc: usize, a: *const f32, rows: &[*const f32; MR], acc: *mut f64, ld: usize) {
        // SAFETY: the same contract.
        unsafe { tile_f32_with(kc, a, Rows(rows), acc, ld) }
    }

    pub fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
}

impl SyrkElem for f64 {
    const W: usize = 8;
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
    fn tile_fn() -> TileFn<f64> {
        #[cfg(target_arch = "x86_64")]
        if avx2::available() {
            return avx2::tile_f64;
        }
        tile_portable::<f64>
    }
    fn tile_rows_fn() -> TileRowsFn<f64> {
        #[cfg(target_arch = "x86_64")]
        if avx2::available() {
            return avx2::tile_rows_f64;
        }
        tile_rows_portable::<f64>
    }
    fn sub(self, c: f64) -> f64 {
        self - c
    }
    fn widen(self) -> f64 {
        self
    }
    fn narrow(v: f64) -> f64 {
        v
    }
}

impl SyrkElem for f32 {
    const W: usize = 16;
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
    fn tile_fn() -> TileFn<f32> {
        #[cfg(target_arch = "x86_64")]
        if avx2::available() {
            return avx2::tile_f32;
        }
        tile_portable::<f32>
    }
    fn tile_rows_fn() -> TileRowsFn<f32> {
        #[cfg(target_arch = "x86_64")]
        if avx2::available() {
            return avx2::tile_rows_f32;
        }
        tile_rows_portable::<f32>
    }
    fn sub(self, c: f32) -> f32 {
        self - c
    }
    fn widen(self) -> f64 {
        self as f64
    }
    fn narrow(v: f64) -> f32 {
        v as f32
    }
}

/// Layout of the packed block and of the accumulator for `d` features.
#[derive(Clone, Copy, Debug)]
struct Layout {
    /// Features.
    d: usize,
    /// Packed columns, `d + 1`: the features, then a column of ones whose
    /// products with the features are the column sums.
    cols: usize,
    /// Vector-side panels (`W` columns each); `np * W >= nt * 6`.
    np: usize,
    /// Broadcast-side micro-panels (6 columns each), `ceil(cols / 6)`.
    nt: usize,
    /// Accumulator leading dimension and height, `np * W`.
    ld: usize,
}

impl Layout {
    fn new<T: SyrkElem>(d: usize) -> Self {
        let cols = d + 1;
        let nt = cols.div_ceil(MR);
        let np = (nt * MR).div_ceil(T::W);
        Layout { d, cols, np, nt, ld: np * T::W }
    }
}

/// Values between consecutive panels beyond their `kc` rows. Without it the
/// panels of a full block would lie a multiple of 4 KiB apart, so packing a
/// row would store to ~`d / 4` addresses in one L1 set (and alias in the
/// store buffer); 16 values shift each panel by one or two cache lines.
pub(crate) const PANEL_PAD: usize = 16;

/// A row block packed twice: `a`, `np` panels of `kc x W` (vector side),
/// and `b`, `nt` micro-panels of `kc x 6` (broadcast side), both row by
/// row, with the column of ones after the features and zeros after that.
/// Panel `p` starts at `p * sa`, micro-panel `t` at `t * sb`.
struct Packed<'a, T> {
    a: &'a [T],
    b: &'a [T],
    kc: usize,
    sa: usize,
    sb: usize,
}

impl<T: SyrkElem> Packed<'_, T> {
    /// Panel strides for a block of `kc` rows.
    fn strides(kc: usize) -> (usize, usize) {
        (kc * T::W + PANEL_PAD, kc * MR + PANEL_PAD)
    }
}

/// Centre rows (`kc x d`, row-major) into both packed layouts of
/// [`Packed`] (`a`, `b` must hold `np * sa` and `nt * sb` values).
fn pack<T: SyrkElem>(rows: &[T], center: &[T], lay: Layout, a: &mut [T], b: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: AVX2 and FMA were detected just above.
        return unsafe { pack_avx2(rows, center, lay, a, b) };
    }
    pack_impl(rows, center, lay, a, b)
}

/// [`pack_impl`] compiled for AVX2 (the loops vectorise 4 or 8 wide).
///
/// # Safety
/// AVX2 and FMA must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_avx2<T: SyrkElem>(rows: &[T], center: &[T], lay: Layout, a: &mut [T], b: &mut [T]) {
    pack_impl(rows, center, lay, a, b)
}

#[inline(always)]
fn pack_impl<T: SyrkElem>(rows: &[T], center: &[T], lay: Layout, a: &mut [T], b: &mut [T]) {
    let (d, w) = (lay.d, T::W);
    let kc = rows.len() / d;
    let (sa, sb) = Packed::<T>::strides(kc);
    let (a, b) = (&mut a[..lay.np * sa], &mut b[..lay.nt * sb]);
    // One centred row, padded to `ld` columns: [x - c, 1, 0, ...].
    let mut line = vec![T::ZERO; lay.ld];
    line[d] = T::ONE;
    for (k, row) in rows.chunks_exact(d).enumerate() {
        for ((dst, &v), &c) in line[..d].iter_mut().zip(row).zip(center) {
            *dst = v.sub(c);
        }
        for (p, src) in line.chunks_exact(w).enumerate() {
            a[p * sa + k * w..p * sa + (k + 1) * w].copy_from_slice(src);
        }
        for (t, src) in line[..lay.nt * MR].chunks_exact(MR).enumerate() {
            b[t * sb + k * MR..t * sb + (k + 1) * MR].copy_from_slice(src);
        }
    }
}

/// Pulls the next row block toward the cache while the current one is
/// multiplied, a few 64-byte lines per tile, so that packing it does not
/// wait on memory.
struct Prefetcher {
    next: usize,
    end: usize,
    step: usize,
}

impl Prefetcher {
    fn new<T>(rows: &[T], tiles: usize) -> Self {
        let start = rows.as_ptr() as usize;
        let end = start + std::mem::size_of_val(rows);
        Prefetcher { next: start, end, step: (end - start).div_ceil(64).div_ceil(tiles.max(1)) }
    }

    fn none() -> Self {
        Prefetcher { next: 0, end: 0, step: 0 }
    }

    #[inline]
    fn advance(&mut self) {
        for _ in 0..self.step {
            if self.next >= self.end {
                return;
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a prefetch is only a hint; it never faults, whatever the
            // address (here one inside the input slice).
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>(self.next as *const i8);
            }
            self.next += 64;
        }
    }
}

/// Register tiles per full row block (as [`update_rows`] visits them).
fn tiles_per_block<T: SyrkElem>(lay: Layout) -> usize {
    let last = (lay.cols - 1) / T::W;
    (0..lay.nt).map(|t| last + 1 - t * MR / T::W).sum()
}

/// Tiles of one packed block whose broadcast columns lie in
/// `ic .. ic + acc_rows.len() / ld`; `acc_rows` are those rows of the accumulator.
fn update_rows<T: SyrkElem>(
    pk: &Packed<'_, T>,
    lay: Layout,
    ic: usize,
    acc_rows: &mut [f64],
    tile: TileFn<T>,
    pf: &mut Prefetcher,
) {
    let (cols, w, ld, kc) = (lay.cols, T::W, lay.ld, pk.kc);
    let mc = acc_rows.len() / ld;
    assert!(ic % MR == 0 && pk.sa >= kc * w && pk.sb >= kc * MR);
    assert!(pk.a.len() >= lay.np * pk.sa && pk.b.len() >= lay.nt * pk.sb);
    let b_end = (ic + mc).min(cols);
    for p in ic / w..lay.np {
        if p * w >= cols {
            break;
        }
        let panel = &pk.a[p * pk.sa..p * pk.sa + kc * w];
        let mut b0 = ic;
        // Tiles with some column of panel p at or right of b0 (upper triangle).
        while b0 < b_end && b0 < (p + 1) * w {
            let t = b0 / MR;
            let micro = &pk.b[t * pk.sb..t * pk.sb + kc * MR];
            let out = &mut acc_rows[(b0 - ic) * ld + p * w..];
            assert!(out.len() >= (MR - 1) * ld + w);
            // SAFETY: `panel` holds kc * W values and `micro` kc * 6; `out`
            // has rows 0..6 (stride ld) of W columns (checked just above).
            // The AVX2 kernels are only returned by `tile_fn` when the
            // features are detected.
            unsafe { tile(kc, panel.as_ptr(), micro.as_ptr(), out.as_mut_ptr(), ld) };
            pf.advance();
            b0 += MR;
        }
    }
}

/// A zeroed buffer of `len` values starting on a 64-byte boundary, so that
/// packed rows do not straddle cache lines more than they must.
pub(crate) fn aligned_zeros<T: SyrkElem>(len: usize) -> (Vec<T>, usize) {
    let buf = vec![T::ZERO; len + 64];
    let off = buf.as_ptr().align_offset(64).min(64);
    (buf, off)
}

/// Accumulate one row range into `acc` (`ld x ld`, upper triangle; row
/// `j < d`, column `d` gets the column sums).
fn accumulate<T: SyrkElem>(x: &[T], center: &[T], lay: Layout, acc: &mut [f64], inner_par: bool) {
    let d = lay.d;
    let tile = T::tile_fn();
    let (sa, sb) = Packed::<T>::strides(KC);
    let (la, lb) = (lay.np * sa, lay.nt * sb);
    let (mut abuf, aoff) = aligned_zeros::<T>(la);
    let (mut bbuf, boff) = aligned_zeros::<T>(lb);
    let (a, b) = (&mut abuf[aoff..aoff + la], &mut bbuf[boff..boff + lb]);
    let tiles = tiles_per_block::<T>(lay);
    let mut blocks = x.chunks(KC * d).peekable();
    while let Some(rows) = blocks.next() {
        let kc = rows.len() / d;
        pack(rows, center, lay, a, b);
        let (sa, sb) = Packed::<T>::strides(kc);
        let pk = Packed { a: &a[..lay.np * sa], b: &b[..lay.nt * sb], kc, sa, sb };
        if inner_par {
            acc.par_chunks_mut(MC * lay.ld)
                .enumerate()
                .for_each(|(i, chunk)| update_rows(&pk, lay, i * MC, chunk, tile, &mut Prefetcher::none()));
        } else {
            let mut pf = blocks.peek().map_or(Prefetcher::none(), |next| Prefetcher::new(next, tiles));
            for (i, chunk) in acc.chunks_mut(MC * lay.ld).enumerate() {
                update_rows(&pk, lay, i * MC, chunk, tile, &mut pf);
            }
        }
    }
}

/// Number of row groups for `n x d` data: a power of two up to 8, at
/// most `n / (2 KC)`, with accumulators within [`ACC_BUDGET`].
fn n_groups(n: usize, ld: usize) -> usize {
    let acc_bytes = 8 * ld * ld;
    let blocks = n.div_ceil(KC);
    let mut g = 8;
    while g > 1 && (g * acc_bytes > ACC_BUDGET || blocks < 2 * g) {
        g /= 2;
    }
    g
}

/// Column sums $\sum_i (x_i - c)$ (`d`) and the scatter matrix
/// $\sum_i (x_i - c)(x_i - c)^\top$ (`d x d`, row-major, symmetric) of
/// row-major `x` about `center`, accumulated in `f64` (centring and
/// in-block products in `T`). Deterministic for any number of threads.
pub fn centered_sums_scatter<T: SyrkElem>(x: &[T], d: usize, center: &[T]) -> (Vec<f64>, Vec<f64>) {
    assert!(d > 0 && x.len() % d == 0 && center.len() == d);
    let n = x.len() / d;
    let lay = Layout::new::<T>(d);
    let ld = lay.ld;
    let g = n_groups(n, ld);
    let blocks = n.div_ceil(KC);
    let parts: Vec<Vec<f64>> = (0..g)
        .into_par_iter()
        .map(|gi| {
            let (b0, b1) = (gi * blocks / g, (gi + 1) * blocks / g);
            let rows = &x[(b0 * KC).min(n) * d..(b1 * KC).min(n) * d];
            let mut acc = vec![0.0f64; ld * ld];
            accumulate(rows, center, lay, &mut acc, g == 1 && d > MC);
            acc
        })
        .collect();
    let sum_groups = |i: usize, j: usize| parts.iter().fold(0.0, |v, acc| v + acc[i * ld + j]);
    let sums: Vec<f64> = (0..d).map(|j| sum_groups(j, d)).collect();
    // Upper triangle summed over groups in order, then mirrored.
    let mut out = vec![0.0f64; d * d];
    out.par_chunks_mut(d).enumerate().for_each(|(i, row)| {
        for (j, v) in row.iter_mut().enumerate().skip(i) {
            *v = sum_groups(i, j);
        }
    });
    for i in 0..d {
        for j in 0..i {
            out[i * d + j] = out[j * d + i];
        }
    }
    (sums, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f64], d: usize, c: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let mut s = vec![0.0; d];
        let mut a = vec![0.0; d * d];
        for row in x.chunks_exact(d) {
            for i in 0..d {
                s[i] += row[i] - c[i];
                for j in 0..d {
                    a[i * d + j] += (row[i] - c[i]) * (row[j] - c[j]);
                }
            }
        }
        (s, a)
    }

    fn data(n: usize, d: usize, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n * d)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * (1.0 + (i % d) as f64) + 2.0
            })
            .collect()
    }

    fn check<T: SyrkElem>(x: &[f64], d: usize, tol: f64) {
        let c: Vec<f64> = (0..d).map(|j| 1.5 + 0.01 * j as f64).collect();
        let xt: Vec<T> = x.iter().map(|&v| T::narrow(v)).collect();
        let ct: Vec<T> = c.iter().map(|&v| T::narrow(v)).collect();
        // Reference on the values as the kernel sees them.
        let xr: Vec<f64> = xt.iter().map(|v| v.widen()).collect();
        let cr: Vec<f64> = ct.iter().map(|v| v.widen()).collect();
        let (s0, a0) = naive(&xr, d, &cr);
        let (s1, a1) = centered_sums_scatter(&xt, d, &ct);
        let scale = a0.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (p, q) in s0.iter().zip(&s1) {
            assert!((p - q).abs() <= tol * scale.sqrt() * (x.len() / d) as f64, "sums {p} vs {q}");
        }
        for i in 0..d {
            for j in 0..d {
                let (p, q) = (a0[i * d + j], a1[i * d + j]);
                assert!((p - q).abs() <= tol * scale, "d={d} ({i},{j}): {p} vs {q}");
                assert_eq!(a1[i * d + j], a1[j * d + i]);
            }
        }
    }

    #[test]
    fn matches_naive_odd_sizes() {
        for &d in &[1usize, 7, 13, 100, 257] {
            for &n in &[1usize, 5, KC + 3, 3 * KC - 1, 9 * KC + 17] {
                if n * d > 2_000_000 {
                    continue;
                }
                let x = data(n, d, (n * 1000 + d) as u64);
                check::<f64>(&x, d, 1e-12);
                check::<f32>(&x, d, 1e-5);
            }
        }
    }

    #[test]
    fn portable_kernel_matches_dispatched() {
        let (n, d) = (KC + 11, 29);
        let x = data(n, d, 7);
        let c = vec![0.25; d];
        let lay = Layout::new::<f64>(d);
        let mut a = vec![0.0; lay.ld * lay.ld];
        let mut b = a.clone();
        let (sa, sb) = Packed::<f64>::strides(KC);
        let mut pa = vec![0.0; lay.np * sa];
        let mut pb = vec![0.0; lay.nt * sb];
        for rows in x.chunks(KC * d) {
            let kc = rows.len() / d;
            pack(rows, &c, lay, &mut pa, &mut pb);
            let (sa, sb) = Packed::<f64>::strides(kc);
            let pk = Packed { a: &pa[..lay.np * sa], b: &pb[..lay.nt * sb], kc, sa, sb };
            update_rows(&pk, lay, 0, &mut a, f64::tile_fn(), &mut Prefetcher::none());
            update_rows(&pk, lay, 0, &mut b, tile_portable::<f64>, &mut Prefetcher::none());
        }
        for i in 0..=d {
            for j in i..=d {
                let (p, q) = (a[i * lay.ld + j], b[i * lay.ld + j]);
                assert!((p - q).abs() <= 1e-12 * p.abs().max(1.0), "({i},{j}) {p} vs {q}");
            }
        }
    }

    #[test]
    fn portable_rows_kernel_matches_dispatched() {
        fn check<T: SyrkElem + std::ops::Mul<Output = T> + std::ops::Add<Output = T>>(tol: f64) {
            let kc = 37;
            let w = T::W;
            let a: Vec<T> = data(kc, w, 3).into_iter().map(T::narrow).collect();
            let x: Vec<T> = data(MR, kc, 4).into_iter().map(T::narrow).collect();
            let rows: [*const T; MR] = std::array::from_fn(|r| x[r * kc..].as_ptr());
            let ld = w + 3;
            let (mut p, mut q) = (vec![0.5; MR * ld], vec![0.5; MR * ld]);
            // SAFETY: `a` holds kc * W values, each row kc, and the
            // accumulators 6 rows of stride ld >= W.
            unsafe {
                T::tile_rows_fn()(kc, a.as_ptr(), &rows, p.as_mut_ptr(), ld);
                tile_rows_portable::<T>(kc, a.as_ptr(), &rows, q.as_mut_ptr(), ld);
            }
            for r in 0..MR {
                for c in 0..w {
                    let want: f64 = (0..kc).map(|k| x[r * kc + k].widen() * a[k * w + c].widen()).sum::<f64>() + 0.5;
                    for got in [p[r * ld + c], q[r * ld + c]] {
                        assert!((got - want).abs() <= tol * (1.0 + want.abs()), "({r},{c}) {got} vs {want}");
                    }
                }
            }
        }
        check::<f64>(1e-12);
        check::<f32>(1e-5);
    }

    #[test]
    fn thread_count_does_not_change_result() {
        let (n, d) = (20 * KC + 5, 37);
        let x = data(n, d, 3);
        let c = vec![1.0; d];
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let three = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let r1 = one.install(|| centered_sums_scatter(&x, d, &c));
        let r3 = three.install(|| centered_sums_scatter(&x, d, &c));
        assert_eq!(r1, r3);
    }
}
