//! The linear probe against scikit-learn's LogisticRegression, and learning on separable features.

use candle_core::{Device, Tensor};
use repdiff_engine::probe::Probe;

fn rows(v: &serde_json::Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect()
}

#[test]
fn probabilities_match_scikit_learn() {
    // Written by fixtures/probe/gen_probe_reference.py.
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/probe/probe_reference.json"))
            .unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (i, case) in reference["cases"].as_array().unwrap().iter().enumerate() {
        let classes = case["classes"].as_u64().unwrap() as usize;
        let labels: Vec<u32> = case["labels"].as_array().unwrap().iter().map(|y| y.as_u64().unwrap() as u32).collect();
        let probe = Probe::fit(&rows(&case["train"]), &labels, classes, case["lambda"].as_f64().unwrap()).unwrap();
        let got = probe.probabilities(&rows(&case["test"]));
        let want = rows(&case["probabilities"]);
        let worst =
            got.iter().flatten().zip(want.iter().flatten()).map(|(a, &b)| (a - b as f64).abs()).fold(0.0, f64::max);
        println!("case {i}: {classes} classes, {} Newton steps, worst difference {worst:.2e}", probe.iterations);
        assert!(worst < 1e-5, "case {i}: probabilities differ from scikit-learn's by {worst}");
    }
}

#[test]
fn a_probe_separates_separable_features_and_refuses_bad_input() {
    let features: Vec<Vec<f32>> =
        (0..40).map(|i| vec![(i % 2) as f32 * 2.0 - 1.0 + 0.1 * (i as f32).sin(), (i as f32).cos()]).collect();
    let labels: Vec<u32> = (0..40).map(|i| (i % 2) as u32).collect();
    let probe = Probe::fit(&features, &labels, 2, 0.1).unwrap();
    assert_eq!(probe.predict(&features), labels);
    assert!(Probe::fit(&features, &labels, 2, 0.0).is_err());
    assert!(Probe::fit(&features, &labels[..3], 2, 1.0).is_err());
    assert!(Probe::fit(&features, &[3; 40], 2, 1.0).is_err());
}

#[test]
fn dinov2_features_feed_a_probe_and_bad_weights_are_refused() {
    use repdiff_engine::data::Dataset;
    use repdiff_engine::dino::{Dino, WEIGHTS_FILE};
    use repdiff_engine::probe::{LAMBDAS, choose};

    let missing = Dino::pretrained(std::path::Path::new("/nonexistent"), 224, &Device::Cpu).err().unwrap();
    assert!(missing.to_string().contains(WEIGHTS_FILE) && missing.to_string().contains("convert_dinov2_weights.py"));
    assert!(Dino::random(0, 100, &Device::Cpu).is_err(), "not a multiple of the patch");

    // Random ViT-S/14 weights at 56 x 56 (4 x 4 patches): the features, their invariance to batching,
    // and a probe on them telling the toy bars apart.
    let clock = std::time::Instant::now();
    let dino = Dino::random(3, 56, &Device::Cpu).unwrap();
    println!("weights {:?}", clock.elapsed());
    let train = Dataset::toy_bars(48, 16, 1, &Device::Cpu).unwrap();
    let validation = Dataset::toy_bars(32, 16, 2, &Device::Cpu).unwrap();
    let x = dino.features(&train.samples, 16).unwrap();
    assert_eq!((x.len(), x[0].len()), (48, 768));
    let one_by_one = dino.features(&train.samples.narrow(0, 0, 3).unwrap(), 1).unwrap();
    for (a, b) in one_by_one.iter().flatten().zip(x.iter().flatten()) {
        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "batching changed a feature: {a} vs {b}");
    }
    let v = dino.features(&validation.samples, 16).unwrap();
    let (y, vy) = (train.labels.unwrap(), validation.labels.unwrap());
    println!("features {:?}", clock.elapsed());
    let (_, m) = choose((&x, &y), (&v, &vy), 2, &LAMBDAS).unwrap();
    println!("probe {:?}", clock.elapsed());
    println!("probe on random DINOv2 features: validation accuracy {:.3}", m.accuracy);
    assert!(m.accuracy >= 0.8, "validation accuracy {}", m.accuracy);

    // The checkpoint format: safetensors with Meta's names; another width is refused by name.
    let dir = std::env::temp_dir().join(format!("repdiff-dino-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wrong: std::collections::HashMap<String, repdiff_engine::Tensor> = [(
        "cls_token".to_string(),
        repdiff_engine::Tensor::zeros((1, 1, 768), repdiff_engine::DType::F32, &Device::Cpu).unwrap(),
    )]
    .into();
    candle_core::safetensors::save(&wrong, dir.join(WEIGHTS_FILE)).unwrap();
    let refused = Dino::pretrained(&dir, 224, &Device::Cpu).err().unwrap().to_string();
    assert!(refused.contains("ViT-S/14"), "{refused}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// 64-bit FNV-1a of a parameter's name: its seed in `gen_dino_reference.py`.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3))
}

/// `count` values in [-1, 1): splitmix64 of (seed + (k + 1) * golden), as the fixture script's `hashed`.
fn hashed(seed: u64, count: usize) -> Vec<f64> {
    (1..=count as u64)
        .map(|k| {
            let mut z = seed.wrapping_add(k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            2.0 * ((z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)) - 1.0
        })
        .collect()
}

/// The fixture script's weights: every tensor non-trivial, each from the hash of its name.
fn parity_tensors() -> std::collections::HashMap<String, Tensor> {
    repdiff_engine::dino::parameter_shapes()
        .into_iter()
        .map(|(name, shape)| {
            let count: usize = shape.iter().product();
            let u = hashed(fnv1a(&name), count);
            let value = |v: f64| -> f64 {
                if name.ends_with("norm1.weight") || name.ends_with("norm2.weight") || name == "norm.weight" {
                    1.0 + 0.2 * v
                } else if name.ends_with(".gamma") {
                    0.3 + 0.2 * v
                } else if name.ends_with("bias") {
                    0.1 * v
                } else if name == "cls_token" || name == "pos_embed" {
                    0.5 * v
                } else {
                    v * (3.0 / (count / shape[0]) as f64).sqrt()
                }
            };
            let values: Vec<f32> = u.into_iter().map(|v| value(v) as f32).collect();
            (name, Tensor::from_vec(values, shape, &Device::Cpu).unwrap())
        })
        .collect()
}

/// Meta's DINOv2 ViT-S/14 (facebookresearch/dinov2, as its torch hub builds it) on the same weights and
/// images, at the native 518 pixels and at 224 (where the position embedding is resampled bicubically):
/// the probe's features agree (fixture: tests/fixtures/dino/gen_dino_reference.py).
#[test]
fn dinov2_features_match_metas_model() {
    use repdiff_engine::dino::Dino;
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dino/dino_reference.safetensors");
    let reference = candle_core::safetensors::load(fixture, &Device::Cpu).unwrap();
    let images: Vec<f32> = hashed(977, 2 * 3 * 32 * 32).into_iter().map(|v| v as f32).collect();
    let images = Tensor::from_vec(images, (2, 3, 32, 32), &Device::Cpu).unwrap();
    for size in [518, 224] {
        let dino = Dino::from_tensors(parity_tensors(), size, &Device::Cpu).unwrap();
        let ours = dino.features(&images, 2).unwrap();
        let theirs = reference[&format!("features_{size}")].to_vec2::<f32>().unwrap();
        let (mut err, mut norm) = (0f64, 0f64);
        for (a, b) in ours.iter().flatten().zip(theirs.iter().flatten()) {
            err = err.max(f64::from((a - b).abs()));
            norm = norm.max(f64::from(b.abs()));
        }
        eprintln!("size {size}: relative error {:.2e}", err / norm);
        assert!(err / norm < 1e-4, "size {size}: max abs difference {err:.3e} against max |value| {norm:.3e}");
    }
}
