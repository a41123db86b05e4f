//! Where kormo's tests find what they need from outside the repository, as the Bazel build
//! provides it (pinned in WORKSPACE and third_party/, shipped as test data; tools/build/crate.bzl's
//! `test_deps` sets the variables):
//!
//! | variable            | Bazel provides                                      | under cargo, default |
//! | ---                 | ---                                                 | ---                  |
//! | `KORMO_TEST_PYTHON` | @test_python: python3 with only the wheels of third_party/python/requirements.txt | `python3` on PATH |
//! | `LIBCLANG_PATH`     | @libclang: libclang.so of the PyPI wheel (bindgen loads it) | bindgen's own search |
//! | `KORMO_DEBIAN_FAQ`  | @debian_faq: the pinned debian-faq/-ko packages' HTML | /usr/share/doc/debian/FAQ |
//! | `KORMO_PUBLISHED_TOKENIZERS` | @tokenizer_<family>: published tokenizer.json files (npm), `family=path ...` | none (rust/tokenizer/tests/published.rs reads it) |
//!
//! A test that needs one and cannot find it fails with one line naming what is missing and how
//! the build provides it ([`missing`]); it never skips. Under cargo, point a variable at Bazel's
//! copy (`$(tools/bazel info output_base)/external/test_python/bin/python3`) or at the machine's.
//!
//! [`cli`] holds the command-line checks every crate's `tests/help.rs` makes of its binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where `debian-faq` installs its HTML (the default under cargo).
pub const DEBIAN_FAQ_DIR: &str = "/usr/share/doc/debian/FAQ";

/// Fails the calling test: `what` is missing; says which Bazel repository provides it and which
/// variable points a cargo run at it.
#[track_caller]
pub fn missing(what: &str, provider: &str, variable: &str) -> ! {
    panic!(
        "missing test prerequisite: {what}; `tools/bazel test` provides it ({provider}), \
         under cargo set {variable}"
    )
}

/// A variable's value as an absolute path (Bazel's are relative to the test's working
/// directory, which a child process may not share), or None when unset.
fn path_var(variable: &str) -> Option<PathBuf> {
    let value = PathBuf::from(std::env::var_os(variable)?);
    if value.is_absolute() {
        return Some(value);
    }
    Some(std::env::current_dir().map_or(value.clone(), |cwd| cwd.join(&value)))
}

const PYTHON_PROVIDER: &str = "@test_python, pinned in third_party/python/requirements.txt";

/// The tests' python3 with `modules` importable: a Command for it with no arguments yet.
#[track_caller]
pub fn python(modules: &[&str]) -> Command {
    let interpreter = path_var("KORMO_TEST_PYTHON").unwrap_or_else(|| PathBuf::from("python3"));
    let shown = interpreter.display();
    let mut check = Command::new(&interpreter);
    check.arg("-c").arg(format!("import {}", ["sys"].iter().chain(modules).copied().collect::<Vec<_>>().join(", ")));
    match check.output() {
        Err(e) => missing(&format!("python3 ({shown}: {e})"), PYTHON_PROVIDER, "KORMO_TEST_PYTHON"),
        Ok(out) if !out.status.success() => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let reason = stderr.lines().last().unwrap_or("no output");
            missing(
                &format!("Python module(s) {} for {shown} ({reason})", modules.join(", ")),
                PYTHON_PROVIDER,
                "KORMO_TEST_PYTHON",
            )
        }
        Ok(_) => Command::new(interpreter),
    }
}

/// The folder of the Debian FAQ's English pages (`*.en.html`), with the Korean ones in `ko/`
/// (`*.ko.html`). `KORMO_DEBIAN_FAQ` names the folder or a file directly in it.
#[track_caller]
pub fn debian_faq() -> PathBuf {
    let dir = match path_var("KORMO_DEBIAN_FAQ") {
        Some(path) if path.is_file() => path.parent().map(Path::to_path_buf).unwrap_or(path),
        Some(path) => path,
        None => PathBuf::from(DEBIAN_FAQ_DIR),
    };
    for (folder, suffix) in [(dir.clone(), ".en.html"), (dir.join("ko"), ".ko.html")] {
        if !has_file_ending(&folder, suffix) {
            missing(
                &format!("the Debian FAQ (no *{suffix} in {})", folder.display()),
                "@debian_faq, the debian-faq and debian-faq-ko 11.1 packages pinned in WORKSPACE",
                "KORMO_DEBIAN_FAQ (or apt-get install debian-faq debian-faq-ko)",
            );
        }
    }
    dir
}

fn has_file_ending(dir: &Path, suffix: &str) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(suffix)))
    })
}

const LIBCLANG_PROVIDER: &str = "@libclang, the PyPI wheel pinned in third_party/libclang/requirements.txt";

/// Checks that `LIBCLANG_PATH`, when set, names libclang (a file, or a folder holding
/// libclang*.so*; bindgen resolves it against the working directory, as it is given). Unset
/// (cargo), bindgen searches the system and [`libclang_not_found`] reports a failed search.
#[track_caller]
pub fn libclang() {
    let Some(path) = path_var("LIBCLANG_PATH") else {
        return;
    };
    let found = if path.is_dir() { has_libclang(&path) } else { path.is_file() };
    if !found {
        missing(
            &format!("libclang (LIBCLANG_PATH={} holds no libclang.so)", path.display()),
            LIBCLANG_PROVIDER,
            "LIBCLANG_PATH",
        );
    }
}

fn has_libclang(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| {
            e.file_name().to_str().is_some_and(|n| n.starts_with("libclang") && n.contains(".so"))
        })
    })
}

/// Fails the calling test after bindgen found no libclang (its own search, cargo runs).
#[track_caller]
pub fn libclang_not_found(detail: &str) -> ! {
    missing(&format!("libclang ({detail})"), LIBCLANG_PROVIDER, "LIBCLANG_PATH (or apt-get install libclang-dev)")
}

/// A unique empty directory for a test: under $TEST_TMPDIR (Bazel) or the system temp dir.
pub fn test_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("TEST_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = base.join(format!("kormo-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating a test directory");
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
        let payload = std::panic::catch_unwind(f).expect_err("should have failed");
        payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_else(|| payload.downcast_ref::<&str>().unwrap_or(&"").to_string())
    }

    /// Under Bazel every variable is set and what it names works: the pinned modules import
    /// (at their pinned versions) with none of the machine's site-packages on the path.
    #[test]
    fn build_provides_every_prerequisite() {
        if std::env::var_os("TEST_SRCDIR").is_none() {
            eprintln!("not under Bazel: checks only what the variables of this environment name");
        }
        let out = python(&["unicodedata2", "tokenizers", "numpy"])
            .arg("-c")
            .arg("import sys, unicodedata2, tokenizers, numpy; print(unicodedata2.unidata_version, tokenizers.__version__, numpy.__version__, sys.flags.no_site)")
            .output()
            .unwrap();
        let versions = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        if std::env::var_os("TEST_SRCDIR").is_some() {
            assert_eq!(versions.trim(), "16.0.0 0.23.3 2.3.5 1");
        }
        let faq = debian_faq();
        assert!(faq.join("index.en.html").is_file() && faq.join("ko").is_dir(), "{}", faq.display());
        libclang();
    }

    #[test]
    fn missing_module_is_one_clear_line() {
        let message = panic_message(|| {
            python(&["kormo_no_such_module"]);
        });
        assert!(message.starts_with("missing test prerequisite: Python module(s) kormo_no_such_module for "), "{message}");
        assert!(message.contains("ModuleNotFoundError") && message.contains("@test_python"), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn missing_message_names_provider_and_variable() {
        let message = panic_message(|| missing("libclang (x)", LIBCLANG_PROVIDER, "LIBCLANG_PATH"));
        assert_eq!(
            message,
            "missing test prerequisite: libclang (x); `tools/bazel test` provides it (@libclang, the PyPI \
             wheel pinned in third_party/libclang/requirements.txt), under cargo set LIBCLANG_PATH"
        );
    }
}

/// Checks of a binary's command line, shared by every crate's `tests/help.rs`.
pub mod cli {
    use std::process::Command;

    /// Exit code and stdout + stderr of the binary `bin` run with `args`.
    pub fn run(bin: &str, args: &[&str]) -> (Option<i32>, String) {
        let out = Command::new(bin).args(args).output().unwrap_or_else(|e| panic!("{bin}: {e}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    }

    /// `bin args` (e.g. `["export", "--help"]`) exits 0 and prints every one of `needles`.
    #[track_caller]
    pub fn help_shows(bin: &str, args: &[&str], needles: &[&str]) {
        let (code, text) = run(bin, args);
        assert_eq!(code, Some(0), "{bin} {args:?}: {text}");
        for needle in needles {
            assert!(text.contains(needle), "{bin} {args:?} lacks {needle:?}: {text}");
        }
    }

    /// `bin args`, which misspells an option, is a usage error (exit code 2) that names the
    /// option meant.
    #[track_caller]
    pub fn misspelt_suggests(bin: &str, args: &[&str], meant: &str) {
        let (code, text) = run(bin, args);
        assert_eq!(code, Some(2), "{bin} {args:?}: {text}");
        let tip = format!("a similar argument exists: '{meant}'");
        assert!(text.contains(&tip), "{bin} {args:?} lacks {tip:?}: {text}");
    }
}
