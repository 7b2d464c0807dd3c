//! K-Means (Lloyd / Elkan) with k-means++ initialisation. (Being written: issue 4.)

use rayon::prelude::*;

/// Nearest center of each row of `x` (n x d, row-major) among `centers`
/// (k x d, row-major), by squared Euclidean distance; ties go to the lowest
/// index. Returns (labels, squared distances).
///
/// # Panics
/// If the slices are not multiples of `d`.
pub fn assign_labels(x: &[f32], centers: &[f32], d: usize) -> (Vec<u32>, Vec<f32>) {
    assert!(d > 0 && x.len() % d == 0 && centers.len() % d == 0);
    x.par_chunks(d)
        .map(|row| {
            let mut best = (0u32, f32::INFINITY);
            for (j, c) in centers.chunks(d).enumerate() {
                let dist: f32 = row.iter().zip(c).map(|(a, b)| (a - b) * (a - b)).sum();
                if dist < best.1 {
                    best = (j as u32, dist);
                }
            }
            best
        })
        .unzip()
}
