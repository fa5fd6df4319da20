//! The zero-shot diffusion classifier: its score on a perfect denoiser, paired noise, the metrics, and a
//! tiny class-conditional DiT that classifies the toy bars well above chance.

mod toy;

use std::cell::RefCell;

use repdiff_engine::classify::{
    Score, Stopping, SweepOptions, class_errors, classify_images, metrics, model_predictor, noise_draws, predictions,
    test_at,
};
use repdiff_engine::config::DiffusionConfig;
use repdiff_engine::data::Dataset;
use repdiff_engine::diffusion::GaussianDiffusion;
use repdiff_engine::train::CancelToken;
use repdiff_engine::{Device, Tensor};

#[test]
fn a_perfect_denoiser_scores_zero_for_the_true_class_and_every_class_sees_the_same_noise() {
    let diffusion = GaussianDiffusion::new(&DiffusionConfig::default(), false);
    let z0 = repdiff_engine::rng::Rng::new(1).randn((3, 2, 4, 4), &Device::Cpu).unwrap();
    let truth = [1u32, 0, 1];
    let draws = noise_draws(&z0, 4, 7, 0).unwrap();
    let seen = RefCell::new(Vec::new());
    // Knows z0: predicts the exact noise under the true class, the noise of -z0 under any other.
    let mut perfect = |x: &Tensor, t: &[usize], labels: &Tensor| {
        let n = z0.dim(0).unwrap();
        let k = x.dim(0).unwrap() / n;
        for c in 1..k {
            let same = (x.narrow(0, c * n, n).unwrap() - x.narrow(0, 0, n).unwrap()).unwrap().abs().unwrap();
            seen.borrow_mut().push(same.max_all().unwrap().to_scalar::<f32>().unwrap());
        }
        let labels = labels.to_vec1::<u32>().unwrap();
        let mut rows = Vec::new();
        for (i, &label) in labels.iter().enumerate() {
            let image = z0.narrow(0, i % n, 1).unwrap();
            let x0 = if label == truth[i % n] { image } else { image.neg().unwrap() };
            rows.push(diffusion.predict_eps_from_xstart(&x.narrow(0, i, 1).unwrap(), &t[i..=i], &x0).unwrap());
        }
        Ok(Tensor::cat(&rows, 0).unwrap())
    };
    for score in [Score::X0Mse, Score::EpsMse] {
        let errors = class_errors(&diffusion, &mut perfect, &z0, 300, &draws, 2, score).unwrap();
        let e = errors.to_vec2::<f32>().unwrap();
        for (i, &y) in truth.iter().enumerate() {
            assert!(e[i][y as usize] < 1e-8, "{score:?} image {i}: true class scores {}", e[i][y as usize]);
            assert!(e[i][1 - y as usize] > 0.1, "{score:?} image {i}: the wrong class scores {}", e[i][1 - y as usize]);
        }
        assert_eq!(predictions(&errors).unwrap(), truth);
    }
    assert_eq!(seen.borrow().len(), 2 * 4, "one comparison per draw and score");
    assert!(seen.borrow().iter().all(|&d| d == 0.0), "both classes saw the same x_t: {:?}", seen.borrow());
    // The same seed gives the same draws (a rerun scores identically); another seed, others.
    let again = noise_draws(&z0, 4, 7, 0).unwrap();
    let other = noise_draws(&z0, 4, 8, 0).unwrap();
    let diff = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(diff(&draws[3], &again[3]), 0.0);
    assert!(diff(&draws[3], &other[3]) > 0.0);
}

#[test]
fn metrics_match_hand_computed_values() {
    // Two classes: class 1 (haematoma) is the positive one.
    let m = metrics(&[1, 1, 0, 0, 1], &[1, 0, 0, 1, 1], 2).unwrap();
    assert_eq!(m.confusion, vec![vec![1, 1], vec![1, 2]]);
    assert!((m.accuracy - 0.6).abs() < 1e-12);
    assert!((m.precision - 2.0 / 3.0).abs() < 1e-12 && (m.recall - 2.0 / 3.0).abs() < 1e-12);
    assert!((m.f1 - 2.0 / 3.0).abs() < 1e-12);
    // Three classes: macro averages (scikit-learn's average="macro", zero_division=0): class 0 perfect,
    // class 1 never right, class 2 half right.
    let m = metrics(&[0, 1, 2, 2], &[0, 2, 2, 1], 3).unwrap();
    assert!((m.precision - 0.5).abs() < 1e-12 && (m.recall - 0.5).abs() < 1e-12 && (m.f1 - 0.5).abs() < 1e-12);
    // No positive predicted: precision 0, not NaN.
    let m = metrics(&[1, 0], &[0, 0], 2).unwrap();
    assert_eq!((m.precision, m.recall, m.f1), (0.0, 0.0, 0.0));
    assert!(metrics(&[0, 3], &[0, 0], 2).is_err());
}

#[test]
fn a_tiny_class_conditional_dit_classifies_the_toy_bars_well_above_chance() {
    // 1,500 steps of a depth-2 width-64 model on 8x8 bars: about 15 s on two cores.
    let (config, trainer) = toy::trained_class_model(1500);

    // Unseen images: another seed of the generator.
    let test = Dataset::toy_bars(32, 8, 99, &Device::Cpu).unwrap();
    let truth = test.labels.clone().unwrap();
    let diffusion = GaussianDiffusion::new(&config.diffusion, config.model.learn_sigma);
    let mut predict = model_predictor(&trainer.model, &diffusion);
    let (mut best, mut sum): (f64, f64) = (0.0, 0.0);
    let grid = [200, 300, 400, 500];
    for t in grid {
        let draws = noise_draws(&test.samples, 16, 5, t as u64).unwrap();
        let errors = class_errors(&diffusion, &mut predict, &test.samples, t, &draws, 2, Score::X0Mse).unwrap();
        let m = metrics(&truth, &predictions(&errors).unwrap(), 2).unwrap();
        println!("t {t}: accuracy {:.3} f1 {:.3} confusion {:?}", m.accuracy, m.f1, m.confusion);
        best = best.max(m.accuracy);
        sum += m.accuracy;
    }
    // Chance is 0.5 (16 images per class). Measured: 0.91, 0.78, 0.81, 0.84.
    let mean = sum / grid.len() as f64;
    assert!(best >= 0.8 && mean >= 0.7, "accuracy over t: best {best}, mean {mean}");

    // Sequential stopping against the paper's fixed budget of 512 draws on the same images and noise.
    // Measured (alpha 0.01): the same decision on every image with 17.7% of the forwards for the
    // predictive rule, 27.9% for the Bonferroni t test (at 0.05: 11.2% and 25.4%, still every image).
    let options = SweepOptions {
        timesteps: vec![500],
        draws: 512,
        seed: 5,
        batch_size: 256,
        score: Score::X0Mse,
        stopping: Some(Stopping::default()),
    };
    let report = test_at(
        &trainer.model,
        &diffusion,
        &test.samples,
        &truth,
        500,
        &options,
        true,
        &CancelToken::default(),
        |_, _| {},
    )
    .unwrap();
    let agreement = report.agreement.clone().unwrap();
    println!("sequential: {agreement:?}, accuracy {:.3} {:?}", report.metrics.accuracy, report.intervals);
    assert!(agreement.agreement >= 0.98, "sequential decisions agree with the fixed budget on {}", agreement.agreement);
    assert!(
        agreement.forwards_fraction <= 0.25,
        "sequential runs spent {} of the forwards",
        agreement.forwards_fraction
    );
    assert_eq!(agreement.alternatives.len(), 8, "two rules x four error rates");
    // The budget's own decision is what the predictive rule aims at: it spends less than the test that
    // aims at unlimited draws, at every error rate.
    let (predictive, confidence) = agreement.alternatives.split_at(4);
    for (p, c) in predictive.iter().zip(confidence) {
        assert_eq!(p.alpha, c.alpha);
        assert!(p.forwards_fraction < c.forwards_fraction, "{p:?} vs {c:?}");
    }
    // The report's sequential decisions are replayed from the fixed run's draws: a live sequential run
    // decides every image the same way after the same number of draws.
    let live =
        classify_images(&mut predict, &diffusion, &test.samples, 2, 500, &options, &CancelToken::default(), |_, _| {})
            .unwrap();
    assert_eq!(live.predicted, report.predicted);
    assert_eq!(live.draws, report.draws);
    let [lo, hi] = report.intervals.accuracy;
    assert!(lo <= report.metrics.accuracy && report.metrics.accuracy <= hi && hi - lo > 0.0, "{:?}", report.intervals);
}

#[test]
fn the_operating_timestep_is_the_best_f1_then_accuracy_then_the_smaller_t() {
    use repdiff_engine::classify::{Metrics, SweepRow, choose_timestep};
    let row = |t, accuracy, f1| SweepRow {
        t,
        metrics: Metrics { accuracy, precision: 0.0, recall: 0.0, f1, confusion: Vec::new() },
        forwards_per_image: 2.0,
    };
    assert_eq!(choose_timestep(&[row(100, 0.9, 0.5), row(200, 0.7, 0.8), row(300, 0.6, 0.7)]), Some(200));
    assert_eq!(choose_timestep(&[row(100, 0.7, 0.8), row(200, 0.9, 0.8)]), Some(200));
    assert_eq!(choose_timestep(&[row(300, 0.9, 0.8), row(100, 0.9, 0.8)]), Some(100));
    assert_eq!(choose_timestep(&[]), None);
}

#[test]
fn metrics_bootstrap_intervals_and_t_quantiles_match_scikit_learn_and_scipy() {
    use repdiff_engine::classify::bootstrap_with;
    use repdiff_engine::classify::stats::student_t_quantile;
    // Written by fixtures/classify/gen_metrics_reference.py.
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/classify/metrics_reference.json"))
            .unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let labels = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
    };
    let close = |a: f64, b: &serde_json::Value, what: &str| {
        let b = b.as_f64().unwrap();
        assert!((a - b).abs() <= 1e-12, "{what}: {a} against scikit-learn's {b}");
    };
    for (i, case) in reference["cases"].as_array().unwrap().iter().enumerate() {
        let classes = case["classes"].as_u64().unwrap() as usize;
        let (truth, predicted) = (labels(&case["truth"]), labels(&case["predicted"]));
        let m = metrics(&truth, &predicted, classes).unwrap();
        let r = &case["metrics"];
        close(m.accuracy, &r["accuracy"], &format!("case {i} accuracy"));
        close(m.precision, &r["precision"], &format!("case {i} precision"));
        close(m.recall, &r["recall"], &format!("case {i} recall"));
        close(m.f1, &r["f1"], &format!("case {i} f1"));
        assert_eq!(serde_json::to_value(&m.confusion).unwrap(), r["confusion"], "case {i} confusion");
        let resamples: Vec<Vec<usize>> = case["resamples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect())
            .collect();
        let intervals = bootstrap_with(&truth, &predicted, classes, &resamples, 0.95).unwrap();
        let r = &case["intervals"];
        for (name, got) in [
            ("accuracy", intervals.accuracy),
            ("precision", intervals.precision),
            ("recall", intervals.recall),
            ("f1", intervals.f1),
        ] {
            close(got[0], &r[name][0], &format!("case {i} {name} low"));
            close(got[1], &r[name][1], &format!("case {i} {name} high"));
        }
    }
    for q in reference["t_quantiles"].as_array().unwrap() {
        let (p, df, want) = (q["p"].as_f64().unwrap(), q["df"].as_f64().unwrap(), q["t"].as_f64().unwrap());
        let got = student_t_quantile(p, df);
        assert!(
            (got - want).abs() <= 1e-8 * want.abs().max(1.0),
            "t quantile p {p} df {df}: {got} against SciPy's {want}"
        );
    }
}

/// Noise-free two-class "images": constant -0.5 (class 0) or +0.5 (class 1) plus a little texture, and a
/// denoiser that predicts the clean image to be its class's constant (or, `blind`, ignores the class).
fn templates(n: usize) -> (Tensor, Vec<u32>) {
    let truth: Vec<u32> = (0..n as u32).map(|i| i % 2).collect();
    let texture = repdiff_engine::rng::Rng::new(4).randn((n, 1, 4, 4), &Device::Cpu).unwrap();
    let level: Vec<f32> = truth.iter().map(|&c| c as f32 - 0.5).collect();
    let level = Tensor::from_vec(level, (n, 1, 1, 1), &Device::Cpu).unwrap();
    ((texture * 0.1).unwrap().broadcast_add(&level).unwrap(), truth)
}

fn template_denoiser(
    diffusion: &GaussianDiffusion,
    blind: bool,
) -> impl FnMut(&Tensor, &[usize], &Tensor) -> repdiff_engine::Result<Tensor> + '_ {
    move |x, t, labels| {
        let level: Vec<f32> =
            labels.to_vec1::<u32>()?.iter().map(|&c| if blind { 0.0 } else { c as f32 - 0.5 }).collect();
        let x0 = Tensor::from_vec(level, (x.dim(0)?, 1, 1, 1), x.device())?.broadcast_as(x.shape())?.contiguous()?;
        diffusion.predict_eps_from_xstart(x, t, &x0)
    }
}

#[test]
fn sequential_stopping_stops_decided_images_early_and_keeps_the_fixed_decision_of_undecided_ones() {
    use repdiff_engine::classify::{Rule, Stopping, SweepOptions};
    let diffusion = GaussianDiffusion::new(&DiffusionConfig::default(), false);
    let (z0, truth) = templates(10);
    let fixed =
        SweepOptions { timesteps: vec![300], draws: 64, seed: 9, batch_size: 7, score: Score::X0Mse, stopping: None };
    let stopping = Stopping { alpha: 0.01, min_draws: 8, rule: Rule::Predictive };
    let sequential = SweepOptions { stopping: Some(stopping), ..fixed.clone() };
    let cancel = CancelToken::default();
    let run = |options: &SweepOptions, blind: bool| {
        let mut predict = template_denoiser(&diffusion, blind);
        classify_images(&mut predict, &diffusion, &z0, 2, 300, options, &cancel, |_, _| {}).unwrap()
    };
    // A denoiser that knows the classes: every image is decided at the first look.
    let (full, early) = (run(&fixed, false), run(&sequential, false));
    assert_eq!(full.predicted, truth);
    assert_eq!(early.predicted, truth);
    assert_eq!(full.draws, vec![64; 10]);
    assert_eq!(early.draws, vec![8; 10], "decided images stop at the first look");
    assert_eq!(early.forwards_per_image(), 16.0);
    // One that ignores the class: nothing is ever decided, every image takes the whole budget and ends
    // with exactly the fixed run's errors (its draws are the same stream).
    let (full, late) = (run(&fixed, true), run(&sequential, true));
    assert_eq!(late.draws, vec![64; 10]);
    assert_eq!(late.errors, full.errors);
    // The result of an image does not depend on how images are batched.
    let rebatched = run(&SweepOptions { batch_size: 3, ..fixed.clone() }, true);
    for (a, b) in rebatched.errors.iter().flatten().zip(full.errors.iter().flatten()) {
        assert!((a - b).abs() <= 1e-6 * b.abs(), "batching changed an error: {a} vs {b}");
    }
    // The Bonferroni rule too.
    let confident = SweepOptions { stopping: Some(Stopping { rule: Rule::Confidence, ..stopping }), ..fixed.clone() };
    assert_eq!(run(&confident, false).draws, vec![8; 10]);
    assert_eq!(run(&confident, true).errors, full.errors);
    assert!(SweepOptions { stopping: Some(Stopping { alpha: 1.5, ..stopping }), ..fixed }.check().is_err());
}
