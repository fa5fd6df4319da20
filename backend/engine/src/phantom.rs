//! Synthetic brain-CT slices in Hounsfield units, with the paper's four hematoma markers and twelve sites:
//! data for the demo and the tests when no clinical scans are at hand.
//!
//! A slice has air, a skull ring, a thin layer of CSF, a cortical ribbon of grey matter (~40 HU) folded into
//! gyri over white matter (~28 HU), and two ventricles (CSF, ~6 HU). Slices are taken at a level between
//! the skull base and the vertex: higher slices cut a smaller head and the calvarium obliquely, so slices
//! near the vertex are mostly bone. A hematoma
//! (acute blood, ~60-80 HU) shows each requested marker: *hypodensity* (a darker core), *margin
//! irregularity* (a lobulated border), *blend sign* (two densities meeting at a sharp line) and *fluid
//! level* (a horizontal level, denser below). Slices without markers carry either no hematoma or a plain,
//! round, homogeneous one, so a classifier must see the markers, not just blood. Each site has its own
//! noise level, sharpness (reconstruction kernel), HU offset, field of view and tilt, as scanners and
//! protocols differ between facilities.

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
    /// Head size in the field of view (a larger field of view shows a smaller head).
    pub head_scale: f32,
    pub tilt_radians: f32,
    /// Blend weight of a 3x3 blur: 0 is a sharp (bone) kernel, 0.6 a soft one.
    pub blur: f32,
}

impl Site {
    /// Sites are numbered 1..=12 as in the paper (1 = the downstream facility).
    pub fn new(number: usize) -> Self {
        let mut rng = Rng::derive(0x5173, number as u64);
        Site {
            noise_hu: 3.0 + 9.0 * rng.uniform() as f32,
            offset_hu: -6.0 + 12.0 * rng.uniform() as f32,
            head_scale: 0.78 + 0.2 * rng.uniform() as f32,
            tilt_radians: (-0.14 + 0.28 * rng.uniform()) as f32,
            blur: 0.6 * rng.uniform() as f32,
        }
    }
}

/// One generated slice: `size` x `size` Hounsfield units, row-major.
pub struct Phantom {
    pub size: usize,
    pub site: usize,
    pub markers: Markers,
    pub has_hematoma: bool,
    /// Axial level: 0 at the skull base, 1 at the vertex.
    pub level: f32,
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

/// Generates a slice of site `site` (1..=12) showing `markers`; `seed` fixes everything else. Slices with
/// a hematoma lie between the ventricles' level and the upper convexity; others anywhere up to the vertex.
pub fn generate(size: usize, site: usize, markers: Markers, seed: u64) -> Phantom {
    let mut rng = Rng::derive(seed ^ 0x1e7e1, site as u64);
    let has_hematoma = markers.any() || rng.bernoulli(0.5);
    let level = if has_hematoma { 0.3 + 0.35 * rng.uniform() } else { 0.2 + 0.8 * rng.uniform() } as f32;
    generate_at(size, site, markers, has_hematoma, level, seed)
}

/// A set of phantom slices as windowed 8-bit PNGs: `num` from random sites, then `downstream` more from
/// site 1 (the paper's downstream facility), each marker drawn with probability `marker_prob`. With
/// `slices_per_patient` above 1 the slices come as patients: that many neighbouring axial slices of one
/// head (one site, one set of markers, nearly identical from slice to slice), as real CT studies do.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PngSet {
    pub num: usize,
    pub downstream: usize,
    pub size: usize,
    pub marker_prob: f64,
    pub seed: u64,
    pub slices_per_patient: usize,
}

/// One slice of a [`PngSet`]: its site, markers, the seed of its head, its patient (when the set has
/// patients) and its axial level (when not drawn from the seed).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SetSlice {
    pub site: usize,
    pub markers: Markers,
    pub seed: u64,
    pub patient: Option<usize>,
    pub level: Option<f32>,
}

/// The axial distance between a phantom patient's neighbouring slices, in levels (0 skull base .. 1
/// vertex): about 4 mm of a head.
const PATIENT_SLICE_STEP: f32 = 0.03;

/// The probability of each hematoma marker in a phantom set unless one is given (`repdiff phantoms`,
/// the pipeline's phantoms, a job's `phantoms` data).
pub const MARKER_PROB: f64 = 0.15;

/// The class folders of a PNG set, by label.
pub const CLASS_DIRS: [&str; 2] = ["0_no_hematoma", "1_hematoma"];

impl PngSet {
    /// The slices a set of `seed` holds, in order. Independent slices each draw their site and markers;
    /// a patient draws them once for all its slices (a patient does not straddle the downstream boundary).
    pub fn slices(&self) -> Vec<SetSlice> {
        let mut rng = Rng::new(self.seed);
        let seed_of = |i: usize| self.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
        if self.slices_per_patient <= 1 {
            return (0..self.num + self.downstream)
                .map(|i| {
                    let site = if i >= self.num { 1 } else { 1 + rng.below(NUM_SITES) };
                    let markers = Markers::random(&mut rng, self.marker_prob);
                    SetSlice { site, markers, seed: seed_of(i), patient: None, level: None }
                })
                .collect();
        }
        let k = self.slices_per_patient;
        let mut slices = Vec::with_capacity(self.num + self.downstream);
        let mut patient = 0;
        for (count, downstream) in [(self.num, false), (self.downstream, true)] {
            for start in (0..count).step_by(k) {
                let site = if downstream { 1 } else { 1 + rng.below(NUM_SITES) };
                let markers = Markers::random(&mut rng, self.marker_prob);
                // The middle of the head, where a haematoma shows, with room for the slices either side.
                let middle = 0.3 + 0.3 * rng.uniform() as f32;
                let n = k.min(count - start);
                for j in 0..n {
                    let level = middle + PATIENT_SLICE_STEP * (j as f32 - (n as f32 - 1.0) / 2.0);
                    let seed = seed_of(patient);
                    slices.push(SetSlice { site, markers, seed, patient: Some(patient), level: Some(level) });
                }
                patient += 1;
            }
        }
        slices
    }

    /// Where a slice of this set comes from: its patient, when the set has patients.
    pub fn origin(&self, slice: &SetSlice) -> crate::manifest::Origin {
        crate::manifest::Origin {
            patient: slice.patient.map(|p| format!("phantom-{:04}-{p:05}", self.seed)),
            ..Default::default()
        }
    }

    /// Writes the set into `out` (class folders and `manifest.csv`, the slices named relative to `out`)
    /// through `window`; returns the manifest. The same set for the same settings, on any machine.
    pub fn write(
        &self,
        out: &std::path::Path,
        window: &crate::imaging::Window,
    ) -> crate::Result<crate::manifest::Manifest> {
        for dir in CLASS_DIRS {
            std::fs::create_dir_all(out.join(dir)).map_err(|e| crate::Error::io(out.join(dir), e))?;
        }
        let mut manifest = crate::manifest::Manifest::default();
        for (i, slice) in self.slices().into_iter().enumerate() {
            let SetSlice { site, markers, seed, level, .. } = slice;
            let phantom = match level {
                Some(level) => generate_at(self.size, site, markers, markers.any(), level, seed),
                None => generate(self.size, site, markers, seed),
            };
            let file = format!("{}/slice_{i:05}_site{site:02}.png", CLASS_DIRS[usize::from(markers.any())]);
            let path = out.join(&file);
            window
                .to_gray8(&phantom.hu, self.size)
                .save(&path)
                .map_err(|source| crate::Error::Image { path: path.clone(), source })?;
            let origin = self.origin(&slice);
            manifest.records.push(crate::manifest::SliceRecord { file, site, markers, origin, ..Default::default() });
        }
        manifest.write_csv(&out.join("manifest.csv"))?;
        Ok(manifest)
    }
}

/// Generates a slice at axial `level` (0 skull base .. 1 vertex); a hematoma needs brain, so it is left
/// out above level 0.8.
pub fn generate_at(size: usize, site: usize, markers: Markers, has_hematoma: bool, level: f32, seed: u64) -> Phantom {
    let traits = Site::new(site.clamp(1, NUM_SITES));
    let mut rng = Rng::derive(seed, site as u64);
    let level = level.clamp(0.0, 1.0);
    let has_hematoma = (has_hematoma || markers.any()) && level <= 0.8;
    let (sin_t, cos_t) = traits.tilt_radians.sin_cos();
    // Above mid-level the head narrows like a dome and the calvarium is cut ever more obliquely.
    let dome = if level <= 0.5 { 1.0 } else { (1.0 - 0.92 * ((level - 0.5) / 0.5).powi(2)).sqrt() };
    let (outer_a, outer_b) = (0.74 * traits.head_scale * dome, 0.9 * traits.head_scale * dome);
    let skull = (0.06 * traits.head_scale / dome.max(0.3)).min(0.8 * outer_a);
    let ventricles = (0.3..0.62).contains(&level);
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
                // Depth below the inner table: CSF, then a cortical ribbon whose thickness follows the gyri.
                let depth = 1.0 - inner.sqrt();
                let gyri =
                    texture.iter().map(|(fx, fy, ph)| (3.0 * fx * x + 3.0 * fy * y + ph).sin()).sum::<f32>() / 4.0;
                let mut brain = if depth < 0.015 + 0.01 * gyri.max(0.0) {
                    8.0
                } else if depth < 0.11 + 0.06 * gyri {
                    40.0
                } else {
                    28.0 + 2.0 * gyri
                };
                if ventricles {
                    for side in [-1.0f32, 1.0] {
                        let v =
                            ((x - side * 0.12 * dome) / (0.07 * dome)).powi(2) + ((y + 0.05) / (0.2 * dome)).powi(2);
                        if v < 1.0 {
                            brain = 6.0;
                        }
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
            hu[row * size + col] = value;
        }
    }
    // The site's reconstruction kernel (a blend with the 3x3 mean), then its offset and noise.
    let clean = hu.clone();
    for row in 0..size {
        for col in 0..size {
            let (mut sum, mut count) = (0.0, 0.0);
            for r in row.saturating_sub(1)..(row + 2).min(size) {
                for c in col.saturating_sub(1)..(col + 2).min(size) {
                    sum += clean[r * size + c];
                    count += 1.0;
                }
            }
            let i = row * size + col;
            hu[i] = (1.0 - traits.blur) * clean[i]
                + traits.blur * sum / count
                + traits.offset_hu
                + traits.noise_hu * noise[i];
        }
    }
    Phantom { size, site, markers, has_hematoma, level, hu }
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
        let p = generate_at(128, 3, Markers::default(), false, 0.45, 1);
        let (air, n_air) = mean_where(&p, |v| v < -500.0);
        let (bone, n_bone) = mean_where(&p, |v| v > 500.0);
        let (soft, n_soft) = mean_where(&p, |v| (-100.0..100.0).contains(&v));
        assert!((air + 1000.0).abs() < 20.0 && n_air > 1000, "air {air} x{n_air}");
        assert!(bone > 800.0 && n_bone > 200, "bone {bone} x{n_bone}");
        assert!((10.0..50.0).contains(&soft) && n_soft > 5000, "brain {soft} x{n_soft}");
        // Grey matter (cortex, ~40 HU) and white matter (~28 HU) both make up a good part of the brain.
        let quiet = generate_at(128, 1, Markers::default(), false, 0.45, 1);
        let noise = Site::new(1).noise_hu;
        let grey = quiet.hu.iter().filter(|&&v| (36.0..46.0).contains(&v)).count();
        let white = quiet.hu.iter().filter(|&&v| (22.0..32.0).contains(&v)).count();
        assert!(grey > 800 && white > 800, "grey {grey}, white {white} pixels (noise {noise} HU)");
    }

    #[test]
    fn slices_near_the_vertex_are_mostly_bone() {
        let tissue = |p: &Phantom| {
            let bone = p.hu.iter().filter(|&&v| v > 500.0).count();
            let soft = p.hu.iter().filter(|&&v| (-100.0..100.0).contains(&v)).count();
            (bone, soft)
        };
        let (bone, soft) = tissue(&generate_at(128, 5, Markers::default(), false, 0.97, 2));
        assert!(bone > soft, "vertex: {bone} bone vs {soft} brain pixels");
        let (bone, soft) = tissue(&generate_at(128, 5, Markers::default(), false, 0.4, 2));
        assert!(soft > 3 * bone, "mid-level: {bone} bone vs {soft} brain pixels");
        let high = generate_at(64, 5, Markers { blend_sign: true, ..Default::default() }, true, 0.95, 2);
        assert!(!high.has_hematoma, "no hematoma without brain to hold it");
    }

    #[test]
    fn markers_change_the_slice_and_generation_is_reproducible() {
        let plain = generate(96, 2, Markers::default(), 5);
        let again = generate(96, 2, Markers::default(), 5);
        assert_eq!(plain.hu, again.hu);
        let fluid = generate(96, 2, Markers { fluid_level: true, ..Default::default() }, 5);
        assert!(fluid.has_hematoma);
        // Fluid level: dense blood (~82 HU) exists only with the marker. Same hematoma, quietest site.
        let quiet = (1..=NUM_SITES).min_by(|&a, &b| Site::new(a).noise_hu.total_cmp(&Site::new(b).noise_hu)).unwrap();
        let plain = generate_at(128, quiet, Markers::default(), true, 0.45, 5);
        let fluid = generate_at(128, quiet, Markers { fluid_level: true, ..Default::default() }, true, 0.45, 5);
        let dense = |p: &Phantom| p.hu.iter().filter(|&&v| (78.0..95.0).contains(&v)).count();
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

    #[test]
    fn phantom_patients_are_runs_of_nearly_identical_neighbouring_slices() {
        let set = |k| PngSet { num: 24, downstream: 10, size: 64, marker_prob: 0.3, seed: 5, slices_per_patient: k };
        let single = set(1).slices();
        assert!(single.iter().all(|s| s.patient.is_none() && s.level.is_none()), "1: independent slices");
        let slices = set(4).slices();
        assert_eq!(slices.len(), 34);
        // 24 slices in 6 patients, then the downstream 10 in patients of 4, 4 and 2, all at site 1.
        let patients: Vec<usize> = slices.iter().map(|s| s.patient.unwrap()).collect();
        assert_eq!(patients[..24], [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5]);
        assert_eq!(patients[24..], [6, 6, 6, 6, 7, 7, 7, 7, 8, 8]);
        assert!(slices[24..].iter().all(|s| s.site == 1));
        for pair in slices.windows(2).filter(|w| w[0].patient == w[1].patient) {
            assert_eq!((pair[0].site, pair[0].markers, pair[0].seed), (pair[1].site, pair[1].markers, pair[1].seed));
        }
        // Neighbouring slices of one head differ far less than two heads do.
        let image = |s: &SetSlice| generate_at(64, s.site, s.markers, s.markers.any(), s.level.unwrap(), s.seed).hu;
        let distance = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
        let neighbours = distance(&image(&slices[1]), &image(&slices[2]));
        let strangers = distance(&image(&slices[2]), &image(&slices[6]));
        assert!(neighbours * 4.0 < strangers, "neighbours {neighbours} HU apart, two heads {strangers}");
        let origin = set(4).origin(&slices[5]);
        assert_eq!(origin.patient.as_deref(), Some("phantom-0005-00001"));
    }
}
