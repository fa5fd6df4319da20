//! Helpers shared by the parity tests.

use repdiff_engine::{DType, Tensor};

/// max |ours - reference| / max |reference|, in f32.
pub fn rel_err(ours: &Tensor, reference: &Tensor) -> f32 {
    assert_eq!(ours.dims(), reference.dims(), "shapes differ");
    let ours = ours.to_dtype(DType::F32).unwrap();
    let reference = reference.to_dtype(DType::F32).unwrap();
    let diff = (&ours - &reference).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let scale = reference.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-12);
    diff / scale
}

/// Asserts agreement to the project's f32 bar: relative error under 1e-4.
pub fn assert_close(what: &str, ours: &Tensor, reference: &Tensor) {
    let err = rel_err(ours, reference);
    eprintln!("{what}: relative error {err:e}");
    assert!(err < 1e-4, "{what}: relative error {err:e}");
}
