//! Named weight tensors, and the arithmetic done on them once, when a
//! network is built: BatchNorm folded into the preceding convolution.
//!
//! A convolution $y = W * x$ followed by inference-mode BatchNorm
//! $z = \gamma (y - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta$ is the single
//! convolution with weights $W' = s W$ and bias $b' = \beta - s \mu$ (plus
//! $s b$ when the convolution had a bias $b$), $s = \gamma / \sqrt{\sigma^2 + \epsilon}$
//! per output channel (Ioffe and Szegedy, ICML 2015; the folding every
//! inference runtime does). It is computed in f64 and rounded once to f32.

use std::collections::HashMap;

use crate::error::{BovwError, Result};

/// One weight tensor: its shape and its values in row-major (C) order.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl WeightTensor {
    /// A tensor from its shape and row-major values.
    ///
    /// # Errors
    /// [`BovwError::Shape`] when `data.len()` is not the product of `shape`.
    pub fn new(name: &str, shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(BovwError::Shape {
                what: name.to_string(),
                expected: format!("{n} values for shape {shape:?}"),
                got: format!("{} values", data.len()),
            });
        }
        Ok(WeightTensor { shape, data })
    }
}

/// Weight tensors by name (lukemelas/EfficientNet-PyTorch's or an ONNX
/// graph's initializer names).
#[derive(Debug, Clone, Default)]
pub struct TensorMap {
    tensors: HashMap<String, WeightTensor>,
}

impl TensorMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }
    /// Add (or replace) a tensor.
    pub fn insert(&mut self, name: impl Into<String>, t: WeightTensor) {
        self.tensors.insert(name.into(), t);
    }
    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }
    /// True when there is no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The tensor `name`.
    ///
    /// # Errors
    /// [`BovwError::InvalidParameter`] (parameter `weights`) when it is missing.
    pub fn get(&self, name: &str) -> Result<&WeightTensor> {
        self.tensors.get(name).ok_or_else(|| BovwError::param("weights", format!("no tensor {name:?} in the weights")))
    }

    /// The tensor `name`, which must have shape `shape` (`None` entries match any size).
    ///
    /// # Errors
    /// As [`TensorMap::get`], and [`BovwError::Shape`] for another shape.
    pub fn get_shaped(&self, name: &str, shape: &[Option<usize>]) -> Result<&WeightTensor> {
        let t = self.get(name)?;
        let ok = t.shape.len() == shape.len() && t.shape.iter().zip(shape).all(|(a, b)| b.map_or(true, |b| *a == b));
        if !ok {
            let want: Vec<String> = shape.iter().map(|d| d.map_or("*".to_string(), |d| d.to_string())).collect();
            return Err(BovwError::Shape {
                what: format!("weights[{name:?}]"),
                expected: format!("({})", want.join(", ")),
                got: format!("{:?}", t.shape),
            });
        }
        Ok(t)
    }
}

/// Inference-mode BatchNorm parameters of `c` channels.
#[derive(Debug, Clone)]
pub struct BatchNorm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub eps: f64,
}

impl BatchNorm {
    /// Read `{prefix}.weight`, `.bias`, `.running_mean`, `.running_var`
    /// (PyTorch's names), each of `c` values.
    ///
    /// # Errors
    /// A missing tensor or one of another size.
    pub fn from_torch(map: &TensorMap, prefix: &str, c: usize, eps: f64) -> Result<Self> {
        let get = |s: &str| map.get_shaped(&format!("{prefix}.{s}"), &[Some(c)]).map(|t| t.data.clone());
        Ok(BatchNorm { gamma: get("weight")?, beta: get("bias")?, mean: get("running_mean")?, var: get("running_var")?, eps })
    }

    /// Per-channel scale $s$ and shift $\beta - s \mu$, in f64.
    pub fn scale_shift(&self) -> (Vec<f64>, Vec<f64>) {
        let s: Vec<f64> =
            self.gamma.iter().zip(&self.var).map(|(&g, &v)| g as f64 / (v as f64 + self.eps).sqrt()).collect();
        let t = self.beta.iter().zip(&self.mean).zip(&s).map(|((&b, &m), &s)| b as f64 - s * m as f64).collect();
        (s, t)
    }
}

/// Fold `bn` into convolution weights in PyTorch/ONNX layout
/// `(c_out, c_in / groups, kh, kw)` with an optional bias: returns the new
/// weights (same layout) and biases.
///
/// # Errors
/// [`BovwError::Shape`] when the BatchNorm has not `c_out` channels.
pub fn fold_batchnorm(weight: &WeightTensor, bias: Option<&[f32]>, bn: &BatchNorm) -> Result<(Vec<f32>, Vec<f32>)> {
    let c_out = weight.shape[0];
    if bn.gamma.len() != c_out {
        return Err(BovwError::Shape {
            what: "batch norm".into(),
            expected: format!("{c_out} channels like the convolution"),
            got: format!("{}", bn.gamma.len()),
        });
    }
    let per = weight.data.len() / c_out.max(1);
    let (s, t) = bn.scale_shift();
    let w = weight.data.iter().enumerate().map(|(i, &v)| (v as f64 * s[i / per]) as f32).collect();
    let b = (0..c_out).map(|o| (t[o] + bias.map_or(0.0, |b| b[o] as f64 * s[o])) as f32).collect();
    Ok((w, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_matches_conv_then_batchnorm() {
        // a 1x1 convolution of 2 -> 2 channels on one pixel
        let w = WeightTensor::new("w", vec![2, 2, 1, 1], vec![1.0, 2.0, -3.0, 0.5]).unwrap();
        let bn = BatchNorm { gamma: vec![2.0, 0.5], beta: vec![0.1, -0.2], mean: vec![0.3, 1.0], var: vec![4.0, 0.25], eps: 1e-3 };
        let (fw, fb) = fold_batchnorm(&w, Some(&[0.5, -1.0]), &bn).unwrap();
        let x = [0.7f64, -1.3];
        for o in 0..2 {
            let y = w.data[2 * o] as f64 * x[0] + w.data[2 * o + 1] as f64 * x[1] + [0.5, -1.0][o];
            let z = bn.gamma[o] as f64 * (y - bn.mean[o] as f64) / (bn.var[o] as f64 + 1e-3).sqrt() + bn.beta[o] as f64;
            let folded = fw[2 * o] as f64 * x[0] + fw[2 * o + 1] as f64 * x[1] + fb[o] as f64;
            assert!((z - folded).abs() < 1e-5, "{z} vs {folded}");
        }
    }

    #[test]
    fn shape_errors_name_the_tensor() {
        let mut m = TensorMap::new();
        m.insert("a", WeightTensor::new("a", vec![3], vec![0.0; 3]).unwrap());
        let e = m.get_shaped("a", &[Some(4)]).unwrap_err().to_string();
        assert!(e.contains("\"a\"") && e.contains("(4)"), "{e}");
        assert!(m.get("b").unwrap_err().to_string().contains("no tensor \"b\""));
        assert!(WeightTensor::new("c", vec![2, 2], vec![0.0; 3]).is_err());
    }
}
