//! Blocked Householder tridiagonalisation of a dense symmetric matrix.
//!
//! For symmetric $A$ (`n x n`) this computes $A = Q T Q^\top$ with $T$
//! symmetric tridiagonal and $Q = H_0 H_1 \cdots H_{n-3}$ a product of
//! Householder reflectors $H_j = I - \tau_j v_j v_j^\top$. It is the first
//! step of PCA's covariance eigendecomposition: the eigenvectors of $T$,
//! multiplied by $Q$ ([`Tridiagonalization::apply_q`]), are those of $A$.
//!
//! # Algorithm
//!
//! The blocked reduction of Dongarra, Sorensen & Hammarling ("Block
//! reduction of matrices to condensed forms for eigenvalue computations",
//! J. Comput. Appl. Math. 27, 1989), as in LAPACK's `dsytrd` / `dlatrd`
//! (lower-triangle variant):
//!
//! - Columns are reduced 16 at a time (a *panel*). For column $j$ the
//!   panel keeps the reflectors $V$ and vectors $W$ of its earlier columns,
//!   and the trailing matrix $A_0$ as it was when the panel began, so that
//!   the current matrix is $A_0 - V W^\top - W V^\top$. Column $j$ is brought
//!   up to date from $V$ and $W$, its reflector $(v, \tau)$ is generated, and
//!   $w = \tau (A_0 v - V (W^\top v) - W (V^\top v))$,
//!   $w \leftarrow w - \frac{\tau}{2} (w^\top v)\, v$.
//!   The symmetric matrix-vector product $A_0 v$ reads the lower triangle of
//!   the trailing matrix once; it is the only level-2 operation on the big
//!   matrix and dominates the run time.
//! - After the panel the trailing matrix gets the rank-32 update
//!   $A \leftarrow A - V W^\top - W V^\top$ (lower triangle, level 3, by
//!   column blocks through faer's matrix product).
//!
//! Each column costs two parallel passes. The *row pass* finishes the
//! previous column's $w$, updates column $j$ and sums its squares. The
//! *product pass* computes $A_0 v$ by column chunks of the trailing lower
//! triangle (each column block of four is read once for both the
//! $y \mathrel{+}= A_{:,c} v_c$ updates and the dot products $A_{:,c}^\top v$),
//! and, over a share of the rows per chunk, $V^\top v$ and $W^\top v$. The
//! scalar $w^\top v = \tau (v^\top A_0 v - 2 (W^\top v) \cdot (V^\top v))$
//! needs no further pass: $v^\top A_0 v$ is summed inside the product. The
//! subtraction of $V (W^\top v) + W (V^\top v)$ and the final correction
//! of $w$ are done by the next row pass, row by row.
//!
//! $Q$ is applied in the compact WY form of Schreiber & Van Loan (LAPACK
//! `dlarft` / `dlarfb`): 32 consecutive reflectors (two panels) are
//! $I - Y T_b Y^\top$ with $T_b$ upper triangular, so $Q V$ is a sequence of
//! matrix products. $T_b$ is built from the inner products $Y^\top Y$; those
//! within a panel are by-products of the reduction (the $V^\top v$ above),
//! only those across the two panels are computed.
//!
//! # Storage
//!
//! The input is the lower triangle of a row-major matrix. Read backwards,
//! that array is the lower triangle of $J A J$ in column-major order ($J$
//! the exchange matrix that reverses the order of rows), so the reduction
//! runs on $B = J A J = Q_B T_B Q_B^\top$ with contiguous columns, and
//! $T = J T_B J$, $Q = J Q_B J$ (still a product of reflectors; the diagonal
//! and the off-diagonal come out reversed, and [`Tridiagonalization::apply_q`]
//! reverses the rows of its input around $Q_B$).
//!
//! # Determinism
//!
//! Every parallel loop runs over a fixed number of chunks that depends only
//! on the sizes (`n`, the trailing size, `k`), never on the thread count;
//! chunks write disjoint outputs or partial results that are summed in chunk
//! order. The results are therefore bitwise identical whatever the size of
//! the rayon pool. The AVX2 + FMA kernel is chosen at run time
//! (`is_x86_feature_detected!`); other machines use portable code, with
//! results that agree to rounding.

use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self as tri, BlockStructure};
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rayon::prelude::*;
use BlockStructure::{Rectangular as Rect, TriangularLower as Lower, TriangularUpper as Upper};
use BlockStructure::{UnitTriangularLower as UnitLower, UnitTriangularUpper as UnitUpper};

/// Panel width: columns reduced between two updates of the trailing matrix.
const NB: usize = 16;
/// Reflectors per compact-WY block in [`Tridiagonalization::apply_q`]: two
/// panels.
const QB: usize = 2 * NB;
/// Rows handled together in the row pass (its block of `V` and `W` stays in cache).
const SB: usize = 128;
/// Order from which the work runs on the rayon pool, in parallel; below it
/// every loop is sequential.
const PAR_MIN: usize = 128;
/// Trailing size from which the trailing update runs its blocks in parallel.
const UPDATE_SPLIT: usize = 192;
/// Trailing size from which the symmetric product is split into chunks.
const SYMV_SPLIT: usize = 128;
/// Chunks of a split symmetric product.
const SYMV_PARTS: usize = 2;
/// Rows from which the row pass is split in two.
const ROW_SPLIT: usize = 512;
/// Target width of the column chunks of `apply_q`.
const APPLY_W: usize = 96;
/// Column width of the blocks of the trailing update.
const UB: usize = 64;

/// Chunks of the symmetric product for a trailing matrix of size `m`.
fn symv_chunks(m: usize) -> usize {
    if m < SYMV_SPLIT {
        1
    } else {
        SYMV_PARTS
    }
}

/// Chunks of the row pass over `m` rows.
fn row_chunks(m: usize) -> usize {
    if m < ROW_SPLIT {
        1
    } else {
        2
    }
}

/// Column chunks of `apply_q` for `k` columns.
fn apply_chunks(k: usize) -> usize {
    if k < 16 {
        1
    } else {
        k.div_ceil(APPLY_W).clamp(2, 8)
    }
}

/// Boundaries `0 = b_0 < ... < b_K = m` splitting the columns of an `m x m`
/// lower triangle into at most `k` blocks of about equal area (column `c`
/// has `m - c` entries), rounded to multiples of 4.
fn triangle_split(m: usize, k: usize) -> Vec<usize> {
    let mut b = vec![0];
    for i in 1..k {
        let rest = (m as f64) * (1.0 - i as f64 / k as f64).sqrt();
        let c = (m - (rest as usize).min(m)) / 4 * 4;
        if c > *b.last().expect("non-empty") && c < m {
            b.push(c);
        }
    }
    b.push(m);
    b
}

/// `A = Q T Q^T` for symmetric `A`: `T` tridiagonal, `Q = H_0 H_1 ... H_{n-3}`
/// (Householder reflectors; `Q = I` for `n <= 2`).
#[derive(Clone, Debug)]
pub struct Tridiagonalization {
    n: usize,
    /// Diagonal of `T` (`n`).
    d: Vec<f64>,
    /// Off-diagonal of `T` (`n - 1`): `T[i + 1, i] = e[i]`.
    e: Vec<f64>,
    /// The reduced `J A J` (`n x n`, column-major; empty for `n <= 2`):
    /// column `j < n - 2` holds the reflector `v_j` of `Q_B` in rows
    /// `j + 1 ..`, with `v_j[j + 1] = 1`. Other entries are unspecified.
    refl: Vec<f64>,
    /// `tau_j` of the reflectors of `Q_B` (`n - 2`; empty for `n <= 2`).
    tau: Vec<f64>,
    /// Inner products of the reflectors within a panel: `gram[j NB + c] =
    /// v_{p + c}^T v_j` for the panel `p .. p + NB` holding `j` and
    /// `p + c < j` (`(n - 2) NB`; by-products of the reduction).
    gram: Vec<f64>,
}

/// Tridiagonalise the symmetric `n x n` matrix `a` (row-major; only the lower
/// triangle, `a[i * n + j]` with `j <= i`, is read).
///
/// # Panics
/// If `a.len() != n * n`.
pub fn tridiagonalize(a: &[f64], n: usize) -> Tridiagonalization {
    assert_eq!(a.len(), n * n, "tridiagonalize: a must hold n * n values");
    match n {
        0..=2 => {
            let (d, e) = match n {
                0 => (Vec::new(), Vec::new()),
                1 => (vec![a[0]], Vec::new()),
                _ => (vec![a[0], a[3]], vec![a[2]]),
            };
            Tridiagonalization { n, d, e, refl: Vec::new(), tau: Vec::new(), gram: Vec::new() }
        }
        _ => {
            let mut work = vec![0.0; n * n];
            let mut d = vec![0.0; n];
            let mut e = vec![0.0; n - 1];
            let mut tau = vec![0.0; n - 2];
            let mut gram = vec![0.0; (n - 2) * NB];
            let par = n >= PAR_MIN;
            let mut body = || {
                // J A J, column-major: the row-major input backwards.
                let rows = n.div_ceil(2);
                let halves: Vec<_> = work.chunks_mut(rows * n).enumerate().collect();
                run(halves, par, |(i, out)| {
                    for (o, x) in out.iter_mut().zip(a[..n * n - i * rows * n].iter().rev()) {
                        *o = *x;
                    }
                });
                reduce(&mut work, n, &mut Reduced { d: &mut d, e: &mut e, tau: &mut tau, gram: &mut gram });
            };
            if par {
                // Run on a pool thread: the many short parallel loops of the
                // reduction are then cheap joins, not injections from outside.
                rayon::scope(|_| body());
            } else {
                body();
            }
            d.reverse();
            e.reverse();
            Tridiagonalization { n, d, e, refl: work, tau, gram }
        }
    }
}

impl Tridiagonalization {
    /// Order of the matrix.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Diagonal of `T` (`n` values).
    pub fn diagonal(&self) -> &[f64] {
        &self.d
    }

    /// Off-diagonal of `T` (`n - 1` values, none for `n = 0`): `T[i + 1, i]`.
    pub fn off_diagonal(&self) -> &[f64] {
        &self.e
    }

    /// Overwrite `V` by `Q V`. `v` holds `k` column vectors of length `n`, one
    /// after the other (column-major `n x k`: column `c` is
    /// `v[c * n..(c + 1) * n]`).
    ///
    /// Blocked in compact WY form (32 reflectors per block) and parallel over
    /// fixed chunks of columns: the result does not depend on the number of
    /// threads.
    ///
    /// # Panics
    /// If `v.len() != n * k`.
    pub fn apply_q(&self, v: &mut [f64], k: usize) {
        let n = self.n;
        assert_eq!(v.len(), n * k, "apply_q: v must hold n * k values");
        if n < 3 || k == 0 {
            return;
        }
        let par = n >= PAR_MIN;
        let mut body = || {
            let starts: Vec<usize> = (0..n - 2).step_by(QB).collect();
            let blocks = collect(starts, par, |j0| WyBlock::new(self, j0));
            let width = k.div_ceil(apply_chunks(k));
            run(v.chunks_mut(width * n).collect(), par, |vc| {
                let kc = vc.len() / n;
                // Q V = J Q_B J V.
                for col in vc.chunks_mut(n) {
                    col.reverse();
                }
                let mut z = vec![0.0; QB * kc];
                let mut zt = vec![0.0; QB * kc];
                for b in blocks.iter().rev() {
                    b.apply(&self.refl, n, vc, kc, &mut z, &mut zt);
                }
                for col in vc.chunks_mut(n) {
                    col.reverse();
                }
            });
        };
        if par {
            rayon::scope(|_| body());
        } else {
            body();
        }
    }
}

/// `QB` consecutive reflectors `H_{j0} ... H_{j0 + nb - 1} = I - Y T Y^T` of
/// `Q_B`. `Y` is read in place: rows `j0 + 1 .. n` of the reflector columns
/// `j0 .. j0 + nb`, unit lower trapezoidal (its top `nb x nb` block is used
/// as unit lower triangular; what the storage holds on and above its
/// diagonal is never read).
struct WyBlock {
    j0: usize,
    nb: usize,
    /// `T` (`nb x nb`, column-major, upper triangular).
    t: Vec<f64>,
}

impl WyBlock {
    /// Block of the reflectors `j0 .. min(j0 + QB, n - 2)` (LAPACK `dlarft`,
    /// forward, column-wise); `j0` is a multiple of `QB`.
    fn new(tr: &Tridiagonalization, j0: usize) -> Self {
        let n = tr.n;
        let nb = QB.min(n - 2 - j0);
        // Strict upper triangle of G = Y^T Y: within each of the two panels
        // from the reduction, across them by a product over the rows where
        // the second panel's reflectors are nonzero.
        let mut g = Mat::<f64>::zeros(nb, nb);
        for l in 0..nb {
            for c in l / NB * NB..l {
                g[(c, l)] = tr.gram[(j0 + l) * NB + c % NB];
            }
        }
        if nb > NB {
            let y = Self::y(&tr.refl, n, j0, nb);
            let (ya, yb) = y.subrows(NB, y.nrows() - NB).split_at_col(NB);
            let (ya1, ya2) = ya.split_at_row(nb - NB);
            let (yb1, yb2) = yb.split_at_row(nb - NB);
            let mut cross = g.as_mut().submatrix_mut(0, NB, NB, nb - NB);
            tri::matmul(cross.as_mut(), Rect, Accum::Replace, ya1.transpose(), Rect, yb1, UnitLower, 1.0, Par::Seq);
            matmul(cross, Accum::Add, ya2.transpose(), yb2, 1.0, Par::Seq);
        }
        let tau = &tr.tau;
        // T[..c, c] = -tau_c T[..c, ..c] G[..c, c], column by column.
        let mut t = vec![0.0; nb * nb];
        for c in 0..nb {
            let (done, rest) = t.split_at_mut(c * nb);
            let tcol = &mut rest[..nb];
            for p in 0..c {
                let gp = g[(p, c)];
                for (o, x) in tcol[..=p].iter_mut().zip(&done[p * nb..p * nb + p + 1]) {
                    *o += x * gp;
                }
            }
            let tc = tau[j0 + c];
            for o in &mut tcol[..c] {
                *o *= -tc;
            }
            tcol[c] = tc;
        }
        WyBlock { j0, nb, t }
    }

    /// `Y`: rows `j0 + 1 .. n` of the reflector columns `j0 .. j0 + nb`.
    fn y(refl: &[f64], n: usize, j0: usize, nb: usize) -> MatRef<'_, f64> {
        MatRef::from_column_major_slice_with_stride(&refl[j0 + 1 + j0 * n..], n - j0 - 1, nb, n)
    }

    /// `V = (I - Y T Y^T) V` for the `n x kc` column-major `v`; `z` and `zt`
    /// are scratch of at least `nb * kc` values.
    fn apply(&self, refl: &[f64], n: usize, v: &mut [f64], kc: usize, z: &mut [f64], zt: &mut [f64]) {
        let (j0, nb) = (self.j0, self.nb);
        let r0 = j0 + 1;
        let r1 = j0 + nb + 1;
        let (y1, y2) = Self::y(refl, n, j0, nb).split_at_row(nb);
        let z = &mut z[..nb * kc];
        {
            let mut zm = MatMut::from_column_major_slice_mut(z, nb, kc);
            let v1 = MatRef::from_column_major_slice_with_stride(&v[r0..], nb, kc, n);
            let v2 = MatRef::from_column_major_slice_with_stride(&v[r1..], n - r1, kc, n);
            tri::matmul(zm.as_mut(), Rect, Accum::Replace, y1.transpose(), UnitUpper, v1, Rect, 1.0, Par::Seq);
            matmul(zm.as_mut(), Accum::Add, y2.transpose(), v2, 1.0, Par::Seq);
        }
        let zt = &mut zt[..nb * kc];
        let tm = MatRef::from_column_major_slice(&self.t, nb, nb);
        let zm = MatRef::from_column_major_slice(z, nb, kc);
        tri::matmul(MatMut::from_column_major_slice_mut(zt, nb, kc), Rect, Accum::Replace, tm, Upper, zm, Rect, 1.0, Par::Seq);
        let zm = MatRef::from_column_major_slice(zt, nb, kc);
        let v1 = MatMut::from_column_major_slice_with_stride_mut(&mut v[r0..], nb, kc, n);
        tri::matmul(v1, Rect, Accum::Add, y1, UnitLower, zm, Rect, -1.0, Par::Seq);
        let v2 = MatMut::from_column_major_slice_with_stride_mut(&mut v[r1..], n - r1, kc, n);
        matmul(v2, Accum::Add, y2, zm, -1.0, Par::Seq);
    }
}

/// The column of `W` that the previous step left to finish, with what
/// finishing it needs (see [`finish_rows`]).
struct Pending {
    /// `tau` of the previous reflector.
    tau: f64,
    /// `-tau^2 (w^T v) / 2`, `w` the previous vector before scaling by `tau`.
    alpha2: f64,
    /// `W^T v` over the panel's earlier columns.
    t1: [f64; NB],
    /// `V^T v` over the panel's earlier columns.
    t2: [f64; NB],
    /// First row of each chunk's partial product (empty when `tau = 0`).
    starts: Vec<usize>,
}

/// Read-only state of the row pass of column `j`.
struct RowCtx<'a> {
    n: usize,
    j: usize,
    /// Panel columns before `j`.
    l: usize,
    /// Reflector columns of the panel (`l` columns of `n`).
    v: &'a [f64],
    /// Finished columns of `W` (`l - 1` columns of `n`).
    w: &'a [f64],
    /// Partial products of the previous step (chunk `k` at `k * n`).
    parts: &'a [f64],
    pending: Option<&'a Pending>,
    /// `W[j, c]` for `c < l - 1`.
    wj: [f64; NB],
    /// `V[j, c]` for `c < l`.
    vj: [f64; NB],
}

/// Partial sums of the row pass over a block of rows `>= j + 2`.
#[derive(Clone, Copy)]
struct RowSums {
    /// Sum of squares of the updated column.
    ssq: f64,
    /// Largest magnitude in the updated column.
    amax: f64,
}

/// Partial results of one chunk of the symmetric product.
#[derive(Clone, Copy)]
struct SymvSums {
    /// The chunk's share of `v^T A_0 v`.
    quad: f64,
    /// `V^T v` over the chunk's rows (first `l` entries).
    pv: [f64; NB],
    /// `W^T v` over the chunk's rows (first `l` entries).
    pw: [f64; NB],
}

/// Finish rows `r0 .. r0 + out.len()` of the pending column `l - 1` of `W`:
/// `out = tau (sum of partial products - V t1 - W t2) + alpha2 v_{l-1}`.
/// Each row's value depends on nothing but the row (same order of
/// operations whatever the range).
#[inline(always)]
fn finish_rows(ctx: &RowCtx<'_>, p: &Pending, r0: usize, out: &mut [f64]) {
    let (n, l) = (ctx.n, ctx.l);
    let r1 = r0 + out.len();
    out.fill(0.0);
    for (k, &s) in p.starts.iter().enumerate() {
        if s < r1 {
            let lo = s.max(r0);
            for (o, x) in out[lo - r0..].iter_mut().zip(&ctx.parts[k * n + lo..k * n + r1]) {
                *o += *x;
            }
        }
    }
    for c in 0..l - 1 {
        let (a, b) = (p.t1[c], p.t2[c]);
        let vc = &ctx.v[c * n + r0..c * n + r1];
        let wc = &ctx.w[c * n + r0..c * n + r1];
        for ((o, x), y) in out.iter_mut().zip(vc).zip(wc) {
            *o -= a * *x + b * *y;
        }
    }
    let vl = &ctx.v[(l - 1) * n + r0..(l - 1) * n + r1];
    for (o, x) in out.iter_mut().zip(vl) {
        *o = p.tau * *o + p.alpha2 * *x;
    }
}

/// Row pass of column `j` over rows `r0 .. r0 + x.len()` (`>= j`):
/// finish the pending column of `W` on these rows (into `wl`), bring the
/// column `x` up to date with the panel, and return the sum of squares and
/// the largest magnitude over the rows `>= j + 2`.
#[inline(always)]
fn row_pass(ctx: &RowCtx<'_>, r0: usize, x: &mut [f64], wl: &mut [f64]) -> RowSums {
    let (n, j, l) = (ctx.n, ctx.j, ctx.l);
    // W[j, l - 1], computed by every chunk in the same way.
    let wjl = match ctx.pending {
        Some(p) => {
            let mut t = [0.0];
            finish_rows(ctx, p, j, &mut t);
            t[0]
        }
        None => 0.0,
    };
    let mut sums = RowSums { ssq: 0.0, amax: 0.0 };
    let mut b0 = r0;
    for (xb, wb) in x.chunks_mut(SB).zip(wl.chunks_mut(SB)) {
        let b1 = b0 + xb.len();
        if let Some(p) = ctx.pending {
            finish_rows(ctx, p, b0, wb);
            for c in 0..l {
                let vc = &ctx.v[c * n + b0..c * n + b1];
                let (wc, a, b): (&[f64], f64, f64) =
                    if c + 1 < l { (&ctx.w[c * n + b0..c * n + b1], ctx.wj[c], ctx.vj[c]) } else { (wb, wjl, ctx.vj[c]) };
                for ((o, x), y) in xb.iter_mut().zip(vc).zip(wc) {
                    *o -= a * *x + b * *y;
                }
            }
        }
        let lo = (j + 2).max(b0);
        if lo < b1 {
            let xs = &xb[lo - b0..];
            sums.ssq += dot(xs, xs);
            sums.amax = xs.iter().fold(sums.amax, |m, v| m.max(v.abs()));
        }
        b0 = b1;
    }
    sums
}

/// Dot product with eight lanes (vectorisable without reassociation).
#[inline(always)]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// [`row_pass`] through the fastest code for this machine.
fn row_pass_dispatch(ctx: &RowCtx<'_>, r0: usize, x: &mut [f64], wl: &mut [f64]) -> RowSums {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: AVX2 and FMA are available (checked just above).
        return unsafe { avx2::row_pass(ctx, r0, x, wl) };
    }
    row_pass(ctx, r0, x, wl)
}

/// One chunk of the symmetric product with the reflector `v` (length `n`,
/// rows `j + 1 ..` used) for the trailing matrix of column `j`.
struct SymvJob<'a> {
    /// First column of the chunk (global index).
    s: usize,
    /// Columns `s ..` of the chunk (each `n` long, rows `c ..` read).
    cols: &'a [f64],
    /// Output: the chunk's contribution to `A_0 v`, rows `s .. n`.
    y: &'a mut [f64],
    /// Rows of the panel dot products `V^T v`, `W^T v` taken by this chunk.
    rows: std::ops::Range<usize>,
}

/// Read-only state shared by the chunks of the symmetric product.
struct SymvCtx<'a> {
    n: usize,
    /// Panel columns before `j`.
    l: usize,
    v: &'a [f64],
    /// Reflector columns of the panel (`l` columns of `n`).
    vp: &'a [f64],
    /// Finished columns of `W` but the last (`l - 1` columns of `n`).
    w: &'a [f64],
    /// Column `l - 1` of `W` (`n`).
    wl: &'a [f64],
}

/// Run one chunk: `y[s..n]` = the chunk's columns' contribution to `A_0 v`,
/// its share of `v^T A_0 v`, and the panel dot products over its rows.
#[inline(always)]
fn symv_job(ctx: &SymvCtx<'_>, job: SymvJob<'_>, cols_kernel: impl Fn(&[f64], usize, usize, &[f64], &mut [f64]) -> f64) -> SymvSums {
    let n = ctx.n;
    job.y[job.s..n].fill(0.0);
    let quad = cols_kernel(job.cols, n, job.s, ctx.v, job.y);
    let mut out = SymvSums { quad, pv: [0.0; NB], pw: [0.0; NB] };
    let (r0, r1) = (job.rows.start, job.rows.end);
    let vr = &ctx.v[r0..r1];
    for c in 0..ctx.l {
        out.pv[c] = dot(&ctx.vp[c * n + r0..c * n + r1], vr);
        let wc = if c + 1 < ctx.l { &ctx.w[c * n + r0..c * n + r1] } else { &ctx.wl[r0..r1] };
        out.pw[c] = dot(wc, vr);
    }
    out
}

/// [`symv_cols_portable`] through the fastest code for this machine.
#[cfg(test)]
fn symv_cols_fastest(cols: &[f64], n: usize, s: usize, v: &[f64], y: &mut [f64]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: AVX2 and FMA are available (checked just above).
        return unsafe { avx2::symv_cols(cols, n, s, v, y) };
    }
    symv_cols_portable(cols, n, s, v, y)
}

/// [`symv_job`] through the fastest code for this machine.
fn symv_dispatch(ctx: &SymvCtx<'_>, job: SymvJob<'_>) -> SymvSums {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: AVX2 and FMA are available (checked just above).
        return unsafe { avx2::symv_job(ctx, job) };
    }
    symv_job(ctx, job, symv_cols_portable)
}

/// Lower-triangle columns `s .. s + cols.len() / n` (column `c` at
/// `cols[(c - s) * n..]`, rows `c .. n` read) times `v`, added to `y[s..n]`;
/// returns their share of `v^T A v`.
#[inline(always)]
fn symv_cols_portable(cols: &[f64], n: usize, s: usize, v: &[f64], y: &mut [f64]) -> f64 {
    let mut quad = 0.0;
    for (i, col) in cols.chunks_exact(n).enumerate() {
        let c = s + i;
        let vc = v[c];
        for (yr, a) in y[c + 1..n].iter_mut().zip(&col[c + 1..n]) {
            *yr += *a * vc;
        }
        let dt = dot(&col[c + 1..n], &v[c + 1..n]);
        let t = col[c] * vc;
        y[c] += t + dt;
        quad += vc * (t + 2.0 * dt);
    }
    quad
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{RowCtx, RowSums, SymvCtx, SymvJob, SymvSums};
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    /// [`super::row_pass`] compiled for AVX2.
    #[target_feature(enable = "avx2,fma")]
    pub fn row_pass(ctx: &RowCtx<'_>, r0: usize, x: &mut [f64], wl: &mut [f64]) -> RowSums {
        super::row_pass(ctx, r0, x, wl)
    }

    /// [`super::symv_job`] compiled for AVX2, with the AVX2 column kernel.
    #[target_feature(enable = "avx2,fma")]
    pub fn symv_job(ctx: &SymvCtx<'_>, job: SymvJob<'_>) -> SymvSums {
        super::symv_job(ctx, job, |cols, n, s, v, y| symv_cols(cols, n, s, v, y))
    }

    /// Horizontal sum of four lanes.
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256d) -> f64 {
        let s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd::<1>(v));
        _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)))
    }

    /// `[sum(a), sum(b), sum(c), sum(d)]` (lane sums of four vectors).
    #[target_feature(enable = "avx2,fma")]
    fn hsum4(a: __m256d, b: __m256d, c: __m256d, d: __m256d) -> __m256d {
        let ab = _mm256_hadd_pd(a, b);
        let cd = _mm256_hadd_pd(c, d);
        _mm256_add_pd(_mm256_permute2f128_pd::<0x20>(ab, cd), _mm256_permute2f128_pd::<0x31>(ab, cd))
    }

    /// [`super::symv_cols_portable`], four columns at a time: each row block
    /// of the four columns is loaded once for both the `y += A[:, c] v_c`
    /// updates and the dot products `A[:, c]^T v`. Leading single columns
    /// make the length of every four-column group a multiple of 4, so the
    /// group is its 4 x 4 diagonal block (masked to the strict lower
    /// triangle) and full vectors below it.
    #[target_feature(enable = "avx2,fma")]
    pub fn symv_cols(cols: &[f64], n: usize, s: usize, v: &[f64], y: &mut [f64]) -> f64 {
        let ncols = cols.len() / n;
        assert!(cols.len() == ncols * n && v.len() >= n && y.len() >= n && s + ncols <= n);
        let lead = ((n - s) % 4).min(ncols);
        let mut quad = super::symv_cols_portable(&cols[..lead * n], n, s, v, y);
        let mut qv = _mm256_setzero_pd();
        let mut i = lead;
        let vp = v.as_ptr();
        let yp = y.as_mut_ptr();
        let zero = _mm256_setzero_pd();
        while i + 4 <= ncols {
            let c = s + i;
            let p0 = cols[i * n..].as_ptr();
            // SAFETY (whole block): column q of the group is `p0 + q n`,
            // inside `cols` (i + 4 <= ncols); with (n - c) % 4 == 0 every
            // 4-lane access below is at a row r with c <= r <= n - 4, inside
            // the columns, `v` and `y` (length >= n, asserted above).
            unsafe {
                let p = [p0, p0.add(n), p0.add(2 * n), p0.add(3 * n)];
                let vc = _mm256_loadu_pd(vp.add(c));
                let vb = [
                    _mm256_permute4x64_pd::<0x00>(vc),
                    _mm256_permute4x64_pd::<0x55>(vc),
                    _mm256_permute4x64_pd::<0xAA>(vc),
                    _mm256_permute4x64_pd::<0xFF>(vc),
                ];
                // Diagonal block: strict lower part of the four columns.
                let d0 = _mm256_blend_pd::<0b1110>(zero, _mm256_loadu_pd(p[0].add(c)));
                let d1 = _mm256_blend_pd::<0b1100>(zero, _mm256_loadu_pd(p[1].add(c)));
                let d2 = _mm256_blend_pd::<0b1000>(zero, _mm256_loadu_pd(p[2].add(c)));
                let mut yc = _mm256_loadu_pd(yp.add(c));
                yc = _mm256_fmadd_pd(d0, vb[0], yc);
                yc = _mm256_fmadd_pd(d1, vb[1], yc);
                yc = _mm256_fmadd_pd(d2, vb[2], yc);
                let mut acc = [_mm256_mul_pd(d0, vc), _mm256_mul_pd(d1, vc), _mm256_mul_pd(d2, vc), zero];
                let mut acc2 = [zero; 4];
                let diag = _mm256_set_pd(*p[3].add(c + 3), *p[2].add(c + 2), *p[1].add(c + 1), *p[0].add(c));
                let t = _mm256_mul_pd(diag, vc);
                // Full row blocks below, two at a time.
                let mut r = c + 4;
                while r + 8 <= n {
                    let vr = _mm256_loadu_pd(vp.add(r));
                    let vr2 = _mm256_loadu_pd(vp.add(r + 4));
                    let mut yv = _mm256_loadu_pd(yp.add(r));
                    let mut yv2 = _mm256_loadu_pd(yp.add(r + 4));
                    for q in 0..4 {
                        let x = _mm256_loadu_pd(p[q].add(r));
                        let x2 = _mm256_loadu_pd(p[q].add(r + 4));
                        yv = _mm256_fmadd_pd(x, vb[q], yv);
                        yv2 = _mm256_fmadd_pd(x2, vb[q], yv2);
                        acc[q] = _mm256_fmadd_pd(x, vr, acc[q]);
                        acc2[q] = _mm256_fmadd_pd(x2, vr2, acc2[q]);
                    }
                    _mm256_storeu_pd(yp.add(r), yv);
                    _mm256_storeu_pd(yp.add(r + 4), yv2);
                    r += 8;
                }
                if r < n {
                    let vr = _mm256_loadu_pd(vp.add(r));
                    let mut yv = _mm256_loadu_pd(yp.add(r));
                    for q in 0..4 {
                        let x = _mm256_loadu_pd(p[q].add(r));
                        yv = _mm256_fmadd_pd(x, vb[q], yv);
                        acc[q] = _mm256_fmadd_pd(x, vr, acc[q]);
                    }
                    _mm256_storeu_pd(yp.add(r), yv);
                }
                let dots = hsum4(
                    _mm256_add_pd(acc[0], acc2[0]),
                    _mm256_add_pd(acc[1], acc2[1]),
                    _mm256_add_pd(acc[2], acc2[2]),
                    _mm256_add_pd(acc[3], acc2[3]),
                );
                _mm256_storeu_pd(yp.add(c), _mm256_add_pd(yc, _mm256_add_pd(t, dots)));
                qv = _mm256_fmadd_pd(vc, _mm256_fmadd_pd(_mm256_set1_pd(2.0), dots, t), qv);
            }
            i += 4;
        }
        quad += hsum(qv);
        if i < ncols {
            quad += super::symv_cols_portable(&cols[i * n..], n, s + i, v, y);
        }
        quad
    }
}

/// Outputs of the reduction of `B = J A J` (`n >= 3`).
struct Reduced<'a> {
    /// Diagonal of `T_B` (`n`).
    d: &'a mut [f64],
    /// Off-diagonal of `T_B` (`n - 1`).
    e: &'a mut [f64],
    /// `tau` of the reflectors (`n - 2`).
    tau: &'a mut [f64],
    /// Inner products of the reflectors within each panel (see
    /// [`Tridiagonalization`]).
    gram: &'a mut [f64],
}

/// The blocked reduction of `a` (`n x n` column-major, lower triangle;
/// `n >= 3`) to `Q_B T_B Q_B^T`: fills `out` and leaves the reflectors in
/// `a`.
fn reduce(a: &mut [f64], n: usize, out: &mut Reduced<'_>) {
    let nref = n - 2;
    let mut w = vec![0.0; n * NB];
    let mut parts = vec![0.0; SYMV_PARTS * n];
    let mut lr = vec![0.0; n * 2 * NB];
    let mut rl = vec![0.0; n * 2 * NB];
    let mut p0 = 0;
    while p0 < nref {
        let nb = NB.min(nref - p0);
        reduce_panel(a, n, p0..p0 + nb, &mut w, &mut parts, out);
        update_trailing(a, n, p0, nb, &w, &mut lr, &mut rl);
        p0 += nb;
    }
    out.d[n - 2] = a[(n - 2) + (n - 2) * n];
    out.d[n - 1] = a[(n - 1) + (n - 1) * n];
    out.e[n - 2] = a[(n - 1) + (n - 2) * n];
}

/// Split `x` (starting at row `r0`) into `k` pieces of about equal length,
/// with their first rows.
fn split_rows(mut x: &mut [f64], r0: usize, k: usize) -> Vec<(usize, &mut [f64])> {
    let len = x.len().div_ceil(k);
    let mut out = Vec::with_capacity(k);
    let mut r = r0;
    while !x.is_empty() {
        let take = len.min(x.len());
        let (h, t) = std::mem::take(&mut x).split_at_mut(take);
        out.push((r, h));
        r += len;
        x = t;
    }
    out
}

/// Reduce the panel columns `p0 .. p0 + nb`: reflectors into `a`, `d`, `e`,
/// `tau` into `out`, and the panel's `W` into `w` (column `c` at `w[c * n..]`,
/// rows `p0 + c + 1 ..`). `parts` is scratch for the partial products.
fn reduce_panel(a: &mut [f64], n: usize, panel: std::ops::Range<usize>, w: &mut [f64], parts: &mut [f64], out: &mut Reduced<'_>) {
    let (p0, nb) = (panel.start, panel.len());
    let mut pending: Option<Pending> = None;
    for l in 0..=nb {
        let j = p0 + l;
        let (left, right) = a.split_at_mut(j * n);
        let vcols = &left[p0 * n..];
        let (wdone, wrest) = w.split_at_mut(l.saturating_sub(1) * n);
        let wl = &mut wrest[..n];
        let mut ctx = RowCtx {
            n,
            j,
            l,
            v: vcols,
            w: wdone,
            parts,
            pending: pending.as_ref(),
            wj: [0.0; NB],
            vj: [0.0; NB],
        };
        for c in 0..l {
            ctx.vj[c] = vcols[c * n + j];
            if c + 1 < l {
                ctx.wj[c] = wdone[c * n + j];
            }
        }
        if l == nb {
            // Panel done: finish the last column of W on the rows the
            // trailing update reads.
            if let Some(p) = ctx.pending {
                let pieces = split_rows(&mut wl[j..], j, row_chunks(n - j));
                run(pieces, true, |(r0, piece)| finish_rows(&ctx, p, r0, piece));
            }
            return;
        }
        let (x, trailing) = right.split_at_mut(n);
        let k = row_chunks(n - j);
        let xs = split_rows(&mut x[j..], j, k);
        let ws = split_rows(&mut wl[j..], j, k);
        let sums = collect(xs.into_iter().zip(ws).collect(), true, |((r0, xp), (_, wp))| row_pass_dispatch(&ctx, r0, xp, wp));
        let ssq: f64 = sums.iter().map(|s| s.ssq).sum();
        let amax = sums.iter().fold(0.0f64, |m, s| m.max(s.amax));
        // Reflector (LAPACK dlarfg): x[j + 1 ..] -> beta e_1.
        out.d[j] = x[j];
        let alpha = x[j + 1];
        x[j + 1] = 1.0;
        let mut next = Pending { tau: 0.0, alpha2: 0.0, t1: [0.0; NB], t2: [0.0; NB], starts: Vec::new() };
        if amax == 0.0 {
            out.e[j] = alpha;
            out.tau[j] = 0.0;
        } else {
            let norm = if ssq > 1e-280 && ssq < 1e280 {
                ssq.sqrt()
            } else {
                amax * x[j + 2..].iter().map(|v| (v / amax) * (v / amax)).sum::<f64>().sqrt()
            };
            let h = alpha.hypot(norm);
            let beta = if alpha >= 0.0 { -h } else { h };
            let tj = (beta - alpha) / beta;
            let den = alpha - beta;
            for v in &mut x[j + 2..] {
                *v /= den;
            }
            out.e[j] = beta;
            out.tau[j] = tj;
            // Symmetric product with the trailing matrix (rows/columns j + 1 ..),
            // and V^T v, W^T v.
            let m = n - j - 1;
            let bounds = triangle_split(m, symv_chunks(m));
            let sctx = SymvCtx { n, l, v: x, vp: vcols, w: wdone, wl };
            let kk = bounds.len() - 1;
            let mut jobs = Vec::with_capacity(kk);
            let mut rest = &mut parts[..];
            for (i, q) in bounds.windows(2).enumerate() {
                let (y, t) = std::mem::take(&mut rest).split_at_mut(n);
                rest = t;
                let rows = j + 1 + m * i / kk..j + 1 + m * (i + 1) / kk;
                jobs.push(SymvJob { s: j + 1 + q[0], cols: &trailing[q[0] * n..q[1] * n], y, rows });
            }
            next.starts = jobs.iter().map(|j| j.s).collect();
            let sums = collect(jobs, true, |job| symv_dispatch(&sctx, job));
            let mut quad = 0.0;
            for p in &sums {
                quad += p.quad;
                for c in 0..l {
                    next.t1[c] += p.pw[c];
                    next.t2[c] += p.pv[c];
                }
            }
            out.gram[j * NB..j * NB + l].copy_from_slice(&next.t2[..l]);
            let tt: f64 = (0..l).map(|c| next.t1[c] * next.t2[c]).sum();
            next.tau = tj;
            next.alpha2 = -0.5 * tj * tj * (quad - 2.0 * tt);
        }
        pending = Some(next);
    }
}

/// Run `f` on every job, in parallel if `par` and there is more than one.
fn run<T: Send, F: Fn(T) + Sync + Send>(jobs: Vec<T>, par: bool, f: F) {
    if par && jobs.len() > 1 {
        jobs.into_par_iter().for_each(f);
    } else {
        jobs.into_iter().for_each(f);
    }
}

/// `f` of every job, in job order; in parallel if `par` and there is more
/// than one.
fn collect<T: Send, R: Send, F: Fn(T) -> R + Sync + Send>(jobs: Vec<T>, par: bool, f: F) -> Vec<R> {
    if par && jobs.len() > 1 {
        jobs.into_par_iter().map(f).collect()
    } else {
        jobs.into_iter().map(f).collect()
    }
}

/// `A[p1.., p1..] -= V W^T + W V^T` (lower triangle) after the panel
/// `p0 .. p1 = p0 + nb`; `lr` and `rl` are scratch of `2 nb (n - p1)` values.
fn update_trailing(a: &mut [f64], n: usize, p0: usize, nb: usize, w: &[f64], lr: &mut [f64], rl: &mut [f64]) {
    let p1 = p0 + nb;
    let m = n - p1;
    // lr = [V W], rl = [W V] (rows p1 .., column-major m x 2nb).
    for c in 0..nb {
        let vc = &a[(p0 + c) * n + p1..(p0 + c + 1) * n];
        let wc = &w[c * n + p1..(c + 1) * n];
        lr[c * m..(c + 1) * m].copy_from_slice(vc);
        lr[(nb + c) * m..(nb + c + 1) * m].copy_from_slice(wc);
        rl[c * m..(c + 1) * m].copy_from_slice(wc);
        rl[(nb + c) * m..(nb + c + 1) * m].copy_from_slice(vc);
    }
    let lhs = MatRef::from_column_major_slice(&lr[..2 * nb * m], m, 2 * nb);
    let rhs = MatRef::from_column_major_slice(&rl[..2 * nb * m], m, 2 * nb);
    let mut jobs = Vec::with_capacity(m.div_ceil(UB));
    let mut rest = &mut a[p1 * n..];
    for c0 in (0..m).step_by(UB) {
        let c1 = (c0 + UB).min(m);
        let (slab, t) = std::mem::take(&mut rest).split_at_mut((c1 - c0) * n);
        rest = t;
        jobs.push((c0, c1, slab));
    }
    run(jobs, m >= UPDATE_SPLIT, |(c0, c1, slab)| {
        let dst = MatMut::from_column_major_slice_with_stride_mut(&mut slab[p1 + c0..], m - c0, c1 - c0, n);
        let (diag, below) = dst.split_at_row_mut(c1 - c0);
        let r = rhs.subrows(c0, c1 - c0).transpose();
        tri::matmul(diag, Lower, Accum::Add, lhs.subrows(c0, c1 - c0), Rect, r, Rect, -1.0, Par::Seq);
        matmul(below, Accum::Add, lhs.subrows(c1, m - c1), r, -1.0, Par::Seq);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::Side;

    /// `len` values in [-1, 1) from a 64-bit LCG.
    fn lcg(len: usize, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (s >> 11) as f64 / (1u64 << 52) as f64 - 1.0
            })
            .collect()
    }

    /// Symmetric `n x n` row-major matrix with random entries in its lower
    /// triangle; the strict upper triangle is NaN (it must not be read).
    fn random_sym(n: usize, seed: u64) -> Vec<f64> {
        let mut a = lcg(n * n, seed);
        for i in 0..n {
            for j in i + 1..n {
                a[i * n + j] = f64::NAN;
            }
        }
        a
    }

    /// Full symmetric faer matrix from the lower triangle of `a`.
    fn full(a: &[f64], n: usize) -> Mat<f64> {
        Mat::from_fn(n, n, |i, j| if j <= i { a[i * n + j] } else { a[j * n + i] })
    }

    fn dense_t(t: &Tridiagonalization) -> Mat<f64> {
        let n = t.n();
        Mat::from_fn(n, n, |i, j| {
            if i == j {
                t.diagonal()[i]
            } else if i == j + 1 {
                t.off_diagonal()[j]
            } else if j == i + 1 {
                t.off_diagonal()[i]
            } else {
                0.0
            }
        })
    }

    fn q_of(t: &Tridiagonalization) -> Mat<f64> {
        let n = t.n();
        let mut q = vec![0.0; n * n];
        for i in 0..n {
            q[i * n + i] = 1.0;
        }
        t.apply_q(&mut q, n);
        Mat::from_fn(n, n, |i, j| q[j * n + i])
    }

    fn max_abs(m: MatRef<'_, f64>) -> f64 {
        let mut r = 0.0f64;
        for j in 0..m.ncols() {
            for i in 0..m.nrows() {
                r = r.max(m[(i, j)].abs());
            }
        }
        r
    }

    /// Checks `A = Q T Q^T`, `Q^T Q = I` and the eigenvalues of `T`.
    fn check(a: &[f64], n: usize) {
        let t = tridiagonalize(a, n);
        assert_eq!(t.n(), n);
        assert_eq!(t.diagonal().len(), n);
        assert_eq!(t.off_diagonal().len(), n.saturating_sub(1));
        let af = full(a, n);
        let scale = max_abs(af.as_ref()).max(f64::MIN_POSITIVE);
        let q = q_of(&t);
        let tt = dense_t(&t);
        let rec = &q * &tt * q.transpose();
        let err = max_abs((&rec - &af).as_ref());
        assert!(err <= 1e-12 * scale, "n = {n}: |Q T Q^T - A| = {err:e} (max |A| = {scale:e})");
        let orth = max_abs((q.transpose() * &q - Mat::<f64>::identity(n, n)).as_ref());
        assert!(orth <= 1e-12, "n = {n}: |Q^T Q - I| = {orth:e}");
        if n > 0 {
            let ea = af.self_adjoint_eigenvalues(Side::Lower).expect("evd of A");
            let et = tt.self_adjoint_eigenvalues(Side::Lower).expect("evd of T");
            let top = ea.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(f64::MIN_POSITIVE);
            for (x, y) in ea.iter().zip(&et) {
                assert!((x - y).abs() <= 1e-10 * top, "n = {n}: eigenvalue {x} vs {y}");
            }
        }
    }

    #[test]
    fn reconstructs_random_matrices() {
        for (s, n) in [0usize, 1, 2, 3, 5, 17, 64, 65, 130, 300].into_iter().enumerate() {
            check(&random_sym(n, s as u64 + 1), n);
        }
    }

    #[test]
    fn reconstructs_large_matrix_parallel_path() {
        check(&random_sym(600, 99), 600);
    }

    #[test]
    fn zero_rows_and_columns() {
        for n in [3usize, 4, 40, 97, 300] {
            let mut a = random_sym(n, n as u64);
            for z in [0, n / 3, n / 2, n - 2, n - 1] {
                for k in 0..n {
                    let (i, j) = if k <= z { (z, k) } else { (k, z) };
                    a[i * n + j] = 0.0;
                }
            }
            check(&a, n);
        }
        check(&vec![0.0; 50 * 50], 50);
    }

    #[test]
    fn diagonal_and_tridiagonal_matrices() {
        for n in [3usize, 10, 70, 200] {
            let r = random_sym(n, 7);
            let mut a = vec![0.0; n * n];
            for i in 0..n {
                a[i * n + i] = r[i * n + i];
            }
            check(&a, n);
            let t = tridiagonalize(&a, n);
            for i in 0..n {
                assert_eq!(t.diagonal()[i], a[i * n + i]);
            }
            assert!(t.off_diagonal().iter().all(|v| *v == 0.0));
            for i in 1..n {
                a[i * n + i - 1] = r[i * n + i - 1];
            }
            check(&a, n);
        }
    }

    #[test]
    fn badly_scaled_entries() {
        let n = 40;
        for f in [1e-200, 1e200] {
            let a: Vec<f64> = random_sym(n, 3).iter().map(|v| v * f).collect();
            check(&a, n);
        }
    }

    type Kernel = fn(&[f64], usize, usize, &[f64], &mut [f64]) -> f64;

    /// The column kernels against a plain double loop, with NaN above the
    /// diagonal (never read), for every alignment of the first column.
    #[test]
    fn symv_kernels_match_reference() {
        for n in [1usize, 2, 5, 8, 13, 37, 64] {
            let mut a = lcg(n * n, n as u64);
            for c in 0..n {
                for r in 0..c {
                    a[r + c * n] = f64::NAN;
                }
            }
            let v = lcg(n, 7);
            for s in 0..n {
                for e in s..=n {
                    let cols = &a[s * n..e * n];
                    let mut want = vec![0.0; n];
                    let mut want_q = 0.0;
                    for c in s..e {
                        for r in c..n {
                            want[r] += a[r + c * n] * v[c];
                            if r > c {
                                want[c] += a[r + c * n] * v[r];
                            }
                        }
                        let dc: f64 = (c + 1..n).map(|r| a[r + c * n] * v[r]).sum();
                        want_q += v[c] * (a[c + c * n] * v[c] + 2.0 * dc);
                    }
                    for (name, f) in [("portable", symv_cols_portable as Kernel), ("fastest", symv_cols_fastest)] {
                        let mut y = vec![0.0; n];
                        let q = f(cols, n, s, &v, &mut y);
                        let tol = 1e-13 * n as f64;
                        assert!((q - want_q).abs() <= tol, "{name} n={n} s={s} e={e}: quad {q} vs {want_q}");
                        for r in 0..n {
                            assert!((y[r] - want[r]).abs() <= tol, "{name} n={n} s={s} e={e} row {r}: {} vs {}", y[r], want[r]);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn independent_of_thread_count() {
        let n = 700;
        let a = random_sym(n, 42);
        let k = 40;
        let v0 = lcg(n * k, 43);
        let run_with = |threads: usize| {
            rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool").install(|| {
                let t = tridiagonalize(&a, n);
                let mut v = v0.clone();
                t.apply_q(&mut v, k);
                (t.diagonal().to_vec(), t.off_diagonal().to_vec(), v)
            })
        };
        let one = run_with(1);
        for threads in [2, 3] {
            let other = run_with(threads);
            let same = |x: &[f64], y: &[f64]| x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same(&one.0, &other.0), "diagonal differs with {threads} threads");
            assert!(same(&one.1, &other.1), "off-diagonal differs with {threads} threads");
            assert!(same(&one.2, &other.2), "Q V differs with {threads} threads");
        }
    }
}
