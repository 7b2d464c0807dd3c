//! Bindings for `crate::features::orb`: the `Orb` extractor class.

use pyo3::prelude::*;

use crate::features::orb::{Orb, OrbParams, ScoreType};
use crate::py::features::{extractor_methods, feature2d_methods};

/// ORB keypoints and 32-byte binary descriptors (OpenCV 4.x's
/// `cv2.ORB_create`), built once with its parameters. See `bovw.ORB` for the
/// documentation.
#[pyclass(name = "Orb", module = "bovw._bovw", frozen)]
pub struct PyOrb(pub Orb);

#[pymethods]
impl PyOrb {
    #[new]
    #[pyo3(signature = (*, n_features=500, scale_factor=1.2, n_levels=8, edge_threshold=31, first_level=0, wta_k=2, score_type="harris", patch_size=31, fast_threshold=20))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        n_features: usize,
        scale_factor: f64,
        n_levels: usize,
        edge_threshold: usize,
        first_level: usize,
        wta_k: usize,
        score_type: &str,
        patch_size: usize,
        fast_threshold: u8,
    ) -> PyResult<Self> {
        let score_type = ScoreType::parse(score_type)?;
        let params = OrbParams { n_features, scale_factor, n_levels, edge_threshold, first_level, wta_k, score_type, patch_size, fast_threshold };
        Ok(PyOrb(Orb::new(params)?))
    }
}

extractor_methods!(PyOrb);
feature2d_methods!(PyOrb);

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyOrb>()
}
