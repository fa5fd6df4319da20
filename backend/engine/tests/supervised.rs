//! The supervised baselines (a ViT and a bottleneck ResNet) learn the toy bars from scratch and keep their
//! best validation epoch, batch-norm statistics included.

use repdiff_engine::Device;
use repdiff_engine::classify::metrics;
use repdiff_engine::config::{Conditioning, ModelConfig, RunConfig};
use repdiff_engine::data::Dataset;
use repdiff_engine::supervised::{Architecture, SupervisedOptions, predict, train_supervised};
use repdiff_engine::train::CancelToken;

#[test]
fn a_small_vit_learns_the_toy_bars_and_keeps_its_best_validation_epoch() {
    check_learns(&vit(), 12);
}

#[test]
fn a_small_resnet_learns_the_toy_bars_and_keeps_its_best_validation_epoch() {
    check_learns(&Architecture::ResNet { blocks: vec![1, 1], width: 8 }, 12);
}

fn vit() -> Architecture {
    let base = RunConfig::preset("tiny-cpu").unwrap().model;
    let config = ModelConfig {
        input_size: 8,
        in_channels: 1,
        patch_size: 2,
        hidden_size: 64,
        depth: 2,
        num_heads: 4,
        conditioning: Conditioning::None,
        ..base
    };
    Architecture::Vit(config)
}

fn check_learns(architecture: &Architecture, epochs: usize) {
    let train = Dataset::toy_bars(96, 8, 1, &Device::Cpu).unwrap();
    let validation = Dataset::toy_bars(32, 8, 2, &Device::Cpu).unwrap();
    let test = Dataset::toy_bars(64, 8, 3, &Device::Cpu).unwrap();
    let options = SupervisedOptions { epochs, batch_size: 16, learning_rate: 1e-3, ..Default::default() };
    let mut seen = Vec::new();
    let run =
        train_supervised(architecture, &train, &validation, &options, &CancelToken::default(), |e| seen.push(e.loss))
            .unwrap();
    println!("losses {seen:?}, best epoch {}", run.best_epoch);
    assert_eq!(run.history.len(), epochs);
    assert!(seen[epochs - 1] < 0.5 * seen[0], "the training loss falls: {seen:?}");
    // The returned model is the best epoch's: it scores on validation what that epoch scored.
    let best = &run.history[run.best_epoch - 1].validation;
    let again =
        metrics(validation.labels.as_ref().unwrap(), &predict(run.model.as_ref(), &validation.samples, 16).unwrap(), 2)
            .unwrap();
    assert_eq!(again.confusion, best.confusion);
    let truth = test.labels.as_ref().unwrap();
    let accuracy = metrics(truth, &predict(run.model.as_ref(), &test.samples, 16).unwrap(), 2).unwrap().accuracy;
    println!("test accuracy {accuracy}");
    assert!(accuracy >= 0.9, "test accuracy {accuracy} (chance 0.5)");
}
