//! The layout bindgen recorded for every argument struct (size, alignment, offset of each field,
//! compile-time asserted against the Rust structs inside src/bindings.rs) must also be the
//! layout the C compiler gives the header. This re-checks those numbers with `cc` (the
//! linker rustc already needs), so it runs without bindgen or libclang.

use std::path::PathBuf;
use std::process::Command;

const INCLUDE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../cuda/include");
const BINDINGS: &str = include_str!("../src/bindings.rs");
const HEADER: &str = include_str!("../../../cuda/include/kormo_kernels.h");

/// One recorded fact: (C expression, expected value, label).
fn recorded_facts() -> Vec<(String, u64, String)> {
    // bindgen writes e.g. ["Offset of field: KormoX::rows"][::std::mem::offset_of!(KormoX, rows) - 48usize];
    // which prettyplease spreads over lines as `[\n "label",\n ][...]`: compare with the
    // whitespace collapsed and that layout undone.
    let text = BINDINGS.split_whitespace().collect::<Vec<_>>().join(" ").replace("[ \"", "[\"").replace("\", ]", "\"]");
    let mut facts = Vec::new();
    for chunk in text.split("[\"").skip(1) {
        let Some((label, rest)) = chunk.split_once("\"]") else { continue };
        let Some(value) = rest.split(" - ").nth(1).and_then(|v| v.split("usize").next()) else { continue };
        let value: u64 = value.trim().parse().unwrap_or_else(|_| panic!("unparsable value in {label}"));
        let expr = if let Some(name) = label.strip_prefix("Size of ") {
            format!("sizeof({name})")
        } else if let Some(name) = label.strip_prefix("Alignment of ") {
            format!("_Alignof({name})")
        } else if let Some(field) = label.strip_prefix("Offset of field: ") {
            let (ty, name) = field.split_once("::").expect("Type::field");
            format!("offsetof({ty}, {name})")
        } else {
            continue;
        };
        facts.push((expr, value, label.to_string()));
    }
    facts
}

fn temp_dir() -> PathBuf {
    let base = std::env::var_os("TEST_TMPDIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("kormo-cuda-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

#[test]
fn every_header_struct_has_recorded_layout() {
    let facts = recorded_facts();
    let structs: Vec<&str> = HEADER
        .lines()
        .filter_map(|l| l.strip_prefix("typedef struct "))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert!(structs.len() >= 12, "found only {structs:?} in the header");
    for s in structs {
        assert!(
            facts.iter().any(|(_, _, label)| label == &format!("Size of {s}")),
            "no recorded size for {s}: regenerate src/bindings.rs"
        );
    }
}

#[test]
fn c_compiler_agrees_with_recorded_layout() {
    let facts = recorded_facts();
    assert!(facts.len() > 100, "parsed only {} layout facts from src/bindings.rs", facts.len());
    let mut c = String::from("#include <stddef.h>\n#include \"kormo_kernels.h\"\n");
    for (expr, value, label) in &facts {
        c += &format!("_Static_assert({expr} == {value}, \"{label}\");\n");
    }
    let dir = temp_dir();
    let src = dir.join("layout_check.c");
    std::fs::write(&src, c).expect("write C check");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-std=c11", "-fsyntax-only", "-I", INCLUDE])
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}"));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "C layout differs from src/bindings.rs:\n{}", String::from_utf8_lossy(&out.stderr));
}
