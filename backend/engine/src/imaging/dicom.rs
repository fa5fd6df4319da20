//! DICOM CT slices in and out (dicom-rs). Reading turns stored pixel values into Hounsfield units through
//! the modality LUT (RescaleSlope/RescaleIntercept) for every transfer syntax the pure-Rust codecs decode:
//! native (implicit/explicit VR little endian), deflate, RLE, JPEG baseline/extended/lossless and JPEG 2000.
//! Anything else (not a CT, no pixel data, a codec we lack, truncated data) is an error that says which.

use std::path::Path;

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{DefaultDicomObject, FileMetaTableBuilder, InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::{ConvertOptions, PixelDecoder};
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};

use super::{Slice, Unit};
use crate::{Error, Result};

/// RepDiff's implementation class UID (under the UUID-derived root 2.25) written into every file it stores.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.302208937174530180945512040271883127614";
pub const IMPLEMENTATION_VERSION: &str = "REPDIFF_0_1";

/// Identity of a slice inside its study: what a stored file is named after and how slices are ordered.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SliceIdentity {
    pub study_uid: String,
    pub series_uid: String,
    pub instance_uid: String,
    pub instance_number: Option<i64>,
    /// PatientID (a pseudonym once de-identified); empty when the file has none.
    pub patient_id: String,
    /// Where the slice lies along the patient's axis, mm: ImagePositionPatient's z, else SliceLocation.
    pub position_mm: Option<f64>,
}

/// True when `bytes` start like a DICOM Part 10 file (128-byte preamble, then `DICM`).
pub fn looks_like_dicom(bytes: &[u8]) -> bool {
    bytes.len() >= 132 && &bytes[128..132] == b"DICM"
}

fn scan_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Scan { path: path.into(), reason: reason.into() }
}

/// The error and its causes on one line: dicom-rs nests the useful part ("unexpected end of file").
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Whether `head` (a file's first bytes) can start a DICOM data set without a preamble: its first tag is
/// of the file meta group (0002), a directory's (0004) or the identifying group (0008), little endian.
fn bare_data_set_start(head: &[u8]) -> bool {
    head.len() >= 8 && matches!(u16::from_le_bytes([head[0], head[1]]), 0x0002 | 0x0004 | 0x0008)
}

pub fn open(path: &Path) -> Result<DefaultDicomObject> {
    // The head first: a large file that is no DICOM at all is refused before it is read into memory (a
    // 600 MB upload of anything else took 600 MB).
    let mut head = Vec::with_capacity(132);
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    std::io::Read::read_to_end(&mut std::io::Read::take(file, 132), &mut head).map_err(|e| Error::io(path, e))?;
    if !looks_like_dicom(&head) && !bare_data_set_start(&head) {
        return Err(scan_error(path, "not a readable DICOM file: no DICM marker and no data element at its start"));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    open_bytes(&bytes, path)
}

/// A DICOM file held in memory (an upload, so that its identifying data never reach a disk before they
/// are removed); `path` names it in errors.
pub fn open_bytes(bytes: &[u8], path: &Path) -> Result<DefaultDicomObject> {
    if !looks_like_dicom(bytes) && !bare_data_set_start(bytes) {
        return Err(scan_error(path, "not a readable DICOM file: no DICM marker and no data element at its start"));
    }
    check_element_lengths(bytes).map_err(|reason| scan_error(path, format!("not a readable DICOM file: {reason}")))?;
    // Parse the bytes already read (after the preamble) rather than reading the file again.
    let parsed = if looks_like_dicom(bytes) {
        OpenFileOptions::new().from_reader(&bytes[128..])
    } else {
        OpenFileOptions::new().from_reader(bytes)
    };
    parsed.map_err(|e| scan_error(path, format!("not a readable DICOM file: {}", chain(&e))))
}

const UNDEFINED_LENGTH: u32 = 0xFFFF_FFFF;
/// Every VR of PS3.5, two letters each.
const VALUE_REPRESENTATIONS: &[u8] = b"AEASATCSDADSDTFDFLISLOLTOBODOFOLOVOWPNSHSLSQSSSTSVTMUCUIULUNURUSUTUV";
const IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";
const EXPLICIT_VR_BIG_ENDIAN: &str = "1.2.840.10008.1.2.2";
const DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1.99";

/// Walks the elements of a Part 10 file and refuses one that claims more bytes than the file has left.
///
/// dicom-rs reserves and zero-fills an element's declared length before reading it, so a corrupt
/// kilobyte-sized file can make it touch gigabytes (found by fuzzing). The walk knows only lengths, VRs
/// and nesting (a deflated data set is inflated first); what it does not follow (big endian, an implicit
/// sequence inside explicit VR, a broken deflate stream) it leaves to
/// dicom-rs, which then fails on its own terms.
fn check_element_lengths(bytes: &[u8]) -> std::result::Result<(), String> {
    walk_lengths(bytes, if looks_like_dicom(bytes) { 132 } else { 0 }, true)
}

/// The walk of [`check_element_lengths`] from `pos`; `in_meta` while in the file meta group.
fn walk_lengths(bytes: &[u8], mut pos: usize, mut in_meta: bool) -> std::result::Result<(), String> {
    let u16_at = |p: usize| bytes.get(p..p + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |p: usize| bytes.get(p..p + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let mut explicit = true; // the file meta group is always explicit VR little endian
    let mut in_fragments = false;
    let mut transfer_syntax = String::new();
    while let (Some(group), Some(element)) = (u16_at(pos), u16_at(pos + 2)) {
        if in_meta && group != 0x0002 {
            in_meta = false;
            let syntax = transfer_syntax.trim_end_matches(['\0', ' ']);
            if syntax == EXPLICIT_VR_BIG_ENDIAN {
                return Ok(()); // retired and rare: not walked here
            }
            if syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN {
                // The data set is a raw deflate stream of explicit VR little endian; deflate expands
                // at most ~1032:1, so inflating it to check it is bounded by the file's size.
                let mut inflated = Vec::new();
                let mut decoder = flate2::read::DeflateDecoder::new(&bytes[pos..]);
                if std::io::Read::read_to_end(&mut decoder, &mut inflated).is_err() {
                    return Ok(()); // a broken stream: dicom-rs reports it
                }
                return walk_lengths(&inflated, 0, false);
            }
            explicit = syntax != IMPLICIT_VR_LITTLE_ENDIAN;
        }
        let tag_end = pos + 4;
        if group == 0xFFFE {
            // Item and delimiters: a 4-byte length and no VR, whatever the syntax.
            let Some(length) = u32_at(tag_end) else { return Ok(()) };
            pos = tag_end + 4;
            if element == 0xE0DD {
                in_fragments = false;
            } else if element == 0xE000 && in_fragments && length != UNDEFINED_LENGTH {
                // A fragment of encapsulated pixel data: raw bytes.
                if length as usize > bytes.len() - pos.min(bytes.len()) {
                    return Err(format!(
                        "a pixel data fragment claims {length} bytes, the file has {} left",
                        bytes.len().saturating_sub(pos)
                    ));
                }
                pos += length as usize;
            }
            continue;
        }
        let (vr, length, value_start) = if explicit {
            let Some(vr) = bytes.get(tag_end..tag_end + 2) else { return Ok(()) };
            // dicom-rs reads bytes that are no VR as UN, with a 4-byte length; so does this walk.
            let vr: &[u8] = if VALUE_REPRESENTATIONS.chunks(2).any(|known| known == vr) { vr } else { b"UN" };
            if matches!(
                vr,
                b"OB" | b"OD" | b"OF" | b"OL" | b"OV" | b"OW" | b"SQ" | b"SV" | b"UC" | b"UN" | b"UR" | b"UT" | b"UV"
            ) {
                let Some(length) = u32_at(tag_end + 4) else { return Ok(()) };
                (Some(vr), length, tag_end + 8)
            } else {
                let Some(length) = u16_at(tag_end + 2) else { return Ok(()) };
                (Some(vr), length as u32, tag_end + 4)
            }
        } else {
            let Some(length) = u32_at(tag_end) else { return Ok(()) };
            (None, length, tag_end + 4)
        };
        pos = value_start;
        if length == UNDEFINED_LENGTH && vr == Some(b"UN") {
            return Ok(()); // an implicit VR sequence inside explicit VR: not walked here
        }
        if length == UNDEFINED_LENGTH {
            // A sequence or encapsulated pixel data: its items follow.
            in_fragments = (group, element) == (0x7FE0, 0x0010);
            continue;
        }
        if vr == Some(b"SQ") {
            continue; // a defined-length sequence: walk into its items
        }
        let left = bytes.len().saturating_sub(pos);
        if length as usize > left {
            return Err(format!("element ({group:04X},{element:04X}) claims {length} bytes, the file has {left} left"));
        }
        if in_meta && (group, element) == (0x0002, 0x0010) {
            transfer_syntax = String::from_utf8_lossy(&bytes[pos..pos + length as usize]).into_owned();
        }
        pos += length as usize;
    }
    Ok(())
}

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let value = obj.get(tag)?.to_str().ok()?;
    let value = value.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!value.is_empty()).then(|| value.to_string())
}

fn transfer_syntax_name(uid: &str) -> String {
    let uid = uid.trim_end_matches('\0');
    match TransferSyntaxRegistry.get(uid) {
        Some(ts) => format!("{} ({uid})", ts.name()),
        None => format!("unknown transfer syntax {uid}"),
    }
}

/// The most a compressed frame may expand, and the most pixel data RepDiff decodes from one file.
const MAX_COMPRESSION_RATIO: u64 = 1100;
const MAX_DECODED_BYTES: u64 = 4 << 30;

/// Refuses a header whose image cannot be in the file (e.g. a corrupt Rows or NumberOfFrames), before the
/// decoder allocates for it.
fn check_pixel_size(obj: &DefaultDicomObject, path: &Path) -> Result<()> {
    let number = |tag| obj.get(tag).and_then(|e| e.to_int::<u64>().ok());
    let (rows, columns) = (number(tags::ROWS).unwrap_or(0), number(tags::COLUMNS).unwrap_or(0));
    let frames = number(tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1);
    let bits = number(tags::BITS_ALLOCATED).unwrap_or(16).max(1);
    let samples = number(tags::SAMPLES_PER_PIXEL).unwrap_or(1).max(1);
    if rows == 0 || columns == 0 {
        return Err(scan_error(path, "Rows or Columns is missing or zero"));
    }
    let claimed = [columns, frames, samples]
        .iter()
        .try_fold(rows, |n, &d| n.checked_mul(d))
        .and_then(|n| n.checked_mul(bits.div_ceil(8)));
    let stored: u64 = match obj.get(tags::PIXEL_DATA).map(|e| e.value()) {
        Some(dicom_core::value::Value::PixelSequence(seq)) => {
            seq.fragments().iter().map(|f| f.len() as u64).sum::<u64>().saturating_mul(MAX_COMPRESSION_RATIO)
        }
        Some(value) => value.to_bytes().map_or(0, |b| b.len() as u64),
        None => 0,
    };
    match claimed {
        Some(bytes) if bytes <= stored.min(MAX_DECODED_BYTES) => Ok(()),
        _ => Err(scan_error(
            path,
            format!(
                "truncated pixel data: {rows} x {columns} pixels x {frames} frames of {bits} bits are more than the \
                 file's pixel data can hold"
            ),
        )),
    }
}

/// Reads every frame of a CT file as Hounsfield-unit slices, with the slice's identity.
pub fn read(path: &Path) -> Result<(Vec<Slice>, SliceIdentity)> {
    let obj = open(path)?;
    read_object(&obj, path)
}

/// As [`read`], for an object already in memory (`path` names it in errors).
pub fn read_object(obj: &DefaultDicomObject, path: &Path) -> Result<(Vec<Slice>, SliceIdentity)> {
    match text(obj, tags::MODALITY).as_deref() {
        Some("CT") => {}
        Some(other) => return Err(scan_error(path, format!("not a CT: Modality is {other}"))),
        None => return Err(scan_error(path, "not a CT: the file has no Modality")),
    }
    if obj.get(tags::PIXEL_DATA).is_none() {
        return Err(scan_error(path, "the file has no pixel data"));
    }
    let syntax = obj.meta().transfer_syntax();
    let syntax_name = transfer_syntax_name(syntax);
    match TransferSyntaxRegistry.get(syntax.trim_end_matches('\0')) {
        Some(ts) if ts.is_unsupported_pixel_encapsulation() || !ts.can_decode_all() => {
            return Err(scan_error(
                path,
                format!(
                    "unsupported transfer syntax {syntax_name}: RepDiff decodes native, deflate, RLE, JPEG and \
                     JPEG 2000; convert the file first (e.g. `gdcmconv --raw` or dcmtk's `dcmdjpls`)"
                ),
            ));
        }
        Some(_) => {}
        None => return Err(scan_error(path, format!("{syntax_name} is not a transfer syntax RepDiff knows"))),
    }
    check_pixel_size(obj, path)?;
    // dicom-rs 0.10's RLE decoder indexes past corrupt segments and panics (found by fuzzing); a codec
    // panic on one file becomes that file's error.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| obj.decode_pixel_data()))
        .map_err(|_| scan_error(path, format!("corrupt pixel data: the {syntax_name} decoder failed on it")))?
        .map_err(|e| scan_error(path, format!("cannot decode the pixel data ({syntax_name}): {}", chain(&e))))?;
    if decoded.samples_per_pixel() != 1 {
        return Err(scan_error(
            path,
            format!("a CT slice has one sample per pixel, this file has {}", decoded.samples_per_pixel()),
        ));
    }
    let (rows, columns) = (decoded.rows() as usize, decoded.columns() as usize);
    let spacing = obj.get(tags::PIXEL_SPACING).and_then(|e| e.to_multi_float64().ok()).and_then(|v| match v[..] {
        [row, column] if row > 0.0 && column > 0.0 => Some((row as f32, column as f32)),
        _ => None,
    });
    // The modality LUT (slope/intercept, or a LUT sequence) gives Hounsfield units; no VOI window is applied.
    let options = ConvertOptions::new();
    let mut slices = Vec::with_capacity(decoded.number_of_frames() as usize);
    for frame in 0..decoded.number_of_frames() {
        let values: Vec<f32> = decoded
            .to_vec_frame_with_options(frame, &options)
            .map_err(|e| scan_error(path, format!("frame {frame}: {}", chain(&e))))?;
        if values.len() != rows * columns {
            return Err(scan_error(
                path,
                format!("frame {frame} has {} values, expected {rows} x {columns}", values.len()),
            ));
        }
        slices.push(Slice { rows, columns, values, unit: Unit::Hounsfield, spacing_mm: spacing });
    }
    Ok((slices, identity(obj)))
}

/// The study, series and instance a DICOM object belongs to.
pub fn identity(obj: &InMemDicomObject) -> SliceIdentity {
    SliceIdentity {
        study_uid: text(obj, tags::STUDY_INSTANCE_UID).unwrap_or_default(),
        series_uid: text(obj, tags::SERIES_INSTANCE_UID).unwrap_or_default(),
        instance_uid: text(obj, tags::SOP_INSTANCE_UID).unwrap_or_default(),
        instance_number: obj.get(tags::INSTANCE_NUMBER).and_then(|e| e.to_int::<i64>().ok()),
        patient_id: text(obj, tags::PATIENT_ID).unwrap_or_default(),
        position_mm: text(obj, tags::IMAGE_POSITION_PATIENT)
            .and_then(|xyz| xyz.split('\\').nth(2).and_then(|z| z.trim().parse().ok()))
            .or_else(|| text(obj, tags::SLICE_LOCATION).and_then(|z| z.trim().parse().ok()))
            .filter(|z: &f64| z.is_finite()),
    }
}

/// What a written CT file says about where it came from (all synthetic for phantoms).
pub struct CtHeader<'a> {
    pub patient_name: &'a str,
    pub patient_id: &'a str,
    pub institution: &'a str,
    pub study_uid: &'a str,
    pub series_uid: &'a str,
    pub instance_uid: &'a str,
    pub instance_number: i64,
    /// The slice's z in the patient's frame, mm (ImagePositionPatient; x and y are 0).
    pub position_mm: f64,
    pub study_date: &'a str,
    pub description: &'a str,
}

fn put_str(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
}

/// Writes a Hounsfield-unit slice as a CT Image Storage file (explicit VR little endian, signed 16-bit
/// stored values with RescaleIntercept 0 and slope 1, so every HU in [-32768, 32767] is exact to 1 HU).
pub fn write_ct(path: &Path, slice: &Slice, header: &CtHeader) -> Result<()> {
    if slice.unit != Unit::Hounsfield {
        return Err(scan_error(path, "only Hounsfield-unit slices can be written as CT"));
    }
    let mut obj = InMemDicomObject::new_empty();
    put_str(&mut obj, tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE);
    put_str(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, header.instance_uid);
    put_str(&mut obj, tags::STUDY_INSTANCE_UID, VR::UI, header.study_uid);
    put_str(&mut obj, tags::SERIES_INSTANCE_UID, VR::UI, header.series_uid);
    put_str(&mut obj, tags::STUDY_DATE, VR::DA, header.study_date);
    put_str(&mut obj, tags::MODALITY, VR::CS, "CT");
    put_str(&mut obj, tags::MANUFACTURER, VR::LO, "RepDiff phantom");
    put_str(&mut obj, tags::INSTITUTION_NAME, VR::LO, header.institution);
    put_str(&mut obj, tags::STUDY_DESCRIPTION, VR::LO, header.description);
    put_str(&mut obj, tags::PATIENT_NAME, VR::PN, header.patient_name);
    put_str(&mut obj, tags::PATIENT_ID, VR::LO, header.patient_id);
    put_str(&mut obj, tags::BODY_PART_EXAMINED, VR::CS, "HEAD");
    put_str(&mut obj, tags::IMAGE_TYPE, VR::CS, "DERIVED\\SECONDARY\\AXIAL");
    obj.put(DataElement::new(tags::INSTANCE_NUMBER, VR::IS, PrimitiveValue::from(header.instance_number.to_string())));
    put_str(&mut obj, tags::IMAGE_POSITION_PATIENT, VR::DS, &format!("0\\0\\{}", header.position_mm));
    obj.put(DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)));
    put_str(&mut obj, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
    obj.put(DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(slice.rows as u16)));
    obj.put(DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(slice.columns as u16)));
    for (tag, bits) in [(tags::BITS_ALLOCATED, 16u16), (tags::BITS_STORED, 16), (tags::HIGH_BIT, 15)] {
        obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(bits)));
    }
    obj.put(DataElement::new(tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(1u16)));
    put_str(&mut obj, tags::RESCALE_INTERCEPT, VR::DS, "0");
    put_str(&mut obj, tags::RESCALE_SLOPE, VR::DS, "1");
    put_str(&mut obj, tags::RESCALE_TYPE, VR::LO, "HU");
    put_str(&mut obj, tags::WINDOW_CENTER, VR::DS, "40");
    put_str(&mut obj, tags::WINDOW_WIDTH, VR::DS, "80");
    if let Some((row, column)) = slice.spacing_mm {
        put_str(&mut obj, tags::PIXEL_SPACING, VR::DS, &format!("{row}\\{column}"));
    }
    let stored: Vec<i16> = slice.values.iter().map(|&hu| hu.round().clamp(-32768.0, 32767.0) as i16).collect();
    let bytes: Vec<u8> = stored.iter().flat_map(|v| v.to_le_bytes()).collect();
    obj.put(DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::from(bytes)));
    write_file(obj, path, uids::EXPLICIT_VR_LITTLE_ENDIAN)
}

/// Writes `obj` as a Part 10 file with a fresh file meta group carrying RepDiff's implementation UID.
pub fn write_file(obj: InMemDicomObject, path: &Path, transfer_syntax: &str) -> Result<()> {
    let class = text(&obj, tags::SOP_CLASS_UID).unwrap_or_default();
    let instance = text(&obj, tags::SOP_INSTANCE_UID).unwrap_or_default();
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(class)
        .media_storage_sop_instance_uid(instance)
        .transfer_syntax(transfer_syntax.trim_end_matches('\0'))
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION)
        .build()
        .map_err(|e| scan_error(path, format!("building the file meta group: {}", chain(&e))))?;
    let file = obj.with_exact_meta(meta);
    file.write_to_file(path).map_err(|e| scan_error(path, format!("writing: {}", chain(&e))))
}
