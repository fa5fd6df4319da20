//! Any bytes, named as a DICOM, NIfTI (plain and gzipped) or PNG file, must give slices or an error,
//! never a panic, an abort or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else { return };
    let name = match kind % 4 {
        0 => "scan.dcm",
        1 => "scan.nii",
        2 => "scan.nii.gz",
        _ => "scan.png",
    };
    let dir = std::env::temp_dir().join(format!("repdiff-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let _ = repdiff_engine::imaging::read_slices(&path);
});
