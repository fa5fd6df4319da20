//! Fine-tuning by weight transfer: the table of what is loaded, reshaped, dropped and new, on real
//! checkpoints of both pre-training kinds, the refusals, and a model fine-tuned from each kind drawing the
//! class it is asked for.

mod toy;

use repdiff_engine::config::{Conditioning, ModelConfig, RunConfig};
use repdiff_engine::data::Dataset;
use repdiff_engine::diffusion::SamplerKind;
use repdiff_engine::finetune::{self, Action};
use repdiff_engine::sample::{SampleOptions, sample};
use repdiff_engine::train::{CancelToken, Trainer};
use repdiff_engine::{Device, Tensor};

const D: usize = 64;
const C: usize = 1;
const P: usize = 2;
const DEPTH: usize = 2;

fn config(conditioning: Conditioning) -> RunConfig {
    let mut config = RunConfig::preset("tiny-cpu").unwrap();
    config.model = ModelConfig {
        input_size: 8,
        patch_size: P,
        hidden_size: D,
        depth: DEPTH,
        num_heads: 4,
        conditioning,
        ..config.model
    };
    config.train.steps = 3;
    config.train.batch_size = 8;
    config.train.seed = 5;
    config
}

fn rep() -> Conditioning {
    Conditioning::Representation { encoder_depth: 2, encoder_heads: 2 }
}

fn class() -> Conditioning {
    Conditioning::Class { num_classes: 2, dropout_prob: 0.1 }
}

/// A checkpoint of a few training steps (so no weight is at its initial value by accident).
fn pretrained(conditioning: Conditioning, name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("repdiff-finetune-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pretrained.safetensors");
    let data = Dataset::toy_bars(16, 8, 1, &Device::Cpu).unwrap();
    let data = Dataset::new(data.samples, None, Vec::new()).unwrap();
    let mut trainer = Trainer::new(config(conditioning), &Device::Cpu).unwrap();
    trainer.run(&data, 3, Some(&path), &CancelToken::default(), |_| {}).unwrap();
    path
}

fn ema(path: &std::path::Path) -> std::collections::HashMap<String, Tensor> {
    repdiff_engine::checkpoint::Checkpoint::read(path, &Device::Cpu).unwrap().section("ema")
}

#[test]
fn from_the_representation_model_only_what_sees_the_noisy_image_is_kept() {
    let path = pretrained(rep(), "rep");
    let target = config(class()).model;
    let (transfer, source) = finetune::from_checkpoint(&path, &target, 9, false, &Device::Cpu).unwrap();
    assert!(source.model.is_representation());
    let table = &transfer.table;
    println!("{table}");
    let row = |name: &str| table.get(name).unwrap_or_else(|| panic!("no row for {name}"));

    // The input projection: the first C of its 2C input channels, exactly.
    let x = row("x_embedder.proj.weight");
    assert_eq!(x.action, Action::Reshaped { from: vec![D, 2 * C, P, P] });
    assert_eq!(x.shape, vec![D, C, P, P]);
    let source_weight = ema(&path)["x_embedder.proj.weight"].narrow(1, 0, C).unwrap();
    let diff = (&transfer.weights["x_embedder.proj.weight"] - &source_weight).unwrap().abs().unwrap();
    assert_eq!(diff.max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);

    let mut loaded = vec!["x_embedder.proj.bias".to_string()];
    for part in ["t_embedder.mlp.0", "t_embedder.mlp.2", "final_layer.linear", "final_layer.adaLN_modulation.1"] {
        loaded.extend([format!("{part}.weight"), format!("{part}.bias")]);
    }
    for i in 0..DEPTH {
        for part in ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1"] {
            loaded.extend([format!("blocks.{i}.{part}.weight"), format!("blocks.{i}.{part}.bias")]);
        }
    }
    for name in &loaded {
        assert_eq!(row(name).action, Action::Loaded, "{name}");
        let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values(&transfer.weights[name]), values(&ema(&path)[name]), "{name}");
    }
    for i in 0..DEPTH {
        assert_eq!(row(&format!("blocks.{i}.rep_merge.weight")).action, Action::Dropped);
        assert_eq!(row(&format!("blocks.{i}.rep_merge.weight")).shape, vec![D, 2 * D]);
        assert_eq!(row(&format!("blocks.{i}.rep_merge.bias")).action, Action::Dropped);
    }
    let dropped: Vec<&str> =
        table.rows.iter().filter(|r| r.action == Action::Dropped).map(|r| r.name.as_str()).collect();
    assert!(
        dropped
            .iter()
            .all(|n| n.starts_with("rep_encoder.") || n.starts_with("rep_to_map.") || n.contains(".rep_merge."))
    );
    // The encoder (2 blocks of 12 tensors, patch embedding, final norm), the map (4), the merges (2 each).
    assert_eq!(dropped.len(), 2 * 12 + 2 + 2 + 4 + DEPTH * 2);
    let new = row("y_embedder.embedding_table.weight");
    assert_eq!((&new.action, new.shape.clone()), (&Action::New, vec![3, D]));
    assert_eq!(table.count("new"), 1);
    assert_eq!(table.count("reshaped"), 1);
    assert_eq!(table.count("loaded"), loaded.len());
    assert!(table.to_string().ends_with(&format!(
        "{} loaded, 1 reshaped, {} dropped, 1 new",
        loaded.len(),
        dropped.len()
    )));

    // The weights make a complete class-conditional model that trains.
    let data = Dataset::toy_bars(16, 8, 2, &Device::Cpu).unwrap();
    let mut trainer = Trainer::from_weights(config(class()), transfer.weights, &Device::Cpu).unwrap();
    assert!(trainer.train_step(&data).unwrap().loss.is_finite());
}

#[test]
fn from_the_unconditional_model_everything_is_kept_but_the_label_embedding() {
    let path = pretrained(Conditioning::None, "uncond");
    let (transfer, _) = finetune::from_checkpoint(&path, &config(class()).model, 9, false, &Device::Cpu).unwrap();
    let t = &transfer.table;
    assert_eq!((t.count("reshaped"), t.count("dropped"), t.count("new")), (0, 0, 1));
    assert_eq!(t.count("loaded"), ema(&path).len());
}

#[test]
fn an_incompatible_checkpoint_is_refused_with_every_difference() {
    let path = pretrained(rep(), "mismatch");
    let mut target = config(class()).model;
    target.hidden_size = 128;
    target.depth = 3;
    let err = finetune::from_checkpoint(&path, &target, 0, false, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("hidden size 64 vs 128") && err.contains("depth 2 vs 3"), "{err}");
    let err = finetune::from_checkpoint(&path, &config(Conditioning::None).model, 0, false, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("class-conditional"), "{err}");
}

/// Pre-trains a `pretraining` model on unlabelled toy bars (both orientations), fine-tunes a
/// class-conditional model from its checkpoint's EMA weights on the labelled bars (class 0 horizontal,
/// class 1 vertical), and draws `per_class` samples of each class from its weights at each guidance scale.
/// Returns the share of vertical bars among each class's samples, per scale.
fn fine_tuned_vertical_shares(
    pretraining: Conditioning,
    name: &str,
    per_class: usize,
    scales: &[f64],
) -> Vec<[f64; 2]> {
    let dir = std::env::temp_dir().join(format!("repdiff-finetune-draws-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let checkpoint = dir.join("pretrained.safetensors");
    let (pretrain_steps, finetune_steps) = (600, 1200);
    let schedule = |mut config: RunConfig, steps: usize| {
        (config.train.steps, config.train.batch_size, config.train.learning_rate, config.train.seed) =
            (steps, 16, 1e-3, 3);
        config
    };
    let bars = Dataset::toy_bars(64, 8, 11, &Device::Cpu).unwrap();
    let unlabelled = Dataset::new(bars.samples.clone(), None, Vec::new()).unwrap();
    let mut pretrain = Trainer::new(schedule(config(pretraining), pretrain_steps), &Device::Cpu).unwrap();
    pretrain.run(&unlabelled, pretrain_steps, Some(&checkpoint), &CancelToken::default(), |_| {}).unwrap();

    let target = schedule(config(class()), finetune_steps);
    let (transfer, _) = finetune::from_checkpoint(&checkpoint, &target.model, 9, false, &Device::Cpu).unwrap();
    let mut finetune = Trainer::from_weights(target.clone(), transfer.weights, &Device::Cpu).unwrap();
    finetune.run(&bars, finetune_steps, None, &CancelToken::default(), |_| {}).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let shares = |guidance_scale: f64| {
        let options = SampleOptions {
            num_samples: 2 * per_class,
            labels: Some(vec![0, 1]),
            guidance_scale,
            sampler: SamplerKind::Ddim { eta: 0.0 },
            respacing: "ddim25".into(),
            seed: 2,
            batch_size: 2 * per_class,
            ..Default::default()
        };
        let (samples, labels) = sample(&finetune.model, &target, &options, &Device::Cpu, |_, _| {}).unwrap();
        let mut vertical = [0.0; 2];
        for (i, label) in labels.unwrap().into_iter().enumerate() {
            if toy::verticality(&samples.get(i).unwrap()) > 0.0 {
                vertical[label as usize] += 1.0 / per_class as f64;
            }
        }
        vertical
    };
    scales.iter().map(|&scale| shares(scale)).collect()
}

#[test]
fn a_model_fine_tuned_from_either_pre_training_draws_the_class_it_is_asked_for() {
    for (pretraining, name) in [(Conditioning::None, "uncond"), (rep(), "rep")] {
        let shares = fine_tuned_vertical_shares(pretraining, name, 24, &[1.0, 3.0]);
        for (scale, [class0, class1]) in [1.0, 3.0].into_iter().zip(shares) {
            println!("{name}, guidance {scale}: vertical bars among class-0 samples {class0:.2}, class-1 {class1:.2}");
            // Both classes are half the data; a label the model ignored would give about equal shares.
            // Measured (24 per class, 1,200 fine-tuning steps): unconditional pre-training 0.25 vs 0.83
            // without guidance, 0.12 vs 1.00 at guidance 3; representation pre-training only 0.50 vs 0.62
            // without guidance (its transfer starts the input projection and blocks without the map and
            // merges they were trained with: more to relearn in the same steps; 0.25 vs 0.75 at guidance 3),
            // so a clear difference is asked of guided sampling, as DiT samples, and only the direction of
            // unguided sampling.
            let needed = if scale > 1.0 { 0.35 } else { 0.05 };
            assert!(
                class1 - class0 >= needed,
                "{name}, guidance {scale}: vertical among class 0 {class0:.2}, class 1 {class1:.2}"
            );
        }
    }
}
