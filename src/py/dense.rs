//! Bindings for `crate::features::dsift` and `crate::features::phow`: the
//! `DenseSift` and `Phow` extractor classes.

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2};
use pyo3::prelude::*;

use crate::error::BovwError;
use crate::features::dsift::{DenseSift, DsiftParams};
use crate::features::phow::{Phow, PhowColor, PhowParams};
use crate::features::{Extractor, Features};
use crate::py::features::{decoded_from_numpy, descriptors_to_py, extractor_methods};

/// A non-negative integer parameter as `usize` (`ValueError` naming it otherwise).
pub fn non_negative(name: &str, v: i64) -> Result<usize, BovwError> {
    usize::try_from(v).map_err(|_| BovwError::param(name, format!("must be a positive number of pixels, got {v}")))
}

/// Frames as an (n, 4) float32 array: x, y, norm (response), bin size.
fn frames_array<'py>(py: Python<'py>, kps: &[crate::features::KeyPoint]) -> Bound<'py, PyArray2<f32>> {
    let mut a = Array2::<f32>::zeros((kps.len(), 4));
    for (mut row, k) in a.rows_mut().into_iter().zip(kps) {
        row[0] = k.x;
        row[1] = k.y;
        row[2] = k.response;
        row[3] = k.size;
    }
    a.into_pyarray(py)
}

/// One NumPy image through an extractor: (frames (n, 4) float32, descriptors).
fn compute_frames<'py, E: Extractor>(
    py: Python<'py>,
    extractor: &E,
    image: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyArray2<f32>>, Bound<'py, PyAny>)> {
    let decoded = decoded_from_numpy(image, extractor.info().needs)?;
    let (kps, desc): Features = py.detach(|| extractor.extract(&decoded))?;
    Ok((frames_array(py, &kps), descriptors_to_py(py, desc)?))
}

/// VLFeat's dense SIFT (`vl_dsift`) on the gray image scaled to [0, 1].
/// See `bovw.DenseSIFT` for the documentation.
#[pyclass(name = "DenseSift", module = "bovw._bovw", frozen)]
pub struct PyDenseSift(pub DenseSift);

#[pymethods]
impl PyDenseSift {
    #[new]
    #[pyo3(signature = (*, step=1, size=3, bounds=None, fast=false, window_size=2.0, float_descriptors=false))]
    fn new(step: i64, size: i64, bounds: Option<Vec<i64>>, fast: bool, window_size: f64, float_descriptors: bool) -> PyResult<Self> {
        let bounds = match bounds {
            None => None,
            Some(b) => Some(<[i64; 4]>::try_from(b.as_slice()).map_err(|_| {
                BovwError::param("bounds", format!("expected 4 values (x_min, y_min, x_max, y_max), got {}", b.len()))
            })?),
        };
        let params = DsiftParams {
            step: non_negative("step", step)?,
            bin_size: non_negative("size", size)?,
            bounds,
            fast,
            window_size,
            float_descriptors,
        };
        Ok(PyDenseSift(DenseSift::new(params)?))
    }

    /// Frames (n, 4) float32 (x, y, norm, bin size) and descriptors (n, 128)
    /// of one image: (H, W) uint8 gray or (H, W, 3) uint8 RGB (made gray with
    /// OpenCV's weights).
    fn compute<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyArray2<f32>>, Bound<'py, PyAny>)> {
        compute_frames(py, &self.0, image)
    }
}

extractor_methods!(PyDenseSift);

/// PHOW (VLFeat's `vl_phow`): dense SIFT at several bin sizes, gray or
/// colour. See `bovw.PHOW` for the documentation.
#[pyclass(name = "Phow", module = "bovw._bovw", frozen)]
pub struct PyPhow(pub Phow);

#[pymethods]
impl PyPhow {
    #[new]
    #[pyo3(signature = (*, sizes=vec![4, 6, 8, 10], step=2, color="gray", fast=true, magnification=6.0, window_size=1.5, contrast_threshold=0.005, float_descriptors=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        sizes: Vec<i64>,
        step: i64,
        color: &str,
        fast: bool,
        magnification: f64,
        window_size: f64,
        contrast_threshold: f64,
        float_descriptors: bool,
    ) -> PyResult<Self> {
        let sizes = sizes.into_iter().map(|s| non_negative("sizes", s)).collect::<Result<Vec<_>, _>>()?;
        let params = PhowParams {
            sizes,
            step: non_negative("step", step)?,
            color: PhowColor::parse(color)?,
            fast,
            magnification,
            window_size,
            contrast_threshold,
            float_descriptors,
        };
        Ok(PyPhow(Phow::new(params)?))
    }

    /// Frames (n, 4) float32 (x, y, contrast, bin size) and descriptors
    /// (n, 128 x channels) of one image: (H, W) uint8 gray (replicated for
    /// colour variants) or (H, W, 3) uint8 RGB.
    fn compute<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyArray2<f32>>, Bound<'py, PyAny>)> {
        compute_frames(py, &self.0, image)
    }
}

extractor_methods!(PyPhow);

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyDenseSift>()?;
    m.add_class::<PyPhow>()
}
