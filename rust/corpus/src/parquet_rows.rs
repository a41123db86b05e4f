//! Rows of a Parquet file, read with the `parquet` crate's record reader: one row group at a
//! time and, inside it, page by page, so memory holds a few pages of the selected columns,
//! never the file. Only the selected top-level columns are decoded (a text corpus decodes its
//! text column alone).

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use parquet::basic::{ConvertedType, Type as PhysicalType};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::reader::RowIter;
use parquet::record::{Field, Row};
use parquet::schema::types::Type;

pub(crate) struct ParquetRows {
    rows: RowIter<'static>,
}

/// Opens `path` with the top-level `columns` selected (all if empty). The error is the
/// reason only (callers name the file).
pub(crate) fn open(path: &Path, columns: &[&str]) -> Result<ParquetRows, String> {
    open_checked(path, columns, |_| Ok(()))
}

/// Opens `path` with only `column` selected, which must hold strings.
pub(crate) fn open_text(path: &Path, column: &str) -> Result<ParquetRows, String> {
    open_checked(path, &[column], check_string_column)
}

fn open_checked(
    path: &Path,
    columns: &[&str],
    check: impl Fn(&Type) -> Result<(), String>,
) -> Result<ParquetRows, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let reader =
        SerializedFileReader::new(file).map_err(|e| format!("not a readable Parquet file: {e}"))?;
    let schema = reader.metadata().file_metadata().schema();
    let fields = schema.get_fields();
    let find = |name: &str| {
        fields.iter().find(|f| f.name() == name).ok_or_else(|| {
            let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
            format!("no column {name:?} (columns: {})", names.join(", "))
        })
    };
    let projection = if columns.is_empty() {
        None
    } else {
        let mut selected: Vec<Arc<Type>> = Vec::with_capacity(columns.len());
        for column in columns {
            let field = find(column)?;
            check(field)?;
            selected.push(field.clone());
        }
        let group = Type::group_type_builder(schema.name()).with_fields(selected);
        Some(group.build().map_err(|e| e.to_string())?)
    };
    let rows = RowIter::from_file_into(Box::new(reader))
        .project(projection)
        .map_err(|e| e.to_string())?;
    Ok(ParquetRows { rows })
}

/// A column of text: BYTE_ARRAY annotated as a string (UTF8, JSON or ENUM). Plain binary
/// would come out as base64, never as text.
fn check_string_column(field: &Type) -> Result<(), String> {
    let name = field.name();
    if !field.is_primitive() {
        return Err(format!("column {name:?} is a group (struct, list or map), not a string"));
    }
    let physical = field.get_physical_type();
    let converted = field.get_basic_info().converted_type();
    if physical == PhysicalType::BYTE_ARRAY
        && matches!(converted, ConvertedType::UTF8 | ConvertedType::JSON | ConvertedType::ENUM)
    {
        return Ok(());
    }
    let kind = if physical == PhysicalType::BYTE_ARRAY {
        "binary (BYTE_ARRAY without a string annotation)".to_string()
    } else {
        physical.to_string()
    };
    Err(format!("column {name:?} is {kind}, not a string"))
}

/// The string of a text row opened by [`open_text`]: `None` for a null.
pub(crate) fn text_of(row: Row) -> Option<String> {
    match row.into_columns().into_iter().next() {
        Some((_, Field::Str(text))) => Some(text),
        _ => None,
    }
}

impl Iterator for ParquetRows {
    type Item = Result<Row, String>;

    fn next(&mut self) -> Option<Self::Item> {
        // The record reader panics (`unimplemented!`) on a few exotic column types rather
        // than failing; that is reported as this file's error, not a crash.
        let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.rows.next()))
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Some(Err(parquet::errors::ParquetError::General(format!(
                    "unsupported column type: {what}"
                ))))
            })?;
        Some(next.map_err(|e| short(&e.to_string())))
    }
}

/// The reader's messages can quote a whole value; keep the first 300 characters.
fn short(message: &str) -> String {
    match message.char_indices().nth(300) {
        Some((at, _)) => format!("{}...", &message[..at]),
        None => message.to_owned(),
    }
}
