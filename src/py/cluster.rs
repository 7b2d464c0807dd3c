//! Bindings for the cluster stage (`crate::cluster::{kmeans, init}`).
//!
//! Every function takes C-contiguous `float32` or `float64` NumPy arrays
//! (borrowed, no copy; a non-contiguous array is copied once), releases the
//! GIL and runs on `n_threads` rayon threads (all cores when `None`).

use std::borrow::Cow;

use numpy::ndarray::Array2;
use numpy::{Element, IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3_arrow::PyArray;

use crate::arrow::float_descriptor_rows;
use crate::cluster::init::{kmeans_parallel, kmeans_parallel_sample, kmeans_plusplus};
use crate::cluster::kmeans::{self, check_finite, Algorithm, Real};
use crate::error::{probe_allocation, BovwError};
use crate::features::with_threads;
use crate::py::args::{self, float_in, Int, INT_MAX};
use crate::py::arrays::c_order as rows;

/// Largest `n_local_trials` of k-means++ (time grows linearly with it;
/// scikit-learn's default is 2 + log(k)).
const MAX_LOCAL_TRIALS: i64 = 1024;
/// Largest `n_rounds` of k-means|| (Spark's default is 2, bovw's 5).
const MAX_ROUNDS: i64 = 1000;

fn weights<'a>(w: &'a Option<PyReadonlyArray1<'_, f64>>) -> Option<Cow<'a, [f64]>> {
    w.as_ref().map(|w| match w.as_slice() {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(w.as_array().iter().copied().collect()),
    })
}

fn dtype_error(what: &str, got: &Bound<'_, PyAny>) -> PyErr {
    let got = got
        .getattr("dtype")
        .map(|d| d.to_string())
        .unwrap_or_else(|_| got.get_type().name().map(|n| n.to_string()).unwrap_or_default());
    BovwError::Dtype { what: what.into(), expected: "a 2-D float32 or float64 array".into(), got }.into()
}

/// A 2-D float32 or float64 array.
enum Floats<'py> {
    F32(PyReadonlyArray2<'py, f32>),
    F64(PyReadonlyArray2<'py, f64>),
}

impl<'py> Floats<'py> {
    fn extract(ob: &Bound<'py, PyAny>, what: &str) -> PyResult<Self> {
        if let Ok(a) = ob.extract::<PyReadonlyArray2<'py, f32>>() {
            return Ok(Floats::F32(a));
        }
        if let Ok(a) = ob.extract::<PyReadonlyArray2<'py, f64>>() {
            return Ok(Floats::F64(a));
        }
        Err(dtype_error(what, ob))
    }
}

/// The array `ob` as the element type `T` of X.
fn same_dtype<'py, T: Element>(ob: &Bound<'py, PyAny>, what: &str) -> PyResult<PyReadonlyArray2<'py, T>> {
    ob.extract::<PyReadonlyArray2<'py, T>>().map_err(|_| {
        let got = ob.getattr("dtype").map(|d| d.to_string()).unwrap_or_else(|_| "not an array".into());
        BovwError::Dtype { what: what.into(), expected: "a 2-D array of the dtype of X".into(), got }.into()
    })
}

fn ncols<T: Element>(a: &PyReadonlyArray2<'_, T>) -> usize {
    a.shape()[1]
}

fn to_2d<'py, T: Element>(py: Python<'py>, v: Vec<T>, d: usize) -> Bound<'py, PyArray2<T>> {
    let n = if d == 0 { 0 } else { v.len() / d };
    Array2::from_shape_vec((n, d), v).expect("n * d values").into_pyarray(py)
}

fn labels_i32<'py>(py: Python<'py>, l: Vec<u32>) -> Bound<'py, PyArray1<i32>> {
    l.into_iter().map(|v| v as i32).collect::<Vec<i32>>().into_pyarray(py)
}

fn check_width(d: usize, dc: usize, what: &str) -> Result<(), BovwError> {
    if d != dc {
        return Err(BovwError::Shape { what: what.into(), expected: format!("(n_clusters, {d}) like X's n_features"), got: format!("(_, {dc})") });
    }
    Ok(())
}

// ---------------------------------------------------------------------------

type FitOut<'py> = (Bound<'py, PyAny>, Bound<'py, PyArray1<i32>>, f64, usize);

fn fit_single_t<'py, T: Real + Element>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, T>,
    init: &Bound<'py, PyAny>,
    w: Option<PyReadonlyArray1<'py, f64>>,
    max_iter: usize,
    tol: f64,
    algorithm: Algorithm,
    n_threads: Option<usize>,
) -> PyResult<FitOut<'py>> {
    let init = same_dtype::<T>(init, "init")?;
    let d = ncols(&x);
    check_width(d, ncols(&init), "init")?;
    let (xs, is, ws) = (rows(&x), rows(&init), weights(&w));
    let r = py.detach(|| with_threads(n_threads, || kmeans::kmeans_single(&xs, d, ws.as_deref(), &is, max_iter, tol, algorithm)))?;
    Ok((to_2d(py, r.centers, d).into_any(), labels_i32(py, r.labels), r.inertia, r.n_iter))
}

/// One K-Means run from given initial centers (no validation of finiteness:
/// the Python layer checks). Returns (centers, labels int32, inertia, n_iter).
#[pyfunction]
#[pyo3(signature = (x, init, sample_weight=None, *, max_iter=Int::Fits(300), tol=0.0, algorithm="lloyd", n_threads=None))]
#[pyo3(text_signature = "(x, init, sample_weight=None, *, max_iter=300, tol=0.0, algorithm='lloyd', n_threads=None)")]
#[allow(clippy::too_many_arguments)]
pub fn kmeans_fit_single<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    init: &Bound<'py, PyAny>,
    sample_weight: Option<PyReadonlyArray1<'py, f64>>,
    max_iter: Int,
    tol: f64,
    algorithm: &str,
    n_threads: Option<Int>,
) -> PyResult<FitOut<'py>> {
    let n_threads = args::threads(n_threads)?;
    let max_iter = max_iter.index("max_iter", 1, INT_MAX)?;
    let tol = float_in("tol", tol, 0.0, false, f64::INFINITY)?;
    let algorithm = Algorithm::parse(algorithm)?;
    match Floats::extract(x, "X")? {
        Floats::F32(a) => fit_single_t(py, a, init, sample_weight, max_iter, tol, algorithm, n_threads),
        Floats::F64(a) => fit_single_t(py, a, init, sample_weight, max_iter, tol, algorithm, n_threads),
    }
}

/// scikit-learn's absolute tolerance: `tol * mean(var(X, axis=0))`.
#[pyfunction]
#[pyo3(signature = (x, tol, *, n_threads=None))]
pub fn kmeans_tolerance(py: Python<'_>, x: &Bound<'_, PyAny>, tol: f64, n_threads: Option<Int>) -> PyResult<f64> {
    let n_threads = args::threads(n_threads)?;
    let tol = float_in("tol", tol, 0.0, false, f64::INFINITY)?;
    Ok(match Floats::extract(x, "X")? {
        Floats::F32(a) => {
            let (d, s) = (ncols(&a), rows(&a));
            py.detach(|| with_threads(n_threads, || kmeans::tolerance(&s, d, tol)))
        }
        Floats::F64(a) => {
            let (d, s) = (ncols(&a), rows(&a));
            py.detach(|| with_threads(n_threads, || kmeans::tolerance(&s, d, tol)))
        }
    })
}

/// Greedy k-means++. Returns (centers (k, d) of X's dtype, indices int64).
#[pyfunction]
#[pyo3(signature = (x, n_clusters, sample_weight=None, *, seed=Int::Fits(0), n_local_trials=None, n_threads=None))]
#[pyo3(text_signature = "(x, n_clusters, sample_weight=None, *, seed=0, n_local_trials=None, n_threads=None)")]
pub fn kmeans_plusplus_init<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    n_clusters: Int,
    sample_weight: Option<PyReadonlyArray1<'py, f64>>,
    seed: Int,
    n_local_trials: Option<Int>,
    n_threads: Option<Int>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyArray1<i64>>)> {
    let n_threads = args::threads(n_threads)?;
    let n_clusters = n_clusters.index("n_clusters", 1, INT_MAX)?;
    let seed = seed.seed("seed")?;
    let n_local_trials = n_local_trials.map(|t| t.index("n_local_trials", 1, MAX_LOCAL_TRIALS)).transpose()?;
    let ws = weights(&sample_weight);
    macro_rules! go {
        ($a:expr) => {{
            let (d, s) = (ncols(&$a), rows(&$a));
            let (c, idx) = py.detach(|| with_threads(n_threads, || kmeans_plusplus(&s, d, n_clusters, ws.as_deref(), seed, n_local_trials)))?;
            (to_2d(py, c, d).into_any(), idx.into_iter().map(|i| i as i64).collect::<Vec<_>>().into_pyarray(py))
        }};
    }
    Ok(match Floats::extract(x, "X")? {
        Floats::F32(a) => go!(a),
        Floats::F64(a) => go!(a),
    })
}

/// k-means|| initialisation. Returns centers (k, d) of X's dtype.
#[pyfunction]
#[pyo3(signature = (x, n_clusters, sample_weight=None, *, seed=Int::Fits(0), oversampling_factor=None, n_rounds=Int::Fits(5), n_threads=None))]
#[pyo3(text_signature = "(x, n_clusters, sample_weight=None, *, seed=0, oversampling_factor=None, n_rounds=5, n_threads=None)")]
#[allow(clippy::too_many_arguments)]
pub fn kmeans_parallel_init<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    n_clusters: Int,
    sample_weight: Option<PyReadonlyArray1<'py, f64>>,
    seed: Int,
    oversampling_factor: Option<f64>,
    n_rounds: Int,
    n_threads: Option<Int>,
) -> PyResult<Bound<'py, PyAny>> {
    let n_threads = args::threads(n_threads)?;
    let n_clusters = n_clusters.index("n_clusters", 1, INT_MAX)?;
    let seed = seed.seed("seed")?;
    let n_rounds = n_rounds.index("n_rounds", 1, MAX_ROUNDS)?;
    let oversampling_factor = oversampling_factor
        .map(|l| float_in("oversampling_factor", l, 0.0, true, f64::MAX))
        .transpose()?;
    let ws = weights(&sample_weight);
    let l = oversampling_factor.unwrap_or(2.0 * n_clusters as f64);
    macro_rules! go {
        ($a:expr) => {{
            let (d, s) = (ncols(&$a), rows(&$a));
            let c = py.detach(|| with_threads(n_threads, || kmeans_parallel(&s, d, n_clusters, ws.as_deref(), seed, l, n_rounds)))?;
            to_2d(py, c, d).into_any()
        }};
    }
    Ok(match Floats::extract(x, "X")? {
        Floats::F32(a) => go!(a),
        Floats::F64(a) => go!(a),
    })
}

/// One k-means|| round on a batch. Returns (kept row indices int64, cost).
#[pyfunction]
#[pyo3(signature = (x, centers, oversampling_factor, phi, *, seed=Int::Fits(0), sample_weight=None, n_threads=None))]
#[pyo3(text_signature = "(x, centers, oversampling_factor, phi, *, seed=0, sample_weight=None, n_threads=None)")]
#[allow(clippy::too_many_arguments)]
pub fn kmeans_parallel_round<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    centers: &Bound<'py, PyAny>,
    oversampling_factor: f64,
    phi: f64,
    seed: Int,
    sample_weight: Option<PyReadonlyArray1<'py, f64>>,
    n_threads: Option<Int>,
) -> PyResult<(Bound<'py, PyArray1<i64>>, f64)> {
    let n_threads = args::threads(n_threads)?;
    let seed = seed.seed("seed")?;
    let oversampling_factor = float_in("oversampling_factor", oversampling_factor, 0.0, true, f64::MAX)?;
    let phi = float_in("phi", phi, 0.0, false, f64::MAX)?;
    let ws = weights(&sample_weight);
    macro_rules! go {
        ($a:expr, $t:ty) => {{
            let c = same_dtype::<$t>(centers, "centers")?;
            let d = ncols(&$a);
            check_width(d, ncols(&c), "centers")?;
            let (s, cs) = (rows(&$a), rows(&c));
            let (idx, cost) = py.detach(|| {
                with_threads(n_threads, || {
                    check_finite(&s, d, "X")?;
                    kmeans_parallel_sample(&s, d, &cs, ws.as_deref(), oversampling_factor, phi, seed)
                })
            })?;
            (idx.into_iter().map(|i| i as i64).collect::<Vec<_>>().into_pyarray(py), cost)
        }};
    }
    Ok(match Floats::extract(x, "X")? {
        Floats::F32(a) => go!(a, f32),
        Floats::F64(a) => go!(a, f64),
    })
}

/// Nearest center of each row. Returns (labels int32, squared distances float64).
#[pyfunction]
#[pyo3(signature = (x, centers, *, check_finite=true, n_threads=None))]
pub fn kmeans_assign<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    centers: &Bound<'py, PyAny>,
    check_finite: bool,
    n_threads: Option<Int>,
) -> PyResult<(Bound<'py, PyArray1<i32>>, Bound<'py, PyArray1<f64>>)> {
    let n_threads = args::threads(n_threads)?;
    let finite = check_finite;
    macro_rules! go {
        ($a:expr, $t:ty) => {{
            let c = same_dtype::<$t>(centers, "centers")?;
            let d = ncols(&$a);
            check_width(d, ncols(&c), "centers")?;
            let (s, cs) = (rows(&$a), rows(&c));
            let (l, ds) = py.detach(|| {
                with_threads(n_threads, || {
                    if finite {
                        self::check_finite(&s, d, "X")?;
                    }
                    kmeans::assign(&s, &cs, d)
                })
            })?;
            (labels_i32(py, l), ds.into_pyarray(py))
        }};
    }
    Ok(match Floats::extract(x, "X")? {
        Floats::F32(a) => go!(a, f32),
        Floats::F64(a) => go!(a, f64),
    })
}

/// Nearest center of each row (labels int32 only; no finiteness check).
#[pyfunction]
#[pyo3(signature = (x, centers, *, n_threads=None))]
pub fn kmeans_predict<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    centers: &Bound<'py, PyAny>,
    n_threads: Option<Int>,
) -> PyResult<Bound<'py, PyArray1<i32>>> {
    let n_threads = args::threads(n_threads)?;
    macro_rules! go {
        ($a:expr, $t:ty) => {{
            let c = same_dtype::<$t>(centers, "centers")?;
            let d = ncols(&$a);
            check_width(d, ncols(&c), "centers")?;
            let (s, cs) = (rows(&$a), rows(&c));
            let l = py.detach(|| with_threads(n_threads, || kmeans::assign_labels_only(&s, &cs, d)))?;
            labels_i32(py, l)
        }};
    }
    Ok(match Floats::extract(x, "X")? {
        Floats::F32(a) => go!(a, f32),
        Floats::F64(a) => go!(a, f64),
    })
}

/// Euclidean distances (n, k) of X's dtype, computed in float64.
#[pyfunction]
#[pyo3(signature = (x, centers, *, n_threads=None))]
pub fn kmeans_distances<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    centers: &Bound<'py, PyAny>,
    n_threads: Option<Int>,
) -> PyResult<Bound<'py, PyAny>> {
    let n_threads = args::threads(n_threads)?;
    macro_rules! go {
        ($a:expr, $t:ty) => {{
            let c = same_dtype::<$t>(centers, "centers")?;
            let d = ncols(&$a);
            check_width(d, ncols(&c), "centers")?;
            let k = c.shape()[0];
            let n = $a.shape()[0];
            probe_allocation(n as u128 * k as u128 * std::mem::size_of::<$t>() as u128, "the (n_samples, n_clusters) distance matrix")?;
            let (s, cs) = (rows(&$a), rows(&c));
            let out = py.detach(|| with_threads(n_threads, || kmeans::distances(&s, &cs, d)))?;
            to_2d(py, out, k).into_any()
        }};
    }
    Ok(match Floats::extract(x, "X")? {
        Floats::F32(a) => go!(a, f32),
        Floats::F64(a) => go!(a, f64),
    })
}

type SumsOut<'py> = (Bound<'py, PyArray2<f64>>, Bound<'py, PyArray1<i64>>, f64);

/// Per-batch sums (k, d) float64, counts (k,) int64 and inertia.
#[pyfunction]
#[pyo3(signature = (x, centers, *, n_threads=None))]
pub fn kmeans_partial_sums<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    centers: &Bound<'py, PyAny>,
    n_threads: Option<Int>,
) -> PyResult<SumsOut<'py>> {
    let n_threads = args::threads(n_threads)?;
    macro_rules! go {
        ($a:expr, $t:ty) => {{
            let c = same_dtype::<$t>(centers, "centers")?;
            let d = ncols(&$a);
            check_width(d, ncols(&c), "centers")?;
            let (s, cs) = (rows(&$a), rows(&c));
            let p = py.detach(|| {
                with_threads(n_threads, || {
                    check_finite(&s, d, "X")?;
                    kmeans::partial_sums(&s, &cs, d)
                })
            })?;
            (to_2d(py, p.sums, d), p.counts.into_pyarray(py), p.inertia)
        }};
    }
    Ok(match Floats::extract(x, "X")? {
        Floats::F32(a) => go!(a, f32),
        Floats::F64(a) => go!(a, f64),
    })
}

/// `kmeans_assign` on an Arrow `list<fixed_size_list<float32, d>>` column
/// (zero-copy). Returns (labels int32, squared distances float64, offsets
/// int64 (n_images + 1)).
#[pyfunction]
#[pyo3(signature = (descriptors, centers, *, n_threads=None))]
pub fn kmeans_assign_arrow<'py>(
    py: Python<'py>,
    descriptors: PyArray,
    centers: PyReadonlyArray2<'py, f32>,
    n_threads: Option<Int>,
) -> PyResult<(Bound<'py, PyArray1<i32>>, Bound<'py, PyArray1<f64>>, Bound<'py, PyArray1<i64>>)> {
    let n_threads = args::threads(n_threads)?;
    let array = descriptors.array().clone();
    let cs = rows(&centers);
    let dc = ncols(&centers);
    let (l, ds, offs) = py.detach(|| -> Result<_, BovwError> {
        let r = float_descriptor_rows(array.as_ref())?;
        check_width(r.width, dc, "centers")?;
        with_threads(n_threads, || {
            check_finite(r.values, r.width, "descriptors")?;
            let (l, ds) = kmeans::assign(r.values, &cs, r.width)?;
            Ok((l, ds, r.offsets.iter().map(|&o| o as i64).collect::<Vec<i64>>()))
        })
    })?;
    Ok((labels_i32(py, l), ds.into_pyarray(py), offs.into_pyarray(py)))
}

/// `kmeans_partial_sums` on an Arrow descriptor column (zero-copy).
#[pyfunction]
#[pyo3(signature = (descriptors, centers, *, n_threads=None))]
pub fn kmeans_partial_sums_arrow<'py>(
    py: Python<'py>,
    descriptors: PyArray,
    centers: PyReadonlyArray2<'py, f32>,
    n_threads: Option<Int>,
) -> PyResult<SumsOut<'py>> {
    let n_threads = args::threads(n_threads)?;
    let array = descriptors.array().clone();
    let cs = rows(&centers);
    let dc = ncols(&centers);
    let p = py.detach(|| -> Result<_, BovwError> {
        let r = float_descriptor_rows(array.as_ref())?;
        check_width(r.width, dc, "centers")?;
        with_threads(n_threads, || {
            check_finite(r.values, r.width, "descriptors")?;
            kmeans::partial_sums(r.values, &cs, r.width)
        })
    })?;
    Ok((to_2d(py, p.sums, dc), p.counts.into_pyarray(py), p.inertia))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(kmeans_fit_single, m)?)?;
    m.add_function(wrap_pyfunction!(kmeans_tolerance, m)?)?;
    m.add_function(wrap_pyfunction!(kmeans_plusplus_init, m)?)?;
    m.add_function(wrap_pyfunction!(kmeans_parallel_init, m)?)?;
    m.add_function(wrap_pyfunction!(kmeans_parallel_round, m)?)?;
    m.add_function(wrap_pyfunction!(kmeans_assign, m)?)?;
    m.add_function(wrap_pyfunction!(kmeans_distances, m)?)?;
    m.add_function(wrap_pyfunction!(kmeans_predict, m)?)?;
    m.add_function(wrap_pyfunction!(kmeans_partial_sums, m)?)?;
    m.add_function(wrap_pyfunction!(kmeans_assign_arrow, m)?)?;
    m.add_function(wrap_pyfunction!(kmeans_partial_sums_arrow, m)?)?;
    Ok(())
}
