//! The tiny class-conditional DiT the classifier and explanation tests train on the toy bars, and how
//! vertical a bar is.

// Each test binary that includes this module uses part of it.
#![allow(dead_code)]

use repdiff_engine::config::{Conditioning, ModelConfig, RunConfig};
use repdiff_engine::data::Dataset;
use repdiff_engine::train::{CancelToken, Trainer};
use repdiff_engine::{Device, Tensor};

/// A depth-2, width-64 DiT on 8x8 inputs (patch 2, two classes, label dropout 0.1), trained for `steps`
/// steps on 64 toy images (seed 11): about 1 s per 100 steps on two cores.
pub fn trained_class_model(steps: usize) -> (RunConfig, Trainer) {
    let mut config = RunConfig::preset("tiny-cpu").unwrap();
    config.model = ModelConfig {
        input_size: 8,
        patch_size: 2,
        hidden_size: 64,
        depth: 2,
        num_heads: 4,
        conditioning: Conditioning::Class { num_classes: 2, dropout_prob: 0.1 },
        ..config.model
    };
    (config.train.steps, config.train.batch_size, config.train.learning_rate, config.train.seed) = (steps, 16, 1e-3, 3);
    let train = Dataset::toy_bars(64, 8, 11, &Device::Cpu).unwrap();
    let mut trainer = Trainer::new(config.clone(), &Device::Cpu).unwrap();
    trainer.run(&train, steps, None, &CancelToken::default(), |_| {}).unwrap();
    (config, trainer)
}

/// How much more an image's columns vary than its rows: positive for a vertical bar (class 1), negative
/// for a horizontal one (class 0).
pub fn verticality(image: &Tensor) -> f32 {
    let image = image.squeeze(0).unwrap();
    let spread = |means: Tensor| means.var_keepdim(0).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
    spread(image.mean(0).unwrap()) - spread(image.mean(1).unwrap())
}
