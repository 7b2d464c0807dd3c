//! A small inference graph over NHWC float32 images: the network that
//! [`crate::cnn::efficientnet`] builds from a PyTorch state_dict and that
//! `bovw.cnn` builds from an ONNX file.
//!
//! A [`Graph`] is a list of [`Node`]s in topological order, each reading
//! earlier values and writing one new value (a [`Tensor`] of `h x w x c`).
//! Value 0 is the preprocessed input image. Operations ([`Op`]):
//! convolutions (dense, depthwise or grouped, any kernel, stride, dilation,
//! explicit or TensorFlow "SAME" padding, with a fused activation and an
//! optional fused residual), element-wise `Add` / `Mul` (same shape, or a
//! `1 x 1 x c` operand broadcast over the pixels, as squeeze-and-excitation
//! needs), global average pooling, max / average pooling, fully connected
//! layers, activations, softmax, channel concatenation and flattening (in
//! ONNX's `(c, h, w)` order).
//!
//! [`Graph::run`] evaluates one image, freeing each value after its last
//! reader; buffers are reused through a per-thread pool, so a worker that
//! runs many images allocates once. [`Graph::run_many`] evaluates a group
//! of same-size images on the calling thread: each alone up to the first
//! layer whose input map has at most [`GROUP_MAX_PIXELS`] pixels, then all
//! together, their values stacked in one buffer, so that each 1 x 1
//! convolution (fused expansions and projections included) and fully
//! connected layer is one GEMM over the rows of every image (depthwise
//! filters and pooling run image by image on the stacked buffer; other
//! operations on copies of each image). The values are those of
//! [`Graph::run`]: the GEMM computes each row alone. Without `par` everything runs on the
//! calling thread. With `par` (one image on all the threads of the
//! current rayon pool), each fused inverted-residual block
//! ([`Op::MbConv`]) forks once or twice, with one part per thread so that
//! a fork-join is worth its cost even on 100 x 100 inputs: by ranges of
//! output rows (each part expands the input rows it needs), or, on small
//! images where the rows at the seams would be expanded twice, by ranges
//! of whole weight panels of the middle channels (expansion + depthwise),
//! then by rows of the projection (by its weight panels when it has at
//! most 24 rows, see [`layers::gemm_blocks_par`]). Other convolutions
//! split their rows (dense: ranges of output rows, or blocks of pixels for
//! grouped ones; 1 x 1: rows, or weight panels on small maps; depthwise:
//! output rows). Blocks below about
//! 10^5 multiply-adds stay on the calling thread. No split changes the
//! operations that give a value, so the output is the same bits for any
//! thread count.


use crate::cnn::layers::{self, give_buffer, take_buffer, Activation, Aligned, Depthwise, PackedMatrix, Window, XBlock, NR};
use crate::error::{BovwError, Result};

/// Index of a value of a [`Graph`] (0 is the input).
pub type ValueId = usize;

/// An `h x w x c` image (channels fastest), or a vector when `h == w == 1`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    /// The values, on a 64-byte boundary.
    pub data: Aligned,
}

impl Tensor {
    /// A tensor of the given size and values.
    ///
    /// # Panics
    /// If `data.len() != h * w * c`.
    pub fn new(h: usize, w: usize, c: usize, data: impl Into<Aligned>) -> Self {
        let data = data.into();
        assert_eq!(data.len(), h * w * c, "tensor data must be h * w * c values");
        Tensor { h, w, c, data }
    }
}

/// Zero padding of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// TensorFlow's "SAME" (ONNX `SAME_UPPER`): `ceil(n / stride)` outputs,
    /// the odd padding pixel at the end (bottom / right).
    SameUpper,
    /// ONNX `SAME_LOWER`: the odd pixel at the start.
    SameLower,
    /// Given pixels before and after each axis.
    Explicit { top: usize, left: usize, bottom: usize, right: usize },
}

/// A window's size, stride, dilation and padding (convolutions, pooling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub kh: usize,
    pub kw: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    pub dilation_h: usize,
    pub dilation_w: usize,
    pub padding: Padding,
}

impl Geometry {
    /// A square `k x k` window with the given stride and padding, no dilation.
    pub fn square(k: usize, stride: usize, padding: Padding) -> Self {
        Geometry { kh: k, kw: k, stride_h: stride, stride_w: stride, dilation_h: 1, dilation_w: 1, padding }
    }

    fn check(&self, name: &str) -> Result<()> {
        if self.kh == 0 || self.kw == 0 || self.stride_h == 0 || self.stride_w == 0 || self.dilation_h == 0 || self.dilation_w == 0 {
            return Err(BovwError::param(name, "kernel size, stride and dilation must be positive"));
        }
        Ok(())
    }

    /// Output size and the kernels' [`Window`] for an `h x w` input.
    ///
    /// # Errors
    /// [`BovwError::InvalidInput`] when the (padded) input is smaller than the window.
    pub fn output(&self, h: usize, w: usize, name: &str) -> Result<(usize, usize, Window)> {
        let ekh = (self.kh - 1) * self.dilation_h + 1;
        let ekw = (self.kw - 1) * self.dilation_w + 1;
        let same = |n: usize, s: usize, ek: usize, upper: bool| {
            let out = n.div_ceil(s);
            let total = ((out - 1) * s + ek).saturating_sub(n);
            (out, if upper { total / 2 } else { total - total / 2 })
        };
        let (oh, ow, top, left) = match self.padding {
            Padding::SameUpper | Padding::SameLower => {
                let upper = self.padding == Padding::SameUpper;
                let (oh, top) = same(h, self.stride_h, ekh, upper);
                let (ow, left) = same(w, self.stride_w, ekw, upper);
                (oh, ow, top, left)
            }
            Padding::Explicit { top, left, bottom, right } => {
                let (ph, pw) = (h + top + bottom, w + left + right);
                if ph < ekh || pw < ekw {
                    return Err(BovwError::input(format!(
                        "{name}: input of {h} x {w} pixels (padded {ph} x {pw}) is smaller than the {ekh} x {ekw} window"
                    )));
                }
                ((ph - ekh) / self.stride_h + 1, (pw - ekw) / self.stride_w + 1, top, left)
            }
        };
        let win = Window {
            kh: self.kh,
            kw: self.kw,
            stride_h: self.stride_h,
            stride_w: self.stride_w,
            dilation_h: self.dilation_h,
            dilation_w: self.dilation_w,
            pad_top: top,
            pad_left: left,
        };
        Ok((oh, ow, win))
    }
}

/// A convolution's packed weights.
#[derive(Debug, Clone)]
pub enum ConvKernel {
    /// One group: a `(kh kw c_in) x c_out` matrix, rows in `(ky, kx, c)` order.
    Dense(PackedMatrix),
    /// One filter per channel (`groups == c_in == c_out`).
    Depthwise(Depthwise),
    /// `groups` dense matrices of `(kh kw c_in/groups) x c_out/groups`.
    Grouped(Vec<PackedMatrix>),
}

/// One operation of a [`Graph`].
#[derive(Debug, Clone)]
pub enum Op {
    /// Convolution + bias (+ the second input, the residual) + activation.
    Conv { geom: Geometry, c_in: usize, c_out: usize, kernel: ConvKernel, act: Activation },
    /// `act(a + b)`; `b` may be `1 x 1 x c` (broadcast over pixels).
    Add { act: Activation },
    /// `a * b`; `b` may be `1 x 1 x c` (broadcast over pixels).
    Mul,
    /// Mean over the pixels: `1 x 1 x c`.
    GlobalAvgPool,
    /// Max or average pooling.
    Pool { geom: Geometry, max: bool, count_include_pad: bool },
    /// Fully connected layer on the flattened input: `1 x 1 x n`.
    Dense { mat: PackedMatrix, act: Activation },
    /// An activation on its own.
    Act(Activation),
    /// Softmax over all values.
    Softmax,
    /// Channel concatenation of inputs of the same `h x w`.
    Concat,
    /// `1 x 1 x (c h w)`, values in `(c, h, w)` order (ONNX's `Flatten` of NCHW).
    Flatten,
    /// An inverted-residual block fused by [`GraphBuilder::finish`]:
    /// optional 1 x 1 expansion, depthwise convolution, 1 x 1 projection
    /// (+ the second input, the residual), computed in strips of rows so
    /// that the wide intermediate images stay in cache. Same values, bit
    /// for bit, as the three convolutions one after the other.
    MbConv(Box<MbConv>),
}

/// The three convolutions of an [`Op::MbConv`].
#[derive(Debug, Clone)]
pub struct MbConv {
    /// 1 x 1 expansion (`c_in x c_mid`) and its activation, if any.
    pub expand: Option<(PackedMatrix, Activation)>,
    pub depthwise: Depthwise,
    pub dw_geom: Geometry,
    pub dw_act: Activation,
    /// 1 x 1 projection (`c_mid x c_out`) and its activation.
    pub project: PackedMatrix,
    pub project_act: Activation,
    /// Names of the fused layers, for errors.
    pub names: [String; 3],
}

/// One node: an operation, its inputs and its output value.
#[derive(Debug, Clone)]
pub struct Node {
    /// Name for error messages (the layer's or the ONNX node's).
    pub name: String,
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub output: ValueId,
}

/// Builds a [`Graph`] node by node, checking channel counts as it goes.
#[derive(Debug)]
pub struct GraphBuilder {
    nodes: Vec<Node>,
    /// Channels of each value when known before the image size is (`None`
    /// after a flatten of an image of unknown size).
    channels: Vec<Option<usize>>,
    /// Whether each value is known to be `1 x 1` (pooled).
    pooled: Vec<bool>,
}

impl GraphBuilder {
    /// A graph whose input (value 0) has `input_channels` channels.
    pub fn new(input_channels: usize) -> Self {
        GraphBuilder { nodes: Vec::new(), channels: vec![Some(input_channels)], pooled: vec![false] }
    }

    /// The input value.
    pub const INPUT: ValueId = 0;

    /// Channels of a value, when known.
    pub fn channels(&self, v: ValueId) -> Option<usize> {
        self.channels.get(v).copied().flatten()
    }

    fn check_value(&self, name: &str, v: ValueId) -> Result<()> {
        if v >= self.channels.len() {
            return Err(BovwError::param(name, format!("input value {v} does not exist yet")));
        }
        Ok(())
    }

    fn push(&mut self, name: &str, op: Op, inputs: Vec<ValueId>, channels: Option<usize>, pooled: bool) -> Result<ValueId> {
        for &v in &inputs {
            self.check_value(name, v)?;
        }
        let output = self.channels.len();
        self.channels.push(channels);
        self.pooled.push(pooled);
        self.nodes.push(Node { name: name.to_string(), op, inputs, output });
        Ok(output)
    }

    /// A convolution with weights in PyTorch / ONNX layout
    /// `(c_out, c_in / groups, kh, kw)`, row-major, and `c_out` biases
    /// (zeros when `None`). `residual` (same shape as the output) is added
    /// before the activation.
    ///
    /// # Errors
    /// [`BovwError::InvalidParameter`] (named `name`) when the shapes, the
    /// groups or the geometry are inconsistent with the input's channels.
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        name: &str,
        x: ValueId,
        weight: &[f32],
        shape: [usize; 4],
        bias: Option<&[f32]>,
        groups: usize,
        geom: Geometry,
        act: Activation,
        residual: Option<ValueId>,
    ) -> Result<ValueId> {
        self.check_value(name, x)?;
        geom.check(name)?;
        let [c_out, cg_in, kh, kw] = shape;
        if weight.len() != c_out * cg_in * kh * kw {
            return Err(BovwError::param(name, format!("weights have {} values, not {c_out} x {cg_in} x {kh} x {kw}", weight.len())));
        }
        if (kh, kw) != (geom.kh, geom.kw) {
            return Err(BovwError::param(name, format!("kernel {kh} x {kw} does not match the window {} x {}", geom.kh, geom.kw)));
        }
        if groups == 0 || c_out % groups != 0 {
            return Err(BovwError::param(name, format!("{c_out} output channels are not a multiple of groups = {groups}")));
        }
        let c_in = cg_in * groups;
        if let Some(c) = self.channels(x) {
            if c != c_in {
                return Err(BovwError::param(name, format!("expects {c_in} input channels, its input has {c}")));
            }
        }
        let zeros = vec![0f32; c_out];
        let bias = bias.unwrap_or(&zeros);
        if bias.len() != c_out {
            return Err(BovwError::param(name, format!("{} biases for {c_out} output channels", bias.len())));
        }
        let w_at = |o: usize, i: usize, ky: usize, kx: usize| weight[((o * cg_in + i) * kh + ky) * kw + kx];
        let kernel = if groups == 1 {
            ConvKernel::Dense(PackedMatrix::from_fn(kh * kw * c_in, c_out, bias, |r, o| {
                let (tap, i) = (r / c_in, r % c_in);
                w_at(o, i, tap / kw, tap % kw)
            }))
        } else if groups == c_in && c_out == c_in && cg_in == 1 {
            ConvKernel::Depthwise(Depthwise::from_fn(c_in, kh, kw, bias, |ch, ky, kx| w_at(ch, 0, ky, kx)))
        } else {
            let cg_out = c_out / groups;
            ConvKernel::Grouped(
                (0..groups)
                    .map(|g| {
                        PackedMatrix::from_fn(kh * kw * cg_in, cg_out, &bias[g * cg_out..(g + 1) * cg_out], |r, o| {
                            let (tap, i) = (r / cg_in, r % cg_in);
                            w_at(g * cg_out + o, i, tap / kw, tap % kw)
                        })
                    })
                    .collect(),
            )
        };
        let mut inputs = vec![x];
        if let Some(r) = residual {
            self.check_value(name, r)?;
            if let Some(c) = self.channels(r) {
                if c != c_out {
                    return Err(BovwError::param(name, format!("residual has {c} channels, the convolution {c_out}")));
                }
            }
            inputs.push(r);
        }
        self.push(name, Op::Conv { geom, c_in, c_out, kernel, act }, inputs, Some(c_out), false)
    }

    /// `act(a + b)`.
    ///
    /// # Errors
    /// When the channel counts differ.
    pub fn add(&mut self, name: &str, a: ValueId, b: ValueId, act: Activation) -> Result<ValueId> {
        let c = self.binary_channels(name, a, b)?;
        let pooled = self.pooled[a];
        self.push(name, Op::Add { act }, vec![a, b], c, pooled)
    }

    /// `a * b`.
    ///
    /// # Errors
    /// When the channel counts differ.
    pub fn mul(&mut self, name: &str, a: ValueId, b: ValueId) -> Result<ValueId> {
        let c = self.binary_channels(name, a, b)?;
        let pooled = self.pooled[a];
        self.push(name, Op::Mul, vec![a, b], c, pooled)
    }

    fn binary_channels(&self, name: &str, a: ValueId, b: ValueId) -> Result<Option<usize>> {
        self.check_value(name, a)?;
        self.check_value(name, b)?;
        match (self.channels(a), self.channels(b)) {
            (Some(x), Some(y)) if x != y => Err(BovwError::param(name, format!("operands have {x} and {y} channels"))),
            (x, y) => Ok(x.or(y)),
        }
    }

    /// Global average pooling.
    ///
    /// # Errors
    /// When `x` does not exist.
    pub fn global_avg_pool(&mut self, name: &str, x: ValueId) -> Result<ValueId> {
        self.check_value(name, x)?;
        let c = self.channels(x);
        self.push(name, Op::GlobalAvgPool, vec![x], c, true)
    }

    /// Max (`max`) or average pooling.
    ///
    /// # Errors
    /// When the geometry is invalid.
    pub fn pool(&mut self, name: &str, x: ValueId, geom: Geometry, max: bool, count_include_pad: bool) -> Result<ValueId> {
        self.check_value(name, x)?;
        geom.check(name)?;
        let c = self.channels(x);
        self.push(name, Op::Pool { geom, max, count_include_pad }, vec![x], c, false)
    }

    /// A fully connected layer: `weight` is `k x n` row-major (input
    /// features by output features), `bias` has `n` values.
    ///
    /// # Errors
    /// When the sizes are inconsistent, or `x` is known to have another number of features.
    #[allow(clippy::too_many_arguments)]
    pub fn dense(&mut self, name: &str, x: ValueId, weight: &[f32], k: usize, n: usize, bias: Option<&[f32]>, act: Activation) -> Result<ValueId> {
        self.check_value(name, x)?;
        if weight.len() != k * n {
            return Err(BovwError::param(name, format!("weights have {} values, not {k} x {n}", weight.len())));
        }
        if self.pooled[x] {
            if let Some(c) = self.channels(x) {
                if c != k {
                    return Err(BovwError::param(name, format!("expects {k} input features, its input has {c}")));
                }
            }
        }
        let zeros = vec![0f32; n];
        let bias = bias.unwrap_or(&zeros);
        if bias.len() != n {
            return Err(BovwError::param(name, format!("{} biases for {n} outputs", bias.len())));
        }
        let mat = PackedMatrix::from_row_major(weight, k, n, bias);
        self.push(name, Op::Dense { mat, act }, vec![x], Some(n), true)
    }

    /// An activation.
    ///
    /// # Errors
    /// When `x` does not exist.
    pub fn activation(&mut self, name: &str, x: ValueId, act: Activation) -> Result<ValueId> {
        self.check_value(name, x)?;
        let (c, p) = (self.channels(x), self.pooled[x]);
        self.push(name, Op::Act(act), vec![x], c, p)
    }

    /// Softmax over all values of `x`.
    ///
    /// # Errors
    /// When `x` does not exist.
    pub fn softmax(&mut self, name: &str, x: ValueId) -> Result<ValueId> {
        self.check_value(name, x)?;
        let (c, p) = (self.channels(x), self.pooled[x]);
        self.push(name, Op::Softmax, vec![x], c, p)
    }

    /// Channel concatenation.
    ///
    /// # Errors
    /// When `xs` is empty.
    pub fn concat(&mut self, name: &str, xs: &[ValueId]) -> Result<ValueId> {
        if xs.is_empty() {
            return Err(BovwError::param(name, "concatenation of no input"));
        }
        let c = xs.iter().map(|&v| self.channels(v)).sum::<Option<usize>>();
        let pooled = xs.iter().all(|&v| self.pooled.get(v).copied().unwrap_or(false));
        self.push(name, Op::Concat, xs.to_vec(), c, pooled)
    }

    /// Flatten to a vector in `(c, h, w)` order.
    ///
    /// # Errors
    /// When `x` does not exist.
    pub fn flatten(&mut self, name: &str, x: ValueId) -> Result<ValueId> {
        self.check_value(name, x)?;
        let c = if self.pooled[x] { self.channels(x) } else { None };
        self.push(name, Op::Flatten, vec![x], c, true)
    }

    /// The graph, computing `outputs` (e.g. features, then logits).
    ///
    /// # Errors
    /// When an output does not exist or the graph is empty.
    pub fn finish(self, outputs: Vec<ValueId>) -> Result<Graph> {
        if self.nodes.is_empty() {
            return Err(BovwError::param("model", "the network has no layer"));
        }
        for &o in &outputs {
            if o >= self.channels.len() {
                return Err(BovwError::param("model", format!("output value {o} does not exist")));
            }
        }
        let nodes = fuse_inverted_residuals(self.nodes, &outputs, self.channels.len());
        let n_values = self.channels.len();
        let mut last_use = vec![0usize; n_values];
        for (i, node) in nodes.iter().enumerate() {
            for &v in &node.inputs {
                last_use[v] = i;
            }
        }
        for &o in &outputs {
            last_use[o] = usize::MAX;
        }
        Ok(Graph { nodes, channels: self.channels, last_use, outputs })
    }
}

/// Whether a convolution is a plain 1 x 1 (stride 1, no padding, one group).
fn is_pointwise(op: &Op) -> bool {
    match op {
        Op::Conv { geom, kernel: ConvKernel::Dense(_), .. } => {
            geom.kh == 1
                && geom.kw == 1
                && geom.stride_h == 1
                && geom.stride_w == 1
                && match geom.padding {
                    Padding::Explicit { top, left, bottom, right } => top + left + bottom + right == 0,
                    _ => true,
                }
        }
        _ => false,
    }
}

/// Replace each run "1 x 1 conv -> depthwise conv -> 1 x 1 conv" (the
/// first optional) whose intermediate values have one reader each and are
/// no output, by one [`Op::MbConv`].
fn fuse_inverted_residuals(nodes: Vec<Node>, outputs: &[ValueId], n_values: usize) -> Vec<Node> {
    let mut readers = vec![0usize; n_values];
    for n in &nodes {
        for &v in &n.inputs {
            readers[v] += 1;
        }
    }
    for &o in outputs {
        readers[o] += 1;
    }
    let single = |n: &Node| readers[n.output] == 1;
    // (kernel heights up to 16: the strip loop keeps the tap rows in an array)
    let plain_dw =
        |n: &Node| matches!(&n.op, Op::Conv { kernel: ConvKernel::Depthwise(_), geom, .. } if geom.kh <= 16) && n.inputs.len() == 1;
    let mut out = Vec::with_capacity(nodes.len());
    let mut it = nodes.into_iter().peekable();
    let mut pending: Vec<Node> = Vec::new();
    loop {
        // look at up to three nodes: pending (already taken) + the iterator
        while pending.len() < 3 {
            match it.next() {
                Some(n) => pending.push(n),
                None => break,
            }
        }
        if pending.is_empty() {
            break;
        }
        let with_expand = pending.len() == 3
            && is_pointwise(&pending[0].op)
            && pending[0].inputs.len() == 1
            && single(&pending[0])
            && plain_dw(&pending[1])
            && pending[1].inputs[0] == pending[0].output
            && single(&pending[1])
            && is_pointwise(&pending[2].op)
            && pending[2].inputs[0] == pending[1].output;
        let without = !with_expand
            && pending.len() >= 2
            && plain_dw(&pending[0])
            && single(&pending[0])
            && is_pointwise(&pending[1].op)
            && pending[1].inputs[0] == pending[0].output;
        if with_expand || without {
            let take = if with_expand { 3 } else { 2 };
            let mut group: Vec<Node> = pending.drain(..take).collect();
            let last = group.pop().expect("projection");
            let dwn = group.pop().expect("depthwise");
            let exp = group.pop();
            let mut input = dwn.inputs[0];
            let mut names = [String::new(), dwn.name.clone(), last.name.clone()];
            let expand = exp.map(|e| {
                input = e.inputs[0];
                names[0] = e.name.clone();
                match e.op {
                    Op::Conv { kernel: ConvKernel::Dense(m), act, .. } => (m, act),
                    _ => unreachable!("checked pointwise"),
                }
            });
            let (depthwise, dw_geom, dw_act) = match dwn.op {
                Op::Conv { kernel: ConvKernel::Depthwise(d), geom, act, .. } => (d, geom, act),
                _ => unreachable!("checked depthwise"),
            };
            let (project, project_act) = match last.op {
                Op::Conv { kernel: ConvKernel::Dense(m), act, .. } => (m, act),
                _ => unreachable!("checked pointwise"),
            };
            let mut inputs = vec![input];
            inputs.extend_from_slice(&last.inputs[1..]);
            let name = last.name.clone();
            let op = Op::MbConv(Box::new(MbConv { expand, depthwise, dw_geom, dw_act, project, project_act, names }));
            out.push(Node { name, op, inputs, output: last.output });
        } else {
            out.push(pending.remove(0));
        }
    }
    out
}

/// A network ready to run: see the module documentation.
#[derive(Debug, Clone)]
pub struct Graph {
    nodes: Vec<Node>,
    channels: Vec<Option<usize>>,
    last_use: Vec<usize>,
    outputs: Vec<ValueId>,
}

/// Pixels gathered per [`layers::im2col`] block (a multiple of the GEMM tile's rows).
const IM2COL_PIXELS: usize = 96;

/// Largest map, in pixels, on which [`Graph::run_many`] runs a group's
/// images stacked (6 x 6 and 3 x 3 at 96 px inputs, 7 x 7 at 224 px):
/// below it, one image's rows are too few to use each weight read from
/// memory more than a few times.
pub const GROUP_MAX_PIXELS: usize = 100;

#[cfg(test)]
thread_local! {
    /// Nodes this thread has run stacked (tests check that groups stack).
    static STACKED_EVALS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Whether `node` runs on a group's stacked images when its input is `x`.
fn stacks(node: &Node, x: &Tensor) -> bool {
    x.h * x.w <= GROUP_MAX_PIXELS
        && match &node.op {
            Op::MbConv(_) | Op::Dense { .. } => true,
            Op::Conv { .. } => is_pointwise(&node.op),
            _ => false,
        }
}

/// The values of a group's `n` images, one `h x w x c` image after the other.
#[derive(Debug)]
struct Stacked {
    h: usize,
    w: usize,
    c: usize,
    data: Aligned,
}

impl Stacked {
    /// Stack same-size tensors (their buffers go back to the pool).
    fn from_tensors(ts: Vec<Tensor>) -> Self {
        let (h, w, c) = ts.first().map_or((0, 0, 0), |t| (t.h, t.w, t.c));
        let len = h * w * c;
        let mut data = take_buffer(ts.len() * len);
        for (t, d) in ts.iter().zip(data.chunks_exact_mut(len.max(1))) {
            d.copy_from_slice(&t.data);
        }
        for t in ts {
            give_buffer(t.data);
        }
        Stacked { h, w, c, data }
    }
    fn image_len(&self) -> usize {
        self.h * self.w * self.c
    }
    fn image(&self, k: usize) -> &[f32] {
        let len = self.image_len();
        &self.data[k * len..(k + 1) * len]
    }
    /// A copy of image `k` (buffer from the pool).
    fn tensor(&self, k: usize) -> Tensor {
        let mut data = take_buffer(self.image_len());
        data.copy_from_slice(self.image(k));
        Tensor { h: self.h, w: self.w, c: self.c, data }
    }
}

impl Graph {
    /// The nodes, in evaluation order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    /// The values [`Graph::run`] returns.
    pub fn outputs(&self) -> &[ValueId] {
        &self.outputs
    }
    /// The channels of the input image.
    pub fn input_channels(&self) -> usize {
        self.channels[0].unwrap_or(0)
    }
    /// Channels of a value when known without an image (`None` after a flatten).
    pub fn channels(&self, v: ValueId) -> Option<usize> {
        self.channels.get(v).copied().flatten()
    }

    /// Evaluate the graph on one `h x w x c` image, up to (and returning)
    /// the first `n_outputs` of [`Graph::outputs`]: nodes needed only by
    /// later outputs are skipped.
    ///
    /// # Errors
    /// [`BovwError::InvalidInput`] naming the node when the image is too
    /// small for a window or shapes do not match at run time.
    ///
    /// With `par`, the layers split their work over the current rayon pool
    /// (one image on several threads, see the module documentation); the
    /// values are the same.
    pub fn run(&self, input: Tensor, n_outputs: usize, par: bool) -> Result<Vec<Tensor>> {
        let wanted = &self.outputs[..n_outputs.min(self.outputs.len())];
        if input.c != self.input_channels() {
            return Err(BovwError::input(format!("the network takes {} channels, the image has {}", self.input_channels(), input.c)));
        }
        let last_node = wanted.iter().map(|&o| self.nodes.iter().position(|n| n.output == o).map_or(0, |i| i + 1)).max().unwrap_or(0);
        let mut values: Vec<Option<Tensor>> = vec![None; self.channels.len()];
        values[0] = Some(input);
        let result = (|| {
            for (i, node) in self.nodes[..last_node].iter().enumerate() {
                let out = self.eval(node, &values, par)?;
                values[node.output] = Some(out);
                self.free_inputs(i, node, &mut values, wanted);
            }
            wanted
                .iter()
                .map(|&o| values[o].clone().ok_or_else(|| BovwError::input(format!("output value {o} was not computed"))))
                .collect::<Result<Vec<_>>>()
        })();
        for t in values.into_iter().flatten() {
            give_buffer(t.data);
        }
        result
    }

    /// [`Graph::run`] of a group of images on the calling thread: one
    /// result per image, in order, the same values bit for bit.
    ///
    /// Each image runs alone through the first layers; from the first
    /// layer whose input map has at most [`GROUP_MAX_PIXELS`] pixels on
    /// (the late, narrow layers whose weights are large for their work),
    /// the group's values are stacked into one buffer and each 1 x 1
    /// convolution (fused expansions and projections included) and fully
    /// connected layer is one GEMM over the rows of all the images, so
    /// that each weight panel is read from memory once per group, not once
    /// per image. Rows never mix, so a value does not depend on the group.
    /// Inputs of different sizes, or a group whose run fails, run one by
    /// one (each image then gets its own error).
    ///
    /// # Errors
    /// Per image, as [`Graph::run`].
    pub fn run_many(&self, inputs: Vec<Tensor>, n_outputs: usize) -> Vec<Result<Vec<Tensor>>> {
        let same = inputs.windows(2).all(|p| (p[0].h, p[0].w, p[0].c) == (p[1].h, p[1].w, p[1].c));
        if inputs.len() < 2 || !same || inputs[0].c != self.input_channels() {
            return inputs.into_iter().map(|t| self.run(t, n_outputs, false)).collect();
        }
        let n = inputs.len();
        match self.run_group(&inputs, n_outputs) {
            Ok(outs) => {
                let per = outs.len() / n;
                let mut it = outs.into_iter();
                (0..n).map(|_| Ok(it.by_ref().take(per).collect())).collect()
            }
            Err(_) => inputs.into_iter().map(|t| self.run(t, n_outputs, false)).collect(),
        }
    }

    /// The outputs of [`Graph::run_many`] on a group of same-size images,
    /// image after image (`n_outputs` each).
    fn run_group(&self, inputs: &[Tensor], n_outputs: usize) -> Result<Vec<Tensor>> {
        let wanted = &self.outputs[..n_outputs.min(self.outputs.len())];
        let last_node = wanted.iter().map(|&o| self.nodes.iter().position(|n| n.output == o).map_or(0, |i| i + 1)).max().unwrap_or(0);
        let n = inputs.len();
        let n_values = self.channels.len();
        let mut per: Vec<Vec<Option<Tensor>>> = Vec::with_capacity(n);
        let mut stacked: Vec<Option<Stacked>> = Vec::new();
        let result = (|| {
            // image by image up to the first stacked layer (found on the first image)
            let mut split = last_node;
            for (k, input) in inputs.iter().enumerate() {
                let mut values: Vec<Option<Tensor>> = vec![None; n_values];
                let mut data = take_buffer(input.data.len());
                data.copy_from_slice(&input.data);
                values[0] = Some(Tensor { data, ..*input });
                per.push(values);
                let values = per.last_mut().expect("pushed");
                for i in 0..split {
                    let node = &self.nodes[i];
                    if k == 0 && values[node.inputs[0]].as_ref().is_some_and(|x| stacks(node, x)) {
                        split = i;
                        break;
                    }
                    let out = self.eval(node, values, false)?;
                    values[node.output] = Some(out);
                    self.free_inputs(i, node, values, wanted);
                }
            }
            // the values alive at the split, stacked
            stacked = (0..n_values)
                .map(|v| {
                    per[0][v].as_ref()?;
                    let ts: Vec<Tensor> = per.iter_mut().filter_map(|vals| vals[v].take()).collect();
                    Some(Stacked::from_tensors(ts))
                })
                .collect::<Vec<_>>();
            for i in split..last_node {
                let node = &self.nodes[i];
                let out = match self.eval_stacked(node, &stacked, n)? {
                    Some(out) => out,
                    None => {
                        // image by image on copies of the inputs
                        let mut values: Vec<Option<Tensor>> = vec![None; n_values];
                        let mut outs = Vec::with_capacity(n);
                        for k in 0..n {
                            for &v in &node.inputs {
                                values[v] = stacked[v].as_ref().map(|s| s.tensor(k));
                            }
                            let out = self.eval(node, &values, false);
                            for &v in &node.inputs {
                                if let Some(t) = values[v].take() {
                                    give_buffer(t.data);
                                }
                            }
                            outs.push(out?);
                        }
                        if outs.windows(2).any(|p| (p[0].h, p[0].w, p[0].c) != (p[1].h, p[1].w, p[1].c)) {
                            return Err(BovwError::input(format!("{}: images of a group gave outputs of different sizes", node.name)));
                        }
                        Stacked::from_tensors(outs)
                    }
                };
                stacked[node.output] = Some(out);
                for &v in &node.inputs {
                    if self.last_use[v] == i && !wanted.contains(&v) {
                        if let Some(s) = stacked[v].take() {
                            give_buffer(s.data);
                        }
                    }
                }
            }
            let mut outs = Vec::with_capacity(n * wanted.len());
            for k in 0..n {
                for &o in wanted {
                    let s = stacked[o].as_ref().ok_or_else(|| BovwError::input(format!("output value {o} was not computed")))?;
                    outs.push(Tensor { h: s.h, w: s.w, c: s.c, data: Aligned::from(s.image(k)) });
                }
            }
            Ok(outs)
        })();
        for t in per.into_iter().flatten().flatten() {
            give_buffer(t.data);
        }
        for s in stacked.into_iter().flatten() {
            give_buffer(s.data);
        }
        result
    }

    /// Free the inputs of node `i` that no later node reads.
    fn free_inputs(&self, i: usize, node: &Node, values: &mut [Option<Tensor>], wanted: &[ValueId]) {
        for &v in &node.inputs {
            if self.last_use[v] == i && !wanted.contains(&v) {
                if let Some(t) = values[v].take() {
                    give_buffer(t.data);
                }
            }
        }
    }

    /// `node` on the stacked images of a group (see [`Graph::run_many`]),
    /// with the operations [`Graph::eval`] performs on each image; `None`
    /// when the node is not one that stacks (or its inputs do not fit it:
    /// the caller then runs it image by image, which gives the error).
    fn eval_stacked(&self, node: &Node, values: &[Option<Stacked>], n: usize) -> Result<Option<Stacked>> {
        let Some(x) = values[node.inputs[0]].as_ref() else { return Ok(None) };
        if x.h * x.w > GROUP_MAX_PIXELS {
            return Ok(None);
        }
        let residual = |c: usize, h: usize, w: usize| -> Option<Option<&Stacked>> {
            match node.inputs.get(1) {
                None => Some(None),
                Some(&v) => values[v].as_ref().filter(|r| (r.h, r.w, r.c) == (h, w, c)).map(Some),
            }
        };
        let out = match &node.op {
            Op::Conv { geom, c_in, c_out, kernel: ConvKernel::Dense(mat), act } if x.c == *c_in => {
                let (oh, ow, _) = geom.output(x.h, x.w, &node.name)?;
                let Some(res) = residual(*c_out, oh, ow) else { return Ok(None) };
                if !is_pointwise(&node.op) || (oh, ow) != (x.h, x.w) {
                    return Ok(None);
                }
                let mut out = take_buffer(n * oh * ow * c_out);
                layers::gemm(&x.data, n * oh * ow, x.c, mat, &mut out, *c_out, res.map(|r| r.data.as_slice()), *act);
                Stacked { h: oh, w: ow, c: *c_out, data: out }
            }
            Op::MbConv(mb) => {
                let c_mid = mb.depthwise.c;
                if x.c != mb.expand.as_ref().map_or(c_mid, |(m, _)| m.k()) {
                    return Ok(None);
                }
                let (h, w) = (x.h, x.w);
                let (oh, ow, win) = mb.dw_geom.output(h, w, &mb.names[1])?;
                let c_out = mb.project.n();
                let Some(res) = residual(c_out, oh, ow) else { return Ok(None) };
                let (ilen, olen) = (h * w * c_mid, oh * ow * c_mid);
                let mut dw = take_buffer(n * olen);
                match &mb.expand {
                    Some((em, eact)) => {
                        let mut e = take_buffer(n * ilen);
                        layers::gemm(&x.data, n * h * w, x.c, em, &mut e, c_mid, None, *eact);
                        for (ei, di) in e.chunks_exact(ilen).zip(dw.chunks_exact_mut(olen)) {
                            layers::depthwise(ei, h, w, &mb.depthwise, &win, oh, ow, di, mb.dw_act);
                        }
                        give_buffer(e);
                    }
                    None => {
                        for (xi, di) in x.data.chunks_exact(ilen).zip(dw.chunks_exact_mut(olen)) {
                            layers::depthwise(xi, h, w, &mb.depthwise, &win, oh, ow, di, mb.dw_act);
                        }
                    }
                }
                let mut out = take_buffer(n * oh * ow * c_out);
                let res = res.map(|r| r.data.as_slice());
                layers::gemm(&dw, n * oh * ow, c_mid, &mb.project, &mut out, c_out, res, mb.project_act);
                give_buffer(dw);
                Stacked { h: oh, w: ow, c: c_out, data: out }
            }
            Op::GlobalAvgPool if x.c > 0 => {
                let mut out = take_buffer(n * x.c);
                for (xi, oi) in x.data.chunks_exact(x.image_len()).zip(out.chunks_exact_mut(x.c)) {
                    layers::global_avg_pool(xi, x.c, oi);
                }
                Stacked { h: 1, w: 1, c: x.c, data: out }
            }
            Op::Dense { mat, act } if x.image_len() == mat.k() => {
                let mut out = take_buffer(n * mat.n());
                layers::gemm(&x.data, n, mat.k(), mat, &mut out, mat.n(), None, *act);
                Stacked { h: 1, w: 1, c: mat.n(), data: out }
            }
            _ => return Ok(None),
        };
        #[cfg(test)]
        STACKED_EVALS.with(|c| c.set(c.get() + 1));
        Ok(Some(out))
    }

    fn eval(&self, node: &Node, values: &[Option<Tensor>], par: bool) -> Result<Tensor> {
        let get = |k: usize| -> Result<&Tensor> {
            values[node.inputs[k]].as_ref().ok_or_else(|| BovwError::input(format!("{}: input {k} is not available", node.name)))
        };
        let x = get(0)?;
        let name = node.name.as_str();
        match &node.op {
            Op::Conv { geom, c_in, c_out, kernel, act } => {
                if x.c != *c_in {
                    return Err(BovwError::input(format!("{name}: expects {c_in} channels, got {}", x.c)));
                }
                let (oh, ow, win) = geom.output(x.h, x.w, name)?;
                let residual = if node.inputs.len() > 1 {
                    let r = get(1)?;
                    if (r.h, r.w, r.c) != (oh, ow, *c_out) {
                        return Err(BovwError::input(format!(
                            "{name}: residual of {} x {} x {} for an output of {oh} x {ow} x {c_out}",
                            r.h, r.w, r.c
                        )));
                    }
                    Some(r.data.as_slice())
                } else {
                    None
                };
                let mut out = take_buffer(oh * ow * c_out);
                conv_forward(x, kernel, &win, *c_out, oh, ow, residual, *act, &mut out, par);
                Ok(Tensor { h: oh, w: ow, c: *c_out, data: out })
            }
            Op::Add { .. } | Op::Mul if node.inputs.len() == 2 => {
                let b = get(1)?;
                let (big, small) = if b.data.len() > x.data.len() { (b, x) } else { (x, b) };
                let broadcast = small.h * small.w == 1 && small.c == big.c;
                if !(broadcast || (small.h, small.w, small.c) == (big.h, big.w, big.c)) {
                    return Err(BovwError::input(format!(
                        "{name}: operands of {} x {} x {} and {} x {} x {} do not broadcast",
                        x.h, x.w, x.c, b.h, b.w, b.c
                    )));
                }
                let mut out = take_buffer(big.data.len());
                let c = big.c.max(1);
                let is_add = matches!(node.op, Op::Add { .. });
                for (o, (i, &v)) in out.iter_mut().zip(big.data.iter().enumerate()) {
                    let s = if broadcast { small.data[i % c] } else { small.data[i] };
                    // a + b and a * b commute bit for bit: operand order does not matter
                    *o = if is_add { v + s } else { v * s };
                }
                if let Op::Add { act } = node.op {
                    act.apply_slice(&mut out);
                }
                Ok(Tensor { h: big.h, w: big.w, c: big.c, data: out })
            }
            Op::Add { .. } | Op::Mul => Err(BovwError::input(format!("{name}: needs two inputs"))),
            Op::GlobalAvgPool => {
                let mut out = take_buffer(x.c);
                layers::global_avg_pool(&x.data, x.c, &mut out);
                Ok(Tensor { h: 1, w: 1, c: x.c, data: out })
            }
            Op::Pool { geom, max, count_include_pad } => {
                let (oh, ow, win) = geom.output(x.h, x.w, name)?;
                let mut out = take_buffer(oh * ow * x.c);
                layers::pool2d(&x.data, x.h, x.w, x.c, &win, oh, ow, *max, *count_include_pad, &mut out);
                Ok(Tensor { h: oh, w: ow, c: x.c, data: out })
            }
            Op::Dense { mat, act } => {
                let k = x.data.len();
                if k != mat.k() {
                    return Err(BovwError::input(format!("{name}: expects {} input features, got {k}", mat.k())));
                }
                let mut out = take_buffer(mat.n());
                layers::gemm(&x.data, 1, k, mat, &mut out, mat.n(), None, *act);
                Ok(Tensor { h: 1, w: 1, c: mat.n(), data: out })
            }
            Op::Act(act) => {
                let mut out = take_buffer(x.data.len());
                out.copy_from_slice(&x.data);
                act.apply_slice(&mut out);
                Ok(Tensor { h: x.h, w: x.w, c: x.c, data: out })
            }
            Op::Softmax => {
                let mut out = take_buffer(x.data.len());
                let m = x.data.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f64;
                for (o, &v) in out.iter_mut().zip(x.data.iter()) {
                    *o = (v - m).exp();
                    sum += *o as f64;
                }
                let inv = (1.0 / sum) as f32;
                for o in out.iter_mut() {
                    *o *= inv;
                }
                Ok(Tensor { h: x.h, w: x.w, c: x.c, data: out })
            }
            Op::Concat => {
                let parts: Vec<&Tensor> = (0..node.inputs.len()).map(get).collect::<Result<_>>()?;
                if parts.iter().any(|t| (t.h, t.w) != (x.h, x.w)) {
                    return Err(BovwError::input(format!("{name}: concatenated inputs differ in height or width")));
                }
                let c: usize = parts.iter().map(|t| t.c).sum();
                let mut out = take_buffer(x.h * x.w * c);
                for px in 0..x.h * x.w {
                    let mut o = px * c;
                    for t in &parts {
                        out[o..o + t.c].copy_from_slice(&t.data[px * t.c..(px + 1) * t.c]);
                        o += t.c;
                    }
                }
                Ok(Tensor { h: x.h, w: x.w, c, data: out })
            }
            Op::MbConv(mb) => {
                let residual = if node.inputs.len() > 1 { Some(get(1)?) } else { None };
                mbconv_forward(x, mb, residual, name, par)
            }
            Op::Flatten => {
                let mut out = take_buffer(x.data.len());
                let hw = x.h * x.w;
                for (px, vals) in x.data.chunks_exact(x.c.max(1)).enumerate() {
                    for (ch, &v) in vals.iter().enumerate() {
                        out[ch * hw + px] = v;
                    }
                }
                Ok(Tensor { h: 1, w: 1, c: x.data.len(), data: out })
            }
        }
    }
}

/// Run one convolution into `out` (`oh x ow x c_out`).
#[allow(clippy::too_many_arguments)]
fn conv_forward(
    x: &Tensor,
    kernel: &ConvKernel,
    win: &Window,
    c_out: usize,
    oh: usize,
    ow: usize,
    residual: Option<&[f32]>,
    act: Activation,
    out: &mut [f32],
    par: bool,
) {
    let pointwise = win.kh == 1 && win.kw == 1 && win.stride_h == 1 && win.stride_w == 1 && win.pad_top == 0 && win.pad_left == 0;
    match kernel {
        ConvKernel::Dense(mat) if pointwise && (oh, ow) == (x.h, x.w) => {
            if par {
                layers::gemm_par(&x.data, oh * ow, x.c, mat, out, c_out, residual, act);
            } else {
                layers::gemm(&x.data, oh * ow, x.c, mat, out, c_out, residual, act);
            }
        }
        ConvKernel::Dense(mat) => im2col_gemm(x, 0, x.c, mat, win, oh, ow, out, 0, c_out, residual, act, par),
        ConvKernel::Grouped(mats) => {
            let groups = mats.len();
            let (cg_in, cg_out) = (x.c / groups, c_out / groups);
            for (g, mat) in mats.iter().enumerate() {
                im2col_gemm(x, g * cg_in, cg_in, mat, win, oh, ow, out, g * cg_out, c_out, residual, act, par);
            }
        }
        ConvKernel::Depthwise(dw) => {
            if let Some(r) = residual {
                layers::depthwise(&x.data, x.h, x.w, dw, win, oh, ow, out, Activation::None);
                for (o, &v) in out.iter_mut().zip(r) {
                    *o = act.apply(*o + v);
                }
            } else if par {
                layers::depthwise_par(&x.data, x.h, x.w, dw, win, oh, ow, out, act);
            } else {
                layers::depthwise(&x.data, x.h, x.w, dw, win, oh, ow, out, act);
            }
        }
    }
}

/// Largest expanded image (values) an [`MbConv`] computes whole: below
/// this (640 KiB) the three convolutions run one after the other on whole
/// images (the wide image stays in L2 anyway, and the GEMMs get many rows);
/// above it, in strips.
const MBCONV_WHOLE_VALUES: usize = 160 * 1024;
/// Target values of the expanded rows computed per strip (about 64 KiB).
const MBCONV_STRIP_VALUES: usize = 16 * 1024;

/// Run a fused inverted-residual block. Large images go in strips of
/// output rows: the input rows a strip needs are expanded once (kept in a
/// buffer that slides down the image), the strip's depthwise rows are
/// computed, then projected. Each value is computed with the same
/// operations as by the three layers one after the other.
fn mbconv_forward(x: &Tensor, mb: &MbConv, residual: Option<&Tensor>, name: &str, par: bool) -> Result<Tensor> {
    let c_mid = mb.depthwise.c;
    let c_in_expected = mb.expand.as_ref().map_or(c_mid, |(m, _)| m.k());
    if x.c != c_in_expected {
        return Err(BovwError::input(format!("{name}: expects {c_in_expected} channels, got {}", x.c)));
    }
    let (h, w) = (x.h, x.w);
    let (oh, ow, win) = mb.dw_geom.output(h, w, &mb.names[1])?;
    let c_out = mb.project.n();
    if let Some(r) = residual {
        if (r.h, r.w, r.c) != (oh, ow, c_out) {
            return Err(BovwError::input(format!(
                "{name}: residual of {} x {} x {} for an output of {oh} x {ow} x {c_out}",
                r.h, r.w, r.c
            )));
        }
    }
    if par && rayon::current_num_threads() > 1 {
        if let Some((out, _)) = mbconv_par(x, mb, &win, oh, ow, residual, rayon::current_num_threads()) {
            return Ok(Tensor { h: oh, w: ow, c: c_out, data: out });
        }
    }
    let row_len = w * c_mid;
    let mut out = take_buffer(oh * ow * c_out);
    if h * row_len <= MBCONV_WHOLE_VALUES {
        let mut dw = take_buffer(oh * ow * c_mid);
        match &mb.expand {
            Some((em, eact)) => {
                let mut e = take_buffer(h * row_len);
                layers::gemm(&x.data, h * w, x.c, em, &mut e, c_mid, None, *eact);
                layers::depthwise(&e, h, w, &mb.depthwise, &win, oh, ow, &mut dw, mb.dw_act);
                give_buffer(e);
            }
            None => layers::depthwise(&x.data, h, w, &mb.depthwise, &win, oh, ow, &mut dw, mb.dw_act),
        }
        let res = residual.map(|r| r.data.as_slice());
        layers::gemm(&dw, oh * ow, c_mid, &mb.project, &mut out, c_out, res, mb.project_act);
        give_buffer(dw);
        return Ok(Tensor { h: oh, w: ow, c: c_out, data: out });
    }
    // output rows per strip: about MBCONV_STRIP_VALUES new expanded values
    let strip = (MBCONV_STRIP_VALUES / (win.stride_h * row_len).max(1)).clamp(1, oh.max(1));
    mbconv_rows(x, mb, &win, ow, strip, 0, oh, residual, &mut out);
    Ok(Tensor { h: oh, w: ow, c: c_out, data: out })
}

/// Run `f` (the layers of one image, split over the current rayon pool)
/// while the pool's other threads wait for its parts by spinning instead
/// of sleeping.
///
/// An image on several threads forks and joins some 40 times in a few
/// milliseconds; between two forks an idle rayon worker parks itself,
/// and waking a parked thread costs tens of microseconds (much more on
/// a virtual machine whose idle CPU has been handed back to the host).
/// Here each other thread of the pool runs a job that keeps taking the
/// pool's pending work ([`rayon::yield_now`]) until `f` returns. Which
/// thread computes which part never changes a value. Outside a rayon pool
/// or on a pool of one thread, `f` simply runs.
///
/// # Panics
/// A panic of `f` is passed on once the helpers have stopped.
pub fn with_spinning_workers<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    let threads = rayon::current_num_threads();
    let Some(me) = rayon::current_thread_index() else { return f() };
    if threads < 2 {
        return f();
    }
    /// Sets the flag when `f` returns or unwinds, so the helpers stop.
    struct Done<'a>(&'a AtomicBool);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let done = AtomicBool::new(false);
    let mut result = None;
    rayon::scope(|s| {
        for _ in 1..threads {
            s.spawn(|_| {
                // the calling thread may pop a helper job while it waits
                // for a part: it must not spin on its own work
                if rayon::current_thread_index() == Some(me) {
                    return;
                }
                // a helper taken by a thread that was itself waiting
                // (another caller's work on the same pool) must not hold
                // that thread for long: it gives up when idle
                take_pending_work(
                    || done.load(Ordering::Acquire),
                    || {
                        for _ in 0..16 {
                            std::hint::spin_loop();
                        }
                    },
                    64,
                    SPIN_IDLE_MAX,
                );
            });
        }
        let _done = Done(&done);
        result = Some(f());
    });
    result.expect("the scope ran f")
}

/// Take the current pool's pending work ([`rayon::yield_now`]) until
/// `stop()` holds or none has been found for `idle_max`. Between two looks
/// that found nothing, `pause()`; the clock is read every `check_every`
/// such looks. The loop of [`with_spinning_workers`]' helpers and of
/// [`linger_workers`]' jobs (inlined into each, as those two loops were).
#[inline(always)]
fn take_pending_work(stop: impl Fn() -> bool, pause: impl Fn(), check_every: u32, idle_max: std::time::Duration) {
    let mut idle_since = std::time::Instant::now();
    let mut rounds = 0u32;
    while !stop() {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            idle_since = std::time::Instant::now();
            continue;
        }
        pause();
        rounds = rounds.wrapping_add(1);
        if rounds % check_every == 0 && idle_since.elapsed() > idle_max {
            break;
        }
    }
}

/// How long a helper of [`with_spinning_workers`] spins without finding
/// work before it returns its thread to rayon (the gaps between the parts
/// of one image are tens of microseconds).
const SPIN_IDLE_MAX: std::time::Duration = std::time::Duration::from_millis(2);

thread_local! {
    /// Whether this thread is in a [`linger_workers`] job: a second one
    /// taken while it lingers (the next call's own) returns at once, so a
    /// stream of calls never nests them.
    static LINGERING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// [`linger_workers`] jobs running now, and the most ever running at once
/// on one thread (the tests check that they end and never nest).
#[cfg(test)]
static LINGER_JOBS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
#[cfg(test)]
static LINGER_MAX_DEPTH: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
#[cfg(test)]
thread_local! {
    static LINGER_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Keep all but one of the current pool's threads awake for a moment after
/// a call that ran an image on all of them: each takes the pool's pending
/// work ([`rayon::yield_now`]) and otherwise yields its CPU
/// ([`std::thread::yield_now`]), until it has found none for
/// `LINGER_IDLE_MAX` (2 ms).
///
/// The next image of a stream of single-image calls then starts, and its
/// first parts are taken, without waking a parked thread. On a virtual
/// machine whose idle CPU goes back to the host such wake-ups cost far more
/// than the work between two forks, and they are slowest after a pause:
/// 8 images of 100 x 100 px, one per call, 2 threads, right after a pause
/// ran at 0.64-0.67x onnxruntime's images/s without this and the spinning
/// of [`with_spinning_workers`], 0.90-1.01x with both (4 runs of 15 rounds;
/// onnxruntime's threads also spin between runs). One thread is left free
/// for the caller, which runs Python between calls. The jobs end by
/// themselves; outside a rayon pool or on a pool of one thread this does
/// nothing. No value depends on it.
pub fn linger_workers() {
    let threads = rayon::current_num_threads();
    if threads < 2 || rayon::current_thread_index().is_none() {
        return;
    }
    for _ in 1..threads {
        rayon::spawn(|| {
            if LINGERING.with(|l| l.replace(true)) {
                return;
            }
            #[cfg(test)]
            {
                LINGER_JOBS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let depth = LINGER_DEPTH.with(|d| {
                    d.set(d.get() + 1);
                    d.get()
                });
                LINGER_MAX_DEPTH.fetch_max(depth, std::sync::atomic::Ordering::SeqCst);
            }
            take_pending_work(|| false, std::thread::yield_now, 16, LINGER_IDLE_MAX);
            #[cfg(test)]
            {
                LINGER_DEPTH.with(|d| d.set(d.get() - 1));
                LINGER_JOBS.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
            LINGERING.with(|l| l.set(false));
        });
    }
}

/// How long a [`linger_workers`] job finds no work before its thread goes
/// back to rayon (and parks).
const LINGER_IDLE_MAX: std::time::Duration = std::time::Duration::from_millis(2);

/// Multiply-adds of a fused block below which [`mbconv_par`] leaves it to
/// one thread (a fork-join costs more than the work saved).
const MBCONV_PAR_MIN_WORK: usize = 1 << 17;

/// One fused block on several threads of the current rayon pool, `None`
/// when the block is too small to split (the caller runs it on one
/// thread). Two ways, both giving the values of the one-thread path bit for
/// bit:
///
/// - **rows**: the output rows are cut into one range per thread (two per
///   thread on large images), each computed by [`mbconv_rows`] from the
///   input rows it needs; rows at the seams are expanded by both sides, so
///   this is used when that extra expansion is at most 1/4 of the image
///   (always without an expansion; with 1/8, the 28 x 28 block of 240
///   middle channels with 5 x 5 filters of a 224 px input went by
///   channels and ran 1.1x faster on 2 threads than on 1, by rows 1.9x; a
///   single 224 px image on 2 threads 5.2-5.6 -> 4.7-5.2 ms, 100 px
///   unchanged: the "stream t2" lines of `benches/py/cnn_call_times.py`
///   under each build). One fork-join per block.
/// - **channels**, for small images where the seams would cost more: each
///   thread expands a range of whole weight panels of the middle channels
///   (the whole image, its channels only) and runs their depthwise
///   filters; then the projection reads those per-thread images as column
///   blocks side by side ([`layers::gemm_blocks`]: the same sum over the
///   middle channels, in order), its rows (or, on maps of at most 24
///   pixels, its weight panels) split over the threads
///   ([`layers::gemm_blocks_par`]). Two fork-joins per block, no work repeated.
#[allow(clippy::too_many_arguments)]
fn mbconv_par(
    x: &Tensor,
    mb: &MbConv,
    win: &Window,
    oh: usize,
    ow: usize,
    residual: Option<&Tensor>,
    threads: usize,
) -> Option<(Aligned, Split)> {
    use rayon::prelude::*;
    let (h, w) = (x.h, x.w);
    let c_mid = mb.depthwise.c;
    let c_out = mb.project.n();
    let row_len = w * c_mid;
    let expand_work = mb.expand.as_ref().map_or(0, |(m, _)| h * w * m.k() * c_mid);
    if expand_work + oh * ow * c_mid * (win.kh * win.kw + c_out) < MBCONV_PAR_MIN_WORK || oh == 0 {
        return None;
    }
    let large = h * row_len > MBCONV_WHOLE_VALUES;
    let needed = |oy0: usize, oy1: usize| {
        let lo = win.iy(oy0, 0).clamp(0, h as isize) as usize;
        let hi = (win.iy(oy1 - 1, win.kh - 1) + 1).clamp(0, h as isize) as usize;
        hi.saturating_sub(lo)
    };
    // rows per part: two parts per thread on large images (better balance)
    // unless their seams cost too much, then one per thread
    let row_split = [if large { 2 * threads } else { threads }, threads].into_iter().find_map(|n| {
        let per = oh.div_ceil(n);
        let parts = oh.div_ceil(per);
        let extra = if mb.expand.is_some() { (0..parts).map(|i| needed(i * per, ((i + 1) * per).min(oh))).sum::<usize>().saturating_sub(h) } else { 0 };
        (parts >= 2 && extra * 4 <= h).then_some(per)
    });
    if let Some(per) = row_split {
        let strip = if large { (MBCONV_STRIP_VALUES / (win.stride_h * row_len).max(1)).clamp(1, per) } else { per };
        let mut out = take_buffer(oh * ow * c_out);
        out.par_chunks_mut(per * ow * c_out).enumerate().for_each(|(i, o)| {
            let oy0 = i * per;
            let rows = o.len() / (ow * c_out);
            mbconv_rows(x, mb, win, ow, strip, oy0, oy0 + rows, residual, o);
        });
        return Some((out, Split::Rows));
    }
    let (em, eact) = mb.expand.as_ref()?;
    let panels = em.panels();
    let parts = threads.min(panels);
    if parts < 2 {
        return None;
    }
    let xb = XBlock { data: &x.data, ld: x.c, k: x.c };
    let mids: Vec<(usize, Aligned)> = (0..parts)
        .into_par_iter()
        .map(|i| {
            let (p0, p1) = (i * panels / parts, (i + 1) * panels / parts);
            let ch = p0 * NR..(p1 * NR).min(c_mid);
            let cw = ch.len();
            let mut e = take_buffer(h * w * cw);
            layers::gemm_blocks(&[xb], h * w, em, p0..p1, &mut e, cw, None, *eact);
            let mut d = take_buffer(oh * ow * cw);
            layers::depthwise_part(&e, h, w, &mb.depthwise, ch, win, oh, ow, &mut d, mb.dw_act);
            give_buffer(e);
            (cw, d)
        })
        .collect();
    let xs: Vec<XBlock<'_>> = mids.iter().map(|(cw, d)| XBlock { data: d, ld: *cw, k: *cw }).collect();
    let mut out = take_buffer(oh * ow * c_out);
    layers::gemm_blocks_par(&xs, oh * ow, &mb.project, &mut out, c_out, residual.map(|r| r.data.as_slice()), mb.project_act);
    for (_, d) in mids {
        give_buffer(d);
    }
    Some((out, Split::Channels))
}

/// How [`mbconv_par`] split a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Split {
    Rows,
    Channels,
}

/// Output rows `oy_start..oy_end` of a fused block, in strips of `strip`
/// rows, into `out` (those rows only).
#[allow(clippy::too_many_arguments)]
fn mbconv_rows(
    x: &Tensor,
    mb: &MbConv,
    win: &Window,
    ow: usize,
    strip: usize,
    oy_start: usize,
    oy_end: usize,
    residual: Option<&Tensor>,
    out: &mut [f32],
) {
    let (h, w) = (x.h, x.w);
    let c_mid = mb.depthwise.c;
    let c_out = mb.project.n();
    let row_len = w * c_mid;
    let span = (strip - 1) * win.stride_h + (win.kh - 1) * win.dilation_h + 1; // input rows of a strip
    // `buf` holds expanded input rows buf_first..buf_first + buf_rows
    let mut buf = if mb.expand.is_some() { take_buffer(span.min(h) * row_len) } else { Aligned::default() };
    let (mut buf_first, mut buf_rows) = (0usize, 0usize);
    let mut dwbuf = take_buffer(strip * ow * c_mid);
    let mut oy0 = oy_start;
    while oy0 < oy_end {
        let t = strip.min(oy_end - oy0);
        let lo = win.iy(oy0, 0).clamp(0, h as isize) as usize;
        let hi = (win.iy(oy0 + t - 1, win.kh - 1) + 1).clamp(0, h as isize) as usize; // exclusive
        if let Some((em, eact)) = &mb.expand {
            // keep the rows still needed, expand the new ones in one GEMM
            let keep_from = lo.max(buf_first);
            let kept = (buf_first + buf_rows).saturating_sub(keep_from);
            if kept > 0 && keep_from > buf_first {
                let s0 = (keep_from - buf_first) * row_len;
                buf.copy_within(s0..s0 + kept * row_len, 0);
            }
            let (new_first, new_rows) = (lo + kept, hi.saturating_sub(lo + kept));
            if new_rows > 0 {
                let xr = &x.data[new_first * w * x.c..(new_first + new_rows) * w * x.c];
                layers::gemm(xr, new_rows * w, x.c, em, &mut buf[kept * row_len..(kept + new_rows) * row_len], c_mid, None, *eact);
            }
            buf_first = lo;
            buf_rows = kept + new_rows;
        }
        for i in 0..t {
            let oy = oy0 + i;
            let mut rows: [Option<&[f32]>; 16] = [None; 16];
            let rows = &mut rows[..win.kh.min(16)];
            for (ky, r) in rows.iter_mut().enumerate() {
                let iy = win.iy(oy, ky);
                *r = if iy < 0 || iy >= h as isize {
                    None
                } else if mb.expand.is_some() {
                    let k = iy as usize - buf_first;
                    Some(&buf[k * row_len..(k + 1) * row_len])
                } else {
                    Some(&x.data[iy as usize * row_len..(iy as usize + 1) * row_len])
                };
            }
            layers::depthwise_row(rows, w, &mb.depthwise, win, ow, &mut dwbuf[i * ow * c_mid..(i + 1) * ow * c_mid], mb.dw_act);
        }
        let o = oy0 * ow * c_out;
        let res = residual.map(|r| &r.data[o..o + t * ow * c_out]);
        let oo = (oy0 - oy_start) * ow * c_out;
        layers::gemm(&dwbuf[..t * ow * c_mid], t * ow, c_mid, &mb.project, &mut out[oo..oo + t * ow * c_out], c_out, res, mb.project_act);
        oy0 += t;
    }
    give_buffer(buf);
    give_buffer(dwbuf);
}

/// A dense convolution of channels `c0..c0 + cg` as blocks of im2col rows
/// times the packed weights, written to columns `col0..` of `out` (row
/// stride `ldo`); one-group convolutions without horizontal dilation read
/// their windows from the image instead ([`direct_rows`], the same values).
#[allow(clippy::too_many_arguments)]
fn im2col_gemm(
    x: &Tensor,
    c0: usize,
    cg: usize,
    mat: &PackedMatrix,
    win: &Window,
    oh: usize,
    ow: usize,
    out: &mut [f32],
    col0: usize,
    ldo: usize,
    residual: Option<&[f32]>,
    act: Activation,
    par: bool,
) {
    let k = mat.k();
    let n_px = oh * ow;
    let direct = cg == x.c && win.dilation_w == 1;
    if par && rayon::current_num_threads() > 1 && n_px > 2 * IM2COL_PIXELS {
        use rayon::prelude::*;
        let len = n_px * ldo;
        if direct {
            // two ranges of output rows per thread
            let rows = oh.div_ceil(2 * rayon::current_num_threads()).max(1);
            out[..len].par_chunks_mut(rows * ow * ldo).enumerate().for_each(|(i, o)| {
                let oy0 = i * rows;
                let oy1 = oy0 + o.len() / (ow * ldo);
                direct_rows(x, mat, win, oy0..oy1, ow, o, col0, ldo, residual.map(|r| &r[oy0 * ow * ldo..]), act);
            });
            return;
        }
        out[..len].par_chunks_mut(IM2COL_PIXELS * ldo).enumerate().for_each(|(i, o)| {
            let p0 = i * IM2COL_PIXELS;
            let n = o.len() / ldo;
            let mut cols = take_buffer(n * k);
            layers::im2col(&x.data, x.h, x.w, x.c, c0, cg, win, ow, p0, n, &mut cols);
            let res = residual.map(|r| &r[p0 * ldo + col0..]);
            layers::gemm(&cols, n, k, mat, &mut o[col0..], ldo, res, act);
            give_buffer(cols);
        });
        return;
    }
    if direct {
        return direct_rows(x, mat, win, 0..oh, ow, out, col0, ldo, residual, act);
    }
    let mut cols = take_buffer(IM2COL_PIXELS * k);
    let mut p0 = 0;
    while p0 < n_px {
        let n = IM2COL_PIXELS.min(n_px - p0);
        layers::im2col(&x.data, x.h, x.w, x.c, c0, cg, win, ow, p0, n, &mut cols);
        let o = p0 * ldo + col0;
        layers::gemm(&cols, n, k, mat, &mut out[o..], ldo, residual.map(|r| &r[o..]), act);
        p0 += n;
    }
    give_buffer(cols);
}

/// [`im2col_gemm`] of a one-group convolution without horizontal
/// dilation, without the copies where it can: for an output row whose tap
/// rows are all inside the image, the pixels whose windows lie inside it
/// read their `kw * c` values of each tap row straight from the image (one
/// [`XBlock`] per tap row, rows `stride_w * c` values apart), in the
/// `(ky, kx, channel)` order of the im2col rows; the other pixels (the
/// padding) go through [`layers::im2col`]. The same operations for every
/// value, so the same bits. Computes output rows `rows` into `out` (and
/// reads `residual`) from their first row on.
#[allow(clippy::too_many_arguments)]
fn direct_rows(
    x: &Tensor,
    mat: &PackedMatrix,
    win: &Window,
    rows: std::ops::Range<usize>,
    ow: usize,
    out: &mut [f32],
    col0: usize,
    ldo: usize,
    residual: Option<&[f32]>,
    act: Activation,
) {
    let (h, w, c) = (x.h, x.w, x.c);
    let k = mat.k();
    // output columns whose windows lie inside the image
    let inside = |ox: usize| win.ix(ox, 0) >= 0 && win.ix(ox, win.kw - 1) < w as isize;
    let ox_lo = (0..ow).find(|&ox| inside(ox)).unwrap_or(ow);
    let ox_hi = (ox_lo..ow).find(|&ox| !inside(ox)).unwrap_or(ow);
    let mut cols = take_buffer(ow * k);
    let mut blocks: Vec<XBlock<'_>> = Vec::with_capacity(win.kh);
    // pixel indices relative to the first row's first pixel
    let base = rows.start * ow;
    let mut by_im2col = |p0: usize, n: usize, out: &mut [f32]| {
        if n > 0 {
            layers::im2col(&x.data, h, w, c, 0, c, win, ow, p0, n, &mut cols);
            let o = (p0 - base) * ldo + col0;
            layers::gemm(&cols, n, k, mat, &mut out[o..], ldo, residual.map(|r| &r[o..]), act);
        }
    };
    for oy in rows {
        let rows_inside = (0..win.kh).all(|ky| (0..h as isize).contains(&win.iy(oy, ky)));
        if !rows_inside || ox_lo >= ox_hi {
            by_im2col(oy * ow, ow, out);
            continue;
        }
        by_im2col(oy * ow, ox_lo, out);
        blocks.clear();
        for ky in 0..win.kh {
            let start = (win.iy(oy, ky) as usize * w + win.ix(ox_lo, 0) as usize) * c;
            blocks.push(XBlock { data: &x.data[start..], ld: win.stride_w * c, k: win.kw * c });
        }
        let o = (oy * ow + ox_lo - base) * ldo + col0;
        layers::gemm_blocks(&blocks, ox_hi - ox_lo, mat, 0..mat.panels(), &mut out[o..], ldo, residual.map(|r| &r[o..]), act);
        by_im2col(oy * ow + ox_hi, ow - ox_hi, out);
    }
    give_buffer(cols);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() {
        // TF: out = ceil(n / s), pad_total = max((out - 1) s + k - n, 0), top = total / 2
        let g = Geometry::square(3, 2, Padding::SameUpper);
        let (oh, ow, win) = g.output(224, 225, "t").unwrap();
        assert_eq!((oh, ow, win.pad_top, win.pad_left), (112, 113, 0, 1));
        let g = Geometry::square(5, 2, Padding::SameUpper);
        let (oh, _, win) = g.output(28, 28, "t").unwrap();
        assert_eq!((oh, win.pad_top), (14, 1));
        let g = Geometry::square(5, 2, Padding::SameLower);
        assert_eq!(g.output(28, 28, "t").unwrap().2.pad_top, 2);
        let g = Geometry::square(3, 1, Padding::Explicit { top: 0, left: 0, bottom: 0, right: 0 });
        assert!(g.output(2, 5, "conv7").unwrap_err().to_string().contains("conv7"));
    }

    #[test]
    fn builder_checks_channels_and_names_the_layer() {
        let mut b = GraphBuilder::new(3);
        let w = vec![0.0; 8 * 4 * 9];
        let e = b
            .conv("stem", GraphBuilder::INPUT, &w, [8, 4, 3, 3], None, 1, Geometry::square(3, 1, Padding::SameUpper), Activation::None, None)
            .unwrap_err();
        assert!(e.to_string().contains("stem") && e.to_string().contains("3"), "{e}");
    }

    #[test]
    fn fused_inverted_residuals_equal_the_three_convolutions() {
        let mut s = 11u64;
        let mut r = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let (c_in, c_mid, c_out) = (8, 24, 8);
        for (k, stride, residual) in [(3, 1, true), (5, 2, false), (3, 2, false), (5, 1, true)] {
            let we: Vec<f32> = (0..c_mid * c_in).map(|_| r()).collect();
            let wd: Vec<f32> = (0..c_mid * k * k).map(|_| r()).collect();
            let wp: Vec<f32> = (0..c_out * c_mid).map(|_| r()).collect();
            let bias: Vec<f32> = (0..c_mid).map(|_| r()).collect();
            let build = |fuse: bool| {
                let mut b = GraphBuilder::new(3);
                let w0: Vec<f32> = (0..c_in * 3).map(|i| ((i * 7 % 11) as f32 - 5.0) / 10.0).collect();
                let x = b.conv("stem", 0, &w0, [c_in, 3, 1, 1], None, 1, Geometry::square(1, 1, Padding::SameUpper), Activation::None, None).unwrap();
                let e = b.conv("e", x, &we, [c_mid, c_in, 1, 1], Some(&bias), 1, Geometry::square(1, 1, Padding::SameUpper), Activation::RELU6, None).unwrap();
                let d = b.conv("d", e, &wd, [c_mid, 1, k, k], Some(&bias), c_mid, Geometry::square(k, stride, Padding::SameUpper), Activation::RELU6, None).unwrap();
                let p = b.conv("p", d, &wp, [c_out, c_mid, 1, 1], None, 1, Geometry::square(1, 1, Padding::SameUpper), Activation::None, residual.then_some(x)).unwrap();
                let outs = if fuse { vec![p] } else { vec![p, e, d] };
                b.finish(outs).unwrap()
            };
            let fused = build(true);
            assert!(fused.nodes().iter().any(|n| matches!(n.op, Op::MbConv(_))));
            let plain = build(false);
            assert!(!plain.nodes().iter().any(|n| matches!(n.op, Op::MbConv(_))));
            for (hh, ww) in [(37, 23), (5, 9), (64, 64), (150, 97)] {
                let img: Vec<f32> = (0..hh * ww * 3).map(|_| r()).collect();
                let a = fused.run(Tensor::new(hh, ww, 3, img.clone()), 1, false).unwrap();
                let b = plain.run(Tensor::new(hh, ww, 3, img.clone()), 1, false).unwrap();
                assert_eq!(a[0], b[0], "k {k} stride {stride} on {hh} x {ww}");
                // rows split over threads: the same values
                let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
                let c = pool.install(|| fused.run(Tensor::new(hh, ww, 3, img.clone()), 1, true)).unwrap();
                let d = pool.install(|| plain.run(Tensor::new(hh, ww, 3, img), 1, true)).unwrap();
                assert_eq!(a[0], c[0], "fused, parallel rows");
                assert_eq!(a[0], d[0], "plain, parallel rows");
            }
        }
    }

    /// A fused block with random weights, `c_in -> c_mid -> c_out`.
    fn random_block(c_in: usize, c_mid: usize, c_out: usize, k: usize, stride: usize, expand: bool, seed: u64) -> MbConv {
        let mut s = seed;
        let mut r = move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let c_in = if expand { c_in } else { c_mid };
        let eb: Vec<f32> = (0..c_mid).map(|_| r()).collect();
        let ew: Vec<f32> = (0..c_in * c_mid).map(|_| r() * 0.5).collect();
        let db: Vec<f32> = (0..c_mid).map(|_| r()).collect();
        let dwts: Vec<f32> = (0..c_mid * k * k).map(|_| r() * 0.5).collect();
        let pb: Vec<f32> = (0..c_out).map(|_| r()).collect();
        let pw: Vec<f32> = (0..c_mid * c_out).map(|_| r() * 0.2).collect();
        MbConv {
            expand: expand.then(|| (PackedMatrix::from_row_major(&ew, c_in, c_mid, &eb), Activation::RELU6)),
            depthwise: Depthwise::from_fn(c_mid, k, k, &db, |ch, ky, kx| dwts[(ch * k + ky) * k + kx]),
            dw_geom: Geometry::square(k, stride, Padding::SameUpper),
            dw_act: Activation::RELU6,
            project: PackedMatrix::from_row_major(&pw, c_mid, c_out, &pb),
            project_act: Activation::None,
            names: ["e".into(), "d".into(), "p".into()],
        }
    }

    #[test]
    fn blocks_split_over_threads_by_rows_or_channels_give_the_same_bits() {
        // (h, w, c_mid, k, stride, expand, residual, the split expected)
        let cases = [
            (7, 7, 120, 3, 1, true, true, Split::Channels), // seams would re-expand 2 of 7 rows
            (4, 4, 120, 5, 1, true, true, Split::Channels),
            (7, 9, 72, 5, 2, true, false, Split::Channels),
            (13, 11, 40, 5, 1, true, false, Split::Channels),
            (50, 50, 96, 3, 1, true, true, Split::Rows),
            (51, 37, 96, 3, 2, true, false, Split::Rows),
            (25, 25, 40, 5, 2, false, false, Split::Rows), // no expansion: rows always
            (150, 97, 56, 5, 1, true, true, Split::Rows),  // large: strips
        ];
        for (i, &(h, w, c_mid, k, stride, expand, residual, want)) in cases.iter().enumerate() {
            let (c_in, c_out) = (24, if residual { 24 } else { 40 });
            let mb = random_block(c_in, c_mid, c_out, k, stride, expand, 17 + i as u64);
            let c_x = if expand { c_in } else { c_mid };
            let mut s = 5 + i as u64;
            let x = Tensor::new(
                h,
                w,
                c_x,
                (0..h * w * c_x)
                    .map(|_| {
                        s = s.wrapping_mul(6364136223846793005).wrapping_add(3);
                        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
                    })
                    .collect::<Vec<f32>>(),
            );
            let res = residual.then(|| x.clone());
            let one = mbconv_forward(&x, &mb, res.as_ref(), "b", false).unwrap();
            let (oh, ow, win) = mb.dw_geom.output(h, w, "d").unwrap();
            for threads in [2, 3, 4] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let (out, how) = pool.install(|| mbconv_par(&x, &mb, &win, oh, ow, res.as_ref(), threads)).expect("large enough to split");
                assert_eq!(how, want, "case {i}: {h} x {w}, k {k}, stride {stride}");
                assert!(out == one.data, "case {i} on {threads} threads: values differ from one thread");
                let via_run = pool.install(|| mbconv_forward(&x, &mb, res.as_ref(), "b", true)).unwrap();
                assert!(via_run == one, "case {i}: the parallel forward differs");
            }
        }
        // too small to be worth a fork-join: left to the caller's thread
        let mb = random_block(8, 16, 8, 3, 1, true, 3);
        let x = Tensor::new(3, 3, 8, vec![0.5; 72]);
        let (oh, ow, win) = mb.dw_geom.output(3, 3, "d").unwrap();
        assert!(mbconv_par(&x, &mb, &win, oh, ow, None, 2).is_none());
    }

    /// A small network whose last layers run on maps of at most
    /// [`GROUP_MAX_PIXELS`] pixels (from a 24 x 24 input): stem (per
    /// image), a stride-2 block to 6 x 6, a residual block, an activation
    /// on its own (not a stacked op: image by image inside the stacked
    /// part), a residual block without expansion, a 1 x 1 head, pooling, a
    /// fully connected layer. Outputs: pooled features, logits.
    pub(crate) fn small_network(seed: u64) -> Graph {
        let mut s = seed;
        let mut r = move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let mut rv = |n: usize| -> Vec<f32> { (0..n).map(|_| r() * 0.5).collect() };
        let same = |k: usize, st: usize| Geometry::square(k, st, Padding::SameUpper);
        let mut b = GraphBuilder::new(3);
        let x = b.conv("stem", 0, &rv(8 * 3 * 9), [8, 3, 3, 3], Some(&rv(8)), 1, same(3, 2), Activation::RELU6, None).unwrap();
        let e = b.conv("e1", x, &rv(24 * 8), [24, 8, 1, 1], Some(&rv(24)), 1, same(1, 1), Activation::RELU6, None).unwrap();
        let d = b.conv("d1", e, &rv(24 * 9), [24, 1, 3, 3], Some(&rv(24)), 24, same(3, 2), Activation::RELU6, None).unwrap();
        let p = b.conv("p1", d, &rv(12 * 24), [12, 24, 1, 1], Some(&rv(12)), 1, same(1, 1), Activation::None, None).unwrap();
        let e = b.conv("e2", p, &rv(36 * 12), [36, 12, 1, 1], Some(&rv(36)), 1, same(1, 1), Activation::RELU6, None).unwrap();
        let d = b.conv("d2", e, &rv(36 * 25), [36, 1, 5, 5], Some(&rv(36)), 36, same(5, 1), Activation::RELU6, None).unwrap();
        let p = b.conv("p2", d, &rv(12 * 36), [12, 36, 1, 1], Some(&rv(12)), 1, same(1, 1), Activation::None, Some(p)).unwrap();
        let a = b.activation("act", p, Activation::Swish).unwrap();
        let d = b.conv("d3", a, &rv(12 * 9), [12, 1, 3, 3], Some(&rv(12)), 12, same(3, 1), Activation::RELU6, None).unwrap();
        let p = b.conv("p3", d, &rv(12 * 12), [12, 12, 1, 1], Some(&rv(12)), 1, same(1, 1), Activation::None, Some(a)).unwrap();
        let h = b.conv("head", p, &rv(40 * 12), [40, 12, 1, 1], Some(&rv(40)), 1, same(1, 1), Activation::RELU6, None).unwrap();
        let g = b.global_avg_pool("pool", h).unwrap();
        let f = b.dense("fc", g, &rv(40 * 10), 40, 10, Some(&rv(10)), Activation::None).unwrap();
        b.finish(vec![g, f]).unwrap()
    }

    fn random_image(h: usize, w: usize, seed: u64) -> Tensor {
        let mut s = seed;
        Tensor::new(
            h,
            w,
            3,
            (0..h * w * 3)
                .map(|_| {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(7);
                    ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
                })
                .collect::<Vec<f32>>(),
        )
    }

    #[test]
    fn groups_of_images_give_each_image_the_bits_it_gets_alone() {
        let g = small_network(21);
        assert_eq!(g.nodes().iter().filter(|n| matches!(n.op, Op::MbConv(_))).count(), 3);
        for portable in [false, true] {
            let run = |f: &mut dyn FnMut()| if portable { crate::features::portable_only(f) } else { f() };
            // (images, input size, nodes stacked): from the 6 x 6 maps on, blocks 2 and 3,
            // the head, the pooling and the fc layer (the activation runs image by image);
            // from 20 x 20 inputs the stem's 10 x 10 output already stacks (block 1 too)
            for (n, (h, w), want) in [(2, (24, 24), 5), (3, (24, 24), 5), (5, (19, 23), 5), (8, (20, 20), 6), (1, (24, 24), 0)] {
                let inputs: Vec<Tensor> = (0..n).map(|i| random_image(h, w, 100 + i as u64)).collect();
                let mut alone = Vec::new();
                let mut many = Vec::new();
                let before = STACKED_EVALS.with(|c| c.get());
                run(&mut || {
                    alone = inputs.iter().map(|t| g.run(t.clone(), 2, false).unwrap()).collect::<Vec<_>>();
                    many = g.run_many(inputs.clone(), 2);
                });
                let stacked = STACKED_EVALS.with(|c| c.get()) - before;
                assert_eq!(stacked, want, "{n} images of {h} x {w}, portable {portable}");
                assert_eq!(many.len(), n);
                for (i, (a, m)) in alone.iter().zip(many).enumerate() {
                    assert_eq!(a, &m.unwrap(), "image {i} of {n} ({h} x {w}), portable {portable}");
                }
            }
        }
        // features only: the logits' layer is skipped
        let inputs: Vec<Tensor> = (0..3).map(|i| random_image(24, 24, 7 + i)).collect();
        let many = g.run_many(inputs.clone(), 1);
        for (t, m) in inputs.into_iter().zip(many) {
            let m = m.unwrap();
            assert_eq!(m.len(), 1);
            assert_eq!(m, g.run(t, 1, false).unwrap());
        }
    }

    /// Two threads each make `calls` calls `call(k)` on a shared pool
    /// (`k` cycling over the inputs); each result must be `want[k]`.
    fn two_callers(want: &[Vec<Tensor>], calls: usize, threads: usize, call: impl Fn(usize) -> Vec<Tensor> + Sync) {
        std::thread::scope(|sc| {
            for c in 0..2 {
                let call = &call;
                sc.spawn(move || {
                    for i in 0..calls {
                        let k = (i + c) % want.len();
                        assert_eq!(call(k), want[k], "caller {c}, {threads} threads");
                    }
                });
            }
        });
    }

    #[test]
    fn spinning_helpers_change_no_bit_and_always_stop() {
        let g = small_network(5);
        let inputs: Vec<Tensor> = [(64, 64), (57, 71), (24, 24)].iter().enumerate().map(|(i, &(h, w))| random_image(h, w, 40 + i as u64)).collect();
        let want: Vec<Vec<Tensor>> = inputs.iter().map(|t| g.run(t.clone(), 2, false).unwrap()).collect();
        // outside a pool and on one thread: f runs as it is
        assert_eq!(with_spinning_workers(|| g.run(inputs[0].clone(), 2, true).unwrap()), want[0]);
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for (t, w) in inputs.iter().zip(&want) {
                let got = pool.install(|| with_spinning_workers(|| g.run(t.clone(), 2, true).unwrap()));
                assert_eq!(&got, w, "{threads} threads, {} x {}", t.h, t.w);
            }
            // two callers sharing the pool (a helper may be taken by the
            // other caller's thread while it waits): both finish, same bits
            two_callers(&want, 6, threads, |k| {
                pool.install(|| with_spinning_workers(|| g.run(inputs[k].clone(), 2, true).unwrap()))
            });
            // a panic in f reaches the caller and the helpers stop
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.install(|| with_spinning_workers(|| -> usize { panic!("boom") }))
            }));
            assert!(r.is_err(), "{threads} threads");
            assert_eq!(pool.install(|| with_spinning_workers(|| 7)), 7);
        }
    }

    #[test]
    fn lingering_workers_change_no_bit_never_nest_and_stop() {
        use std::sync::atomic::Ordering;
        let g = small_network(5);
        let inputs: Vec<Tensor> = (0..3).map(|i| random_image(32, 32, 60 + i)).collect();
        let want: Vec<Vec<Tensor>> = inputs.iter().map(|t| g.run(t.clone(), 2, false).unwrap()).collect();
        linger_workers(); // outside a pool: nothing to do
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            // one image on all the threads, then lingering, as forward_batch does
            let call = |k: usize| {
                pool.install(|| {
                    let r = with_spinning_workers(|| g.run(inputs[k].clone(), 2, true).unwrap());
                    linger_workers();
                    r
                })
            };
            // a stream of single-image calls: the next call runs inside a
            // lingering job, whose own lingering jobs must not nest inside it
            for i in 0..300 {
                let k = i % inputs.len();
                let got = call(k);
                if i < 12 {
                    assert_eq!(got, want[k], "{threads} threads, call {i}");
                }
            }
            // a second caller on the same pool while the first lingers
            two_callers(&want, 20, threads, call);
        }
        // the streams did run inside lingering jobs, never one inside another
        assert_eq!(LINGER_MAX_DEPTH.load(Ordering::SeqCst), 1);
        // every lingering job ends by itself (2 ms without work; allow 10 s on a loaded machine)
        let start = std::time::Instant::now();
        while LINGER_JOBS.load(Ordering::SeqCst) > 0 {
            assert!(start.elapsed() < std::time::Duration::from_secs(10), "lingering jobs did not stop");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn groups_of_mixed_or_bad_inputs_run_image_by_image() {
        let g = small_network(5);
        // different sizes: each image alone, same values
        let inputs = vec![random_image(24, 24, 1), random_image(16, 30, 2), random_image(24, 24, 3)];
        let many = g.run_many(inputs.clone(), 2);
        for (t, m) in inputs.into_iter().zip(many) {
            assert_eq!(m.unwrap(), g.run(t, 2, false).unwrap());
        }
        // the wrong number of channels: every image gets run's error
        let bad = vec![Tensor::new(4, 4, 2, vec![0.0; 32]), Tensor::new(4, 4, 2, vec![1.0; 32])];
        for r in g.run_many(bad, 1) {
            assert!(r.unwrap_err().to_string().contains("channels"));
        }
        assert!(g.run_many(Vec::new(), 2).is_empty());
    }

    #[test]
    fn convolutions_read_from_the_image_give_the_bits_of_im2col() {
        let mut s = 77u64;
        let mut r = move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        // (h, w, c_in, c_out, k, stride, padding): the stem (SAME, stride 2, even and odd
        // sizes), explicit padding on every side, no padding, a 1 x 1 stride 2, windows wider
        // than the image's inside, 20 outputs (a last panel of 4 columns)
        let cases = [
            (96, 96, 3, 32, 3, 2, Padding::SameUpper),
            (25, 31, 3, 32, 3, 2, Padding::SameUpper),
            (17, 12, 5, 20, 5, 1, Padding::Explicit { top: 2, left: 1, bottom: 0, right: 3 }),
            (9, 14, 4, 16, 3, 1, Padding::Explicit { top: 0, left: 0, bottom: 0, right: 0 }),
            (10, 10, 8, 24, 1, 2, Padding::SameUpper),
            (4, 3, 3, 8, 5, 1, Padding::SameLower),
        ];
        for (i, &(h, w, c_in, c_out, k, stride, padding)) in cases.iter().enumerate() {
            let geom = Geometry::square(k, stride, padding);
            let (oh, ow, win) = geom.output(h, w, "c").unwrap();
            let wts: Vec<f32> = (0..k * k * c_in * c_out).map(|_| r()).collect();
            let bias: Vec<f32> = (0..c_out).map(|_| r()).collect();
            let mat = PackedMatrix::from_row_major(&wts, k * k * c_in, c_out, &bias);
            let x = Tensor::new(h, w, c_in, (0..h * w * c_in).map(|_| r() * 4.0).collect::<Vec<f32>>());
            let res: Vec<f32> = (0..oh * ow * c_out).map(|_| r()).collect();
            for (residual, act) in [(None, Activation::RELU6), (Some(&res[..]), Activation::None)] {
                for portable in [false, true] {
                    let go = |f: &mut dyn FnMut()| if portable { crate::features::portable_only(f) } else { f() };
                    // im2col of every pixel, then one GEMM
                    let mut want = vec![0f32; oh * ow * c_out];
                    let mut cols = vec![0f32; oh * ow * k * k * c_in];
                    go(&mut || {
                        layers::im2col(&x.data, h, w, c_in, 0, c_in, &win, ow, 0, oh * ow, &mut cols);
                        layers::gemm(&cols, oh * ow, k * k * c_in, &mat, &mut want, c_out, residual, act);
                    });
                    let mut got = vec![f32::NAN; oh * ow * c_out];
                    go(&mut || direct_rows(&x, &mat, &win, 0..oh, ow, &mut got, 0, c_out, residual, act));
                    // the rows in two parts
                    let cut = oh / 2;
                    let (a, b) = got.split_at_mut(cut * ow * c_out);
                    let mut parts = || {
                        direct_rows(&x, &mat, &win, 0..cut, ow, a, 0, c_out, residual, act);
                        direct_rows(&x, &mat, &win, cut..oh, ow, b, 0, c_out, residual.map(|r| &r[cut * ow * c_out..]), act);
                    };
                    go(&mut parts);
                    assert!(got == want, "case {i} ({h} x {w}, k {k}, stride {stride}), residual {}, portable {portable}", residual.is_some());
                    // through the graph's convolution (one thread and rows split over threads)
                    let mut via = vec![f32::NAN; oh * ow * c_out];
                    let kernel = ConvKernel::Dense(mat.clone());
                    go(&mut || conv_forward(&x, &kernel, &win, c_out, oh, ow, residual, act, &mut via, false));
                    assert!(via == want, "case {i}: conv_forward");
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
                    let mut via = vec![f32::NAN; oh * ow * c_out];
                    go(&mut || pool.install(|| conv_forward(&x, &kernel, &win, c_out, oh, ow, residual, act, &mut via, true)));
                    assert!(via == want, "case {i}: conv_forward on 3 threads");
                }
            }
        }
    }

    #[test]
    fn a_small_graph_runs_and_frees_its_values() {
        // conv 3 -> 4 (3x3), depthwise, pointwise with residual, pool, dense
        let mut s = 9u64;
        let mut r = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let mut b = GraphBuilder::new(3);
        let w1: Vec<f32> = (0..4 * 3 * 9).map(|_| r()).collect();
        let a = b.conv("c1", 0, &w1, [4, 3, 3, 3], None, 1, Geometry::square(3, 2, Padding::SameUpper), Activation::RELU6, None).unwrap();
        let w2: Vec<f32> = (0..4 * 9).map(|_| r()).collect();
        let d = b.conv("dw", a, &w2, [4, 1, 3, 3], None, 4, Geometry::square(3, 1, Padding::SameUpper), Activation::RELU6, None).unwrap();
        let w3: Vec<f32> = (0..16).map(|_| r()).collect();
        let p = b.conv("pw", d, &w3, [4, 4, 1, 1], None, 1, Geometry::square(1, 1, Padding::SameUpper), Activation::None, Some(a)).unwrap();
        let g = b.global_avg_pool("pool", p).unwrap();
        let wf: Vec<f32> = (0..8).map(|_| r()).collect();
        let f = b.dense("fc", g, &wf, 4, 2, None, Activation::None).unwrap();
        let graph = b.finish(vec![g, f]).unwrap();
        let img: Vec<f32> = (0..9 * 7 * 3).map(|_| r()).collect();
        let outs = graph.run(Tensor::new(9, 7, 3, img.clone()), 2, false).unwrap();
        assert_eq!((outs[0].c, outs[1].c), (4, 2));
        let again = graph.run(Tensor::new(9, 7, 3, img), 1, false).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0], outs[0]);
        // logits from the pooled features by hand
        for j in 0..2 {
            let want: f32 = (0..4).map(|kk| outs[0].data[kk] * wf[kk * 2 + j]).sum();
            assert!((outs[1].data[j] - want).abs() < 1e-6);
        }
    }
}
