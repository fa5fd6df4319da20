//! The `repdiff` binary end to end: train on a folder of images, resume, sample, and refuse bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repdiff(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_repdiff")).args(args).output().expect("runs repdiff")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("repdiff-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A class-per-folder image set: dark squares in `a/`, bright squares in `b/`, 16x16 PNGs.
fn image_folder(root: &Path) {
    for (class, value) in [("a", 40u8), ("b", 220u8)] {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..4u8 {
            let img = image::GrayImage::from_fn(16, 16, |x, y| image::Luma([value.wrapping_add(((x + y) as u8) * i)]));
            img.save(dir.join(format!("{i}.png"))).unwrap();
        }
    }
    std::fs::write(root.join("a/notes.txt"), "not an image: ignored").unwrap();
}

fn tiny_config(dir: &Path) -> PathBuf {
    let out = repdiff(&["config", "--preset", "tiny-cpu"]);
    assert!(out.status.success(), "{}", text(&out));
    let mut config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    config["model"]["input_size"] = 8.into();
    config["model"]["patch_size"] = 2.into();
    config["model"]["hidden_size"] = 32.into();
    config["model"]["depth"] = 1.into();
    config["train"]["batch_size"] = 4.into();
    config["train"]["checkpoint_every"] = 2.into();
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    path
}

#[test]
fn train_resume_and_sample_from_an_image_folder() {
    let dir = tempdir("train");
    image_folder(&dir.join("images"));
    let config = tiny_config(&dir);
    let run = dir.join("run");
    let (config_s, images_s, run_s) = (config.to_str().unwrap(), dir.join("images"), run.to_str().unwrap());
    let images_s = images_s.to_str().unwrap();

    let out = repdiff(&["train", "--config", config_s, "--images", images_s, "--steps", "3", "--out", run_s]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("classes [\"a\", \"b\"]"), "{}", text(&out));
    assert!(run.join("checkpoint.safetensors").exists() && run.join("config.json").exists());

    // Training into an existing run without --resume is refused; with --resume it continues.
    let out = repdiff(&["train", "--config", config_s, "--images", images_s, "--steps", "5", "--out", run_s]);
    assert!(!out.status.success() && text(&out).contains("--resume"), "{}", text(&out));
    let out = repdiff(&["train", "--images", images_s, "--steps", "5", "--out", run_s, "--resume"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Resuming") && text(&out).contains("at step 3"), "{}", text(&out));
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let steps: Vec<&str> = csv.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(steps, ["1", "2", "3", "4", "5"]);

    let samples = dir.join("samples");
    let ckpt = run.join("checkpoint.safetensors");
    let out = repdiff(&[
        "sample",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "-n",
        "3",
        "--class",
        "1",
        "--guidance",
        "2",
        "--sampler",
        "ddim",
        "--steps",
        "5",
        "--out",
        samples.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    for name in ["sample_0000_class1.png", "sample_0002_class1.png", "grid.png", "samples.safetensors"] {
        assert!(samples.join(name).exists(), "missing {name}");
    }
    let png = image::open(samples.join("sample_0001_class1.png")).unwrap();
    assert_eq!((png.width(), png.height()), (8, 8));
}

#[test]
fn bad_input_is_refused_with_a_clear_message() {
    let dir = tempdir("bad");
    let run = dir.join("run");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["train".into(), "--preset".into(), "huge".into(), "--toy".into(), "8".into()], "unknown preset \"huge\""),
        (
            vec!["train".into(), "--model".into(), "DiT-Q/2".into(), "--toy".into(), "8".into()],
            "unknown model name \"DiT-Q/2\"",
        ),
        (vec!["train".into(), "--out".into(), run.to_str().unwrap().into()], "--images DIR, --latents FILE or --toy N"),
        (
            vec![
                "train".into(),
                "--images".into(),
                dir.to_str().unwrap().into(),
                "--out".into(),
                run.to_str().unwrap().into(),
            ],
            "holds no PNG or JPEG",
        ),
        (
            vec!["sample".into(), "--checkpoint".into(), dir.join("none.safetensors").to_str().unwrap().into()],
            "none.safetensors",
        ),
    ];
    // A flat folder of images has no labels: a class-conditional run says how to proceed.
    let flat = tempdir("flat");
    std::fs::create_dir_all(&flat).unwrap();
    image::GrayImage::from_pixel(8, 8, image::Luma([90])).save(flat.join("x.png")).unwrap();
    let mut cases = cases;
    let flat_run = flat.join("run");
    cases.push((
        vec![
            "train".into(),
            "--images".into(),
            flat.to_str().unwrap().into(),
            "--out".into(),
            flat_run.to_str().unwrap().into(),
        ],
        "--conditioning none",
    ));
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = repdiff(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let msg = text(&out);
        assert!(msg.contains(needle), "{args:?}: expected {needle:?} in {msg}");
        assert!(!msg.contains("panicked"), "{args:?} panicked: {msg}");
    }
    std::fs::create_dir_all(dir.join("imgs")).unwrap();
    std::fs::write(dir.join("imgs/broken.png"), b"\x89PNG not really").unwrap();
    let out = repdiff(&["train", "--images", dir.join("imgs").to_str().unwrap(), "--out", run.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out).contains("broken.png"), "{}", text(&out));
}

#[test]
fn phantoms_make_a_trainable_labelled_folder() {
    let dir = tempdir("phantoms");
    let out = dir.join("ct");
    let run =
        repdiff(&["phantoms", "--out", out.to_str().unwrap(), "-n", "12", "--size", "32", "--marker-prob", "0.3"]);
    assert!(run.status.success(), "{}", text(&run));
    let manifest = std::fs::read_to_string(out.join("manifest.csv")).unwrap();
    let rows: Vec<Vec<&str>> = manifest.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 12);
    for row in &rows {
        // The label is "any marker", and the file sits in its class folder.
        let any = row[2..6].contains(&"1");
        assert_eq!(row[6], if any { "1" } else { "0" });
        assert!(row[0].starts_with(if any { "1_hematoma/" } else { "0_no_hematoma/" }));
        assert!(out.join(row[0]).exists());
        let site: usize = row[1].parse().unwrap();
        assert!((1..=12).contains(&site));
    }
    // The paper's split of that manifest: site 1 downstream, everything else pre-training.
    let manifest = out.join("manifest.csv");
    let split = repdiff(&["split", "--manifest", manifest.to_str().unwrap(), "--downstream-site", rows[0][1]]);
    assert!(split.status.success(), "{}", text(&split));
    assert!(text(&split).contains("| pretrain |") && text(&split).contains("| test |"), "{}", text(&split));
    let written = std::fs::read_to_string(out.join("split.csv")).unwrap();
    assert_eq!(written.lines().count(), 13);
    for (line, row) in written.lines().skip(1).zip(&rows) {
        let pretrain = line.ends_with(",pretrain");
        assert_eq!(pretrain, row[1] != rows[0][1], "{line}");
    }
    let bad = repdiff(&["split", "--manifest", manifest.to_str().unwrap(), "--fractions", "0.5,0.5"]);
    assert!(!bad.status.success() && text(&bad).contains("three numbers"), "{}", text(&bad));

    let bad = repdiff(&["phantoms", "--out", out.to_str().unwrap(), "--window", "lung"]);
    assert!(!bad.status.success() && text(&bad).contains("unknown window"), "{}", text(&bad));
}

#[cfg(unix)]
#[test]
fn ctrl_c_stops_training_with_a_checkpoint_that_resumes() {
    let dir = tempdir("sigint");
    let config = tiny_config(&dir);
    let run = dir.join("run");
    let child = Command::new(env!("CARGO_BIN_EXE_repdiff"))
        .args(["train", "--config", config.to_str().unwrap(), "--toy", "16", "--steps", "1000000"])
        .args(["--checkpoint-every", "1000000", "--out", run.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait (bounded) until a few steps are logged, then interrupt.
    let metrics = run.join("metrics.csv");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read_to_string(&metrics).map_or(0, |s| s.lines().count()) < 4 {
        assert!(std::time::Instant::now() < deadline, "training never logged a step");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "saved, then exits as interrupted: {}", text(&out));
    assert!(text(&out).contains("Cancelled"), "{}", text(&out));
    let logged = std::fs::read_to_string(&metrics).unwrap().lines().count() - 1;
    // The checkpoint holds exactly the logged steps: resuming starts right after the last one.
    let resumed = repdiff(&[
        "train",
        "--toy",
        "16",
        "--steps",
        &(logged + 1).to_string(),
        "--out",
        run.to_str().unwrap(),
        "--resume",
    ]);
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert!(text(&resumed).contains(&format!("at step {logged}")), "{}", text(&resumed));
}

#[test]
fn phantom_dicom_series_import_de_identified_encode_and_train() {
    let dir = tempdir("import");
    let scans = dir.join("scans");
    let out = repdiff(&["phantoms", "--format", "dicom", "-n", "8", "--size", "32", "--out", scans.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let labels = scans.join("labels.csv");
    std::fs::write(scans.join("broken.dcm"), b"not a dicom file").unwrap();
    let dataset = dir.join("dataset");
    let import = |dataset: &Path| {
        repdiff(&[
            "import",
            scans.to_str().unwrap(),
            "--labels",
            labels.to_str().unwrap(),
            "--out",
            dataset.to_str().unwrap(),
            "--deid-key",
            dir.join("deid.key").to_str().unwrap(),
        ])
    };
    let out = import(&dataset);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Imported 8 slices from 8 files"), "{}", text(&out));
    assert!(text(&out).contains("broken.dcm: not a readable DICOM file"), "{}", text(&out));

    // The manifest keeps each slice's site and markers, in the input's order, and where it comes from:
    // the pseudonymous patient, study and series of its DICOM, its instance number and position.
    let input = repdiff_labels(&labels);
    let imported = repdiff_labels(&dataset.join("manifest.csv"));
    assert_eq!(input.len(), 8);
    let strip = |rows: &[Vec<String>]| rows.iter().map(|r| r[1..7].to_vec()).collect::<Vec<_>>();
    assert_eq!(strip(&imported), strip(&input));
    let header = std::fs::read_to_string(dataset.join("manifest.csv")).unwrap();
    assert!(header.starts_with(
        "file,site,hypodensity,margin_irregularity,blend_sign,fluid_level,hematoma,patient,study,series,instance,position\n"
    ));
    let patients: std::collections::BTreeSet<&str> = imported.iter().map(|r| r[7].as_str()).collect();
    assert_eq!(patients.len(), 2, "two phantom patients: {patients:?}");
    assert!(patients.iter().all(|p| p.starts_with("ANON-")), "{patients:?}");
    let instances: Vec<&str> = imported.iter().map(|r| r[10].as_str()).collect();
    assert_eq!(instances, ["1", "2", "3", "4", "1", "2", "3", "4"]);

    // Nothing identifying survives in the stored DICOM files, and slices of a series stay together.
    let mut stored = Vec::new();
    walk(&dataset.join("dicom"), &mut stored);
    assert_eq!(stored.len(), 8);
    for path in &stored {
        let bytes = std::fs::read(path).unwrap();
        for needle in ["PHANTOM^SITE", "PH-0000", "Phantom site", "20260101"] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle.as_bytes()), "{needle} in {}", path.display());
        }
    }
    let series: std::collections::BTreeSet<_> = stored.iter().map(|p| p.parent().unwrap().to_path_buf()).collect();
    assert_eq!(series.len(), 2, "8 slices in series of 4: {series:?}");

    // Importing again with the same key maps every slice to the same names.
    let again = dir.join("again");
    assert!(import(&again).status.success());
    assert_eq!(
        std::fs::read(again.join("manifest.csv")).unwrap(),
        std::fs::read(dataset.join("manifest.csv")).unwrap()
    );
    std::fs::remove_dir_all(&dir).ok();
}

fn repdiff_labels(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().skip(1).map(|line| line.split(',').map(str::to_string).collect()).collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { walk(&path, out) } else { out.push(path) }
    }
}

#[test]
fn pretrain_representation_model_sample_variations_and_finetune_from_it() {
    let dir = tempdir("rep");
    image_folder(&dir.join("images"));
    let config = tiny_config(&dir);
    let (config_s, images) = (config.to_str().unwrap(), dir.join("images"));
    let images_s = images.to_str().unwrap();
    let pre = dir.join("pre");
    let out = repdiff(&[
        "pretrain",
        "--mode",
        "rep",
        "--config",
        config_s,
        "--images",
        images_s,
        "--steps",
        "3",
        "--out",
        pre.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Representation"), "{}", text(&out));
    let ckpt = pre.join("checkpoint.safetensors");

    // A representation model draws variations of references, and says so when none are given.
    let samples = dir.join("samples");
    let base = ["sample", "--checkpoint", ckpt.to_str().unwrap(), "-n", "3", "--sampler", "ddim", "--steps", "4"];
    let out = repdiff(&[&base[..], &["--out", samples.to_str().unwrap()]].concat());
    assert!(!out.status.success() && text(&out).contains("--references"), "{}", text(&out));
    let out = repdiff(
        &[&base[..], &["--references", images.join("a").to_str().unwrap(), "--out", samples.to_str().unwrap()]]
            .concat(),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(samples.join("sample_0002.png").exists());

    // Fine-tuning prints and keeps the transfer table, then trains the class-conditional model.
    let ft = dir.join("ft");
    let out = repdiff(&[
        "finetune",
        "--from",
        ckpt.to_str().unwrap(),
        "--images",
        images_s,
        "--steps",
        "2",
        "--out",
        ft.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let table = std::fs::read_to_string(ft.join("transfer.txt")).unwrap();
    assert!(table.contains("reshaped  x_embedder.proj.weight") && table.contains("new       y_embedder"), "{table}");
    assert!(table.lines().last().unwrap().ends_with("19 loaded, 1 reshaped, 22 dropped, 1 new"), "{table}");
    let out = repdiff(&[
        "sample",
        "--checkpoint",
        ft.join("checkpoint.safetensors").to_str().unwrap(),
        "-n",
        "2",
        "--class",
        "0,1",
        "--sampler",
        "ddim",
        "--steps",
        "4",
        "--out",
        dir.join("ft-samples").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(dir.join("ft-samples/sample_0001_class1.png").exists());
}

/// Trains the tiny config on an image folder with a conditioning, for `steps` steps, into `out`.
fn train_images(config: &Path, images: &Path, conditioning: &str, steps: &str, out: &Path) {
    let (config, images, out) = (config.to_str().unwrap(), images.to_str().unwrap(), out.to_str().unwrap());
    let args = [
        "train",
        "--config",
        config,
        "--conditioning",
        conditioning,
        "--images",
        images,
        "--steps",
        steps,
        "--out",
        out,
    ];
    let result = repdiff(&args);
    assert!(result.status.success(), "{}", text(&result));
}

#[test]
fn classify_sweeps_timesteps_on_validation_and_reports_test_at_the_chosen_one() {
    let dir = tempdir("classify");
    image_folder(&dir.join("images"));
    let config = tiny_config(&dir);
    let images = dir.join("images");
    let run = dir.join("run");
    train_images(&config, &images, "class", "4", &run);
    let report = dir.join("report.json");
    let ckpt = run.join("checkpoint.safetensors");
    let out = repdiff(&[
        "classify",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--validation",
        images.to_str().unwrap(),
        "--test",
        images.to_str().unwrap(),
        "--timesteps",
        "100,500",
        "--draws",
        "4",
        "--sequential",
        "--min-draws",
        "2",
        "--agreement",
        "--out",
        report.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("| t | accuracy | precision | recall | F1 |"), "{}", text(&out));
    assert!(text(&out).contains("| metric | value | 95% interval (1000 bootstrap resamples) |"), "{}", text(&out));
    assert!(text(&out).contains("Sequential stopping against 4 draws: the same decision on"), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let chosen = report["chosen_t"].as_u64().unwrap();
    assert!([100, 500].contains(&chosen));
    assert_eq!(report["validation"].as_array().unwrap().len(), 2);
    assert_eq!(report["test"]["t"].as_u64(), Some(chosen));
    let confusion = &report["test"]["metrics"]["confusion"];
    let counted: u64 =
        confusion.as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap()).map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(counted, 8, "every test image classified once");
    let draws: Vec<u64> = report["test"]["draws"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
    assert!(draws.len() == 8 && draws.iter().all(|d| [2, 4].contains(d)), "draws stop at a look: {draws:?}");
    let forwards = report["test"]["forwards_per_image"].as_f64().unwrap();
    assert!((forwards - draws.iter().sum::<u64>() as f64 * 2.0 / 8.0).abs() < 1e-9);
    let low = report["test"]["intervals"]["accuracy"][0].as_f64().unwrap();
    assert!(low <= report["test"]["metrics"]["accuracy"].as_f64().unwrap());
    assert!(report["test"]["agreement"]["agreement"].as_f64().is_some());

    // An unconditional model cannot classify; a timestep past T is refused.
    let uncond = dir.join("uncond");
    train_images(&config, &images, "none", "1", &uncond);
    let out = repdiff(&[
        "classify",
        "--checkpoint",
        uncond.join("checkpoint.safetensors").to_str().unwrap(),
        "--validation",
        images.to_str().unwrap(),
    ]);
    assert!(!out.status.success() && text(&out).contains("not class-conditional"), "{}", text(&out));
    let out = repdiff(&[
        "classify",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--validation",
        images.to_str().unwrap(),
        "--timesteps",
        "1000",
    ]);
    assert!(!out.status.success() && text(&out).contains("outside"), "{}", text(&out));
}

#[test]
fn counterfactual_and_trajectory_write_their_figures() {
    let dir = tempdir("explain");
    image_folder(&dir.join("images"));
    let config = tiny_config(&dir);
    let images = dir.join("images");
    let run = dir.join("run");
    train_images(&config, &images, "class", "2", &run);
    let ckpt = run.join("checkpoint.safetensors");
    let cf = dir.join("cf");
    let args = ["counterfactual", "--checkpoint", ckpt.to_str().unwrap(), "--data", images.to_str().unwrap()];
    let out =
        repdiff(&[&args[..], &["-n", "3", "--t", "305", "--steps", "10", "--out", cf.to_str().unwrap()]].concat());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Noised to t = 300"), "{}", text(&out));
    assert!(text(&out).contains("| 2 | 0 |"), "scan 2 is in class folder a (0): {}", text(&out));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cf.join("counterfactuals.json")).unwrap()).unwrap();
    assert_eq!(report["mean_abs_difference"].as_array().unwrap().len(), 3);
    assert_eq!(report["rows"][2], "counterfactual_0002.png", "file names, not scratch paths");
    assert!(cf.join("counterfactual_0002.png").exists() && cf.join("counterfactuals.png").exists());
    // t must lie inside the process.
    let out = repdiff(&[&args[..], &["--t", "1000", "--out", cf.to_str().unwrap()]].concat());
    assert!(!out.status.success() && text(&out).contains("t is in 1..1000"), "{}", text(&out));

    let traj = dir.join("traj");
    let out = repdiff(&[
        "trajectory",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "-n",
        "2",
        "--sampler",
        "ddim",
        "--steps",
        "10",
        "--frames",
        "4",
        "--out",
        traj.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Frames at t = [900, 600, 300, 0]"), "{}", text(&out));
    let grid = image::open(traj.join("trajectory.png")).unwrap();
    assert_eq!((grid.width(), grid.height()), (4 * 10 + 2, 2 * 10 + 2), "a row of 4 frames per sample");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn probe_on_dinov2_features_reads_its_weights_from_the_weights_folder() {
    let dir = tempdir("probe-dino");
    image_folder(&dir.join("images"));
    let images = dir.join("images");
    let images_s = images.to_str().unwrap();
    let weights = dir.join("weights");
    let probe = |out: &Path| {
        repdiff(&[
            "probe",
            "--features",
            "dinov2",
            "--weights-dir",
            weights.to_str().unwrap(),
            "--dino-size",
            "28",
            "--train",
            images_s,
            "--validation",
            images_s,
            "--test",
            images_s,
            "--out",
            out.to_str().unwrap(),
        ])
    };
    // No weights: the error names the file and the conversion script.
    let out = probe(&dir.join("x.json"));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("dinov2_vits14.safetensors") && text(&out).contains("convert_dinov2_weights.py"),
        "{}",
        text(&out)
    );
    // Stand-in weights (random, seeded) under Meta's names, with the mask token its checkpoint carries.
    repdiff_engine::dino::write_random_weights(&weights, 1).unwrap();
    let report = dir.join("probe.json");
    let out = probe(&report);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Probing DINOv2 ViT-S/14 at 28x28 (768 features)"), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["test"]["predicted"].as_array().unwrap().len(), 8);
    assert_eq!(report["features"], "DINOv2 ViT-S/14 at 28x28");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn probe_fits_on_a_representation_encoder_and_refuses_other_models() {
    let dir = tempdir("probe");
    image_folder(&dir.join("images"));
    let config = tiny_config(&dir);
    let images = dir.join("images");
    let pre = dir.join("pre");
    let out = repdiff(&[
        "pretrain",
        "--mode",
        "rep",
        "--config",
        config.to_str().unwrap(),
        "--images",
        images.to_str().unwrap(),
        "--steps",
        "2",
        "--out",
        pre.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let report = dir.join("probe.json");
    let images_s = images.to_str().unwrap();
    let probe = |checkpoint: &Path, out: &Path| {
        repdiff(&[
            "probe",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "--train",
            images_s,
            "--validation",
            images_s,
            "--test",
            images_s,
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let out = probe(&pre.join("checkpoint.safetensors"), &report);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Chosen on validation: lambda"), "{}", text(&out));
    assert!(text(&out).contains("| accuracy |"), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["test"]["predicted"].as_array().unwrap().len(), 8);
    assert!(report["lambda"].as_f64().unwrap() > 0.0);
    // A model without an encoder has nothing to probe.
    let plain = dir.join("plain");
    train_images(&config, &images, "class", "1", &plain);
    let out = probe(&plain.join("checkpoint.safetensors"), &dir.join("x.json"));
    assert!(!out.status.success() && text(&out).contains("no representation encoder"), "{}", text(&out));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The stages `[seed-0/pretrain-rep] started` ... `done` lines say ran at once, at most.
fn most_at_once(output: &str) -> usize {
    let (mut running, mut most) = (std::collections::HashSet::new(), 0);
    for line in output.lines() {
        let Some((stage, what)) = line.strip_prefix('[').and_then(|l| l.split_once("] ")) else { continue };
        if what.starts_with("started (job ") {
            running.insert(stage.to_string());
        } else if what.starts_with("done") || what.starts_with("failed") || what.starts_with("cancelled") {
            running.remove(stage);
        }
        most = most.max(running.len());
    }
    most
}

#[test]
fn reproduce_runs_the_pipeline_as_a_graph_of_jobs_in_process_and_a_rerun_finds_it_done() {
    let dir = tempdir("reproduce");
    let out = dir.join("run");
    // DINOv2's weights (stand-in random ones) in the weights folder: its probe is a stage too.
    let weights = dir.join("weights");
    repdiff_engine::dino::write_random_weights(&weights, 2).unwrap();
    let args = [
        "reproduce",
        "--phantoms",
        "96",
        "--pretrain-steps",
        "4",
        "--finetune-steps",
        "2",
        "--draws",
        "2",
        "--supervised-epochs",
        "2",
        "--eval-samples",
        "10",
        "--class-samples",
        "3",
        "--seeds",
        "2",
        "--weights-dir",
        weights.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let first = repdiff(&args);
    let output = text(&first);
    assert!(first.status.success(), "{output}");
    // Both seeds' stages, as the server plans them, two at a time on the in-process worker.
    assert!(output.contains(" stages, 2 at a time"), "{output}");
    let stages: usize = output
        .lines()
        .find_map(|l| l.split_once(": ")?.1.strip_suffix(" stages, 2 at a time")?.parse().ok())
        .expect("the pipeline's size");
    assert_eq!(stages, 40, "{output}");
    for stage in ["seed-0/pretrain-rep", "seed-1/probe-dinov2", "seed-1/class-fidelity-uncond-g3", "seed-0/evaluate"] {
        assert!(output.contains(&format!("[{stage}] started (job ")), "{stage}: {output}");
        assert!(output.contains(&format!("[{stage}] done in ")), "{stage}: {output}");
    }
    assert_eq!(most_at_once(&output), 2, "{output}");
    // The stages' own log lines, tagged with the stage.
    assert!(output.contains("[seed-0/finetune-uncond] "), "{output}");
    assert!(output.contains(&format!("progress: {stages}/{stages} stages done")), "{output}");
    assert!(!output.contains("DINOv2 probe is left out"), "{output}");

    let table = std::fs::read_to_string(out.join("table6.md")).unwrap();
    let report: repdiff_api::ReproduceReport =
        serde_json::from_str(&std::fs::read_to_string(out.join("table6.json")).unwrap()).unwrap();
    assert_eq!(report.markdown, table);
    assert!(table.starts_with("# Table 6 analogue over 2 seeds (0, 1)"), "{table}");
    assert!(table.contains("\n# Seed 0 in full\n\n## Table 6 analogue"), "{table}");
    for method in [
        "unconditional pre-training",
        "representation-conditional pre-training",
        "Linear probe",
        "Linear probe on DINOv2 ViT-S/14 features",
        "ViT (tiny) trained from scratch",
        "ResNet (resnet-tiny) trained from scratch",
    ] {
        assert!(table.contains(method), "{method}: {table}");
    }
    assert_eq!((report.preset.as_str(), report.seed, report.table6.len()), ("tiny-cpu", 0, 6));
    assert!(report.table6[0].chosen_t.is_some() && table.contains("| 500 |"), "the sweep lists every t: {table}");
    assert!(report.table6[3].intervals.as_ref().is_some(), "{table}");
    // Class fidelity: each fine-tuned model's 3 + 3 DDPM samples, without and with guidance, sorted by the
    // other model's classifier at the timestep it chose; each stage's result is written beside the report.
    assert!(table.contains("(DDPM 100, classifier-free guidance 1"), "{table}");
    let uncond: repdiff_api::ClassifyReport =
        serde_json::from_str(&std::fs::read_to_string(out.join("seed-0/classify-uncond.json")).unwrap()).unwrap();
    assert_eq!(report.class_fidelity.len(), 4);
    assert_eq!(report.class_fidelity[0].t, uncond.chosen_t, "{:?}", report.class_fidelity);
    for row in &report.class_fidelity {
        assert_eq!(row.samples_confusion.iter().map(|r| r.iter().sum::<usize>()).collect::<Vec<_>>(), [3, 3]);
    }
    // Table 5: both pre-trained models' generation metrics, in the random extractor's names (no weights).
    assert!(table.contains("## Table 5 analogue") && table.contains("| FD | sFD |"), "{table}");
    let table5 = report.table5.clone().unwrap();
    assert!(table5.len() == 2 && table5.iter().all(|r| r.generated == 10 && r.fid > 0.0), "{table5:?}");
    assert!(out.join("counterfactuals.png").exists());
    // Over the seeds: both seeds' numbers, their spread and the paired difference of the two classifiers.
    let across = report.across_seeds.clone().expect("a report over the seeds");
    assert_eq!((across.seeds.as_slice(), across.table6.len()), (&[0, 1][..], 6));
    let seed1 = |name: &str| -> repdiff_api::ClassifyReport {
        serde_json::from_str(&std::fs::read_to_string(out.join(format!("seed-1/{name}.json"))).unwrap()).unwrap()
    };
    let accuracy = |r: &repdiff_api::ClassifyReport| r.test.as_ref().unwrap().metrics.accuracy;
    let rep = &across.table6[1];
    assert_eq!(rep.accuracy.values, [report.table6[1].metrics.accuracy, accuracy(&seed1("classify-rep"))]);
    let (a, b) = (rep.accuracy.values[0], rep.accuracy.values[1]);
    assert!((rep.accuracy.mean - (a + b) / 2.0).abs() < 1e-12);
    assert!((rep.accuracy.sd - (a - b).abs() / 2f64.sqrt()).abs() < 1e-12, "sample sd: {rep:?}");
    let d = &across.classifier_difference;
    let expected = [
        report.table6[1].metrics.accuracy - report.table6[0].metrics.accuracy,
        accuracy(&seed1("classify-rep")) - accuracy(&seed1("classify-uncond")),
    ];
    assert_eq!(d.difference.values, expected);
    assert_eq!(across.table5.len(), 2);

    // The same parameters again, as flags or as the job's JSON: the pipeline is found done, nothing runs,
    // and the report is the same.
    let json_report = std::fs::read_to_string(out.join("table6.json")).unwrap();
    let again = repdiff(&args);
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("submitted before with these parameters: 40 stages"), "{}", text(&again));
    assert!(!text(&again).contains("] started (job "), "{}", text(&again));
    assert_eq!(std::fs::read_to_string(out.join("table6.json")).unwrap(), json_report);
    let spec = dir.join("spec.json");
    let params = serde_json::json!({ "phantoms": 96, "pretrain_steps": 4, "finetune_steps": 2, "draws": 2,
        "supervised_epochs": 2, "eval_samples": 10, "class_samples": 3, "seeds": 2 });
    std::fs::write(&spec, params.to_string()).unwrap();
    let (spec, weights, out) = (spec.to_str().unwrap(), weights.to_str().unwrap(), out.to_str().unwrap());
    let from_spec = repdiff(&["reproduce", "--spec", spec, "--weights-dir", weights, "--out", out]);
    assert!(text(&from_spec).contains("submitted before with these parameters"), "{}", text(&from_spec));
    // A spec and the flags it holds are one or the other.
    let both = repdiff(&["reproduce", "--spec", spec, "--draws", "3", "--out", out]);
    assert!(!both.status.success() && text(&both).contains("cannot be used with"), "{}", text(&both));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn reproduce_imports_a_dataset_folder_once_and_runs_the_pipeline_on_it() {
    let dir = tempdir("reproduce-data");
    let (data, out) = (dir.join("data"), dir.join("run"));
    let made = repdiff(&["phantoms", "--out", data.to_str().unwrap(), "-n", "60", "--downstream", "150"]);
    assert!(made.status.success(), "{}", text(&made));
    let args = [
        "reproduce",
        "--data",
        data.to_str().unwrap(),
        "--pretrain-steps",
        "2",
        "--finetune-steps",
        "2",
        "--draws",
        "2",
        "--supervised-epochs",
        "1",
        "--eval-samples",
        "0",
        "--class-samples",
        "0",
        "--out",
        out.to_str().unwrap(),
    ];
    let first = repdiff(&args);
    assert!(first.status.success(), "{}", text(&first));
    assert!(text(&first).contains("Imported 210 slices of 210 files"), "{}", text(&first));
    assert!(text(&first).contains(": 10 stages, 2 at a time"), "{}", text(&first));
    let report: repdiff_api::ReproduceReport =
        serde_json::from_str(&std::fs::read_to_string(out.join("table6.json")).unwrap()).unwrap();
    assert_eq!(report.table6.len(), 5);
    assert!(report.markdown.contains("slices of site 1)"), "{}", report.markdown);
    // Stored de-identified: no file name of the folder is in the store.
    let mut stored = Vec::new();
    walk(&out.join("artifacts"), &mut stored);
    let stored: Vec<String> = stored.iter().map(|p| p.display().to_string()).collect();
    assert!(!stored.is_empty() && stored.iter().all(|p| !p.contains("slice_0")), "{stored:?}");
    // Again: the folder is not imported twice, and the pipeline is found done.
    let again = repdiff(&args);
    assert!(again.status.success(), "{}", text(&again));
    assert!(!text(&again).contains("Importing"), "{}", text(&again));
    assert!(text(&again).contains("submitted before with these parameters"), "{}", text(&again));
    // A folder without a manifest is refused before anything runs.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let refused = repdiff(&["reproduce", "--data", empty.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(!refused.status.success() && text(&refused).contains("has no manifest.csv"), "{}", text(&refused));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A process group that is killed when the test is done with it, passed or not.
struct Group(std::process::Child);

impl Group {
    /// SIGINT to the group, as a terminal's Ctrl-C; then its exit status.
    fn interrupt(&mut self) -> Option<i32> {
        let kill = Command::new("kill").args(["-INT", "--", &format!("-{}", self.0.id())]).status().unwrap();
        assert!(kill.success());
        self.0.wait().unwrap().code()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let mut kill = Command::new("kill");
        kill.args(["-KILL", "--", &format!("-{}", self.0.id())]).stderr(std::process::Stdio::null());
        let _ = kill.status();
        let _ = self.0.wait();
    }
}

/// `repdiff reproduce` in its own process group (as a terminal's Ctrl-C reaches it), its output lines as
/// they come.
fn spawn_reproduce(args: &[&str]) -> (Group, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(env!("CARGO_BIN_EXE_repdiff"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .process_group(0)
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (Group(child), rx)
}

/// Lines of `rx` until one of them passes `until` (panics after a minute); returns them all.
fn read_until(rx: &std::sync::mpsc::Receiver<String>, mut until: impl FnMut(&[String]) -> bool) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut lines = Vec::new();
    while !until(&lines) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => panic!("not within a minute: {lines:#?}"),
        }
    }
    lines
}

#[test]
fn ctrl_c_stops_reproduce_with_its_running_stages_saved_and_a_rerun_goes_on_from_their_checkpoints() {
    let dir = tempdir("reproduce-sigint");
    let out = dir.join("run");
    let args = ["reproduce", "--phantoms", "96", "--pretrain-steps", "100000", "--out", out.to_str().unwrap()];
    // Interrupted once both pre-trainings report steps.
    let (mut child, rx) = spawn_reproduce(&args);
    let training = |lines: &[String], mode: &str| {
        let prefix = format!("[seed-0/pretrain-{mode}] ");
        lines.iter().any(|l| l.strip_prefix(&prefix).is_some_and(|rest| rest.contains("/100000 ")))
    };
    let mut lines = read_until(&rx, |l| training(l, "rep") && training(l, "uncond"));
    assert_eq!(child.interrupt(), Some(130), "{lines:#?}");
    lines.extend(rx.iter());
    let printed = lines.join("\n");
    assert!(printed.contains("interrupted: running stages stop at their next step"), "{printed}");
    for mode in ["rep", "uncond"] {
        let stage = format!("[seed-0/pretrain-{mode}]");
        assert!(printed.contains(&format!("{stage} stopped at step ")), "{printed}");
        assert!(printed.contains(&format!("{stage} back in the queue")), "{printed}");
    }
    assert!(!printed.contains("[seed-0/finetune-"), "nothing starts after the interrupt: {printed}");
    // Again: the pipeline is found, and each pre-training goes on from the checkpoint it saved.
    let (mut child, rx) = spawn_reproduce(&args);
    let resumed = |lines: &[String], mode: &str| {
        let prefix = format!("[seed-0/pretrain-{mode}] resumed from the checkpoint at step ");
        lines.iter().any(|l| l.strip_prefix(&prefix).and_then(|s| s.parse::<u64>().ok()).is_some_and(|s| s > 0))
    };
    let lines = read_until(&rx, |l| resumed(l, "rep") && resumed(l, "uncond"));
    assert_eq!(child.interrupt(), Some(130), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("submitted before with these parameters")), "{lines:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn evaluate_reports_metrics_named_for_their_extractor_and_caches_the_real_features() {
    let dir = tempdir("evaluate");
    image_folder(&dir.join("real"));
    image_folder(&dir.join("generated"));
    let (real, generated, out, cache) = (dir.join("real"), dir.join("generated"), dir.join("eval"), dir.join("cache"));
    // The same images on both sides, with `extra` options.
    let run = |extra: &[&str]| {
        let paths = [&real, &generated, &cache, &dir, &out].map(|p| p.to_str().unwrap());
        let mut args = vec!["evaluate", "--real", paths[0], "--generated", paths[1], "--cache-dir", paths[2]];
        args.extend(["--weights-dir", paths[3], "--out", paths[4]]);
        args.extend(extra);
        repdiff(&args)
    };
    // The written samples of a checkpoint, measured as a folder.
    let run_with = |generated: &Path| {
        let paths = [&real, generated, &cache, &dir, &out].map(|p| p.to_str().unwrap());
        repdiff(&[
            "evaluate",
            "--real",
            paths[0],
            "--generated",
            paths[1],
            "--cache-dir",
            paths[2],
            "--weights-dir",
            paths[3],
            "--out",
            paths[4],
            "--histogram",
            "0",
        ])
    };
    let first = run(&["--histogram", "8"]);
    assert!(first.status.success(), "{}", text(&first));
    // No pretrained weights in --weights-dir: the random extractor, never called FID.
    assert!(text(&first).contains("FD (random-inception-v3-seed0)"), "{}", text(&first));
    let header = text(&first).lines().find(|l| l.starts_with("set ")).unwrap_or_default().to_string();
    assert!(header.contains("FD (random") && !header.contains("FID"), "{header}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    let result = &report["results"][0];
    assert_eq!((result["real"].as_u64(), result["generated"].as_u64()), (Some(8), Some(8)));
    // The same images on both sides: distance ~0, every image inside the other manifold.
    assert!(result["fid"].as_f64().unwrap().abs() < 1e-3, "{result}");
    assert_eq!(result["precision"], 1.0);
    assert_eq!(report["histogram"]["sets"].as_array().unwrap().len(), 2);
    let second = run(&["--histogram", "8"]);
    assert!(text(&second).contains("features from the cache"), "{}", text(&second));
    let few = run(&["--max-real", "6", "--histogram", "0"]);
    assert!(few.status.success(), "{}", text(&few));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(report["results"][0]["real"], 6, "--max-real keeps 6 of the 8 real images");
    assert!(report["histogram"].is_null());
    let none = repdiff(&["evaluate", "--real", real.to_str().unwrap()]);
    assert!(!none.status.success() && text(&none).contains("nothing to evaluate"), "{}", text(&none));

    // A checkpoint's 34 samples are written and measured 32 at a time: the same numbers as measuring the
    // PNGs it wrote, and every sample on disk.
    let config = tiny_config(&dir);
    train_images(&config, &real, "none", "1", &dir.join("model"));
    let checkpoint = dir.join("model/checkpoint.safetensors");
    let sampled = repdiff(&[
        "evaluate",
        "--real",
        real.to_str().unwrap(),
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "-n",
        "34",
        "--steps",
        "2",
        "--histogram",
        "0",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--weights-dir",
        dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(sampled.status.success(), "{}", text(&sampled));
    let from_samples: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    let written = out.join("samples-0");
    let pngs = std::fs::read_dir(&written)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("sample_"))
        .count();
    assert_eq!(pngs, 34);
    let reread = run_with(&written);
    assert!(reread.status.success(), "{}", text(&reread));
    let from_pngs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    for key in ["fid", "sfid", "precision", "recall", "density", "coverage"] {
        let (a, b) =
            (from_samples["results"][0][key].as_f64().unwrap(), from_pngs["results"][0][key].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{key}: {a} measured while writing, {b} from the PNGs");
    }
}
