//! Bindings for `crate::features::orb`.

use numpy::{IntoPyArray, PyArray2, PyReadonlyArray2};
use pyo3::prelude::*;
use pyo3_arrow::PyArray;

use crate::features::orb::{Orb, OrbParams, ScoreType};
use crate::image::GrayView;
use crate::py::features::{check_mask, descriptors_to_py, detect_and_compute_py, extract_py, image_buffer, keypoints_from_array, keypoints_to_array};

#[allow(clippy::too_many_arguments)]
fn build(n_features: usize, scale_factor: f64, n_levels: usize, edge_threshold: usize, first_level: usize, wta_k: usize, score_type: &str, patch_size: usize, fast_threshold: u8) -> PyResult<Orb> {
    Ok(Orb::new(OrbParams { n_features, scale_factor, n_levels, edge_threshold, first_level, wta_k, score_type: ScoreType::parse(score_type)?, patch_size, fast_threshold })?)
}

/// Detect keypoints and compute descriptors on one (H, W) uint8 image.
/// Returns (keypoints (N, 7) float64, descriptors).
#[pyfunction]
#[pyo3(signature = (image, mask=None, *, n_features=500, scale_factor=1.2, n_levels=8, edge_threshold=31, first_level=0, wta_k=2, score_type="harris", patch_size=31, fast_threshold=20))]
#[allow(clippy::too_many_arguments)]
pub fn orb_detect_and_compute<'py>(
    py: Python<'py>,
    image: PyReadonlyArray2<'py, u8>,
    mask: Option<PyReadonlyArray2<'py, u8>>,
    n_features: usize, scale_factor: f64, n_levels: usize, edge_threshold: usize, first_level: usize, wta_k: usize, score_type: &str, patch_size: usize, fast_threshold: u8,
) -> PyResult<(Bound<'py, PyArray2<f64>>, Bound<'py, PyAny>)> {
    let ex = build(n_features, scale_factor, n_levels, edge_threshold, first_level, wta_k, score_type, patch_size, fast_threshold)?;
    detect_and_compute_py(py, &ex, image, mask)
}

/// Detect keypoints on one (H, W) uint8 image. Returns keypoints (N, 7) float64.
#[pyfunction]
#[pyo3(signature = (image, mask=None, *, n_features=500, scale_factor=1.2, n_levels=8, edge_threshold=31, first_level=0, wta_k=2, score_type="harris", patch_size=31, fast_threshold=20))]
#[allow(clippy::too_many_arguments)]
pub fn orb_detect<'py>(
    py: Python<'py>,
    image: PyReadonlyArray2<'py, u8>,
    mask: Option<PyReadonlyArray2<'py, u8>>,
    n_features: usize, scale_factor: f64, n_levels: usize, edge_threshold: usize, first_level: usize, wta_k: usize, score_type: &str, patch_size: usize, fast_threshold: u8,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let ex = build(n_features, scale_factor, n_levels, edge_threshold, first_level, wta_k, score_type, patch_size, fast_threshold)?;
    let (data, w, h) = image_buffer(&image, "image")?;
    let mask = mask.map(|m| image_buffer(&m, "mask")).transpose()?;
    check_mask(mask.as_ref(), w, h)?;
    let kps = py.detach(|| {
        let mview = mask.as_ref().map(|(m, mw, mh)| GrayView::new(m, *mw, *mh));
        ex.detect(GrayView::new(&data, w, h), mview)
    })?;
    Ok(keypoints_to_array(&kps).into_pyarray(py))
}

/// Compute descriptors at given keypoints (N, 7) float64 on one image.
/// Returns (keypoints kept, descriptors).
#[pyfunction]
#[pyo3(signature = (image, keypoints, *, n_features=500, scale_factor=1.2, n_levels=8, edge_threshold=31, first_level=0, wta_k=2, score_type="harris", patch_size=31, fast_threshold=20))]
#[allow(clippy::too_many_arguments)]
pub fn orb_compute<'py>(
    py: Python<'py>,
    image: PyReadonlyArray2<'py, u8>,
    keypoints: PyReadonlyArray2<'py, f64>,
    n_features: usize, scale_factor: f64, n_levels: usize, edge_threshold: usize, first_level: usize, wta_k: usize, score_type: &str, patch_size: usize, fast_threshold: u8,
) -> PyResult<(Bound<'py, PyArray2<f64>>, Bound<'py, PyAny>)> {
    let ex = build(n_features, scale_factor, n_levels, edge_threshold, first_level, wta_k, score_type, patch_size, fast_threshold)?;
    let (data, w, h) = image_buffer(&image, "image")?;
    let kps = keypoints_from_array(&keypoints)?;
    let (kps, desc) = py.detach(|| ex.compute(GrayView::new(&data, w, h), &kps))?;
    Ok((keypoints_to_array(&kps).into_pyarray(py), descriptors_to_py(py, desc)?))
}

/// Decode and extract every row of a binary Arrow array (JPEG/PNG bytes).
/// Returns a pyarrow RecordBatch (n_keypoints, descriptors, error).
#[pyfunction]
#[pyo3(signature = (content, *, n_threads=None, n_features=500, scale_factor=1.2, n_levels=8, edge_threshold=31, first_level=0, wta_k=2, score_type="harris", patch_size=31, fast_threshold=20))]
#[allow(clippy::too_many_arguments)]
pub fn orb_extract<'py>(
    py: Python<'py>,
    content: PyArray,
    n_threads: Option<usize>,
    n_features: usize, scale_factor: f64, n_levels: usize, edge_threshold: usize, first_level: usize, wta_k: usize, score_type: &str, patch_size: usize, fast_threshold: u8,
) -> PyResult<Bound<'py, PyAny>> {
    let ex = build(n_features, scale_factor, n_levels, edge_threshold, first_level, wta_k, score_type, patch_size, fast_threshold)?;
    extract_py(py, &ex, content, n_threads)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(orb_detect_and_compute, m)?)?;
    m.add_function(wrap_pyfunction!(orb_detect, m)?)?;
    m.add_function(wrap_pyfunction!(orb_compute, m)?)?;
    m.add_function(wrap_pyfunction!(orb_extract, m)?)?;
    Ok(())
}
