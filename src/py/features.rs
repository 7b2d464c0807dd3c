//! Shared helpers for the feature-extractor bindings (`sift.rs`, `orb.rs`):
//! NumPy image borrowing, keypoint tables and the Arrow batch path.

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3_arrow::{PyArray, PyRecordBatch};

use crate::arrow::{binary_values, features_to_batch};
use crate::error::BovwError;
use crate::features::{extract_batch, with_threads, Descriptors, FeatureExtractor, KeyPoint};
use crate::image::GrayView;

/// Number of columns of a keypoint table: x, y, size, angle, response, octave, class_id.
pub const KEYPOINT_COLUMNS: usize = 7;

/// Copy a (H, W) uint8 NumPy image into a contiguous owned buffer if it is
/// not C-contiguous already; returns (buffer, width, height).
pub fn image_buffer(image: &PyReadonlyArray2<'_, u8>, what: &str) -> Result<(Vec<u8>, usize, usize), BovwError> {
    let shape = image.shape();
    let (h, w) = (shape[0], shape[1]);
    if h == 0 || w == 0 {
        return Err(BovwError::input(format!("{what} is empty (shape ({h}, {w}))")));
    }
    let data = match image.as_slice() {
        Ok(s) => s.to_vec(),
        Err(_) => image.as_array().iter().copied().collect(),
    };
    Ok((data, w, h))
}

/// Check that a mask matches the image shape.
pub fn check_mask(mask: Option<&(Vec<u8>, usize, usize)>, w: usize, h: usize) -> Result<(), BovwError> {
    if let Some((_, mw, mh)) = mask {
        if (*mw, *mh) != (w, h) {
            return Err(BovwError::Shape {
                what: "mask".into(),
                expected: format!("({h}, {w}) like the image"),
                got: format!("({mh}, {mw})"),
            });
        }
    }
    Ok(())
}

/// Keypoints as an (N, 7) float64 table.
pub fn keypoints_to_array(kps: &[KeyPoint]) -> Array2<f64> {
    let mut a = Array2::<f64>::zeros((kps.len(), KEYPOINT_COLUMNS));
    for (mut row, k) in a.rows_mut().into_iter().zip(kps) {
        row[0] = k.x as f64;
        row[1] = k.y as f64;
        row[2] = k.size as f64;
        row[3] = k.angle as f64;
        row[4] = k.response as f64;
        row[5] = k.octave as f64;
        row[6] = k.class_id as f64;
    }
    a
}

/// Keypoints from an (N, 7) float64 table.
pub fn keypoints_from_array(a: &PyReadonlyArray2<'_, f64>) -> Result<Vec<KeyPoint>, BovwError> {
    let a = a.as_array();
    if a.ncols() != KEYPOINT_COLUMNS {
        return Err(BovwError::Shape {
            what: "keypoints".into(),
            expected: format!("(n, {KEYPOINT_COLUMNS})"),
            got: format!("{:?}", a.shape()),
        });
    }
    Ok(a.rows()
        .into_iter()
        .map(|r| KeyPoint {
            x: r[0] as f32,
            y: r[1] as f32,
            size: r[2] as f32,
            angle: r[3] as f32,
            response: r[4] as f32,
            octave: r[5] as i32,
            class_id: r[6] as i32,
        })
        .collect())
}

/// Detect and compute on one NumPy image: returns (keypoints (N, 7) f64, descriptors).
pub fn detect_and_compute_py<'py, E: FeatureExtractor>(
    py: Python<'py>,
    extractor: &E,
    image: PyReadonlyArray2<'py, u8>,
    mask: Option<PyReadonlyArray2<'py, u8>>,
) -> PyResult<(Bound<'py, PyArray2<f64>>, Bound<'py, PyAny>)> {
    let (data, w, h) = image_buffer(&image, "image")?;
    let mask = mask.map(|m| image_buffer(&m, "mask")).transpose()?;
    check_mask(mask.as_ref(), w, h)?;
    let (kps, desc) = py.detach(|| {
        let view = GrayView::new(&data, w, h);
        let mview = mask.as_ref().map(|(m, mw, mh)| GrayView::new(m, *mw, *mh));
        extractor.detect_and_compute(view, mview)
    })?;
    Ok((keypoints_to_array(&kps).into_pyarray(py), descriptors_to_py(py, desc)?))
}

/// Descriptors as an (N, width) float32 or uint8 NumPy array.
pub fn descriptors_to_py(py: Python<'_>, desc: Descriptors) -> PyResult<Bound<'_, PyAny>> {
    Ok(match desc {
        Descriptors::F32 { data, width } => {
            let n = if width == 0 { 0 } else { data.len() / width };
            Array2::from_shape_vec((n, width), data).expect("rows * width").into_pyarray(py).into_any()
        }
        Descriptors::U8 { data, width } => {
            let n = if width == 0 { 0 } else { data.len() / width };
            Array2::from_shape_vec((n, width), data).expect("rows * width").into_pyarray(py).into_any()
        }
    })
}

/// The Arrow batch path: decode + extract every row of a binary array.
/// Returns a pyarrow RecordBatch (n_keypoints, descriptors, error).
pub fn extract_py<'py, E: FeatureExtractor>(
    py: Python<'py>,
    extractor: &E,
    content: PyArray,
    n_threads: Option<usize>,
) -> PyResult<Bound<'py, PyAny>> {
    let array = content.array().clone();
    let batch = py.detach(|| -> Result<_, BovwError> {
        let values = binary_values(array.as_ref())?;
        let results = with_threads(n_threads, || extract_batch(&values, extractor));
        features_to_batch(&results, extractor.descriptor_width(), extractor.is_binary())
    })?;
    PyRecordBatch::new(batch).into_pyarrow(py)
}

pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
