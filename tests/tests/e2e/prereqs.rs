//! `scripts/prereqs` finds the libclang that bindgen loads, and only that:
//! `libclang-cpp.so.N` (PostgreSQL's JIT pulls it in) does not count.

use std::path::Path;
use std::process::Command;

/// What `scripts/prereqs --find-libclang` finds in a folder holding `files`.
fn found(files: &[&str]) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    for f in files {
        std::fs::write(dir.path().join(f), b"").unwrap();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/prereqs");
    let out = Command::new("bash")
        .arg(script)
        .arg("--find-libclang")
        .env("LIBCLANG_SEARCH_DIRS", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    match out.status.code() {
        Some(0) => Some(
            Path::new(stdout.trim())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        ),
        Some(1) => {
            assert!(stdout.is_empty(), "{stdout}");
            None
        }
        other => panic!("prereqs exited with {other:?}: {out:?}"),
    }
}

#[test]
fn prereqs_finds_the_libclang_bindgen_loads() {
    for name in [
        "libclang.so",
        "libclang.so.1",
        "libclang-14.so",
        "libclang-14.0.6.so",
        "libclang-14.so.1",
        "libclang.so.14.0.6",
    ] {
        assert_eq!(found(&[name]).as_deref(), Some(name), "{name}");
    }
    for name in [
        "libclang-cpp.so.14",
        "libclang-cpp.so",
        "libclang-rt.so",
        "libclangBasic.a",
        "libclang.a",
        "libclang.so.txt",
    ] {
        assert_eq!(found(&[name]), None, "{name}");
    }
    // Beside PostgreSQL's libclang-cpp, the real one is found.
    assert_eq!(
        found(&["libclang-cpp.so.14", "libclang-14.so.1"]).as_deref(),
        Some("libclang-14.so.1")
    );
}
