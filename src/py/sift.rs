//! Bindings for `crate::features::sift`: the `Sift` extractor class.

use pyo3::prelude::*;

use crate::features::sift::{Sift, SiftParams};
use crate::py::args::{Int, INT_MAX};
use crate::py::features::{extractor_methods, feature2d_methods};

/// SIFT keypoints and 128-float descriptors (OpenCV 4.x's `cv2.SIFT_create`),
/// built once with its parameters. See `bovw.SIFT` for the documentation.
#[pyclass(name = "Sift", module = "bovw._bovw", frozen)]
pub struct PySift(pub Sift);

#[pymethods]
impl PySift {
    #[new]
    #[pyo3(signature = (*, n_features=Int::Fits(0), n_octave_layers=Int::Fits(3), contrast_threshold=0.04, edge_threshold=10.0, sigma=1.6))]
    #[pyo3(text_signature = "(*, n_features=0, n_octave_layers=3, contrast_threshold=0.04, edge_threshold=10.0, sigma=1.6)")]
    fn new(n_features: Int, n_octave_layers: Int, contrast_threshold: f64, edge_threshold: f64, sigma: f64) -> PyResult<Self> {
        let n_features = n_features.index("n_features", 0, INT_MAX)?;
        let n_octave_layers = n_octave_layers.index("n_octave_layers", 1, Sift::MAX_OCTAVE_LAYERS as i64)?;
        Ok(PySift(Sift::new(SiftParams { n_features, n_octave_layers, contrast_threshold, edge_threshold, sigma })?))
    }
}

extractor_methods!(PySift);
feature2d_methods!(PySift);

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySift>()
}
