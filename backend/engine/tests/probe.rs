//! The linear probe against scikit-learn's LogisticRegression, and learning on separable features.

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
    use repdiff_engine::Device;
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
