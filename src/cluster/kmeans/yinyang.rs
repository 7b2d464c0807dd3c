//! Yinyang K-means (Ding et al. 2015), scikit-learn's "elkan": per-point
//! upper bounds and per-group lower bounds, moved lazily by the logged center
//! drifts, with Hamerly's test on half the gap to the closest other center;
//! the labels are exactly Lloyd's (see the parent module).

use rayon::prelude::*;

use super::assign::{assign_block, BlockOut, PreparedCenters};
use super::distances::{distances_as, sqdist_exact, Real};
use super::{kmeans_single, Algorithm, CHUNK};

/// Number of groups of lower bounds for `k` centers: about 10 centers per
/// group (Ding et al. 2015 use `k / 10`), at most [`MAX_GROUPS`].
fn n_groups(k: usize) -> usize {
    (k / 10).clamp(1, MAX_GROUPS)
}

/// Cap on the groups of lower bounds (memory: `8 * G` bytes per sample).
const MAX_GROUPS: usize = 32;

/// Groups of centers for the lower bounds: `of[j]` is the group of center
/// `j`, `members[q]` the centers of group `q` in increasing order.
pub(super) struct Groups {
    pub(super) of: Vec<u32>,
    members: Vec<Vec<u32>>,
    pub(super) g: usize,
}

impl Groups {
    pub(super) fn from_labels(of: Vec<u32>, g: usize) -> Self {
        let mut members = vec![Vec::new(); g];
        for (j, &q) in of.iter().enumerate() {
            members[q as usize].push(j as u32);
        }
        Groups { of, members, g }
    }
}

/// Group the initial centers by a few Lloyd iterations on the centers
/// themselves (Ding et al. 2015, "Yinyang K-means"), see [`n_groups`].
pub(super) fn center_groups<T: Real>(centers: &[T], d: usize) -> Groups {
    let k = centers.len() / d;
    let g = n_groups(k);
    if g == 1 {
        return Groups::from_labels(vec![0; k], 1);
    }
    let c64: Vec<f64> = centers.iter().map(|v| v.to_f64()).collect();
    // Evenly spaced initial group centers; deterministic.
    let init: Vec<f64> = (0..g).flat_map(|q| c64[(q * k / g) * d..(q * k / g + 1) * d].to_vec()).collect();
    match kmeans_single(&c64, d, None, &init, 10, 0.0, Algorithm::Lloyd) {
        Ok(r) => Groups::from_labels(r.labels, g),
        Err(_) => Groups::from_labels(vec![0; k], 1),
    }
}

/// The bounds of Yinyang K-means, moved lazily.
///
/// Each point stores, as of the last step that looked at it (`stamp`): an
/// upper bound `u` on the distance to its own center, lower bounds `l_q` on
/// the distance to the centers of each group `q` (its own center left out)
/// and their minimum `l`. The drifts of the centers are logged as running
/// sums over the steps (`cum_p` per center, `cum_m` per group of the largest
/// drift in the group, `cum_g` of the largest drift overall), so a point's
/// bounds now are `u + (cum_p[now][a] - cum_p[stamp][a])` and
/// `l - (cum_g[now] - cum_g[stamp])`: the global test reads four numbers per
/// point and writes nothing when it passes, which is most points once the
/// centers settle.
pub(super) struct Yinyang {
    g: usize,
    k: usize,
    upper: Vec<f64>,
    glb: Vec<f64>,
    stamp: Vec<u32>,
    lower: Vec<f64>,
    cum_p: Vec<f64>,
    cum_m: Vec<f64>,
    cum_g: Vec<f64>,
}

impl Yinyang {
    /// Bounds from a full assignment: `upper` (squared distances to the
    /// nearest center, upper bounds) and `lower` (`n x g` squared lower
    /// bounds per group).
    pub(super) fn new(mut upper: Vec<f64>, mut lower: Vec<f64>, k: usize, g: usize) -> Self {
        upper.par_iter_mut().for_each(|v| *v = v.sqrt());
        lower.par_iter_mut().for_each(|v| *v = v.sqrt());
        let glb: Vec<f64> = lower.par_chunks(g).map(|l| l.iter().cloned().fold(f64::INFINITY, f64::min)).collect();
        let n = upper.len();
        Yinyang { g, k, upper, glb, stamp: vec![0; n], lower, cum_p: vec![0.0; k], cum_m: vec![0.0; g], cum_g: vec![0.0] }
    }

    /// Log the drifts of one M-step (squared center shifts).
    pub(super) fn log_drift(&mut self, shifts: &[f64], groups: &Groups) {
        let (k, g) = (self.k, self.g);
        let t = self.cum_g.len() - 1;
        // Rounded up a little so that the moved bounds stay bounds.
        let p: Vec<f64> = shifts.iter().map(|s| s.sqrt() * (1.0 + 1e-12)).collect();
        let mut m = vec![0.0f64; g];
        for (j, &v) in p.iter().enumerate() {
            let q = groups.of[j] as usize;
            m[q] = m[q].max(v);
        }
        let mg = m.iter().cloned().fold(0.0, f64::max);
        for j in 0..k {
            let v = self.cum_p[t * k + j] + p[j];
            self.cum_p.push(v);
        }
        for q in 0..g {
            let v = self.cum_m[t * g + q] + m[q];
            self.cum_m.push(v);
        }
        let v = self.cum_g[t] + mg;
        self.cum_g.push(v);
    }

    /// One assignment step of Yinyang K-means (Ding et al. 2015) with Hamerly's
    /// extra test on `s_j`, exact: every label is the nearest center (ties to
    /// the lowest index), as Lloyd's step gives.
    ///
    /// Per point: move the bounds by the drifts since the point was last looked
    /// at; skip the point if `u < max(min_q l_q, s_a)`; else tighten `u` to the
    /// distance to its center and test again; else compute the distances to the
    /// centers of each group `q` with `l_q` below the best distance found so far
    /// (the group filter), by the direct formula in the input precision
    /// (relative error below `gamma`). Centers within that error of the best
    /// are re-checked in `f64`; the groups computed get fresh lower bounds and
    /// the others keep theirs (plus the old center, if it lost its point). Tests
    /// are strict, so a tie is never skipped.
    pub(super) fn assign<T: Real>(&mut self, x: &[T], d: usize, centers: &[T], groups: &Groups, labels: &mut [u32]) {
        let (g, k) = (self.g, self.k);
        let now = self.cum_g.len() - 1;
        let pc = PreparedCenters::new(centers, d);
        let half = half_gaps(&pc);
        let gamma = (d as f64 + 16.0) * T::EPS;
        let (lo_f, hi_f) = (1.0 - gamma, 1.0 + gamma);
        // Slack for the rounding of the running sums.
        let slack = |cum_now: f64| 1e-12 * cum_now.abs();
        let (cum_p, cum_m, cum_g) = (&self.cum_p, &self.cum_m, &self.cum_g);
        let p_now = &cum_p[now * k..(now + 1) * k];
        let m_now = &cum_m[now * g..(now + 1) * g];
        let g_now = cum_g[now];
        let sizes: Vec<usize> = groups.members.iter().map(|m| m.len()).collect();
        x.par_chunks(CHUNK * d)
            .zip(labels.par_chunks_mut(CHUNK))
            .zip(self.upper.par_chunks_mut(CHUNK))
            .zip(self.glb.par_chunks_mut(CHUNK))
            .zip(self.stamp.par_chunks_mut(CHUNK))
            .zip(self.lower.par_chunks_mut(CHUNK * g))
            .for_each_init(
                || {
                    (
                        (Vec::<f64>::new(), Vec::<u32>::new(), vec![GroupMin::EMPTY; g], Vec::<usize>::new()),
                        (Vec::<usize>::new(), Vec::<T>::new(), Vec::<u32>::new(), Vec::<f64>::new(), Vec::<f64>::new(), Vec::<T>::new()),
                    )
                },
                |((vals, idx, gmin, done), (fail, gath, glab, gdist, gsec, buf)), (((((rows, l), u), gl), st), lo)| {
                    // Pass 1: the bound tests, without touching the rows.
                    fail.clear();
                    let mut est = 0usize;
                    for r in 0..l.len() {
                        let a = l[r] as usize;
                        let t = st[r] as usize;
                        let du = p_now[a] - cum_p[t * k + a] + slack(p_now[a]);
                        let dg = g_now - cum_g[t] + slack(g_now);
                        let ub = u[r] + du;
                        if ub < half[a].max(gl[r] - dg) {
                            continue;
                        }
                        // Bring the group bounds up to date.
                        let lb = &mut lo[r * g..(r + 1) * g];
                        let m_then = &cum_m[t * g..(t + 1) * g];
                        let mut glb = f64::INFINITY;
                        for q in 0..g {
                            let v = (lb[q] - (m_now[q] - m_then[q] + slack(m_now[q]))).max(0.0);
                            lb[q] = v;
                            glb = glb.min(v);
                        }
                        st[r] = now as u32;
                        gl[r] = glb;
                        u[r] = ub;
                        if ub < half[a].max(glb) {
                            continue;
                        }
                        fail.push(r);
                        est += lb.iter().zip(&sizes).filter(|(&v, _)| v < ub).map(|(_, &s)| s).sum::<usize>();
                    }
                    if fail.is_empty() {
                        return;
                    }
                    // Most of the centers to compute: one matrix product for
                    // the failing rows gives their labels and fresh bounds.
                    if est * DIRECT_COST >= fail.len() * k {
                        let m = fail.len();
                        gath.clear();
                        for &r in fail.iter() {
                            gath.extend_from_slice(&rows[r * d..(r + 1) * d]);
                        }
                        glab.resize(m, 0);
                        gdist.resize(m, 0.0);
                        gsec.resize(m * g, 0.0);
                        assign_block(
                            gath,
                            None,
                            &pc,
                            buf,
                            glab,
                            BlockOut { dists: Some(&mut gdist[..]), exact: false, second: Some((&groups.of, g, &mut gsec[..])) },
                        );
                        for (i, &r) in fail.iter().enumerate() {
                            l[r] = glab[i];
                            u[r] = gdist[i].sqrt();
                            let lb = &mut lo[r * g..(r + 1) * g];
                            let mut glb = f64::INFINITY;
                            for q in 0..g {
                                lb[q] = gsec[i * g + q].sqrt();
                                glb = glb.min(lb[q]);
                            }
                            gl[r] = glb;
                        }
                        return;
                    }
                    // Pass 2: a few rows, by direct distances. The failing
                    // rows are scattered, so the hardware prefetcher does not
                    // fetch them: ask for the row after next.
                    for (i, &r) in fail.iter().enumerate() {
                        if let Some(&next) = fail.get(i + PREFETCH_AHEAD) {
                            prefetch_row(&rows[next * d..(next + 1) * d]);
                        }
                        let a = l[r] as usize;
                        let lb = &mut lo[r * g..(r + 1) * g];
                        let thr = half[a].max(gl[r]);
                        // Tighten the upper bound (filter precision).
                        let row = &rows[r * d..(r + 1) * d];
                        vals.clear();
                        idx.clear();
                        done.clear();
                        idx.push(a as u32);
                        T::sqdists(row, centers, d, &idx[..1], vals);
                        let va = vals[0];
                        let ua = (va * hi_f).sqrt();
                        u[r] = ua;
                        if ua < thr {
                            continue;
                        }
                        // Group filter, on squared values: `best2` bounds the
                        // squared distance of the nearest center from above.
                        let mut best2 = va * hi_f;
                        for q in 0..g {
                            if lb[q] * lb[q] > best2 {
                                continue;
                            }
                            let start = idx.len();
                            idx.extend(groups.members[q].iter().filter(|&&j| j as usize != a));
                            T::sqdists(row, centers, d, &idx[start..], vals);
                            let mut gm = GroupMin::EMPTY;
                            for (&j, &v) in idx[start..].iter().zip(&vals[start..]) {
                                gm.push(j, v);
                            }
                            best2 = best2.min(gm.v1 * hi_f);
                            gmin[q] = gm;
                            done.push(q);
                        }
                        // The candidates: every center that may be the nearest
                        // (`a` first). One candidate is the nearest; several
                        // are decided by the exact distance, ties to the
                        // lowest index.
                        let n_cand = vals.iter().filter(|&&v| v * lo_f <= best2).count();
                        let (b, bd_up) = if n_cand == 1 {
                            let pos = vals.iter().position(|&v| v * lo_f <= best2).expect("one candidate");
                            (idx[pos] as usize, vals[pos] * hi_f)
                        } else {
                            let (mut b, mut bd) = (usize::MAX, f64::INFINITY);
                            for (&j, &v) in idx.iter().zip(vals.iter()) {
                                if v * lo_f <= best2 {
                                    let j = j as usize;
                                    let e = sqdist_exact(row, &centers[j * d..(j + 1) * d]);
                                    if e < bd || (e == bd && j < b) {
                                        b = j;
                                        bd = e;
                                    }
                                }
                            }
                            (b, bd)
                        };
                        // New bounds for the groups computed (the nearest
                        // center of its group left out).
                        for &q in done.iter() {
                            let gm = &gmin[q];
                            let v = if gm.j1 as usize == b { gm.v2 } else { gm.v1 };
                            lb[q] = (v * lo_f).max(0.0).sqrt();
                        }
                        if b != a {
                            // The old center is now one of the others.
                            let qa = groups.of[a] as usize;
                            lb[qa] = lb[qa].min((va * lo_f).max(0.0).sqrt());
                            l[r] = b as u32;
                        }
                        u[r] = bd_up.sqrt();
                        gl[r] = lb.iter().cloned().fold(f64::INFINITY, f64::min);
                    }
                },
            );
    }
}

/// How many failing rows ahead pass 2 prefetches.
const PREFETCH_AHEAD: usize = 2;

/// Ask for the cache lines of `row` (a hint; never faults).
#[inline(always)]
fn prefetch_row<T>(row: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let start = row.as_ptr() as usize;
        let end = start + std::mem::size_of_val(row);
        let mut p = start & !63;
        while p < end {
            // SAFETY: a prefetch is only a hint and never faults; the
            // address lies inside `row`'s cache lines.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8) };
            p += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// Relative cost of a distance by the direct formula to one by the blocked
/// matrix product (measured on SIFT, d = 128): a block's failing rows go to
/// the matrix product when the group filter would compute more than
/// `1 / DIRECT_COST` of all their distances.
const DIRECT_COST: usize = 3;

/// Half the distance from each center to its closest other center (`s_j` of
/// Hamerly's algorithm), rounded down so that it stays a bound.
fn half_gaps<T: Real>(pc: &PreparedCenters<'_, T>) -> Vec<f64> {
    let (k, d) = (pc.k, pc.d);
    if k == 1 {
        return vec![f64::INFINITY];
    }
    let cc = distances_as(pc.centers, pc.centers, d, |v| v).expect("shapes");
    // The f64 expansion is within `delta` of the exact squared distance.
    let delta = (d as f64 + 4.0) * f64::EPSILON * 2.0 * pc.norm_max * 4.0;
    (0..k)
        .into_par_iter()
        .map(|j| {
            let mut m = f64::INFINITY;
            for j2 in 0..k {
                if j2 != j {
                    m = m.min(cc[j * k + j2]);
                }
            }
            0.5 * (m * m - delta).max(0.0).sqrt() * (1.0 - 1e-12)
        })
        .collect()
}

/// The two smallest values of a group's distances and the center of the
/// smallest.
#[derive(Clone, Copy)]
struct GroupMin {
    v1: f64,
    j1: u32,
    v2: f64,
}

impl GroupMin {
    const EMPTY: GroupMin = GroupMin { v1: f64::INFINITY, j1: u32::MAX, v2: f64::INFINITY };

    #[inline]
    fn push(&mut self, j: u32, v: f64) {
        if v < self.v1 {
            self.v2 = self.v1;
            self.v1 = v;
            self.j1 = j;
        } else if v < self.v2 {
            self.v2 = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::cluster::kmeans::testdata::{blobs, brute};
    use crate::cluster::kmeans::{kmeans_single, tolerance, Algorithm};
    use approx::assert_relative_eq;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn lloyd_and_elkan_agree_and_converge() {
        let d = 8;
        let x = blobs(3000, d, 5, 2);
        let init: Vec<f32> = x[..5 * d].to_vec();
        let tol = tolerance(&x, d, 1e-4);
        let a = kmeans_single(&x, d, None, &init, 300, tol, Algorithm::Lloyd).unwrap();
        let b = kmeans_single(&x, d, None, &init, 300, tol, Algorithm::Elkan).unwrap();
        assert_eq!(a.labels, b.labels);
        assert_relative_eq!(a.inertia, b.inertia, max_relative = 1e-9);
        // The labels are the nearest centers of the final centers.
        assert_eq!(a.labels, brute(&x, &a.centers, d));
        // Blobs are recovered: the inertia is about n * d * var(U(0, 5)).
        let expected = 3000.0 * d as f64 * 25.0 / 12.0;
        assert_relative_eq!(a.inertia, expected, max_relative = 0.1);
    }

    #[test]
    fn grouped_bounds_give_lloyds_labels() {
        // 60 centers: 6 groups of lower bounds.
        let d = 12;
        let x = blobs(6000, d, 40, 5);
        let init: Vec<f32> = x[..60 * d].to_vec();
        let a = kmeans_single(&x, d, None, &init, 50, 0.0, Algorithm::Lloyd).unwrap();
        let b = kmeans_single(&x, d, None, &init, 50, 0.0, Algorithm::Elkan).unwrap();
        assert_eq!(a.labels, b.labels);
        assert_eq!(a.n_iter, b.n_iter);
        assert_relative_eq!(a.inertia, b.inertia, max_relative = 1e-9);
    }

    #[test]
    fn yinyang_is_exact_with_ties_and_many_groups() {
        // Integer data on a coarse grid: many exact ties between centers,
        // which must go to the lowest index as in Lloyd's step. 330 centers:
        // 32 groups (the cap); d = 35 exercises the kernel's tail.
        let d = 35;
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let x: Vec<f32> = (0..8000 * d).map(|_| rng.random_range(0..4) as f32).collect();
        let k = 330;
        let init: Vec<f32> = x[..k * d].to_vec();
        for max_iter in [1, 3, 30] {
            let a = kmeans_single(&x, d, None, &init, max_iter, 0.0, Algorithm::Lloyd).unwrap();
            let b = kmeans_single(&x, d, None, &init, max_iter, 0.0, Algorithm::Elkan).unwrap();
            assert_eq!(a.labels, b.labels, "max_iter {max_iter}");
            assert_eq!(a.n_iter, b.n_iter);
            assert_eq!(b.labels, brute(&x, &b.centers, d));
        }
        // f64 input too.
        let x64: Vec<f64> = x.iter().map(|&v| v as f64 + 0.25).collect();
        let i64_: Vec<f64> = x64[..k * d].to_vec();
        let a = kmeans_single(&x64, d, None, &i64_, 20, 0.0, Algorithm::Lloyd).unwrap();
        let b = kmeans_single(&x64, d, None, &i64_, 20, 0.0, Algorithm::Elkan).unwrap();
        assert_eq!(a.labels, b.labels);
    }
}
