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

use crate::error::{BovwError, Result};
use crate::features::{Descriptors, Features};

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

/// Build the `(n_keypoints, descriptors, error)` batch from per-image results.
///
/// A failed row has `n_keypoints` null, an empty descriptor list and the
/// reason in `error`; a good row has a null `error`.
pub fn features_to_batch(
    results: &[std::result::Result<Features, String>],
    width: usize,
    binary: bool,
) -> Result<RecordBatch> {
    let n = results.len();
    let mut offsets = Vec::with_capacity(n + 1);
    offsets.push(0i32);
    let mut n_kp: Vec<Option<i32>> = Vec::with_capacity(n);
    let mut errors = StringBuilder::with_capacity(n, 0);
    let total: usize = results.iter().map(|r| r.as_ref().map(|(_, d)| d.len()).unwrap_or(0)).sum();
    let mut fvals: Vec<f32> = Vec::with_capacity(if binary { 0 } else { total * width });
    let mut bvals: Vec<u8> = Vec::with_capacity(if binary { total * width } else { 0 });
    let mut rows = 0i32;
    for r in results {
        match r {
            Ok((_kps, d)) => {
                match d {
                    Descriptors::F32 { data, width: w } if !binary && *w == width => fvals.extend_from_slice(data),
                    Descriptors::U8 { data, width: w } if binary && *w == width => bvals.extend_from_slice(data),
                    _ => return Err(BovwError::input("descriptor kind or width does not match the column")),
                }
                rows += d.len() as i32;
                n_kp.push(Some(d.len() as i32));
                errors.append_null();
            }
            Err(reason) => {
                n_kp.push(None);
                errors.append_value(reason);
            }
        }
        offsets.push(rows);
    }
    let (field, values): (Field, ArrayRef) = if binary {
        let f = binary_descriptor_field("descriptors", width);
        let v = FixedSizeBinaryArray::try_new(width as i32, bvals.into(), None)?;
        (f, Arc::new(v))
    } else {
        let f = float_descriptor_field("descriptors", width);
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        let v = FixedSizeListArray::try_new(item, width as i32, Arc::new(Float32Array::from(fvals)), None)?;
        (f, Arc::new(v))
    };
    let DataType::List(row_field) = field.data_type().clone() else { unreachable!() };
    let list = ListArray::try_new(row_field, OffsetBuffer::new(ScalarBuffer::from(offsets)), values, None)?;
    let schema = Schema::new(vec![
        Field::new("n_keypoints", DataType::Int32, true),
        field,
        Field::new("error", DataType::Utf8, true),
    ]);
    Ok(RecordBatch::try_new(
        Arc::new(schema),
        vec![Arc::new(Int32Array::from(n_kp)), Arc::new(list), Arc::new(errors.finish())],
    )?)
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
    use crate::features::KeyPoint;

    #[test]
    fn batch_round_trip() {
        let ok: std::result::Result<Features, String> = Ok((
            vec![KeyPoint::default(); 2],
            Descriptors::F32 { data: (0..6).map(|v| v as f32).collect(), width: 3 },
        ));
        let empty: std::result::Result<Features, String> =
            Ok((vec![], Descriptors::F32 { data: vec![], width: 3 }));
        let bad: std::result::Result<Features, String> = Err("cannot decode".into());
        let batch = features_to_batch(&[ok, bad, empty], 3, false).unwrap();
        assert_eq!(batch.num_rows(), 3);
        let n = batch.column(0).as_primitive::<arrow_array::types::Int32Type>();
        assert_eq!(n.value(0), 2);
        assert!(n.is_null(1));
        assert_eq!(n.value(2), 0);
        let err = batch.column(2).as_string::<i32>();
        assert_eq!(err.value(1), "cannot decode");
        assert!(err.is_null(0));
        let rows = float_descriptor_rows(batch.column(1).as_ref()).unwrap();
        assert_eq!(rows.width, 3);
        assert_eq!(rows.offsets, vec![0, 2, 2, 2]);
        assert_eq!(rows.values, &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        // A slice of the column borrows the right rows.
        let sliced = batch.column(1).slice(1, 2);
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
