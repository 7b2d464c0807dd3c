//! Bindings for `crate::features::color`: the `ColorHistogram` extractor class
//! and the OpenCV-exact 8-bit HSV conversion.

use numpy::{IntoPyArray, PyArray1, PyArray3, PyReadonlyArray2, PyReadonlyArray3, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::error::BovwError;
use crate::features::color::{rgb_to_hsv, ColorHistogram, ColorHistogramParams, ColorSpace, HistNorm, MaskRule};
use crate::image::{ColorNeeds, RgbView};
use crate::py::dense::non_negative;
use crate::py::features::{decoded_from_numpy, extractor_methods};

/// Joint colour histogram (one global descriptor per image). See
/// `bovw.ColorHistogram` for the documentation.
#[pyclass(name = "ColorHistogram", module = "bovw._bovw", frozen)]
pub struct PyColorHistogram(pub ColorHistogram);

#[pymethods]
impl PyColorHistogram {
    #[new]
    #[pyo3(signature = (*, space="hsv", bins=vec![18, 4, 4], mask=Some("white"), grid=vec![1], normalize=Some("l1"), sqrt=true))]
    fn new(space: &str, bins: Vec<i64>, mask: Option<&str>, grid: Vec<i64>, normalize: Option<&str>, sqrt: bool) -> PyResult<Self> {
        let bins: [i64; 3] = <[i64; 3]>::try_from(bins.as_slice())
            .map_err(|_| BovwError::param("bins", format!("expected 3 bin counts (one per channel), got {}", bins.len())))?;
        let bins = [non_negative("bins", bins[0])?, non_negative("bins", bins[1])?, non_negative("bins", bins[2])?];
        let grid = grid.into_iter().map(|g| non_negative("grid", g)).collect::<Result<Vec<_>, _>>()?;
        let params = ColorHistogramParams {
            space: ColorSpace::parse(space)?,
            bins,
            mask: MaskRule::parse(mask.unwrap_or("none"))?,
            grid,
            normalize: HistNorm::parse(normalize.unwrap_or("none"))?,
            sqrt,
        };
        Ok(PyColorHistogram(ColorHistogram::new(params)?))
    }

    /// The histogram of one image, (width,) float32: (H, W, 3) uint8 RGB or
    /// (H, W) uint8 gray (replicated). `mask` (H, W) uint8: zero pixels are
    /// left out (besides the mask rule).
    #[pyo3(signature = (image, mask=None))]
    fn compute<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
        mask: Option<PyReadonlyArray2<'py, u8>>,
    ) -> PyResult<Bound<'py, PyArray1<f32>>> {
        // A C-contiguous (H, W, 3) array is read in place; anything else
        // (strided or Fortran-ordered, gray) is copied in (row, column,
        // channel) order by decoded_from_numpy.
        let arr3 = image.extract::<PyReadonlyArray3<'py, u8>>().ok().filter(|a| a.shape()[2] == 3);
        let (borrowed, decoded) = match arr3 {
            Some(a) if a.is_c_contiguous() => (Some(a), None),
            _ => (None, Some(decoded_from_numpy(image, ColorNeeds::RGB)?)),
        };
        let (height, width) = match (&borrowed, &decoded) {
            (Some(a), _) => (a.shape()[0], a.shape()[1]),
            (None, Some(d)) => (d.height, d.width),
            _ => unreachable!(),
        };
        if height == 0 || width == 0 {
            return Err(BovwError::input(format!("image is empty (shape ({height}, {width}, 3))")).into());
        }
        let mask_arr = match &mask {
            None => None,
            Some(m) => {
                let shape = m.shape();
                if (shape[0], shape[1]) != (height, width) {
                    return Err(BovwError::Shape {
                        what: "mask".into(),
                        expected: format!("({height}, {width}) like the image"),
                        got: format!("({}, {})", shape[0], shape[1]),
                    }
                    .into());
                }
                Some(crate::py::arrays::c_order(m))
            }
        };
        let pixels: &[u8] = match (&borrowed, &decoded) {
            (Some(a), _) => crate::py::arrays::c_slice(a, "image")?,
            (None, Some(d)) => d.require_rgb()?.data,
            _ => unreachable!(),
        };
        let hist = py.detach(|| self.0.histogram(RgbView::new(pixels, width, height), mask_arr.as_deref()))?;
        Ok(hist.into_pyarray(py))
    }
}

extractor_methods!(PyColorHistogram);

/// OpenCV's 8-bit RGB to HSV conversion (`cv2.cvtColor(img, cv2.COLOR_RGB2HSV)`):
/// (H, W, 3) uint8 RGB in, (H, W, 3) uint8 HSV out with H in [0, 180).
#[pyfunction]
pub fn rgb_to_hsv_image<'py>(py: Python<'py>, image: PyReadonlyArray3<'py, u8>) -> PyResult<Bound<'py, PyArray3<u8>>> {
    let shape = image.shape().to_vec();
    if shape[2] != 3 {
        return Err(BovwError::Shape { what: "image".into(), expected: "(height, width, 3)".into(), got: format!("{shape:?}") }.into());
    }
    let data: Vec<u8> = crate::py::arrays::c_order(&image).into_owned();
    let out = py.detach(|| {
        let mut out = vec![0u8; data.len()];
        rgb_to_hsv(&data, &mut out);
        out
    });
    Ok(numpy::ndarray::Array3::from_shape_vec((shape[0], shape[1], 3), out).expect("same shape").into_pyarray(py))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyColorHistogram>()?;
    m.add_function(wrap_pyfunction!(rgb_to_hsv_image, m)?)
}
