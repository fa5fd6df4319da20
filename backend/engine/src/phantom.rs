//! Synthetic brain-CT slices in Hounsfield units, with the paper's four hematoma markers and twelve sites:
//! data for the demo and the tests when no clinical scans are at hand.
//!
//! A slice has air, a skull ring, brain parenchyma with grey/white texture and two ventricles. A hematoma
//! (acute blood, ~60-80 HU) shows each requested marker: *hypodensity* (a darker core), *margin
//! irregularity* (a lobulated border), *blend sign* (two densities meeting at a sharp line) and *fluid
//! level* (a horizontal level, denser below). Slices without markers carry either no hematoma or a plain,
//! round, homogeneous one, so a classifier must see the markers, not just blood. Each site has its own
//! noise level, HU offset, head size and tilt, as scanners and protocols differ between facilities.

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// The four hematoma markers (independent; the binary label is "any").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Markers {
    pub hypodensity: bool,
    pub margin_irregularity: bool,
    pub blend_sign: bool,
    pub fluid_level: bool,
}

impl Markers {
    pub fn any(&self) -> bool {
        self.hypodensity || self.margin_irregularity || self.blend_sign || self.fluid_level
    }

    /// Each marker present with probability `p`, independently.
    pub fn random(rng: &mut Rng, p: f64) -> Self {
        Markers {
            hypodensity: rng.bernoulli(p),
            margin_irregularity: rng.bernoulli(p),
            blend_sign: rng.bernoulli(p),
            fluid_level: rng.bernoulli(p),
        }
    }
}

pub const NUM_SITES: usize = 12;

/// Acquisition traits of one site (facility), fixed by its number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Site {
    pub noise_hu: f32,
    pub offset_hu: f32,
    pub head_scale: f32,
    pub tilt_radians: f32,
}

impl Site {
    /// Sites are numbered 1..=12 as in the paper (1 = the downstream facility).
    pub fn new(number: usize) -> Self {
        let mut rng = Rng::derive(0x5173, number as u64);
        Site {
            noise_hu: 3.0 + 9.0 * rng.uniform() as f32,
            offset_hu: -6.0 + 12.0 * rng.uniform() as f32,
            head_scale: 0.88 + 0.1 * rng.uniform() as f32,
            tilt_radians: (-0.14 + 0.28 * rng.uniform()) as f32,
        }
    }
}

/// One generated slice: `size` x `size` Hounsfield units, row-major.
pub struct Phantom {
    pub size: usize,
    pub site: usize,
    pub markers: Markers,
    pub has_hematoma: bool,
    pub hu: Vec<f32>,
}

struct Hematoma {
    cx: f32,
    cy: f32,
    radius: f32,
    lobes: [(f32, f32); 3],
    blend_angle: f32,
    level_y: f32,
    core_radius: f32,
}

/// Generates a slice of site `site` (1..=12) showing `markers`; `seed` fixes everything else.
pub fn generate(size: usize, site: usize, markers: Markers, seed: u64) -> Phantom {
    let traits = Site::new(site.clamp(1, NUM_SITES));
    let mut rng = Rng::derive(seed, site as u64);
    let has_hematoma = markers.any() || rng.bernoulli(0.5);
    let (sin_t, cos_t) = traits.tilt_radians.sin_cos();
    let (outer_a, outer_b) = (0.74 * traits.head_scale, 0.9 * traits.head_scale);
    let skull = 0.06 * traits.head_scale;
    let texture: Vec<(f32, f32, f32)> = (0..4)
        .map(|_| (2.0 + 6.0 * rng.uniform() as f32, 2.0 + 6.0 * rng.uniform() as f32, rng.uniform() as f32 * 6.3))
        .collect();
    let hematoma = has_hematoma.then(|| {
        let angle = rng.uniform() as f32 * std::f32::consts::TAU;
        let dist = 0.2 + 0.3 * rng.uniform() as f32;
        let radius = 0.1 + 0.08 * rng.uniform() as f32;
        let amp = if markers.margin_irregularity { 0.3 } else { 0.0 };
        Hematoma {
            cx: dist * angle.cos() * outer_a,
            cy: dist * angle.sin() * outer_b,
            radius,
            lobes: [
                (amp, 3.0 + rng.below(3) as f32),
                (amp * 0.6, 5.0 + rng.below(3) as f32),
                (rng.uniform() as f32 * 6.3, 0.0),
            ],
            blend_angle: rng.uniform() as f32 * std::f32::consts::PI,
            level_y: (rng.uniform() as f32 - 0.5) * 0.6 * radius,
            core_radius: radius * (0.35 + 0.2 * rng.uniform() as f32),
        }
    });
    let noise = rng.normal_vec(size * size);
    let mut hu = vec![0f32; size * size];
    for row in 0..size {
        for col in 0..size {
            // Normalised coordinates, y down, rotated by the site's tilt.
            let (x0, y0) = (2.0 * (col as f32 + 0.5) / size as f32 - 1.0, 2.0 * (row as f32 + 0.5) / size as f32 - 1.0);
            let (x, y) = (cos_t * x0 + sin_t * y0, -sin_t * x0 + cos_t * y0);
            let outer = (x / outer_a).powi(2) + (y / outer_b).powi(2);
            let inner = (x / (outer_a - skull)).powi(2) + (y / (outer_b - skull)).powi(2);
            let mut value = if outer > 1.0 {
                -1000.0
            } else if inner > 1.0 {
                900.0 + 300.0 * (1.0 - outer)
            } else {
                let grey_white = texture.iter().map(|(fx, fy, ph)| (fx * x + fy * y + ph).sin()).sum::<f32>() / 4.0;
                let mut brain = 32.0 + 5.0 * grey_white;
                for side in [-1.0f32, 1.0] {
                    let v = ((x - side * 0.12) / 0.07).powi(2) + ((y + 0.05) / 0.2).powi(2);
                    if v < 1.0 {
                        brain = 6.0;
                    }
                }
                brain
            };
            if let Some(h) = &hematoma
                && inner <= 1.0
            {
                let (dx, dy) = (x - h.cx, y - h.cy);
                let theta = dy.atan2(dx);
                let phase = h.lobes[2].0;
                let border = h.radius
                    * (1.0
                        + h.lobes[0].0 * (h.lobes[0].1 * theta + phase).sin() * 0.5
                        + h.lobes[1].0 * (h.lobes[1].1 * theta + 2.0 * phase).sin() * 0.5);
                let r = (dx * dx + dy * dy).sqrt();
                if r < border {
                    let mut blood = 72.0;
                    if markers.blend_sign && (dx * h.blend_angle.cos() + dy * h.blend_angle.sin()) > 0.0 {
                        blood = 44.0;
                    }
                    if markers.fluid_level {
                        blood = if dy > h.level_y { 82.0 } else { 46.0 };
                    }
                    if markers.hypodensity && r < h.core_radius {
                        blood = 30.0;
                    }
                    value = blood;
                }
            }
            hu[row * size + col] = value + traits.offset_hu + traits.noise_hu * noise[row * size + col];
        }
    }
    Phantom { size, site, markers, has_hematoma, hu }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_where(p: &Phantom, pred: impl Fn(f32) -> bool) -> (f32, usize) {
        let vals: Vec<f32> = p.hu.iter().copied().filter(|&v| pred(v)).collect();
        (vals.iter().sum::<f32>() / vals.len().max(1) as f32, vals.len())
    }

    #[test]
    fn anatomy_has_the_right_hounsfield_units() {
        let p = generate(128, 3, Markers::default(), 1);
        let (air, n_air) = mean_where(&p, |v| v < -500.0);
        let (bone, n_bone) = mean_where(&p, |v| v > 500.0);
        let (soft, n_soft) = mean_where(&p, |v| (-100.0..100.0).contains(&v));
        assert!((air + 1000.0).abs() < 20.0 && n_air > 1000, "air {air} x{n_air}");
        assert!(bone > 800.0 && n_bone > 200, "bone {bone} x{n_bone}");
        assert!((10.0..50.0).contains(&soft) && n_soft > 5000, "brain {soft} x{n_soft}");
    }

    #[test]
    fn markers_change_the_slice_and_generation_is_reproducible() {
        let plain = generate(96, 2, Markers::default(), 5);
        let again = generate(96, 2, Markers::default(), 5);
        assert_eq!(plain.hu, again.hu);
        let fluid = generate(96, 2, Markers { fluid_level: true, ..Default::default() }, 5);
        assert!(fluid.has_hematoma);
        // Fluid level: dense blood (~80 HU) exists only with the marker.
        let dense = |p: &Phantom| p.hu.iter().filter(|&&v| (76.0..90.0).contains(&v)).count();
        assert!(dense(&fluid) > 3 * dense(&plain) + 10, "{} vs {}", dense(&fluid), dense(&plain));
        // Sites differ in noise.
        let brain_std = |site| {
            let p = generate(96, site, Markers::default(), 9);
            let brain: Vec<f32> = p.hu.iter().copied().filter(|v| (-100.0..100.0).contains(v)).collect();
            let m = brain.iter().sum::<f32>() / brain.len() as f32;
            (brain.iter().map(|v| (v - m).powi(2)).sum::<f32>() / brain.len() as f32).sqrt()
        };
        let stds: Vec<f32> = (1..=NUM_SITES).map(brain_std).collect();
        let (lo, hi) = stds.iter().fold((f32::MAX, 0f32), |(a, b), &s| (a.min(s), b.max(s)));
        assert!(hi > 1.5 * lo, "site noise levels {stds:?}");
    }
}
