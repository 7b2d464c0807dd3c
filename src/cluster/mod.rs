//! Clustering descriptors into a visual vocabulary.

pub mod kmeans;
