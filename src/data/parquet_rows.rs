//! Reading rows of flat parquet tables through the `parquet` crate's record API (no Arrow: the
//! loaders need a handful of scalar columns, and Arrow would triple the build time).
//!
//! Column presence and types are checked from the schema before any row is read, so a wrong file
//! fails at once with the column named; values are then read row by row, with only the needed
//! columns decoded (projection).

use super::error::DataError;
use parquet::basic::{LogicalType, Repetition, Type as PhysicalType};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use parquet::schema::types::{Type, TypePtr};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

/// What a loader needs a column to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// UTF-8 strings.
    Text,
    /// Integers of any width (floats holding whole numbers are accepted: pandas writes an integer
    /// column with a missing value as float64).
    Integer,
    /// Floating-point numbers (integers accepted).
    Float,
    /// Raw bytes, or a Hugging Face `Image` struct `{bytes, path}`.
    Binary,
}

impl Kind {
    fn expected(self) -> &'static str {
        match self {
            Kind::Text => "a string column (BYTE_ARRAY, UTF8)",
            Kind::Integer => "an integer column (int8/16/32/64)",
            Kind::Float => "a floating-point column (float/double)",
            Kind::Binary => "a binary column (BYTE_ARRAY) or a {bytes, path} struct",
        }
    }
}

pub(crate) struct Table {
    path: std::path::PathBuf,
    reader: SerializedFileReader<File>,
    fields: Vec<TypePtr>,
}

fn type_name(t: &Type) -> String {
    if t.is_group() {
        let kids: Vec<String> = t
            .get_fields()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        return format!("struct {{{}}}", kids.join(", "));
    }
    let info = t.get_basic_info();
    match info.logical_type_ref() {
        Some(l) => format!("{:?} ({l:?})", t.get_physical_type()),
        None => format!("{:?}", t.get_physical_type()),
    }
}

fn primitive_ok(t: &Type, kind: Kind) -> bool {
    if !t.is_primitive() {
        return false;
    }
    let info = t.get_basic_info();
    if info.has_repetition() && info.repetition() == Repetition::REPEATED {
        return false;
    }
    let logical = info.logical_type_ref();
    let plain_or_int = matches!(logical, None | Some(LogicalType::Integer(_)));
    match (kind, t.get_physical_type()) {
        (Kind::Text, PhysicalType::BYTE_ARRAY) => matches!(
            logical,
            None | Some(LogicalType::String) | Some(LogicalType::Enum) | Some(LogicalType::Json)
        ),
        (Kind::Integer | Kind::Float, PhysicalType::INT32 | PhysicalType::INT64) => plain_or_int,
        (Kind::Integer | Kind::Float, PhysicalType::FLOAT | PhysicalType::DOUBLE) => {
            logical.is_none()
        }
        (Kind::Binary, PhysicalType::BYTE_ARRAY) => true,
        _ => false,
    }
}

fn kind_ok(t: &Type, kind: Kind) -> bool {
    if kind == Kind::Binary && t.is_group() {
        return t
            .get_fields()
            .iter()
            .any(|f| f.name() == "bytes" && primitive_ok(f, Kind::Binary));
    }
    primitive_ok(t, kind)
}

/// Turns a panic inside the parquet crate (possible on hostile files) into an error.
fn guard<T>(path: &Path, f: impl FnOnce() -> Result<T, DataError>) -> Result<T, DataError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(DataError::Parquet {
            path: path.to_path_buf(),
            message: "the parquet reader failed on malformed data".into(),
        })
    })
}

impl Table {
    pub(crate) fn open(path: &Path) -> Result<Table, DataError> {
        let file = File::open(path).map_err(|e| DataError::io(path, "open", e))?;
        guard(path, || {
            let reader = SerializedFileReader::new(file).map_err(|e| DataError::Parquet {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            let fields = reader
                .metadata()
                .file_metadata()
                .schema_descr()
                .root_schema()
                .get_fields()
                .to_vec();
            Ok(Table {
                path: path.to_path_buf(),
                reader,
                fields,
            })
        })
    }

    pub(crate) fn column_names(&self) -> Vec<&str> {
        self.fields.iter().map(|f| f.name()).collect()
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.fields.iter().any(|f| f.name() == name)
    }

    /// Fails unless column `name` exists and holds `kind`; `fix` completes a missing-column error.
    pub(crate) fn require(&self, name: &str, kind: Kind, fix: &str) -> Result<(), DataError> {
        let Some(t) = self.fields.iter().find(|f| f.name() == name) else {
            return Err(DataError::MissingColumn {
                path: self.path.clone(),
                column: name.to_string(),
                found: self.column_names().join(", "),
                fix: fix.to_string(),
            });
        };
        if !kind_ok(t, kind) {
            return Err(DataError::ColumnType {
                path: self.path.clone(),
                column: name.to_string(),
                found: type_name(t),
                expected: kind.expected().to_string(),
            });
        }
        Ok(())
    }

    /// Calls `f(row_index, row)` for every row, reading only the `columns` that exist.
    pub(crate) fn for_each_row(
        &self,
        columns: &[&str],
        mut f: impl FnMut(usize, &Row) -> Result<(), DataError>,
    ) -> Result<(), DataError> {
        let parquet_err = |e: parquet::errors::ParquetError| DataError::Parquet {
            path: self.path.clone(),
            message: e.to_string(),
        };
        guard(&self.path, || {
            let root = self
                .reader
                .metadata()
                .file_metadata()
                .schema_descr()
                .root_schema();
            let fields: Vec<TypePtr> = self
                .fields
                .iter()
                .filter(|t| columns.contains(&t.name()))
                .cloned()
                .collect();
            let projection = Type::group_type_builder(root.name())
                .with_fields(fields)
                .build()
                .map_err(parquet_err)?;
            let iter = self
                .reader
                .get_row_iter(Some(projection))
                .map_err(parquet_err)?;
            for (i, row) in iter.enumerate() {
                let row = row.map_err(parquet_err)?;
                f(i, &row)?;
            }
            Ok(())
        })
    }
}

/// The value of column `name` in `row` (`None` when absent or null).
pub(crate) fn get<'a>(row: &'a Row, name: &str) -> Option<&'a Field> {
    row.get_column_iter()
        .find(|(n, _)| n.as_str() == name)
        .map(|(_, f)| f)
        .filter(|f| !matches!(f, Field::Null))
}

pub(crate) fn text(f: &Field) -> Result<String, String> {
    match f {
        Field::Str(s) => Ok(s.clone()),
        Field::Bytes(b) => std::str::from_utf8(b.data())
            .map(str::to_string)
            .map_err(|_| "not valid UTF-8".to_string()),
        other => Err(format!("expected a string, found {other}")),
    }
}

pub(crate) fn float(f: &Field) -> Result<f64, String> {
    Ok(match f {
        Field::Double(v) => *v,
        Field::Float(v) => *v as f64,
        Field::Byte(v) => *v as f64,
        Field::Short(v) => *v as f64,
        Field::Int(v) => *v as f64,
        Field::Long(v) => *v as f64,
        Field::UByte(v) => *v as f64,
        Field::UShort(v) => *v as f64,
        Field::UInt(v) => *v as f64,
        Field::ULong(v) => *v as f64,
        other => return Err(format!("expected a number, found {other}")),
    })
}

pub(crate) fn integer(f: &Field) -> Result<i64, String> {
    match f {
        Field::Byte(v) => Ok(*v as i64),
        Field::Short(v) => Ok(*v as i64),
        Field::Int(v) => Ok(*v as i64),
        Field::Long(v) => Ok(*v),
        Field::UByte(v) => Ok(*v as i64),
        Field::UShort(v) => Ok(*v as i64),
        Field::UInt(v) => Ok(*v as i64),
        Field::ULong(v) => i64::try_from(*v).map_err(|_| format!("{v} is out of range")),
        Field::Float(_) | Field::Double(_) => {
            let v = float(f)?;
            if v.is_finite() && v.fract() == 0.0 && v.abs() < 9.0e15 {
                Ok(v as i64)
            } else {
                Err(format!("{v} is not a whole number"))
            }
        }
        other => Err(format!("expected an integer, found {other}")),
    }
}

/// Bytes of a binary cell or of the `bytes` member of a `{bytes, path}` struct; `Ok(None)` when
/// the struct's bytes are null.
pub(crate) fn binary(f: &Field) -> Result<Option<Arc<[u8]>>, String> {
    match f {
        Field::Bytes(b) => Ok(Some(b.data().into())),
        Field::Str(s) => Ok(Some(s.as_bytes().into())),
        Field::Group(r) => match get(r, "bytes") {
            Some(inner) => binary(inner),
            None => Ok(None),
        },
        other => Err(format!("expected bytes, found {other}")),
    }
}
