//! Clustering descriptors into a visual vocabulary.

pub mod kmajority;
pub mod kmeans;
