//! Largest eigenpairs of a symmetric tridiagonal matrix.
//!
//! $T$ has diagonal $d$ (length $n$) and off-diagonal $e$ ($T_{i+1,i} =
//! T_{i,i+1} = e_i$, length $n - 1$). PCA needs the $k$ largest eigenpairs of
//! the tridiagonal form of a $d \times d$ covariance, usually with $k \ll n$;
//! divide and conquer computes all $n$ eigenvectors, this module only $k$:
//!
//! - **Eigenvalues by bisection** on Sturm counts: the number of negative
//!   pivots $q_0 = d_0 - x$, $q_i = d_i - x - e_{i-1}^2 / q_{i-1}$ of the
//!   $LDL^\top$ factorisation of $T - xI$ equals the number of eigenvalues
//!   below $x$ (Barth, Martin and Wilkinson 1967; LAPACK `dstebz`). Each
//!   eigenvalue is bracketed independently to an absolute width of a few
//!   $\epsilon \lVert T \rVert_1$, the accuracy any backward-stable method
//!   reaches; 16 brackets advance together (one count per bracket per step,
//!   vectorised).
//! - **Eigenvectors by inverse iteration** (Wilkinson 1965; Peters and
//!   Wilkinson 1971; LAPACK `dstein`): solve $(T - \lambda I) y = x$ with a
//!   tridiagonal LU factorisation with partial pivoting, tiny pivots raised to
//!   $\epsilon \lVert T \rVert_1$, until the growth $\lVert y \rVert /
//!   \lVert x \rVert$ shows a residual of $10^3 \epsilon \lVert T \rVert_1
//!   \sqrt{n}$ or less, then once more. An eigenvector computed this way has
//!   an error of about $\epsilon \lVert T \rVert_1 / \mathrm{gap}$, so
//!   eigenvalues closer than [`CLUSTER_GAP`]$\,\lVert T \rVert_1$ form a
//!   cluster whose vectors are orthogonalised against each other (modified
//!   Gram-Schmidt inside every iteration) and whose shifts are separated by
//!   at least $10 \epsilon |\lambda|$.
//!
//! Cost: $O(n k)$ for $k$ eigenpairs (about 55 counts per eigenvalue), plus
//! $O(n c^2)$ per cluster of $c$ close eigenvalues. [`largest_eigenpairs`]
//! declines (returns `None`) when a cluster is larger than
//! [`MAX_CLUSTER`]; the caller then falls back to divide and conquer.
//!
//! Determinism: every eigenvalue is bracketed on its own, every cluster
//! iterates on its own from a start vector seeded by the eigenvalue's index,
//! and tasks are split by index, so the output does not depend on the
//! number of threads.

use rayon::prelude::*;

/// Eigenvalues closer than `CLUSTER_GAP * ||T||_1` share a cluster.
pub const CLUSTER_GAP: f64 = 1e-6;

/// Largest cluster handled by inverse iteration; larger ones make
/// [`largest_eigenpairs`] return `None`.
pub const MAX_CLUSTER: usize = 64;

/// Brackets advanced together by one Sturm sweep.
const LANES: usize = 16;

/// Most inverse-iteration solves for one eigenvector.
const MAX_SOLVES: usize = 6;

/// A symmetric tridiagonal matrix (borrowed diagonal and off-diagonal).
#[derive(Clone, Copy, Debug)]
pub struct SymTridiagonal<'a> {
    d: &'a [f64],
    e: &'a [f64],
}

impl<'a> SymTridiagonal<'a> {
    /// `d`: diagonal, length `n`; `e`: off-diagonal, length `n - 1` (empty for `n <= 1`).
    ///
    /// # Panics
    /// If the lengths disagree.
    pub fn new(d: &'a [f64], e: &'a [f64]) -> Self {
        assert_eq!(e.len(), d.len().saturating_sub(1), "off-diagonal length must be n - 1");
        Self { d, e }
    }

    /// Order `n`.
    pub fn n(&self) -> usize {
        self.d.len()
    }

    /// $\lVert T \rVert_1$ (largest absolute column sum).
    pub fn norm1(&self) -> f64 {
        let n = self.n();
        (0..n)
            .map(|i| {
                let left = if i > 0 { self.e[i - 1].abs() } else { 0.0 };
                let right = if i + 1 < n { self.e[i].abs() } else { 0.0 };
                self.d[i].abs() + left + right
            })
            .fold(0.0, f64::max)
    }

    /// Gershgorin interval containing every eigenvalue.
    fn gershgorin(&self) -> (f64, f64) {
        let n = self.n();
        let mut lo = f64::INFINITY;
        let mut hi = f64::NEG_INFINITY;
        for i in 0..n {
            let left = if i > 0 { self.e[i - 1].abs() } else { 0.0 };
            let right = if i + 1 < n { self.e[i].abs() } else { 0.0 };
            lo = lo.min(self.d[i] - left - right);
            hi = hi.max(self.d[i] + left + right);
        }
        (lo, hi)
    }

    /// Smallest pivot magnitude of a Sturm count (LAPACK's `pivmin`).
    fn pivmin(&self) -> f64 {
        let e2max = self.e.iter().map(|v| v * v).fold(1.0, f64::max);
        f64::MIN_POSITIVE * e2max
    }

    /// Number of eigenvalues strictly below `x`.
    pub fn count_below(&self, x: f64) -> usize {
        let e2: Vec<f64> = self.e.iter().map(|v| v * v).collect();
        let c = sturm_counts(self.d, &e2, &[x; LANES], self.pivmin());
        c[0] as usize
    }

    /// Eigenvalues number `range` in *decreasing* order (0 is the largest),
    /// each to an absolute accuracy of about $4 \epsilon \lVert T \rVert_1$.
    ///
    /// # Panics
    /// If `range.end > n`.
    pub fn eigenvalues_desc(&self, range: std::ops::Range<usize>) -> Vec<f64> {
        let n = self.n();
        assert!(range.end <= n, "eigenvalue index {} out of range for n = {n}", range.end);
        if range.is_empty() {
            return Vec::new();
        }
        let e2: Vec<f64> = self.e.iter().map(|v| v * v).collect();
        let pivmin = self.pivmin();
        let tnorm = self.norm1();
        let (gl, gu) = self.gershgorin();
        // Widen so that the counts at the ends are certainly 0 and n.
        let pad = 2.0 * f64::EPSILON * tnorm * n as f64 + 4.0 * pivmin;
        let (gl, gu) = (gl - pad, gu + pad);
        let atol = 2.0 * f64::EPSILON * tnorm.max(f64::MIN_POSITIVE);
        let wanted: Vec<usize> = range.collect();
        let mut out = vec![0.0; wanted.len()];
        out.par_chunks_mut(LANES).zip(wanted.par_chunks(LANES)).for_each(|(vals, idx)| {
            // Ascending index a = n - 1 - i: count(lo) <= a < count(hi).
            let target: Vec<u64> = idx.iter().map(|&i| (n - 1 - i) as u64).collect();
            let mut lo = [gl; LANES];
            let mut hi = [gu; LANES];
            let live = idx.len();
            loop {
                let mut mid = [0.0; LANES];
                let mut busy = false;
                for l in 0..LANES {
                    mid[l] = 0.5 * (lo[l] + hi[l]);
                    if l < live && hi[l] - lo[l] > atol.max(2.0 * f64::EPSILON * lo[l].abs().max(hi[l].abs())) {
                        busy = true;
                    }
                }
                if !busy {
                    break;
                }
                let c = sturm_counts(self.d, &e2, &mid, pivmin);
                for l in 0..live {
                    if mid[l] <= lo[l] || mid[l] >= hi[l] {
                        continue; // no representable midpoint left
                    }
                    if c[l] > target[l] {
                        hi[l] = mid[l];
                    } else {
                        lo[l] = mid[l];
                    }
                }
            }
            for l in 0..live {
                vals[l] = 0.5 * (lo[l] + hi[l]);
            }
        });
        out
    }
}

/// Sturm counts of `T - x_l I` for each of the `LANES` shifts: the number of
/// eigenvalues below `x_l`, as `f64` so that the whole sweep vectorises.
#[inline(always)]
fn sturm_counts_body(d: &[f64], e2: &[f64], x: &[f64; LANES], pivmin: f64) -> [u64; LANES] {
    let mut q = [0.0f64; LANES];
    let mut c = [0.0f64; LANES];
    if d.is_empty() {
        return [0; LANES];
    }
    for l in 0..LANES {
        let mut t = d[0] - x[l];
        if t.abs() <= pivmin {
            t = -pivmin;
        }
        q[l] = t;
        c[l] = if t < 0.0 { 1.0 } else { 0.0 };
    }
    for (&di, &e2i) in d[1..].iter().zip(e2) {
        for l in 0..LANES {
            let mut t = (di - x[l]) - e2i / q[l];
            if t.abs() <= pivmin {
                t = -pivmin;
            }
            q[l] = t;
            c[l] += if t < 0.0 { 1.0 } else { 0.0 };
        }
    }
    c.map(|v| v as u64)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sturm_counts_avx2(d: &[f64], e2: &[f64], x: &[f64; LANES], pivmin: f64) -> [u64; LANES] {
    sturm_counts_body(d, e2, x, pivmin)
}

/// Dispatch of [`sturm_counts_body`]; every variant does the same IEEE
/// operations in the same order (no FMA contraction), so the counts agree.
fn sturm_counts(d: &[f64], e2: &[f64], x: &[f64; LANES], pivmin: f64) -> [u64; LANES] {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { sturm_counts_avx2(d, e2, x, pivmin) };
    }
    sturm_counts_body(d, e2, x, pivmin)
}

/// LU factorisation with partial pivoting of `T - lambda I`: `P (T - lambda I)
/// = L U`, `U` upper triangular with two super-diagonals, `L` unit lower
/// bidiagonal (LAPACK `dlagtf`'s layout).
struct ShiftedLu {
    /// Diagonal of `U`, pivots below `pivtol` in magnitude raised to it.
    u1: Vec<f64>,
    /// First super-diagonal of `U`.
    u2: Vec<f64>,
    /// Second super-diagonal of `U` (fill-in from row swaps).
    u3: Vec<f64>,
    /// Multipliers of `L`.
    l: Vec<f64>,
    /// Whether rows `k` and `k + 1` were swapped at step `k`.
    swap: Vec<bool>,
}

impl ShiftedLu {
    fn new(n: usize) -> Self {
        Self {
            u1: vec![0.0; n],
            u2: vec![0.0; n],
            u3: vec![0.0; n],
            l: vec![0.0; n],
            swap: vec![false; n],
        }
    }

    fn raise(p: f64, pivtol: f64) -> f64 {
        if p.abs() < pivtol {
            if p < 0.0 {
                -pivtol
            } else {
                pivtol
            }
        } else {
            p
        }
    }

    fn factor(&mut self, t: &SymTridiagonal<'_>, lambda: f64, pivtol: f64) {
        let n = t.n();
        let (d, e) = (t.d, t.e);
        // Current row k: a at column k, b at column k + 1.
        let mut a = d[0] - lambda;
        let mut b = if n > 1 { e[0] } else { 0.0 };
        for k in 0..n.saturating_sub(1) {
            let c = e[k]; // row k + 1, column k
            let dn = d[k + 1] - lambda;
            let en = if k + 2 < n { e[k + 1] } else { 0.0 };
            if a.abs() >= c.abs() {
                let p = Self::raise(a, pivtol);
                let l = if c == 0.0 { 0.0 } else { c / p };
                self.u1[k] = p;
                self.u2[k] = b;
                self.u3[k] = 0.0;
                self.l[k] = l;
                self.swap[k] = false;
                a = dn - l * b;
                b = en;
            } else {
                let l = a / c;
                self.u1[k] = c;
                self.u2[k] = dn;
                self.u3[k] = en;
                self.l[k] = l;
                self.swap[k] = true;
                a = b - l * dn;
                b = -l * en;
            }
        }
        self.u1[n - 1] = Self::raise(a, pivtol);
    }

    /// Overwrite `x` by `(T - lambda I)^{-1} x` (with the raised pivots).
    fn solve(&self, x: &mut [f64]) {
        let n = x.len();
        for k in 0..n.saturating_sub(1) {
            if self.swap[k] {
                x.swap(k, k + 1);
            }
            x[k + 1] -= self.l[k] * x[k];
        }
        x[n - 1] /= self.u1[n - 1];
        if n > 1 {
            x[n - 2] = (x[n - 2] - self.u2[n - 2] * x[n - 1]) / self.u1[n - 2];
        }
        for k in (0..n.saturating_sub(2)).rev() {
            x[k] = (x[k] - self.u2[k] * x[k + 1] - self.u3[k] * x[k + 2]) / self.u1[k];
        }
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Euclidean norm without overflow or underflow in the squares.
fn norm2(x: &[f64]) -> f64 {
    let m = x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if m == 0.0 || !m.is_finite() {
        return m;
    }
    m * x.iter().map(|v| (v / m) * (v / m)).sum::<f64>().sqrt()
}

/// Deterministic start vector for eigenvalue number `index`: uniform in
/// (-1, 1) from a SplitMix64 stream.
fn start_vector(x: &mut [f64], index: usize) {
    let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ (index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    for v in x.iter_mut() {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        *v = (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0;
    }
}

/// Eigenvectors of `t` for `values` (decreasing, as from
/// [`SymTridiagonal::eigenvalues_desc`]), by inverse iteration. Returns them column after column (`n x
/// k`, column `j` in `out[j * n..(j + 1) * n]`, unit 2-norm), or `None` when a
/// cluster of close eigenvalues is larger than [`MAX_CLUSTER`] or a solve
/// overflows.
pub fn eigenvectors(t: &SymTridiagonal<'_>, values: &[f64]) -> Option<Vec<f64>> {
    let n = t.n();
    let k = values.len();
    if k == 0 || n == 0 {
        return Some(Vec::new());
    }
    let tnorm = t.norm1();
    if tnorm == 0.0 {
        // T = 0: any orthonormal set; take the first unit vectors.
        let mut out = vec![0.0; n * k];
        (0..k.min(n)).for_each(|j| out[j * n + j] = 1.0);
        return (k <= n).then_some(out);
    }
    let ortol = CLUSTER_GAP * tnorm;
    // Clusters: maximal runs of neighbours closer than ortol.
    let mut bounds = vec![0usize];
    for j in 1..k {
        if (values[j - 1] - values[j]).abs() > ortol {
            bounds.push(j);
        }
    }
    bounds.push(k);
    if bounds.windows(2).any(|w| w[1] - w[0] > MAX_CLUSTER) {
        return None;
    }
    let pivtol = f64::EPSILON * tnorm;
    let converged_growth = 1.0 / (1e3 * f64::EPSILON * tnorm * (n as f64).sqrt());
    let mut out = vec![0.0; n * k];
    let mut chunks: Vec<&mut [f64]> = Vec::with_capacity(bounds.len() - 1);
    let mut rest = out.as_mut_slice();
    for w in bounds.windows(2) {
        let (head, tail) = rest.split_at_mut((w[1] - w[0]) * n);
        chunks.push(head);
        rest = tail;
    }
    let ok = chunks.into_par_iter().zip(bounds.par_windows(2)).all(|(block, w)| {
        let mut lu = ShiftedLu::new(n);
        let mut x = vec![0.0; n];
        let mut shift_prev = f64::INFINITY;
        for (c, j) in (w[0]..w[1]).enumerate() {
            // Separate the shifts of a cluster (decreasing order).
            let mut shift = values[j];
            let sep = 10.0 * f64::EPSILON * shift.abs().max(tnorm * f64::EPSILON);
            if c > 0 && shift > shift_prev - sep {
                shift = shift_prev - sep;
            }
            shift_prev = shift;
            lu.factor(t, shift, pivtol);
            start_vector(&mut x, j);
            let mut passed = false;
            let mut done = false;
            for _ in 0..MAX_SOLVES {
                let norm = norm2(&x);
                if !(norm > 0.0 && norm.is_finite()) {
                    return false;
                }
                x.iter_mut().for_each(|v| *v /= norm);
                lu.solve(&mut x);
                let (done_cols, _) = block.split_at(c * n);
                for z in done_cols.chunks_exact(n) {
                    let p = dot(z, &x);
                    x.iter_mut().zip(z).for_each(|(v, zv)| *v -= p * zv);
                }
                let growth = norm2(&x);
                if !growth.is_finite() {
                    return false;
                }
                if passed {
                    done = true;
                    break;
                }
                passed = growth >= converged_growth;
            }
            if !done && !passed {
                return false;
            }
            let norm = norm2(&x);
            if !(norm > 0.0 && norm.is_finite()) {
                return false;
            }
            block[c * n..(c + 1) * n].iter_mut().zip(&x).for_each(|(o, v)| *o = v / norm);
        }
        true
    });
    ok.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::Mat;

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    }

    /// All eigenvalues (ascending) and eigenvectors of the dense form, by faer.
    fn dense_eig(d: &[f64], e: &[f64]) -> (Vec<f64>, Mat<f64>) {
        let n = d.len();
        let t = Mat::<f64>::from_fn(n, n, |i, j| {
            if i == j {
                d[i]
            } else if i == j + 1 {
                e[j]
            } else if j == i + 1 {
                e[i]
            } else {
                0.0
            }
        });
        let evd = t.self_adjoint_eigen(faer::Side::Lower).unwrap();
        let s = evd.S().column_vector();
        ((0..n).map(|i| s[i]).collect(), evd.U().to_owned())
    }

    fn check(d: &[f64], e: &[f64], k: usize) {
        let n = d.len();
        let t = SymTridiagonal::new(d, e);
        let tnorm = t.norm1();
        let (vals, u) = dense_eig(d, e);
        let ours = t.eigenvalues_desc(0..k);
        for (i, v) in ours.iter().enumerate() {
            let want = vals[n - 1 - i];
            assert!((v - want).abs() <= 1e-13 * tnorm, "n={n} eigenvalue {i}: {v} vs {want}");
        }
        let vecs = eigenvectors(&t, &ours).expect("no oversized cluster here");
        for i in 0..k {
            let z = &vecs[i * n..(i + 1) * n];
            // Residual ||T z - lambda z|| and agreement with faer up to sign.
            let mut res = 0.0f64;
            for r in 0..n {
                let mut tz = d[r] * z[r];
                if r > 0 {
                    tz += e[r - 1] * z[r - 1];
                }
                if r + 1 < n {
                    tz += e[r] * z[r + 1];
                }
                res = res.max((tz - ours[i] * z[r]).abs());
            }
            assert!(res <= 1e-12 * tnorm, "n={n} vector {i}: residual {res}");
            let gap = (0..n).filter(|&m| m != n - 1 - i).map(|m| (vals[m] - ours[i]).abs()).fold(f64::INFINITY, f64::min);
            if gap > 1e-6 * tnorm {
                let cos: f64 = (0..n).map(|r| z[r] * u[(r, n - 1 - i)]).sum();
                assert!((cos.abs() - 1.0).abs() <= 1e-9, "n={n} vector {i}: |cos| {cos}");
            }
            for j in 0..i {
                let zj = &vecs[j * n..(j + 1) * n];
                let p = dot(z, zj);
                assert!(p.abs() <= 1e-9, "n={n} vectors {i},{j}: dot {p}");
            }
        }
    }

    #[test]
    fn random_matrices_match_dense_eigendecomposition() {
        let mut seed = 7u64;
        for &n in &[1usize, 2, 3, 5, 17, 64, 200] {
            let d: Vec<f64> = (0..n).map(|_| lcg(&mut seed) * 10.0).collect();
            let e: Vec<f64> = (0..n.saturating_sub(1)).map(|_| lcg(&mut seed)).collect();
            check(&d, &e, n.min(20));
            check(&d, &e, n);
        }
    }

    #[test]
    fn decaying_spectrum_like_a_covariance() {
        // Tridiagonal form of a covariance with a geometric spectrum: build it
        // from a diagonal plus small couplings.
        let n = 300;
        let d: Vec<f64> = (0..n).map(|i| 100.0 * 0.97f64.powi(i)).collect();
        let mut seed = 3u64;
        let e: Vec<f64> = (0..n - 1).map(|i| lcg(&mut seed) * 0.05 * 0.97f64.powi(i)).collect();
        check(&d, &e, 60);
    }

    #[test]
    fn split_and_repeated_eigenvalues_stay_orthogonal() {
        // Zero off-diagonals (a covariance with unused features) and exactly
        // repeated eigenvalues: one cluster, orthogonalised.
        let n = 40;
        let d: Vec<f64> = (0..n).map(|i| if i % 4 == 0 { 5.0 } else { (i as f64) * 0.01 }).collect();
        let e: Vec<f64> = (0..n - 1).map(|i| if i % 4 == 3 { 0.0 } else { 1e-3 * (i % 3) as f64 }).collect();
        check(&d, &e, 10);
        let zeros = vec![0.0; n];
        let t = SymTridiagonal::new(&zeros, &zeros[1..]);
        let vals = t.eigenvalues_desc(0..5);
        assert!(vals.iter().all(|v| v.abs() < 1e-300));
        let v = eigenvectors(&t, &vals).unwrap();
        for i in 0..5 {
            for j in 0..=i {
                let p = dot(&v[i * n..(i + 1) * n], &v[j * n..(j + 1) * n]);
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((p - want).abs() < 1e-12, "zero matrix vectors {i},{j}: {p}");
            }
        }
    }

    #[test]
    fn oversized_cluster_declines() {
        let n = 100;
        let d = vec![1.0; n];
        let e = vec![0.0; n - 1];
        let t = SymTridiagonal::new(&d, &e);
        let vals = t.eigenvalues_desc(0..MAX_CLUSTER + 1);
        assert!(eigenvectors(&t, &vals).is_none());
        assert!(eigenvectors(&t, &vals[..MAX_CLUSTER]).is_some());
    }

    #[test]
    fn sturm_count_knows_the_answer() {
        // T = tridiag(1, 2, 1) of order n has eigenvalues 2 + 2 cos(pi j / (n + 1)).
        let n = 50;
        let d = vec![2.0; n];
        let e = vec![1.0; n - 1];
        let t = SymTridiagonal::new(&d, &e);
        assert_eq!(t.count_below(2.0 + 1e-9), n / 2);
        assert_eq!(t.count_below(-0.1), 0);
        assert_eq!(t.count_below(4.1), n);
        let vals = t.eigenvalues_desc(0..n);
        for (j, v) in vals.iter().enumerate() {
            let want = 2.0 + 2.0 * (std::f64::consts::PI * (j + 1) as f64 / (n + 1) as f64).cos();
            assert!((v - want).abs() < 1e-14 * 4.0, "{j}: {v} vs {want}");
        }
    }

    #[test]
    fn thread_count_does_not_change_the_result() {
        let n = 400;
        let mut seed = 11u64;
        let d: Vec<f64> = (0..n).map(|_| lcg(&mut seed)).collect();
        let e: Vec<f64> = (0..n - 1).map(|_| lcg(&mut seed)).collect();
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(|| {
                let t = SymTridiagonal::new(&d, &e);
                let vals = t.eigenvalues_desc(0..70);
                let vecs = eigenvectors(&t, &vals).unwrap();
                (vals, vecs)
            })
        };
        let one = run(1);
        assert_eq!(one, run(2));
        assert_eq!(one, run(3));
    }
}
