//! Dimensionality reduction.

pub mod pca;
pub mod syrk;
pub mod sytrd;
pub mod tridiag;
