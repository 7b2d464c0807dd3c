//! Decoding and grayscale conversion.
//!
//! Encoded JPEG or PNG bytes are decoded with the `image` crate and reduced to
//! 8-bit grayscale with OpenCV's fixed-point `cvtColor(..., COLOR_BGR2GRAY)`
//! formula (`modules/imgproc/src/color_rgb.simd.hpp`, `RGB2Gray<uchar>`: ITU-R BT.601
//! luma weights 0.299, 0.587, 0.114 in 15-bit fixed point):
//!
//! $Y = (9798 R + 19235 G + 3735 B + 2^{14}) \gg 15$
//!
//! so that a pipeline that used `cv2.imread` + `cv2.cvtColor` sees the same
//! gray levels for the same decoded RGB pixels. Alpha is dropped, as
//! `cv2.imread(..., IMREAD_COLOR)` does. 16-bit images are rejected rather than
//! silently rescaled.

use std::io::Cursor;

use image::{DynamicImage, ImageReader};

use crate::error::{BovwError, ImageError};

/// An owned 8-bit grayscale image, row-major, `data.len() == width * height`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrayImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// A borrowed, contiguous, row-major 8-bit grayscale image.
#[derive(Debug, Clone, Copy)]
pub struct GrayView<'a> {
    pub width: usize,
    pub height: usize,
    pub data: &'a [u8],
}

impl GrayImage {
    /// Borrow as a [`GrayView`].
    pub fn view(&self) -> GrayView<'_> {
        GrayView { width: self.width, height: self.height, data: &self.data }
    }
}

impl<'a> GrayView<'a> {
    /// Wrap a row-major buffer.
    ///
    /// # Panics
    /// If `data.len() != width * height`.
    pub fn new(data: &'a [u8], width: usize, height: usize) -> Self {
        assert_eq!(data.len(), width * height, "buffer length must be width * height");
        GrayView { width, height, data }
    }

    /// Pixel at column `x`, row `y`.
    #[inline]
    pub fn at(&self, x: usize, y: usize) -> u8 {
        self.data[y * self.width + x]
    }
}

const R2Y: u32 = 9798;
const G2Y: u32 = 19235;
const B2Y: u32 = 3735;
const YUV_SHIFT: u32 = 15;

/// OpenCV's 8-bit RGB -> gray conversion for one pixel.
#[inline]
pub fn rgb_to_gray(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * R2Y + g as u32 * G2Y + b as u32 * B2Y + (1 << (YUV_SHIFT - 1))) >> YUV_SHIFT) as u8
}

/// Convert interleaved 8-bit pixels with `channels` channels in R, G, B(, A)
/// order to gray. One channel is copied; two (gray + alpha) keep the gray.
///
/// # Panics
/// If `channels` is not 1..=4 or `pixels.len()` is not a multiple of it.
pub fn interleaved_to_gray(pixels: &[u8], channels: usize) -> Vec<u8> {
    assert!((1..=4).contains(&channels));
    assert_eq!(pixels.len() % channels, 0);
    match channels {
        1 => pixels.to_vec(),
        2 => pixels.chunks_exact(2).map(|p| p[0]).collect(),
        3 => rgb_to_gray_slice(pixels),
        _ => pixels.chunks_exact(channels).map(|p| rgb_to_gray(p[0], p[1], p[2])).collect(),
    }
}

/// [`rgb_to_gray`] of packed RGB pixels.
fn rgb_to_gray_slice(pixels: &[u8]) -> Vec<u8> {
    let n = pixels.len() / 3;
    let mut out = vec![0u8; n];
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sse4.1") {
            // SAFETY: SSSE3 and SSE4.1 are available (SSE4.1 implies SSSE3 on
            // every CPU that has it; the intrinsics used are from both).
            done = unsafe { rgb_to_gray_sse41(pixels, &mut out) };
        }
    }
    for (o, p) in out[done..].iter_mut().zip(pixels[3 * done..].chunks_exact(3)) {
        *o = rgb_to_gray(p[0], p[1], p[2]);
    }
    out
}

/// 16 pixels per step: deinterleave R, G, B with byte shuffles, then the
/// same fixed-point sum with `madd` (exact integers, same result as
/// [`rgb_to_gray`]). Returns the number of pixels converted.
///
/// # Safety
/// SSSE3 and SSE4.1 must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "ssse3,sse4.1")]
unsafe fn rgb_to_gray_sse41(pixels: &[u8], out: &mut [u8]) -> usize {
    use std::arch::x86_64::*;
    // masks[ch][chunk]: byte j takes channel ch of pixel j from 16-byte chunk
    // `chunk` of the 48 bytes of 16 pixels (0x80: none)
    let mut masks = [[[0x80u8; 16]; 3]; 3];
    for (ch, m) in masks.iter_mut().enumerate() {
        for j in 0..16 {
            let s = 3 * j + ch;
            m[s / 16][j] = (s % 16) as u8;
        }
    }
    let ld = |m: &[u8; 16]| _mm_loadu_si128(m.as_ptr() as *const __m128i);
    let mk: [[__m128i; 3]; 3] = [
        [ld(&masks[0][0]), ld(&masks[0][1]), ld(&masks[0][2])],
        [ld(&masks[1][0]), ld(&masks[1][1]), ld(&masks[1][2])],
        [ld(&masks[2][0]), ld(&masks[2][1]), ld(&masks[2][2])],
    ];
    let w_rg = _mm_set1_epi32(((G2Y as i32) << 16) | R2Y as i32);
    let w_b1 = _mm_set1_epi32((1 << 30) | B2Y as i32); // (B * 3735 + 1 * 16384)
    let one = _mm_set1_epi16(1);
    let n = out.len().min(pixels.len() / 3);
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n, so bytes 3 i .. 3 i + 48 <= pixels.len() and
        // out[i..i + 16] are in bounds.
        let p = pixels.as_ptr().add(3 * i);
        let (a, b, c) = (
            _mm_loadu_si128(p as *const __m128i),
            _mm_loadu_si128(p.add(16) as *const __m128i),
            _mm_loadu_si128(p.add(32) as *const __m128i),
        );
        let chan = |m: &[__m128i; 3]| {
            _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(a, m[0]), _mm_shuffle_epi8(b, m[1])), _mm_shuffle_epi8(c, m[2]))
        };
        let (r, g, bl) = (chan(&mk[0]), chan(&mk[1]), chan(&mk[2]));
        let zero = _mm_setzero_si128();
        // 8 pixels of 16-bit R, G, B -> 8 gray values as i32 (two halves)
        let half = |r16: __m128i, g16: __m128i, b16: __m128i| {
            let rg_lo = _mm_unpacklo_epi16(r16, g16);
            let rg_hi = _mm_unpackhi_epi16(r16, g16);
            let b1_lo = _mm_unpacklo_epi16(b16, one);
            let b1_hi = _mm_unpackhi_epi16(b16, one);
            let lo = _mm_srli_epi32(_mm_add_epi32(_mm_madd_epi16(rg_lo, w_rg), _mm_madd_epi16(b1_lo, w_b1)), YUV_SHIFT as i32);
            let hi = _mm_srli_epi32(_mm_add_epi32(_mm_madd_epi16(rg_hi, w_rg), _mm_madd_epi16(b1_hi, w_b1)), YUV_SHIFT as i32);
            _mm_packs_epi32(lo, hi)
        };
        let g_lo = half(_mm_unpacklo_epi8(r, zero), _mm_unpacklo_epi8(g, zero), _mm_unpacklo_epi8(bl, zero));
        let g_hi = half(_mm_unpackhi_epi8(r, zero), _mm_unpackhi_epi8(g, zero), _mm_unpackhi_epi8(bl, zero));
        _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut __m128i, _mm_packus_epi16(g_lo, g_hi));
        i += 16;
    }
    i
}

/// An owned 8-bit RGB image, row-major, interleaved R, G, B,
/// `data.len() == 3 * width * height`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// A borrowed, contiguous, row-major, interleaved 8-bit RGB image.
#[derive(Debug, Clone, Copy)]
pub struct RgbView<'a> {
    pub width: usize,
    pub height: usize,
    pub data: &'a [u8],
}

impl RgbImage {
    /// Borrow as an [`RgbView`].
    pub fn view(&self) -> RgbView<'_> {
        RgbView { width: self.width, height: self.height, data: &self.data }
    }
}

impl<'a> RgbView<'a> {
    /// Wrap a row-major interleaved RGB buffer.
    ///
    /// # Panics
    /// If `data.len() != 3 * width * height`.
    pub fn new(data: &'a [u8], width: usize, height: usize) -> Self {
        assert_eq!(data.len(), 3 * width * height, "buffer length must be 3 * width * height");
        RgbView { width, height, data }
    }

    /// The (r, g, b) pixel at column `x`, row `y`.
    #[inline]
    pub fn at(&self, x: usize, y: usize) -> [u8; 3] {
        let i = 3 * (y * self.width + x);
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    /// The gray image OpenCV's `cvtColor(..., COLOR_RGB2GRAY)` gives.
    pub fn to_gray(&self) -> GrayImage {
        GrayImage { width: self.width, height: self.height, data: rgb_to_gray_slice(self.data) }
    }
}

/// Which pixel layouts a consumer of a decoded image needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ColorNeeds {
    /// The OpenCV-compatible gray image (SIFT, ORB, dense SIFT on gray).
    pub gray: bool,
    /// The RGB image (colour descriptors, CNN embeddings).
    pub rgb: bool,
}

impl ColorNeeds {
    /// Gray only.
    pub const GRAY: ColorNeeds = ColorNeeds { gray: true, rgb: false };
    /// RGB only.
    pub const RGB: ColorNeeds = ColorNeeds { gray: false, rgb: true };
    /// Both layouts.
    pub fn union(self, other: ColorNeeds) -> ColorNeeds {
        ColorNeeds { gray: self.gray || other.gray, rgb: self.rgb || other.rgb }
    }
}

/// One decoded image in the layouts its consumers asked for.
///
/// A gray source asked for RGB has its gray level replicated in R, G and B
/// (as `cv2.imread(..., IMREAD_COLOR)` does); a colour source asked for gray
/// is reduced with [`rgb_to_gray`]. `is_color` tells which the file held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedImage {
    pub width: usize,
    pub height: usize,
    /// The file held colour (RGB or RGBA) samples, not gray ones.
    pub is_color: bool,
    gray: Option<Vec<u8>>,
    rgb: Option<Vec<u8>>,
}

impl DecodedImage {
    /// The gray image, when it was asked for ([`ColorNeeds::gray`]).
    pub fn gray(&self) -> Option<GrayView<'_>> {
        self.gray.as_deref().map(|d| GrayView::new(d, self.width, self.height))
    }
    /// The gray image.
    ///
    /// # Errors
    /// [`BovwError::InvalidInput`] when it was not asked for (a caller bug:
    /// the extractor's [`ColorNeeds`] did not name it).
    pub fn require_gray(&self) -> Result<GrayView<'_>, BovwError> {
        self.gray().ok_or_else(|| BovwError::input("the gray image was not decoded (ColorNeeds::gray unset)"))
    }
    /// The RGB image.
    ///
    /// # Errors
    /// [`BovwError::InvalidInput`] when it was not asked for.
    pub fn require_rgb(&self) -> Result<RgbView<'_>, BovwError> {
        self.rgb().ok_or_else(|| BovwError::input("the RGB image was not decoded (ColorNeeds::rgb unset)"))
    }
    /// The RGB image, when it was asked for ([`ColorNeeds::rgb`]).
    pub fn rgb(&self) -> Option<RgbView<'_>> {
        self.rgb.as_deref().map(|d| RgbView::new(d, self.width, self.height))
    }
    /// Wrap a gray buffer (tests and single-image calls); RGB replicated when `needs.rgb`.
    ///
    /// # Panics
    /// If `data.len() != width * height`.
    pub fn from_gray(data: Vec<u8>, width: usize, height: usize, needs: ColorNeeds) -> Self {
        assert_eq!(data.len(), width * height);
        let rgb = needs.rgb.then(|| data.iter().flat_map(|&g| [g, g, g]).collect());
        DecodedImage { width, height, is_color: false, gray: Some(data), rgb }
    }
    /// Wrap an interleaved RGB buffer; gray computed when `needs.gray`.
    ///
    /// # Panics
    /// If `data.len() != 3 * width * height`.
    pub fn from_rgb(data: Vec<u8>, width: usize, height: usize, needs: ColorNeeds) -> Self {
        assert_eq!(data.len(), 3 * width * height);
        let gray = needs.gray.then(|| rgb_to_gray_slice(&data));
        DecodedImage { width, height, is_color: true, gray, rgb: needs.rgb.then_some(data) }
    }
}

/// Decode JPEG or PNG bytes into the layouts `needs` asks for.
///
/// # Errors
/// An [`ImageError`] at stage `decode` when the bytes are empty, are not a
/// JPEG or PNG, are truncated or corrupt, or hold 16-bit or floating-point
/// samples.
pub fn decode_image(bytes: &[u8], needs: ColorNeeds) -> Result<DecodedImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::decode("empty file (0 bytes)"));
    }
    let format = image::guess_format(bytes)
        .map_err(|_| ImageError::decode("not a JPEG or PNG image (unrecognised file signature)"))?;
    if !matches!(format, image::ImageFormat::Jpeg | image::ImageFormat::Png) {
        return Err(ImageError::decode(format!("unsupported image format {format:?}: only JPEG and PNG are decoded")));
    }
    if format == image::ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(ImageError::decode("truncated JPEG: no end-of-image marker after the last scan"));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.no_limits();
    let img = reader.decode().map_err(|e| ImageError::decode(format!("corrupt or truncated {format:?}: {e}")))?;
    let (width, height) = (img.width() as usize, img.height() as usize);
    if width == 0 || height == 0 {
        return Err(ImageError::decode(format!("image has no pixels ({width}x{height})")));
    }
    Ok(match img {
        DynamicImage::ImageLuma8(b) => DecodedImage::from_gray(b.into_raw(), width, height, needs),
        DynamicImage::ImageLumaA8(b) => DecodedImage::from_gray(interleaved_to_gray(b.as_raw(), 2), width, height, needs),
        DynamicImage::ImageRgb8(b) => DecodedImage::from_rgb(b.into_raw(), width, height, needs),
        DynamicImage::ImageRgba8(b) => {
            let rgb: Vec<u8> = b.as_raw().chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
            DecodedImage::from_rgb(rgb, width, height, needs)
        }
        other => {
            return Err(ImageError::decode(format!(
                "unsupported sample type {:?}: only 8-bit images are supported (convert 16-bit or float images to 8-bit first)",
                other.color()
            )))
        }
    })
}

/// Decode JPEG or PNG bytes into an 8-bit grayscale image (OpenCV's
/// `imread` + `cvtColor(..., COLOR_BGR2GRAY)` levels for the same pixels).
///
/// # Errors
/// As [`decode_image`].
pub fn decode_gray(bytes: &[u8]) -> Result<GrayImage, ImageError> {
    let d = decode_image(bytes, ColorNeeds::GRAY)?;
    let data = d.gray.expect("asked for gray");
    Ok(GrayImage { width: d.width, height: d.height, data })
}

/// Decode JPEG or PNG bytes into an 8-bit RGB image (R, G, B order; gray
/// files replicated, alpha dropped).
///
/// # Errors
/// As [`decode_image`].
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, ImageError> {
    let d = decode_image(bytes, ColorNeeds::RGB)?;
    let data = d.rgb.expect("asked for rgb");
    Ok(RgbImage { width: d.width, height: d.height, data })
}

/// True when a JPEG stream has an end-of-image marker (`FF D9`) after its
/// last start-of-scan marker (`FF DA`). Entropy-coded data stuffs every `FF`
/// byte as `FF 00`, so neither marker can appear inside scan data. The decoder
/// itself fills a truncated scan with gray without an error (libjpeg only
/// warns), so this check is what reports a truncated file.
pub fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last = |m: u8| bytes.windows(2).rposition(|w| w[0] == 0xFF && w[1] == m);
    match (last(0xDA), last(0xD9)) {
        (Some(sos), Some(eoi)) => eoi > sos,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_bytes(img: DynamicImage) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
        out
    }

    #[test]
    fn gray_formula_matches_opencv_known_values() {
        // Values computed with cv2.cvtColor on single BGR pixels.
        assert_eq!(rgb_to_gray(255, 255, 255), 255);
        assert_eq!(rgb_to_gray(0, 0, 0), 0);
        assert_eq!(rgb_to_gray(255, 0, 0), 76);
        assert_eq!(rgb_to_gray(0, 255, 0), 150);
        assert_eq!(rgb_to_gray(0, 0, 255), 29);
        assert_eq!(rgb_to_gray(10, 200, 30), 124);
    }

    #[test]
    fn vector_gray_matches_the_formula() {
        // every (r, g, b) corner case plus pseudo-random pixels, odd length
        let mut px: Vec<u8> = vec![255, 255, 255, 0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255];
        let mut state = 7u32;
        for _ in 0..3 * 1001 {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            px.push((state >> 16) as u8);
        }
        let want: Vec<u8> = px.chunks_exact(3).map(|p| rgb_to_gray(p[0], p[1], p[2])).collect();
        assert_eq!(interleaved_to_gray(&px, 3), want);
    }

    #[test]
    fn png_round_trip_rgb_and_rgba() {
        let rgb = image::RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 60, 7]));
        let g = decode_gray(&png_bytes(DynamicImage::ImageRgb8(rgb.clone()))).unwrap();
        assert_eq!((g.width, g.height), (5, 3));
        assert_eq!(g.data[5 + 2], rgb_to_gray(80, 60, 7)); // row 1, column 2 of 5
        let rgba = image::RgbaImage::from_fn(2, 2, |_, _| image::Rgba([255, 0, 0, 3]));
        let g = decode_gray(&png_bytes(DynamicImage::ImageRgba8(rgba))).unwrap();
        assert_eq!(g.data, vec![76; 4]);
    }

    #[test]
    fn rgb_decode_keeps_channels_and_replicates_gray() {
        let rgb = image::RgbImage::from_fn(4, 2, |x, y| image::Rgb([x as u8 * 50, y as u8 * 90, 200]));
        let d = decode_rgb(&png_bytes(DynamicImage::ImageRgb8(rgb.clone()))).unwrap();
        assert_eq!((d.width, d.height), (4, 2));
        assert_eq!(d.data, rgb.into_raw());
        let rgba = image::RgbaImage::from_fn(2, 1, |x, _| image::Rgba([10, 20 + x as u8, 30, 0]));
        assert_eq!(decode_rgb(&png_bytes(DynamicImage::ImageRgba8(rgba))).unwrap().data, vec![10, 20, 30, 10, 21, 30]);
        let gray = image::GrayImage::from_fn(3, 1, |x, _| image::Luma([x as u8 * 7]));
        let d = decode_rgb(&png_bytes(DynamicImage::ImageLuma8(gray))).unwrap();
        assert_eq!(d.data, vec![0, 0, 0, 7, 7, 7, 14, 14, 14]);
        // both layouts from one decode agree with the single-layout decoders
        let both = decode_image(&png_bytes(DynamicImage::ImageRgb8(image::RgbImage::from_pixel(2, 2, image::Rgb([255, 0, 0])))),
            ColorNeeds { gray: true, rgb: true }).unwrap();
        assert!(both.is_color);
        assert_eq!(both.gray().unwrap().data, &[76; 4]);
        assert_eq!(both.rgb().unwrap().at(1, 1), [255, 0, 0]);
    }

    #[test]
    fn bad_inputs_have_reasons() {
        assert!(decode_gray(b"").unwrap_err().reason.contains("empty"));
        assert!(decode_gray(b"hello, I am text").unwrap_err().reason.contains("not a JPEG or PNG"));
        let img16 = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_pixel(4, 4, image::Luma([1000]));
        let err = decode_gray(&png_bytes(DynamicImage::ImageLuma16(img16))).unwrap_err();
        assert!(err.reason.contains("8-bit"), "{err}");
        assert_eq!(err.stage, crate::error::Stage::Decode);
        let full = png_bytes(DynamicImage::ImageRgb8(image::RgbImage::new(16, 16)));
        assert!(decode_gray(&full[..full.len() / 2]).is_err());
    }
}
