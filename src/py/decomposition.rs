//! Bindings for the decomposition stage (`crate::decomposition::pca`).

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::decomposition::pca::{
    fit, fit_partial_sums, partial_sums, transform, NComponents, PartialSums, PcaFit, RandomizedOptions, Sample, Solver,
};
use crate::error::BovwError;
use crate::features::with_threads;
use crate::py::args::{self, Int, INT_MAX};

fn n_components(kind: &str, value: f64) -> Result<NComponents, BovwError> {
    Ok(match kind {
        "all" => NComponents::All,
        "count" => {
            if !(value >= 0.0 && value <= INT_MAX as f64 && value.fract() == 0.0) {
                return Err(BovwError::param("n_components", format!("must be an integer between 0 and {INT_MAX}, got {value}")));
            }
            NComponents::Count(value as usize)
        }
        "fraction" => NComponents::Fraction(args::float_in("n_components", value, 0.0, true, 1.0)?),
        other => return Err(BovwError::param("n_components", format!("unknown kind {other:?}"))),
    })
}

/// Largest `n_iter` (power iterations of the randomized solver; scikit-learn
/// uses 4 to 7).
const MAX_POWER_ITERATIONS: i64 = 1000;

fn fit_to_dict<'py>(py: Python<'py>, f: PcaFit) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let k = f.n_components;
    let nf = f.n_features;
    d.set_item("mean", f.mean.into_pyarray(py))?;
    d.set_item(
        "components",
        Array2::from_shape_vec((k, nf), f.components).expect("k * d").into_pyarray(py),
    )?;
    d.set_item("explained_variance", f.explained_variance.into_pyarray(py))?;
    d.set_item("explained_variance_ratio", f.explained_variance_ratio.into_pyarray(py))?;
    d.set_item("singular_values", f.singular_values.into_pyarray(py))?;
    d.set_item("noise_variance", f.noise_variance)?;
    d.set_item("total_variance", f.total_variance)?;
    d.set_item("n_components", k)?;
    d.set_item("n_samples", f.n_samples)?;
    d.set_item("n_features", nf)?;
    d.set_item("solver", f.solver.name())?;
    Ok(d)
}

fn slice2<'a, T: numpy::Element>(a: &'a PyReadonlyArray2<'_, T>) -> Result<&'a [T], BovwError> {
    crate::py::arrays::c_slice(a, "X")
}

/// Fit PCA on X (n, d) float32 or float64 (C-contiguous). Returns a dict of
/// fitted arrays (float64).
#[pyfunction]
#[pyo3(signature = (x, kind="all", value=0.0, svd_solver="auto", n_oversamples=Int::Fits(10), n_iter=None, seed=Int::Fits(0), n_threads=None))]
#[pyo3(text_signature = "(x, kind='all', value=0.0, svd_solver='auto', n_oversamples=10, n_iter=None, seed=0, n_threads=None)")]
#[allow(clippy::too_many_arguments)]
pub fn pca_fit<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    kind: &str,
    value: f64,
    svd_solver: &str,
    n_oversamples: Int,
    n_iter: Option<Int>,
    seed: Int,
    n_threads: Option<Int>,
) -> PyResult<Bound<'py, PyDict>> {
    let n_threads = args::threads(n_threads)?;
    let n_oversamples = n_oversamples.index("n_oversamples", 0, INT_MAX)?;
    let n_iter = n_iter.map(|v| v.index("n_iter", 0, MAX_POWER_ITERATIONS)).transpose()?;
    let seed = seed.seed("seed")?;
    let k = n_components(kind, value)?;
    let solver = Solver::parse(svd_solver)?;
    let opts = RandomizedOptions { n_oversamples, n_iter, seed };
    fn run<T: Sample + numpy::Element>(
        py: Python<'_>,
        a: PyReadonlyArray2<'_, T>,
        k: NComponents,
        solver: Solver,
        opts: RandomizedOptions,
        n_threads: Option<usize>,
    ) -> Result<PcaFit, BovwError> {
        let d = a.shape()[1];
        let s = slice2(&a)?;
        py.detach(|| with_threads(n_threads, || fit(s, d, k, solver, opts)))
    }
    let f = if let Ok(a) = x.extract::<PyReadonlyArray2<'py, f64>>() {
        run(py, a, k, solver, opts, n_threads)?
    } else if let Ok(a) = x.extract::<PyReadonlyArray2<'py, f32>>() {
        run(py, a, k, solver, opts, n_threads)?
    } else {
        return Err(BovwError::Dtype { what: "X".into(), expected: "2-D float32 or float64".into(), got: x.get_type().name()?.to_string() }.into());
    };
    fit_to_dict(py, f)
}

/// Per-batch sufficient statistics of X (n, d) float32/float64:
/// (count, sum (d,) float64, X^T X (d, d) float64).
#[pyfunction]
#[pyo3(signature = (x, n_threads=None))]
pub fn pca_partial_sums<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    n_threads: Option<Int>,
) -> PyResult<(u64, Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let n_threads = args::threads(n_threads)?;
    fn run<T: Sample + numpy::Element>(py: Python<'_>, a: PyReadonlyArray2<'_, T>, n_threads: Option<usize>) -> Result<PartialSums, BovwError> {
        let d = a.shape()[1];
        let s = slice2(&a)?;
        py.detach(|| with_threads(n_threads, || partial_sums(s, d)))
    }
    let ps = if let Ok(a) = x.extract::<PyReadonlyArray2<'py, f64>>() {
        run(py, a, n_threads)?
    } else if let Ok(a) = x.extract::<PyReadonlyArray2<'py, f32>>() {
        run(py, a, n_threads)?
    } else {
        return Err(BovwError::Dtype { what: "X".into(), expected: "2-D float32 or float64".into(), got: x.get_type().name()?.to_string() }.into());
    };
    let d = ps.n_features;
    Ok((
        ps.count,
        ps.sum.into_pyarray(py).into_any(),
        Array2::from_shape_vec((d, d), ps.gram).expect("d * d").into_pyarray(py).into_any(),
    ))
}

/// Fit from reduced partial sums (count, sum (d,), gram (d, d)) float64.
#[pyfunction]
#[pyo3(signature = (count, sum, gram, kind="all", value=0.0))]
pub fn pca_fit_partial_sums<'py>(
    py: Python<'py>,
    count: Int,
    sum: PyReadonlyArray1<'py, f64>,
    gram: PyReadonlyArray2<'py, f64>,
    kind: &str,
    value: f64,
) -> PyResult<Bound<'py, PyDict>> {
    let count = count.range("count", 0, i64::MAX)? as u64;
    let k = n_components(kind, value)?;
    let d = sum.len();
    if gram.shape() != [d, d] {
        return Err(BovwError::Shape { what: "gram".into(), expected: format!("({d}, {d})"), got: format!("{:?}", gram.shape()) }.into());
    }
    let ps = PartialSums {
        count,
        sum: sum.as_slice().map_err(|_| BovwError::input("sum must be contiguous"))?.to_vec(),
        gram: crate::py::arrays::c_order(&gram).into_owned(),
        n_features: d,
    };
    let f = py.detach(|| fit_partial_sums(&ps, k))?;
    fit_to_dict(py, f)
}

/// (X - center) @ components.T [/ scale], X (n, d) float32/float64; output in X's dtype.
#[pyfunction]
#[pyo3(signature = (x, components, center=None, scale=None, n_threads=None))]
pub fn pca_transform<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    components: PyReadonlyArray2<'py, f64>,
    center: Option<PyReadonlyArray1<'py, f64>>,
    scale: Option<PyReadonlyArray1<'py, f64>>,
    n_threads: Option<Int>,
) -> PyResult<Bound<'py, PyAny>> {
    let n_threads = args::threads(n_threads)?;
    let (k, d) = (components.shape()[0], components.shape()[1]);
    let c = crate::py::arrays::c_slice(&components, "components")?;
    let center = center.as_ref().map(|a| a.as_slice().map_err(|_| BovwError::input("mean must be contiguous"))).transpose()?;
    let scale = scale.as_ref().map(|a| a.as_slice().map_err(|_| BovwError::input("scale must be contiguous"))).transpose()?;
    #[allow(clippy::too_many_arguments)]
    fn run<'py, T: Sample + numpy::Element>(
        py: Python<'py>,
        a: PyReadonlyArray2<'py, T>,
        d: usize,
        k: usize,
        c: &[f64],
        center: Option<&[f64]>,
        scale: Option<&[f64]>,
        n_threads: Option<usize>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if a.shape()[1] != d {
            return Err(BovwError::Shape { what: "X".into(), expected: format!("(n_samples, {d})"), got: format!("{:?}", a.shape()) }.into());
        }
        let n = a.shape()[0];
        let s = slice2(&a)?;
        let out = py.detach(|| with_threads(n_threads, || transform(s, d, c, center, scale)))?;
        Ok(Array2::from_shape_vec((n, k), out).expect("n * k").into_pyarray(py).into_any())
    }
    if let Ok(a) = x.extract::<PyReadonlyArray2<'py, f64>>() {
        run(py, a, d, k, c, center, scale, n_threads)
    } else if let Ok(a) = x.extract::<PyReadonlyArray2<'py, f32>>() {
        run(py, a, d, k, c, center, scale, n_threads)
    } else {
        Err(BovwError::Dtype { what: "X".into(), expected: "2-D float32 or float64".into(), got: x.get_type().name()?.to_string() }.into())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(pca_fit, m)?)?;
    m.add_function(wrap_pyfunction!(pca_partial_sums, m)?)?;
    m.add_function(wrap_pyfunction!(pca_fit_partial_sums, m)?)?;
    m.add_function(wrap_pyfunction!(pca_transform, m)?)?;
    Ok(())
}
