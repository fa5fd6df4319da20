//! Training, resuming, sampling and bad input, on tiny models and the toy two-class bars set.

use std::path::Path;

use repdiff_engine::config::{Conditioning, ModelConfig, RunConfig};
use repdiff_engine::data::Dataset;
use repdiff_engine::diffusion::SamplerKind;
use repdiff_engine::ops::MatmulPrecision;
use repdiff_engine::sample::{SampleOptions, Weights, load_model, sample};
use repdiff_engine::train::{CancelToken, StopReason, Trainer};
use repdiff_engine::{Device, Tensor};

/// The tiny-cpu preset shrunk to 8x8 grey inputs and a 2-block, width-64 DiT, so tests train in seconds.
fn tiny_config(steps: usize, conditioning: Conditioning) -> RunConfig {
    let mut config = RunConfig::preset("tiny-cpu").unwrap();
    config.model =
        ModelConfig { input_size: 8, patch_size: 2, hidden_size: 64, depth: 2, conditioning, ..config.model };
    config.train.steps = steps;
    config.train.ema_decay = 0.99;
    config.train.checkpoint_every = 10;
    config.train.seed = 3;
    config
}

fn class_cond() -> Conditioning {
    Conditioning::Class { num_classes: 2, dropout_prob: 0.1 }
}

fn bars() -> Dataset {
    Dataset::toy_bars(64, 8, 11, &Device::Cpu).unwrap()
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("repdiff-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn every_parameter_gets_a_finite_nonzero_gradient_after_one_step() {
    let data = bars();
    let mut trainer = Trainer::new(tiny_config(2, class_cond()), &Device::Cpu).unwrap();
    // adaLN-Zero starts with closed gates (most gradients exactly zero), so perturb every weight first.
    let mut rng = repdiff_engine::rng::Rng::new(17);
    for (_, var) in trainer.vars().iter() {
        let noise = (rng.randn(var.shape().clone(), &Device::Cpu).unwrap() * 0.02).unwrap();
        var.set(&(var.as_tensor() + noise).unwrap()).unwrap();
    }
    trainer.train_step(&data).unwrap();
    let x = data.samples.narrow(0, 0, 8).unwrap();
    let noise = repdiff_engine::rng::Rng::new(5).randn(x.shape().clone(), &Device::Cpu).unwrap();
    let t: Vec<usize> = (0..8).map(|i| i * 120 + 1).collect();
    let diffusion = trainer.diffusion().clone();
    let x_t = diffusion.q_sample(&x, &t, &noise).unwrap();
    let labels = Tensor::new(&[0u32, 1, 2, 0, 1, 2, 0, 1], &Device::Cpu).unwrap();
    let out =
        trainer.model.forward(&x_t, &diffusion.model_timesteps(&t, &Device::Cpu).unwrap(), Some(&labels)).unwrap();
    let loss = diffusion.training_losses(&out, &x, &x_t, &t, &noise).unwrap().loss.mean_all().unwrap();
    let grads = loss.backward().unwrap();
    // patch embed 2 + timestep MLP 4 + label table 1 + 2 blocks x 10 + final layer 4
    assert_eq!(trainer.vars().len(), 2 + 4 + 1 + 2 * 10 + 4);
    for (name, var) in trainer.vars().iter() {
        let grad = repdiff_engine::optim::require_grad(name, var, &grads).unwrap();
        let values = grad.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(values.iter().all(|v| v.is_finite()), "{name}: non-finite gradient");
        assert!(values.iter().any(|&v| v != 0.0), "{name}: gradient is all zero");
    }
}

/// The eps-MSE of the first and last 50 of 400 steps on the toy bars.
fn learning_curve(precision: MatmulPrecision) -> (f32, f32) {
    let data = bars();
    let mut config = tiny_config(400, class_cond());
    config.train.matmul_precision = precision;
    let mut trainer = Trainer::new(config, &Device::Cpu).unwrap();
    let mut losses = Vec::new();
    let summary = trainer.run(&data, 400, None, &CancelToken::default(), |s| losses.push(s.mse)).unwrap();
    assert_eq!(summary.stop, StopReason::Finished);
    let head: f32 = losses[..50].iter().sum::<f32>() / 50.0;
    let tail: f32 = losses[losses.len() - 50..].iter().sum::<f32>() / 50.0;
    eprintln!("{precision:?} products: eps-MSE first 50 steps {head:.4}, last 50 steps {tail:.4}");
    (head, tail)
}

#[test]
fn tiny_dit_learns_the_toy_bars() {
    let (head, tail) = learning_curve(MatmulPrecision::Highest);
    assert!(tail < 0.6 * head, "loss did not fall clearly: {head} -> {tail}");
}

#[test]
fn tiny_dit_learns_the_toy_bars_as_well_with_bf16_products() {
    // On a CPU without AVX512-BF16 both runs are f32 and equal.
    let (head, tail) = learning_curve(MatmulPrecision::Bf16);
    let (_, f32_tail) = learning_curve(MatmulPrecision::Highest);
    assert!(tail < 0.6 * head, "loss did not fall clearly: {head} -> {tail}");
    assert!((tail - f32_tail).abs() < 0.15 * f32_tail, "bf16 {tail} vs f32 {f32_tail}");
}

#[test]
fn resuming_reproduces_the_uninterrupted_run() {
    let dir = tempdir("resume");
    let data = bars();
    let config = tiny_config(12, class_cond());
    let cancel = CancelToken::default();

    let mut straight = Trainer::new(config.clone(), &Device::Cpu).unwrap();
    let mut expected = Vec::new();
    straight.run(&data, 12, None, &cancel, |s| expected.push(s.loss)).unwrap();

    let ckpt = dir.join("run.safetensors");
    let mut first = Trainer::new(config, &Device::Cpu).unwrap();
    let mut got = Vec::new();
    first.run(&data, 7, Some(&ckpt), &cancel, |s| got.push(s.loss)).unwrap();
    drop(first);
    let mut resumed = Trainer::resume(&ckpt, &Device::Cpu).unwrap();
    assert_eq!(resumed.step(), 7);
    resumed.run(&data, 12, Some(&ckpt), &cancel, |s| got.push(s.loss)).unwrap();
    assert_eq!(got, expected, "resumed losses differ from the uninterrupted run");
}

#[test]
fn cancellation_stops_before_the_next_step_and_keeps_a_checkpoint() {
    let dir = tempdir("cancel");
    let ckpt = dir.join("run.safetensors");
    let data = bars();
    let mut trainer = Trainer::new(tiny_config(100, class_cond()), &Device::Cpu).unwrap();
    let cancel = CancelToken::default();
    let handle = cancel.clone();
    let summary = trainer
        .run(&data, 100, Some(&ckpt), &cancel, |s| {
            if s.step == 3 {
                handle.cancel();
            }
        })
        .unwrap();
    assert_eq!((summary.stop, summary.step), (StopReason::Cancelled, 3));
    assert_eq!(Trainer::resume(&ckpt, &Device::Cpu).unwrap().step(), 3);
}

#[test]
fn sampling_is_seeded_shaped_and_checks_its_inputs() {
    let dir = tempdir("sample");
    let ckpt = dir.join("run.safetensors");
    let data = bars();
    let mut trainer = Trainer::new(tiny_config(5, class_cond()), &Device::Cpu).unwrap();
    trainer.run(&data, 5, Some(&ckpt), &CancelToken::default(), |_| {}).unwrap();
    let (model, config) = load_model(&ckpt, Weights::Ema, &Device::Cpu).unwrap();
    let options = SampleOptions {
        num_samples: 5,
        labels: Some(vec![1]),
        guidance_scale: 2.0,
        sampler: SamplerKind::Ddim { eta: 0.0 },
        respacing: "ddim10".into(),
        seed: 9,
        batch_size: 3,
        clip_denoised: None,
        cancel: CancelToken::default(),
        references: None,
    };
    let mut calls = 0;
    let (a, labels) = sample(&model, &config, &options, &Device::Cpu, |_, _| calls += 1).unwrap();
    assert_eq!(a.dims(), &[5, 1, 8, 8]);
    // Inference weights are plain tensors: the samples record no backward graph, which would keep every
    // denoising step of every batch alive until the samples are dropped.
    assert!(!a.track_op(), "samples hold a backward graph");
    assert_eq!(labels.unwrap(), vec![1; 5]);
    assert_eq!(calls, 2 * 10);
    let (b, _) = sample(&model, &config, &options, &Device::Cpu, |_, _| {}).unwrap();
    assert_eq!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    let ddpm = SampleOptions { sampler: SamplerKind::Ddpm, respacing: "25".into(), ..options.clone() };
    let (c, _) = sample(&model, &config, &ddpm, &Device::Cpu, |_, _| {}).unwrap();
    assert!(c.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|v| v.is_finite()));

    // Pixel-space models clip x0 predictions by default, so samples stay in the data range.
    let range = |x: &Tensor| x.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(range(&a) <= 1.0 && range(&c) <= 1.0, "{} {}", range(&a), range(&c));
    let unclipped = SampleOptions { clip_denoised: Some(false), ..options.clone() };
    let (u, _) = sample(&model, &config, &unclipped, &Device::Cpu, |_, _| {}).unwrap();
    assert!(range(&u) > 1.0, "an almost untrained model's unclipped samples leave [-1, 1]: {}", range(&u));

    let bad_class = SampleOptions { labels: Some(vec![2]), ..options.clone() };
    let err = sample(&model, &config, &bad_class, &Device::Cpu, |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("class 2 does not exist"), "{err}");
    let bad_spacing = SampleOptions { respacing: "ddim7x".into(), ..options.clone() };
    assert!(sample(&model, &config, &bad_spacing, &Device::Cpu, |_, _| {}).is_err());

    // Cancelling from the progress callback stops sampling before the next denoising step.
    let cancelled = SampleOptions { cancel: CancelToken::default(), ..options };
    let mut steps = 0;
    let err = sample(&model, &config, &cancelled, &Device::Cpu, |done, _| {
        steps = done;
        if done == 3 {
            cancelled.cancel.cancel();
        }
    })
    .unwrap_err();
    assert!(matches!(err, repdiff_engine::Error::Cancelled { step: 3 }), "{err}");
    assert_eq!(steps, 3);
}

#[test]
fn guidance_needs_a_null_class_and_unconditional_models_take_no_labels() {
    let dir = tempdir("uncond");
    let ckpt = dir.join("run.safetensors");
    let mut trainer = Trainer::new(tiny_config(2, Conditioning::None), &Device::Cpu).unwrap();
    trainer.run(&bars(), 2, Some(&ckpt), &CancelToken::default(), |_| {}).unwrap();
    let (model, config) = load_model(&ckpt, Weights::Raw, &Device::Cpu).unwrap();
    let options = SampleOptions { num_samples: 2, respacing: "ddim5".into(), ..Default::default() };
    let (x, labels) = sample(&model, &config, &options, &Device::Cpu, |_, _| {}).unwrap();
    assert_eq!((x.dims(), labels), (&[2, 1, 8, 8][..], None));
    let with_labels = SampleOptions { labels: Some(vec![0]), ..options };
    let err = sample(&model, &config, &with_labels, &Device::Cpu, |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("unconditional"), "{err}");

    let no_null = Conditioning::Class { num_classes: 2, dropout_prob: 0.0 };
    let (model, _) = repdiff_engine::dit::Dit::init(&tiny_config(1, no_null.clone()).model, 0, &Device::Cpu).unwrap();
    let x = Tensor::zeros((1, 1, 8, 8), repdiff_engine::DType::F32, &Device::Cpu).unwrap();
    let t = Tensor::new(&[10f32], &Device::Cpu).unwrap();
    let y = Tensor::new(&[0u32], &Device::Cpu).unwrap();
    let err = repdiff_engine::sample::guided_output(&model, &x, &t, Some(&y), None, 3.0).unwrap_err().to_string();
    assert!(err.contains("null class"), "{err}");
}

#[test]
fn bad_inputs_get_errors_that_name_the_problem() {
    let dev = Device::Cpu;
    let config = tiny_config(1, class_cond());
    let (model, _) = repdiff_engine::dit::Dit::init(&config.model, 0, &dev).unwrap();
    let t = Tensor::new(&[1f32, 2.0], &dev).unwrap();
    let y = Tensor::new(&[0u32, 1], &dev).unwrap();
    let wrong = Tensor::zeros((2, 3, 8, 8), repdiff_engine::DType::F32, &dev).unwrap();
    let err = model.forward(&wrong, &t, Some(&y)).unwrap_err().to_string();
    assert!(err.contains("DiT input x") && err.contains("[2, 1, 8, 8]") && err.contains("[2, 3, 8, 8]"), "{err}");
    let x = Tensor::zeros((2, 1, 8, 8), repdiff_engine::DType::F32, &dev).unwrap();
    let err = model.forward(&x, &t, Some(&Tensor::new(&[0u32, 7], &dev).unwrap())).unwrap_err().to_string();
    assert!(err.contains("class label 7"), "{err}");
    assert!(model.forward(&x, &t, None).unwrap_err().to_string().contains("needs class labels"));

    // Data that does not fit the model.
    let mut trainer = Trainer::new(config.clone(), &dev).unwrap();
    let big = Dataset::toy_bars(4, 16, 0, &dev).unwrap();
    let err = trainer.train_step(&big).unwrap_err().to_string();
    assert!(err.contains("1x16x16") && err.contains("1x8x8"), "{err}");

    // Corrupt, foreign and mismatched checkpoints.
    let dir = tempdir("badckpt");
    let ckpt = dir.join("good.safetensors");
    trainer.run(&bars(), 1, Some(&ckpt), &CancelToken::default(), |_| {}).unwrap();
    let bytes = std::fs::read(&ckpt).unwrap();
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a checkpoint").unwrap();
    let foreign = dir.join("foreign.safetensors");
    bars().save_latent_file(&foreign).unwrap();
    for (path, needle) in [
        (&truncated, "not a readable safetensors"),
        (&garbage, "not a readable safetensors"),
        (&foreign, "not a RepDiff checkpoint"),
    ] {
        let err = Trainer::resume(path, &dev).err().expect("must fail").to_string();
        assert!(err.contains(needle) && err.contains(path.file_name().unwrap().to_str().unwrap()), "{err}");
    }
    let err = Trainer::resume(Path::new("/nonexistent/x.safetensors"), &dev).err().unwrap().to_string();
    assert!(err.contains("/nonexistent/x.safetensors"), "{err}");

    // Weights of one architecture into another.
    let ck = repdiff_engine::checkpoint::Checkpoint::read(&ckpt, &dev).unwrap();
    let mut wider = config.clone();
    wider.model.hidden_size = 128;
    let err = Trainer::from_weights(wider, ck.section("model"), &dev).err().unwrap().to_string();
    assert!(
        err.contains("x_embedder.proj.weight") && err.contains("[64, 1, 2, 2]") && err.contains("[128, 1, 2, 2]"),
        "{err}"
    );
    let mut uncond = config;
    uncond.model.conditioning = Conditioning::None;
    let err = Trainer::from_weights(uncond, ck.section("model"), &dev).err().unwrap().to_string();
    assert!(err.contains("y_embedder.embedding_table.weight") && err.contains("not part of this model"), "{err}");
}
