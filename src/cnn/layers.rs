//! The CNN kernels, on one image in NHWC (`height x width x channels`,
//! channels fastest) float32 layout.
//!
//! - [`PackedMatrix`] + [`gemm`]: $Y = \mathrm{act}(b + X W (+ R))$ for
//!   `m x k` row-major $X$ and a `k x n` weight matrix packed once into
//!   panels of [`NR`] columns: pointwise (1 x 1) convolutions, fully
//!   connected layers, and every other dense convolution, its $X$ rows
//!   read straight from the image (one [`XBlock`] per tap row, rows
//!   overlapping) or, for padded pixels and grouped convolutions, gathered
//!   by [`im2col`]. The tile is BLIS's 6 x 16 AVX2 register block (Van Zee and
//!   van de Geijn, ACM TOMS 2015), or 8 x 32 (two panels) with AVX-512,
//!   with the bias, the residual and the activation applied in registers
//!   before the one store.
//!   [`gemm_blocks`] takes $X$ as column blocks side by side and computes
//!   a range of panels only: how one image's layers are split over
//!   threads by channels ([`crate::cnn::graph`]); [`gemm_blocks_par`]
//!   splits the rows over threads, or the weight panels when there are
//!   at most 24 rows (each thread then reads its share of the weights).
//! - [`Depthwise`] + [`depthwise`]: one `kh x kw` filter per channel,
//!   vectorised over channels (blocks of 16 channels with AVX-512F, else 8
//!   with AVX2, x up to 8 pixels in registers; narrow rows of 3, 6 or 12
//!   pixels by kernels compiled for their width; one definition of each
//!   kernel for both widths, `dw_kernels!`); [`depthwise_part`] for a
//!   range of channels.
//! - [`global_avg_pool`], [`pool2d`] (max / average), [`Activation`].
//!
//! **One order of operations everywhere.** Every output value is computed
//! as `acc = bias; acc = fma(x_t, w_t, acc)` over its taps `t` in a fixed
//! order (the `k` index of the GEMM; `(ky, kx)` of a depthwise filter, taps
//! that fall in the zero padding skipped, which adds exactly nothing), then
//! `+ residual`, then the activation. The AVX-512 and AVX2 kernels and the
//! portable code (`f32::mul_add`) perform exactly these operations, so
//! results are the same bits on every x86-64 CPU with or without AVX2 or
//! AVX-512, for any row split, thread count or batch composition.

use crate::features::Simd;

/// The kernel family this thread runs, decided once per call of a kernel:
/// AVX-512 where the CPU has AVX-512F, AVX2 and FMA, AVX2 where it has
/// both (checked at run time, cached by std), else portable; tests cap it
/// ([`crate::features::avx2_only`], [`crate::features::portable_only`]).
#[inline]
pub(crate) fn kernels() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::features::use_avx2() && std::arch::is_x86_feature_detected!("fma") {
            return if crate::features::use_avx512() { Simd::Avx512 } else { Simd::Avx2 };
        }
    }
    Simd::Portable
}

/// Output channels per packed weight panel (two 8-lane AVX registers, one
/// 16-lane AVX-512 register).
pub const NR: usize = 16;
/// Rows of the GEMM register tile.
pub const MR: usize = 6;
/// Rows of the AVX-512 GEMM register tile (two panels wide: 16 of the 32
/// vector registers hold sums; 8 rows were 2-5 % faster than 6 on the whole
/// network at 224 and 100 px, 12 no faster than 8).
pub const MR_WIDE: usize = 8;

/// A pointwise activation applied to a layer's output.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// Identity.
    None,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, lo), hi)` (ReLU6 is `Clip { lo: 0, hi: 6 }`).
    Clip { lo: f32, hi: f32 },
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// `max(0, min(1, alpha x + beta))` (ONNX `HardSigmoid`).
    HardSigmoid { alpha: f32, beta: f32 },
    /// `x * max(0, min(1, x / 6 + 1/2))` (ONNX `HardSwish`).
    HardSwish,
    /// `x / (1 + exp(-x))` (SiLU).
    Swish,
}

impl Activation {
    /// ReLU6, EfficientNet-Lite's and MobileNetV2's activation.
    pub const RELU6: Activation = Activation::Clip { lo: 0.0, hi: 6.0 };

    /// The activation of one value.
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::None => x,
            Activation::Relu => x.max(0.0),
            Activation::Clip { lo, hi } => x.max(lo).min(hi),
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Activation::HardSigmoid { alpha, beta } => (alpha * x + beta).clamp(0.0, 1.0),
            Activation::HardSwish => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
            Activation::Swish => x / (1.0 + (-x).exp()),
        }
    }

    /// The `(lo, hi)` bounds when the activation is a clamp (None, ReLU,
    /// Clip), applied in registers by the kernels; `None` otherwise.
    #[inline]
    pub fn clamp_bounds(self) -> Option<(f32, f32)> {
        match self {
            Activation::None => Some((f32::NEG_INFINITY, f32::INFINITY)),
            Activation::Relu => Some((0.0, f32::INFINITY)),
            Activation::Clip { lo, hi } => Some((lo, hi)),
            _ => None,
        }
    }

    /// Apply in place to a slice.
    pub fn apply_slice(self, xs: &mut [f32]) {
        if self == Activation::None {
            return;
        }
        for x in xs {
            *x = self.apply(*x);
        }
    }
}

/// `min(max(x, lo), hi)` as the kernels compute it (max first, then min).
#[inline(always)]
fn clamp(x: f32, lo: f32, hi: f32) -> f32 {
    let y = if x > lo { x } else { lo };
    if y < hi {
        y
    } else {
        hi
    }
}

/// 16 floats on a 64-byte boundary: the unit of [`Aligned`].
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A float32 buffer that starts on a 64-byte boundary (a cache line), so
/// that the 16-lane AVX-512 loads and stores of weight rows and of channel
/// blocks never straddle two lines. It reads as a `[f32]` (`Deref`).
#[derive(Clone, Default)]
pub struct Aligned {
    lines: Vec<Line>,
    len: usize,
}

impl Aligned {
    /// `len` zeros.
    pub fn zeros(len: usize) -> Self {
        Aligned { lines: vec![Line([0.0; 16]); len.div_ceil(16)], len }
    }
    /// The values, as a slice.
    pub fn as_slice(&self) -> &[f32] {
        // SAFETY: `lines` holds at least `len` contiguous f32 (`Line` is
        // `repr(C)` of 16 f32, no padding).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<f32>(), self.len) }
    }
    /// The values, as a mutable slice.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as in `as_slice`, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<f32>(), self.len) }
    }
    /// Values it holds without reallocating.
    pub fn capacity(&self) -> usize {
        self.lines.len() * 16
    }
    /// Grow or cut to `len` values for a writer that sets every value: the
    /// values it held before are kept, those within its capacity keep what
    /// they held last (no fill), those past it are zeros.
    pub fn reuse(&mut self, len: usize) {
        if len > self.capacity() {
            self.lines.resize(len.div_ceil(16), Line([0.0; 16]));
        }
        self.len = len;
    }
    /// The values as a `Vec`.
    pub fn to_vec(&self) -> Vec<f32> {
        self.as_slice().to_vec()
    }
}

impl std::ops::Deref for Aligned {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        self.as_slice()
    }
}

impl std::ops::DerefMut for Aligned {
    fn deref_mut(&mut self) -> &mut [f32] {
        self.as_mut_slice()
    }
}

impl From<&[f32]> for Aligned {
    fn from(v: &[f32]) -> Self {
        let mut a = Aligned::zeros(v.len());
        a.as_mut_slice().copy_from_slice(v);
        a
    }
}

impl From<Vec<f32>> for Aligned {
    fn from(v: Vec<f32>) -> Self {
        Aligned::from(v.as_slice())
    }
}

impl FromIterator<f32> for Aligned {
    fn from_iter<I: IntoIterator<Item = f32>>(it: I) -> Self {
        Aligned::from(it.into_iter().collect::<Vec<f32>>())
    }
}

impl PartialEq for Aligned {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl std::fmt::Debug for Aligned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_slice().fmt(f)
    }
}

thread_local! {
    /// Free buffers of finished values, reused by the next nodes and images.
    static POOL: std::cell::RefCell<Vec<Aligned>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Buffers kept per thread (the distinct buffer sizes of a network's
/// layers, at one input size; more are dropped, the least recently freed first).
const POOL_MAX: usize = 64;

/// A buffer of `len` values (contents unspecified: every kernel writes all
/// of it): the least recently freed buffer last used for exactly `len`
/// values (images of one size ask for the same sizes in turn, so once the
/// pool holds them nothing is allocated or filled); else the smallest
/// buffer that holds `len` values, cut or grown to `len` (the parts of an
/// image split between threads ask for lengths that vary: reusing a large
/// buffer there beats allocating a new one, whose pages the system must
/// zero); else a new one.
pub(crate) fn take_buffer(len: usize) -> Aligned {
    let reused = POOL.with(|p| {
        let mut p = p.borrow_mut();
        let i = p.iter().position(|b| b.len() == len).or_else(|| {
            p.iter().enumerate().filter(|(_, b)| b.capacity() >= len).min_by_key(|(_, b)| b.capacity()).map(|(i, _)| i)
        })?;
        Some(p.remove(i))
    });
    match reused {
        Some(mut v) => {
            v.reuse(len);
            v
        }
        None => Aligned::zeros(len),
    }
}

/// Return a buffer to this thread's pool (dropping the least recently
/// freed one when the pool is full).
pub(crate) fn give_buffer(v: Aligned) {
    if v.capacity() == 0 {
        return;
    }
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() >= POOL_MAX {
            p.remove(0);
        }
        p.push(v);
    });
}

/// A `k x n` weight matrix and its `n` biases, packed once for [`gemm`]:
/// `ceil(n / NR)` panels of `k x NR` values (row after row, zero-padded past
/// `n`), so that a tile reads each weight row as two aligned vectors.
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    k: usize,
    n: usize,
    panels: usize,
    /// Panels of `k` rows of `NR` values, on a 64-byte boundary (each
    /// panel row one cache line).
    data: Aligned,
    bias: Vec<f32>,
}

impl PackedMatrix {
    /// Pack `weights(kk, j)` for `kk < k`, `j < n` with `bias[j]`.
    ///
    /// # Panics
    /// If `bias.len() != n`.
    pub fn from_fn(k: usize, n: usize, bias: &[f32], weights: impl Fn(usize, usize) -> f32) -> Self {
        assert_eq!(bias.len(), n, "one bias per output column");
        let panels = n.div_ceil(NR);
        let mut data = Aligned::zeros(panels * k * NR);
        let d = data.as_mut_slice();
        for p in 0..panels {
            for kk in 0..k {
                for c in 0..NR {
                    let j = p * NR + c;
                    if j < n {
                        d[(p * k + kk) * NR + c] = weights(kk, j);
                    }
                }
            }
        }
        let mut b = vec![0f32; panels * NR];
        b[..n].copy_from_slice(bias);
        PackedMatrix { k, n, panels, data, bias: b }
    }

    /// Pack a row-major `k x n` matrix.
    ///
    /// # Panics
    /// If `w.len() != k * n` or `bias.len() != n`.
    pub fn from_row_major(w: &[f32], k: usize, n: usize, bias: &[f32]) -> Self {
        assert_eq!(w.len(), k * n, "weights must be k * n values");
        Self::from_fn(k, n, bias, |kk, j| w[kk * n + j])
    }

    /// Input features (rows of the weight matrix).
    pub fn k(&self) -> usize {
        self.k
    }
    /// Output features (columns).
    pub fn n(&self) -> usize {
        self.n
    }
    /// Number of panels of [`NR`] columns, `ceil(n / NR)`.
    pub fn panels(&self) -> usize {
        self.panels
    }
    /// The weight at row `kk`, column `j` (tests).
    pub fn get(&self, kk: usize, j: usize) -> f32 {
        self.data.as_slice()[((j / NR) * self.k + kk) * NR + j % NR]
    }
    /// The bias of column `j`.
    pub fn bias(&self, j: usize) -> f32 {
        self.bias[j]
    }
}

/// Rows of a GEMM's left operand $X$: `k` columns of `data`, row `r` at
/// `data[r * ld..]`. [`gemm_blocks`] takes $X$ as several such blocks side
/// by side (their columns one after the other). Rows may overlap (`ld <
/// k`): a convolution's windows read straight from the image, each tap
/// row of `kw` pixels one block, consecutive output pixels `stride * c`
/// values apart.
#[derive(Debug, Clone, Copy)]
pub struct XBlock<'a> {
    pub data: &'a [f32],
    pub ld: usize,
    pub k: usize,
}

impl<'a> XBlock<'a> {
    /// The block from row `r0` on.
    pub fn from_row(&self, r0: usize) -> XBlock<'a> {
        XBlock { data: &self.data[(r0 * self.ld).min(self.data.len())..], ld: self.ld, k: self.k }
    }
}

/// $Y = \mathrm{act}(b + X W + R)$ on rows of $X$.
///
/// `x` holds `m` rows of `w.k()` values with row stride `ldx`; `out` gets
/// `m` rows of `w.n()` values with row stride `ldo`; `residual` (optional)
/// has the layout of `out`. Each output value is
/// `act(fma-sum over kk in order, starting from the bias, + residual)`.
///
/// # Panics
/// If a slice is too short for its rows and strides.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    x: &[f32],
    m: usize,
    ldx: usize,
    w: &PackedMatrix,
    out: &mut [f32],
    ldo: usize,
    residual: Option<&[f32]>,
    act: Activation,
) {
    gemm_blocks(&[XBlock { data: x, ld: ldx, k: w.k }], m, w, 0..w.panels, out, ldo, residual, act);
}

/// [`gemm`] with $X$ given as column blocks side by side (`xs`, their `k`
/// summing to `w.k()`), and only the output columns of weight panels
/// `panels` (columns `panels.start * NR..min(panels.end * NR, n)`), written
/// to columns `0..` of `out` (and read from the same columns of
/// `residual`). Each value is computed with exactly the operations of
/// [`gemm`] (the `k` index runs through the blocks in order), so splitting
/// $X$ by columns or $Y$ by panels or rows never changes a bit.
///
/// # Panics
/// If the blocks' `k` do not sum to `w.k()`, `panels` is out of range, or a
/// slice is too short for its rows and strides.
#[allow(clippy::too_many_arguments)]
pub fn gemm_blocks(
    xs: &[XBlock<'_>],
    m: usize,
    w: &PackedMatrix,
    panels: std::ops::Range<usize>,
    out: &mut [f32],
    ldo: usize,
    residual: Option<&[f32]>,
    act: Activation,
) {
    assert!(panels.start <= panels.end && panels.end <= w.panels, "panel range");
    if m == 0 || panels.is_empty() {
        return;
    }
    let (k, n) = (w.k, w.n);
    assert_eq!(xs.iter().map(|b| b.k).sum::<usize>(), k, "the blocks of x must have k columns in all");
    for b in xs {
        assert!(b.data.len() >= (m - 1) * b.ld + b.k, "x block too short");
    }
    let n_out = n.min(panels.end * NR) - panels.start * NR; // columns written
    assert!(ldo >= n_out, "row strides must cover the rows");
    assert!(out.len() >= (m - 1) * ldo + n_out, "out too short");
    if let Some(r) = residual {
        assert!(r.len() >= (m - 1) * ldo + n_out, "residual too short");
    }
    let bounds = act.clamp_bounds();
    let (lo, hi) = bounds.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
    // rows per block: keep the block's rows of x (k floats each) near 256 KiB
    // (half the L2: each weight panel is read from memory once per block, so
    // a group's stacked rows, 9 or 36 per image, share its reads);
    // blocks and tiles as even as possible (a 1-row tile is latency-bound).
    // Tiling never changes a value: each row is summed in the same order.
    // AVX-512 tiles span two panels (32 columns) when two remain
    let simd = kernels();
    let wide = simd == Simd::Avx512;
    let mr = if wide { MR_WIDE } else { MR };
    let mc = ((256 * 1024 / 4) / k.max(1)).clamp(mr, 240) / mr * mr;
    let n_blocks = m.div_ceil(mc);
    let mut m0 = 0;
    for bi in 0..n_blocks {
        let mb = (m - m0) / (n_blocks - bi);
        let n_tiles = mb.div_ceil(mr);
        let mut p = panels.start;
        while p < panels.end {
            let np = if wide && p + 1 < panels.end { 2 } else { 1 };
            let cols = (np * NR).min(n - p * NR);
            let panel = &w.data.as_slice()[p * k * NR..(p + np) * k * NR];
            let bias = &w.bias[p * NR..(p + np) * NR];
            let mut r0 = m0;
            for ti in 0..n_tiles {
                let rows = (m0 + mb - r0) / (n_tiles - ti);
                let tile = Tile { xs, panel, k, bias, out_col: (p - panels.start) * NR, cols, ldo, lo, hi, simd };
                // SAFETY: rows r0..r0+rows < m of every block and columns
                // out_col..out_col+cols <= n_out of out and residual are in
                // bounds (asserted above); a tile of more than NR columns
                // is made only when the AVX-512 kernels run.
                unsafe { tile.run(r0, rows, out, residual) };
                r0 += rows;
            }
            p += np;
        }
        m0 += mb;
    }
    debug_assert_eq!(m0, m);
    if bounds.is_none() {
        for r in 0..m {
            act.apply_slice(&mut out[r * ldo..r * ldo + n_out]);
        }
    }
}

/// Multiply-adds below which [`gemm_par`] stays on the calling thread
/// (about 10 us of work: less than a fork-join costs).
const PAR_MIN_WORK: usize = 1 << 18;

/// [`gemm`] split over the current rayon pool (`out` holds exactly `m`
/// rows of `ldo` values), as [`gemm_blocks_par`] splits it: its rows into
/// one block per thread (two when there are many rows), or its weight
/// panels when it has few rows. The values are those of [`gemm`]: each
/// value is summed in the same order whatever the split.
///
/// # Panics
/// As [`gemm`], and if `out.len() != m * ldo`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_par(
    x: &[f32],
    m: usize,
    ldx: usize,
    w: &PackedMatrix,
    out: &mut [f32],
    ldo: usize,
    residual: Option<&[f32]>,
    act: Activation,
) {
    gemm_blocks_par(&[XBlock { data: x, ld: ldx, k: w.k }], m, w, out, ldo, residual, act);
}

/// Rows at most which [`gemm_blocks_par`] splits the weight panels, not
/// the rows, between threads: with so few rows (a 4 x 4 or 3 x 3 map of
/// one image) the time goes into reading the weights from the shared
/// cache, and a split of the rows would have every thread read all of
/// them (1.1-1.3x faster on 16 rows with cold weights, on par from 25 rows on).
const PAR_COLS_MAX_ROWS: usize = 4 * MR;

/// [`gemm_blocks`] of all panels on the current rayon pool: the rows
/// split into one block per thread (two when there are many rows), or,
/// for at most `PAR_COLS_MAX_ROWS` (24) rows
/// and at least two panels per thread, the panels (see
/// `gemm_blocks_par_cols`). The same values either way.
///
/// # Panics
/// As [`gemm_blocks`], and if `out.len() != m * ldo`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_blocks_par(
    xs: &[XBlock<'_>],
    m: usize,
    w: &PackedMatrix,
    out: &mut [f32],
    ldo: usize,
    residual: Option<&[f32]>,
    act: Activation,
) {
    let threads = rayon::current_num_threads();
    if threads > 1 && m * w.k * w.n >= PAR_MIN_WORK && m <= PAR_COLS_MAX_ROWS && w.panels >= 2 * threads {
        return gemm_blocks_par_cols(xs, m, w, out, ldo, residual, act, threads);
    }
    gemm_blocks_par_rows(xs, m, w, out, ldo, residual, act)
}

/// [`gemm_blocks_par`] by rows: one block per thread (two when there are many rows).
#[allow(clippy::too_many_arguments)]
fn gemm_blocks_par_rows(
    xs: &[XBlock<'_>],
    m: usize,
    w: &PackedMatrix,
    out: &mut [f32],
    ldo: usize,
    residual: Option<&[f32]>,
    act: Activation,
) {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads();
    if threads <= 1 || m * w.k * w.n < PAR_MIN_WORK || m < 2 * MR {
        return gemm_blocks(xs, m, w, 0..w.panels, out, ldo, residual, act);
    }
    assert_eq!(out.len(), m * ldo, "out must hold m rows");
    let parts = if m >= 64 * MR * threads { 2 * threads } else { threads };
    let chunk = m.div_ceil(parts).max(MR);
    out.par_chunks_mut(chunk * ldo).enumerate().for_each(|(i, o)| {
        let r0 = i * chunk;
        let rows = o.len() / ldo;
        let xr: Vec<XBlock<'_>> = xs.iter().map(|b| b.from_row(r0)).collect();
        gemm_blocks(&xr, rows, w, 0..w.panels, o, ldo, residual.map(|r| &r[r0 * ldo..(r0 + rows) * ldo]), act);
    });
}

/// [`gemm_blocks_par`] of few rows: the weight panels are split over
/// `threads` parts (each thread reads its share of the weights only, not
/// all of them as a split of the rows would). Each part computes its
/// columns' sums ([`gemm_blocks`] without residual and activation, values
/// exact) into its own buffer, then adds the residual and applies the
/// activation as the kernel does (`acc + residual`, then the clamp, or the
/// activation after it) while writing its columns of `out`: the same bits.
#[allow(clippy::too_many_arguments)]
fn gemm_blocks_par_cols(
    xs: &[XBlock<'_>],
    m: usize,
    w: &PackedMatrix,
    out: &mut [f32],
    ldo: usize,
    residual: Option<&[f32]>,
    act: Activation,
    threads: usize,
) {
    use rayon::prelude::*;
    let n = w.n;
    assert!(ldo >= n && out.len() >= (m - 1) * ldo + n, "out too short");
    if let Some(r) = residual {
        assert!(r.len() >= (m - 1) * ldo + n, "residual too short");
    }
    let bounds = act.clamp_bounds();
    let (lo, hi) = bounds.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
    let parts = threads.min(w.panels);
    let dst = SyncPtr(out.as_mut_ptr());
    (0..parts).into_par_iter().for_each(|i| {
        let (p0, p1) = (i * w.panels / parts, (i + 1) * w.panels / parts);
        let (c0, c1) = (p0 * NR, (p1 * NR).min(n));
        let cw = c1 - c0;
        let mut sums = take_buffer(m * cw);
        gemm_blocks(xs, m, w, p0..p1, &mut sums, cw, None, Activation::None);
        let dst = &dst;
        for (r, row) in sums.chunks_exact(cw).enumerate() {
            let o = r * ldo + c0;
            // SAFETY: o + cw <= (m - 1) * ldo + n <= out.len() (asserted);
            // the parts write disjoint columns c0..c1 of each row (disjoint
            // ranges of `out`), which is borrowed mutably for the whole call.
            let d = unsafe { std::slice::from_raw_parts_mut(dst.0.add(o), cw) };
            match residual {
                Some(res) => {
                    for ((d, &a), &rv) in d.iter_mut().zip(row).zip(&res[o..o + cw]) {
                        *d = clamp(a + rv, lo, hi);
                    }
                }
                None => {
                    for (d, &a) in d.iter_mut().zip(row) {
                        *d = clamp(a, lo, hi);
                    }
                }
            }
            if bounds.is_none() {
                act.apply_slice(d);
            }
        }
        give_buffer(sums);
    });
}

/// A pointer the parts of [`gemm_blocks_par_cols`] write disjoint values through.
struct SyncPtr(*mut f32);
// SAFETY: used only for writes of disjoint elements by the parts of one call.
unsafe impl Sync for SyncPtr {}

/// `f::<R>(args)` for `R = rows` among the listed row counts, `f::<1>`
/// otherwise (the register tiles are compiled for each row count).
macro_rules! by_rows {
    ($rows:expr, [$($r:literal),*], $m:ident :: $f:ident $args:tt) => {
        match $rows {
            $($r => $m::$f::<$r> $args,)*
            _ => $m::$f::<1> $args,
        }
    };
}

/// One `rows x cols` tile of [`gemm_blocks`] (rows <= MR, cols <= NR; for
/// the AVX-512 kernel rows <= MR_WIDE and cols <= 2 NR over two
/// consecutive panels).
struct Tile<'a> {
    xs: &'a [XBlock<'a>],
    /// One panel (`k * NR` values), or two one after the other.
    panel: &'a [f32],
    /// Rows of each panel.
    k: usize,
    /// The biases of the panels' columns (`NR` per panel).
    bias: &'a [f32],
    out_col: usize,
    cols: usize,
    ldo: usize,
    lo: f32,
    hi: f32,
    /// The kernel family of the call (more than NR columns only with AVX-512).
    simd: Simd,
}

impl Tile<'_> {
    /// # Safety
    /// Rows `r0..r0 + rows` of `x` (stride `ldx`, `k` values) and of `out`
    /// and `residual` (stride `ldo`, columns `out_col..out_col + cols`) must
    /// be in bounds.
    #[inline]
    unsafe fn run(&self, r0: usize, rows: usize, out: &mut [f32], residual: Option<&[f32]>) {
        match self.simd {
            // SAFETY (the SIMD arms): `kernels()` found the CPU features.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => by_rows!(rows, [8, 7, 6, 5, 4, 3, 2], avx512::tile(self, r0, out, residual)),
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 if self.cols <= 8 => {
                // a last panel of at most 8 columns: half the work
                by_rows!(rows, [6, 5, 4, 3, 2], avx2::tile8(self, r0, out, residual))
            }
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => by_rows!(rows, [6, 5, 4, 3, 2], avx2::tile(self, r0, out, residual)),
            _ => self.portable(r0, rows, out, residual),
        }
    }

    fn portable(&self, r0: usize, rows: usize, out: &mut [f32], residual: Option<&[f32]>) {
        for r in r0..r0 + rows {
            let mut acc = [0f32; NR];
            acc.copy_from_slice(self.bias);
            let mut kk = 0;
            for b in self.xs {
                for &xv in &b.data[r * b.ld..r * b.ld + b.k] {
                    let wr = &self.panel[kk * NR..kk * NR + NR];
                    for c in 0..NR {
                        acc[c] = xv.mul_add(wr[c], acc[c]);
                    }
                    kk += 1;
                }
            }
            let o = r * self.ldo + self.out_col;
            for c in 0..self.cols {
                let mut v = acc[c];
                if let Some(res) = residual {
                    v += res[o + c];
                }
                out[o + c] = clamp(v, self.lo, self.hi);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Tile, NR};
    use std::arch::x86_64::*;

    /// `acc[r] += x[r][kk] * w[kk]` for `kk < k` in order (`x` rows from
    /// `x0`, stride `ld`; `w` the first 8 columns of the panel rows from
    /// `wp`); returns the sums and the next panel row.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn kloop8<const R: usize>(x0: *const f32, ld: usize, k: usize, mut wp: *const f32, mut acc: [__m256; R]) -> ([__m256; R], *const f32) {
        let mut xp = [std::ptr::null::<f32>(); R];
        for (r, p) in xp.iter_mut().enumerate() {
            *p = x0.add(r * ld);
        }
        for kk in 0..k {
            let w0 = _mm256_loadu_ps(wp);
            for r in 0..R {
                acc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(&*xp[r].add(kk)), w0, acc[r]);
            }
            wp = wp.add(NR);
        }
        (acc, wp)
    }

    /// [`kloop8`] over the panel's 16 columns.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn kloop16<const R: usize>(
        x0: *const f32,
        ld: usize,
        k: usize,
        mut wp: *const f32,
        mut acc0: [__m256; R],
        mut acc1: [__m256; R],
    ) -> ([__m256; R], [__m256; R], *const f32) {
        let mut xp = [std::ptr::null::<f32>(); R];
        for (r, p) in xp.iter_mut().enumerate() {
            *p = x0.add(r * ld);
        }
        for kk in 0..k {
            let w0 = _mm256_loadu_ps(wp);
            let w1 = _mm256_loadu_ps(wp.add(8));
            for r in 0..R {
                let a = _mm256_broadcast_ss(&*xp[r].add(kk));
                acc0[r] = _mm256_fmadd_ps(a, w0, acc0[r]);
                acc1[r] = _mm256_fmadd_ps(a, w1, acc1[r]);
            }
            wp = wp.add(NR);
        }
        (acc0, acc1, wp)
    }

    /// The `R x 8` tile of a last panel with at most 8 columns (the same
    /// operations on the lanes it keeps).
    ///
    /// # Safety
    /// As [`tile`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile8<const R: usize>(t: &Tile<'_>, r0: usize, out: &mut [f32], residual: Option<&[f32]>) {
        let b0 = _mm256_loadu_ps(t.bias.as_ptr());
        let mut acc = [b0; R];
        let mut wp = t.panel.as_ptr();
        if let [b] = t.xs {
            (acc, _) = kloop8::<R>(b.data.as_ptr().add(r0 * b.ld), b.ld, b.k, wp, acc);
        } else {
            for b in t.xs {
                (acc, wp) = kloop8::<R>(b.data.as_ptr().add(r0 * b.ld), b.ld, b.k, wp, acc);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            let o = (r0 + r) * t.ldo + t.out_col;
            let mut tmp = [0f32; 8];
            _mm256_storeu_ps(tmp.as_mut_ptr(), *a);
            for c in 0..t.cols {
                let mut v = tmp[c];
                if let Some(res) = residual {
                    v += res[o + c];
                }
                out[o + c] = super::clamp(v, t.lo, t.hi);
            }
        }
    }

    /// The `R x 16` register tile: `2 R` accumulators, two weight vectors
    /// and one broadcast per step of `k`.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; the tile's rows and columns must be
    /// in bounds (see [`Tile::run`]).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const R: usize>(t: &Tile<'_>, r0: usize, out: &mut [f32], residual: Option<&[f32]>) {
        let b0 = _mm256_loadu_ps(t.bias.as_ptr());
        let b1 = _mm256_loadu_ps(t.bias.as_ptr().add(8));
        let mut acc0 = [b0; R];
        let mut acc1 = [b1; R];
        let mut wp = t.panel.as_ptr();
        if let [b] = t.xs {
            // one block (every layer but a projection split by channels)
            (acc0, acc1, _) = kloop16::<R>(b.data.as_ptr().add(r0 * b.ld), b.ld, b.k, wp, acc0, acc1);
        } else {
            for b in t.xs {
                (acc0, acc1, wp) = kloop16::<R>(b.data.as_ptr().add(r0 * b.ld), b.ld, b.k, wp, acc0, acc1);
            }
        }
        let lo = _mm256_set1_ps(t.lo);
        let hi = _mm256_set1_ps(t.hi);
        for r in 0..R {
            let o = (r0 + r) * t.ldo + t.out_col;
            let (mut v0, mut v1) = (acc0[r], acc1[r]);
            if t.cols == NR {
                if let Some(res) = residual {
                    v0 = _mm256_add_ps(v0, _mm256_loadu_ps(res.as_ptr().add(o)));
                    v1 = _mm256_add_ps(v1, _mm256_loadu_ps(res.as_ptr().add(o + 8)));
                }
                // max then min, as `clamp`: NaN-free inputs give the same bits
                v0 = _mm256_min_ps(_mm256_max_ps(v0, lo), hi);
                v1 = _mm256_min_ps(_mm256_max_ps(v1, lo), hi);
                _mm256_storeu_ps(out.as_mut_ptr().add(o), v0);
                _mm256_storeu_ps(out.as_mut_ptr().add(o + 8), v1);
            } else {
                let mut tmp = [0f32; NR];
                _mm256_storeu_ps(tmp.as_mut_ptr(), v0);
                _mm256_storeu_ps(tmp.as_mut_ptr().add(8), v1);
                for c in 0..t.cols {
                    let mut v = tmp[c];
                    if let Some(res) = residual {
                        v += res[o + c];
                    }
                    out[o + c] = super::clamp(v, t.lo, t.hi);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Tile, NR};
    use std::arch::x86_64::*;

    /// `acc[h][r] += x[r][kk] * w_h[kk]` for `kk < k` in order, for the
    /// `H` (1 or 2) panels from `wp[h]` (`x` rows from `x0`, stride `ld`);
    /// returns the sums and the panels' next rows. One broadcast of each
    /// row's value per step, fused into the first multiply-add.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn kloop<const R: usize, const H: usize>(
        x0: *const f32,
        ld: usize,
        k: usize,
        mut wp: [*const f32; H],
        mut acc: [[__m512; R]; H],
    ) -> ([[__m512; R]; H], [*const f32; H]) {
        let mut xp = [std::ptr::null::<f32>(); R];
        for (r, p) in xp.iter_mut().enumerate() {
            *p = x0.add(r * ld);
        }
        for kk in 0..k {
            let mut wv = [_mm512_setzero_ps(); H];
            for h in 0..H {
                wv[h] = _mm512_loadu_ps(wp[h]);
                wp[h] = wp[h].add(NR);
            }
            for r in 0..R {
                let a = _mm512_set1_ps(*xp[r].add(kk));
                for h in 0..H {
                    acc[h][r] = _mm512_fmadd_ps(a, wv[h], acc[h][r]);
                }
            }
        }
        (acc, wp)
    }

    /// The `R x 16 H` tile over `H` panels: `H R` accumulators.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile_h<const R: usize, const H: usize>(t: &Tile<'_>, r0: usize, out: &mut [f32], residual: Option<&[f32]>) {
        let mut acc = [[_mm512_setzero_ps(); R]; H];
        let mut wp = [std::ptr::null::<f32>(); H];
        for h in 0..H {
            acc[h] = [_mm512_loadu_ps(t.bias.as_ptr().add(h * NR)); R];
            wp[h] = t.panel.as_ptr().add(h * t.k * NR);
        }
        for b in t.xs {
            (acc, wp) = kloop::<R, H>(b.data.as_ptr().add(r0 * b.ld), b.ld, b.k, wp, acc);
        }
        let lo = _mm512_set1_ps(t.lo);
        let hi = _mm512_set1_ps(t.hi);
        for (h, acc) in acc.iter().enumerate() {
            // columns of this panel in the tile (at least one)
            let cols = t.cols - h * NR;
            let mask: __mmask16 = if cols >= NR { 0xffff } else { (1u16 << cols) - 1 };
            for (r, &a) in acc.iter().enumerate() {
                let o = (r0 + r) * t.ldo + t.out_col + h * NR;
                let mut v = a;
                if let Some(res) = residual {
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, res.as_ptr().add(o)));
                }
                // max then min, as `clamp`: NaN-free inputs give the same bits
                v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
                _mm512_mask_storeu_ps(out.as_mut_ptr().add(o), mask, v);
            }
        }
    }

    /// The AVX-512 register tile: `R` rows (at most [`super::MR_WIDE`]) by one panel (16
    /// columns, `R` accumulators) or two (32 columns, `2 R` accumulators,
    /// two weight vectors and one broadcast per step of `k`), with the
    /// bias, the residual and the clamp applied in registers and masked
    /// stores for a last panel narrower than 16. The same operations as
    /// the AVX2 and portable tiles, value by value.
    ///
    /// # Safety
    /// AVX-512F must be available; the tile's rows and columns must be in
    /// bounds (see [`Tile::run`]); `t.panel` holds two panels when `t.cols
    /// > NR`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile<const R: usize>(t: &Tile<'_>, r0: usize, out: &mut [f32], residual: Option<&[f32]>) {
        if t.cols > NR {
            tile_h::<R, 2>(t, r0, out, residual)
        } else {
            tile_h::<R, 1>(t, r0, out, residual)
        }
    }
}

/// A depthwise convolution's filters: one `kh x kw` filter and one bias
/// per channel, stored tap-major (`[kh * kw][c]`) so that a tap reads the
/// filters of consecutive channels as one vector.
#[derive(Debug, Clone)]
pub struct Depthwise {
    pub kh: usize,
    pub kw: usize,
    pub c: usize,
    /// Tap-major filters on a 64-byte boundary.
    weights: Aligned,
    bias: Vec<f32>,
}

impl Depthwise {
    /// Filters from `weight(channel, ky, kx)` and `bias[channel]`.
    ///
    /// # Panics
    /// If `bias.len() != c`.
    pub fn from_fn(c: usize, kh: usize, kw: usize, bias: &[f32], weight: impl Fn(usize, usize, usize) -> f32) -> Self {
        assert_eq!(bias.len(), c);
        let mut weights = Aligned::zeros(kh * kw * c);
        let wd = weights.as_mut_slice();
        for ky in 0..kh {
            for kx in 0..kw {
                for ch in 0..c {
                    wd[(ky * kw + kx) * c + ch] = weight(ch, ky, kx);
                }
            }
        }
        Depthwise { kh, kw, c, weights, bias: bias.to_vec() }
    }
}

/// Spatial geometry of a convolution or pooling window: stride, dilation
/// and the zero padding before the first row / column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub kh: usize,
    pub kw: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    pub dilation_h: usize,
    pub dilation_w: usize,
    pub pad_top: usize,
    pub pad_left: usize,
}

impl Window {
    /// Input row of output row `oy`, tap `ky` (may fall in the padding).
    #[inline]
    pub(crate) fn iy(&self, oy: usize, ky: usize) -> isize {
        (oy * self.stride_h + ky * self.dilation_h) as isize - self.pad_top as isize
    }
    #[inline]
    pub(crate) fn ix(&self, ox: usize, kx: usize) -> isize {
        (ox * self.stride_w + kx * self.dilation_w) as isize - self.pad_left as isize
    }
}

/// Depthwise convolution of an `h x w x c` image into `oh x ow x c`,
/// then the activation.
///
/// # Panics
/// If the buffers do not have the stated sizes or `dw.c != c`.
#[allow(clippy::too_many_arguments)]
pub fn depthwise(
    x: &[f32],
    h: usize,
    w: usize,
    dw: &Depthwise,
    win: &Window,
    oh: usize,
    ow: usize,
    out: &mut [f32],
    act: Activation,
) {
    depthwise_part(x, h, w, dw, 0..dw.c, win, oh, ow, out, act);
}

/// [`depthwise`] of the filters `channels` only: `x` is an `h x w x c`
/// image of those channels alone (`c = channels.len()`), `out` gets
/// `oh x ow x c`. The values are those the same channels get from
/// [`depthwise`] on the whole image, bit for bit (channels never mix).
///
/// # Panics
/// If the buffers do not have the stated sizes or `channels` is not within `0..dw.c`.
#[allow(clippy::too_many_arguments)]
pub fn depthwise_part(
    x: &[f32],
    h: usize,
    w: usize,
    dw: &Depthwise,
    channels: std::ops::Range<usize>,
    win: &Window,
    oh: usize,
    ow: usize,
    out: &mut [f32],
    act: Activation,
) {
    let c = channels.len();
    assert_eq!(x.len(), h * w * c, "input size");
    assert_eq!(out.len(), oh * ow * c, "output size");
    let mut rows: Vec<Option<&[f32]>> = vec![None; win.kh];
    for oy in 0..oh {
        for (ky, r) in rows.iter_mut().enumerate() {
            let iy = win.iy(oy, ky);
            *r = (iy >= 0 && iy < h as isize).then(|| &x[iy as usize * w * c..(iy as usize + 1) * w * c]);
        }
        depthwise_row_part(&rows, w, dw, channels.clone(), win, ow, &mut out[oy * ow * c..(oy + 1) * ow * c], act);
    }
}

/// [`depthwise`] with output rows spread over the current rayon pool
/// (same values).
///
/// # Panics
/// As [`depthwise`].
#[allow(clippy::too_many_arguments)]
pub fn depthwise_par(
    x: &[f32],
    h: usize,
    w: usize,
    dw: &Depthwise,
    win: &Window,
    oh: usize,
    ow: usize,
    out: &mut [f32],
    act: Activation,
) {
    use rayon::prelude::*;
    let c = dw.c;
    if rayon::current_num_threads() <= 1 || oh * ow * c * win.kh * win.kw < PAR_MIN_WORK / 4 || oh < 2 {
        return depthwise(x, h, w, dw, win, oh, ow, out, act);
    }
    assert_eq!(x.len(), h * w * c, "input size");
    assert_eq!(out.len(), oh * ow * c, "output size");
    out.par_chunks_mut(ow * c).enumerate().for_each(|(oy, orow)| {
        let mut rows: Vec<Option<&[f32]>> = vec![None; win.kh];
        for (ky, r) in rows.iter_mut().enumerate() {
            let iy = win.iy(oy, ky);
            *r = (iy >= 0 && iy < h as isize).then(|| &x[iy as usize * w * c..(iy as usize + 1) * w * c]);
        }
        depthwise_row(&rows, w, dw, win, ow, orow, act);
    });
}

/// One output row of a depthwise convolution: `rows[ky]` is the input row
/// (`w x c` values) tap row `ky` reads, `None` where it falls in the
/// padding; `out` gets `ow x c` values.
///
/// # Panics
/// If `rows` has not `kh` entries or a slice has the wrong length.
pub fn depthwise_row(rows: &[Option<&[f32]>], w: usize, dw: &Depthwise, win: &Window, ow: usize, out: &mut [f32], act: Activation) {
    depthwise_row_part(rows, w, dw, 0..dw.c, win, ow, out, act);
}

/// [`depthwise_row`] of the filters `channels` only, on rows of those
/// channels alone (`w x channels.len()` values in, `ow x channels.len()`
/// out); the same values as those channels get from [`depthwise_row`].
///
/// # Panics
/// As [`depthwise_row`], and if `channels` is not within `0..dw.c`.
#[allow(clippy::too_many_arguments)]
pub fn depthwise_row_part(
    rows: &[Option<&[f32]>],
    w: usize,
    dw: &Depthwise,
    channels: std::ops::Range<usize>,
    win: &Window,
    ow: usize,
    out: &mut [f32],
    act: Activation,
) {
    assert!(channels.start <= channels.end && channels.end <= dw.c, "channel range");
    let c = channels.len();
    assert!(win.kh == dw.kh && win.kw == dw.kw && rows.len() == dw.kh, "filter and window sizes");
    assert_eq!(out.len(), ow * c, "output row size");
    assert!(rows.iter().flatten().all(|r| r.len() == w * c), "input row size");
    let bounds = act.clamp_bounds();
    let (lo, hi) = bounds.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
    // filters and biases from the first channel on, tap stride dw.c: every
    // index below stays within them (channels.end <= dw.c)
    let row = DwRow {
        rows,
        w,
        c,
        wts: &dw.weights.as_slice()[channels.start..],
        wstride: dw.c,
        bias: &dw.bias[channels.start..],
        win,
        ow,
        lo,
        hi,
    };
    match kernels() {
        #[cfg(target_arch = "x86_64")]
        simd @ (Simd::Avx512 | Simd::Avx2) => {
            // channels 0..c16 in blocks of 16 (AVX-512), c16..c8 in blocks
            // of 8, the last c % 8 value by value
            let c8 = c / 8 * 8;
            let c16 = if simd == Simd::Avx512 { c / 16 * 16 } else { 0 };
            // SAFETY: AVX-512F (if c16 > 0), AVX2 and FMA are available
            // (`kernels()` found them); the kernels index within the rows,
            // the filters and `out` (sizes asserted above), channels within 0..c.
            unsafe {
                if c16 > 0 {
                    dw_avx512::row(&row, 0, c16, out);
                }
                dw_avx2::row(&row, c16, c8, out);
            }
            if c8 < c {
                for ox in 0..ow {
                    row.pixel(ox, c8, c, out);
                }
            }
        }
        _ => row.portable(out),
    }
    if bounds.is_none() {
        act.apply_slice(out);
    }
}

/// One output row of [`depthwise_row`].
struct DwRow<'a> {
    rows: &'a [Option<&'a [f32]>],
    w: usize,
    /// Channels of the rows and of the output (stride of a pixel).
    c: usize,
    /// Filters of the first channel on: tap `t` of channel `ch` at `t * wstride + ch`.
    wts: &'a [f32],
    wstride: usize,
    /// Biases from the first channel on.
    bias: &'a [f32],
    win: &'a Window,
    ow: usize,
    lo: f32,
    hi: f32,
}

impl DwRow<'_> {
    fn kx_range(&self, ox: usize) -> (usize, usize) {
        let mut a = 0;
        while a < self.win.kw && self.win.ix(ox, a) < 0 {
            a += 1;
        }
        let mut b = self.win.kw;
        while b > a && self.win.ix(ox, b - 1) >= self.w as isize {
            b -= 1;
        }
        (a, b)
    }

    /// Channels `c0..c1` of output pixel `ox`, one value at a time.
    fn pixel(&self, ox: usize, c0: usize, c1: usize, out: &mut [f32]) {
        let (c, kw) = (self.c, self.win.kw);
        let (kx0, kx1) = self.kx_range(ox);
        for ch in c0..c1 {
            let mut acc = self.bias[ch];
            for (ky, row) in self.rows.iter().enumerate() {
                let Some(row) = row else { continue };
                for kx in kx0..kx1 {
                    let ix = self.win.ix(ox, kx) as usize;
                    acc = row[ix * c + ch].mul_add(self.wts[(ky * kw + kx) * self.wstride + ch], acc);
                }
            }
            out[ox * c + ch] = clamp(acc, self.lo, self.hi);
        }
    }

    fn portable(&self, out: &mut [f32]) {
        for ox in 0..self.ow {
            self.pixel(ox, 0, self.c, out);
        }
    }
}

/// Generates a module of depthwise kernels for one vector width: the
/// vector type, its lane count (channels per block), the target feature
/// its kernels are compiled for, and its intrinsics (unaligned load and
/// store, fused multiply-add, min, max, broadcast, zero). Instantiated
/// for AVX2 (8 lanes, [`dw_avx2`]) and AVX-512 (16 lanes, [`dw_avx512`]):
/// one definition of each kernel, so both widths perform the same
/// operations, value by value (channels never mix, so the values of a
/// 16-channel block are those of its two 8-channel halves).
macro_rules! dw_kernels {
    (
        $(#[$doc:meta])*
        mod $name:ident: $feature:literal, $v:ident x $lanes:literal;
        $load:ident, $store:ident, $fmadd:ident, $min:ident, $max:ident, $set1:ident, $zero:ident;
    ) => {
        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        mod $name {
            use super::DwRow;
            use std::arch::x86_64::{$fmadd as fmadd, $load as loadu, $max as max, $min as min, $set1 as set1, $store as storeu, $v as V, $zero as zero};

            /// Channels per block (lanes of a vector).
            const L: usize = $lanes;
            /// [`whole`] sums two blocks together when a run has fewer
            /// pixels than this.
            const PAIR_BELOW: usize = 6;

            /// `min(max(v, lo), hi)`: max then min, as `clamp` (NaN-free
            /// inputs give the same bits).
            #[target_feature(enable = $feature)]
            #[inline]
            fn clamp(v: V, lo: V, hi: V) -> V {
                min(max(v, lo), hi)
            }

            /// Channels `c0..c1` (a multiple of [`L`] of them) of one output
            /// row. When the window is 3 or 5 wide with stride 1 or 2 and no
            /// dilation, the narrow rows of EfficientNet-Lite at small inputs
            /// (3, 6 or 12 pixels, see [`narrow_row`]) go by [`whole`]; other
            /// rows go in chunks of up to 8 pixels x [`L`] channels
            /// ([`chunk`]), edges included; on rows wide enough (stride 2 and
            /// at least 7 outputs, or 3 wide and at least 24 outputs), the
            /// pixels whose windows lie inside the row go by [`interior`] in
            /// runs of 8 and 4 (no padding test, faster there), the others by
            /// [`chunk`]. Other windows go one pixel at a time ([`single`]).
            /// Every path performs the same operations.
            ///
            /// # Safety
            /// The target features must be available; `out` has `ow * c`
            /// values and every present row `w * c`; `c0 <= c1 <= c`, `c1 - c0`
            /// a multiple of [`L`].
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn row(r: &DwRow<'_>, c0: usize, c1: usize, out: &mut [f32]) {
                if c0 >= c1 {
                    return;
                }
                let known = r.win.dilation_w == 1 && matches!((r.win.kw, r.win.stride_w), (3, 1) | (3, 2) | (5, 1) | (5, 2));
                if known && narrow_row(r, c0, c1, out) {
                    // done by a whole-row kernel
                } else if known && ((r.win.stride_w == 2 && r.ow >= 7) || (r.win.kw == 3 && r.ow >= 24)) {
                    let (k, st, pad) = (r.win.kw, r.win.stride_w, r.win.pad_left);
                    // interior pixels a..b: every tap column inside the row
                    let a = pad.div_ceil(st).min(r.ow);
                    let b = if r.w + pad >= k { ((r.w + pad - k) / st + 1).min(r.ow).max(a) } else { a };
                    if a > 0 {
                        edge(r, 0, a, c0, c1, out);
                    }
                    let mut ox = a;
                    while ox + 4 <= b {
                        let wide = ox + 8 <= b;
                        match (k, st, wide) {
                            (3, 1, true) => interior::<3, 1, 8>(r, ox, c0, c1, out),
                            (5, 1, true) => interior::<5, 1, 8>(r, ox, c0, c1, out),
                            (3, 2, true) => interior::<3, 2, 8>(r, ox, c0, c1, out),
                            (5, 2, true) => interior::<5, 2, 8>(r, ox, c0, c1, out),
                            (3, 1, false) => interior::<3, 1, 4>(r, ox, c0, c1, out),
                            (5, 1, false) => interior::<5, 1, 4>(r, ox, c0, c1, out),
                            (3, 2, false) => interior::<3, 2, 4>(r, ox, c0, c1, out),
                            _ => interior::<5, 2, 4>(r, ox, c0, c1, out),
                        }
                        ox += if wide { 8 } else { 4 };
                    }
                    while ox < r.ow {
                        let n = (r.ow - ox).min(8);
                        edge(r, ox, n, c0, c1, out);
                        ox += n;
                    }
                } else if known {
                    let mut ox = 0;
                    while ox < r.ow {
                        let n = (r.ow - ox).min(8);
                        edge(r, ox, n, c0, c1, out);
                        ox += n;
                    }
                } else {
                    for ox in 0..r.ow {
                        single(r, ox, c0, c1, out);
                    }
                }
            }

            /// The narrow rows of EfficientNet-Lite's depthwise layers at
            /// small inputs (3, 6 or 12 output pixels: "same" padding, stride
            /// 1, or stride 2 from 12 or 6 columns) by [`whole`], with the
            /// row's width and padding known at compile time. Returns whether
            /// the row was one of them (then channels `c0..c1` are done).
            ///
            /// # Safety
            /// As [`row`], the window 3 or 5 wide with stride 1 or 2, no
            /// dilation.
            #[target_feature(enable = $feature)]
            unsafe fn narrow_row(r: &DwRow<'_>, c0: usize, c1: usize, out: &mut [f32]) -> bool {
                match (r.win.kw, r.win.stride_w, r.win.pad_left, r.w, r.ow) {
                    (3, 1, 1, 3, 3) => whole::<3, 1, 1, 3, 0, 3>(r, c0, c1, out),
                    (3, 1, 1, 6, 6) => whole::<3, 1, 1, 6, 0, 6>(r, c0, c1, out),
                    (3, 1, 1, 12, 12) => {
                        whole::<3, 1, 1, 12, 0, 6>(r, c0, c1, out);
                        whole::<3, 1, 1, 12, 6, 6>(r, c0, c1, out);
                    }
                    (5, 1, 2, 3, 3) => whole::<5, 1, 2, 3, 0, 3>(r, c0, c1, out),
                    (5, 1, 2, 6, 6) => whole::<5, 1, 2, 6, 0, 6>(r, c0, c1, out),
                    (5, 1, 2, 12, 12) => {
                        whole::<5, 1, 2, 12, 0, 6>(r, c0, c1, out);
                        whole::<5, 1, 2, 12, 6, 6>(r, c0, c1, out);
                    }
                    (3, 2, 0, 12, 6) => whole::<3, 2, 0, 12, 0, 6>(r, c0, c1, out),
                    (5, 2, 1, 6, 3) => whole::<5, 2, 1, 6, 0, 3>(r, c0, c1, out),
                    _ => return false,
                }
                true
            }

            /// Output pixels `P0..P0 + P` of a row of `W` input columns, for
            /// a `K`-wide window with stride `S` and `PAD` padding columns on
            /// the left, channels `c0..c1`: which taps of which pixel fall in
            /// the padding is known at compile time, so the loops (unrolled)
            /// hold no test. Per tap, the filter vector is loaded once and
            /// each pixel's input column read; two blocks of [`L`] channels
            /// go together when the pixels are fewer than [`PAIR_BELOW`]
            /// (more independent sums, to hide the FMA latency). A pixel's
            /// taps come in the order of `(ky, kx)`, padding skipped, exactly
            /// as in [`single`], so the values are the same bits.
            ///
            /// # Safety
            /// As [`row`], and `r.w == W`, `r.win.kw == K`, `r.win.stride_w ==
            /// S`, `r.win.pad_left == PAD`, `P0 + P <= r.ow`.
            #[target_feature(enable = $feature)]
            unsafe fn whole<const K: usize, const S: usize, const PAD: usize, const W: usize, const P0: usize, const P: usize>(
                r: &DwRow<'_>,
                c0: usize,
                c1: usize,
                out: &mut [f32],
            ) {
                let mut cb = c0;
                if P < PAIR_BELOW {
                    while cb + 2 * L <= c1 {
                        whole_blocks::<K, S, PAD, W, P0, P, 2>(r, cb, out);
                        cb += 2 * L;
                    }
                }
                while cb < c1 {
                    whole_blocks::<K, S, PAD, W, P0, P, 1>(r, cb, out);
                    cb += L;
                }
            }

            /// [`whole`] on channels `cb..cb + L B`.
            ///
            /// # Safety
            /// As [`whole`], and `cb + L B <= c1`.
            #[target_feature(enable = $feature)]
            #[inline]
            #[allow(clippy::needless_range_loop)] // `p` also gives the input column
            unsafe fn whole_blocks<const K: usize, const S: usize, const PAD: usize, const W: usize, const P0: usize, const P: usize, const B: usize>(
                r: &DwRow<'_>,
                cb: usize,
                out: &mut [f32],
            ) {
                // SAFETY (of the loads and stores below): a present row holds
                // `W` columns of `c` values and only columns `j - PAD < W` are
                // read; channels `cb + L b + L <= c1 <= c`; tap `(ky, kx)` of
                // the filters is within `wts` as in the other kernels; output
                // pixel `P0 + p < ow`, and `out` has `ow * c` values.
                let c = r.c;
                let lo = set1(r.lo);
                let hi = set1(r.hi);
                let (wp, ws) = (r.wts.as_ptr(), r.wstride);
                let mut acc = [[zero(); P]; B];
                for (b, a) in acc.iter_mut().enumerate() {
                    *a = [loadu(r.bias.as_ptr().add(cb + L * b)); P];
                }
                for (ky, row) in r.rows.iter().enumerate() {
                    let Some(row) = row else { continue };
                    let xb = row.as_ptr().add(cb);
                    for kx in 0..K {
                        let mut wv = [zero(); B];
                        for (b, v) in wv.iter_mut().enumerate() {
                            *v = loadu(wp.add((ky * K + kx) * ws + cb + L * b));
                        }
                        for p in 0..P {
                            // input column of pixel P0 + p, tap kx (constant)
                            let j = (P0 + p) * S + kx;
                            if j < PAD || j - PAD >= W {
                                continue;
                            }
                            let xp = xb.add((j - PAD) * c);
                            for b in 0..B {
                                acc[b][p] = fmadd(loadu(xp.add(L * b)), wv[b], acc[b][p]);
                            }
                        }
                    }
                }
                for (b, a) in acc.iter().enumerate() {
                    for (p, v) in a.iter().enumerate() {
                        storeu(out.as_mut_ptr().add((P0 + p) * c + cb + L * b), clamp(*v, lo, hi));
                    }
                }
            }

            /// Output pixels `ox..ox + n` (`n <= P`, `P` sums in registers),
            /// channels `c0..c1` in blocks of [`L`], for a `K`-wide window
            /// with stride `S`: per tap row, the `K` filter vectors stay in
            /// registers and each input column is loaded once for the pixels
            /// that read it. Columns in the padding are skipped, and a pixel's
            /// taps come in the order of `kx`, exactly as in [`single`].
            #[target_feature(enable = $feature)]
            unsafe fn chunk<const K: usize, const S: usize, const P: usize>(r: &DwRow<'_>, ox: usize, n: usize, c0: usize, c1: usize, out: &mut [f32]) {
                let c = r.c;
                let lo = set1(r.lo);
                let hi = set1(r.hi);
                // input column of j = 0; pixel p reads j = p S + kx
                let b0 = (ox * S) as isize - r.win.pad_left as isize;
                let j_lo = (-b0).max(0) as usize;
                let j_hi = ((r.w as isize - b0).max(0) as usize).min((n - 1) * S + K);
                let (wp, ws) = (r.wts.as_ptr(), r.wstride);
                let mut cb = c0;
                while cb < c1 {
                    let b = loadu(r.bias.as_ptr().add(cb));
                    let mut acc = [b; P];
                    for (ky, row) in r.rows.iter().enumerate() {
                        let Some(row) = row else { continue };
                        let mut wv = [zero(); K];
                        for (kx, v) in wv.iter_mut().enumerate() {
                            *v = loadu(wp.add((ky * K + kx) * ws + cb));
                        }
                        for j in 0..(P - 1) * S + K {
                            if j < j_lo {
                                continue;
                            }
                            if j >= j_hi {
                                break;
                            }
                            // an input column inside the image (pixels past n
                            // read only such columns too; they are not stored)
                            let xv = loadu(row.as_ptr().add((b0 + j as isize) as usize * c + cb));
                            for (p, a) in acc.iter_mut().enumerate() {
                                if j >= p * S && j - p * S < K {
                                    *a = fmadd(xv, wv[j - p * S], *a);
                                }
                            }
                        }
                    }
                    for (p, a) in acc.iter().enumerate() {
                        if p < n {
                            storeu(out.as_mut_ptr().add((ox + p) * c + cb), clamp(*a, lo, hi));
                        }
                    }
                    cb += L;
                }
            }

            /// [`chunk`] of pixels `ox..ox + n` (`n <= 8`) for the window of
            /// `r` (3 or 5 wide, stride 1 or 2), with 1, 2, 4 or 8 sums in
            /// registers (the fewest that hold the `n` pixels).
            #[target_feature(enable = $feature)]
            unsafe fn edge(r: &DwRow<'_>, ox: usize, n: usize, c0: usize, c1: usize, out: &mut [f32]) {
                #[target_feature(enable = $feature)]
                unsafe fn by_width<const K: usize, const S: usize>(r: &DwRow<'_>, ox: usize, n: usize, c0: usize, c1: usize, out: &mut [f32]) {
                    match n {
                        1 => chunk::<K, S, 1>(r, ox, n, c0, c1, out),
                        2 => chunk::<K, S, 2>(r, ox, n, c0, c1, out),
                        3 | 4 => chunk::<K, S, 4>(r, ox, n, c0, c1, out),
                        _ => chunk::<K, S, 8>(r, ox, n, c0, c1, out),
                    }
                }
                match (r.win.kw, r.win.stride_w) {
                    (3, 1) => by_width::<3, 1>(r, ox, n, c0, c1, out),
                    (5, 1) => by_width::<5, 1>(r, ox, n, c0, c1, out),
                    (3, 2) => by_width::<3, 2>(r, ox, n, c0, c1, out),
                    _ => by_width::<5, 2>(r, ox, n, c0, c1, out),
                }
            }

            /// Output pixels `ox..ox + P` whose windows lie inside the row (no
            /// padding column), channels `c0..c1` in blocks of [`L`], for a
            /// `K`-wide window with stride `S`: `P` sums in registers; per tap
            /// the filter vector is loaded once and each pixel's input column
            /// read (loops of fixed length, unrolled). A pixel's taps come in
            /// the order of `(ky, kx)`, exactly as in [`single`], so the
            /// values are the same bits.
            ///
            /// # Safety
            /// As [`row`], and `ox * S >= pad_left`, `(ox + P - 1) * S + K <=
            /// w + pad_left`.
            #[target_feature(enable = $feature)]
            unsafe fn interior<const K: usize, const S: usize, const P: usize>(r: &DwRow<'_>, ox: usize, c0: usize, c1: usize, out: &mut [f32]) {
                let c = r.c;
                let lo = set1(r.lo);
                let hi = set1(r.hi);
                let x0 = ox * S - r.win.pad_left; // first input column
                let (wp, ws) = (r.wts.as_ptr(), r.wstride);
                let mut cb = c0;
                while cb < c1 {
                    let b = loadu(r.bias.as_ptr().add(cb));
                    let mut acc = [b; P];
                    for (ky, row) in r.rows.iter().enumerate() {
                        let Some(row) = row else { continue };
                        let xb = row.as_ptr().add(x0 * c + cb);
                        for kx in 0..K {
                            let wv = loadu(wp.add((ky * K + kx) * ws + cb));
                            for (p, a) in acc.iter_mut().enumerate() {
                                *a = fmadd(loadu(xb.add((p * S + kx) * c)), wv, *a);
                            }
                        }
                    }
                    for (p, a) in acc.iter().enumerate() {
                        storeu(out.as_mut_ptr().add((ox + p) * c + cb), clamp(*a, lo, hi));
                    }
                    cb += L;
                }
            }

            /// Channels `c0..c1` of one output pixel, any window: four blocks
            /// of [`L`] channels at a time (four independent sums, so the FMA
            /// latency is hidden), then the remaining blocks one by one.
            #[target_feature(enable = $feature)]
            unsafe fn single(r: &DwRow<'_>, ox: usize, c0: usize, c1: usize, out: &mut [f32]) {
                let (c, kw) = (r.c, r.win.kw);
                let (kx0, kx1) = r.kx_range(ox);
                let lo = set1(r.lo);
                let hi = set1(r.hi);
                let (wp, ws) = (r.wts.as_ptr(), r.wstride);
                let bp = r.bias.as_ptr();
                let op = out.as_mut_ptr().add(ox * c);
                let mut cb = c0;
                while cb + 4 * L <= c1 {
                    let mut acc = [loadu(bp.add(cb)), loadu(bp.add(cb + L)), loadu(bp.add(cb + 2 * L)), loadu(bp.add(cb + 3 * L))];
                    for (ky, row) in r.rows.iter().enumerate() {
                        let Some(row) = row else { continue };
                        for kx in kx0..kx1 {
                            let ix = r.win.ix(ox, kx) as usize;
                            let wv = wp.add((ky * kw + kx) * ws + cb);
                            let xv = row.as_ptr().add(ix * c + cb);
                            for (j, a) in acc.iter_mut().enumerate() {
                                *a = fmadd(loadu(xv.add(L * j)), loadu(wv.add(L * j)), *a);
                            }
                        }
                    }
                    for (j, a) in acc.iter().enumerate() {
                        storeu(op.add(cb + L * j), clamp(*a, lo, hi));
                    }
                    cb += 4 * L;
                }
                while cb < c1 {
                    let mut acc = loadu(bp.add(cb));
                    for (ky, row) in r.rows.iter().enumerate() {
                        let Some(row) = row else { continue };
                        for kx in kx0..kx1 {
                            let ix = r.win.ix(ox, kx) as usize;
                            let wv = loadu(wp.add((ky * kw + kx) * ws + cb));
                            acc = fmadd(loadu(row.as_ptr().add(ix * c + cb)), wv, acc);
                        }
                    }
                    storeu(op.add(cb), clamp(acc, lo, hi));
                    cb += L;
                }
            }
        }
    };
}

dw_kernels! {
    /// The depthwise kernels on blocks of 8 channels (`__m256`, AVX2 and
    /// FMA): the whole row where the CPU has no AVX-512F, else the last
    /// block of 8 channels when `c % 16 >= 8`.
    mod dw_avx2: "avx2,fma", __m256 x 8;
    _mm256_loadu_ps, _mm256_storeu_ps, _mm256_fmadd_ps, _mm256_min_ps, _mm256_max_ps, _mm256_set1_ps, _mm256_setzero_ps;
}

dw_kernels! {
    /// The depthwise kernels on blocks of 16 channels (`__m512`, AVX-512F),
    /// where the CPU has it: channels `0..c / 16 * 16`.
    mod dw_avx512: "avx512f", __m512 x 16;
    _mm512_loadu_ps, _mm512_storeu_ps, _mm512_fmadd_ps, _mm512_min_ps, _mm512_max_ps, _mm512_set1_ps, _mm512_setzero_ps;
}

/// Gather the `kh x kw x c` input patches of output pixels `p0..p0 + n`
/// (pixel index `oy * ow + ox`) of channels `c0..c0 + cg` into rows of
/// `kh * kw * cg` values, `(ky, kx, channel)` order, zeros for padding.
///
/// # Panics
/// If `cols` is shorter than `n * kh * kw * cg`.
#[allow(clippy::too_many_arguments)]
pub fn im2col(
    x: &[f32],
    h: usize,
    w: usize,
    c: usize,
    c0: usize,
    cg: usize,
    win: &Window,
    ow: usize,
    p0: usize,
    n: usize,
    cols: &mut [f32],
) {
    let kk = win.kh * win.kw * cg;
    assert!(cols.len() >= n * kk);
    for i in 0..n {
        let (oy, ox) = ((p0 + i) / ow, (p0 + i) % ow);
        let row = &mut cols[i * kk..(i + 1) * kk];
        for ky in 0..win.kh {
            let iy = win.iy(oy, ky);
            let (ix0, ix1) = (win.ix(ox, 0), win.ix(ox, win.kw - 1));
            if cg == c && win.dilation_w == 1 && iy >= 0 && iy < h as isize && ix0 >= 0 && ix1 < w as isize {
                // the whole tap row is one contiguous run of kw * c values
                let s = (iy as usize * w + ix0 as usize) * c;
                row[ky * win.kw * cg..(ky + 1) * win.kw * cg].copy_from_slice(&x[s..s + win.kw * c]);
                continue;
            }
            for kx in 0..win.kw {
                let ix = win.ix(ox, kx);
                let dst = &mut row[(ky * win.kw + kx) * cg..(ky * win.kw + kx + 1) * cg];
                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                    dst.fill(0.0);
                } else {
                    let s = (iy as usize * w + ix as usize) * c + c0;
                    dst.copy_from_slice(&x[s..s + cg]);
                }
            }
        }
    }
}

/// Mean over all pixels of an `n_pixels x c` image: `c` values, each the
/// in-order sum divided by `n_pixels`.
pub fn global_avg_pool(x: &[f32], c: usize, out: &mut [f32]) {
    assert_eq!(out.len(), c);
    let n = x.len().checked_div(c).unwrap_or(0);
    out.fill(0.0);
    for px in x.chunks_exact(c) {
        for (o, &v) in out.iter_mut().zip(px) {
            *o += v;
        }
    }
    if n > 0 {
        let inv = n as f32;
        for o in out.iter_mut() {
            *o /= inv;
        }
    }
}

/// Max or average pooling of an `h x w x c` image into `oh x ow x c`.
/// Padding never wins a max; an average divides by the number of taps
/// inside the image, or by `kh * kw` when `count_include_pad`.
#[allow(clippy::too_many_arguments)]
pub fn pool2d(
    x: &[f32],
    h: usize,
    w: usize,
    c: usize,
    win: &Window,
    oh: usize,
    ow: usize,
    max: bool,
    count_include_pad: bool,
    out: &mut [f32],
) {
    assert_eq!(out.len(), oh * ow * c);
    for oy in 0..oh {
        for ox in 0..ow {
            let o = &mut out[(oy * ow + ox) * c..(oy * ow + ox + 1) * c];
            o.fill(if max { f32::NEG_INFINITY } else { 0.0 });
            let mut taps = 0usize;
            for ky in 0..win.kh {
                let iy = win.iy(oy, ky);
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                for kx in 0..win.kw {
                    let ix = win.ix(ox, kx);
                    if ix < 0 || ix >= w as isize {
                        continue;
                    }
                    taps += 1;
                    let s = (iy as usize * w + ix as usize) * c;
                    for (ov, &v) in o.iter_mut().zip(&x[s..s + c]) {
                        if max {
                            if v > *ov {
                                *ov = v;
                            }
                        } else {
                            *ov += v;
                        }
                    }
                }
            }
            if !max {
                let d = if count_include_pad { (win.kh * win.kw) as f32 } else { taps.max(1) as f32 };
                for ov in o.iter_mut() {
                    *ov /= d;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{avx2_only, portable_only};

    /// The kernel families a test compares: the fastest the CPU has
    /// (AVX-512 or AVX2), AVX2, portable.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Path {
        Fastest,
        Avx2,
        Portable,
    }
    const PATHS: [Path; 3] = [Path::Fastest, Path::Avx2, Path::Portable];

    /// Run `f` on this thread with the kernels of `path`.
    fn on_path<R>(path: Path, f: impl FnOnce() -> R) -> R {
        match path {
            Path::Fastest => f(),
            Path::Avx2 => avx2_only(f),
            Path::Portable => portable_only(f),
        }
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// A random GEMM of `m x k` inputs and `k x n` weights (values from
    /// [`lcg`], drawn in the order x, w, b, res), with the weights packed.
    struct GemmCase {
        x: Vec<f32>,
        w: Vec<f32>,
        b: Vec<f32>,
        res: Vec<f32>,
        pm: PackedMatrix,
    }

    impl GemmCase {
        fn random(s: &mut u64, m: usize, k: usize, n: usize) -> Self {
            let x: Vec<f32> = (0..m * k).map(|_| lcg(s)).collect();
            let w: Vec<f32> = (0..k * n).map(|_| lcg(s)).collect();
            let b: Vec<f32> = (0..n).map(|_| lcg(s)).collect();
            let res: Vec<f32> = (0..m * n).map(|_| lcg(s)).collect();
            let pm = PackedMatrix::from_row_major(&w, k, n, &b);
            GemmCase { x, w, b, res, pm }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn naive_gemm(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, b: &[f32], res: Option<&[f32]>, act: Activation) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = b[j] as f64;
                for kk in 0..k {
                    s += x[i * k + kk] as f64 * w[kk * n + j] as f64;
                }
                if let Some(r) = res {
                    s += r[i * n + j] as f64;
                }
                out[i * n + j] = act.apply(s as f32) as f64;
            }
        }
        out
    }

    #[test]
    fn gemm_matches_a_naive_product_and_the_portable_path_bit_for_bit() {
        let mut s = 1u64;
        // n: one panel or several, a last panel of 1-16 columns, an odd
        // number of panels (AVX-512 tiles span two)
        for &(m, k, n) in &[(1, 1, 1), (7, 3, 5), (13, 27, 32), (50, 40, 17), (6, 300, 48), (250, 16, 96), (9, 20, 20), (5, 64, 40), (11, 7, 33), (4, 9, 63)] {
            let GemmCase { x, w, b, res, pm } = GemmCase::random(&mut s, m, k, n);
            for (r, act) in [(None, Activation::None), (Some(&res[..]), Activation::RELU6), (None, Activation::Swish)] {
                let mut fast = vec![0f32; m * n];
                gemm(&x, m, k, &pm, &mut fast, n, r, act);
                for path in [Path::Avx2, Path::Portable] {
                    let mut other = vec![0f32; m * n];
                    on_path(path, || gemm(&x, m, k, &pm, &mut other, n, r, act));
                    assert_eq!(fast, other, "the fastest and the {path:?} paths differ at ({m}, {k}, {n})");
                }
                let want = naive_gemm(&x, m, k, &w, n, &b, r, act);
                for (a, b) in fast.iter().zip(&want) {
                    assert!((*a as f64 - b).abs() <= 1e-5 * (1.0 + k as f64), "{a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn aligned_buffers_start_on_a_cache_line_and_are_reused_in_place() {
        let mut a = Aligned::zeros(5);
        assert_eq!(a.as_ptr() as usize % 64, 0);
        assert_eq!(a.to_vec(), vec![0.0; 5]);
        a.copy_from_slice(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        a.reuse(2);
        assert_eq!(&a[..], &[1.0, 2.0]);
        // growing within the capacity uncovers what the line held
        a.reuse(7);
        assert_eq!(&a[..], &[1.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0]);
        // past it: new lines, zeros, still on a cache line
        a.reuse(40);
        assert_eq!((a.len(), a.capacity()), (40, 48));
        assert_eq!(a.as_ptr() as usize % 64, 0);
        assert!(a[5..].iter().all(|&v| v == 0.0));
        let b: Aligned = (0..20).map(|i| i as f32).collect();
        assert_eq!(b.to_vec(), (0..20).map(|i| i as f32).collect::<Vec<f32>>());
        assert_eq!(Aligned::from(b.to_vec()), b);
        // reuse keeps what the lines held, zeros past the capacity
        let mut c = b.clone();
        c.reuse(3);
        c.reuse(20);
        assert_eq!(c, b);
        c.reuse(40);
        assert_eq!((&c[..20], &c[32..]), (&b[..], &[0.0; 8][..]));
    }

    #[test]
    fn gemm_rows_do_not_depend_on_the_split() {
        let mut s = 5u64;
        let (m, k, n) = (37, 70, 33);
        let x: Vec<f32> = (0..m * k).map(|_| lcg(&mut s)).collect();
        let w: Vec<f32> = (0..k * n).map(|_| lcg(&mut s)).collect();
        let pm = PackedMatrix::from_row_major(&w, k, n, &vec![0.1; n]);
        let mut whole = vec![0f32; m * n];
        gemm(&x, m, k, &pm, &mut whole, n, None, Activation::None);
        let mut parts = vec![0f32; m * n];
        for (r0, r1) in [(0, 5), (5, 6), (6, 20), (20, 37)] {
            gemm(&x[r0 * k..], r1 - r0, k, &pm, &mut parts[r0 * n..], n, None, Activation::None);
        }
        assert_eq!(whole, parts);
    }

    #[test]
    fn gemm_par_by_rows_or_panels_gives_the_bits_of_gemm() {
        let mut s = 7u64;
        // few rows (panels split) and many (rows split); n with a remainder
        // panel of 8 or fewer columns and uneven panel shares; residual or
        // not; clamp, none and a non-clamp activation
        for &(m, k, n) in &[(16, 100, 200), (7, 64, 56), (24, 33, 130), (13, 50, 40), (60, 70, 90), (2, 300, 1000)] {
            let GemmCase { x, res, pm, .. } = GemmCase::random(&mut s, m, k, n);
            let xb = [XBlock { data: &x, ld: k, k }];
            for act in [Activation::None, Activation::RELU6, Activation::Swish] {
                for r in [None, Some(res.as_slice())] {
                    let mut want = vec![0f32; m * n];
                    gemm(&x, m, k, &pm, &mut want, n, r, act);
                    for path in PATHS {
                        for threads in [2, 3] {
                            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                            // the calling worker runs the kernels of
                            // `path`, the others the fastest (a mix gives
                            // the same bits)
                            let run = |f: &(dyn Fn(&mut [f32]) + Sync)| {
                                let mut got = vec![f32::NAN; m * n];
                                pool.install(|| on_path(path, || f(&mut got)));
                                got
                            };
                            let by_cols = run(&|o| gemm_blocks_par_cols(&xb, m, &pm, o, n, r, act, threads));
                            assert_eq!(by_cols, want, "{m}x{k}x{n} {act:?} residual {} {path:?} {threads} threads", r.is_some());
                            let by_rows = run(&|o| gemm_blocks_par_rows(&xb, m, &pm, o, n, r, act));
                            assert_eq!(by_rows, want);
                            assert_eq!(run(&|o| gemm_blocks_par(&xb, m, &pm, o, n, r, act)), want);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn gemm_of_column_blocks_and_panel_ranges_gives_the_same_bits() {
        let mut s = 7u64;
        for &(m, k, n, cut) in &[(13, 37, 40, 16), (6, 50, 33, 1), (25, 96, 17, 95), (1, 20, 48, 7), (8, 30, 70, 12)] {
            let GemmCase { x, res, pm, .. } = GemmCase::random(&mut s, m, k, n);
            // x as two blocks with their own strides: columns 0..cut, cut..k
            let (lda, ldb) = (cut + 3, k - cut + 1);
            let mut xa = vec![f32::NAN; m * lda];
            let mut xb = vec![f32::NAN; m * ldb];
            for r in 0..m {
                xa[r * lda..r * lda + cut].copy_from_slice(&x[r * k..r * k + cut]);
                xb[r * ldb..r * ldb + k - cut].copy_from_slice(&x[r * k + cut..(r + 1) * k]);
            }
            let xs = [XBlock { data: &xa, ld: lda, k: cut }, XBlock { data: &xb, ld: ldb, k: k - cut }];
            for (r, act) in [(None, Activation::None), (Some(&res[..]), Activation::RELU6), (None, Activation::Swish)] {
                let mut whole = vec![0f32; m * n];
                gemm(&x, m, k, &pm, &mut whole, n, r, act);
                for path in PATHS {
                    let mut blocks = vec![0f32; m * n];
                    on_path(path, || gemm_blocks(&xs, m, &pm, 0..pm.panels(), &mut blocks, n, r, act));
                    assert_eq!(blocks, whole, "blocks, ({m}, {k}, {n}), {path:?}");
                    // runs of one, two and three panels from every panel
                    // (AVX-512 tiles pair them from the first of the
                    // range) into a narrow buffer each
                    for (p0, p1) in (1..=3).flat_map(|len| (0..pm.panels()).map(move |p| (p, p + len))).filter(|&(_, p1)| p1 <= pm.panels()) {
                        let (c0, c1) = (p0 * NR, n.min(p1 * NR));
                        let cols = c1 - c0;
                        let mut part = vec![0f32; m * cols];
                        let rp: Option<Vec<f32>> = r.map(|rr| (0..m).flat_map(|i| rr[i * n + c0..i * n + c1].to_vec()).collect());
                        on_path(path, || gemm_blocks(&xs, m, &pm, p0..p1, &mut part, cols, rp.as_deref(), act));
                        for i in 0..m {
                            assert_eq!(part[i * cols..(i + 1) * cols], whole[i * n + c0..i * n + c1], "panels {p0}..{p1}, {path:?}");
                        }
                    }
                }
                // rows over threads
                let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
                let mut par = vec![0f32; m * n];
                pool.install(|| gemm_blocks_par(&xs, m, &pm, &mut par, n, r, act));
                assert_eq!(par, whole);
            }
        }
    }

    /// A random `h x w x c` input and `k x k` depthwise filter (stride,
    /// padding on all sides): (input, filter taps (c, k, k), bias, filter,
    /// window, out height, out width).
    fn random_depthwise(
        s: &mut u64,
        h: usize,
        w: usize,
        c: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>, Depthwise, Window, usize, usize) {
        let x: Vec<f32> = (0..h * w * c).map(|_| lcg(s)).collect();
        let f: Vec<f32> = (0..c * k * k).map(|_| lcg(s)).collect();
        let b: Vec<f32> = (0..c).map(|_| lcg(s)).collect();
        let dw = Depthwise::from_fn(c, k, k, &b, |ch, ky, kx| f[(ch * k + ky) * k + kx]);
        let win = Window { kh: k, kw: k, stride_h: stride, stride_w: stride, dilation_h: 1, dilation_w: 1, pad_top: pad, pad_left: pad };
        (x, f, b, dw, win, (h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1)
    }

    #[test]
    fn depthwise_of_channel_ranges_gives_the_same_bits() {
        let mut s = 11u64;
        // ranges of 16 channels and more or fewer, from a multiple of 16 or
        // not (AVX-512 blocks of 16, AVX2 blocks of 8, single channels)
        for &(h, w, c, k, stride, pad) in &[(9, 11, 37, 3, 1, 1), (12, 10, 40, 5, 2, 2), (4, 4, 21, 5, 1, 2), (3, 3, 56, 5, 1, 2), (7, 30, 48, 3, 2, 1)] {
            let (x, _, _, dw, win, oh, ow) = random_depthwise(&mut s, h, w, c, k, stride, pad);
            let whole = same_on_all_paths(&x, h, w, c, &dw, &win, oh, ow, Activation::RELU6, "");
            for (c0, c1) in [(0, 16), (16, c), (3, 12), (c - 1, c), (5, c), (1, 17), (2, 34), (0, c - 3)].into_iter().filter(|&(_, c1)| c1 <= c) {
                let cw = c1 - c0;
                let xp: Vec<f32> = x.chunks(c).flat_map(|px| px[c0..c1].to_vec()).collect();
                let want: Vec<f32> = whole.chunks(c).flat_map(|px| px[c0..c1].to_vec()).collect();
                for path in PATHS {
                    let mut part = vec![f32::NAN; oh * ow * cw];
                    on_path(path, || depthwise_part(&xp, h, w, &dw, c0..c1, &win, oh, ow, &mut part, Activation::RELU6));
                    assert_eq!(part, want, "channels {c0}..{c1} of {c}, {path:?}");
                }
            }
        }
    }

    /// [`depthwise`] of `x` (`h x w x c`) with `act`, checked: the
    /// fastest (AVX-512 where the CPU has it), AVX2 and portable paths give
    /// the same bits.
    #[allow(clippy::too_many_arguments)]
    fn same_on_all_paths(x: &[f32], h: usize, w: usize, c: usize, dw: &Depthwise, win: &Window, oh: usize, ow: usize, act: Activation, what: &str) -> Vec<f32> {
        let mut fast = vec![0f32; oh * ow * c];
        depthwise(x, h, w, dw, win, oh, ow, &mut fast, act);
        for path in [Path::Avx2, Path::Portable] {
            let mut other = vec![f32::NAN; oh * ow * c];
            on_path(path, || depthwise(x, h, w, dw, win, oh, ow, &mut other, act));
            assert_eq!(fast, other, "the fastest and the {path:?} paths differ{what}");
        }
        fast
    }

    /// [`same_on_all_paths`] without activation, and within 1e-5 of a naive sum.
    #[allow(clippy::too_many_arguments)]
    fn checked_depthwise(x: &[f32], h: usize, w: usize, c: usize, f: &[f32], k: usize, b: &[f32], dw: &Depthwise, win: &Window, oh: usize, ow: usize, what: &str) {
        let fast = same_on_all_paths(x, h, w, c, dw, win, oh, ow, Activation::None, what);
        let want = naive_depthwise(x, h, w, c, f, k, b, win, oh, ow);
        for (a, b) in fast.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn naive_depthwise(x: &[f32], h: usize, w: usize, c: usize, f: &[f32], k: usize, b: &[f32], win: &Window, oh: usize, ow: usize) -> Vec<f32> {
        let mut out = vec![0f32; oh * ow * c];
        for oy in 0..oh {
            for ox in 0..ow {
                for ch in 0..c {
                    let mut s = b[ch] as f64;
                    for ky in 0..k {
                        for kx in 0..k {
                            let (iy, ix) = (win.iy(oy, ky), win.ix(ox, kx));
                            if iy >= 0 && ix >= 0 && iy < h as isize && ix < w as isize {
                                s += x[(iy as usize * w + ix as usize) * c + ch] as f64 * f[(ch * k + ky) * k + kx] as f64;
                            }
                        }
                    }
                    out[(oy * ow + ox) * c + ch] = s as f32;
                }
            }
        }
        out
    }

    #[test]
    fn depthwise_matches_a_naive_sum_and_the_portable_path_bit_for_bit() {
        let mut s = 3u64;
        for &(h, w, c, k, stride, pad) in &[
            (9, 11, 8, 3, 1, 1),
            (12, 10, 20, 5, 2, 2),
            (7, 7, 19, 3, 2, 0),
            (5, 17, 32, 5, 1, 2),
            (1, 1, 8, 3, 1, 1),
            // narrow rows (at most 8 output pixels), every padding case
            (7, 7, 40, 5, 1, 2),
            (4, 4, 36, 5, 1, 2),
            (7, 8, 24, 3, 1, 1),
            (2, 3, 16, 3, 1, 1),
            (13, 13, 24, 3, 2, 1),
            (7, 7, 24, 5, 2, 2),
            (8, 8, 16, 5, 2, 1),
            (8, 6, 16, 3, 2, 0),
            (3, 2, 8, 5, 1, 2),
            // wide rows: interior pixels in runs of 8 and 4 between edge chunks
            (5, 30, 16, 3, 1, 1),
            (4, 27, 21, 3, 1, 0),
            (6, 29, 24, 3, 2, 1),
            (7, 31, 19, 5, 2, 2),
            (5, 21, 8, 5, 2, 0),
            (5, 14, 16, 3, 2, 1),
            // other windows: one pixel at a time, 4 blocks of channels
            // together and single blocks
            (9, 10, 72, 7, 1, 3),
            (8, 9, 37, 4, 3, 1),
            (6, 6, 136, 3, 3, 1),
            (5, 5, 24, 1, 1, 0),
        ] {
            let (x, f, b, dw, win, oh, ow) = random_depthwise(&mut s, h, w, c, k, stride, pad);
            checked_depthwise(&x, h, w, c, &f, k, &b, &dw, &win, oh, ow, "");
        }
    }

    #[test]
    fn depthwise_rows_of_every_width_match_the_portable_path_bit_for_bit() {
        // every run length of the edge chunks (1 to 8 pixels) and of the
        // interior runs, for each window the vector kernels know; channels
        // in AVX-512 and AVX2 blocks (24 = 16 + 8), or AVX-512 blocks and
        // single channels (37 = 32 + 5)
        let mut s = 23u64;
        for c in [24, 37] {
            for k in [3, 5] {
                for stride in [1, 2] {
                    for pad in [0, k / 2, k - 1] {
                        for w in 1..=40 {
                            if w + 2 * pad < k {
                                continue;
                            }
                            let (x, _, _, dw, win, oh, ow) = random_depthwise(&mut s, 5, w, c, k, stride, pad);
                            let what = format!(": width {w}, {c} channels, k {k}, stride {stride}, pad {pad}");
                            same_on_all_paths(&x, 5, w, c, &dw, &win, oh, ow, Activation::RELU6, &what);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn narrow_rows_match_a_naive_sum_and_the_portable_path_bit_for_bit() {
        // the whole-row kernels' shapes ("same" padding as SameUpper gives:
        // `ceil(n / stride)` outputs), channels in blocks of 16, 8 and a
        // remainder, a range of channels, and rows near them that take the
        // other paths
        let mut s = 17u64;
        for &(hw, c, k, stride, pad) in &[
            (3, 48, 3, 1, 1),
            (3, 44, 5, 1, 2),
            (6, 40, 3, 1, 1),
            (6, 37, 5, 1, 2),
            (12, 24, 3, 1, 1),
            (12, 29, 5, 1, 2),
            (12, 40, 3, 2, 0),
            (6, 56, 5, 2, 1),
            (3, 16, 3, 1, 0),
            (6, 24, 5, 2, 2),
            (5, 24, 5, 1, 2),
            (12, 16, 3, 2, 1),
        ] {
            let (x, f, b, dw, win, _, _) = random_depthwise(&mut s, hw, hw, c, k, stride, pad);
            let (oh, ow) = (hw.div_ceil(stride), hw.div_ceil(stride));
            let what = format!(": {hw} x {hw} x {c}, k {k} stride {stride} pad {pad}");
            checked_depthwise(&x, hw, hw, c, &f, k, &b, &dw, &win, oh, ow, &what);
            // a range of channels, with the clamp applied in registers
            let (c0, c1) = (3, c - 2);
            let xp: Vec<f32> = x.chunks(c).flat_map(|px| px[c0..c1].to_vec()).collect();
            let whole = same_on_all_paths(&x, hw, hw, c, &dw, &win, oh, ow, Activation::RELU6, &format!("{what}, ReLU6"));
            let want: Vec<f32> = whole.chunks(c).flat_map(|px| px[c0..c1].to_vec()).collect();
            for path in PATHS {
                let mut part = vec![f32::NAN; oh * ow * (c1 - c0)];
                on_path(path, || depthwise_part(&xp, hw, hw, &dw, c0..c1, &win, oh, ow, &mut part, Activation::RELU6));
                assert_eq!(part, want, "channels {c0}..{c1} of {c}, {path:?}");
            }
        }
    }

    /// Timing, not a check: the row and the panel split of
    /// [`gemm_blocks_par`] on 2 threads, weights cold (12 matrices in
    /// turn), on the shapes of EfficientNet-Lite0's late layers. Run with
    /// `cargo test --release --lib bench_gemm_par_split -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bench_gemm_par_split() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let mut s = 9u64;
        for &(m, k, n) in &[(16, 192, 1152), (16, 1152, 192), (16, 320, 1280), (16, 1152, 320), (49, 112, 672), (49, 672, 112), (49, 320, 1280), (49, 192, 1152), (49, 1152, 192), (36, 192, 1152), (169, 40, 240), (196, 112, 672), (196, 80, 480), (25, 672, 112), (64, 192, 1152)] {
            let x: Vec<f32> = (0..m * k).map(|_| lcg(&mut s)).collect();
            let wms: Vec<PackedMatrix> = (0..12).map(|_| {
                let wv: Vec<f32> = (0..k * n).map(|_| lcg(&mut s)).collect();
                let b: Vec<f32> = (0..n).map(|_| lcg(&mut s)).collect();
                PackedMatrix::from_row_major(&wv, k, n, &b)
            }).collect();
            let mut o = vec![0f32; m * n];
            let mut best = [f64::INFINITY; 2];
            let reps = (20_000_000 / (m * k * n)).max(12);
            pool.install(|| {
                for i in 0..20 {
                    let t = std::time::Instant::now();
                    for rep in 0..reps {
                        let wm = &wms[rep % 12];
                        let xb = [XBlock { data: &x, ld: k, k }];
                        if i % 2 == 0 { gemm_blocks_par_rows(&xb, m, wm, &mut o, n, None, Activation::None) } else { gemm_blocks_par_cols(&xb, m, wm, &mut o, n, None, Activation::None, 2) }
                    }
                    best[i % 2] = best[i % 2].min(t.elapsed().as_secs_f64() / reps as f64);
                }
            });
            let gm = |dt: f64| (m * k * n) as f64 / dt / 1e9;
            println!("{m}x{k}x{n}: rows {:.1} us {:.1} GMAC/s  cols {:.1} us {:.1} GMAC/s  x{:.2}", best[0] * 1e6, gm(best[0]), best[1] * 1e6, gm(best[1]), best[0] / best[1]);
        }
    }

    /// Timing, not a check: [`depthwise`] on the shapes of
    /// EfficientNet-Lite0's depthwise layers at a 96 px input (one thread);
    /// `BENCH_ALIGN=16` (say) puts the input and output 16 bytes past a
    /// multiple of 64.
    /// Run with `cargo test --release --lib bench_depthwise -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bench_depthwise() {
        let mut s = 5u64;
        let mut total = 0.0;
        // (map size, channels, kernel, stride, padding before, layers)
        for &(hw, c, k, stride, pad, n) in &[(48, 32, 3, 1, 1, 1), (48, 96, 3, 2, 0, 1), (24, 144, 3, 1, 1, 1), (24, 144, 5, 2, 1, 1), (12, 240, 5, 1, 2, 1), (12, 240, 3, 2, 0, 1), (6, 480, 3, 1, 1, 2), (6, 480, 5, 1, 2, 1), (6, 672, 5, 1, 2, 2), (6, 672, 5, 2, 1, 1), (3, 1152, 5, 1, 2, 3), (3, 1152, 3, 1, 1, 1)] {
            let (x, _, _, dw, win, _, _) = random_depthwise(&mut s, hw, hw, c, k, stride, pad);
            let (oh, ow) = (hw.div_ceil(stride), hw.div_ceil(stride));
            // the input and the output `BENCH_ALIGN` bytes past a multiple
            // of 64 when set, else where the allocator puts them
            let align: Option<usize> = std::env::var("BENCH_ALIGN").ok().and_then(|v| v.parse().ok());
            let (mut xbuf, mut obuf) = (vec![0f32; x.len() + 32], vec![0f32; oh * ow * c + 32]);
            let skip = |p: *const f32| align.map_or(0, |a| ((p as usize).wrapping_neg() % 64 + a % 64) / 4);
            let (xs, os) = (skip(xbuf.as_ptr()), skip(obuf.as_ptr()));
            xbuf[xs..xs + x.len()].copy_from_slice(&x);
            let x = &xbuf[xs..xs + x.len()];
            let o = &mut obuf[os..os + oh * ow * c];
            let reps = (4_000_000 / (oh * ow * c * k * k)).max(4);
            let mut best = f64::INFINITY;
            for _ in 0..15 {
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    depthwise(x, hw, hw, &dw, &win, oh, ow, o, Activation::RELU6);
                }
                best = best.min(t.elapsed().as_secs_f64() / reps as f64);
            }
            total += best * n as f64;
            println!("{n} x {hw}x{hw}x{c} k{k} s{stride}: {:.1} us {:.2} GMAC/s", best * 1e6, (oh * ow * c * k * k) as f64 / best / 1e9);
        }
        println!("sum over the layers {:.1} us", total * 1e6);
    }

    #[test]
    fn pooling_and_activations() {
        let x: Vec<f32> = (0..2 * 3 * 2).map(|v| v as f32).collect(); // 2 x 3 x 2
        let mut g = vec![0f32; 2];
        global_avg_pool(&x, 2, &mut g);
        assert_eq!(g, vec![5.0, 6.0]);
        let win = Window { kh: 2, kw: 2, stride_h: 2, stride_w: 2, dilation_h: 1, dilation_w: 1, pad_top: 0, pad_left: 0 };
        let mut m = vec![0f32; 2 * 2];
        pool2d(&x, 2, 3, 2, &win, 1, 2, true, false, &mut m);
        assert_eq!(m, vec![8.0, 9.0, 10.0, 11.0]);
        pool2d(&x, 2, 3, 2, &win, 1, 2, false, false, &mut m);
        assert_eq!(m, vec![4.0, 5.0, 7.0, 8.0]);
        assert_eq!(Activation::RELU6.apply(7.5), 6.0);
        assert_eq!(Activation::RELU6.apply(-1.0), 0.0);
        assert!((Activation::Sigmoid.apply(0.0) - 0.5).abs() < 1e-7);
        assert_eq!(Activation::HardSwish.apply(3.0), 3.0);
    }
}
