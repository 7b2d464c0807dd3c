//! Bindings for `crate::image`: single-image and batch decoding.

use numpy::{IntoPyArray, PyArray2, PyArray3};
use pyo3::prelude::*;
use pyo3_arrow::PyArray;

use crate::arrow::binary_values;
use crate::error::ImageError;
use crate::image::{decode_gray_limited, decode_rgb_limited, DecodeLimits};
use crate::py::args::{self, Int};

/// Decode limits from the Python arguments (None: the default limit).
///
/// # Errors
/// [`crate::error::BovwError::InvalidParameter`] naming `max_pixels` or
/// `max_side` outside 1..=2**32 - 1.
pub fn decode_limits(max_pixels: Option<Int>, max_side: Option<Int>) -> Result<DecodeLimits, crate::error::BovwError> {
    let max = DecodeLimits::MAX as i64;
    let d = DecodeLimits::default();
    Ok(DecodeLimits {
        max_pixels: max_pixels.map(|v| v.range("max_pixels", 1, max)).transpose()?.map_or(d.max_pixels, |v| v as u64),
        max_side: max_side.map(|v| v.range("max_side", 1, max)).transpose()?.map_or(d.max_side, |v| v as u64),
    })
}

/// Decode JPEG/PNG bytes to an (H, W) uint8 grayscale array (OpenCV BGR2GRAY weights).
#[pyfunction]
#[pyo3(signature = (data, *, max_pixels=None, max_side=None))]
pub fn decode_gray_image<'py>(py: Python<'py>, data: &[u8], max_pixels: Option<Int>, max_side: Option<Int>) -> PyResult<Bound<'py, PyArray2<u8>>> {
    let limits = decode_limits(max_pixels, max_side)?;
    let img = py.detach(|| decode_gray_limited(data, &limits))?;
    let arr = ndarray::Array2::from_shape_vec((img.height, img.width), img.data)
        .expect("decoded buffer has height * width pixels");
    Ok(arr.into_pyarray(py))
}

/// Decode JPEG/PNG bytes to an (H, W, 3) uint8 RGB array (gray files replicated, alpha dropped).
#[pyfunction]
#[pyo3(signature = (data, *, max_pixels=None, max_side=None))]
pub fn decode_rgb_image<'py>(py: Python<'py>, data: &[u8], max_pixels: Option<Int>, max_side: Option<Int>) -> PyResult<Bound<'py, PyArray3<u8>>> {
    let limits = decode_limits(max_pixels, max_side)?;
    let img = py.detach(|| decode_rgb_limited(data, &limits))?;
    let arr = ndarray::Array3::from_shape_vec((img.height, img.width, 3), img.data)
        .expect("decoded buffer has height * width * 3 samples");
    Ok(arr.into_pyarray(py))
}

/// Decode a binary Arrow array to gray; returns (images, errors): one entry
/// per row, an (H, W) uint8 array or None, and None or the reason.
#[pyfunction]
#[pyo3(signature = (content, n_threads=None, *, max_pixels=None, max_side=None))]
#[allow(clippy::type_complexity)]
pub fn decode_gray_batch<'py>(
    py: Python<'py>,
    content: PyArray,
    n_threads: Option<Int>,
    max_pixels: Option<Int>,
    max_side: Option<Int>,
) -> PyResult<(Vec<Option<Bound<'py, PyArray2<u8>>>>, Vec<Option<String>>)> {
    use rayon::prelude::*;
    let n_threads = args::threads(n_threads)?;
    let limits = decode_limits(max_pixels, max_side)?;
    let values = binary_values(content.array().as_ref())?;
    let decoded: Vec<Result<crate::image::GrayImage, ImageError>> = py.detach(|| {
        crate::features::with_threads(n_threads, || {
            values
                .par_iter()
                .with_max_len(1)
                .map(|v| v.ok_or_else(|| ImageError::decode("null content")).and_then(|b| decode_gray_limited(b, &limits)))
                .collect()
        })
    });
    let mut images = Vec::with_capacity(decoded.len());
    let mut errors = Vec::with_capacity(decoded.len());
    for d in decoded {
        match d {
            Ok(img) => {
                let arr = ndarray::Array2::from_shape_vec((img.height, img.width), img.data)
                    .expect("decoded buffer has height * width pixels");
                images.push(Some(arr.into_pyarray(py)));
                errors.push(None);
            }
            Err(e) => {
                images.push(None);
                errors.push(Some(e.reason));
            }
        }
    }
    Ok((images, errors))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(decode_gray_image, m)?)?;
    m.add_function(wrap_pyfunction!(decode_rgb_image, m)?)?;
    m.add_function(wrap_pyfunction!(decode_gray_batch, m)?)?;
    Ok(())
}
