//! Shared helpers for the extractor bindings (`sift.rs`, `orb.rs`, ...):
//! NumPy image borrowing, keypoint tables, the Arrow batch path and the
//! [`extractor_methods`] every extractor class gets.

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2, PyReadonlyArray2, PyReadonlyArray3, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3_arrow::{PyArray, PyRecordBatch};

use crate::arrow::{binary_values, features_to_batch};
use crate::error::{probe_allocation, BovwError};
use crate::features::{
    extract_batch_limited, extract_batch_many, with_threads, Descriptors, Extractor, FeatureExtractor, KeyPoint, MemoryPolicy, Oversize,
    ResourceLimits,
};
use crate::image::{ColorNeeds, DecodedImage, GrayView};
use crate::py::args::Int;

/// The batch limits from the Python arguments (None: the default).
///
/// # Errors
/// [`BovwError::InvalidParameter`] naming `max_pixels`, `max_side`,
/// `max_image_memory` (below 1 MiB) or `oversize`.
pub fn resource_limits(
    max_pixels: Option<Int>,
    max_side: Option<Int>,
    max_image_memory: Option<Int>,
    oversize: Option<&str>,
) -> Result<ResourceLimits, BovwError> {
    let decode = crate::py::image::decode_limits(max_pixels, max_side)?;
    let d = MemoryPolicy::default();
    let max_image_memory = match max_image_memory {
        None => d.max_image_memory,
        Some(v) => v.range("max_image_memory", MemoryPolicy::MIN_MAX_IMAGE_MEMORY as i64, i64::MAX)? as u64,
    };
    let oversize = oversize.map(Oversize::parse).transpose()?.unwrap_or(d.oversize);
    Ok(ResourceLimits { decode, memory: MemoryPolicy { max_image_memory, oversize } })
}

/// Check that the extractor's work buffers for a `w` x `h` image can be
/// allocated, so that an image too large raises `MemoryError` instead of
/// aborting the process half-way.
///
/// # Errors
/// [`BovwError::Memory`] when they cannot.
pub fn check_memory<E: Extractor + ?Sized>(extractor: &E, w: usize, h: usize) -> Result<(), BovwError> {
    match extractor.memory_bytes(w, h) {
        Some(b) => probe_allocation(b, &format!("the work buffers for a {w}x{h} image")),
        None => Ok(()),
    }
}

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
    Ok((crate::py::arrays::c_order(image).into_owned(), w, h))
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
    check_memory(extractor, w, h)?;
    let (kps, desc) = py.detach(|| {
        let view = GrayView::new(&data, w, h);
        let mview = mask.as_ref().map(|(m, mw, mh)| GrayView::new(m, *mw, *mh));
        extractor.detect_and_compute(view, mview)
    })?;
    Ok((keypoints_to_array(&kps).into_pyarray(py), descriptors_to_py(py, desc)?))
}

/// A NumPy image as a [`DecodedImage`] in the layouts `needs` names:
/// (H, W) uint8 is gray, (H, W, 3) uint8 is RGB (R, G, B order).
///
/// # Errors
/// `ValueError` for another shape or an empty image, `TypeError` for another dtype.
pub fn decoded_from_numpy(image: &Bound<'_, PyAny>, needs: ColorNeeds) -> PyResult<DecodedImage> {
    if let Ok(gray) = image.extract::<PyReadonlyArray2<'_, u8>>() {
        let (data, w, h) = image_buffer(&gray, "image")?;
        return Ok(DecodedImage::from_gray(data, w, h, needs));
    }
    if let Ok(rgb) = image.extract::<PyReadonlyArray3<'_, u8>>() {
        let shape = rgb.shape().to_vec();
        if shape[2] != 3 || shape[0] == 0 || shape[1] == 0 {
            return Err(BovwError::Shape {
                what: "image".into(),
                expected: "(height, width) gray or (height, width, 3) RGB, non-empty".into(),
                got: format!("{shape:?}"),
            }
            .into());
        }
        let data: Vec<u8> = crate::py::arrays::c_order(&rgb).into_owned();
        return Ok(DecodedImage::from_rgb(data, shape[1], shape[0], needs));
    }
    let got = image.getattr("dtype").map(|d| d.to_string()).unwrap_or_else(|_| "not an array".into());
    Err(BovwError::Dtype {
        what: "image".into(),
        expected: "a uint8 array of shape (height, width) or (height, width, 3)".into(),
        got,
    }
    .into())
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
/// Returns a pyarrow RecordBatch with the columns of [`crate::arrow::FEATURE_COLUMNS`].
pub fn extract_py<'py, E: Extractor + ?Sized>(
    py: Python<'py>,
    extractor: &E,
    content: PyArray,
    n_threads: Option<usize>,
    limits: &ResourceLimits,
) -> PyResult<Bound<'py, PyAny>> {
    let array = content.array().clone();
    let batch = py.detach(|| -> Result<_, BovwError> {
        let values = binary_values(array.as_ref())?;
        let results = with_threads(n_threads, || extract_batch_limited(&values, extractor, limits));
        features_to_batch(&results, &extractor.info())
    })?;
    PyRecordBatch::new(batch).into_pyarrow(py)
}

/// One image (NumPy, gray or RGB) through an extractor: (keypoints (N, 7) float64, descriptors).
pub fn extract_image_py<'py, E: Extractor + ?Sized>(
    py: Python<'py>,
    extractor: &E,
    image: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyArray2<f64>>, Bound<'py, PyAny>)> {
    let decoded = decoded_from_numpy(image, extractor.info().needs)?;
    check_memory(extractor, decoded.width, decoded.height)?;
    let (kps, desc) = py.detach(|| extractor.extract(&decoded))?;
    Ok((keypoints_to_array(&kps).into_pyarray(py), descriptors_to_py(py, desc)?))
}

/// The methods every extractor class shares: its facts as read-only
/// properties, `extract` (an Arrow binary column of encoded images in, one
/// row per image out) and `extract_image` (one NumPy image). `$ty` is a
/// `#[pyclass]` tuple struct whose field 0 implements [`Extractor`].
macro_rules! extractor_methods {
    ($ty:ty) => {
        #[pyo3::pymethods]
        impl $ty {
            /// Values per descriptor row.
            #[getter]
            fn descriptor_width(&self) -> usize {
                $crate::features::Extractor::info(&self.0).width
            }
            /// NumPy dtype name of a descriptor row: "float32" or "uint8".
            #[getter]
            fn descriptor_dtype(&self) -> &'static str {
                $crate::features::Extractor::info(&self.0).dtype.as_str()
            }
            /// "local" (many descriptors per image) or "global" (one).
            #[getter]
            fn kind(&self) -> &'static str {
                $crate::features::Extractor::info(&self.0).kind.as_str()
            }
            /// True when the extractor reads colour (RGB) pixels.
            #[getter]
            fn needs_color(&self) -> bool {
                $crate::features::Extractor::info(&self.0).needs.rgb
            }
            /// Decode and describe every row of a binary Arrow array (JPEG/PNG
            /// bytes). Returns a pyarrow RecordBatch: n_keypoints, image_width,
            /// image_height, keypoints, descriptors, error, error_stage,
            /// image_scale. Limits (None: the default): max_pixels,
            /// max_side (decode), max_image_memory (bytes per image),
            /// oversize ("refuse" or "downscale").
            #[pyo3(signature = (content, *, n_threads=None, max_pixels=None, max_side=None, max_image_memory=None, oversize=None))]
            #[allow(clippy::too_many_arguments)]
            fn extract<'py>(
                &self,
                py: pyo3::Python<'py>,
                content: pyo3_arrow::PyArray,
                n_threads: Option<$crate::py::args::Int>,
                max_pixels: Option<$crate::py::args::Int>,
                max_side: Option<$crate::py::args::Int>,
                max_image_memory: Option<$crate::py::args::Int>,
                oversize: Option<&str>,
            ) -> pyo3::PyResult<pyo3::Bound<'py, pyo3::PyAny>> {
                let n_threads = $crate::py::args::threads(n_threads)?;
                let limits = $crate::py::features::resource_limits(max_pixels, max_side, max_image_memory, oversize)?;
                $crate::py::features::extract_py(py, &self.0, content, n_threads, &limits)
            }
            /// Describe one image: (H, W) uint8 gray or (H, W, 3) uint8 RGB.
            /// Returns (keypoints (N, 7) float64, descriptors (N, width)).
            fn extract_image<'py>(
                &self,
                py: pyo3::Python<'py>,
                image: &pyo3::Bound<'py, pyo3::PyAny>,
            ) -> pyo3::PyResult<(pyo3::Bound<'py, numpy::PyArray2<f64>>, pyo3::Bound<'py, pyo3::PyAny>)> {
                $crate::py::features::extract_image_py(py, &self.0, image)
            }
        }
    };
}
pub(crate) use extractor_methods;

/// Detect keypoints on one NumPy image: (N, 7) float64.
pub fn detect_py<'py, E: FeatureExtractor>(
    py: Python<'py>,
    extractor: &E,
    image: PyReadonlyArray2<'py, u8>,
    mask: Option<PyReadonlyArray2<'py, u8>>,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let (data, w, h) = image_buffer(&image, "image")?;
    let mask = mask.map(|m| image_buffer(&m, "mask")).transpose()?;
    check_mask(mask.as_ref(), w, h)?;
    check_memory(extractor, w, h)?;
    let kps = py.detach(|| {
        let mview = mask.as_ref().map(|(m, mw, mh)| GrayView::new(m, *mw, *mh));
        extractor.detect(GrayView::new(&data, w, h), mview)
    })?;
    Ok(keypoints_to_array(&kps).into_pyarray(py))
}

/// Describe given keypoints (N, 7) float64 on one NumPy image: (keypoints kept, descriptors).
pub fn compute_py<'py, E: FeatureExtractor>(
    py: Python<'py>,
    extractor: &E,
    image: PyReadonlyArray2<'py, u8>,
    keypoints: PyReadonlyArray2<'py, f64>,
) -> PyResult<(Bound<'py, PyArray2<f64>>, Bound<'py, PyAny>)> {
    let (data, w, h) = image_buffer(&image, "image")?;
    let kps = keypoints_from_array(&keypoints)?;
    check_memory(extractor, w, h)?;
    let (kps, desc) = py.detach(|| extractor.compute(GrayView::new(&data, w, h), &kps))?;
    Ok((keypoints_to_array(&kps).into_pyarray(py), descriptors_to_py(py, desc)?))
}

/// OpenCV's `Feature2D` methods (`detect`, `compute`, `detect_and_compute`)
/// for a `#[pyclass]` tuple struct whose field 0 implements [`FeatureExtractor`].
macro_rules! feature2d_methods {
    ($ty:ty) => {
        #[pyo3::pymethods]
        impl $ty {
            /// Detect keypoints and compute descriptors on one (H, W) uint8 image.
            /// Returns (keypoints (N, 7) float64, descriptors (N, width)).
            #[pyo3(signature = (image, mask=None))]
            fn detect_and_compute<'py>(
                &self,
                py: pyo3::Python<'py>,
                image: numpy::PyReadonlyArray2<'py, u8>,
                mask: Option<numpy::PyReadonlyArray2<'py, u8>>,
            ) -> pyo3::PyResult<(pyo3::Bound<'py, numpy::PyArray2<f64>>, pyo3::Bound<'py, pyo3::PyAny>)> {
                $crate::py::features::detect_and_compute_py(py, &self.0, image, mask)
            }
            /// Detect keypoints on one (H, W) uint8 image. Returns keypoints (N, 7) float64.
            #[pyo3(signature = (image, mask=None))]
            fn detect<'py>(
                &self,
                py: pyo3::Python<'py>,
                image: numpy::PyReadonlyArray2<'py, u8>,
                mask: Option<numpy::PyReadonlyArray2<'py, u8>>,
            ) -> pyo3::PyResult<pyo3::Bound<'py, numpy::PyArray2<f64>>> {
                $crate::py::features::detect_py(py, &self.0, image, mask)
            }
            /// Compute descriptors at given keypoints (N, 7) float64 on one
            /// (H, W) uint8 image. Returns (keypoints kept, descriptors).
            fn compute<'py>(
                &self,
                py: pyo3::Python<'py>,
                image: numpy::PyReadonlyArray2<'py, u8>,
                keypoints: numpy::PyReadonlyArray2<'py, f64>,
            ) -> pyo3::PyResult<(pyo3::Bound<'py, numpy::PyArray2<f64>>, pyo3::Bound<'py, pyo3::PyAny>)> {
                $crate::py::features::compute_py(py, &self.0, image, keypoints)
            }
        }
    };
}
pub(crate) use feature2d_methods;

/// A borrow of the Rust extractor inside one of bovw's extractor classes.
enum ExtractorRef<'py> {
    Sift(PyRef<'py, crate::py::sift::PySift>),
    Orb(PyRef<'py, crate::py::orb::PyOrb>),
    DenseSift(PyRef<'py, crate::py::dense::PyDenseSift>),
    Phow(PyRef<'py, crate::py::dense::PyPhow>),
    Color(PyRef<'py, crate::py::color::PyColorHistogram>),
    Cnn(PyRef<'py, crate::py::cnn::PyCnnEmbedding>),
}

impl<'py> ExtractorRef<'py> {
    /// Borrow `obj`'s extractor.
    ///
    /// # Errors
    /// `TypeError` when `obj` is not one of the extension's extractor classes.
    fn borrow(obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(x) = obj.extract() {
            return Ok(Self::Sift(x));
        }
        if let Ok(x) = obj.extract() {
            return Ok(Self::Orb(x));
        }
        if let Ok(x) = obj.extract() {
            return Ok(Self::DenseSift(x));
        }
        if let Ok(x) = obj.extract() {
            return Ok(Self::Phow(x));
        }
        if let Ok(x) = obj.extract() {
            return Ok(Self::Color(x));
        }
        if let Ok(x) = obj.extract() {
            return Ok(Self::Cnn(x));
        }
        let name = obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
        Err(BovwError::Dtype {
            what: "extractors".into(),
            expected: "bovw._bovw extractor objects (Sift, Orb, DenseSift, Phow, ColorHistogram, CnnEmbedding)".into(),
            got: name,
        }
        .into())
    }

    fn get(&self) -> &(dyn Extractor + Sync) {
        match self {
            Self::Sift(x) => &x.0,
            Self::Orb(x) => &x.0,
            Self::DenseSift(x) => &x.0,
            Self::Phow(x) => &x.0,
            Self::Color(x) => &x.0,
            Self::Cnn(x) => &x.0,
        }
    }
}

/// Decode and describe every row of a binary Arrow array (JPEG/PNG bytes)
/// with several extractors: a list of pyarrow RecordBatches, entry `e`
/// equal to `extractors[e].extract(content, ...)`. Extractors that read
/// the same pixel layouts (gray, RGB) share one decode of each image.
/// Limits as in `extract` (None: the default), the same for all.
#[pyfunction]
#[pyo3(signature = (content, extractors, *, n_threads=None, max_pixels=None, max_side=None, max_image_memory=None, oversize=None))]
#[allow(clippy::too_many_arguments)]
pub fn extract_many<'py>(
    py: Python<'py>,
    content: PyArray,
    extractors: Vec<Bound<'py, PyAny>>,
    n_threads: Option<Int>,
    max_pixels: Option<Int>,
    max_side: Option<Int>,
    max_image_memory: Option<Int>,
    oversize: Option<&str>,
) -> PyResult<Vec<Bound<'py, PyAny>>> {
    let n_threads = crate::py::args::threads(n_threads)?;
    let limits = resource_limits(max_pixels, max_side, max_image_memory, oversize)?;
    let held = extractors.iter().map(ExtractorRef::borrow).collect::<PyResult<Vec<_>>>()?;
    let refs: Vec<&(dyn Extractor + Sync)> = held.iter().map(|h| h.get()).collect();
    let array = content.array().clone();
    let batches = py.detach(|| -> Result<Vec<_>, BovwError> {
        let values = binary_values(array.as_ref())?;
        let results = with_threads(n_threads, || extract_batch_many(&values, &refs, &limits));
        results.iter().zip(&refs).map(|(r, x)| features_to_batch(r, &x.info())).collect()
    })?;
    batches.into_iter().map(|b| PyRecordBatch::new(b).into_pyarrow(py)).collect()
}

/// Add the shared extractor functions to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(extract_many, m)?)
}
