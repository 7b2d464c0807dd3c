//! Float image planes, OpenCV's Gaussian kernel, separable Gaussian blur with
//! `BORDER_REFLECT_101`, and the two resizes SIFT uses (2x `INTER_LINEAR`
//! upsampling, `INTER_NEAREST` halving).
//!
//! The kernel follows `cv::getGaussianKernel` for `CV_32F`: size
//! $n = \mathrm{round}(8\sigma + 1) | 1$ (4 sigma each side for float images),
//! weights $e^{-x^2 / 2\sigma^2}$ for $x = i - \lfloor n/2 \rfloor$, normalised
//! in double precision and rounded to `f32`. The blur filters rows, then
//! columns, in `f32`, accumulating the symmetric taps from the centre outwards
//! as OpenCV's `SymmRowSmallFilter`/`SymmColumnFilter` do; exact equality with
//! OpenCV is not possible (it may use IPP or FMA instructions), the difference
//! is a few units in the last place.

/// A row-major `f32` image with `stride == w`.
#[derive(Debug, Clone, Default)]
pub struct Plane {
    pub w: usize,
    pub h: usize,
    pub data: Vec<f32>,
}

impl Plane {
    /// Resize to `w` x `h`, keeping the allocation (contents unspecified).
    pub fn reshape(&mut self, w: usize, h: usize) {
        self.w = w;
        self.h = h;
        self.data.resize(w * h, 0.0);
    }

    /// Row `y`.
    #[inline]
    pub fn row(&self, y: usize) -> &[f32] {
        &self.data[y * self.w..(y + 1) * self.w]
    }

    /// Pixel at column `x`, row `y`.
    #[cfg(test)]
    pub fn at(&self, x: usize, y: usize) -> f32 {
        self.data[y * self.w + x]
    }
}

/// OpenCV's `borderInterpolate` for `BORDER_REFLECT_101` (`gfedcb|abcdefgh|gfedcba`),
/// reflecting as many times as needed.
#[inline]
pub fn reflect101(mut p: isize, len: usize) -> usize {
    let len = len as isize;
    if len == 1 {
        return 0;
    }
    while p < 0 || p >= len {
        if p < 0 {
            p = -p;
        } else {
            p = 2 * len - 2 - p;
        }
    }
    p as usize
}

/// Kernel size OpenCV's `GaussianBlur(..., Size(), sigma)` picks for float images.
pub fn kernel_size(sigma: f64) -> usize {
    ((sigma * 4.0 * 2.0 + 1.0).round_ties_even() as i64 | 1).max(1) as usize
}

/// OpenCV's `getGaussianKernel(kernel_size(sigma), sigma, CV_32F)`.
pub fn gaussian_kernel(sigma: f64) -> Vec<f32> {
    let n = kernel_size(sigma);
    let half = n / 2;
    let scale2x = -0.5 / (sigma * sigma);
    let values: Vec<f64> = (0..half)
        .map(|i| {
            let x = i as f64 - half as f64;
            (x * x * scale2x).exp()
        })
        .collect();
    let sum = 2.0 * values.iter().sum::<f64>() + 1.0;
    let mul = 1.0 / sum;
    let mut k = vec![0f32; n];
    for (i, v) in values.iter().enumerate() {
        let t = (v * mul) as f32;
        k[i] = t;
        k[n - 1 - i] = t;
    }
    k[half] = mul as f32;
    k
}

/// Work buffers of [`gaussian_blur`].
#[derive(Debug, Default)]
pub struct BlurScratch {
    tmp: Vec<f32>,
    row: Vec<f32>,
}

/// `dst = GaussianBlur(src)` with a symmetric odd `kernel`, `BORDER_REFLECT_101`.
///
/// # Panics
/// If `kernel` has an even length or `src` is empty.
pub fn gaussian_blur(src: &Plane, kernel: &[f32], scratch: &mut BlurScratch, dst: &mut Plane) {
    assert!(kernel.len() % 2 == 1 && src.w > 0 && src.h > 0);
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { gaussian_blur_avx2(src, kernel, scratch, dst) };
            return;
        }
    }
    gaussian_blur_generic(src, kernel, scratch, dst);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gaussian_blur_avx2(src: &Plane, kernel: &[f32], scratch: &mut BlurScratch, dst: &mut Plane) {
    gaussian_blur_generic(src, kernel, scratch, dst);
}

// `inline(always)` so that the body is compiled again inside the AVX2 wrapper.
// Both copies perform the same f32 operations in the same order (no FMA
// contraction in Rust), so the results do not depend on the CPU.
#[inline(always)]
fn gaussian_blur_generic(src: &Plane, kernel: &[f32], scratch: &mut BlurScratch, dst: &mut Plane) {
    let (w, h) = (src.w, src.h);
    let r = kernel.len() / 2;
    let kc = &kernel[r..]; // kc[0] centre, kc[j] weight at distance j
    dst.reshape(w, h);
    scratch.tmp.resize(w * h, 0.0);
    scratch.row.resize(w + 2 * r, 0.0);

    // Horizontal pass into tmp.
    let row = &mut scratch.row;
    for y in 0..h {
        let s = src.row(y);
        row[r..r + w].copy_from_slice(s);
        for j in 1..=r {
            row[r - j] = s[reflect101(-(j as isize), w)];
            row[r + w - 1 + j] = s[reflect101((w - 1 + j) as isize, w)];
        }
        let out = &mut scratch.tmp[y * w..(y + 1) * w];
        let k0 = kc[0];
        for (o, &v) in out.iter_mut().zip(&row[r..r + w]) {
            *o = k0 * v;
        }
        for (j, &kj) in kc.iter().enumerate().skip(1) {
            let left = &row[r - j..r - j + w];
            let right = &row[r + j..r + j + w];
            for ((o, &a), &b) in out.iter_mut().zip(left).zip(right) {
                *o += kj * (a + b);
            }
        }
    }

    // Vertical pass into dst.
    let tmp = &scratch.tmp;
    for y in 0..h {
        let out = &mut dst.data[y * w..(y + 1) * w];
        let k0 = kc[0];
        for (o, &v) in out.iter_mut().zip(&tmp[y * w..(y + 1) * w]) {
            *o = k0 * v;
        }
        for (j, &kj) in kc.iter().enumerate().skip(1) {
            let ya = reflect101(y as isize - j as isize, h);
            let yb = reflect101((y + j) as isize, h);
            let a = &tmp[ya * w..(ya + 1) * w];
            let b = &tmp[yb * w..(yb + 1) * w];
            for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
                *o += kj * (a + b);
            }
        }
    }
}

/// `resize(src, 2w x 2h, INTER_LINEAR)` of an 8-bit image, converted to float.
///
/// Source coordinates are `(d + 0.5) / 2 - 0.5`, clamped at the borders, so
/// every output pixel is `0.75 a + 0.25 b` along each axis. All values are
/// multiples of 1/16 below 256, so the result is exact whatever the order of
/// operations, and equal to OpenCV's.
pub fn upsample2x_linear(src: &[u8], w: usize, h: usize, tmp: &mut Vec<f32>, dst: &mut Plane) {
    let (dw, dh) = (2 * w, 2 * h);
    dst.reshape(dw, dh);
    // Horizontal interpolation of every source row into tmp (h x dw).
    tmp.resize(h * dw, 0.0);
    for y in 0..h {
        let s = &src[y * w..(y + 1) * w];
        let o = &mut tmp[y * dw..(y + 1) * dw];
        o[0] = s[0] as f32;
        o[dw - 1] = s[w - 1] as f32;
        for x in 0..w - 1 {
            let a = s[x] as f32;
            let b = s[x + 1] as f32;
            o[2 * x + 1] = a * 0.75 + b * 0.25;
            o[2 * x + 2] = a * 0.25 + b * 0.75;
        }
    }
    // Vertical interpolation.
    dst.data[..dw].copy_from_slice(&tmp[..dw]);
    dst.data[(dh - 1) * dw..].copy_from_slice(&tmp[(h - 1) * dw..]);
    for y in 0..h - 1 {
        let a = &tmp[y * dw..(y + 1) * dw];
        let b = &tmp[(y + 1) * dw..(y + 2) * dw];
        let (o1, o2) = dst.data[(2 * y + 1) * dw..(2 * y + 3) * dw].split_at_mut(dw);
        for (((p, q), &a), &b) in o1.iter_mut().zip(o2.iter_mut()).zip(a).zip(b) {
            *p = a * 0.75 + b * 0.25;
            *q = a * 0.25 + b * 0.75;
        }
    }
}

/// An 8-bit image as a float plane (no doubling).
pub fn to_plane(src: &[u8], w: usize, h: usize, dst: &mut Plane) {
    dst.reshape(w, h);
    for (o, &v) in dst.data.iter_mut().zip(src) {
        *o = v as f32;
    }
}

/// `resize(src, (w / 2, h / 2), INTER_NEAREST)`: OpenCV's `resizeNN`, which
/// reads source index `min(floor(d * w / (w / 2)), w - 1)` (not `2 d` when the
/// size is odd).
pub fn halve_nearest(src: &Plane, dst: &mut Plane) {
    let (dw, dh) = (src.w / 2, src.h / 2);
    dst.reshape(dw, dh);
    if dw == 0 || dh == 0 {
        return;
    }
    let ifx = 1.0 / (dw as f64 / src.w as f64);
    let ify = 1.0 / (dh as f64 / src.h as f64);
    let map = |d: usize, inv: f64, n: usize| ((d as f64 * inv).floor() as usize).min(n - 1);
    let xs: Vec<usize> = (0..dw).map(|x| map(x, ifx, src.w)).collect();
    for y in 0..dh {
        let s = src.row(map(y, ify, src.h));
        let o = &mut dst.data[y * dw..(y + 1) * dw];
        for (o, &sx) in o.iter_mut().zip(&xs) {
            *o = s[sx];
        }
    }
}

/// `dst = a - b`.
pub fn subtract(a: &Plane, b: &Plane, dst: &mut Plane) {
    dst.reshape(a.w, a.h);
    for ((o, &x), &y) in dst.data.iter_mut().zip(&a.data).zip(&b.data) {
        *o = x - y;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    #[test]
    fn kernel_sums_to_one_and_matches_opencv() {
        for &s in &[0.5, 1.0, 1.2489996, 1.2262735, 1.5450850, 1.9465878, 2.4525469, 3.0899693] {
            let k = gaussian_kernel(s);
            let sum: f64 = k.iter().map(|&v| v as f64).sum();
            assert_relative_eq!(sum, 1.0, epsilon = 1e-6);
            assert_eq!(k.len() % 2, 1);
            for i in 0..k.len() / 2 {
                assert_eq!(k[i], k[k.len() - 1 - i]);
                assert!(k[i] < k[i + 1]);
            }
        }
        // cv2.getGaussianKernel(11, 1.2489996, cv2.CV_32F).ravel()[:6]
        let k = gaussian_kernel(1.2489996);
        assert_eq!(k.len(), 11);
        let cv = [1.0578566e-04f32, 1.8932123e-03, 1.7847523e-02, 8.8626318e-02, 2.3182142e-01, 3.1941149e-01];
        for (a, b) in k.iter().zip(cv.iter()) {
            assert_relative_eq!(*a, *b, max_relative = 1e-5);
        }
        // Sizes OpenCV picks: round(8 sigma + 1) | 1.
        assert_eq!(kernel_size(1.6), 15);
        assert_eq!(kernel_size(3.0899693), 27);
        assert_eq!(kernel_size(1.2262735), 11);
    }

    #[test]
    fn reflect101_matches_opencv() {
        // gfedcb|abcdefgh|gfedcba
        assert_eq!(reflect101(-1, 8), 1);
        assert_eq!(reflect101(-6, 8), 6);
        assert_eq!(reflect101(8, 8), 6);
        assert_eq!(reflect101(13, 8), 1);
        assert_eq!(reflect101(-3, 3), 1); // reflects twice
        assert_eq!(reflect101(5, 1), 0);
    }

    #[test]
    fn blur_preserves_constant_and_mass() {
        let src = Plane { w: 7, h: 5, data: vec![3.0; 35] };
        let mut dst = Plane::default();
        let mut s = BlurScratch::default();
        gaussian_blur(&src, &gaussian_kernel(3.09), &mut s, &mut dst);
        for v in &dst.data {
            assert_relative_eq!(*v, 3.0, max_relative = 1e-5);
        }
        // An impulse in the middle of a large image spreads as the outer product.
        let mut src = Plane { w: 31, h: 31, data: vec![0.0; 31 * 31] };
        src.data[15 * 31 + 15] = 1.0;
        let k = gaussian_kernel(1.6);
        gaussian_blur(&src, &k, &mut s, &mut dst);
        let r = k.len() / 2;
        assert_relative_eq!(dst.at(15, 15), k[r] * k[r], max_relative = 1e-6);
        assert_relative_eq!(dst.at(17, 14), k[r + 2] * k[r + 1], max_relative = 1e-6);
    }

    #[test]
    fn upsample_matches_opencv_bilinear() {
        // cv2.resize(np.float32([[0, 4], [8, 16]]), (4, 4), interpolation=cv2.INTER_LINEAR)
        let mut dst = Plane::default();
        let mut tmp = Vec::new();
        upsample2x_linear(&[0, 4, 8, 16], 2, 2, &mut tmp, &mut dst);
        let want = [
            0.0, 1.0, 3.0, 4.0, //
            2.0, 3.25, 5.75, 7.0, //
            6.0, 7.75, 11.25, 13.0, //
            8.0, 10.0, 14.0, 16.0,
        ];
        assert_eq!(dst.data, want);
    }

    #[test]
    fn halving_follows_resize_nn() {
        let src = Plane { w: 5, h: 3, data: (0..15).map(|v| v as f32).collect() };
        let mut dst = Plane::default();
        halve_nearest(&src, &mut dst);
        // cv2.resize(a, (2, 1), interpolation=cv2.INTER_NEAREST): columns 0 and 2 (floor(1 * 2.5)), row 0.
        assert_eq!((dst.w, dst.h), (2, 1));
        assert_eq!(dst.data, vec![0.0, 2.0]);
    }
}
