//! Dimensionality reduction.

pub mod pca;
pub mod products;
