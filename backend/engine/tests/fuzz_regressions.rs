//! Inputs the scan-reader fuzzer found (`fuzz/`), replayed: each must give slices or an error, without a
//! panic and without touching more memory than the file could justify. Alone in its test binary, so the
//! process's peak RSS is this test's.

use std::path::Path;

/// The fuzzer's encoding: the first byte picks the file kind, the rest is the file.
fn replay(input: &[u8], dir: &Path) -> String {
    let Some((&kind, bytes)) = input.split_first() else { return String::new() };
    let name = ["scan.dcm", "scan.nii", "scan.nii.gz", "scan.png"][kind as usize % 4];
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    match repdiff_engine::imaging::read_slices(&path) {
        Ok(slices) => format!("{} slices", slices.len()),
        Err(e) => e.to_string(),
    }
}

fn peak_rss_mib() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    // SAFETY: initialised by getrusage above (zeroed otherwise).
    unsafe { usage.assume_init() }.ru_maxrss / 1024
}

#[test]
fn fuzzer_findings_are_refused_cheaply() {
    let cases = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scans/fuzz");
    let dir = std::env::temp_dir().join(format!("repdiff-fuzz-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut names: Vec<_> = std::fs::read_dir(&cases).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    assert!(!names.is_empty());
    for path in names {
        let outcome = replay(&std::fs::read(&path).unwrap(), &dir);
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("panic-dicom") {
            assert!(outcome.contains("corrupt pixel data"), "{name}: {outcome}");
        }
        if name.starts_with("oom-dicom") {
            assert!(outcome.contains("claims") && outcome.contains("bytes, the file has"), "{name}: {outcome}");
        }
        eprintln!("{name}: {outcome}");
    }
    std::fs::remove_dir_all(&dir).ok();
    let peak = peak_rss_mib();
    assert!(peak < 400, "replaying the findings peaked at {peak} MiB");
}
