//! The pieces of a distributed Lloyd iteration: each batch's per-center
//! sums, counts and inertia, which add over batches (Spark's `treeAggregate`).

use super::assign::assign;
use super::distances::Real;
use super::update::{cluster_sums, weighted_sum};
use crate::error::Result;


/// The statistics of one batch for a distributed Lloyd iteration.
#[derive(Clone, Debug)]
pub struct PartialSums {
    /// Sum of the rows assigned to each center, k x d row-major, `f64`.
    pub sums: Vec<f64>,
    /// Number of rows assigned to each center.
    pub counts: Vec<i64>,
    /// Sum of the squared distances of the rows to their nearest center.
    pub inertia: f64,
}

/// Assign a batch to `centers` and return its per-center sums, counts and
/// inertia: adding these over all batches and dividing sums by counts is one
/// Lloyd iteration.
///
/// # Errors
/// [`BovwError`] for inconsistent shapes or no centers.
pub fn partial_sums<T: Real>(x: &[T], centers: &[T], d: usize) -> Result<PartialSums> {
    let (labels, dists) = assign(x, centers, d)?;
    let k = centers.len() / d;
    let (sums, _, counts) = cluster_sums(x, d, None, &labels, k);
    Ok(PartialSums { sums, counts, inertia: weighted_sum(&dists, None) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::kmeans::testdata::blobs;
    use approx::assert_relative_eq;

    #[test]
    fn partial_sums_add_up() {
        let d = 5;
        let x = blobs(700, d, 3, 4);
        let c: Vec<f32> = x[..3 * d].to_vec();
        let all = partial_sums(&x, &c, d).unwrap();
        let a = partial_sums(&x[..300 * d], &c, d).unwrap();
        let b = partial_sums(&x[300 * d..], &c, d).unwrap();
        assert_eq!(all.counts.iter().sum::<i64>(), 700);
        for j in 0..3 {
            assert_eq!(all.counts[j], a.counts[j] + b.counts[j]);
            for t in 0..d {
                assert_relative_eq!(all.sums[j * d + t], a.sums[j * d + t] + b.sums[j * d + t], max_relative = 1e-12);
            }
        }
        assert_relative_eq!(all.inertia, a.inertia + b.inertia, max_relative = 1e-12);
    }
}
