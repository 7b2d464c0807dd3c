//! Bindings for the histogram stage (`crate::histogram`).

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3_arrow::PyArray;

use crate::arrow::float_descriptor_rows;
use crate::error::BovwError;
use crate::features::with_threads;
use crate::py::args::{self, Int, INT_MAX};
use crate::histogram::{
    counts_from_image_index, counts_from_words, descriptor_histograms, document_frequency, idf, weight_and_normalize,
    IdfKind, Norm,
};

fn slice1<'a, T: numpy::Element>(a: &'a PyReadonlyArray1<'_, T>, what: &str) -> Result<&'a [T], BovwError> {
    a.as_slice().map_err(|_| BovwError::input(format!("{what} must be C-contiguous")))
}

fn offsets_vec(offsets: &PyReadonlyArray1<'_, i64>) -> Result<Vec<usize>, BovwError> {
    let o = slice1(offsets, "offsets")?;
    if let Some(i) = o.iter().position(|&v| v < 0) {
        return Err(BovwError::param("offsets", format!("entry {i} is negative ({})", o[i])));
    }
    Ok(o.iter().map(|&v| v as usize).collect())
}

fn to_2d(py: Python<'_>, data: Vec<f32>, rows: usize, cols: usize) -> Bound<'_, PyArray2<f32>> {
    Array2::from_shape_vec((rows, cols), data).expect("rows * cols").into_pyarray(py)
}

/// Word counts per image from word ids and image offsets: (n_images, n_words) float32.
#[pyfunction]
#[pyo3(signature = (words, offsets, n_words, n_threads=None))]
pub fn bow_counts<'py>(
    py: Python<'py>,
    words: PyReadonlyArray1<'py, i64>,
    offsets: PyReadonlyArray1<'py, i64>,
    n_words: Int,
    n_threads: Option<Int>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let n_threads = args::threads(n_threads)?;
    let n_words = n_words.index("n_words", 0, INT_MAX)?;
    let w = slice1(&words, "words")?;
    let o = offsets_vec(&offsets)?;
    let n_images = o.len().saturating_sub(1);
    let h = py.detach(|| with_threads(n_threads, || counts_from_words(w, &o, n_words)))?;
    Ok(to_2d(py, h, n_images, n_words))
}

/// Word counts per image from word ids and each word's image index.
#[pyfunction]
pub fn bow_counts_by_image<'py>(
    py: Python<'py>,
    words: PyReadonlyArray1<'py, i64>,
    image_index: PyReadonlyArray1<'py, i64>,
    n_images: Int,
    n_words: Int,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let n_images = n_images.index("n_images", 0, i64::MAX)?;
    let n_words = n_words.index("n_words", 0, INT_MAX)?;
    let w = slice1(&words, "words")?;
    let ix = slice1(&image_index, "image_index")?;
    let h = py.detach(|| counts_from_image_index(w, ix, n_images, n_words))?;
    Ok(to_2d(py, h, n_images, n_words))
}

/// Assign descriptors (N, d) float32 with image offsets to the vocabulary
/// (n_words, d) float32 and count: (n_images, n_words) float32.
#[pyfunction]
#[pyo3(signature = (descriptors, offsets, vocabulary, n_threads=None))]
pub fn bow_descriptor_counts<'py>(
    py: Python<'py>,
    descriptors: PyReadonlyArray2<'py, f32>,
    offsets: PyReadonlyArray1<'py, i64>,
    vocabulary: PyReadonlyArray2<'py, f32>,
    n_threads: Option<Int>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let n_threads = args::threads(n_threads)?;
    let d = vocabulary.shape()[1];
    if descriptors.shape()[1] != d && descriptors.shape()[0] > 0 {
        return Err(BovwError::Shape {
            what: "descriptors".into(),
            expected: format!("(n, {d}) like the vocabulary"),
            got: format!("{:?}", descriptors.shape()),
        }
        .into());
    }
    let n_words = vocabulary.shape()[0];
    let x = crate::py::arrays::c_slice(&descriptors, "descriptors")?;
    let v = crate::py::arrays::c_slice(&vocabulary, "vocabulary")?;
    let o = offsets_vec(&offsets)?;
    let n_images = o.len().saturating_sub(1);
    let h = py.detach(|| with_threads(n_threads, || descriptor_histograms(x, &o, d, v)))?;
    Ok(to_2d(py, h, n_images, n_words))
}

/// Same from an Arrow `list<fixed_size_list<float32, d>>` descriptors column
/// (zero-copy); null rows count as images without descriptors.
#[pyfunction]
#[pyo3(signature = (descriptors, vocabulary, n_threads=None))]
pub fn bow_arrow_counts<'py>(
    py: Python<'py>,
    descriptors: PyArray,
    vocabulary: PyReadonlyArray2<'py, f32>,
    n_threads: Option<Int>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let n_threads = args::threads(n_threads)?;
    let array = descriptors.array().clone();
    let d = vocabulary.shape()[1];
    let n_words = vocabulary.shape()[0];
    let v = crate::py::arrays::c_slice(&vocabulary, "vocabulary")?;
    let (h, n_images) = py.detach(|| -> Result<_, BovwError> {
        let rows = float_descriptor_rows(array.as_ref())?;
        if rows.width != d {
            return Err(BovwError::Shape {
                what: "descriptors".into(),
                expected: format!("width {d} like the vocabulary"),
                got: format!("width {}", rows.width),
            });
        }
        let n = rows.offsets.len() - 1;
        let vals = &rows.values[..rows.offsets[n] * d];
        Ok((with_threads(n_threads, || descriptor_histograms(vals, &rows.offsets, d, v))?, n))
    })?;
    Ok(to_2d(py, h, n_images, n_words))
}

/// Inverse document frequency from counts (n_images, n_words):
/// kind "sklearn_smooth", "sklearn" or "spark" (with min_doc_freq).
#[pyfunction]
#[pyo3(signature = (counts, kind="sklearn_smooth", min_doc_freq=Int::Fits(0)))]
#[pyo3(text_signature = "(counts, kind='sklearn_smooth', min_doc_freq=0)")]
pub fn bow_idf<'py>(
    py: Python<'py>,
    counts: PyReadonlyArray2<'py, f32>,
    kind: &str,
    min_doc_freq: Int,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let min_doc_freq = min_doc_freq.range("min_doc_freq", 0, i64::MAX)? as u64;
    let kind = match kind {
        "sklearn_smooth" => IdfKind::SklearnSmooth,
        "sklearn" => IdfKind::Sklearn,
        "spark" => IdfKind::Spark { min_doc_freq },
        other => return Err(BovwError::param("idf", format!("unknown formula {other:?}")).into()),
    };
    let (n, k) = (counts.shape()[0], counts.shape()[1]);
    let c = crate::py::arrays::c_slice(&counts, "counts")?;
    let w = py.detach(|| idf(&document_frequency(c, k), n, kind));
    Ok(w.into_pyarray(py))
}

/// Multiply (n_images, n_words) float32 histograms by idf and normalise rows; returns a new array.
#[pyfunction]
#[pyo3(signature = (hist, idf=None, norm=None))]
pub fn bow_weight<'py>(
    py: Python<'py>,
    hist: PyReadonlyArray2<'py, f32>,
    idf: Option<PyReadonlyArray1<'py, f64>>,
    norm: Option<&str>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let norm = Norm::parse(norm)?;
    let (n, k) = (hist.shape()[0], hist.shape()[1]);
    let mut h = crate::py::arrays::c_order(&hist).into_owned();
    let w = idf.as_ref().map(|a| slice1(a, "idf")).transpose()?;
    py.detach(|| weight_and_normalize(&mut h, k, w, norm))?;
    Ok(to_2d(py, h, n, k))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(bow_counts, m)?)?;
    m.add_function(wrap_pyfunction!(bow_counts_by_image, m)?)?;
    m.add_function(wrap_pyfunction!(bow_descriptor_counts, m)?)?;
    m.add_function(wrap_pyfunction!(bow_arrow_counts, m)?)?;
    m.add_function(wrap_pyfunction!(bow_idf, m)?)?;
    m.add_function(wrap_pyfunction!(bow_weight, m)?)?;
    Ok(())
}
