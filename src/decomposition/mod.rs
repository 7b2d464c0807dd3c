//! Dimensionality reduction.

pub mod pca;
pub mod project;
pub mod syrk;
