//! The CUDA build on a GPU against the CPU on the same inputs: every fused op forward and backward (f32,
//! and bf16 autocast within its stated tolerance), the optimiser step, and short training runs in each
//! matrix-product precision. Compiled only with `--features cuda`: `scripts/build-cuda` builds this test
//! binary beside `repdiff`, and `scripts/gpu-check.sh` runs both on a GPU machine. CI has no GPU and never
//! builds it; the kernels themselves are checked there on the host emulator (`ops::gpu`'s tests).
#![cfg(feature = "cuda")]

use repdiff_engine::config::{Conditioning, ModelConfig, RunConfig};
use repdiff_engine::data::Dataset;
use repdiff_engine::nn::{Init, Params, VarSet};
use repdiff_engine::ops::{self, MatmulPrecision, with_matmul_precision};
use repdiff_engine::optim::{AdamW, AdamWConfig, Ema};
use repdiff_engine::rng::Rng;
use repdiff_engine::train::{CancelToken, Trainer};
use repdiff_engine::{DType, Device, Result, Tensor};

fn gpu() -> Device {
    Device::new_cuda(0).expect("these tests need a GPU (the CUDA build runs them on the GPU machine)")
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// The largest absolute difference over the largest reference magnitude.
fn rel(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let diff = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    diff / want.iter().map(|v| v.abs()).fold(1e-12, f32::max)
}

/// `f` on the GPU at `precision` and on the CPU in f32, on the same random inputs: the outputs and the
/// gradients of `sum(out g)` for a random `g` agree within `tolerance`.
fn compare(
    what: &str,
    shapes: &[&[usize]],
    precision: MatmulPrecision,
    tolerance: f32,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) {
    let mut rng = Rng::new(21);
    let inputs: Vec<Tensor> = shapes.iter().map(|s| rng.randn(s.to_vec(), &Device::Cpu).unwrap()).collect();
    let run = |device: &Device, precision: MatmulPrecision| {
        let vars: Vec<candle_core::Var> =
            inputs.iter().map(|t| candle_core::Var::from_tensor(&t.to_device(device).unwrap()).unwrap()).collect();
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        with_matmul_precision(precision, || {
            let out = f(&tensors).unwrap();
            let g = Rng::new(8).randn(out.shape().clone(), device).unwrap();
            let grads = (&out * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let grads: Vec<Vec<f32>> = vars.iter().map(|v| values(grads.get(v.as_tensor()).unwrap())).collect();
            (values(&out), grads)
        })
    };
    let (gpu_out, gpu_grads) = run(&gpu(), precision);
    let (cpu_out, cpu_grads) = run(&Device::Cpu, MatmulPrecision::Highest);
    let err = rel(&gpu_out, &cpu_out);
    println!("{what} ({}): forward relative error {err:.2e}", precision.name());
    assert!(err < tolerance, "{what} forward: {err} (tolerance {tolerance})");
    for (i, (g, c)) in gpu_grads.iter().zip(&cpu_grads).enumerate() {
        let err = rel(g, c);
        println!("{what} ({}): gradient {i} relative error {err:.2e}", precision.name());
        assert!(err < 2.0 * tolerance, "{what} gradient {i}: {err} (tolerance {})", 2.0 * tolerance);
    }
}

#[test]
fn fused_ops_on_the_gpu_match_the_cpu() {
    let f32 = MatmulPrecision::Highest;
    compare("softmax", &[&[64, 200]], f32, 1e-5, |t| ops::softmax_last_dim(&t[0]));
    compare("gelu", &[&[4096]], f32, 1e-5, |t| ops::gelu(&t[0]));
    compare("layer norm", &[&[33, 257]], f32, 1e-5, |t| ops::layer_norm(&t[0], 1e-6));
    compare("adaLN", &[&[4, 64, 96], &[4, 96], &[4, 96]], f32, 1e-5, |t| ops::norm_modulate(&t[0], &t[1], &t[2], 1e-6));
    compare("LayerNorm", &[&[70_000, 96], &[96], &[96]], f32, 1e-4, |t| {
        ops::affine_layer_norm(&t[0], &t[1], &t[2], 1e-6)
    });
    compare("gated residual", &[&[4, 64, 96], &[4, 64, 96], &[4, 96]], f32, 1e-5, |t| {
        ops::gated_residual(&t[0], &t[1], &t[2])
    });
    compare("linear", &[&[8, 16, 96], &[80, 96], &[80]], f32, 1e-5, |t| ops::linear(&t[0], &t[1], &t[2]));
    compare("linear + gelu", &[&[8, 16, 96], &[80, 96], &[80]], f32, 1e-5, |t| ops::linear_gelu(&t[0], &t[1], &t[2]));
    for (batch, tokens, heads, head_dim) in [(2, 256, 6, 64), (1, 300, 2, 72), (3, 64, 4, 16)] {
        let what = format!("attention {batch}x{tokens}, {heads} heads of {head_dim}");
        let shape: &[usize] = &[batch, tokens, 3 * heads * head_dim];
        compare(&what, &[shape], f32, 1e-4, |t| ops::attention(&t[0], heads));
        compare(&what, &[shape], MatmulPrecision::Bf16, 3e-2, |t| ops::attention(&t[0], heads));
    }
    compare("linear", &[&[8, 16, 96], &[80, 96], &[80]], MatmulPrecision::Bf16, 2e-2, |t| {
        ops::linear(&t[0], &t[1], &t[2])
    });
    compare("linear", &[&[8, 16, 96], &[80, 96], &[80]], MatmulPrecision::High, 5e-3, |t| {
        ops::linear(&t[0], &t[1], &t[2])
    });
}

/// Attention keeps no per-head score matrices: at 4,096 tokens (a 64x64 latent at patch 1) the scores of
/// one layer would take 2 x 8 x 4096^2 x 4 bytes = 1 GiB; the fused forward and backward stay far below.
#[test]
fn attention_memory_is_linear_in_the_tokens() {
    let dev = gpu();
    let repdiff_engine::Device::Cuda(cuda) = &dev else { unreachable!() };
    let qkv = candle_core::Var::from_tensor(&Rng::new(1).randn((2, 4096, 3 * 8 * 64), &dev).unwrap()).unwrap();
    dev.synchronize().unwrap();
    repdiff_engine::device::gpu_memory::reset_peak(cuda).unwrap();
    let out = ops::attention(qkv.as_tensor(), 8).unwrap();
    out.sum_all().unwrap().backward().unwrap();
    dev.synchronize().unwrap();
    let peak = repdiff_engine::device::gpu_memory::peak_bytes(cuda).unwrap();
    let qkv_bytes = 2 * 4096 * 3 * 8 * 64 * 4;
    println!(
        "attention 2x4096 tokens, 8 heads of 64: peak {:.1} MiB (qkv {:.1} MiB)",
        peak as f64 / 1048576.0,
        qkv_bytes as f64 / 1048576.0
    );
    assert!(peak < 8 * qkv_bytes as u64, "peak {peak} bytes for a {qkv_bytes}-byte input");
}

fn vars_on(device: &Device) -> VarSet {
    let params = Params::random(9, device);
    params.root().get("w", &[64, 96], Init::Normal { std: 1.0 }).unwrap();
    params.root().get("b", &[100_000], Init::Normal { std: 1.0 }).unwrap();
    params.finish().unwrap()
}

#[test]
fn the_optimiser_step_on_the_gpu_matches_the_cpu() {
    let config = AdamWConfig { learning_rate: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.05 };
    let run = |device: &Device| {
        let vars = vars_on(device);
        let (mut opt, mut ema) = (AdamW::new(config, &vars).unwrap(), Ema::new(0.9, true, &vars).unwrap());
        let mut norms = Vec::new();
        for step in 0..4u64 {
            let (w, b) = (vars.get("w").unwrap().as_tensor(), vars.get("b").unwrap().as_tensor());
            let loss = ((w.sqr().unwrap().sum_all().unwrap() * (step + 1) as f64).unwrap()
                + b.powf(3.0).unwrap().sum_all().unwrap())
            .unwrap();
            norms.push(opt.step(&vars, &loss.backward().unwrap(), [Some(10.0), None][step as usize % 2]).unwrap());
            ema.update(&vars, step).unwrap();
        }
        let state = opt.state().unwrap().0;
        let mut all: Vec<(String, Vec<f32>)> =
            ["w", "b"].iter().map(|n| (n.to_string(), values(vars.get(n).unwrap().as_tensor()))).collect();
        all.extend(ema.weights().iter().map(|(n, t)| (format!("ema.{n}"), values(t))));
        all.extend(state.iter().map(|(n, t)| (n.clone(), values(t))));
        (norms, all)
    };
    let (gpu_norms, gpu_values) = run(&gpu());
    let (cpu_norms, cpu_values) = run(&Device::Cpu);
    for (g, c) in gpu_norms.iter().zip(&cpu_norms) {
        assert!((g - c).abs() < 1e-5 * c, "norm {g} vs {c}");
    }
    for ((name, g), (_, c)) in gpu_values.iter().zip(&cpu_values) {
        let err = rel(g, c);
        println!("optimiser {name}: relative error {err:.2e}");
        assert!(err < 1e-5, "{name}: {err}");
    }
}

fn tiny_config(precision: MatmulPrecision) -> RunConfig {
    let mut config = RunConfig::preset("tiny-cpu").unwrap();
    config.model = ModelConfig {
        input_size: 8,
        patch_size: 2,
        hidden_size: 64,
        depth: 2,
        conditioning: Conditioning::Class { num_classes: 2, dropout_prob: 0.1 },
        ..config.model
    };
    config.train.seed = 3;
    config.train.matmul_precision = precision;
    config
}

fn losses(device: &Device, precision: MatmulPrecision, steps: usize) -> Vec<f32> {
    let data = Dataset::toy_bars(64, 8, 11, device).unwrap();
    let mut trainer = Trainer::new(tiny_config(precision), device).unwrap();
    let mut losses = Vec::new();
    trainer.run(&data, steps, None, &CancelToken::default(), |s| losses.push(s.mse)).unwrap();
    losses
}

/// The first steps on the GPU take the CPU's losses (same seed, same data; sums in another order), and
/// over 400 steps TF32 and bf16 training track f32 training.
#[test]
fn training_on_the_gpu_tracks_the_cpu_and_f32() {
    let (gpu_f32, cpu_f32) =
        (losses(&gpu(), MatmulPrecision::Highest, 5), losses(&Device::Cpu, MatmulPrecision::Highest, 5));
    for (step, (g, c)) in gpu_f32.iter().zip(&cpu_f32).enumerate() {
        assert!((g - c).abs() < 1e-3 * c.abs().max(1e-3), "step {}: GPU {g} vs CPU {c}", step + 1);
    }
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    let reference = losses(&gpu(), MatmulPrecision::Highest, 400);
    let (head, tail) = (mean(&reference[..50]), mean(&reference[350..]));
    assert!(tail < 0.6 * head, "f32 loss did not fall: {head} -> {tail}");
    for precision in [MatmulPrecision::High, MatmulPrecision::Bf16] {
        let run = losses(&gpu(), precision, 400);
        let run_tail = mean(&run[350..]);
        println!("{}: eps-MSE last 50 steps {run_tail:.4} (f32 {tail:.4})", precision.name());
        assert!((run_tail - tail).abs() < 0.15 * tail, "{}: {run_tail} vs f32 {tail}", precision.name());
    }
}

/// The networks of the other job kinds (random weights: the same on both devices) give the CPU's outputs
/// on the GPU: Inception-v3 (evaluate), DINOv2 (probe), the SD VAE's posterior (encode), a ResNet
/// (supervised).
#[test]
fn the_other_networks_on_the_gpu_match_the_cpu() {
    use repdiff_engine::autoencoder::{SdVae, VaeConfig};
    use repdiff_engine::dino::Dino;
    use repdiff_engine::metrics::InceptionV3;
    use repdiff_engine::supervised::{Classifier, ResNet};
    let images = Rng::new(4).randn((2, 3, 64, 64), &Device::Cpu).unwrap().clamp(-1f32, 1f32).unwrap();
    let check = |what: &str, gpu: Vec<f32>, cpu: Vec<f32>, tolerance: f32| {
        let err = rel(&gpu, &cpu);
        println!("{what}: relative error {err:.2e}");
        assert!(err < tolerance, "{what}: {err}");
    };
    let on = |dev: &Device| {
        let inception = InceptionV3::random(0, dev).unwrap().features(&images.to_device(dev).unwrap()).unwrap();
        let dino = Dino::random(0, 224, dev).unwrap().features(&images, 2).unwrap().concat();
        let config = VaeConfig {
            block_out_channels: vec![32, 64],
            layers_per_block: 1,
            latent_channels: 4,
            norm_num_groups: 8,
            scaling_factor: 0.18215,
        };
        let (mean, _) = SdVae::random(config, 0, dev).unwrap().posterior(&images).unwrap();
        let resnet = ResNet::new(3, &[1, 1], 16, 2, &Params::random(1, dev)).unwrap();
        let logits = resnet.logits(&images.to_device(dev).unwrap(), false).unwrap();
        (values(&inception.pool), values(&inception.logits), dino, values(&mean), values(&logits))
    };
    let (gpu, cpu) = (on(&gpu()), on(&Device::Cpu));
    check("Inception-v3 pool features", gpu.0, cpu.0, 1e-4);
    check("Inception-v3 logits", gpu.1, cpu.1, 1e-4);
    check("DINOv2 features", gpu.2, cpu.2, 1e-4);
    check("SD VAE posterior mean", gpu.3, cpu.3, 1e-4);
    check("ResNet logits", gpu.4, cpu.4, 1e-4);
}
