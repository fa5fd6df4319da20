//! Parameters and the few differentiable building blocks the models need.
//!
//! Why not candle-nn's layers: its `VarBuilder` initialises from candle's unseedable RNG, and its fused
//! `layer_norm`/`softmax_last_dim` record no backward pass (gradients silently stop). The layers here use
//! candle-core ops and the fused kernels of [`crate::ops`], all with a backward, and every initial weight
//! comes from [`Rng`].

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use candle_core::{DType, Device, Tensor, Var};

use crate::rng::Rng;
use crate::{Error, Result};

/// How a freshly created parameter is initialised (the DiT reference's choices).
#[derive(Clone, Copy, Debug)]
pub enum Init {
    Zeros,
    /// All ones (LayerNorm scales).
    Ones,
    /// Glorot/Xavier uniform with fan_out = dim 0 and fan_in = the product of the other dims (so a conv
    /// kernel is treated as its flattened linear map, as DiT does for the patch embedding).
    XavierUniform,
    Normal {
        std: f64,
    },
}

enum Source {
    Random(RefCell<Rng>),
    Loaded(HashMap<String, Tensor>),
}

/// Creates (or loads) the named parameters of a model while it is being built.
pub struct Params {
    device: Device,
    source: Source,
    /// Whether parameters are variables (training) or plain tensors (inference: no op records its
    /// inputs for a backward pass, so nothing a forward makes outlives its use).
    trainable: bool,
    /// Every name handed out, to refuse a second request and to find unused loaded tensors.
    taken: RefCell<BTreeSet<String>>,
    vars: RefCell<BTreeMap<String, Var>>,
}

impl Params {
    /// Fresh parameters drawn from a generator seeded with `seed`.
    pub fn random(seed: u64, device: &Device) -> Self {
        Params {
            device: device.clone(),
            source: Source::Random(RefCell::new(Rng::new(seed))),
            trainable: true,
            taken: Default::default(),
            vars: Default::default(),
        }
    }

    /// Parameters taken from `tensors` (e.g. a checkpoint): every requested name must be there with the
    /// requested shape, and [`Params::finish`] refuses tensors nobody asked for.
    pub fn loaded(tensors: HashMap<String, Tensor>, device: &Device) -> Self {
        Params {
            device: device.clone(),
            source: Source::Loaded(tensors),
            trainable: true,
            taken: Default::default(),
            vars: Default::default(),
        }
    }

    /// [`Params::loaded`] for inference: the tensors become the model's weights as they are, not
    /// variables. A forward on variables keeps every intermediate alive through the result's backward
    /// graph: a sampler's output then holds all its denoising steps (sampling 200 tiny images went to
    /// 24 GB). [`Params::finish`] returns no variables.
    pub fn frozen(tensors: HashMap<String, Tensor>, device: &Device) -> Self {
        Params { trainable: false, ..Params::loaded(tensors, device) }
    }

    pub fn root(&self) -> ParamPath<'_> {
        ParamPath { params: self, prefix: String::new() }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn get(&self, name: String, shape: &[usize], init: Init) -> Result<Tensor> {
        if !self.taken.borrow_mut().insert(name.clone()) {
            return Err(Error::Param { name, reason: "requested twice".into() });
        }
        let tensor = match &self.source {
            Source::Random(rng) => {
                let count: usize = shape.iter().product();
                let values = match init {
                    Init::Zeros => vec![0f32; count],
                    Init::Ones => vec![1f32; count],
                    Init::XavierUniform => {
                        let fan_out = shape[0] as f64;
                        let fan_in = (count / shape[0]) as f64;
                        rng.borrow_mut().uniform_vec(count, (6.0 / (fan_in + fan_out)).sqrt())
                    }
                    Init::Normal { std } => {
                        rng.borrow_mut().normal_vec(count).into_iter().map(|v| v * std as f32).collect()
                    }
                };
                Tensor::from_vec(values, shape, &self.device)?
            }
            Source::Loaded(tensors) => {
                let tensor = tensors
                    .get(&name)
                    .ok_or_else(|| Error::Param { name: name.clone(), reason: "missing from the checkpoint".into() })?;
                if tensor.dims() != shape {
                    return Err(Error::Param {
                        name,
                        reason: format!("checkpoint has shape {:?}, this model needs {:?}", tensor.dims(), shape),
                    });
                }
                tensor.to_device(&self.device)?.to_dtype(DType::F32)?
            }
        };
        if !self.trainable {
            return Ok(tensor);
        }
        let var = Var::from_tensor(&tensor)?;
        let handle = var.as_tensor().clone();
        self.vars.borrow_mut().insert(name, var);
        Ok(handle)
    }

    /// The trainable variables, by name. Fails if loaded tensors were left unused (a checkpoint of another
    /// architecture would otherwise load "successfully" with weights silently ignored).
    pub fn finish(self) -> Result<VarSet> {
        let (vars, taken) = (self.vars.into_inner(), self.taken.into_inner());
        if let Source::Loaded(tensors) = &self.source {
            let mut unused: Vec<&String> = tensors.keys().filter(|k| !taken.contains(*k)).collect();
            if !unused.is_empty() {
                unused.sort();
                return Err(Error::Param {
                    name: unused[0].clone(),
                    reason: format!("{} checkpoint tensor(s) are not part of this model: {unused:?}", unused.len()),
                });
            }
        }
        Ok(VarSet { vars })
    }
}

/// A prefix inside [`Params`]; names join with `.` like PyTorch state-dict keys.
#[derive(Clone)]
pub struct ParamPath<'a> {
    params: &'a Params,
    prefix: String,
}

impl<'a> ParamPath<'a> {
    pub fn pp(&self, sub: impl std::fmt::Display) -> ParamPath<'a> {
        let prefix = if self.prefix.is_empty() { sub.to_string() } else { format!("{}.{sub}", self.prefix) };
        ParamPath { params: self.params, prefix }
    }

    pub fn get(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        self.params.get(self.pp(name).prefix, shape, init)
    }
}

/// The trainable variables of a model, ordered by name.
pub struct VarSet {
    vars: BTreeMap<String, Var>,
}

impl VarSet {
    #[cfg(test)]
    pub(crate) fn from_vars(vars: BTreeMap<String, Var>) -> Self {
        VarSet { vars }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.vars.iter()
    }

    pub fn get(&self, name: &str) -> Option<&Var> {
        self.vars.get(name)
    }

    pub fn len(&self) -> usize {
        self.vars.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    pub fn num_parameters(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }

    /// Snapshot of the current values (detached copies), for saving.
    pub fn tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        self.vars.iter().map(|(k, v)| Ok((k.clone(), v.as_tensor().detach().copy()?))).collect()
    }

    /// Overwrites every variable from `tensors` (same names and shapes required).
    pub fn assign(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        for (name, var) in &self.vars {
            let value =
                tensors.get(name).ok_or_else(|| Error::Param { name: name.clone(), reason: "missing".into() })?;
            if value.dims() != var.dims() {
                return Err(Error::Param {
                    name: name.clone(),
                    reason: format!("shape {:?} does not match {:?}", value.dims(), var.dims()),
                });
            }
            var.set(&value.to_device(var.device())?.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }
}

/// `y = x W^T + b` over the last dimension of an input of any rank.
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    pub fn new(path: &ParamPath, in_dim: usize, out_dim: usize, weight_init: Init, bias_init: Init) -> Result<Self> {
        let weight = path.get("weight", &[out_dim, in_dim], weight_init)?;
        let bias = path.get("bias", &[out_dim], bias_init)?;
        Ok(Linear { weight, bias })
    }

    /// A linear map whose stored weight has the shape of a stride-p convolution kernel `[out, c, p, p]`
    /// (so reference checkpoints load unchanged) but that is applied to already flattened patches.
    pub fn conv_patch(path: &ParamPath, out_dim: usize, channels: usize, patch: usize) -> Result<Self> {
        let kernel = path.get("weight", &[out_dim, channels, patch, patch], Init::XavierUniform)?;
        let weight = kernel.reshape((out_dim, channels * patch * patch))?;
        let bias = path.get("bias", &[out_dim], Init::Zeros)?;
        Ok(Linear { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        crate::ops::linear(x, &self.weight, &self.bias)
    }

    /// `gelu(x W^T + b)` (tanh-GELU) as one op: the first layer of a transformer MLP.
    pub fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        crate::ops::linear_gelu(x, &self.weight, &self.bias)
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let in_dim = self.weight.dim(1)?;
        if x.dims().last() != Some(&in_dim) {
            return Err(Error::Shape {
                what: "linear layer input".into(),
                expected: format!("[..., {in_dim}]"),
                got: x.dims().to_vec(),
            });
        }
        Ok(())
    }
}

pub use crate::ops::{layer_norm, softmax_last_dim};

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::D;

    #[test]
    fn layer_norm_and_softmax_have_gradients() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Rng::new(0).randn((3, 8), &dev).unwrap()).unwrap();
        let y = (layer_norm(x.as_tensor(), 1e-6).unwrap() * softmax_last_dim(x.as_tensor()).unwrap()).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        let g = grads.get(x.as_tensor()).expect("gradient reaches x");
        assert!(g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
        let normed = layer_norm(x.as_tensor(), 1e-6).unwrap();
        let mean = normed.mean_keepdim(D::Minus1).unwrap().abs().unwrap().max_all().unwrap();
        assert!(mean.to_scalar::<f32>().unwrap() < 1e-5);
        let rows = softmax_last_dim(x.as_tensor()).unwrap().sum(D::Minus1).unwrap().to_vec1::<f32>().unwrap();
        assert!(rows.iter().all(|s| (s - 1.0).abs() < 1e-5));
    }

    #[test]
    fn loading_refuses_wrong_shapes_missing_and_unused_tensors() {
        let dev = Device::Cpu;
        let mut tensors = HashMap::new();
        tensors.insert("a.weight".to_string(), Tensor::zeros((2, 3), DType::F32, &dev).unwrap());
        let params = Params::loaded(tensors.clone(), &dev);
        let err = params.root().pp("a").get("weight", &[3, 2], Init::Zeros).unwrap_err().to_string();
        assert!(err.contains("a.weight") && err.contains("[2, 3]") && err.contains("[3, 2]"), "{err}");
        let params = Params::loaded(tensors.clone(), &dev);
        let err = params.root().get("b", &[1], Init::Zeros).unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
        tensors.insert("extra".to_string(), Tensor::zeros(1, DType::F32, &dev).unwrap());
        let params = Params::loaded(tensors, &dev);
        params.root().pp("a").get("weight", &[2, 3], Init::Zeros).unwrap();
        let err = params.finish().err().unwrap().to_string();
        assert!(err.contains("extra"), "{err}");
    }
}
