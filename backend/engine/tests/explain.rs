//! Counterfactuals and trajectories (the paper's Figs. 10 and 11) on a tiny class-conditional DiT
//! trained on the toy bars: the same noised image denoised under the vertical-bar class comes back more
//! vertical than under the horizontal one.

mod toy;

use toy::verticality;

use repdiff_engine::data::Dataset;
use repdiff_engine::diffusion::SamplerKind;
use repdiff_engine::explain::{
    CounterfactualOptions, counterfactuals, frame_steps, trajectory, write_counterfactuals, write_trajectory,
};
use repdiff_engine::sample::{SampleOptions, sample};
use repdiff_engine::{Device, Tensor};

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn frames_are_evenly_spaced_from_the_noisiest_step_to_the_last() {
    assert_eq!(frame_steps(50, 5), vec![49, 37, 24, 12, 0]);
    assert_eq!(frame_steps(3, 8), vec![2, 1, 0]);
    assert_eq!(frame_steps(10, 1), vec![0]);
}

#[test]
fn counterfactuals_move_toward_the_class_asked_for_and_trajectories_end_at_the_sample() {
    let (config, trainer) = toy::trained_class_model(1200);
    let model = &trainer.model;

    let test = Dataset::toy_bars(16, 8, 99, &Device::Cpu).unwrap();
    let options =
        CounterfactualOptions { t: 450, steps: 50, guidance_scale: 3.0, seed: 4, batch_size: 5, ..Default::default() };
    let cf = counterfactuals(model, &config, &test.samples, &options, |_, _| {}).unwrap();
    assert_eq!(cf.t, 440, "noised to the DDIM step at or below t");
    assert_eq!(cf.per_class.len(), 2);
    // Switching the label from horizontal (0) to vertical (1) makes the same noisy image come back more
    // vertical. Measured: 15 of 16 images (chance: 8); without guidance 10, at t = 600 13.
    let pushed = (0..16)
        .filter(|&i| verticality(&cf.per_class[1].get(i).unwrap()) > verticality(&cf.per_class[0].get(i).unwrap()))
        .count();
    assert!(pushed >= 12, "only {pushed} of 16 counterfactuals move toward the class asked for");
    // Seeded per image: another batching gives the same counterfactuals.
    let again = counterfactuals(
        model,
        &config,
        &test.samples,
        &CounterfactualOptions { batch_size: 16, ..options.clone() },
        |_, _| {},
    )
    .unwrap();
    assert!(max_diff(&again.per_class[1], &cf.per_class[1]) < 1e-4);
    assert!(
        counterfactuals(model, &config, &test.samples, &CounterfactualOptions { t: 1000, ..options }, |_, _| {})
            .is_err()
    );

    let dir = std::env::temp_dir().join(format!("repdiff-explain-{}", std::process::id()));
    let report = write_counterfactuals(&cf, &config, std::path::Path::new("model-weights"), &dir).unwrap();
    assert_eq!(report.rows.len(), 16);
    assert!(report.grid.exists() && dir.join("counterfactuals.json").exists());
    let row = image::open(&report.rows[0]).unwrap();
    assert_eq!((row.width(), row.height()), (4 * (8 + 2) + 2, 8 + 4), "original | class 0 | class 1 | difference");
    assert!(report.mean_abs_difference.iter().all(|&d| d > 0.0));

    // A trajectory draws the same samples as `sample` and its last frame is the sample.
    let sample_options = SampleOptions {
        num_samples: 4,
        labels: Some(vec![0, 1]),
        sampler: SamplerKind::Ddim { eta: 0.0 },
        respacing: "ddim25".into(),
        seed: 2,
        batch_size: 4,
        ..Default::default()
    };
    let traj = trajectory(model, &config, &sample_options, 6, &Device::Cpu, |_, _| {}).unwrap();
    let (samples, _) = sample(model, &config, &sample_options, &Device::Cpu, |_, _| {}).unwrap();
    assert_eq!(traj.frames.len(), 6);
    assert_eq!(traj.timesteps.first(), Some(&960));
    assert_eq!(traj.timesteps.last(), Some(&0));
    assert!(traj.timesteps.windows(2).all(|w| w[0] > w[1]));
    assert!(max_diff(&traj.samples, &samples) < 1e-6, "the same noise as sample()");
    assert!(max_diff(traj.frames.last().unwrap(), &samples) < 1e-5, "DDIM's last step is its x0 prediction");
    let (rows, grid, note) = write_trajectory(&traj, &config, std::path::Path::new("model-weights"), &dir).unwrap();
    assert_eq!(rows.len(), 4);
    assert!(grid.exists() && note.is_none());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The paper's Fig. 11 for its key model: a representation model's trajectory, each row its reference
/// and then the x0 predictions toward the variation it draws (the same samples as `sample`).
#[test]
fn a_representation_model_draws_trajectories_beside_their_references() {
    use repdiff_engine::config::{Conditioning, ModelConfig, RunConfig};
    use repdiff_engine::train::Trainer;
    let mut config = RunConfig::preset("tiny-cpu").unwrap();
    config.model = ModelConfig {
        input_size: 8,
        patch_size: 2,
        hidden_size: 32,
        depth: 2,
        num_heads: 2,
        conditioning: Conditioning::Representation { encoder_depth: 1, encoder_heads: 2 },
        ..config.model
    };
    let trainer = Trainer::new(config.clone(), &Device::Cpu).unwrap();
    let references = Dataset::toy_bars(2, 8, 5, &Device::Cpu).unwrap().samples;
    let options = SampleOptions {
        num_samples: 3,
        references: Some(references.clone()),
        sampler: SamplerKind::Ddim { eta: 0.0 },
        respacing: "ddim10".into(),
        seed: 1,
        batch_size: 3,
        ..Default::default()
    };
    let traj = trajectory(&trainer.model, &config, &options, 4, &Device::Cpu, |_, _| {}).unwrap();
    let (samples, _) = sample(&trainer.model, &config, &options, &Device::Cpu, |_, _| {}).unwrap();
    assert!(max_diff(&traj.samples, &samples) < 1e-6, "the same variations as sample()");
    assert!(max_diff(traj.frames.last().unwrap(), &samples) < 1e-5);
    // Sample i is a variation of reference i mod 2.
    let shown = traj.references.as_ref().expect("the references beside the rows");
    for (i, r) in [0, 1, 0].into_iter().enumerate() {
        assert!(max_diff(&shown.get(i).unwrap(), &references.get(r).unwrap()) == 0.0);
    }
    let dir = std::env::temp_dir().join(format!("repdiff-explain-rep-{}", std::process::id()));
    let (rows, _, _) = write_trajectory(&traj, &config, std::path::Path::new("model-weights"), &dir).unwrap();
    let row = image::open(&rows[0]).unwrap();
    assert_eq!(row.width(), 5 * (8 + 2) + 2, "reference | four frames");
    std::fs::remove_dir_all(&dir).unwrap();
}
