//! Dimensionality reduction.

pub mod pca;
pub mod products;
pub mod syrk;
