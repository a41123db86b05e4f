//! Every input format read as documents and records: JSON lines plain, gzip (several members)
//! and zstd give the same documents; Parquet files written here with the crate's own writer
//! (several row groups, snappy and zstd pages, nulls, a nested list-of-structs column as chat
//! datasets have it); and the broken cases: truncated gzip/zstd streams, a Parquet file
//! without the text column or with a non-string one, a pretty-printed JSON file.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use kormo_corpus::documents::read_documents;
use kormo_testdeps::test_dir;
use kormo_corpus::records::read_records;
use kormo_corpus::{Location, MalformedInput};
use parquet::basic::{Compression, ZstdLevel};
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

const JSONL: &str = "{\"text\":\"첫 문서입니다.\\n둘째 줄\",\"id\":1}\n\n{\"text\":\"Second document, English.\"}\nnot json\n{\"text\":3}\n{\"text\":\"셋째 - third.\"}\n";

fn expected_jsonl(file: &Path) -> Vec<Result<String, MalformedInput>> {
    vec![
        Ok("첫 문서입니다.\n둘째 줄".into()),
        Ok("Second document, English.".into()),
        Err(MalformedInput::new(
            file,
            Location::Line(4),
            "invalid JSON: expected ident at line 1 column 2".into(),
        )),
        Err(MalformedInput::new(
            file,
            Location::Line(5),
            "field \"text\" is not a string: a number".into(),
        )),
        Ok("셋째 - third.".into()),
    ]
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(bytes, 3).unwrap()
}

fn documents(path: &Path) -> Vec<Result<String, MalformedInput>> {
    read_documents(path, "text").collect()
}

#[test]
fn json_lines_plain_gzip_and_zstd_read_the_same() {
    let dir = test_dir("formats-jsonl");
    let (a, b) = JSONL.as_bytes().split_at(60);
    let mut two_members = gzip(a);
    two_members.extend(gzip(b));
    let mut two_frames = zstd(a);
    two_frames.extend(zstd(b));
    for (name, bytes) in [
        ("plain.jsonl", JSONL.as_bytes().to_vec()),
        ("c4.json.gz", gzip(JSONL.as_bytes())),
        ("members.jsonl.gz", two_members),
        ("frames.jsonl.zst", two_frames),
        // Content decides: a gzip stream under a plain name is decompressed.
        ("unlabelled.jsonl", gzip(JSONL.as_bytes())),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(documents(&path), expected_jsonl(&path), "{name}");
    }
    let text = dir.join("notes.txt.zst");
    std::fs::write(&text, zstd("p1\np2\n\n\ndoc two\n".as_bytes())).unwrap();
    assert_eq!(
        documents(&text),
        vec![Ok("p1\np2\n".to_string()), Ok("doc two\n".to_string())]
    );
    let html = dir.join("page.html.gz");
    std::fs::write(&html, gzip(b"<p>Hello &amp; <b>bye</b></p>")).unwrap();
    assert_eq!(documents(&html), vec![Ok("Hello & bye\n".to_string())]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn truncated_compressed_streams_end_the_file_with_a_fatal_error() {
    let dir = test_dir("formats-truncated");
    let many: String = (0..20000)
        .map(|i| format!("{{\"text\": \"document {i} 문서 {}\"}}\n", i * 7919 % 1000))
        .collect();
    for (name, bytes) in [("cut.jsonl.gz", gzip(many.as_bytes())), ("cut.jsonl.zst", zstd(many.as_bytes()))] {
        let path = dir.join(name);
        std::fs::write(&path, &bytes[..bytes.len() * 2 / 3]).unwrap();
        let got = documents(&path);
        let last = got.last().unwrap().as_ref().unwrap_err();
        assert!(last.fatal, "{name}: {last}");
        assert!(
            last.to_string().contains("read error (truncated or corrupt file?)"),
            "{name}: {last}"
        );
        assert!(got[..got.len() - 1].iter().all(|d| d.is_ok()), "{name}");
        assert!(got.len() > 1000 && got.len() < 20000, "{name}: {}", got.len());
    }
    let pretty = dir.join("pretty.json");
    std::fs::write(&pretty, "[\n  {\"text\": \"a\"}\n]\n").unwrap();
    let got = documents(&pretty);
    assert_eq!(got.len(), 1);
    let e = got[0].as_ref().unwrap_err();
    assert!(e.fatal && e.to_string().contains("pretty.json:1: not JSON lines"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn plain_text_documents_drop_a_document_with_an_invalid_line() {
    let dir = test_dir("formats-text");
    let txt = dir.join("b.txt");
    std::fs::write(&txt, b"p1\np2\n\n\n\ndoc two\n\xff\nsame doc\n\nafter\n").unwrap();
    let got = documents(&txt);
    assert_eq!(got[0], Ok("p1\np2\n".to_string()));
    assert_eq!(got[1].as_ref().unwrap_err().location, Location::Line(7));
    assert!(!got[1].as_ref().unwrap_err().fatal);
    assert_eq!(got[2], Ok("after\n".to_string()));
    assert_eq!(got.len(), 3);
    let missing = documents(&dir.join("nope.txt"));
    assert_eq!(missing.len(), 1);
    let e = missing[0].as_ref().unwrap_err();
    assert!(e.fatal && e.to_string().contains("nope.txt: "), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// One column chunk: values, definition and repetition levels.
type Column = (Vec<&'static str>, Option<Vec<i16>>, Option<Vec<i16>>);

/// Writes a Parquet file: per row group, the byte-array columns in schema order, then an
/// int64 `id` column if `ids` is given (one id per row).
fn write_parquet(
    path: &Path,
    schema: &str,
    row_groups: &[(Vec<Column>, Option<Vec<i64>>)],
    compression: Compression,
) {
    let schema = Arc::new(parse_message_type(schema).unwrap());
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(compression)
            .set_data_page_size_limit(256)
            .build(),
    );
    let mut writer =
        SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
    for (columns, ids) in row_groups {
        let mut group = writer.next_row_group().unwrap();
        for (values, def, rep) in columns {
            let mut col = group.next_column().unwrap().unwrap();
            let values: Vec<ByteArray> = values.iter().map(|v| ByteArray::from(*v)).collect();
            col.typed::<ByteArrayType>()
                .write_batch(&values, def.as_deref(), rep.as_deref())
                .unwrap();
            col.close().unwrap();
        }
        if let Some(ids) = ids {
            let mut col = group.next_column().unwrap().unwrap();
            col.typed::<Int64Type>().write_batch(ids, None, None).unwrap();
            col.close().unwrap();
        }
        group.close().unwrap();
    }
    writer.close().unwrap();
}

const TEXT_SCHEMA: &str = "message schema { optional binary text (UTF8); required int64 id; }";

fn two_row_groups() -> Vec<(Vec<Column>, Option<Vec<i64>>)> {
    let long = "긴 문서 long document ".repeat(40).leak() as &'static str;
    vec![
        (
            vec![(vec!["한국어 문서. Korean text.", long], Some(vec![1, 0, 1]), None)],
            Some(vec![10, 11, 12]),
        ),
        (vec![(vec!["third, 셋째"], Some(vec![1]), None)], Some(vec![13])),
    ]
}

#[test]
fn parquet_text_column_is_streamed_by_row_group() {
    let dir = test_dir("formats-parquet");
    for (name, compression) in [
        ("train-00000-of-00002.parquet", Compression::SNAPPY),
        ("zstd.parquet", Compression::ZSTD(ZstdLevel::default())),
        ("no-extension", Compression::UNCOMPRESSED),
    ] {
        let path = dir.join(name);
        write_parquet(&path, TEXT_SCHEMA, &two_row_groups(), compression);
        let got = documents(&path);
        assert_eq!(got.len(), 4, "{name}");
        assert_eq!(got[0], Ok("한국어 문서. Korean text.".to_string()));
        assert_eq!(
            got[1],
            Err(MalformedInput::new(&path, Location::Row(2), "field \"text\" is not a string: null".into()))
        );
        assert_eq!(got[2].as_ref().unwrap().len(), "긴 문서 long document ".len() * 40);
        assert_eq!(got[3], Ok("third, 셋째".to_string()));
        let records: Vec<_> = read_records(&path, &[]).map(|r| r.unwrap()).collect();
        assert_eq!(records.len(), 4);
        assert_eq!(records[3].location, Location::Row(4));
        assert_eq!(records[3].value, serde_json::json!({"text": "third, 셋째", "id": 13}));
        let ids: Vec<_> = read_records(&path, &["id"]).map(|r| r.unwrap().value).collect();
        assert_eq!(ids[1], serde_json::json!({"id": 11}));
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn parquet_without_a_text_column_is_refused_whole() {
    let dir = test_dir("formats-parquet-bad");
    let path = dir.join("data.parquet");
    write_parquet(&path, TEXT_SCHEMA, &two_row_groups(), Compression::SNAPPY);
    let got: Vec<_> = read_documents(&path, "content").collect();
    assert_eq!(
        got,
        vec![Err(MalformedInput::fatal(&path, Location::File, "no column \"content\" (columns: text, id)".into()))]
    );
    let got: Vec<_> = read_documents(&path, "id").collect();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].as_ref().unwrap_err().reason, "column \"id\" is INT64, not a string");
    let binary = dir.join("binary.parquet");
    write_parquet(
        &binary,
        "message schema { required binary text; }",
        &[(vec![(vec!["bytes"], None, None)], None)],
        Compression::SNAPPY,
    );
    let e = read_documents(&binary, "text").next().unwrap().unwrap_err();
    assert!(e.fatal && e.reason.contains("binary"), "{e}");
    let corrupt = dir.join("corrupt.parquet");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&corrupt, &bytes[..bytes.len() - 10]).unwrap();
    let e = read_documents(&corrupt, "text").next().unwrap().unwrap_err();
    assert!(e.fatal && e.reason.starts_with("not a readable Parquet file"), "{e}");
    let text = dir.join("notes.txt");
    std::fs::write(&text, "plain\n").unwrap();
    let e = read_records(&text, &[]).next().unwrap().unwrap_err();
    assert!(e.fatal && e.reason.contains("holds no records"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn parquet_nested_conversations_become_json_records() {
    let dir = test_dir("formats-parquet-chat");
    let path = dir.join("chat.parquet");
    let schema = "message schema {
        optional group messages (LIST) {
            repeated group list {
                optional group element {
                    optional binary role (UTF8);
                    optional binary content (UTF8);
                }
            }
        }
    }";
    // Row 1: two messages; row 2: one message.
    let levels = (Some(vec![4, 4, 4]), Some(vec![0, 1, 0]));
    write_parquet(
        &path,
        schema,
        &[(
            vec![
                (vec!["user", "assistant", "user"], levels.0.clone(), levels.1.clone()),
                (vec!["안녕?", "Hello! 안녕하세요.", "bye"], levels.0, levels.1),
            ],
            None,
        )],
        Compression::SNAPPY,
    );
    let records: Vec<_> = read_records(&path, &["messages"]).map(|r| r.unwrap().value).collect();
    assert_eq!(
        records,
        vec![
            serde_json::json!({"messages": [{"role": "user", "content": "안녕?"},
                                            {"role": "assistant", "content": "Hello! 안녕하세요."}]}),
            serde_json::json!({"messages": [{"role": "user", "content": "bye"}]}),
        ]
    );
    let e = read_documents(&path, "messages").next().unwrap().unwrap_err();
    assert!(e.fatal && e.reason.contains("is a group"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}
