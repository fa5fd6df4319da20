//! The paper's observation (its Fig. 6): with the same data, seeds and steps, the
//! representation-conditional model reaches a clearly lower diffusion loss than the unconditional one,
//! because its jointly trained encoder hands the denoiser what the noise destroyed.

use std::time::Instant;

use repdiff_engine::config::{Conditioning, ModelConfig, RunConfig};
use repdiff_engine::data::Dataset;
use repdiff_engine::phantom::{Markers, generate};
use repdiff_engine::train::{CancelToken, Trainer};
use repdiff_engine::{Device, Tensor};

const SIZE: usize = 16;

/// Brain-window phantom slices in [-1, 1].
fn phantoms(n: usize) -> Dataset {
    let mut values = Vec::with_capacity(n * SIZE * SIZE);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let markers = Markers { blend_sign: i % 2 == 0, ..Markers::default() };
        let p = generate(SIZE, 1 + i % 3, markers, i as u64);
        values.extend(p.hu.iter().map(|hu| (hu / 80.0).clamp(0.0, 1.0) * 2.0 - 1.0));
        labels.push(u32::from(p.has_hematoma));
    }
    let samples = Tensor::from_vec(values, (n, 1, SIZE, SIZE), &Device::Cpu).unwrap();
    Dataset::new(samples, Some(labels), Vec::new()).unwrap()
}

fn config(conditioning: Conditioning, steps: usize) -> RunConfig {
    let mut config = RunConfig::preset("tiny-cpu").unwrap();
    config.model = ModelConfig {
        input_size: SIZE,
        patch_size: 2,
        hidden_size: 64,
        depth: 2,
        num_heads: 4,
        conditioning,
        ..config.model
    };
    config.train.steps = steps;
    config.train.batch_size = 16;
    config.train.learning_rate = 1e-3;
    config.train.seed = 11;
    config
}

/// Mean eps-MSE over the last `tail` steps of a run.
fn final_mse(conditioning: Conditioning, data: &Dataset, steps: usize, tail: usize) -> f32 {
    let mut trainer = Trainer::new(config(conditioning, steps), &Device::Cpu).unwrap();
    let mut mse = Vec::new();
    trainer.run(data, steps, None, &CancelToken::default(), |s| mse.push(s.mse)).unwrap();
    mse[steps - tail..].iter().sum::<f32>() / tail as f32
}

#[test]
fn the_representation_model_reaches_a_lower_loss_than_the_unconditional_one() {
    let data = phantoms(32);
    let (steps, tail) = (300, 100);
    let started = Instant::now();
    let uncond = final_mse(Conditioning::None, &data, steps, tail);
    let rep = final_mse(Conditioning::Representation { encoder_depth: 1, encoder_heads: 2 }, &data, steps, tail);
    println!(
        "eps-MSE over the last {tail} of {steps} steps: unconditional {uncond:.4}, representation {rep:.4} ({:.1} s)",
        started.elapsed().as_secs_f32()
    );
    assert!(rep < 0.8 * uncond, "representation {rep} vs unconditional {uncond}");
}
