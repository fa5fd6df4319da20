//! Gaussian diffusion as in improved DDPM and DiT: linear betas, q_sample, the hybrid loss (eps-MSE plus the
//! variational bound that trains a learned-range variance), posterior, DDPM ancestral and DDIM steps, and
//! timestep respacing. Every coefficient is a named array precomputed in f64 and handed to tensors as f32,
//! as the reference does.

use std::collections::BTreeSet;
use std::f64::consts::LN_2;

use candle_core::{Device, Tensor};

use crate::config::DiffusionConfig;
use crate::{Error, Result};

/// The per-timestep coefficients of one (possibly respaced) diffusion process.
#[derive(Clone, Debug)]
pub struct GaussianDiffusion {
    /// Index `i` of this process -> the timestep of the original T-step process (what the model sees).
    pub timestep_map: Vec<usize>,
    pub learn_sigma: bool,
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
    pub alphas_cumprod_prev: Vec<f64>,
    pub sqrt_alphas_cumprod: Vec<f64>,
    pub sqrt_one_minus_alphas_cumprod: Vec<f64>,
    pub sqrt_recip_alphas_cumprod: Vec<f64>,
    pub sqrt_recipm1_alphas_cumprod: Vec<f64>,
    pub posterior_variance: Vec<f64>,
    /// Log of the posterior variance with its t = 0 entry (which is 0) replaced by the t = 1 entry.
    pub posterior_log_variance_clipped: Vec<f64>,
    pub posterior_mean_coef1: Vec<f64>,
    pub posterior_mean_coef2: Vec<f64>,
    pub log_betas: Vec<f64>,
    /// Log variance of the reverse step without learned sigma ("fixed large": beta_t, with the posterior
    /// variance at t = 0).
    pub fixed_large_log_variance: Vec<f64>,
}

/// What the model's output implies at (x_t, t).
pub struct Prediction {
    pub eps: Tensor,
    pub pred_xstart: Tensor,
    pub mean: Tensor,
    pub log_variance: Tensor,
}

/// Per-sample loss terms, each of shape `[N]`.
pub struct Losses {
    pub mse: Tensor,
    /// Variational bound in bits per dimension (zero without learned sigma).
    pub vb: Tensor,
    pub loss: Tensor,
}

/// How to walk from noise to data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SamplerKind {
    /// Ancestral sampling with the model's (learned) variance.
    Ddpm,
    /// DDIM with stochasticity `eta` (0 = deterministic).
    Ddim { eta: f64 },
}

/// Linear betas of DDPM, scaled so the schedule keeps its shape for any T.
pub fn linear_betas(config: &DiffusionConfig) -> Vec<f64> {
    let t = config.num_timesteps;
    let scale = 1000.0 / t as f64;
    let (start, end) = (scale * config.beta_start, scale * config.beta_end);
    (0..t).map(|i| start + (end - start) * i as f64 / (t - 1) as f64).collect()
}

/// The kept timesteps for a respacing spec over `num_timesteps`: `""` (all), `"250"`, `"10,15,20"` (counts per
/// equal section), or `"ddim50"` (an exact stride, as DDIM uses).
pub fn space_timesteps(num_timesteps: usize, spec: &str) -> Result<BTreeSet<usize>> {
    let bad = |reason: String| Error::Respacing { spec: spec.to_string(), reason };
    let spec_trim = spec.trim();
    if spec_trim.is_empty() {
        return Ok((0..num_timesteps).collect());
    }
    if let Some(count) = spec_trim.strip_prefix("ddim") {
        let desired: usize = count.parse().map_err(|_| bad("expected ddimN, e.g. ddim50".into()))?;
        for stride in 1..num_timesteps {
            if (0..num_timesteps).step_by(stride).count() == desired {
                return Ok((0..num_timesteps).step_by(stride).collect());
            }
        }
        return Err(bad(format!("no integer stride gives exactly {desired} of {num_timesteps} steps")));
    }
    let counts: Vec<usize> = spec_trim
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad("expected a number of steps or comma-separated counts".into()))?;
    let size_per = num_timesteps / counts.len();
    let extra = num_timesteps % counts.len();
    let mut steps = BTreeSet::new();
    let mut start = 0;
    for (i, &count) in counts.iter().enumerate() {
        let size = size_per + usize::from(i < extra);
        if size < count || count == 0 {
            return Err(bad(format!("cannot take {count} steps from a section of {size}")));
        }
        let stride = if count <= 1 { 1.0 } else { (size - 1) as f64 / (count - 1) as f64 };
        for k in 0..count {
            // The reference uses Python's round(), which rounds halves to even.
            steps.insert(start + (k as f64 * stride).round_ties_even() as usize);
        }
        start += size;
    }
    Ok(steps)
}

fn tensor_of(values: Vec<f32>, n: usize, ndim: usize, device: &Device) -> Result<Tensor> {
    let mut shape = vec![n];
    shape.resize(ndim, 1);
    Ok(Tensor::from_vec(values, shape, device)?)
}

fn mean_flat(x: &Tensor) -> Result<Tensor> {
    Ok(x.flatten_from(1)?.mean(1)?)
}

/// KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise.
pub fn normal_kl(mean1: &Tensor, logvar1: &Tensor, mean2: &Tensor, logvar2: &Tensor) -> Result<Tensor> {
    let term = ((logvar2 - logvar1)? + (logvar1 - logvar2)?.exp()?)?;
    let sq = (mean1 - mean2)?.sqr()?.mul(&logvar2.neg()?.exp()?)?;
    Ok(((term + sq)? - 1.0)?.affine(0.5, 0.0)?)
}

/// The tanh approximation of the standard normal CDF used by the reference.
fn approx_standard_normal_cdf(x: &Tensor) -> Result<Tensor> {
    let cubic = (x + (x.sqr()?.mul(x)? * 0.044715)?)?;
    Ok(((cubic * (2.0 / std::f64::consts::PI).sqrt())?.tanh()? + 1.0)?.affine(0.5, 0.0)?)
}

/// Log-likelihood of data in [-1, 1] discretised to 256 bins under N(means, exp(log_scales)^2), elementwise.
pub fn discretized_gaussian_log_likelihood(x: &Tensor, means: &Tensor, log_scales: &Tensor) -> Result<Tensor> {
    let centered = (x - means)?;
    let inv_stdv = log_scales.neg()?.exp()?;
    let cdf_plus = approx_standard_normal_cdf(&((&centered + 1.0 / 255.0)? * &inv_stdv)?)?;
    let cdf_min = approx_standard_normal_cdf(&((&centered - 1.0 / 255.0)? * &inv_stdv)?)?;
    let log_cdf_plus = cdf_plus.maximum(1e-12)?.log()?;
    let log_one_minus_cdf_min = cdf_min.neg()?.affine(1.0, 1.0)?.maximum(1e-12)?.log()?;
    let log_cdf_delta = (cdf_plus - cdf_min)?.maximum(1e-12)?.log()?;
    let inner = x.gt(0.999)?.where_cond(&log_one_minus_cdf_min, &log_cdf_delta)?;
    Ok(x.lt(-0.999)?.where_cond(&log_cdf_plus, &inner)?)
}

impl GaussianDiffusion {
    /// The full process of `config.num_timesteps` steps.
    pub fn new(config: &DiffusionConfig, learn_sigma: bool) -> Self {
        let betas = linear_betas(config);
        let map = (0..betas.len()).collect();
        Self::from_betas(betas, map, learn_sigma)
    }

    /// The process restricted to the timesteps of `spec` (see [`space_timesteps`]); its betas are recomputed so
    /// that its alpha-bars equal the kept ones of the full process.
    pub fn respaced(config: &DiffusionConfig, learn_sigma: bool, spec: &str) -> Result<Self> {
        let base = Self::new(config, learn_sigma);
        let keep = space_timesteps(config.num_timesteps, spec)?;
        let mut last = 1.0;
        let mut betas = Vec::with_capacity(keep.len());
        let mut map = Vec::with_capacity(keep.len());
        for (i, &abar) in base.alphas_cumprod.iter().enumerate() {
            if keep.contains(&i) {
                betas.push(1.0 - abar / last);
                last = abar;
                map.push(i);
            }
        }
        Ok(Self::from_betas(betas, map, learn_sigma))
    }

    fn from_betas(betas: Vec<f64>, timestep_map: Vec<usize>, learn_sigma: bool) -> Self {
        let n = betas.len();
        let mut alphas_cumprod = Vec::with_capacity(n);
        let mut acc = 1.0;
        for b in &betas {
            acc *= 1.0 - b;
            alphas_cumprod.push(acc);
        }
        let alphas_cumprod_prev: Vec<f64> =
            std::iter::once(1.0).chain(alphas_cumprod[..n - 1].iter().copied()).collect();
        let map = |f: &dyn Fn(usize) -> f64| (0..n).map(f).collect::<Vec<f64>>();
        let posterior_variance = map(&|i| betas[i] * (1.0 - alphas_cumprod_prev[i]) / (1.0 - alphas_cumprod[i]));
        let posterior_log_variance_clipped =
            map(&|i| if i == 0 { posterior_variance[1].ln() } else { posterior_variance[i].ln() });
        GaussianDiffusion {
            timestep_map,
            learn_sigma,
            sqrt_alphas_cumprod: map(&|i| alphas_cumprod[i].sqrt()),
            sqrt_one_minus_alphas_cumprod: map(&|i| (1.0 - alphas_cumprod[i]).sqrt()),
            sqrt_recip_alphas_cumprod: map(&|i| (1.0 / alphas_cumprod[i]).sqrt()),
            sqrt_recipm1_alphas_cumprod: map(&|i| (1.0 / alphas_cumprod[i] - 1.0).sqrt()),
            posterior_mean_coef1: map(&|i| betas[i] * alphas_cumprod_prev[i].sqrt() / (1.0 - alphas_cumprod[i])),
            posterior_mean_coef2: map(&|i| {
                (1.0 - alphas_cumprod_prev[i]) * (1.0 - betas[i]).sqrt() / (1.0 - alphas_cumprod[i])
            }),
            log_betas: map(&|i| betas[i].ln()),
            fixed_large_log_variance: map(&|i| if i == 0 { posterior_variance[1].ln() } else { betas[i].ln() }),
            posterior_variance,
            posterior_log_variance_clipped,
            alphas_cumprod_prev,
            alphas_cumprod,
            betas,
        }
    }

    pub fn num_steps(&self) -> usize {
        self.betas.len()
    }

    /// `coefficients[t_i]` as an f32 tensor shaped to broadcast against `like` (`[N, 1, 1, 1]`).
    fn extract(&self, coefficients: &[f64], t: &[usize], like: &Tensor) -> Result<Tensor> {
        let values = t.iter().map(|&i| coefficients[i] as f32).collect();
        tensor_of(values, t.len(), like.rank(), like.device())
    }

    fn check_t(&self, t: &[usize], x: &Tensor) -> Result<()> {
        let n = x.dim(0)?;
        if t.len() != n {
            return Err(Error::Shape {
                what: "timesteps".into(),
                expected: format!("{n} timesteps"),
                got: vec![t.len()],
            });
        }
        if let Some(&bad) = t.iter().find(|&&i| i >= self.num_steps()) {
            return Err(Error::Data(format!("timestep {bad} is outside 0..{}", self.num_steps())));
        }
        Ok(())
    }

    /// The timesteps as the model sees them (original-process indices), `[N]` f32.
    pub fn model_timesteps(&self, t: &[usize], device: &Device) -> Result<Tensor> {
        let values: Vec<f32> = t.iter().map(|&i| self.timestep_map[i] as f32).collect();
        Ok(Tensor::from_vec(values, t.len(), device)?)
    }

    /// Diffuses clean data to step t: `sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`.
    pub fn q_sample(&self, x_start: &Tensor, t: &[usize], noise: &Tensor) -> Result<Tensor> {
        self.check_t(t, x_start)?;
        let a = self.extract(&self.sqrt_alphas_cumprod, t, x_start)?;
        let b = self.extract(&self.sqrt_one_minus_alphas_cumprod, t, x_start)?;
        Ok((x_start.broadcast_mul(&a)? + noise.broadcast_mul(&b)?)?)
    }

    /// Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0).
    pub fn q_posterior(&self, x_start: &Tensor, x_t: &Tensor, t: &[usize]) -> Result<(Tensor, Tensor, Tensor)> {
        self.check_t(t, x_t)?;
        let mean = (x_start.broadcast_mul(&self.extract(&self.posterior_mean_coef1, t, x_t)?)?
            + x_t.broadcast_mul(&self.extract(&self.posterior_mean_coef2, t, x_t)?)?)?;
        let var = self.extract(&self.posterior_variance, t, x_t)?.broadcast_as(x_t.shape())?;
        let log_var = self.extract(&self.posterior_log_variance_clipped, t, x_t)?.broadcast_as(x_t.shape())?;
        Ok((mean, var, log_var))
    }

    pub fn predict_xstart_from_eps(&self, x_t: &Tensor, t: &[usize], eps: &Tensor) -> Result<Tensor> {
        Ok((x_t.broadcast_mul(&self.extract(&self.sqrt_recip_alphas_cumprod, t, x_t)?)?
            - eps.broadcast_mul(&self.extract(&self.sqrt_recipm1_alphas_cumprod, t, x_t)?)?)?)
    }

    pub fn predict_eps_from_xstart(&self, x_t: &Tensor, t: &[usize], pred_xstart: &Tensor) -> Result<Tensor> {
        let scaled = (x_t.broadcast_mul(&self.extract(&self.sqrt_recip_alphas_cumprod, t, x_t)?)? - pred_xstart)?;
        Ok(scaled.broadcast_div(&self.extract(&self.sqrt_recipm1_alphas_cumprod, t, x_t)?)?)
    }

    /// Splits a model output into (eps, variance values); the second is `None` without learned sigma.
    pub fn split_output(&self, model_output: &Tensor, x_t: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let c = x_t.dim(1)?;
        let expected_c = if self.learn_sigma { 2 * c } else { c };
        let mut expected = x_t.dims().to_vec();
        expected[1] = expected_c;
        crate::error::expect_shape("model output", model_output, &expected)?;
        if self.learn_sigma {
            Ok((model_output.narrow(1, 0, c)?, Some(model_output.narrow(1, c, c)?)))
        } else {
            Ok((model_output.clone(), None))
        }
    }

    /// p(x_{t-1} | x_t) implied by the model output: learned-range log variance (interpolating between the
    /// posterior variance and beta_t) or, without learned sigma, the fixed large variance. With
    /// `clip_denoised` the x0 prediction is clamped to [-1, 1] before the mean is formed (for pixel-space data,
    /// as improved DDPM samples images; at high t an eps error is amplified by sqrt(1/abar - 1) ~ 100 in x0).
    pub fn p_mean_variance(
        &self,
        model_output: &Tensor,
        x_t: &Tensor,
        t: &[usize],
        clip_denoised: bool,
    ) -> Result<Prediction> {
        self.check_t(t, x_t)?;
        let (eps, var_values) = self.split_output(model_output, x_t)?;
        let log_variance = match var_values {
            Some(values) => {
                let min_log = self.extract(&self.posterior_log_variance_clipped, t, x_t)?;
                let max_log = self.extract(&self.log_betas, t, x_t)?;
                let frac = ((values + 1.0)? * 0.5)?;
                (frac.broadcast_mul(&max_log)? + frac.neg()?.affine(1.0, 1.0)?.broadcast_mul(&min_log)?)?
            }
            None => self.extract(&self.fixed_large_log_variance, t, x_t)?.broadcast_as(x_t.shape())?.contiguous()?,
        };
        let mut pred_xstart = self.predict_xstart_from_eps(x_t, t, &eps)?;
        if clip_denoised {
            pred_xstart = pred_xstart.clamp(-1f32, 1f32)?;
        }
        let (mean, _, _) = self.q_posterior(&pred_xstart, x_t, t)?;
        Ok(Prediction { eps, pred_xstart, mean, log_variance })
    }

    /// The hybrid loss of improved DDPM: MSE on eps, plus (with learned sigma) the variational bound in bits
    /// per dimension whose gradient reaches only the variance (the mean is detached), as DiT trains.
    pub fn training_losses(
        &self,
        model_output: &Tensor,
        x_start: &Tensor,
        x_t: &Tensor,
        t: &[usize],
        noise: &Tensor,
    ) -> Result<Losses> {
        let (eps, var_values) = self.split_output(model_output, x_t)?;
        let mse = mean_flat(&(noise - &eps)?.sqr()?)?;
        let vb = match var_values {
            Some(values) => {
                let frozen = Tensor::cat(&[&eps.detach(), &values], 1)?;
                self.vb_terms_bpd(&frozen, x_start, x_t, t)?
            }
            None => mse.zeros_like()?,
        };
        let loss = (&mse + &vb)?;
        Ok(Losses { mse, vb, loss })
    }

    /// KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) in bits per dim, or the decoder NLL at t = 0.
    pub fn vb_terms_bpd(&self, model_output: &Tensor, x_start: &Tensor, x_t: &Tensor, t: &[usize]) -> Result<Tensor> {
        let (true_mean, _, true_log_var) = self.q_posterior(x_start, x_t, t)?;
        let out = self.p_mean_variance(model_output, x_t, t, false)?;
        let kl = (mean_flat(&normal_kl(&true_mean, &true_log_var, &out.mean, &out.log_variance)?)? / LN_2)?;
        let log_scales = (&out.log_variance * 0.5)?;
        let nll = (mean_flat(&discretized_gaussian_log_likelihood(x_start, &out.mean, &log_scales)?.neg()?)? / LN_2)?;
        let is_first: Vec<u8> = t.iter().map(|&i| u8::from(i == 0)).collect();
        let mask = Tensor::from_vec(is_first, t.len(), x_t.device())?;
        Ok(mask.where_cond(&nll, &kl)?)
    }

    /// One ancestral step x_t -> x_{t-1} with the given standard-normal noise (unused at t = 0).
    pub fn p_sample(&self, prediction: &Prediction, t: &[usize], noise: &Tensor) -> Result<Tensor> {
        let nonzero: Vec<f32> = t.iter().map(|&i| f32::from(u8::from(i != 0))).collect();
        let mask = tensor_of(nonzero, t.len(), noise.rank(), noise.device())?;
        let std = (&prediction.log_variance * 0.5)?.exp()?;
        Ok((&prediction.mean + noise.mul(&std)?.broadcast_mul(&mask)?)?)
    }

    /// One DDIM step x_t -> x_{t-1} with stochasticity `eta`.
    pub fn ddim_sample(
        &self,
        prediction: &Prediction,
        x_t: &Tensor,
        t: &[usize],
        eta: f64,
        noise: &Tensor,
    ) -> Result<Tensor> {
        let eps = self.predict_eps_from_xstart(x_t, t, &prediction.pred_xstart)?;
        let abar = self.extract(&self.alphas_cumprod, t, x_t)?;
        let abar_prev = self.extract(&self.alphas_cumprod_prev, t, x_t)?;
        let one_minus = |x: &Tensor| -> Result<Tensor> { Ok(x.neg()?.affine(1.0, 1.0)?) };
        let sigma =
            ((one_minus(&abar_prev)? / one_minus(&abar)?)?.sqrt()? * one_minus(&(&abar / &abar_prev)?)?.sqrt()?)?;
        let sigma = (sigma * eta)?;
        let mean = (prediction.pred_xstart.broadcast_mul(&abar_prev.sqrt()?)?
            + eps.broadcast_mul(&(one_minus(&abar_prev)? - sigma.sqr()?)?.sqrt()?)?)?;
        let nonzero: Vec<f32> = t.iter().map(|&i| f32::from(u8::from(i != 0))).collect();
        let mask = tensor_of(nonzero, t.len(), noise.rank(), noise.device())?;
        Ok((mean + noise.broadcast_mul(&(sigma * mask)?)?)?)
    }

    /// One step of either sampler.
    pub fn step(
        &self,
        sampler: SamplerKind,
        prediction: &Prediction,
        x_t: &Tensor,
        t: &[usize],
        noise: &Tensor,
    ) -> Result<Tensor> {
        match sampler {
            SamplerKind::Ddpm => self.p_sample(prediction, t, noise),
            SamplerKind::Ddim { eta } => self.ddim_sample(prediction, x_t, t, eta, noise),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn respacing_matches_the_reference_rules() {
        assert_eq!(space_timesteps(1000, "").unwrap().len(), 1000);
        let s250 = space_timesteps(1000, "250").unwrap();
        assert_eq!(s250.len(), 250);
        assert_eq!(*s250.iter().next().unwrap(), 0);
        assert_eq!(*s250.iter().last().unwrap(), 999);
        let ddim = space_timesteps(1000, "ddim50").unwrap();
        assert_eq!(ddim.iter().copied().take(3).collect::<Vec<_>>(), vec![0, 20, 40]);
        assert_eq!(ddim.len(), 50);
        // Python rounds 2.5 to 2: 10 steps, 4 from a section of 10 -> stride 3: 0, 3, 6, 9.
        assert_eq!(space_timesteps(10, "4").unwrap().into_iter().collect::<Vec<_>>(), vec![0, 3, 6, 9]);
        assert_eq!(space_timesteps(10, "3").unwrap().into_iter().collect::<Vec<_>>(), vec![0, 4, 9]);
        for bad in ["ddimx", "2000", "a,b", "0"] {
            assert!(space_timesteps(1000, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn respaced_alpha_bars_equal_the_kept_ones() {
        let config = DiffusionConfig::default();
        let full = GaussianDiffusion::new(&config, true);
        let spaced = GaussianDiffusion::respaced(&config, true, "ddim25").unwrap();
        for (i, &orig) in spaced.timestep_map.iter().enumerate() {
            let rel = (spaced.alphas_cumprod[i] - full.alphas_cumprod[orig]).abs() / full.alphas_cumprod[orig];
            assert!(rel < 1e-12);
        }
        assert!((full.betas[0] - 1e-4).abs() < 1e-15 && (full.betas[999] - 0.02).abs() < 1e-15);
    }
}
