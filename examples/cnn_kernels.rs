//! Timings of the CNN kernels on EfficientNet-Lite0's layer shapes, one
//! thread: the packed GEMM (1 x 1 convolutions) and the depthwise
//! convolution, best of 5 runs of each. Compare two builds by running this
//! on each checkout (times vary with the machine's load; run it twice).
//!
//! `cargo run --release --example cnn_kernels`

use std::time::Instant;

use bovw::cnn::layers::{depthwise, gemm, Activation, Depthwise, PackedMatrix, Window};

fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() / reps as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let mut s = 1u64;
    let mut r = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    // (m = pixels, k, n): expansions and projections at 100 px input
    for &(m, k, n) in &[(2500usize, 16usize, 96usize), (625, 24, 144), (49, 480, 112), (16, 1152, 192), (16, 320, 1280)] {
        let x: Vec<f32> = (0..m * k).map(|_| r()).collect();
        let w: Vec<f32> = (0..k * n).map(|_| r()).collect();
        let pm = PackedMatrix::from_row_major(&w, k, n, &vec![0.0; n]);
        let mut out = vec![0f32; m * n];
        let t = best_of((50_000_000 / (m * k * n)).max(5), || gemm(&x, m, k, &pm, &mut out, n, None, Activation::RELU6));
        println!("gemm {m} x {k} x {n}: {:.1} us, {:.1} GMAC/s", t * 1e6, (m * k * n) as f64 / t / 1e9);
    }
    // (h = w, c, k, stride), SAME padding
    for &(h, c, kk, st) in &[(50usize, 96usize, 3usize, 2usize), (25, 144, 3, 1), (13, 240, 5, 1), (7, 480, 3, 1), (7, 672, 5, 1), (4, 1152, 5, 1)] {
        let x: Vec<f32> = (0..h * h * c).map(|_| r()).collect();
        let f: Vec<f32> = (0..c * kk * kk).map(|_| r()).collect();
        let dw = Depthwise::from_fn(c, kk, kk, &vec![0.0; c], |ch, ky, kx| f[(ch * kk + ky) * kk + kx]);
        let oh = h.div_ceil(st);
        let pad = ((oh - 1) * st + kk).saturating_sub(h) / 2;
        let win = Window { kh: kk, kw: kk, stride_h: st, stride_w: st, dilation_h: 1, dilation_w: 1, pad_top: pad, pad_left: pad };
        let mut out = vec![0f32; oh * oh * c];
        let t = best_of(200, || depthwise(&x, h, h, &dw, &win, oh, oh, &mut out, Activation::RELU6));
        println!("depthwise {h} x {h} x {c}, {kk} x {kk}, stride {st}: {:.1} us, {:.1} GMAC/s", t * 1e6, (oh * oh * c * kk * kk) as f64 / t / 1e9);
    }
}
