//! The assignment step (E-step): each row's exact nearest center, ties to
//! the lowest index, in blocks of [`CHUNK`] rows run in parallel. A block's
//! distances come from one matrix product ([`gemm_abt`]); the centers within
//! the expansion's error bound of the best are re-checked by the direct
//! formula in `f64` (see the parent module).

use rayon::prelude::*;

use super::distances::{count_le, gemm_abt, min_lanes, sqdist_exact, sqnorm, Real};
use super::{check_shape, CHUNK};
use crate::error::{BovwError, Result};


/// Centers with their squared norms, ready for the assignment step.
pub struct PreparedCenters<'a, T: Real> {
    pub centers: &'a [T],
    pub k: usize,
    pub d: usize,
    norms: Vec<T>,
    pub(super) norm_max: f64,
}

impl<'a, T: Real> PreparedCenters<'a, T> {
    pub fn new(centers: &'a [T], d: usize) -> Self {
        let k = centers.len() / d;
        let n64: Vec<f64> = centers.chunks(d).map(sqnorm).collect();
        let norm_max = n64.iter().cloned().fold(0.0, f64::max);
        PreparedCenters { centers, k, d, norms: n64.iter().map(|&v| T::from_f64(v)).collect(), norm_max }
    }

    fn row(&self, j: usize) -> &[T] {
        &self.centers[j * self.d..(j + 1) * self.d]
    }
}

/// What [`assign_block`] writes besides the labels.
pub(super) struct BlockOut<'a> {
    /// Squared distance to the nearest center: direct (exact) if `exact`,
    /// else the expansion's value plus its error bound (an upper bound).
    pub dists: Option<&'a mut [f64]>,
    pub exact: bool,
    /// Per-group lower bounds: `(group of each center, number of groups G,
    /// out (m x G))` receives, for each row and group, a lower bound on the
    /// squared distance to the nearest center of the group other than the
    /// row's own.
    pub second: Option<(&'a [u32], usize, &'a mut [f64])>,
}

/// Assign the rows of one block (`m x d`) to their exact nearest center
/// (ties to the lowest index). `xnorms` are the rows' squared norms if
/// known. `buf` is scratch space.
pub(super) fn assign_block<T: Real>(
    rows: &[T],
    xnorms: Option<&[f64]>,
    pc: &PreparedCenters<'_, T>,
    buf: &mut Vec<T>,
    labels: &mut [u32],
    mut out: BlockOut<'_>,
) {
    let (k, d) = (pc.k, pc.d);
    let m = rows.len() / d;
    let _ = buf;
    with_scratch(m * k, |buf: &mut [T]| assign_block_in(rows, xnorms, pc, buf, labels, &mut out));
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Run `f` on a per-thread scratch slice of `len` values (reused across
/// calls, so that blocks do not allocate and fault in fresh pages).
fn with_scratch<T: Real, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut v = s.borrow_mut();
        let words = (len * std::mem::size_of::<T>()).div_ceil(8);
        if v.len() < words {
            v.resize(words, 0.0);
        }
        // SAFETY: the f64 storage holds at least `len` values of T (f32 or
        // f64, both plain floats with alignment <= 8), borrowed exclusively.
        let sl = unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut T, len) };
        f(sl)
    })
}

fn assign_block_in<T: Real>(
    rows: &[T],
    xnorms: Option<&[f64]>,
    pc: &PreparedCenters<'_, T>,
    buf: &mut [T],
    labels: &mut [u32],
    out: &mut BlockOut<'_>,
) {
    let (k, d) = (pc.k, pc.d);
    let m = rows.len() / d;
    gemm_abt(rows, pc.centers, m, k, d, buf);
    let two = T::from_f64(2.0);
    let big = T::from_f64(f64::INFINITY);
    for r in 0..m {
        let x = &rows[r * d..(r + 1) * d];
        let dots = &mut buf[r * k..(r + 1) * k];
        // v_j = ||c_j||^2 - 2 x.c_j
        for (v, &cn) in dots.iter_mut().zip(&pc.norms) {
            *v = cn - two * *v;
        }
        let best = min_lanes(dots);
        let xn = match xnorms {
            Some(n) => n[r],
            None => sqnorm(x),
        };
        let delta = (d as f64 + 4.0) * T::EPS * (xn + pc.norm_max);
        let thr = T::from_f64(best.to_f64() + 2.0 * delta);
        let n_cand = count_le(dots, thr);
        let (label, exact_dist) = if n_cand <= 1 {
            let j = dots.iter().position(|&v| v <= thr).unwrap_or(0);
            let e = if out.exact { Some(sqdist_exact(x, pc.row(j))) } else { None };
            (j, e)
        } else {
            let mut bl = usize::MAX;
            let mut bd = f64::INFINITY;
            for (j, &v) in dots.iter().enumerate() {
                if v <= thr {
                    let dj = sqdist_exact(x, pc.row(j));
                    if dj < bd {
                        bd = dj;
                        bl = j;
                    }
                }
            }
            (bl, Some(bd))
        };
        labels[r] = label as u32;
        if let Some(ds) = out.dists.as_deref_mut() {
            ds[r] = match exact_dist {
                Some(e) if out.exact => e,
                _ => (xn + dots[label].to_f64() + delta).max(0.0),
            };
        }
        if let Some((groups, g, s)) = out.second.as_mut() {
            let g = *g;
            let lb = &mut s[r * g..(r + 1) * g];
            if g == 1 {
                let keep = dots[label];
                dots[label] = big;
                let second_v = if k > 1 { min_lanes(dots).to_f64() } else { f64::INFINITY };
                dots[label] = keep;
                lb[0] = (xn + second_v - delta).max(0.0);
            } else {
                lb.iter_mut().for_each(|v| *v = f64::INFINITY);
                for (j, (&v, &gj)) in dots.iter().zip(groups.iter()).enumerate() {
                    let v = v.to_f64();
                    let slot = &mut lb[gj as usize];
                    if j != label && v < *slot {
                        *slot = v;
                    }
                }
                lb.iter_mut().for_each(|v| *v = (xn + *v - delta).max(0.0));
            }
        }
    }
}

/// Check that `x` and `centers` hold whole rows of `d` values and that there
/// is at least one center; returns the number of rows of `x`.
fn check_rows_and_centers<T>(x: &[T], centers: &[T], d: usize) -> Result<usize> {
    let n = check_shape(x, d, "X")?;
    if check_shape(centers, d, "centers")? == 0 {
        return Err(BovwError::input("centers is empty"));
    }
    Ok(n)
}

/// Exact nearest center of each row (`n x d`, row-major) of `x` among
/// `centers` (`k x d`) and the squared distances, in parallel over blocks.
///
/// # Errors
/// [`BovwError::Shape`] when the slices are not multiples of `d`, or no centers.
pub fn assign<T: Real>(x: &[T], centers: &[T], d: usize) -> Result<(Vec<u32>, Vec<f64>)> {
    let n = check_rows_and_centers(x, centers, d)?;
    let pc = PreparedCenters::new(centers, d);
    let mut labels = vec![0u32; n];
    let mut dists = vec![0f64; n];
    assign_into(x, &pc, &mut labels, &mut dists);
    Ok((labels, dists))
}

/// Labels only (no distances): the fastest path, for `predict`.
///
/// # Errors
/// As [`assign`].
pub fn assign_labels_only<T: Real>(x: &[T], centers: &[T], d: usize) -> Result<Vec<u32>> {
    let n = check_rows_and_centers(x, centers, d)?;
    let pc = PreparedCenters::new(centers, d);
    let mut labels = vec![0u32; n];
    x.par_chunks(CHUNK * d).zip(labels.par_chunks_mut(CHUNK)).for_each_init(Vec::new, |buf, (rows, l)| {
        assign_block(rows, None, &pc, buf, l, BlockOut { dists: None, exact: false, second: None })
    });
    Ok(labels)
}

fn assign_into<T: Real>(x: &[T], pc: &PreparedCenters<'_, T>, labels: &mut [u32], dists: &mut [f64]) {
    let d = pc.d;
    x.par_chunks(CHUNK * d)
        .zip(labels.par_chunks_mut(CHUNK))
        .zip(dists.par_chunks_mut(CHUNK))
        .for_each_init(Vec::new, |buf, ((rows, l), ds)| {
            assign_block(rows, None, pc, buf, l, BlockOut { dists: Some(ds), exact: true, second: None })
        });
}

/// Nearest center of each row of `x` (n x d, row-major) among `centers`
/// (k x d, row-major), by squared Euclidean distance; ties go to the lowest
/// index. Returns (labels, squared distances).
///
/// The fast path: blocked GEMM expansion, with the close candidates
/// re-checked exactly (see the module docs).
///
/// # Panics
/// If the slices are not multiples of `d`, `d == 0` or there are no centers.
pub fn assign_labels(x: &[f32], centers: &[f32], d: usize) -> (Vec<u32>, Vec<f32>) {
    assert!(d > 0 && x.len() % d == 0 && centers.len() % d == 0 && !centers.is_empty());
    let (l, ds) = assign(x, centers, d).expect("shapes checked");
    (l, ds.into_iter().map(|v| v as f32).collect())
}

/// Labels only, by the GEMM path.
pub(super) fn lloyd_assign<T: Real>(x: &[T], xn: &[f64], pc: &PreparedCenters<'_, T>, labels: &mut [u32]) {
    let d = pc.d;
    x.par_chunks(CHUNK * d).zip(xn.par_chunks(CHUNK)).zip(labels.par_chunks_mut(CHUNK)).for_each_init(
        Vec::new,
        |buf, ((rows, xb), l)| assign_block(rows, Some(xb), pc, buf, l, BlockOut { dists: None, exact: false, second: None }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::kmeans::testdata::{blobs, brute};

    #[test]
    fn assign_matches_brute_force() {
        let d = 17;
        let x = blobs(1000, d, 7, 1);
        let c: Vec<f32> = x[..40 * d].to_vec();
        let (l, ds) = assign_labels(&x, &c, d);
        assert_eq!(l, brute(&x, &c, d));
        // Points that are centers are at distance 0, exactly.
        assert!(ds[..40].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn ties_go_to_lowest_index() {
        let x = vec![0.0f32, 0.0];
        let c = vec![1.0f32, 0.0, -1.0, 0.0, 0.0, 1.0];
        let (l, ds) = assign_labels(&x, &c, 2);
        assert_eq!(l, vec![0]);
        assert_eq!(ds, vec![1.0]);
    }

    #[test]
    fn far_from_origin_is_exact() {
        // Large offsets make the expansion lose precision; the re-check fixes it.
        let d = 4;
        let mut x = Vec::new();
        let mut c = Vec::new();
        for j in 0..5 {
            c.extend([1.0e4 + j as f32 * 0.01, 1.0e4, 1.0e4, 1.0e4]);
        }
        for i in 0..50 {
            x.extend([1.0e4 + i as f32 * 0.001, 1.0e4, 1.0e4, 1.0e4]);
        }
        let (l, _) = assign_labels(&x, &c, d);
        assert_eq!(l, brute(&x, &c, d));
    }
}
