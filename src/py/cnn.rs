//! Bindings for `crate::cnn`: the `CnnEmbedding` extractor class, built
//! from named weight tensors (NumPy arrays) and either a built-in
//! architecture or a list of layer descriptions (what `bovw.cnn` makes of
//! an ONNX file).

use std::collections::HashMap;
use std::sync::Arc;

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2, PyArray3, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::cnn::efficientnet::efficientnet_lite;
use crate::cnn::graph::{Geometry, Graph, GraphBuilder, Padding, ValueId};
use crate::cnn::layers::Activation;
use crate::cnn::weights::{TensorMap, WeightTensor};
use crate::cnn::{CnnEmbedding, CnnModel, Preprocess};
use crate::error::BovwError;
use crate::features::with_threads;
use crate::image::{ColorNeeds, DecodedImage};
use crate::py::features::{decoded_from_numpy, extractor_methods};

/// A CNN (EfficientNet-Lite or a graph from ONNX) whose pooled features are
/// one global descriptor per image. See `bovw.CNNEmbedding` for the documentation.
#[pyclass(name = "CnnEmbedding", module = "bovw._bovw", frozen)]
pub struct PyCnnEmbedding(pub CnnEmbedding);

/// Copy a dict of name -> float32 array into a [`TensorMap`].
fn tensor_map(tensors: &Bound<'_, PyDict>) -> PyResult<TensorMap> {
    let mut map = TensorMap::new();
    for (k, v) in tensors.iter() {
        let name: String = k.extract()?;
        let arr: PyReadonlyArrayDyn<'_, f32> = v.extract().map_err(|_| {
            BovwError::Dtype { what: format!("tensors[{name:?}]"), expected: "a float32 array".into(), got: v.get_type().to_string() }
        })?;
        let shape = arr.shape().to_vec();
        let data = crate::py::arrays::c_order(&arr).into_owned();
        map.insert(name.clone(), WeightTensor::new(&name, shape, data)?);
    }
    Ok(map)
}

fn get_opt<'py, T: FromPyObjectOwned<'py>>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<Option<T>> {
    match d.get_item(key)? {
        Some(v) if !v.is_none() => {
            let r: PyResult<T> = v.extract().map_err(Into::into);
            Ok(Some(r.map_err(|e| BovwError::param("layers", format!("key {key:?}: {e}")))?))
        }
        _ => Ok(None),
    }
}

fn get_req<'py, T: FromPyObjectOwned<'py>>(d: &Bound<'py, PyDict>, key: &str, layer: &str) -> PyResult<T> {
    get_opt(d, key)?.ok_or_else(|| BovwError::param("layers", format!("layer {layer:?} has no {key:?}")).into())
}

/// The activation named `name` with its parameters.
fn activation(name: Option<String>, params: &[f64], layer: &str) -> Result<Activation, BovwError> {
    let p = |i: usize, default: f64| params.get(i).copied().unwrap_or(default) as f32;
    Ok(match name.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("none") | Some("identity") => Activation::None,
        Some("relu") => Activation::Relu,
        Some("relu6") => Activation::RELU6,
        Some("clip") => Activation::Clip { lo: p(0, f64::NEG_INFINITY), hi: p(1, f64::INFINITY) },
        Some("sigmoid") => Activation::Sigmoid,
        Some("hard_sigmoid") => Activation::HardSigmoid { alpha: p(0, 0.2), beta: p(1, 0.5) },
        Some("hard_swish") => Activation::HardSwish,
        Some("swish") | Some("silu") => Activation::Swish,
        Some(other) => return Err(BovwError::param("layers", format!("layer {layer:?}: unknown activation {other:?}"))),
    })
}

fn geometry(d: &Bound<'_, PyDict>, layer: &str, kernel: [usize; 2]) -> PyResult<Geometry> {
    let strides: Vec<usize> = get_opt(d, "strides")?.unwrap_or_else(|| vec![1, 1]);
    let dilations: Vec<usize> = get_opt(d, "dilations")?.unwrap_or_else(|| vec![1, 1]);
    let auto_pad: Option<String> = get_opt(d, "auto_pad")?;
    let pads: Vec<usize> = get_opt(d, "pads")?.unwrap_or_else(|| vec![0, 0, 0, 0]);
    if strides.len() != 2 || dilations.len() != 2 || pads.len() != 4 {
        return Err(BovwError::param("layers", format!("layer {layer:?}: strides and dilations need 2 values, pads 4")).into());
    }
    let padding = match auto_pad.as_deref() {
        Some("SAME_UPPER") => Padding::SameUpper,
        Some("SAME_LOWER") => Padding::SameLower,
        None | Some("NOTSET") | Some("VALID") => {
            let p = if auto_pad.as_deref() == Some("VALID") { [0; 4] } else { [pads[0], pads[1], pads[2], pads[3]] };
            // ONNX order: top, left, bottom, right
            Padding::Explicit { top: p[0], left: p[1], bottom: p[2], right: p[3] }
        }
        Some(other) => return Err(BovwError::param("layers", format!("layer {layer:?}: unknown auto_pad {other:?}")).into()),
    };
    Ok(Geometry {
        kh: kernel[0],
        kw: kernel[1],
        stride_h: strides[0],
        stride_w: strides[1],
        dilation_h: dilations[0],
        dilation_w: dilations[1],
        padding,
    })
}

/// Build a graph from layer descriptions (see `bovw.cnn._onnx_layers`).
fn graph_from_layers(layers: &Bound<'_, PyList>, map: &TensorMap, input: &str, outputs: &[String]) -> PyResult<Graph> {
    let mut b = GraphBuilder::new(3);
    let mut names: HashMap<String, ValueId> = HashMap::new();
    names.insert(input.to_string(), GraphBuilder::INPUT);
    for item in layers.iter() {
        let d = item.cast::<PyDict>().map_err(|_| BovwError::param("layers", "each layer must be a dict"))?;
        let op: String = get_req(d, "op", "?")?;
        let name: String = get_opt(d, "name")?.unwrap_or_else(|| op.clone());
        let ins: Vec<String> = get_req(d, "inputs", &name)?;
        let out: String = get_req(d, "output", &name)?;
        let value = |n: &String| -> PyResult<ValueId> {
            names.get(n).copied().ok_or_else(|| BovwError::param("layers", format!("layer {name:?} reads {n:?}, which no earlier layer writes")).into())
        };
        let xs: Vec<ValueId> = ins.iter().map(value).collect::<PyResult<_>>()?;
        let first = *xs.first().ok_or_else(|| BovwError::param("layers", format!("layer {name:?} has no input")))?;
        let act_name: Option<String> = get_opt(d, "activation")?;
        let act_params: Vec<f64> = get_opt(d, "activation_params")?.unwrap_or_default();
        let act = activation(act_name, &act_params, &name)?;
        let v = match op.as_str() {
            "conv" => {
                let wname: String = get_req(d, "weight", &name)?;
                let w = map.get(&wname)?;
                if w.shape.len() != 4 {
                    return Err(BovwError::param("layers", format!("layer {name:?}: weight {wname:?} is not 4-D")).into());
                }
                let bias = match get_opt::<String>(d, "bias")? {
                    Some(bn) => Some(map.get_shaped(&bn, &[Some(w.shape[0])])?.data.as_slice()),
                    None => None,
                };
                let group: usize = get_opt(d, "group")?.unwrap_or(1);
                let geom = geometry(d, &name, [w.shape[2], w.shape[3]])?;
                let residual = match get_opt::<String>(d, "residual")? {
                    Some(r) => Some(value(&r)?),
                    None => None,
                };
                let shape = [w.shape[0], w.shape[1], w.shape[2], w.shape[3]];
                b.conv(&name, first, &w.data, shape, bias, group, geom, act, residual)?
            }
            "dense" => {
                let wname: String = get_req(d, "weight", &name)?;
                let w = map.get_shaped(&wname, &[None, None])?;
                let (k, n) = (w.shape[0], w.shape[1]);
                let bias = match get_opt::<String>(d, "bias")? {
                    Some(bn) => Some(map.get_shaped(&bn, &[Some(n)])?.data.as_slice()),
                    None => None,
                };
                b.dense(&name, first, &w.data, k, n, bias, act)?
            }
            "add" | "mul" => {
                if xs.len() != 2 {
                    return Err(BovwError::param("layers", format!("layer {name:?}: {op} needs 2 inputs")).into());
                }
                if op == "add" {
                    b.add(&name, xs[0], xs[1], act)?
                } else {
                    b.mul(&name, xs[0], xs[1])?
                }
            }
            "global_avg_pool" => b.global_avg_pool(&name, first)?,
            "max_pool" | "avg_pool" => {
                let kernel: Vec<usize> = get_req(d, "kernel_shape", &name)?;
                if kernel.len() != 2 {
                    return Err(BovwError::param("layers", format!("layer {name:?}: kernel_shape needs 2 values")).into());
                }
                let geom = geometry(d, &name, [kernel[0], kernel[1]])?;
                let cip: bool = get_opt(d, "count_include_pad")?.unwrap_or(false);
                b.pool(&name, first, geom, op == "max_pool", cip)?
            }
            "activation" => b.activation(&name, first, act)?,
            "softmax" => b.softmax(&name, first)?,
            "concat" => b.concat(&name, &xs)?,
            "flatten" => b.flatten(&name, first)?,
            other => return Err(BovwError::param("layers", format!("layer {name:?}: unsupported op {other:?}")).into()),
        };
        names.insert(out, v);
    }
    let outs = outputs
        .iter()
        .map(|o| names.get(o).copied().ok_or_else(|| BovwError::param("outputs", format!("no layer writes {o:?}")).into()))
        .collect::<PyResult<Vec<_>>>()?;
    Ok(b.finish(outs)?)
}

/// (features (n, n_features), logits (n, n_logits) or None).
type FeaturesAndLogits<'py> = (Bound<'py, PyArray2<f32>>, Option<Bound<'py, PyArray2<f32>>>);

#[pymethods]
impl PyCnnEmbedding {
    #[new]
    #[pyo3(signature = (tensors, *, architecture="efficientnet_lite", layers=None, input_name="input", outputs=None, input_size=224, crop_fraction=0.875, mean=None, std=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        tensors: &Bound<'_, PyDict>,
        architecture: &str,
        layers: Option<&Bound<'_, PyList>>,
        input_name: &str,
        outputs: Option<Vec<String>>,
        input_size: usize,
        crop_fraction: f64,
        mean: Option<[f64; 3]>,
        std: Option<[f64; 3]>,
    ) -> PyResult<Self> {
        let map = tensor_map(tensors)?;
        let graph = match (architecture, layers) {
            ("efficientnet_lite", None) => py.detach(|| efficientnet_lite(&map))?,
            ("layers", Some(l)) => {
                let outputs = outputs.ok_or_else(|| BovwError::param("outputs", "a layer list needs the names of its outputs"))?;
                graph_from_layers(l, &map, input_name, &outputs)?
            }
            (a, _) => {
                return Err(BovwError::param(
                    "architecture",
                    format!("expected \"efficientnet_lite\" (with no layers) or \"layers\" (with a layer list), got {a:?}"),
                )
                .into())
            }
        };
        drop(map);
        let pre = Preprocess { input_size, crop_fraction, mean: mean.unwrap_or([127.5; 3]), std: std.unwrap_or([127.5; 3]) };
        let model = py.detach(|| CnnModel::new(graph, pre))?;
        Ok(PyCnnEmbedding(CnnEmbedding::new(Arc::new(model))))
    }

    /// Width of the feature vector (the descriptor).
    #[getter]
    fn n_features(&self) -> usize {
        self.0.model().n_features()
    }
    /// Number of logits (0 when the network has no classifier output).
    #[getter]
    fn n_logits(&self) -> usize {
        self.0.model().n_logits()
    }
    /// Side of the square network input, pixels.
    #[getter]
    fn input_size(&self) -> usize {
        self.0.model().preprocess().input_size
    }
    /// Number of layers (graph nodes).
    #[getter]
    fn n_layers(&self) -> usize {
        self.0.model().graph().nodes().len()
    }

    /// Features (n, n_features) float32 and, when `logits`, logits
    /// (n, n_logits) float32 (else None) of a list of NumPy images ((H, W)
    /// gray or (H, W, 3) RGB uint8), in parallel over images.
    #[pyo3(signature = (images, *, logits=false, n_threads=None))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        images: Vec<Bound<'py, PyAny>>,
        logits: bool,
        n_threads: Option<usize>,
    ) -> PyResult<FeaturesAndLogits<'py>> {
        let decoded: Vec<DecodedImage> = images
            .iter()
            .enumerate()
            .map(|(i, im)| {
                decoded_from_numpy(im, ColorNeeds::RGB).map_err(|e| {
                    pyo3::exceptions::PyValueError::new_err(format!("images[{i}]: {}", e.value(py)))
                })
            })
            .collect::<PyResult<_>>()?;
        let model = self.0.model();
        let (nf, nl) = (model.n_features(), model.n_logits());
        let with_logits = logits && nl > 0;
        let results = py.detach(|| {
            with_threads(n_threads, || {
                let views: Vec<_> = decoded.iter().map(|d| d.rgb().expect("RGB was asked for")).collect();
                model.forward_batch(&views, with_logits)
            })
        });
        let n = results.len();
        let mut feats = Vec::with_capacity(n * nf);
        let mut logs = Vec::with_capacity(if with_logits { n * nl } else { 0 });
        for (i, r) in results.into_iter().enumerate() {
            let (f, l) = r.map_err(|e| pyo3::exceptions::PyValueError::new_err(format!("images[{i}]: {e}")))?;
            feats.extend_from_slice(&f);
            if let Some(l) = l {
                logs.extend_from_slice(&l);
            }
        }
        let feats = Array2::from_shape_vec((n, nf), feats).expect("n * n_features").into_pyarray(py);
        let logs = with_logits.then(|| Array2::from_shape_vec((n, nl), logs).expect("n * n_logits").into_pyarray(py));
        Ok((feats, logs))
    }

    /// The network input of one image: (input_size, input_size, 3) float32
    /// after resize, centre crop and normalisation.
    fn preprocess<'py>(&self, py: Python<'py>, image: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray3<f32>>> {
        let d = decoded_from_numpy(image, ColorNeeds::RGB)?;
        let t = self.0.model().preprocess().apply(d.rgb().expect("RGB was asked for"));
        Ok(numpy::ndarray::Array3::from_shape_vec((t.h, t.w, t.c), t.data.to_vec()).expect("h * w * c").into_pyarray(py))
    }
}

extractor_methods!(PyCnnEmbedding);

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyCnnEmbedding>()
}
