//! The update step (M-step): per-cluster sums over fixed parts of the data
//! (added part by part in order, so the result does not depend on the
//! threads), scikit-learn's relocation of empty clusters, the new centers,
//! and the inertia.

use rayon::prelude::*;

use super::distances::{sqdist_exact, Real};
use super::CHUNK;


/// Rows per part for the deterministic reductions: depends on `n` only.
pub(super) fn part_rows(n: usize) -> usize {
    let target = n.div_ceil(16).max(8 * CHUNK);
    target.div_ceil(CHUNK) * CHUNK
}

/// Per-cluster sums (k x d, `f64`), weights (k) and counts (k) of the rows
/// of `x` by `labels`, accumulated over fixed parts and added in order.
pub fn cluster_sums<T: Real>(
    x: &[T],
    d: usize,
    w: Option<&[f64]>,
    labels: &[u32],
    k: usize,
) -> (Vec<f64>, Vec<f64>, Vec<i64>) {
    let n = labels.len();
    let pr = part_rows(n);
    let parts: Vec<(Vec<f64>, Vec<f64>, Vec<i64>)> = (0..n.div_ceil(pr))
        .into_par_iter()
        .map(|p| {
            let (lo, hi) = (p * pr, ((p + 1) * pr).min(n));
            let mut s = vec![0f64; k * d];
            let mut ws = vec![0f64; k];
            let mut cs = vec![0i64; k];
            for i in lo..hi {
                let j = labels[i] as usize;
                let wi = w.map_or(1.0, |w| w[i]);
                let row = &x[i * d..(i + 1) * d];
                let acc = &mut s[j * d..(j + 1) * d];
                if w.is_some() {
                    for (a, v) in acc.iter_mut().zip(row) {
                        *a += wi * v.to_f64();
                    }
                } else {
                    for (a, v) in acc.iter_mut().zip(row) {
                        *a += v.to_f64();
                    }
                }
                ws[j] += wi;
                cs[j] += 1;
            }
            (s, ws, cs)
        })
        .collect();
    let mut it = parts.into_iter();
    let (mut s, mut ws, mut cs) = it.next().unwrap_or_else(|| (vec![0.0; k * d], vec![0.0; k], vec![0; k]));
    for (s2, w2, c2) in it {
        s.iter_mut().zip(&s2).for_each(|(a, b)| *a += b);
        ws.iter_mut().zip(&w2).for_each(|(a, b)| *a += b);
        cs.iter_mut().zip(&c2).for_each(|(a, b)| *a += b);
    }
    (s, ws, cs)
}

/// Weighted sum of squared distances of each row to its labelled center.
pub fn inertia_of<T: Real>(x: &[T], d: usize, w: Option<&[f64]>, centers: &[T], labels: &[u32]) -> f64 {
    let n = labels.len();
    let pr = part_rows(n);
    let parts: Vec<f64> = (0..n.div_ceil(pr))
        .into_par_iter()
        .map(|p| {
            let (lo, hi) = (p * pr, ((p + 1) * pr).min(n));
            let mut s = 0.0;
            for i in lo..hi {
                let j = labels[i] as usize;
                let di = sqdist_exact(&x[i * d..(i + 1) * d], &centers[j * d..(j + 1) * d]);
                s += w.map_or(1.0, |w| w[i]) * di;
            }
            s
        })
        .collect();
    parts.iter().sum()
}

/// Weighted sum of `values`, over the same fixed parts.
pub(super) fn weighted_sum(values: &[f64], w: Option<&[f64]>) -> f64 {
    let n = values.len();
    let pr = part_rows(n);
    let parts: Vec<f64> = (0..n.div_ceil(pr))
        .into_par_iter()
        .map(|p| {
            let (lo, hi) = (p * pr, ((p + 1) * pr).min(n));
            match w {
                Some(w) => (lo..hi).map(|i| w[i] * values[i]).sum(),
                None => values[lo..hi].iter().sum(),
            }
        })
        .collect();
    parts.iter().sum()
}

/// scikit-learn's empty-cluster relocation on the M-step sums: each empty
/// cluster (zero weight) takes one of the points farthest from their center
/// (`centers_old`), farthest first, ties to the lowest index.
pub(super) fn relocate_empty<T: Real>(
    x: &[T],
    d: usize,
    w: Option<&[f64]>,
    centers_old: &[T],
    labels: &[u32],
    sums: &mut [f64],
    weights: &mut [f64],
) {
    let empty: Vec<usize> = (0..weights.len()).filter(|&j| weights[j] == 0.0).collect();
    if empty.is_empty() {
        return;
    }
    let n = labels.len();
    let dist: Vec<f64> = (0..n)
        .into_par_iter()
        .map(|i| {
            let j = labels[i] as usize;
            sqdist_exact(&x[i * d..(i + 1) * d], &centers_old[j * d..(j + 1) * d])
        })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    let m = empty.len().min(n);
    let cmp = |a: &usize, b: &usize| dist[*b].total_cmp(&dist[*a]).then(a.cmp(b));
    if m < n {
        order.select_nth_unstable_by(m, cmp);
        order.truncate(m);
    }
    order.sort_by(cmp);
    for (&new_id, &far) in empty.iter().zip(&order) {
        let wi = w.map_or(1.0, |w| w[far]);
        let old_id = labels[far] as usize;
        let row = &x[far * d..(far + 1) * d];
        for t in 0..d {
            sums[old_id * d + t] -= wi * row[t].to_f64();
            sums[new_id * d + t] = wi * row[t].to_f64();
        }
        weights[new_id] = wi;
        weights[old_id] -= wi;
    }
}

/// New centers from the sums; a cluster with no weight keeps its old center.
pub(super) fn average<T: Real>(sums: &[f64], weights: &[f64], old: &[T], d: usize) -> Vec<T> {
    let mut out = old.to_vec();
    for (j, &wj) in weights.iter().enumerate() {
        if wj > 0.0 {
            for t in 0..d {
                out[j * d + t] = T::from_f64(sums[j * d + t] / wj);
            }
        }
    }
    out
}

/// The M-step sums (`k x d`, `f64`), weights and counts of the rows by their
/// labels. After the first iteration, when fewer than `n / 8` rows changed
/// label and there are no sample weights, the sums are updated by those rows
/// only, in row order (so the result does not depend on the threads);
/// otherwise they are recomputed by [`cluster_sums`].
pub(super) struct MStep {
    pub(super) sums: Vec<f64>,
    pub(super) weights: Vec<f64>,
    counts: Vec<i64>,
    valid: bool,
}

impl MStep {
    pub(super) fn new(k: usize, d: usize) -> Self {
        MStep { sums: vec![0.0; k * d], weights: vec![0.0; k], counts: vec![0; k], valid: false }
    }

    /// Bring the sums from `old` labels to `labels`; returns whether no
    /// label changed.
    pub(super) fn update<T: Real>(&mut self, x: &[T], d: usize, w: Option<&[f64]>, labels: &[u32], old: &[u32]) -> bool {
        let n = labels.len();
        let changed: Vec<usize> = (0..n).into_par_iter().filter(|&i| labels[i] != old[i]).collect();
        if changed.is_empty() && self.valid {
            return true;
        }
        if !self.valid || w.is_some() || changed.len() >= n / 8 {
            let k = self.weights.len();
            let (s, ws, cs) = cluster_sums(x, d, w, labels, k);
            (self.sums, self.weights, self.counts) = (s, ws, cs);
            self.valid = true;
            return changed.is_empty();
        }
        for &i in &changed {
            let (a, b) = (old[i] as usize, labels[i] as usize);
            let row = &x[i * d..(i + 1) * d];
            for (t, v) in row.iter().enumerate() {
                let v = v.to_f64();
                self.sums[a * d + t] -= v;
                self.sums[b * d + t] += v;
            }
            self.counts[a] -= 1;
            self.counts[b] += 1;
        }
        for (j, &c) in self.counts.iter().enumerate() {
            self.weights[j] = c as f64;
            if c == 0 {
                // Exactly empty, whatever the rounding of the updates.
                self.sums[j * d..(j + 1) * d].iter_mut().for_each(|v| *v = 0.0);
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use crate::cluster::kmeans::{kmeans_single, Algorithm};
    use approx::assert_relative_eq;

    #[test]
    fn empty_cluster_is_relocated() {
        // Two identical initial centers: the second one gets no points.
        let x: Vec<f64> = vec![0.0, 0.1, 0.2, 10.0, 10.1, 10.2];
        let init = vec![0.0, 0.0];
        let r = kmeans_single(&x, 1, None, &init, 10, 0.0, Algorithm::Lloyd).unwrap();
        let mut c = r.centers.clone();
        c.sort_by(f64::total_cmp);
        assert_relative_eq!(c[0], 0.1, epsilon = 1e-12);
        assert_relative_eq!(c[1], 10.1, epsilon = 1e-12);
    }
}
