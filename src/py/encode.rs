//! Bindings for the encoders (`crate::encode`).
//!
//! A batch of images is `descriptors` as a float32 `(N, d)` NumPy array with
//! `offsets` (int64, `n_images + 1`), or an Arrow
//! `list<fixed_size_list<float32, d>>` column (zero-copy; `offsets` left
//! out; null rows have no descriptors). Spatial pyramids also take
//! `keypoints` (float32 `(N, >= 2)` with x, y first, or the Arrow `keypoints`
//! column) and `image_sizes` (int64 `(n_images, 2)`: width, height). Every
//! encoder returns a float32 `(n_images, D)` array and runs without the GIL.

use arrow_array::ArrayRef;
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3_arrow::PyArray;

use super::gmm::{mixture, Floats};
use crate::py::arrays::c_order as rows;
use crate::arrow::float_descriptor_rows;
use crate::encode::assign::{assign, Assignment};
use crate::encode::fisher::{fisher, FisherOptions};
use crate::encode::maps::{additive_chi2, power_normalize as power_map};
use crate::encode::pyramid::{bow_histograms, pyramid_counts_from_words, Layout, LevelWeights, Pyramid};
use crate::encode::vlad::{vlad, VladOptions};
use crate::encode::{width_error, Frames};
use crate::error::BovwError;
use crate::features::with_threads;
use crate::histogram::Norm;

fn is_arrow(ob: &Bound<'_, PyAny>) -> bool {
    ob.hasattr("__arrow_c_array__").unwrap_or(false)
}

/// A float32 `(n, w)` array or an Arrow list-of-fixed-size-list column.
enum Rows<'py> {
    Np(PyReadonlyArray2<'py, f32>, Option<Vec<usize>>),
    Arrow(ArrayRef),
}

/// Borrowed rows: values, width, offsets.
struct View<'a> {
    values: &'a [f32],
    width: usize,
    offsets: Vec<usize>,
}

fn offsets_vec(o: &PyReadonlyArray1<'_, i64>) -> Result<Vec<usize>, BovwError> {
    let o = o.as_array();
    if let Some(i) = o.iter().position(|&v| v < 0) {
        return Err(BovwError::param("offsets", format!("entry {i} is negative ({})", o[i])));
    }
    Ok(o.iter().map(|&v| v as usize).collect())
}

impl<'py> Rows<'py> {
    fn extract(ob: &Bound<'py, PyAny>, offsets: Option<&PyReadonlyArray1<'py, i64>>, what: &str) -> PyResult<Self> {
        if is_arrow(ob) {
            if offsets.is_some() {
                return Err(BovwError::param("offsets", format!("must be None when {what} is an Arrow column")).into());
            }
            let a: PyArray = ob.extract()?;
            return Ok(Rows::Arrow(a.array().clone()));
        }
        let a = ob.extract::<PyReadonlyArray2<'py, f32>>().map_err(|_| {
            let got = ob.getattr("dtype").map(|d| d.to_string()).unwrap_or_else(|_| "not an array".into());
            BovwError::Dtype { what: what.into(), expected: "a 2-D float32 array or an Arrow list<fixed_size_list<float32, w>> column".into(), got }
        })?;
        let o = offsets.map(offsets_vec).transpose()?;
        Ok(Rows::Np(a, o))
    }

    fn view(&self, what: &str) -> Result<View<'_>, BovwError> {
        match self {
            Rows::Np(a, o) => {
                let values = crate::py::arrays::c_slice(a, what)?;
                let n = a.shape()[0];
                let offsets = match o {
                    Some(o) => o.clone(),
                    None => vec![0, n],
                };
                Ok(View { values, width: a.shape()[1], offsets })
            }
            Rows::Arrow(arr) => {
                let r = float_descriptor_rows(arr.as_ref())?;
                let n = r.offsets[r.offsets.len() - 1];
                Ok(View { values: &r.values[..n * r.width], width: r.width, offsets: r.offsets })
            }
        }
    }
}

/// Keypoints and image sizes as given.
struct FrameInput<'py> {
    kp: Rows<'py>,
    sizes: Vec<i64>,
}

fn frame_input<'py>(
    keypoints: Option<&Bound<'py, PyAny>>,
    image_sizes: Option<PyReadonlyArray2<'py, i64>>,
) -> PyResult<Option<FrameInput<'py>>> {
    match (keypoints, image_sizes) {
        (None, None) => Ok(None),
        (Some(k), Some(s)) => {
            if s.shape()[1] != 2 {
                return Err(BovwError::Shape { what: "image_sizes".into(), expected: "(n_images, 2)".into(), got: format!("{:?}", s.shape()) }.into());
            }
            Ok(Some(FrameInput { kp: Rows::extract(k, None, "keypoints")?, sizes: s.as_array().iter().copied().collect() }))
        }
        _ => Err(BovwError::param("keypoints", "a spatial pyramid needs both keypoints and image_sizes").into()),
    }
}

/// The batch's view, its pyramid and frames, checked against each other.
struct Prepared<'a> {
    desc: View<'a>,
    kp: Option<View<'a>>,
    pyramid: Option<Pyramid>,
}

impl<'a> Prepared<'a> {
    fn layout(&'a self, sizes: &'a [i64]) -> Layout<'a> {
        match (&self.pyramid, &self.kp) {
            (Some(p), Some(kp)) => Layout::Pyramid(p, Frames { xy: kp.values, stride: kp.width, sizes }),
            _ => Layout::Whole,
        }
    }
}

fn prepare<'a>(
    desc: &'a Rows<'_>,
    frames: &'a Option<FrameInput<'_>>,
    spatial_pyramid: &Option<Vec<usize>>,
    pyramid_weights: &str,
    width: usize,
    what_vocab: &str,
) -> Result<Prepared<'a>, BovwError> {
    if let Rows::Np(_, None) = desc {
        return Err(BovwError::param("offsets", "is required with a NumPy descriptors array (n_images + 1 entries)"));
    }
    let mut v = desc.view("descriptors")?;
    if v.width != width {
        if v.offsets[v.offsets.len() - 1] == 0 && v.values.is_empty() {
            v.width = width;
        } else {
            return Err(width_error(what_vocab, width, v.width));
        }
    }
    let pyramid = match spatial_pyramid {
        None => None,
        Some(g) => Some(Pyramid::new(g, LevelWeights::parse(pyramid_weights)?)?),
    };
    let kp = match (&pyramid, frames) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(BovwError::param("spatial_pyramid", "needs keypoints and image_sizes (the keypoints and image_width/image_height columns)"))
        }
        (Some(_), Some(f)) => {
            let mut k = f.kp.view("keypoints")?;
            if let Rows::Np(..) = f.kp {
                k.offsets = v.offsets.clone();
            }
            if k.offsets != v.offsets {
                let i = k.offsets.iter().zip(&v.offsets).position(|(a, b)| a != b).unwrap_or(0);
                return Err(BovwError::input(format!(
                    "keypoints: the batch's keypoint and descriptor counts differ (from image {})",
                    i.saturating_sub(1)
                )));
            }
            if k.width < 2 {
                return Err(BovwError::Shape { what: "keypoints".into(), expected: "(N, >= 2): x, y first".into(), got: format!("width {}", k.width) });
            }
            Some(k)
        }
    };
    Ok(Prepared { desc: v, kp, pyramid })
}

fn out_2d(py: Python<'_>, v: Vec<f32>, n_images: usize) -> Bound<'_, PyArray2<f32>> {
    let w = if n_images == 0 { 0 } else { v.len() / n_images };
    Array2::from_shape_vec((n_images, w), v).expect("n_images * width").into_pyarray(py)
}

fn vocab_slice<'a>(v: &'a PyReadonlyArray2<'_, f32>) -> Result<&'a [f32], BovwError> {
    crate::py::arrays::c_slice(v, "vocabulary")
}

/// Bag-of-words histograms, hard or soft, with an optional spatial pyramid:
/// (n_images, n_cells * n_words) float32.
#[pyfunction]
#[pyo3(signature = (descriptors, vocabulary, offsets=None, *, keypoints=None, image_sizes=None, spatial_pyramid=None, pyramid_weights="uniform", n_neighbors=1, sigma=None, n_threads=None))]
#[allow(clippy::too_many_arguments)]
pub fn encode_bow<'py>(
    py: Python<'py>,
    descriptors: &Bound<'py, PyAny>,
    vocabulary: PyReadonlyArray2<'py, f32>,
    offsets: Option<PyReadonlyArray1<'py, i64>>,
    keypoints: Option<&Bound<'py, PyAny>>,
    image_sizes: Option<PyReadonlyArray2<'py, i64>>,
    spatial_pyramid: Option<Vec<usize>>,
    pyramid_weights: &str,
    n_neighbors: usize,
    sigma: Option<f64>,
    n_threads: Option<usize>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let how = Assignment::new(n_neighbors, sigma)?;
    let desc = Rows::extract(descriptors, offsets.as_ref(), "descriptors")?;
    let frames = frame_input(keypoints, image_sizes)?;
    let d = vocabulary.shape()[1];
    let voc = vocab_slice(&vocabulary)?;
    let p = prepare(&desc, &frames, &spatial_pyramid, pyramid_weights, d, "vocabulary")?;
    let sizes: &[i64] = frames.as_ref().map(|f| f.sizes.as_slice()).unwrap_or(&[]);
    let layout = p.layout(sizes);
    let n_images = p.desc.offsets.len().saturating_sub(1);
    let h = py.detach(|| with_threads(n_threads, || bow_histograms(p.desc.values, &p.desc.offsets, d, voc, &how, &layout)))?;
    Ok(out_2d(py, h, n_images))
}

/// Spatial pyramid word counts from word ids (int64) and image offsets:
/// (n_images, n_cells * n_words) float32.
#[pyfunction]
#[pyo3(signature = (words, offsets, n_words, keypoints, image_sizes, spatial_pyramid, *, pyramid_weights="uniform", n_threads=None))]
#[allow(clippy::too_many_arguments)]
pub fn bow_pyramid_counts<'py>(
    py: Python<'py>,
    words: PyReadonlyArray1<'py, i64>,
    offsets: PyReadonlyArray1<'py, i64>,
    n_words: usize,
    keypoints: &Bound<'py, PyAny>,
    image_sizes: PyReadonlyArray2<'py, i64>,
    spatial_pyramid: Vec<usize>,
    pyramid_weights: &str,
    n_threads: Option<usize>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let p = Pyramid::new(&spatial_pyramid, LevelWeights::parse(pyramid_weights)?)?;
    let o = offsets_vec(&offsets)?;
    let w = words.as_slice().map_err(|_| BovwError::input("words must be C-contiguous"))?;
    let frames = frame_input(Some(keypoints), Some(image_sizes))?.expect("both given");
    let kv = frames.kp.view("keypoints")?;
    if let Rows::Arrow(_) = frames.kp {
        if kv.offsets != o {
            return Err(BovwError::input("keypoints: the column's keypoint counts differ from the offsets").into());
        }
    }
    let n_images = o.len().saturating_sub(1);
    let f = Frames { xy: kv.values, stride: kv.width, sizes: &frames.sizes };
    let h = py.detach(|| with_threads(n_threads, || pyramid_counts_from_words(w, &o, n_words, &p, &f)))?;
    Ok(out_2d(py, h, n_images))
}

/// VLAD of each image: (n_images, n_cells * n_words * d) float32.
#[pyfunction]
#[pyo3(signature = (descriptors, vocabulary, offsets=None, *, keypoints=None, image_sizes=None, spatial_pyramid=None, pyramid_weights="uniform", n_neighbors=1, sigma=None, normalize_mass=false, square_root=false, normalize_components=true, normalize=true, n_threads=None))]
#[allow(clippy::too_many_arguments)]
pub fn encode_vlad<'py>(
    py: Python<'py>,
    descriptors: &Bound<'py, PyAny>,
    vocabulary: PyReadonlyArray2<'py, f32>,
    offsets: Option<PyReadonlyArray1<'py, i64>>,
    keypoints: Option<&Bound<'py, PyAny>>,
    image_sizes: Option<PyReadonlyArray2<'py, i64>>,
    spatial_pyramid: Option<Vec<usize>>,
    pyramid_weights: &str,
    n_neighbors: usize,
    sigma: Option<f64>,
    normalize_mass: bool,
    square_root: bool,
    normalize_components: bool,
    normalize: bool,
    n_threads: Option<usize>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let how = Assignment::new(n_neighbors, sigma)?;
    let opts = VladOptions { normalize_mass, square_root, normalize_components, normalize };
    let desc = Rows::extract(descriptors, offsets.as_ref(), "descriptors")?;
    let frames = frame_input(keypoints, image_sizes)?;
    let d = vocabulary.shape()[1];
    let voc = vocab_slice(&vocabulary)?;
    let p = prepare(&desc, &frames, &spatial_pyramid, pyramid_weights, d, "vocabulary")?;
    let sizes: &[i64] = frames.as_ref().map(|f| f.sizes.as_slice()).unwrap_or(&[]);
    let layout = p.layout(sizes);
    let n_images = p.desc.offsets.len().saturating_sub(1);
    let v = py.detach(|| with_threads(n_threads, || vlad(p.desc.values, &p.desc.offsets, d, voc, &how, &opts, &layout)))?;
    Ok(out_2d(py, v, n_images))
}

/// Fisher vectors of each image: (n_images, n_cells * 2 * K * d) float32.
#[pyfunction]
#[pyo3(signature = (descriptors, weights, means, covariances, offsets=None, *, keypoints=None, image_sizes=None, spatial_pyramid=None, pyramid_weights="uniform", square_root=true, normalize=true, posterior_threshold=1e-6, prior_threshold=1e-6, n_threads=None))]
#[allow(clippy::too_many_arguments)]
pub fn encode_fisher<'py>(
    py: Python<'py>,
    descriptors: &Bound<'py, PyAny>,
    weights: PyReadonlyArray1<'py, f64>,
    means: PyReadonlyArray2<'py, f64>,
    covariances: PyReadonlyArray2<'py, f64>,
    offsets: Option<PyReadonlyArray1<'py, i64>>,
    keypoints: Option<&Bound<'py, PyAny>>,
    image_sizes: Option<PyReadonlyArray2<'py, i64>>,
    spatial_pyramid: Option<Vec<usize>>,
    pyramid_weights: &str,
    square_root: bool,
    normalize: bool,
    posterior_threshold: f64,
    prior_threshold: f64,
    n_threads: Option<usize>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let g = mixture(&weights, &means, &covariances)?;
    let opts = FisherOptions { square_root, normalize, posterior_threshold, prior_threshold };
    let desc = Rows::extract(descriptors, offsets.as_ref(), "descriptors")?;
    let frames = frame_input(keypoints, image_sizes)?;
    let d = g.n_features;
    let p = prepare(&desc, &frames, &spatial_pyramid, pyramid_weights, d, "mixture")?;
    let sizes: &[i64] = frames.as_ref().map(|f| f.sizes.as_slice()).unwrap_or(&[]);
    let layout = p.layout(sizes);
    let n_images = p.desc.offsets.len().saturating_sub(1);
    let v = py.detach(|| with_threads(n_threads, || fisher(p.desc.values, &p.desc.offsets, d, &g, &opts, &layout)))?;
    Ok(out_2d(py, v, n_images))
}

/// Soft (or hard) assignment of each row: (words int64 (n, m), weights float32 (n, m)).
#[pyfunction]
#[pyo3(signature = (x, vocabulary, *, n_neighbors=1, sigma=None, n_threads=None))]
pub fn soft_assign<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    vocabulary: PyReadonlyArray2<'py, f32>,
    n_neighbors: usize,
    sigma: Option<f64>,
    n_threads: Option<usize>,
) -> PyResult<(Bound<'py, PyArray2<i64>>, Bound<'py, PyArray2<f32>>)> {
    let how = Assignment::new(n_neighbors, sigma)?;
    let d = vocabulary.shape()[1];
    if x.shape()[1] != d {
        return Err(width_error("vocabulary", d, x.shape()[1]).into());
    }
    let xs = rows(&x);
    let voc = vocab_slice(&vocabulary)?;
    let a = py.detach(|| {
        with_threads(n_threads, || {
            crate::encode::check_batch(&xs, &[0, xs.len() / d.max(1)], d, "vocabulary")?;
            assign(&xs, voc, d, &how)
        })
    })?;
    let n = x.shape()[0];
    let words: Vec<i64> = a.words.iter().map(|&w| w as i64).collect();
    Ok((
        Array2::from_shape_vec((n, a.m), words).expect("n * m").into_pyarray(py),
        Array2::from_shape_vec((n, a.m), a.weights).expect("n * m").into_pyarray(py),
    ))
}

/// The additive chi2 kernel map of X (n, d) >= 0: (n, (2 * sample_steps - 1) * d), X's dtype.
#[pyfunction]
#[pyo3(signature = (x, *, sample_steps=2, sample_interval=None, n_threads=None))]
pub fn chi2_map<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    sample_steps: usize,
    sample_interval: Option<f64>,
    n_threads: Option<usize>,
) -> PyResult<Bound<'py, PyAny>> {
    let w = (2 * sample_steps).saturating_sub(1);
    macro_rules! go {
        ($a:expr) => {{
            let d = $a.shape()[1];
            let s = rows(&$a);
            let out = py.detach(|| with_threads(n_threads, || additive_chi2(&s, d, sample_steps, sample_interval)))?;
            Array2::from_shape_vec(($a.shape()[0], w * d), out).expect("n * width").into_pyarray(py).into_any()
        }};
    }
    Ok(match Floats::extract(x, "X")? {
        Floats::F32(a) => go!(a),
        Floats::F64(a) => go!(a),
    })
}

/// Signed power normalisation sign(z)|z|^alpha of the rows of X (n, d),
/// after pre_norm and before norm (None, "l1" or "l2"); X's dtype.
#[pyfunction]
#[pyo3(signature = (x, *, alpha=0.5, pre_norm=None, norm=None, n_threads=None))]
pub fn power_normalize<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    alpha: f64,
    pre_norm: Option<&str>,
    norm: Option<&str>,
    n_threads: Option<usize>,
) -> PyResult<Bound<'py, PyAny>> {
    let pre = Norm::parse(pre_norm).map_err(|_| BovwError::param("pre_norm", format!("expected None, 'l1' or 'l2', got {pre_norm:?}")))?;
    let post = Norm::parse(norm)?;
    macro_rules! go {
        ($a:expr) => {{
            let (n, d) = ($a.shape()[0], $a.shape()[1]);
            let s = rows(&$a);
            let out = py.detach(|| with_threads(n_threads, || power_map(&s, d, alpha, pre, post)))?;
            Array2::from_shape_vec((n, d), out).expect("n * d").into_pyarray(py).into_any()
        }};
    }
    Ok(match Floats::extract(x, "X")? {
        Floats::F32(a) => go!(a),
        Floats::F64(a) => go!(a),
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(encode_bow, m)?)?;
    m.add_function(wrap_pyfunction!(bow_pyramid_counts, m)?)?;
    m.add_function(wrap_pyfunction!(encode_vlad, m)?)?;
    m.add_function(wrap_pyfunction!(encode_fisher, m)?)?;
    m.add_function(wrap_pyfunction!(soft_assign, m)?)?;
    m.add_function(wrap_pyfunction!(chi2_map, m)?)?;
    m.add_function(wrap_pyfunction!(power_normalize, m)?)?;
    Ok(())
}
