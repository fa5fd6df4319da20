//! Parity with the official DiT implementation (fixtures written by `fixtures/gen_dit_reference.py`).
//! Agreement is measured as max |ours - reference| / max |reference| and must be under 1e-4.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::assert_close;
use repdiff_engine::config::{Conditioning, DiffusionConfig, ModelConfig};
use repdiff_engine::diffusion::{GaussianDiffusion, SamplerKind};
use repdiff_engine::dit::Dit;
use repdiff_engine::nn::Params;
use repdiff_engine::{DType, Device, Tensor};

fn fixture(name: &str) -> HashMap<String, Tensor> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

struct Case {
    c: HashMap<String, Tensor>,
}

impl Case {
    fn load() -> Self {
        Case { c: fixture("dit_cases.safetensors") }
    }
    fn get(&self, k: &str) -> &Tensor {
        self.c.get(k).unwrap_or_else(|| panic!("fixture has no {k}"))
    }
    fn t(&self, k: &str) -> Vec<usize> {
        self.get(k).to_vec1::<f32>().unwrap().into_iter().map(|v| v as usize).collect()
    }
    fn labels(&self) -> Tensor {
        self.get("y").to_dtype(DType::U32).unwrap()
    }
}

fn small_config(conditioning: Conditioning) -> ModelConfig {
    ModelConfig {
        input_size: 8,
        in_channels: 4,
        patch_size: 2,
        hidden_size: 64,
        depth: 2,
        num_heads: 4,
        mlp_ratio: 4.0,
        learn_sigma: true,
        conditioning,
    }
}

fn load_model(file: &str, conditioning: Conditioning) -> (Dit, repdiff_engine::nn::VarSet) {
    let params = Params::loaded(fixture(file), &Device::Cpu);
    let model = Dit::new(&small_config(conditioning), &params).unwrap();
    (model, params.finish().unwrap())
}

fn class_model() -> (Dit, repdiff_engine::nn::VarSet) {
    load_model("dit_class.safetensors", Conditioning::Class { num_classes: 3, dropout_prob: 0.1 })
}

#[test]
fn forward_matches_reference_class_conditional_and_unconditional() {
    let case = Case::load();
    let t = case.get("t");
    let (model, _) = class_model();
    let out = model.forward(case.get("x_t"), t, Some(&case.labels())).unwrap();
    assert_close("class-conditional forward", &out, case.get("out_class"));

    let (uncond, _) = load_model("dit_uncond.safetensors", Conditioning::None);
    let out = uncond.forward(case.get("x_t"), t, None).unwrap();
    assert_close("unconditional forward", &out, case.get("out_uncond"));
}

#[test]
fn q_sample_and_posterior_match_reference() {
    let case = Case::load();
    let diffusion = GaussianDiffusion::new(&DiffusionConfig::default(), true);
    let t = case.t("t");
    let x_t = diffusion.q_sample(case.get("x_start"), &t, case.get("noise")).unwrap();
    assert_close("q_sample", &x_t, case.get("x_t"));
    let (mean, var, log_var) = diffusion.q_posterior(case.get("x_start"), case.get("x_t"), &t).unwrap();
    assert_close("posterior mean", &mean, case.get("posterior_mean"));
    assert_close(
        "posterior variance",
        &var.contiguous().unwrap(),
        &case.get("posterior_variance").broadcast_as(var.shape()).unwrap().contiguous().unwrap(),
    );
    assert_close(
        "posterior log variance",
        &log_var.contiguous().unwrap(),
        &case.get("posterior_log_variance").broadcast_as(log_var.shape()).unwrap().contiguous().unwrap(),
    );
}

#[test]
fn loss_terms_and_gradients_match_reference() {
    let case = Case::load();
    let diffusion = GaussianDiffusion::new(&DiffusionConfig::default(), true);
    let t = case.t("t");
    let (model, vars) = class_model();
    let out = model.forward(case.get("x_t"), case.get("t"), Some(&case.labels())).unwrap();
    let losses = diffusion.training_losses(&out, case.get("x_start"), case.get("x_t"), &t, case.get("noise")).unwrap();
    assert_close("mse term", &losses.mse, case.get("loss_mse"));
    assert_close("vb term", &losses.vb, case.get("loss_vb"));
    assert_close("hybrid loss", &losses.loss, case.get("loss_loss"));
    let grads = losses.loss.mean_all().unwrap().backward().unwrap();
    let mut checked = 0;
    for (key, reference) in &case.c {
        let Some(name) = key.strip_prefix("grad.") else { continue };
        let var = vars.get(name).unwrap_or_else(|| panic!("no parameter {name}"));
        let grad = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_close(&format!("gradient of {name}"), grad, reference);
        checked += 1;
    }
    assert_eq!(checked, 7);
}

#[test]
fn ddpm_and_ddim_steps_match_reference() {
    let case = Case::load();
    let (model, _) = class_model();
    let labels = case.labels();
    let x_t = case.get("x_t");

    let full = GaussianDiffusion::new(&DiffusionConfig::default(), true);
    let t = case.t("t");
    let out = model.forward(x_t, &full.model_timesteps(&t, &Device::Cpu).unwrap(), Some(&labels)).unwrap();
    let prediction = full.p_mean_variance(&out, x_t, &t, false).unwrap();
    assert_close("p mean", &prediction.mean, case.get("p_mean"));
    assert_close("p log variance", &prediction.log_variance, case.get("p_log_variance"));
    assert_close("predicted x0", &prediction.pred_xstart, case.get("p_pred_xstart"));
    let sample = full.step(SamplerKind::Ddpm, &prediction, x_t, &t, case.get("ddpm_noise")).unwrap();
    assert_close("DDPM step", &sample, case.get("ddpm_sample"));

    let ddim = GaussianDiffusion::respaced(&DiffusionConfig::default(), true, "ddim10").unwrap();
    let t = case.t("ddim_t");
    let out = model.forward(x_t, &ddim.model_timesteps(&t, &Device::Cpu).unwrap(), Some(&labels)).unwrap();
    let prediction = ddim.p_mean_variance(&out, x_t, &t, false).unwrap();
    let sample = ddim.step(SamplerKind::Ddim { eta: 0.5 }, &prediction, x_t, &t, case.get("ddim_noise")).unwrap();
    assert_close("DDIM step (eta 0.5, respaced)", &sample, case.get("ddim_sample"));
}

#[test]
fn respaced_betas_and_timestep_maps_match_reference() {
    let case = Case::load();
    for spec in ["250", "ddim50", "10,20,30"] {
        let d = GaussianDiffusion::respaced(&DiffusionConfig::default(), true, spec).unwrap();
        let reference = case.get(&format!("betas.{spec}")).to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(d.betas.len(), reference.len(), "{spec}");
        for (ours, theirs) in d.betas.iter().zip(&reference) {
            assert!((ours - theirs).abs() <= 1e-12 * theirs.abs().max(1e-3), "{spec}: {ours} vs {theirs}");
        }
        let map: Vec<usize> = case.t(&format!("timestep_map.{spec}"));
        assert_eq!(d.timestep_map, map, "{spec}");
    }
}

/// The representation-conditional model against a PyTorch re-implementation from the paper's
/// description (`fixtures/rep/gen_rep_reference.py`): the encoder's tokens r and the denoiser's output.
#[test]
fn representation_model_matches_reference() {
    let config = small_config(Conditioning::Representation { encoder_depth: 2, encoder_heads: 2 });
    let params = Params::loaded(fixture("rep/rep_model.safetensors"), &Device::Cpu);
    let model = Dit::new(&config, &params).unwrap();
    params.finish().expect("every reference weight is used");
    let case = fixture("rep/rep_cases.safetensors");
    let r = model.encode(&case["z0"]).unwrap();
    assert_close("representation r", &r, &case["r"]);
    let out = model.forward_with(&case["x_t"], &case["t"], None, Some(&r)).unwrap();
    assert_close("representation-conditional forward", &out, &case["out"]);
    // Without a reference it says what it needs.
    let err = model.forward(&case["x_t"], &case["t"], None).unwrap_err().to_string();
    assert!(err.contains("reference"), "{err}");
}

/// The encoder is trained by the denoiser's loss alone: gradients reach every one of its parameters (and
/// the map and merge layers), through both injections.
#[test]
fn gradients_reach_every_encoder_parameter() {
    let config = small_config(Conditioning::Representation { encoder_depth: 2, encoder_heads: 2 });
    let params = Params::loaded(fixture("rep/rep_model.safetensors"), &Device::Cpu);
    let model = Dit::new(&config, &params).unwrap();
    let vars = params.finish().unwrap();
    let case = fixture("rep/rep_cases.safetensors");
    let r = model.encode(&case["z0"]).unwrap();
    let out = model.forward_with(&case["x_t"], &case["t"], None, Some(&r)).unwrap();
    let loss = (out - &case["z0"].repeat((1, 2, 1, 1)).unwrap()).unwrap().sqr().unwrap().mean_all().unwrap();
    let grads = loss.backward().unwrap();
    let mut checked = 0;
    for (name, var) in vars.iter() {
        if !(name.starts_with("rep_encoder.") || name.starts_with("rep_to_map.") || name.contains(".rep_merge.")) {
            continue;
        }
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        let size = g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(size > 0.0, "{name}: zero gradient");
        checked += 1;
    }
    // 2 encoder blocks of 12 tensors, patch embedding 2, final norm 2, map 4, 2 merges of 2.
    assert_eq!(checked, 2 * 12 + 2 + 2 + 4 + 2 * 2);
}
