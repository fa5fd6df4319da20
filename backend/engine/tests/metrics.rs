//! Generation metrics against the field's implementations (fixtures from scipy, improved-gan's Inception
//! Score and the `prdc` package: `fixtures/metrics/gen_metrics_reference.py`), the Inception network
//! against pytorch-fid's (`fixtures/inception/gen_inception_reference.py`), and what FID must do on
//! images: ~0 for a set against itself, growing as noise grows.

use std::collections::HashMap;
use std::path::Path;

use repdiff_engine::metrics::tsne::{TsneOptions, feature_histogram};
use repdiff_engine::metrics::{
    EvenlySpaced, FeatureMatrix, Gaussian, ImageFolder, ImageSource, InceptionV3, MetricOptions, compare,
    density_coverage, extract, extract_cached, frechet_distance, inception, inception_score, precision_recall,
};
use repdiff_engine::rng::Rng;
use repdiff_engine::{Device, Tensor};

fn fixtures(dir: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(dir)
}

fn matrix(tensors: &HashMap<String, Tensor>, name: &str) -> FeatureMatrix {
    let t = &tensors[name];
    let (n, d) = t.dims2().unwrap();
    FeatureMatrix::new(n, d, t.flatten_all().unwrap().to_vec1().unwrap()).unwrap()
}

fn assert_close(what: &str, got: f64, want: f64, rel: f64) {
    let err = (got - want).abs() / want.abs().max(1e-12);
    assert!(err < rel, "{what}: {got} vs reference {want} (relative error {err:e})");
}

fn reference() -> (HashMap<String, Tensor>, serde_json::Value) {
    let dir = fixtures("metrics");
    let tensors = candle_core::safetensors::load(dir.join("features.safetensors"), &Device::Cpu).unwrap();
    let json = std::fs::read_to_string(dir.join("metrics_reference.json")).unwrap();
    (tensors, serde_json::from_str(&json).unwrap())
}

#[test]
fn metrics_match_scipy_improved_gan_and_prdc() {
    let (t, r) = reference();
    let want = |k: &str| r[k].as_f64().unwrap();
    let (real, fake) = (matrix(&t, "real"), matrix(&t, "fake"));
    let (gr, gf) = (Gaussian::fit(&real).unwrap(), Gaussian::fit(&fake).unwrap());
    assert_close("Frechet distance", frechet_distance(&gr, &gf).unwrap(), want("fd"), 1e-6);
    assert!(frechet_distance(&gr, &gr).unwrap().abs() < 1e-9, "a set against itself");
    let (is, is_std) = inception_score(&matrix(&t, "logits"), 10).unwrap();
    assert_close("Inception Score", is, want("is_mean"), 1e-6);
    assert_close("Inception Score std", is_std, want("is_std"), 1e-6);
    let (precision, recall) = precision_recall(&real, &fake, 3).unwrap();
    assert_close("precision", precision, want("precision_k3"), 1e-9);
    assert_close("recall", recall, want("recall_k3"), 1e-9);
    let (density, coverage) = density_coverage(&real, &fake, 5).unwrap();
    assert_close("density", density, want("density_k5"), 1e-9);
    assert_close("coverage", coverage, want("coverage_k5"), 1e-9);
}

#[test]
fn frechet_distance_stays_finite_and_close_to_scipy_when_covariances_are_singular() {
    // 20 and 24 images of 32 features: both covariances are rank-deficient, where scipy's sqrtm needs
    // its eps retry. The eigenvalue route gives a finite number within 1e-4 of scipy's.
    let (t, r) = reference();
    let a = Gaussian::fit(&matrix(&t, "few_real")).unwrap();
    let b = Gaussian::fit(&matrix(&t, "few_fake")).unwrap();
    let fd = frechet_distance(&a, &b).unwrap();
    assert!(fd.is_finite());
    assert_close("rank-deficient Frechet distance", fd, r["fd_rank_deficient"].as_f64().unwrap(), 1e-4);
}

#[test]
fn too_few_images_and_mismatched_features_are_clear_errors() {
    let one = FeatureMatrix::new(1, 4, vec![0.0; 4]).unwrap();
    assert!(Gaussian::fit(&one).unwrap_err().to_string().contains("at least 2"));
    let three = FeatureMatrix::new(3, 4, vec![0.5; 12]).unwrap();
    assert!(precision_recall(&three, &three, 3).unwrap_err().to_string().contains("too few"));
    assert!(FeatureMatrix::new(2, 4, vec![0.0; 7]).is_err());
    assert!(inception_score(&three, 10).is_err());
}

#[test]
fn the_inception_network_matches_pytorch_fid_on_the_documented_random_weights() {
    let dir = fixtures("inception");
    // Every parameter of pytorch-fid's network, with its shape, and nothing else.
    let shapes: HashMap<String, Vec<usize>> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state_dict_shapes.json")).unwrap()).unwrap();
    let ours: HashMap<String, Vec<usize>> = inception::parameter_shapes().into_iter().collect();
    assert_eq!(ours, shapes, "the layer list differs from pytorch-fid's state dict");

    let t = candle_core::safetensors::load(dir.join("inception_reference.safetensors"), &Device::Cpu).unwrap();
    let net = InceptionV3::random(7, &Device::Cpu).unwrap();
    // The fixture's input is in pytorch-fid's [0, 1]; the engine takes [-1, 1].
    let images = ((&t["images"] * 2.0).unwrap() - 1.0).unwrap();
    let f = net.features(&images).unwrap();
    for (name, got) in [("pool", &f.pool), ("spatial", &f.spatial), ("logits", &f.logits)] {
        let want = &t[name];
        assert_eq!(got.dims(), want.dims(), "{name} shape");
        let err = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(err / scale < 1e-4, "{name}: max error {err} against a scale of {scale}");
    }
}

#[test]
fn resizing_matches_torch_bilinear_on_a_known_case() {
    // interpolate([0, 1, 2, 3] as 1x4, size 8, bilinear, align_corners=False) in PyTorch:
    // 0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3 (rows are constant, so the row pass is the identity).
    let x = Tensor::new(&[[[[0f32, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]]]], &Device::Cpu).unwrap();
    let y = inception::resize_bilinear(&x, 3, 8).unwrap();
    let row: Vec<f32> = y.get(0).unwrap().get(0).unwrap().get(1).unwrap().to_vec1().unwrap();
    let want = [0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0];
    for (a, b) in row.iter().zip(want) {
        assert!((a - b).abs() < 1e-6, "{row:?}");
    }
}

/// Smooth random 32x32 grey "scans": blobs of varied size and place over a dark background.
fn blobs(n: usize, seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    let mut values = Vec::with_capacity(n * 32 * 32);
    for _ in 0..n {
        let (cx, cy) = (8.0 + 16.0 * rng.uniform(), 8.0 + 16.0 * rng.uniform());
        let r = 4.0 + 6.0 * rng.uniform();
        for y in 0..32 {
            for x in 0..32 {
                let d2 = (x as f64 - cx).powi(2) + (y as f64 - cy).powi(2);
                values.push((-0.8 + 1.6 * (-d2 / (2.0 * r * r)).exp()) as f32);
            }
        }
    }
    Tensor::from_vec(values, (n, 1, 32, 32), &Device::Cpu).unwrap()
}

#[test]
fn fid_is_zero_for_a_set_against_itself_and_grows_with_noise() {
    let net = InceptionV3::random(0, &Device::Cpu).unwrap();
    let real_images = blobs(12, 1);
    let real = extract(&net, &real_images, 12, None, |_, _| {}).unwrap();
    let options = MetricOptions::default();
    let same = compare(&real, &real, &options).unwrap();
    assert!(same.fid.abs() < 1e-6 * real.pool.values.iter().map(|v| v.abs() as f64).sum::<f64>(), "{same:?}");
    assert_eq!((same.precision, same.recall, same.coverage), (1.0, 1.0, 1.0));
    assert!(!same.is_pretrained() && same.rows()[0].0.starts_with("FD (random-inception-v3-seed0)"));

    let mut last = 0.0;
    let mut noise_rng = Rng::new(9);
    let noise = noise_rng.randn((12, 1, 32, 32), &Device::Cpu).unwrap();
    for strength in [0.05, 0.15, 0.4] {
        let noisy = (&real_images + (&noise * strength).unwrap()).unwrap().clamp(-1f32, 1f32).unwrap();
        let m = compare(&real, &extract(&net, &noisy, 12, None, |_, _| {}).unwrap(), &options).unwrap();
        assert!(m.fid > last * 1.05, "noise {strength}: FD {} after {last}", m.fid);
        last = m.fid;
    }
}

#[test]
fn reference_features_are_cached_and_reused() {
    let net = InceptionV3::random(0, &Device::Cpu).unwrap();
    let dir = std::env::temp_dir().join(format!("repdiff-metrics-cache-{}", std::process::id()));
    let images = blobs(3, 5);
    let (first, hit) = extract_cached(&net, &images, &dir, 4, None, |_, _| {}).unwrap();
    assert!(!hit);
    let (second, hit) = extract_cached(&net, &images, &dir, 4, None, |_, _| {}).unwrap();
    assert!(hit, "the second extraction of the same pixels reads the cache");
    assert_eq!(first.pool, second.pool);
    let (_, hit) = extract_cached(&net, &blobs(3, 6), &dir, 4, None, |_, _| {}).unwrap();
    assert!(!hit, "other pixels are not served from the cache");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_folder_read_a_batch_at_a_time_measures_as_the_same_images_in_memory() {
    let net = InceptionV3::random(0, &Device::Cpu).unwrap();
    let dir = std::env::temp_dir().join(format!("repdiff-metrics-folder-{}", std::process::id()));
    let (folder_dir, cache) = (dir.join("images"), dir.join("cache"));
    std::fs::create_dir_all(&folder_dir).unwrap();
    let images = blobs(5, 7);
    for i in 0..5 {
        let levels: Vec<u8> = images
            .get(i)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| ((v + 1.0) * 127.5).round() as u8)
            .collect();
        image::GrayImage::from_raw(32, 32, levels).unwrap().save(folder_dir.join(format!("{i}.png"))).unwrap();
    }
    let folder = ImageFolder::open(&folder_dir, None, &Device::Cpu).unwrap();
    assert_eq!((folder.len(), folder.image_dims()), (5, (3, 32, 32)));
    let rgb = images.repeat((1, 3, 1, 1)).unwrap();

    let (from_folder, hit) = extract_cached(&net, &folder, &cache, 2, None, |_, _| {}).unwrap();
    assert!(!hit);
    let in_memory = extract(&net, &rgb, 5, None, |_, _| {}).unwrap();
    let close = |a: &FeatureMatrix, b: &FeatureMatrix| {
        a.values.iter().zip(&b.values).all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + y.abs()))
    };
    assert_eq!(from_folder.pool.n, 5);
    assert!(close(&from_folder.pool, &in_memory.pool) && close(&from_folder.logits, &in_memory.logits));
    // The cache key is the pixels', whatever the source and the batch size.
    let (_, hit) = extract_cached(&net, &rgb, &cache, 4, None, |_, _| {}).unwrap();
    assert!(hit, "the same pixels in memory are served from the folder's cache entry");

    let subset = extract(&net, &EvenlySpaced::new(&folder, 3), 2, None, |_, _| {}).unwrap();
    for (row, of) in [(0, 0), (1, 1), (2, 3)] {
        let (a, b) = (subset.pool.row(row), in_memory.pool.row(of));
        assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + y.abs())), "subset row {row}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn feature_histograms_separate_a_shifted_set_from_the_real_one() {
    let mut rng = Rng::new(4);
    let cluster = |rng: &mut Rng, n: usize, centre: f32| {
        let v: Vec<f32> = rng.normal_vec(n * 8).into_iter().map(|x| x + centre).collect();
        FeatureMatrix::new(n, 8, v).unwrap()
    };
    let real = cluster(&mut rng, 60, 0.0);
    let close = cluster(&mut rng, 60, 0.0);
    let far = cluster(&mut rng, 60, 6.0);
    let options = TsneOptions { iterations: 500, ..Default::default() };
    let h = feature_histogram(&[("real".into(), &real), ("close".into(), &close), ("far".into(), &far)], 60, &options)
        .unwrap();
    assert_eq!(h.sets.iter().map(|s| s.counts.iter().sum::<u32>()).collect::<Vec<_>>(), [60, 60, 60]);
    assert_eq!(h.sets[0].overlap, 1.0);
    assert!(
        h.sets[1].overlap > 0.5 && h.sets[2].overlap < 0.1,
        "{:?}",
        h.sets.iter().map(|s| s.overlap).collect::<Vec<_>>()
    );
}
