//! Float image planes, separable Gaussian blur with `BORDER_REFLECT_101`, and
//! the two resizes SIFT uses (2x `INTER_LINEAR` upsampling, `INTER_NEAREST`
//! halving).
//!
//! The kernel is OpenCV's ([`gaussian_blur_kernel`](crate::features::cv::gaussian_blur_kernel): `getGaussianKernel` of
//! the size `GaussianBlur` picks for float images). The blur filters rows, then
//! columns, in `f32`, accumulating the symmetric taps from the centre outwards
//! as OpenCV's `SymmRowSmallFilter`/`SymmColumnFilter` do; exact equality with
//! OpenCV is not possible (it may use IPP or FMA instructions), the difference
//! is a few units in the last place.

use crate::features::cv::reflect101;

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

/// Work buffers of [`gaussian_blur`].
#[derive(Debug, Default)]
pub struct BlurScratch {
    tmp: Vec<f32>,
    row: Vec<f32>,
    vrow: Vec<f32>,
    offs: Vec<usize>,
}

impl BlurScratch {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        4 * (self.tmp.capacity() + self.row.capacity() + self.vrow.capacity()) + 8 * self.offs.capacity()
    }
}

/// `dst = GaussianBlur(src)` with a symmetric odd `kernel`, `BORDER_REFLECT_101`.
///
/// Each output is `kc[0] * s(0) + sum_j kc[j] * (s(-j) + s(j))` with `kc` the
/// right half of the kernel, the taps added from the centre outwards, rows
/// first, then columns. On x86-64 CPUs with AVX2 the same operations run 8
/// lanes at a time (no fused multiply-add), so the result is the same on
/// every CPU.
///
/// # Panics
/// If `kernel` has an even length or `src` is empty.
pub fn gaussian_blur(src: &Plane, kernel: &[f32], scratch: &mut BlurScratch, dst: &mut Plane) {
    gaussian_blur_dog(src, kernel, scratch, dst, None);
}

/// [`gaussian_blur`], and when `dog` is given, also `dog = dst - src` (the
/// difference of Gaussians), computed row by row while the rows are in cache.
///
/// # Panics
/// If `kernel` has an even length or `src` is empty.
pub fn gaussian_blur_dog(src: &Plane, kernel: &[f32], scratch: &mut BlurScratch, dst: &mut Plane, dog: Option<&mut Plane>) {
    assert!(kernel.len() % 2 == 1 && src.w > 0 && src.h > 0);
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { gaussian_blur_avx2(src, kernel, scratch, dst, dog) };
            return;
        }
    }
    gaussian_blur_impl::<Scalar>(src, kernel, scratch, dst, dog);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gaussian_blur_avx2(src: &Plane, kernel: &[f32], scratch: &mut BlurScratch, dst: &mut Plane, dog: Option<&mut Plane>) {
    gaussian_blur_impl::<avx2::Avx2>(src, kernel, scratch, dst, dog);
}

/// Lanes per group: rows are padded to a multiple of this.
const LANES: usize = 8;
/// Groups of [`LANES`] outputs computed together in the main loop.
const GROUPS: usize = 4;

/// One block of `G * LANES` outputs of the symmetric filter.
trait Taps {
    /// `out[l] = kc[0] * c[l] + sum_{j >= 1} kc[j] * (m(j)[l] + p(j)[l])` for
    /// `l < G * LANES`.
    ///
    /// # Safety
    /// Every pointer must be valid for `G * LANES` reads (`out`: writes).
    unsafe fn block<const G: usize>(
        kc: &[f32],
        c: *const f32,
        m: impl Fn(usize) -> *const f32,
        p: impl Fn(usize) -> *const f32,
        out: *mut f32,
    );
}

struct Scalar;

impl Taps for Scalar {
    #[inline(always)]
    unsafe fn block<const G: usize>(
        kc: &[f32],
        c: *const f32,
        m: impl Fn(usize) -> *const f32,
        p: impl Fn(usize) -> *const f32,
        out: *mut f32,
    ) {
        for l in 0..G * LANES {
            let mut acc = kc[0] * *c.add(l);
            for (j, &kj) in kc.iter().enumerate().skip(1) {
                acc += kj * (*m(j).add(l) + *p(j).add(l));
            }
            *out.add(l) = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Taps, LANES};
    use std::arch::x86_64::*;

    pub struct Avx2;

    impl Taps for Avx2 {
        #[inline(always)]
        unsafe fn block<const G: usize>(
            kc: &[f32],
            c: *const f32,
            m: impl Fn(usize) -> *const f32,
            p: impl Fn(usize) -> *const f32,
            out: *mut f32,
        ) {
            let k0 = _mm256_set1_ps(kc[0]);
            let mut acc = [_mm256_setzero_ps(); G];
            for (g, a) in acc.iter_mut().enumerate() {
                *a = _mm256_mul_ps(k0, _mm256_loadu_ps(c.add(g * LANES)));
            }
            for (j, &kj) in kc.iter().enumerate().skip(1) {
                let kj = _mm256_set1_ps(kj);
                let (a, b) = (m(j), p(j));
                for (g, acc) in acc.iter_mut().enumerate() {
                    let s = _mm256_add_ps(_mm256_loadu_ps(a.add(g * LANES)), _mm256_loadu_ps(b.add(g * LANES)));
                    *acc = _mm256_add_ps(*acc, _mm256_mul_ps(kj, s));
                }
            }
            for (g, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(out.add(g * LANES), *a);
            }
        }
    }
}

/// Filter `n` outputs (a multiple of [`LANES`]) starting at `x`, in blocks of
/// `GROUPS * LANES` then `LANES`.
#[inline(always)]
unsafe fn filter_span<T: Taps>(
    kc: &[f32],
    n: usize,
    c: impl Fn(usize) -> *const f32,
    m: impl Fn(usize, usize) -> *const f32,
    p: impl Fn(usize, usize) -> *const f32,
    out: *mut f32,
) {
    let mut x = 0;
    while x + GROUPS * LANES <= n {
        T::block::<GROUPS>(kc, c(x), |j| m(x, j), |j| p(x, j), out.add(x));
        x += GROUPS * LANES;
    }
    while x < n {
        T::block::<1>(kc, c(x), |j| m(x, j), |j| p(x, j), out.add(x));
        x += LANES;
    }
}

#[inline(always)]
fn gaussian_blur_impl<T: Taps>(src: &Plane, kernel: &[f32], scratch: &mut BlurScratch, dst: &mut Plane, mut dog: Option<&mut Plane>) {
    let (w, h) = (src.w, src.h);
    if let Some(d) = dog.as_deref_mut() {
        d.reshape(w, h);
    }
    let r = kernel.len() / 2;
    let kc = &kernel[r..]; // kc[0] centre, kc[j] weight at distance j
    let ws = w.div_ceil(LANES) * LANES; // padded row length
    dst.reshape(w, h);
    scratch.tmp.resize(ws * h, 0.0);
    scratch.row.resize(ws + 2 * r, 0.0);
    scratch.vrow.resize(ws, 0.0);
    scratch.offs.resize(2 * r + 1, 0);

    // Horizontal pass into tmp (row stride ws): each row is copied into a
    // buffer padded by its reflection (and by stale values past the
    // reflection, which only reach the padding columns), then filtered.
    let row = &mut scratch.row;
    for y in 0..h {
        let s = src.row(y);
        row[r..r + w].copy_from_slice(s);
        for j in 1..=r {
            row[r - j] = s[reflect101(-(j as isize), w)];
            row[r + w - 1 + j] = s[reflect101((w - 1 + j) as isize, w)];
        }
        let out = &mut scratch.tmp[y * ws..(y + 1) * ws];
        let rp = row.as_ptr();
        // SAFETY: reads reach index x + r + j + LANES * G <= ws + 2r = row.len();
        // writes stay within out (ws values).
        unsafe {
            filter_span::<T>(kc, ws, |x| rp.add(x + r), |x, j| rp.add(x + r - j), |x, j| rp.add(x + r + j), out.as_mut_ptr());
        }
    }

    // Vertical pass into dst, through the padded row vrow.
    let tmp = scratch.tmp.as_ptr();
    let offs = &mut scratch.offs;
    for y in 0..h {
        for (t, o) in offs.iter_mut().enumerate() {
            *o = reflect101(y as isize + t as isize - r as isize, h) * ws;
        }
        let offs: &[usize] = offs;
        // SAFETY: every offset is a row start below (h - 1) * ws + 1 and
        // reads cover x + LANES * G <= ws values of that row; writes stay
        // within vrow (ws values).
        unsafe {
            filter_span::<T>(
                kc,
                ws,
                |x| tmp.add(offs[r] + x),
                |x, j| tmp.add(offs[r - j] + x),
                |x, j| tmp.add(offs[r + j] + x),
                scratch.vrow.as_mut_ptr(),
            );
        }
        let row = &scratch.vrow[..w];
        dst.data[y * w..(y + 1) * w].copy_from_slice(row);
        if let Some(d) = dog.as_deref_mut() {
            for ((o, &a), &b) in d.data[y * w..(y + 1) * w].iter_mut().zip(row).zip(src.row(y)) {
                *o = a - b;
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

/// `dst = a - b` (the DoG is computed inside [`gaussian_blur_dog`]; this
/// checks it in the tests).
#[cfg(test)]
pub fn subtract(a: &Plane, b: &Plane, dst: &mut Plane) {
    #[inline(always)]
    fn body(a: &Plane, b: &Plane, dst: &mut Plane) {
        dst.reshape(a.w, a.h);
        for ((o, &x), &y) in dst.data.iter_mut().zip(&a.data).zip(&b.data) {
            *o = x - y;
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2(a: &Plane, b: &Plane, dst: &mut Plane) {
        body(a, b, dst)
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { avx2(a, b, dst) };
            return;
        }
    }
    body(a, b, dst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::cv::gaussian_blur_kernel;
    use approx::assert_relative_eq;

    #[test]
    fn simd_and_scalar_paths_agree_bit_for_bit() {
        for &(w, h) in &[(1usize, 1usize), (5, 3), (37, 23), (64, 40), (203, 17)] {
            let src = Plane { w, h, data: (0..w * h).map(|i| ((i * 37 % 101) as f32).sqrt() * 7.3).collect() };
            for &sigma in &[0.7, 1.6, 3.09] {
                let k = gaussian_blur_kernel(sigma);
                let (mut a, mut b) = (Plane::default(), Plane::default());
                let mut s = BlurScratch::default();
                let (mut da, mut db) = (Plane::default(), Plane::default());
                gaussian_blur_dog(&src, &k, &mut s, &mut a, Some(&mut da));
                gaussian_blur_impl::<Scalar>(&src, &k, &mut s, &mut b, Some(&mut db));
                assert_eq!(a.data, b.data, "{w}x{h} sigma {sigma}");
                assert_eq!(da.data, db.data);
                let mut d = Plane::default();
                subtract(&a, &src, &mut d);
                assert_eq!(d.data, da.data);
                // Spot check against the direct formula with reflected indices.
                let r = k.len() / 2;
                let (x, y) = (w - 1, h / 2);
                let mut want = 0f64;
                for dy in 0..k.len() {
                    for dx in 0..k.len() {
                        let sx = reflect101(x as isize + dx as isize - r as isize, w);
                        let sy = reflect101(y as isize + dy as isize - r as isize, h);
                        want += k[dy] as f64 * k[dx] as f64 * src.data[sy * w + sx] as f64;
                    }
                }
                assert_relative_eq!(a.at(x, y) as f64, want, max_relative = 1e-5);
            }
        }
    }

    #[test]
    fn blur_preserves_constant_and_mass() {
        let src = Plane { w: 7, h: 5, data: vec![3.0; 35] };
        let mut dst = Plane::default();
        let mut s = BlurScratch::default();
        gaussian_blur(&src, &gaussian_blur_kernel(3.09), &mut s, &mut dst);
        for v in &dst.data {
            assert_relative_eq!(*v, 3.0, max_relative = 1e-5);
        }
        // An impulse in the middle of a large image spreads as the outer product.
        let mut src = Plane { w: 31, h: 31, data: vec![0.0; 31 * 31] };
        src.data[15 * 31 + 15] = 1.0;
        let k = gaussian_blur_kernel(1.6);
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
