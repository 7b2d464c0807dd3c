//! Arrow interop: reading binary image columns and descriptor lists, and
//! building the descriptor batches that `extract_descriptors` returns.
//!
//! Layouts (one row per image):
//! - float descriptors (SIFT): `list<fixed_size_list<float32, 128>>`
//! - binary descriptors (ORB): `list<fixed_size_binary(32)>`
//!
//! Readers borrow the Arrow buffers (no copies); builders write each buffer once.

use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::cast::AsArray;
use arrow_array::types::Float32Type;
use arrow_array::{
    Array, ArrayRef, FixedSizeBinaryArray, FixedSizeListArray, Float32Array, Int32Array, ListArray,
    RecordBatch,
};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Schema};

use crate::error::{BovwError, ImageError, Result};
use crate::features::{DescriptorDtype, DescriptorInfo, Descriptors, ImageFeatures};

/// Borrow the values of a binary column (`binary`, `large_binary` or
/// `binary_view`); null rows are `None`.
///
/// # Errors
/// [`BovwError::Dtype`] for any other column type.
pub fn binary_values(array: &dyn Array) -> Result<Vec<Option<&[u8]>>> {
    Ok(match array.data_type() {
        DataType::Binary => array.as_binary::<i32>().iter().collect(),
        DataType::LargeBinary => array.as_binary::<i64>().iter().collect(),
        DataType::BinaryView => array.as_binary_view().iter().collect(),
        other => {
            return Err(BovwError::Dtype {
                what: "content".into(),
                expected: "binary, large_binary or binary_view".into(),
                got: other.to_string(),
            })
        }
    })
}

/// The field of a float descriptor column of the given width.
pub fn float_descriptor_field(name: &str, width: usize) -> Field {
    let item = Field::new("item", DataType::Float32, false);
    let row = Field::new("item", DataType::FixedSizeList(Arc::new(item), width as i32), false);
    Field::new(name, DataType::List(Arc::new(row)), true)
}

/// The field of a binary descriptor column of the given width in bytes.
pub fn binary_descriptor_field(name: &str, width: usize) -> Field {
    let row = Field::new("item", DataType::FixedSizeBinary(width as i32), false);
    Field::new(name, DataType::List(Arc::new(row)), true)
}

/// The field of a keypoint column: per image, a list of
/// `fixed_size_list<float32, 4>` frames `(x, y, size, angle)`.
pub fn keypoint_field(name: &str) -> Field {
    let item = Field::new("item", DataType::Float32, false);
    let row = Field::new("item", DataType::FixedSizeList(Arc::new(item), KEYPOINT_VALUES as i32), false);
    Field::new(name, DataType::List(Arc::new(row)), true)
}

/// Values stored per keypoint in the Arrow `keypoints` column: x, y (pixels,
/// origin at the centre of the top-left pixel), size (pixels) and angle
/// (degrees; -1 or 0 where the extractor has none).
pub const KEYPOINT_VALUES: usize = 4;

/// The names of the columns [`features_to_batch`] writes, in order.
pub const FEATURE_COLUMNS: [&str; 7] =
    ["n_keypoints", "image_width", "image_height", "keypoints", "descriptors", "error", "error_stage"];

/// Build the per-image batch that `extract_descriptors` returns.
///
/// Columns ([`FEATURE_COLUMNS`]): `n_keypoints` (int32), `image_width`,
/// `image_height` (int32, pixels), `keypoints` ([`keypoint_field`]),
/// `descriptors` (`list<fixed_size_list<float32, w>>` or
/// `list<fixed_size_binary(w)>` by `info.dtype`), `error` and `error_stage`
/// (utf8). A failed row has the reason and the stage, null counts and sizes
/// and empty lists; a good row has null `error` and `error_stage`.
///
/// # Errors
/// [`BovwError::InvalidInput`] when a row's descriptors do not have the
/// width and dtype of `info` (an extractor bug).
pub fn features_to_batch(
    results: &[std::result::Result<ImageFeatures, ImageError>],
    info: &DescriptorInfo,
) -> Result<RecordBatch> {
    let (width, binary) = (info.width, info.dtype == DescriptorDtype::Uint8);
    let n = results.len();
    let mut offsets = Vec::with_capacity(n + 1);
    offsets.push(0i32);
    let mut n_kp: Vec<Option<i32>> = Vec::with_capacity(n);
    let mut img_w: Vec<Option<i32>> = Vec::with_capacity(n);
    let mut img_h: Vec<Option<i32>> = Vec::with_capacity(n);
    let mut errors = StringBuilder::with_capacity(n, 0);
    let mut stages = StringBuilder::with_capacity(n, 0);
    let total: usize = results.iter().map(|r| r.as_ref().map(|f| f.descriptors.len()).unwrap_or(0)).sum();
    let mut fvals: Vec<f32> = Vec::with_capacity(if binary { 0 } else { total * width });
    let mut bvals: Vec<u8> = Vec::with_capacity(if binary { total * width } else { 0 });
    let mut frames: Vec<f32> = Vec::with_capacity(total * KEYPOINT_VALUES);
    let mut rows = 0i32;
    for r in results {
        match r {
            Ok(f) => {
                let d = &f.descriptors;
                match d {
                    Descriptors::F32 { data, width: w } if !binary && *w == width => fvals.extend_from_slice(data),
                    Descriptors::U8 { data, width: w } if binary && *w == width => bvals.extend_from_slice(data),
                    _ => return Err(BovwError::input("descriptor kind or width does not match the column")),
                }
                if f.keypoints.len() != d.len() {
                    return Err(BovwError::input("an image has not one keypoint per descriptor row"));
                }
                for k in &f.keypoints {
                    frames.extend_from_slice(&[k.x, k.y, k.size, k.angle]);
                }
                rows += d.len() as i32;
                n_kp.push(Some(d.len() as i32));
                img_w.push(Some(f.width as i32));
                img_h.push(Some(f.height as i32));
                errors.append_null();
                stages.append_null();
            }
            Err(e) => {
                n_kp.push(None);
                img_w.push(None);
                img_h.push(None);
                errors.append_value(&e.reason);
                stages.append_value(e.stage.as_str());
            }
        }
        offsets.push(rows);
    }
    let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
    let (field, values): (Field, ArrayRef) = if binary {
        let f = binary_descriptor_field("descriptors", width);
        let v = FixedSizeBinaryArray::try_new(width as i32, bvals.into(), None)?;
        (f, Arc::new(v))
    } else {
        let f = float_descriptor_field("descriptors", width);
        (f, Arc::new(fixed_size_floats(fvals, width)?))
    };
    let DataType::List(row_field) = field.data_type().clone() else { unreachable!() };
    let list = ListArray::try_new(row_field, offsets.clone(), values, None)?;
    let kfield = keypoint_field("keypoints");
    let DataType::List(krow) = kfield.data_type().clone() else { unreachable!() };
    let klist = ListArray::try_new(krow, offsets, Arc::new(fixed_size_floats(frames, KEYPOINT_VALUES)?), None)?;
    let schema = Schema::new(vec![
        Field::new(FEATURE_COLUMNS[0], DataType::Int32, true),
        Field::new(FEATURE_COLUMNS[1], DataType::Int32, true),
        Field::new(FEATURE_COLUMNS[2], DataType::Int32, true),
        kfield,
        field,
        Field::new(FEATURE_COLUMNS[5], DataType::Utf8, true),
        Field::new(FEATURE_COLUMNS[6], DataType::Utf8, true),
    ]);
    Ok(RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(Int32Array::from(n_kp)),
            Arc::new(Int32Array::from(img_w)),
            Arc::new(Int32Array::from(img_h)),
            Arc::new(klist),
            Arc::new(list),
            Arc::new(errors.finish()),
            Arc::new(stages.finish()),
        ],
    )?)
}

/// `values` as a `fixed_size_list<float32, width>` array.
fn fixed_size_floats(values: Vec<f32>, width: usize) -> Result<FixedSizeListArray> {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    Ok(FixedSizeListArray::try_new(item, width as i32, Arc::new(Float32Array::from(values)), None)?)
}

/// Borrowed float descriptors of a batch of images.
pub struct FloatDescriptorRows<'a> {
    /// All descriptors, row-major, `offsets[n_images] * width` values.
    pub values: &'a [f32],
    /// Descriptor width.
    pub width: usize,
    /// Image `i` owns descriptor rows `offsets[i]..offsets[i + 1]` (relative to `values`).
    pub offsets: Vec<usize>,
}

/// Borrow a `list<fixed_size_list<float32, w>>` column without copying.
/// Null rows are treated as images with no descriptors.
///
/// # Errors
/// [`BovwError::Dtype`] when the column has another layout.
pub fn float_descriptor_rows(array: &dyn Array) -> Result<FloatDescriptorRows<'_>> {
    let bad = || BovwError::Dtype {
        what: "descriptors".into(),
        expected: "list<fixed_size_list<float32, w>>".into(),
        got: array.data_type().to_string(),
    };
    let list = array.as_list_opt::<i32>().ok_or_else(bad)?;
    let fsl = list.values().as_fixed_size_list_opt().ok_or_else(bad)?;
    let width = fsl.value_length() as usize;
    let floats = fsl.values().as_primitive_opt::<Float32Type>().ok_or_else(bad)?;
    let all: &[f32] = floats.values();
    // Slice to the part of the child arrays this list view covers.
    let base = fsl.offset();
    let values = &all[base * width..(base + fsl.len()) * width];
    let offs = list.value_offsets();
    let first = offs[0] as usize;
    let offsets = offs.iter().map(|&o| o as usize - first).collect();
    let values = &values[first * width..];
    Ok(FloatDescriptorRows { values, width, offsets })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trip() {
        use crate::features::{DescriptorKind, KeyPoint};
        use crate::image::ColorNeeds;
        let kp = |x: f32| KeyPoint { x, y: x + 1.0, size: 2.0, angle: 90.0, ..KeyPoint::default() };
        let ok: std::result::Result<ImageFeatures, ImageError> = Ok(ImageFeatures {
            width: 10,
            height: 7,
            keypoints: vec![kp(1.0), kp(3.0)],
            descriptors: Descriptors::F32 { data: (0..6).map(|v| v as f32).collect(), width: 3 },
        });
        let empty: std::result::Result<ImageFeatures, ImageError> = Ok(ImageFeatures {
            width: 4,
            height: 4,
            keypoints: vec![],
            descriptors: Descriptors::F32 { data: vec![], width: 3 },
        });
        let bad: std::result::Result<ImageFeatures, ImageError> = Err(ImageError::decode("cannot decode"));
        let info = DescriptorInfo { width: 3, dtype: DescriptorDtype::Float32, kind: DescriptorKind::Local, needs: ColorNeeds::GRAY };
        let batch = features_to_batch(&[ok, bad, empty], &info).unwrap();
        assert_eq!(batch.num_rows(), 3);
        let schema = batch.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, FEATURE_COLUMNS);
        let n = batch.column(0).as_primitive::<arrow_array::types::Int32Type>();
        assert_eq!(n.value(0), 2);
        assert!(n.is_null(1));
        assert_eq!(n.value(2), 0);
        let w = batch.column(1).as_primitive::<arrow_array::types::Int32Type>();
        assert_eq!((w.value(0), w.is_null(1), w.value(2)), (10, true, 4));
        let err = batch.column(5).as_string::<i32>();
        assert_eq!(err.value(1), "cannot decode");
        assert!(err.is_null(0));
        let stage = batch.column(6).as_string::<i32>();
        assert_eq!(stage.value(1), "decode");
        assert!(stage.is_null(2));
        let rows = float_descriptor_rows(batch.column(4).as_ref()).unwrap();
        assert_eq!(rows.width, 3);
        assert_eq!(rows.offsets, vec![0, 2, 2, 2]);
        assert_eq!(rows.values, &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let frames = float_descriptor_rows(batch.column(3).as_ref()).unwrap();
        assert_eq!(frames.values, &[1.0, 2.0, 2.0, 90.0, 3.0, 4.0, 2.0, 90.0]);
        // A slice of the column borrows the right rows.
        let sliced = batch.column(4).slice(1, 2);
        let rows = float_descriptor_rows(sliced.as_ref()).unwrap();
        assert_eq!(rows.offsets, vec![0, 0, 0]);
    }

    #[test]
    fn binary_column_kinds() {
        let a = arrow_array::BinaryArray::from(vec![Some(&b"ab"[..]), None]);
        let v = binary_values(&a).unwrap();
        assert_eq!(v, vec![Some(&b"ab"[..]), None]);
        assert!(binary_values(&Int32Array::from(vec![1])).is_err());
    }
}
