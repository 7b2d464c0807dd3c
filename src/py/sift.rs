//! Bindings for `crate::features::sift`.

use numpy::{IntoPyArray, PyArray2, PyReadonlyArray2};
use pyo3::prelude::*;
use pyo3_arrow::PyArray;

use crate::features::sift::{Sift, SiftParams};
use crate::image::GrayView;
use crate::py::features::{check_mask, descriptors_to_py, detect_and_compute_py, extract_py, image_buffer, keypoints_from_array, keypoints_to_array};

#[allow(clippy::too_many_arguments)]
fn build(n_features: usize, n_octave_layers: usize, contrast_threshold: f64, edge_threshold: f64, sigma: f64) -> PyResult<Sift> {
    Ok(Sift::new(SiftParams { n_features, n_octave_layers, contrast_threshold, edge_threshold, sigma })?)
}

/// Detect keypoints and compute descriptors on one (H, W) uint8 image.
/// Returns (keypoints (N, 7) float64, descriptors).
#[pyfunction]
#[pyo3(signature = (image, mask=None, *, n_features=0, n_octave_layers=3, contrast_threshold=0.04, edge_threshold=10.0, sigma=1.6))]
#[allow(clippy::too_many_arguments)]
pub fn sift_detect_and_compute<'py>(
    py: Python<'py>,
    image: PyReadonlyArray2<'py, u8>,
    mask: Option<PyReadonlyArray2<'py, u8>>,
    n_features: usize, n_octave_layers: usize, contrast_threshold: f64, edge_threshold: f64, sigma: f64,
) -> PyResult<(Bound<'py, PyArray2<f64>>, Bound<'py, PyAny>)> {
    let ex = build(n_features, n_octave_layers, contrast_threshold, edge_threshold, sigma)?;
    detect_and_compute_py(py, &ex, image, mask)
}

/// Detect keypoints on one (H, W) uint8 image. Returns keypoints (N, 7) float64.
#[pyfunction]
#[pyo3(signature = (image, mask=None, *, n_features=0, n_octave_layers=3, contrast_threshold=0.04, edge_threshold=10.0, sigma=1.6))]
#[allow(clippy::too_many_arguments)]
pub fn sift_detect<'py>(
    py: Python<'py>,
    image: PyReadonlyArray2<'py, u8>,
    mask: Option<PyReadonlyArray2<'py, u8>>,
    n_features: usize, n_octave_layers: usize, contrast_threshold: f64, edge_threshold: f64, sigma: f64,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let ex = build(n_features, n_octave_layers, contrast_threshold, edge_threshold, sigma)?;
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
#[pyo3(signature = (image, keypoints, *, n_features=0, n_octave_layers=3, contrast_threshold=0.04, edge_threshold=10.0, sigma=1.6))]
#[allow(clippy::too_many_arguments)]
pub fn sift_compute<'py>(
    py: Python<'py>,
    image: PyReadonlyArray2<'py, u8>,
    keypoints: PyReadonlyArray2<'py, f64>,
    n_features: usize, n_octave_layers: usize, contrast_threshold: f64, edge_threshold: f64, sigma: f64,
) -> PyResult<(Bound<'py, PyArray2<f64>>, Bound<'py, PyAny>)> {
    let ex = build(n_features, n_octave_layers, contrast_threshold, edge_threshold, sigma)?;
    let (data, w, h) = image_buffer(&image, "image")?;
    let kps = keypoints_from_array(&keypoints)?;
    let (kps, desc) = py.detach(|| ex.compute(GrayView::new(&data, w, h), &kps))?;
    Ok((keypoints_to_array(&kps).into_pyarray(py), descriptors_to_py(py, desc)?))
}

/// Decode and extract every row of a binary Arrow array (JPEG/PNG bytes).
/// Returns a pyarrow RecordBatch (n_keypoints, descriptors, error).
#[pyfunction]
#[pyo3(signature = (content, *, n_threads=None, n_features=0, n_octave_layers=3, contrast_threshold=0.04, edge_threshold=10.0, sigma=1.6))]
#[allow(clippy::too_many_arguments)]
pub fn sift_extract<'py>(
    py: Python<'py>,
    content: PyArray,
    n_threads: Option<usize>,
    n_features: usize, n_octave_layers: usize, contrast_threshold: f64, edge_threshold: f64, sigma: f64,
) -> PyResult<Bound<'py, PyAny>> {
    let ex = build(n_features, n_octave_layers, contrast_threshold, edge_threshold, sigma)?;
    extract_py(py, &ex, content, n_threads)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(sift_detect_and_compute, m)?)?;
    m.add_function(wrap_pyfunction!(sift_detect, m)?)?;
    m.add_function(wrap_pyfunction!(sift_compute, m)?)?;
    m.add_function(wrap_pyfunction!(sift_extract, m)?)?;
    Ok(())
}
