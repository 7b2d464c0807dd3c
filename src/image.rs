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
        _ => pixels.chunks_exact(channels).map(|p| rgb_to_gray(p[0], p[1], p[2])).collect(),
    }
}

/// Decode JPEG or PNG bytes into an 8-bit grayscale image.
///
/// # Errors
/// A human-readable reason when the bytes are empty, are not a JPEG or PNG,
/// are truncated or corrupt, or hold 16-bit or floating-point samples.
pub fn decode_gray(bytes: &[u8]) -> Result<GrayImage, String> {
    if bytes.is_empty() {
        return Err("empty file (0 bytes)".to_string());
    }
    let format = image::guess_format(bytes)
        .map_err(|_| "not a JPEG or PNG image (unrecognised file signature)".to_string())?;
    if !matches!(format, image::ImageFormat::Jpeg | image::ImageFormat::Png) {
        return Err(format!("unsupported image format {format:?}: only JPEG and PNG are decoded"));
    }
    if format == image::ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err("truncated JPEG: no end-of-image marker after the last scan".to_string());
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.no_limits();
    let img = reader.decode().map_err(|e| format!("corrupt or truncated {format:?}: {e}"))?;
    let (width, height) = (img.width() as usize, img.height() as usize);
    if width == 0 || height == 0 {
        return Err(format!("image has no pixels ({width}x{height})"));
    }
    let data = match img {
        DynamicImage::ImageLuma8(b) => b.into_raw(),
        DynamicImage::ImageLumaA8(b) => interleaved_to_gray(b.as_raw(), 2),
        DynamicImage::ImageRgb8(b) => interleaved_to_gray(b.as_raw(), 3),
        DynamicImage::ImageRgba8(b) => interleaved_to_gray(b.as_raw(), 4),
        other => {
            return Err(format!(
                "unsupported sample type {:?}: only 8-bit images are supported (convert 16-bit or float images to 8-bit first)",
                other.color()
            ))
        }
    };
    Ok(GrayImage { width, height, data })
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
    fn png_round_trip_rgb_and_rgba() {
        let rgb = image::RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 60, 7]));
        let g = decode_gray(&png_bytes(DynamicImage::ImageRgb8(rgb.clone()))).unwrap();
        assert_eq!((g.width, g.height), (5, 3));
        assert_eq!(g.data[1 * 5 + 2], rgb_to_gray(80, 60, 7));
        let rgba = image::RgbaImage::from_fn(2, 2, |_, _| image::Rgba([255, 0, 0, 3]));
        let g = decode_gray(&png_bytes(DynamicImage::ImageRgba8(rgba))).unwrap();
        assert_eq!(g.data, vec![76; 4]);
    }

    #[test]
    fn bad_inputs_have_reasons() {
        assert!(decode_gray(b"").unwrap_err().contains("empty"));
        assert!(decode_gray(b"hello, I am text").unwrap_err().contains("not a JPEG or PNG"));
        let img16 = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_pixel(4, 4, image::Luma([1000]));
        let err = decode_gray(&png_bytes(DynamicImage::ImageLuma16(img16))).unwrap_err();
        assert!(err.contains("8-bit"), "{err}");
        let full = png_bytes(DynamicImage::ImageRgb8(image::RgbImage::new(16, 16)));
        assert!(decode_gray(&full[..full.len() / 2]).is_err());
    }
}
