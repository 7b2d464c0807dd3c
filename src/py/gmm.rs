//! Bindings for the Gaussian mixture (`crate::cluster::gmm`).
//!
//! X is a C-contiguous `float32` or `float64` array (borrowed; a
//! non-contiguous one is copied once); the mixture is passed as float64
//! arrays `weights (K,)`, `means (K, d)`, `covariances (K, d)`. Work runs
//! without the GIL on `n_threads` rayon threads (all cores when `None`).

use numpy::ndarray::Array2;
use numpy::{Element, IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3_arrow::PyArray;

use crate::arrow::float_descriptor_rows;
use crate::cluster::gmm::{self, DiagGmm, SuffStats, WeightNorm};
use crate::cluster::kmeans::{check_finite, Real};
use crate::error::BovwError;
use crate::features::with_threads;
use crate::py::arrays::c_order as rows;

/// A 2-D float32 or float64 array.
pub(crate) enum Floats<'py> {
    F32(PyReadonlyArray2<'py, f32>),
    F64(PyReadonlyArray2<'py, f64>),
}

impl<'py> Floats<'py> {
    pub(crate) fn extract(ob: &Bound<'py, PyAny>, what: &str) -> PyResult<Self> {
        if let Ok(a) = ob.extract::<PyReadonlyArray2<'py, f32>>() {
            return Ok(Floats::F32(a));
        }
        if let Ok(a) = ob.extract::<PyReadonlyArray2<'py, f64>>() {
            return Ok(Floats::F64(a));
        }
        let got = ob
            .getattr("dtype")
            .map(|d| d.to_string())
            .unwrap_or_else(|_| ob.get_type().name().map(|n| n.to_string()).unwrap_or_default());
        Err(BovwError::Dtype { what: what.into(), expected: "a 2-D float32 or float64 array".into(), got }.into())
    }
}

fn vec1<T: Element + Copy>(a: &PyReadonlyArray1<'_, T>) -> Vec<T> {
    a.as_array().iter().copied().collect()
}

fn to_2d<'py, T: Element>(py: Python<'py>, v: Vec<T>, d: usize) -> Bound<'py, PyArray2<T>> {
    let n = if d == 0 { 0 } else { v.len() / d };
    Array2::from_shape_vec((n, d), v).expect("n * d values").into_pyarray(py)
}

/// The mixture from float64 arrays, checked.
pub(crate) fn mixture(
    weights: &PyReadonlyArray1<'_, f64>,
    means: &PyReadonlyArray2<'_, f64>,
    covariances: &PyReadonlyArray2<'_, f64>,
) -> Result<DiagGmm, BovwError> {
    let (k, d) = (means.shape()[0], means.shape()[1]);
    if covariances.shape() != [k, d] {
        return Err(BovwError::Shape {
            what: "covariances".into(),
            expected: format!("({k}, {d}) like means"),
            got: format!("{:?}", covariances.shape()),
        });
    }
    if weights.len() != k {
        return Err(BovwError::Shape { what: "weights".into(), expected: format!("({k},) like means"), got: format!("({},)", weights.len()) });
    }
    DiagGmm::new(vec1(weights), rows(means).into_owned(), rows(covariances).into_owned(), d)
}

fn check_width(d: usize, dm: usize) -> Result<(), BovwError> {
    if d != dm {
        return Err(BovwError::Shape {
            what: "X".into(),
            expected: format!("(n_samples, {dm}): the width of the mixture's means"),
            got: format!("(n_samples, {d})"),
        });
    }
    Ok(())
}

type Params<'py> = (Bound<'py, PyArray1<f64>>, Bound<'py, PyArray2<f64>>, Bound<'py, PyArray2<f64>>);

fn params_out(py: Python<'_>, g: DiagGmm) -> Params<'_> {
    let d = g.n_features;
    (g.weights.into_pyarray(py), to_2d(py, g.means, d), to_2d(py, g.covariances, d))
}

type StatsOut<'py> = (Bound<'py, PyArray1<f64>>, Bound<'py, PyArray2<f64>>, Bound<'py, PyArray2<f64>>, f64, usize);

fn stats_out(py: Python<'_>, st: SuffStats, d: usize) -> StatsOut<'_> {
    (st.nk.into_pyarray(py), to_2d(py, st.s1, d), to_2d(py, st.s2, d), st.log_likelihood, st.n_samples)
}

fn eps_of<T: Real>() -> f64 {
    10.0 * T::EPS
}

type FitOut<'py> = (Bound<'py, PyArray1<f64>>, Bound<'py, PyArray2<f64>>, Bound<'py, PyArray2<f64>>, f64, Bound<'py, PyArray1<f64>>, usize, bool);

/// EM from the given mixture. Returns (weights, means, covariances,
/// lower_bound, lower_bounds, n_iter, converged).
#[pyfunction]
#[pyo3(signature = (x, weights, means, covariances, *, max_iter=100, tol=1e-3, reg_covar=1e-6, start_lower_bound=None, n_threads=None))]
#[allow(clippy::too_many_arguments)]
pub fn gmm_fit_em<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    weights: PyReadonlyArray1<'py, f64>,
    means: PyReadonlyArray2<'py, f64>,
    covariances: PyReadonlyArray2<'py, f64>,
    max_iter: usize,
    tol: f64,
    reg_covar: f64,
    start_lower_bound: Option<f64>,
    n_threads: Option<usize>,
) -> PyResult<FitOut<'py>> {
    let init = mixture(&weights, &means, &covariances)?;
    let lb0 = start_lower_bound.unwrap_or(f64::NEG_INFINITY);
    macro_rules! go {
        ($a:expr, $t:ty) => {{
            let d = $a.shape()[1];
            check_width(d, init.n_features)?;
            let s = rows(&$a);
            py.detach(|| {
                with_threads(n_threads, || {
                    check_finite(&s, d, "X")?;
                    gmm::fit_em(&s, d, &init, max_iter, tol, reg_covar, eps_of::<$t>(), lb0)
                })
            })?
        }};
    }
    let fit = match Floats::extract(x, "X")? {
        Floats::F32(a) => go!(a, f32),
        Floats::F64(a) => go!(a, f64),
    };
    let (w, m, c) = params_out(py, fit.gmm);
    Ok((w, m, c, fit.lower_bound, fit.lower_bounds.into_pyarray(py), fit.n_iter, fit.converged))
}

/// E-step statistics of a batch: (nk (K,), s1 (K, d), s2 (K, d),
/// sum of log-likelihoods, n_samples), all float64.
#[pyfunction]
#[pyo3(signature = (x, weights, means, covariances, *, n_threads=None))]
pub fn gmm_suff_stats<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    weights: PyReadonlyArray1<'py, f64>,
    means: PyReadonlyArray2<'py, f64>,
    covariances: PyReadonlyArray2<'py, f64>,
    n_threads: Option<usize>,
) -> PyResult<StatsOut<'py>> {
    let g = mixture(&weights, &means, &covariances)?;
    let d = g.n_features;
    macro_rules! go {
        ($a:expr) => {{
            check_width($a.shape()[1], d)?;
            let s = rows(&$a);
            py.detach(|| {
                with_threads(n_threads, || {
                    check_finite(&s, d, "X")?;
                    gmm::suff_stats(&s, d, &g.prepare())
                })
            })?
        }};
    }
    let st = match Floats::extract(x, "X")? {
        Floats::F32(a) => go!(a),
        Floats::F64(a) => go!(a),
    };
    Ok(stats_out(py, st, d))
}

/// `gmm_suff_stats` on an Arrow `list<fixed_size_list<float32, d>>`
/// descriptor column (zero-copy; null rows have no descriptors).
#[pyfunction]
#[pyo3(signature = (descriptors, weights, means, covariances, *, n_threads=None))]
pub fn gmm_suff_stats_arrow<'py>(
    py: Python<'py>,
    descriptors: PyArray,
    weights: PyReadonlyArray1<'py, f64>,
    means: PyReadonlyArray2<'py, f64>,
    covariances: PyReadonlyArray2<'py, f64>,
    n_threads: Option<usize>,
) -> PyResult<StatsOut<'py>> {
    let g = mixture(&weights, &means, &covariances)?;
    let d = g.n_features;
    let array = descriptors.array().clone();
    let st = py.detach(|| -> Result<_, BovwError> {
        let r = float_descriptor_rows(array.as_ref())?;
        if r.width != d {
            return Err(crate::encode::width_error("mixture", d, r.width));
        }
        let vals = &r.values[..r.offsets[r.offsets.len() - 1] * d];
        with_threads(n_threads, || {
            check_finite(vals, d, "descriptors")?;
            gmm::suff_stats(vals, d, &g.prepare())
        })
    })?;
    Ok(stats_out(py, st, d))
}

/// Statistics of hard labels (int64, -1 = none): (nk, s1, s2, n_samples).
#[pyfunction]
#[pyo3(signature = (x, labels, n_components, *, n_threads=None))]
pub fn gmm_stats_from_labels<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    labels: PyReadonlyArray1<'py, i64>,
    n_components: usize,
    n_threads: Option<usize>,
) -> PyResult<StatsOut<'py>> {
    let l = vec1(&labels);
    macro_rules! go {
        ($a:expr) => {{
            let d = $a.shape()[1];
            let s = rows(&$a);
            (py.detach(|| with_threads(n_threads, || gmm::stats_from_labels(&s, d, &l, n_components)))?, d)
        }};
    }
    let (st, d) = match Floats::extract(x, "X")? {
        Floats::F32(a) => go!(a),
        Floats::F64(a) => go!(a),
    };
    Ok(stats_out(py, st, d))
}

/// Statistics of dense responsibilities resp (n, K) float64: (nk, s1, s2, 0.0, n_samples).
#[pyfunction]
#[pyo3(signature = (x, resp, *, n_threads=None))]
pub fn gmm_stats_from_resp<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    resp: PyReadonlyArray2<'py, f64>,
    n_threads: Option<usize>,
) -> PyResult<StatsOut<'py>> {
    let k = resp.shape()[1];
    let r = rows(&resp);
    macro_rules! go {
        ($a:expr) => {{
            let d = $a.shape()[1];
            let s = rows(&$a);
            (py.detach(|| with_threads(n_threads, || gmm::stats_from_resp(&s, d, &r, k)))?, d)
        }};
    }
    let (st, d) = match Floats::extract(x, "X")? {
        Floats::F32(a) => go!(a),
        Floats::F64(a) => go!(a),
    };
    Ok(stats_out(py, st, d))
}

/// Mixture parameters from summed statistics (the M-step): weights
/// "sum" (normalised, the M-step) or "samples" (divided by n_samples, the
/// initialisation). Returns (weights, means, covariances).
#[pyfunction]
#[pyo3(signature = (nk, s1, s2, n_samples, *, reg_covar=1e-6, eps_nk=0.0, weights="sum"))]
#[allow(clippy::too_many_arguments)]
pub fn gmm_params_from_stats<'py>(
    py: Python<'py>,
    nk: PyReadonlyArray1<'py, f64>,
    s1: PyReadonlyArray2<'py, f64>,
    s2: PyReadonlyArray2<'py, f64>,
    n_samples: usize,
    reg_covar: f64,
    eps_nk: f64,
    weights: &str,
) -> PyResult<Params<'py>> {
    let norm = match weights {
        "sum" => WeightNorm::Sum,
        "samples" => WeightNorm::Samples,
        other => return Err(BovwError::param("weights", format!("expected 'sum' or 'samples', got {other:?}")).into()),
    };
    let (k, d) = (s1.shape()[0], s1.shape()[1]);
    if s2.shape() != [k, d] || nk.len() != k {
        return Err(BovwError::Shape {
            what: "stats".into(),
            expected: format!("nk ({k},), s1 and s2 ({k}, {d})"),
            got: format!("nk ({},), s2 {:?}", nk.len(), s2.shape()),
        }
        .into());
    }
    let st = SuffStats { nk: vec1(&nk), s1: rows(&s1).into_owned(), s2: rows(&s2).into_owned(), log_likelihood: 0.0, n_samples };
    let g = gmm::params_from_stats(&st, d, reg_covar, eps_nk, norm)?;
    Ok(params_out(py, g))
}

/// log p(x) of each row (float64) and, with resp=True, the posteriors (n, K) float64.
#[pyfunction]
#[pyo3(signature = (x, weights, means, covariances, *, resp=false, n_threads=None))]
pub fn gmm_log_prob<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    weights: PyReadonlyArray1<'py, f64>,
    means: PyReadonlyArray2<'py, f64>,
    covariances: PyReadonlyArray2<'py, f64>,
    resp: bool,
    n_threads: Option<usize>,
) -> PyResult<(Bound<'py, PyArray1<f64>>, Option<Bound<'py, PyArray2<f64>>>)> {
    let g = mixture(&weights, &means, &covariances)?;
    let (d, k) = (g.n_features, g.n_components);
    macro_rules! go {
        ($a:expr) => {{
            check_width($a.shape()[1], d)?;
            let s = rows(&$a);
            py.detach(|| {
                with_threads(n_threads, || {
                    check_finite(&s, d, "X")?;
                    gmm::log_prob_resp(&s, d, &g.prepare(), resp)
                })
            })?
        }};
    }
    let (lp, r) = match Floats::extract(x, "X")? {
        Floats::F32(a) => go!(a),
        Floats::F64(a) => go!(a),
    };
    Ok((lp.into_pyarray(py), r.map(|r| to_2d(py, r, k))))
}

/// Most probable component of each row (int64).
#[pyfunction]
#[pyo3(signature = (x, weights, means, covariances, *, n_threads=None))]
pub fn gmm_predict<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    weights: PyReadonlyArray1<'py, f64>,
    means: PyReadonlyArray2<'py, f64>,
    covariances: PyReadonlyArray2<'py, f64>,
    n_threads: Option<usize>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let g = mixture(&weights, &means, &covariances)?;
    let d = g.n_features;
    macro_rules! go {
        ($a:expr) => {{
            check_width($a.shape()[1], d)?;
            let s = rows(&$a);
            py.detach(|| {
                with_threads(n_threads, || {
                    check_finite(&s, d, "X")?;
                    gmm::predict(&s, d, &g.prepare())
                })
            })?
        }};
    }
    let l = match Floats::extract(x, "X")? {
        Floats::F32(a) => go!(a),
        Floats::F64(a) => go!(a),
    };
    Ok(l.into_iter().map(|v| v as i64).collect::<Vec<i64>>().into_pyarray(py))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(gmm_fit_em, m)?)?;
    m.add_function(wrap_pyfunction!(gmm_suff_stats, m)?)?;
    m.add_function(wrap_pyfunction!(gmm_suff_stats_arrow, m)?)?;
    m.add_function(wrap_pyfunction!(gmm_stats_from_labels, m)?)?;
    m.add_function(wrap_pyfunction!(gmm_stats_from_resp, m)?)?;
    m.add_function(wrap_pyfunction!(gmm_params_from_stats, m)?)?;
    m.add_function(wrap_pyfunction!(gmm_log_prob, m)?)?;
    m.add_function(wrap_pyfunction!(gmm_predict, m)?)?;
    Ok(())
}
