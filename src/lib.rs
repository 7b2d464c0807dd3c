//! bovw: fast bag-of-visual-words kernels for image pipelines.
//!
//! The crate is organised by pipeline stage; stage modules do not use PyO3,
//! and the `python` feature adds the thin bindings in [`py`]:
//!
//! - [`image`]: JPEG/PNG decoding and OpenCV-compatible grayscale conversion;
//! - [`features`]: SIFT and ORB keypoints and descriptors;
//! - [`cluster`]: K-Means visual vocabularies and diagonal Gaussian mixtures;
//! - [`cnn`]: CNN embeddings (EfficientNet-Lite, ONNX graphs);
//! - [`histogram`]: bag-of-visual-words histograms;
//! - [`encode`]: spatial pyramids, soft assignment, VLAD, Fisher vectors and feature maps;
//! - [`decomposition`]: principal component analysis (PCA);
//! - [`arrow`]: Arrow batches in and out.

pub mod arrow;
pub mod cluster;
pub mod cnn;
pub mod decomposition;
pub mod encode;
pub mod error;
pub mod features;
pub mod histogram;
pub mod image;

#[cfg(feature = "python")]
pub mod py;

pub use error::{BovwError, Result};

#[cfg(feature = "python")]
#[pyo3::pymodule]
fn _bovw(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
    use pyo3::prelude::*;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    py::register(m)
}
