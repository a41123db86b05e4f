//! Generated sources and the embedded fatbin are consistent with their inputs:
//! - cuda/generate_instantiations.py --check: the variant files, expected_kernels.txt and
//!   src/kernel_names.rs are what the generator writes now;
//! - every expected kernel is present in the embedded fatbin (when nvcc was available at build time).

const GENERATOR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../cuda/generate_instantiations.py");
const EXPECTED: &str = include_str!("../../../cuda/expected_kernels.txt");

#[test]
fn generated_files_in_sync() {
    let out = kormo_testdeps::python(&[])
        .arg(GENERATOR)
        .arg("--check")
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 {GENERATOR}: {e}"));
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kernel_names_match_expected_list() {
    let expected: Vec<&str> = EXPECTED.lines().collect();
    assert_eq!(expected, kormo_cuda::kernel_names::KERNEL_NAMES);
}

#[test]
fn fatbin_contains_every_kernel() {
    let fatbin = kormo_cuda::module::FATBIN;
    if fatbin.is_empty() {
        println!("skipped: kernels not built (no nvcc at build time)");
        return;
    }
    // Names appear verbatim in each cubin's symbol table and in the PTX.
    let missing: Vec<&str> = kormo_cuda::kernel_names::KERNEL_NAMES
        .iter()
        .copied()
        .filter(|name| !fatbin.windows(name.len()).any(|w| w == name.as_bytes()))
        .collect();
    assert!(missing.is_empty(), "kernels missing from the fatbin: {missing:?}");
}
