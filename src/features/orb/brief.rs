//! ORB's rotated BRIEF descriptor (`computeOrbDescriptors` in
//! `modules/features2d/src/orb.cpp`): the test points of the learned
//! [`pattern`](super::pattern) (or OpenCV's fixed-seed random pattern when
//! `patch_size != 31`) are rotated by the keypoint angle, rounded to the
//! nearest pixel and compared on the smoothed level: bit $= [I(p_0) < I(p_1)]$
//! for `wta_k = 2`, 2-bit argmax codes of 3 or 4 points for `wta_k = 3, 4`.

use super::pattern::BIT_PATTERN_31;
use super::pyramid::Level;
use super::{Orb, DESCRIPTOR_BYTES};
use crate::features::cv::{cv_round, round_magic, ROUND_MAGIC};
use crate::features::KeyPoint;

/// OpenCV's `cv::RNG` (multiply-with-carry), for its fixed-seed patterns.
struct CvRng(u64);

impl CvRng {
    fn new(seed: u64) -> Self {
        CvRng(if seed == 0 { 0xffff_ffff } else { seed })
    }
    fn next(&mut self) -> u32 {
        self.0 = (self.0 as u32 as u64).wrapping_mul(4_164_903_690u64).wrapping_add(self.0 >> 32);
        self.0 as u32
    }
    /// Integer uniform in `[a, b)`.
    fn uniform(&mut self, a: i32, b: i32) -> i32 {
        if a == b {
            a
        } else {
            (self.next() % (b - a) as u32) as i32 + a
        }
    }
}

/// The descriptor test points: OpenCV's learned pattern for `patch_size` 31,
/// otherwise its fixed-seed random pattern; regrouped into tuples for
/// `wta_k` 3 and 4 as `initializeOrbPattern` does.
pub(super) fn make_pattern(patch_size: usize, wta_k: usize) -> Vec<(i32, i32)> {
    const NPOINTS: usize = 512;
    let mut pool: Vec<(i32, i32)> = Vec::with_capacity(NPOINTS);
    if patch_size == 31 {
        for p in BIT_PATTERN_31.iter() {
            pool.push((p[0] as i32, p[1] as i32));
            pool.push((p[2] as i32, p[3] as i32));
        }
    } else {
        let mut rng = CvRng::new(0x3498_5739);
        let half = patch_size as i32 / 2;
        for _ in 0..NPOINTS {
            let x = rng.uniform(-half, half + 1);
            let y = rng.uniform(-half, half + 1);
            pool.push((x, y));
        }
    }
    if wta_k == 2 {
        return pool;
    }
    let ntuples = DESCRIPTOR_BYTES * 4;
    let mut rng = CvRng::new(0x1234_5678);
    let mut out = vec![(0, 0); ntuples * wta_k];
    for i in 0..ntuples {
        for k in 0..wta_k {
            loop {
                let idx = rng.uniform(0, NPOINTS as i32) as usize;
                let pt = pool[idx];
                if !out[wta_k * i..wta_k * i + k].contains(&pt) {
                    out[wta_k * i + k] = pt;
                    break;
                }
            }
        }
    }
    out
}

/// The 256 tests of a `wta_k = 2` descriptor around `data[center]` (row
/// stride `step`): the pattern rotated by (cos, sin) = (a, b) with the same
/// float operations as the portable path (no FMA), rounded half to even,
/// sampled, and compared 32 pairs per vector. Returns false, writing
/// nothing, when a rotated point lies farther than `reach` from the centre
/// on either axis.
///
/// # Safety
/// AVX2 must be available, `pat_x.len() == pat_y.len() == 512`,
/// `desc.len() == 32`, and `data` must hold every pixel within `reach` rows
/// and columns of `center`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn brief_wta2_avx2(data: &[u8], center: usize, step: i32, reach: i32, pat_x: &[f32], pat_y: &[f32], a: f32, b: f32, desc: &mut [u8]) -> bool {
    use std::arch::x86_64::*;
    assert!(pat_x.len() == 512 && pat_y.len() == 512 && desc.len() == DESCRIPTOR_BYTES);
    let magic = _mm256_set1_ps(ROUND_MAGIC);
    let magic_bits = _mm256_set1_epi32(ROUND_MAGIC.to_bits() as i32);
    let (va, vb, vstep) = (_mm256_set1_ps(a), _mm256_set1_ps(b), _mm256_set1_epi32(step));
    let mut ofs = [0i32; 512];
    let mut far = _mm256_setzero_si256();
    let lim = _mm256_set1_epi32(reach);
    for i in (0..512).step_by(8) {
        let px = _mm256_loadu_ps(pat_x.as_ptr().add(i));
        let py = _mm256_loadu_ps(pat_y.as_ptr().add(i));
        let x = _mm256_sub_ps(_mm256_mul_ps(px, va), _mm256_mul_ps(py, vb));
        let y = _mm256_add_ps(_mm256_mul_ps(px, vb), _mm256_mul_ps(py, va));
        let rx = _mm256_sub_epi32(_mm256_castps_si256(_mm256_add_ps(x, magic)), magic_bits);
        let ry = _mm256_sub_epi32(_mm256_castps_si256(_mm256_add_ps(y, magic)), magic_bits);
        far = _mm256_or_si256(far, _mm256_cmpgt_epi32(_mm256_abs_epi32(rx), lim));
        far = _mm256_or_si256(far, _mm256_cmpgt_epi32(_mm256_abs_epi32(ry), lim));
        let o = _mm256_add_epi32(_mm256_mullo_epi32(ry, vstep), rx);
        _mm256_storeu_si256(ofs.as_mut_ptr().add(i) as *mut __m256i, o);
    }
    if _mm256_testz_si256(far, far) == 0 {
        return false;
    }
    let c = data.as_ptr().add(center);
    let mut s0 = [0u8; 256];
    let mut s1 = [0u8; 256];
    for k in 0..256 {
        // SAFETY: |rx|, |ry| <= reach (checked above) and the caller
        // guarantees every pixel within `reach` of the centre is in `data`
        s0[k] = *c.offset(ofs[2 * k] as isize);
        s1[k] = *c.offset(ofs[2 * k + 1] as isize);
    }
    let sign = _mm256_set1_epi8(i8::MIN);
    for q in 0..8 {
        let x0 = _mm256_xor_si256(_mm256_loadu_si256(s0.as_ptr().add(32 * q) as *const __m256i), sign);
        let x1 = _mm256_xor_si256(_mm256_loadu_si256(s1.as_ptr().add(32 * q) as *const __m256i), sign);
        // bit k of the descriptor: sample 2k < sample 2k + 1 (unsigned)
        let bits = _mm256_movemask_epi8(_mm256_cmpgt_epi8(x1, x0)) as u32;
        desc[4 * q..4 * q + 4].copy_from_slice(&bits.to_le_bytes());
    }
    true
}

impl Orb {
    /// Descriptors of keypoints (level-0 coordinates, `octave` = level) on the
    /// pyramid; smooths the levels that have keypoints.
    pub(super) fn describe(&self, levels: &mut [Option<Level>], kps: &[KeyPoint]) -> Vec<u8> {
        // smooth, on each level, only the box the descriptors sample:
        // keypoint centres +- the pattern's reach (the rest is never read)
        let reach = self.pattern.iter().map(|&(x, y)| (((x * x + y * y) as f64).sqrt().ceil() as isize) + 1).max().unwrap_or(0);
        self.smooth_for_descriptors(levels, kps, reach);
        let mut out = vec![0u8; kps.len() * DESCRIPTOR_BYTES];
        let deg2rad = (std::f64::consts::PI / 180.0) as f32;
        let npts = self.pattern.len();
        let pat_x: Vec<f32> = self.pattern.iter().map(|p| p.0 as f32).collect();
        let pat_y: Vec<f32> = self.pattern.iter().map(|p| p.1 as f32).collect();
        let mut rx = vec![0i32; npts];
        let mut ry = vec![0i32; npts];
        let mut ofs = vec![0usize; npts];
        #[cfg(target_arch = "x86_64")]
        let avx2 = crate::features::use_avx2();
        for (k, desc) in kps.iter().zip(out.chunks_exact_mut(DESCRIPTOR_BYTES)) {
            let Some(level) = levels[k.octave as usize].as_ref() else { continue };
            let scale = 1.0f32 / self.level_scale(k.octave as usize);
            let cx = cv_round(k.x * scale) as isize;
            let cy = cv_round(k.y * scale) as isize;
            let angle = k.angle * deg2rad;
            let (a, b) = (angle.cos(), angle.sin());
            let (pw, ph) = (level.stride as isize, (level.data.len() / level.stride) as isize);
            let bx = cx + level.border as isize;
            let by = cy + level.border as isize;
            #[cfg(target_arch = "x86_64")]
            {
                if self.params.wta_k == 2 && npts == 512 && avx2 && bx >= reach && by >= reach && bx + reach < pw && by + reach < ph {
                    // SAFETY: AVX2 is available; the samples are checked to
                    // lie within `reach` of the centre, which is at least
                    // `reach` from every edge of the buffer.
                    if unsafe { brief_wta2_avx2(&level.data, (by * pw + bx) as usize, pw as i32, reach as i32, &pat_x, &pat_y, a, b, desc) } {
                        continue;
                    }
                }
            }
            for i in 0..npts {
                let x = pat_x[i] * a - pat_y[i] * b;
                let y = pat_x[i] * b + pat_y[i] * a;
                // a vectorisable cvRound (|x| < 2^22)
                rx[i] = round_magic(x);
                ry[i] = round_magic(y);
            }
            if bx >= reach && by >= reach && bx + reach < pw && by + reach < ph {
                // every sample is inside the buffer (always so for detected keypoints)
                let base = by * pw + bx;
                for i in 0..npts {
                    ofs[i] = (base + ry[i] as isize * pw + rx[i] as isize) as usize;
                }
            } else {
                // user keypoints near the border: clamp to the buffer
                for i in 0..npts {
                    let sx = (bx + rx[i] as isize).clamp(0, pw - 1);
                    let sy = (by + ry[i] as isize).clamp(0, ph - 1);
                    ofs[i] = (sy * pw + sx) as usize;
                }
            }
            let v = |i: usize| level.data[ofs[i]];
            match self.params.wta_k {
                2 => {
                    for (i, byte) in desc.iter_mut().enumerate() {
                        let mut val = 0u8;
                        for bit in 0..8 {
                            let j = i * 16 + bit * 2;
                            val |= ((v(j) < v(j + 1)) as u8) << bit;
                        }
                        *byte = val;
                    }
                }
                3 => {
                    for (i, byte) in desc.iter_mut().enumerate() {
                        let mut val = 0u8;
                        for q in 0..4 {
                            let j = i * 12 + q * 3;
                            let (t0, t1, t2) = (v(j), v(j + 1), v(j + 2));
                            let code = if t2 > t1 { if t2 > t0 { 2 } else { 0 } } else { (t1 > t0) as u8 };
                            val |= code << (2 * q);
                        }
                        *byte = val;
                    }
                }
                _ => {
                    for (i, byte) in desc.iter_mut().enumerate() {
                        let mut val = 0u8;
                        for q in 0..4 {
                            let j = i * 16 + q * 4;
                            let (mut t0, t1, mut t2, t3) = (v(j), v(j + 1), v(j + 2), v(j + 3));
                            let (mut u, mut w) = (0u8, 2u8);
                            if t1 > t0 {
                                t0 = t1;
                                u = 1;
                            }
                            if t3 > t2 {
                                t2 = t3;
                                w = 3;
                            }
                            let code = if t0 > t2 { u } else { w };
                            val |= code << (2 * q);
                        }
                        *byte = val;
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cv_rng_matches_opencv_sequence() {
        // cv::RNG(0x34985739).uniform(-15, 16) twice... first values of
        // OpenCV's makeRandomPattern for patchSize 31 (checked with cv2 behaviour:
        // state' = (u32)state * 4164903690 + (state >> 32))
        let mut r = CvRng::new(1);
        assert_eq!(r.next(), 4_164_903_690u32);
        let r = CvRng::new(0);
        assert_eq!(r.0, 0xffff_ffff);
    }
}
