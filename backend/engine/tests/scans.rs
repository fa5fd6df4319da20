//! Scan readers and de-identification against fixtures written by pydicom/gdcm/nibabel
//! (`tests/fixtures/scans/gen_scan_fixtures.py`), whose reference values those libraries computed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use repdiff_engine::imaging::deid::{DeidKey, deidentify};
use repdiff_engine::imaging::dicom::{self, CtHeader};
use repdiff_engine::imaging::{self, Slice, Unit};
use repdiff_engine::{Device, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scans").join(name)
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("reference.safetensors"), &Device::Cpu).unwrap()
}

fn assert_slices_match(name: &str, slices: &[Slice], expected: &Tensor) {
    let (count, rows, columns) = expected.dims3().unwrap();
    assert_eq!(slices.len(), count, "{name}: slice count");
    let expected = expected.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (k, slice) in slices.iter().enumerate() {
        assert_eq!((slice.rows, slice.columns), (rows, columns), "{name}: slice {k} shape");
        assert_eq!(slice.unit, Unit::Hounsfield);
        for (i, (&got, &want)) in slice.values.iter().zip(&expected[k * rows * columns..]).enumerate() {
            let tolerance = 1e-5 * want.abs().max(1.0);
            assert!((got - want).abs() <= tolerance, "{name}: slice {k} value {i}: {got} vs reference {want}");
        }
    }
}

#[test]
fn dicom_hounsfield_units_match_pydicom_in_every_transfer_syntax() {
    let reference = reference();
    for name in [
        "ct_explicit_signed.dcm",
        "ct_implicit_u12_intercept.dcm",
        "ct_slope_half.dcm",
        "ct_deflate.dcm",
        "ct_rle.dcm",
        "ct_jpeg_lossless.dcm",
        "ct_jpeg2000_lossless.dcm",
        "ct_multiframe.dcm",
    ] {
        let slices = imaging::read_slices(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_slices_match(name, &slices, &reference[name]);
        assert_eq!(slices[0].spacing_mm, Some((0.488_281_25, 0.5)), "{name}: pixel spacing");
    }
}

/// Lossy baseline JPEG (8-bit samples, rescaled to HU): decoders may round the inverse DCT differently, so
/// each value may differ from pydicom's (libjpeg) by one stored step (RescaleSlope, 8 HU) and no more.
#[test]
fn lossy_baseline_jpeg_ct_matches_pydicom_within_one_stored_step() {
    let name = "ct_jpeg_baseline.dcm";
    let reference: HashMap<String, Tensor> =
        candle_core::safetensors::load(fixture("ct_jpeg_baseline.safetensors"), &Device::Cpu).unwrap();
    let expected = reference[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let slices = imaging::read_slices(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!((slices.len(), slices[0].rows, slices[0].columns), (1, 48, 64));
    let mut off_by_a_step = 0;
    for (i, (&got, &want)) in slices[0].values.iter().zip(&expected).enumerate() {
        assert!((got - want).abs() <= 8.0, "value {i}: {got} HU vs pydicom's {want}");
        off_by_a_step += usize::from(got != want);
    }
    assert!(off_by_a_step * 20 < expected.len(), "{off_by_a_step} of {} values differ by a step", expected.len());
}

#[test]
fn unreadable_dicom_files_are_refused_with_the_reason() {
    let cases = [
        ("mr_not_ct.dcm", "not a CT: Modality is MR"),
        ("ct_jpegls.dcm", "unsupported transfer syntax JPEG-LS Lossless"),
        ("not_dicom.dcm", "not a readable DICOM file"),
        ("ct_truncated.dcm", "not a readable DICOM file"),
    ];
    for (name, reason) in cases {
        let error = imaging::read_slices(&fixture(name)).expect_err(name).to_string();
        assert!(error.contains(reason), "{name}: {error:?} should say {reason:?}");
        assert!(error.contains(name), "{name}: the error names the file: {error}");
    }
    // A large file that is no DICOM at all is refused from its first bytes (it was read whole first: a
    // 600 MB upload took 600 MB of memory).
    let big = std::env::temp_dir().join(format!("repdiff-not-dicom-{}.dcm", std::process::id()));
    let file = std::fs::File::create(&big).unwrap();
    file.set_len(1 << 40).unwrap(); // a sparse terabyte: reading it whole would fail or take hours
    let error = imaging::read_slices(&big).expect_err("a terabyte of zeros").to_string();
    std::fs::remove_file(&big).unwrap();
    assert!(error.contains("no DICM marker"), "{error}");
}

#[test]
fn nifti_volumes_give_axial_slices_in_display_orientation_as_nibabel() {
    let reference = reference();
    for name in ["vol_ras.nii.gz", "vol_permuted.nii"] {
        let slices = imaging::read_slices(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_slices_match(name, &slices, &reference[name]);
    }
    // Spacing follows the axes: vol_ras has 0.5 mm columns (R) and 0.6 mm rows (A).
    let ras = imaging::read_slices(&fixture("vol_ras.nii.gz")).unwrap();
    assert_eq!(ras[0].spacing_mm, Some((0.6, 0.5)));
    let error = imaging::read_slices(&fixture("vol_truncated.nii")).unwrap_err().to_string();
    assert!(error.contains("vol_truncated.nii") && error.contains("more than the file can hold"), "{error}");
}

/// Every string of identifying data the fixtures carry, and the original UID root.
const IDENTIFYING: &[&str] = &[
    "Doe",
    "Jane",
    "MRN-99812",
    "19580214",
    "066Y",
    "Elm Street",
    "SSN-123",
    "20240311",
    "081512",
    "ACC778812",
    "ST-5521",
    "Springfield",
    "CT-ROOM-2",
    "House",
    "Wilson",
    "Tech^Amy",
    "Cuddy",
    "SN-0042",
    "private vendor note",
    "ACME 1.1",
    "1.2.826.0.1.3680043.8.498",
];

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn deidentified(name: &str, key: &DeidKey, out: &Path) -> PathBuf {
    let mut obj = dicom::open(&fixture(name)).unwrap();
    deidentify(&mut obj, key).unwrap();
    let path = out.join(name);
    obj.write_to_file(&path).unwrap();
    path
}

#[test]
fn deidentification_leaves_no_identifying_data_and_keeps_series_together() {
    let out = std::env::temp_dir().join(format!("repdiff-deid-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let original = std::fs::read(fixture("identified_1.dcm")).unwrap();
    for needle in IDENTIFYING {
        assert!(contains(&original, needle), "the fixture should carry {needle:?}");
    }

    let key = DeidKey::from_bytes([7; 32]);
    let first = deidentified("identified_1.dcm", &key, &out);
    let second = deidentified("identified_2.dcm", &key, &out);
    for path in [&first, &second] {
        let bytes = std::fs::read(path).unwrap();
        for needle in IDENTIFYING {
            assert!(!contains(&bytes, needle), "{needle:?} survived de-identification of {}", path.display());
        }
        assert!(contains(&bytes, "ANON-"), "the patient gets a pseudonym");
    }

    let (slices_1, id_1) = dicom::read(&first).unwrap();
    let (_, id_2) = dicom::read(&second).unwrap();
    // One series stays one series, under new UIDs; its instances stay distinct.
    assert_eq!((&id_1.study_uid, &id_1.series_uid), (&id_2.study_uid, &id_2.series_uid));
    assert_eq!(id_1.series_uid, key.pseudonym_uid("1.2.826.0.1.3680043.8.498.200"));
    assert!(id_1.series_uid.starts_with("2.25.") && id_1.series_uid.len() <= 64);
    assert_ne!(id_1.instance_uid, id_2.instance_uid);
    // Pixels are untouched.
    let (original_slices, _) = dicom::read(&fixture("identified_1.dcm")).unwrap();
    assert_eq!(slices_1, original_slices);

    let obj = dicom::open(&first).unwrap();
    let text = |tag| obj.element(tag).unwrap().to_str().unwrap().trim().to_string();
    use dicom_dictionary_std::tags;
    assert_eq!(text(tags::PATIENT_IDENTITY_REMOVED), "YES");
    assert_eq!(text(tags::PATIENT_NAME), text(tags::PATIENT_ID));
    assert_eq!(text(tags::SOP_CLASS_UID), "1.2.840.10008.5.1.4.1.1.2", "standard UIDs are kept");
    assert_eq!(text(tags::STUDY_DATE), "", "type 2 dates stay, empty");
    assert!(obj.element(tags::INSTITUTION_NAME).is_err() && obj.element(tags::SERIES_DATE).is_err());
    assert_eq!(text(tags::CONVOLUTION_KERNEL), "H30s", "acquisition parameters are kept");
    assert_eq!(obj.meta().media_storage_sop_instance_uid.trim_end_matches('\0'), id_1.instance_uid);
    // A reference inside a sequence maps to the same pseudonym as the instance it points to.
    let reference = obj.element(tags::REFERENCED_IMAGE_SEQUENCE).unwrap().items().unwrap()[0]
        .element(tags::REFERENCED_SOP_INSTANCE_UID)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches('\0')
        .to_string();
    assert_eq!(reference, id_1.instance_uid);

    // Another installation's key gives unlinkable pseudonyms.
    let elsewhere = out.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let other = deidentified("identified_2.dcm", &DeidKey::from_bytes([8; 32]), &elsewhere);
    assert_ne!(dicom::read(&other).unwrap().1.series_uid, id_1.series_uid);
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn ct_files_and_16_bit_pngs_round_trip_hounsfield_units() {
    let out = std::env::temp_dir().join(format!("repdiff-roundtrip-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let values: Vec<f32> = (0..6 * 5).map(|i| -1024.0 + 97.0 * i as f32).collect();
    let slice = Slice { rows: 6, columns: 5, values, unit: Unit::Hounsfield, spacing_mm: Some((0.7, 0.7)) };

    let dcm = out.join("slice.dcm");
    let header = CtHeader {
        patient_name: "PHANTOM^01",
        patient_id: "PHANTOM-01",
        institution: "Site 1",
        study_uid: "2.25.1",
        series_uid: "2.25.2",
        instance_uid: "2.25.3",
        instance_number: 1,
        position_mm: -42.5,
        study_date: "20260101",
        description: "phantom",
    };
    dicom::write_ct(&dcm, &slice, &header).unwrap();
    let (back, identity) = dicom::read(&dcm).unwrap();
    assert_eq!(back, vec![slice.clone()]);
    assert_eq!((identity.series_uid.as_str(), identity.instance_number), ("2.25.2", Some(1)));
    assert_eq!((identity.patient_id.as_str(), identity.position_mm), ("PHANTOM-01", Some(-42.5)));

    let png = out.join("slice.png");
    imaging::write_hu_png(&slice, &png).unwrap();
    let back = imaging::read_image_slice(&png, imaging::PNG16_HU_OFFSET).unwrap();
    assert_eq!(back.values, slice.values);
    assert_eq!(back.unit, Unit::Hounsfield);
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn an_import_keeps_patients_studies_and_series_as_pseudonyms_only() {
    use repdiff_engine::dataset::{Labels, import};
    use repdiff_engine::manifest::{Manifest, Part, SplitUnit};
    let dir = std::env::temp_dir().join(format!("repdiff-origin-{}", std::process::id()));
    let (inputs, out) = (dir.join("in"), dir.join("out"));
    std::fs::create_dir_all(&inputs).unwrap();
    for name in ["identified_1.dcm", "identified_2.dcm", "vol_ras.nii.gz"] {
        std::fs::copy(fixture(name), inputs.join(name)).unwrap();
    }
    for name in ["a.png", "b.png"] {
        image::GrayImage::from_pixel(8, 8, image::Luma([90])).save(inputs.join(name)).unwrap();
    }
    // The PNGs name their patient and series in the labels file, as a clinical export would (an MRN).
    let labels = "file,site,hypodensity,margin_irregularity,blend_sign,fluid_level,patient,series,instance\n\
                  identified_1.dcm,1,0,0,0,0,,,\nidentified_2.dcm,1,1,0,0,0,,,\nvol_ras.nii.gz,2,0,0,0,0,,,\n\
                  a.png,1,0,0,0,0,MRN-0042,CT HEAD 2026-03-01,1\nb.png,1,0,1,0,0,MRN-0042,CT HEAD 2026-03-01,2\n";
    let key = DeidKey::from_bytes([7; 32]);
    let labels = Labels::from_manifest(Manifest::from_reader(labels.as_bytes()).unwrap());
    let report = import(std::slice::from_ref(&inputs), &labels, &key, &out).unwrap();
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    let manifest = Manifest::read_csv(&out.join("manifest.csv")).unwrap();
    let by_series =
        |series: &str| manifest.records.iter().filter(|r| r.origin.series.as_deref() == Some(series)).count();

    // The DICOM pair: one patient (its PatientID's pseudonym), one study, one series under pseudonymous UIDs.
    let series = key.pseudonym_uid("1.2.826.0.1.3680043.8.498.200");
    assert_eq!(by_series(&series), 2, "{manifest:?}");
    let pair: Vec<_> =
        manifest.records.iter().filter(|r| r.origin.series.as_deref() == Some(series.as_str())).collect();
    assert!(pair[0].origin.patient.as_deref().is_some_and(|p| p.starts_with("ANON-")), "{:?}", pair[0].origin);
    assert_eq!((&pair[0].origin.patient, &pair[0].origin.study), (&pair[1].origin.patient, &pair[1].origin.study));

    // The volume: one series of its own, its slices numbered in order, no patient.
    let volume: Vec<_> = manifest.records.iter().filter(|r| r.site == 2).collect();
    assert!(volume.len() > 1);
    assert!(volume.iter().all(|r| r.origin.series == volume[0].origin.series && r.origin.patient.is_none()));
    assert!(volume[0].origin.series.as_deref().is_some_and(|s| s.starts_with("2.25.")));
    let instances: Vec<i64> = volume.iter().map(|r| r.origin.instance.unwrap()).collect();
    assert_eq!(instances, (1..=volume.len() as i64).collect::<Vec<_>>());

    // The PNGs: the labels file's ids as keyed pseudonyms (the same key maps a DICOM's PatientID alike).
    let pngs: Vec<_> = manifest
        .records
        .iter()
        .filter(|r| r.origin.instance.is_some() && r.site == 1 && r.origin.study.is_none())
        .collect();
    assert_eq!(pngs.len(), 2, "{manifest:?}");
    for (k, r) in pngs.iter().enumerate() {
        assert_eq!(r.origin.patient, Some(key.pseudonym_patient("MRN-0042")));
        assert_eq!(r.origin.series, Some(key.pseudonym_uid("CT HEAD 2026-03-01")));
        assert_eq!(r.origin.instance, Some(k as i64 + 1));
    }
    // Nothing identifying is stored: not the DICOMs' PHI, not the labels file's MRN or series name.
    for entry in walk(&out) {
        let bytes = std::fs::read(&entry).unwrap();
        for needle in IDENTIFYING.iter().chain(&["MRN-0042", "CT HEAD"]) {
            assert!(!contains(&bytes, needle), "{needle:?} stored in {}", entry.display());
        }
    }
    // A patient split keeps each patient's slices together.
    let parts = manifest.split(SplitUnit::Patient, Some(1), [0.5, 0.0, 0.5], 1).unwrap();
    assert_eq!(manifest.patients_in_two_parts(&parts), 0);
    assert!(parts.iter().zip(&manifest.records).all(|(p, r)| (r.site == 1) == (*p != Part::Pretrain)));
    std::fs::remove_dir_all(&dir).ok();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}
