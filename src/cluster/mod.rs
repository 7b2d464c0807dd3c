//! Clustering descriptors into a visual vocabulary.

pub mod gmm;
pub mod init;
pub mod kmajority;
pub mod kmeans;
