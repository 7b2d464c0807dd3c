//! Bindings for `crate::features::orb`: the `Orb` extractor class.

use pyo3::prelude::*;

use crate::features::orb::{Orb, OrbParams, ScoreType};
use crate::py::args::{Int, INT_MAX};
use crate::py::features::{extractor_methods, feature2d_methods};

/// ORB keypoints and 32-byte binary descriptors (OpenCV 4.x's
/// `cv2.ORB_create`), built once with its parameters. See `bovw.ORB` for the
/// documentation.
#[pyclass(name = "Orb", module = "bovw._bovw", frozen)]
pub struct PyOrb(pub Orb);

#[pymethods]
impl PyOrb {
    #[new]
    #[pyo3(signature = (*, n_features=Int::Fits(500), scale_factor=1.2, n_levels=Int::Fits(8), edge_threshold=Int::Fits(31), first_level=Int::Fits(0), wta_k=Int::Fits(2), score_type="harris", patch_size=Int::Fits(31), fast_threshold=Int::Fits(20)))]
    #[pyo3(text_signature = "(*, n_features=500, scale_factor=1.2, n_levels=8, edge_threshold=31, first_level=0, wta_k=2, score_type='harris', patch_size=31, fast_threshold=20)")]
    #[allow(clippy::too_many_arguments)]
    fn new(
        n_features: Int,
        scale_factor: f64,
        n_levels: Int,
        edge_threshold: Int,
        first_level: Int,
        wta_k: Int,
        score_type: &str,
        patch_size: Int,
        fast_threshold: Int,
    ) -> PyResult<Self> {
        let n_features = n_features.index("n_features", 0, INT_MAX)?;
        let n_levels = n_levels.index("n_levels", 1, 64)?;
        let edge_threshold = edge_threshold.index("edge_threshold", 0, 10_000)?;
        let first_level = first_level.index("first_level", 0, n_levels as i64 - 1)?;
        let wta_k = wta_k.index("wta_k", 2, 4)?;
        let patch_size = patch_size.index("patch_size", 2, 255)?;
        let fast_threshold = fast_threshold.index("fast_threshold", 0, 255)? as u8;
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
