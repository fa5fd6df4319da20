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
