//! De-identification of DICOM objects per DICOM PS3.15 Annex E, Basic Application Level Confidentiality
//! Profile, before RepDiff stores them.
//!
//! Three layers, so that an attribute missing from the table is still caught:
//! 1. the profile's table for the attributes it names (remove, empty, or replace with a dummy);
//! 2. rules by value representation for everything else: person names emptied, dates and times removed
//!    (emptied where the attribute is type 2), instance UIDs replaced;
//! 3. private attributes removed; sequences are cleaned recursively.
//!
//! UIDs and patient IDs become keyed pseudonyms (SHA-256 of a per-installation secret and the original),
//! so slices of one series, uploaded together or months apart, still share a study, series and frame of
//! reference, while nobody without the key can map them back. UIDs defined by the standard itself
//! (SOP classes, transfer syntaxes, coding schemes: root `1.2.840.10008.`) are kept.

use std::io::Write;
use std::path::Path;

use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The secret that makes pseudonyms consistent within an installation and unlinkable outside it.
#[derive(Clone, PartialEq, Eq)]
pub struct DeidKey([u8; 32]);

impl std::fmt::Debug for DeidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeidKey(..)")
    }
}

impl DeidKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DeidKey(bytes)
    }

    /// A fresh random key. `RandomState` is seeded from the operating system's random source; hashing a
    /// counter and the clock with it gives 256 bits that nobody can guess, with no extra dependency.
    pub fn generate() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let state = std::collections::hash_map::RandomState::new();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let mut seed = Sha256::new();
        for i in 0..8u64 {
            let mut hasher = state.build_hasher();
            hasher.write_u64(i);
            hasher.write_u128(nanos);
            seed.update(hasher.finish().to_le_bytes());
        }
        seed.update(std::process::id().to_le_bytes());
        DeidKey(seed.finalize().into())
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(DeidKey(bytes))
    }

    /// Reads the key at `path`, or creates it there (readable by the owner only) if there is none.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => DeidKey::from_hex(&text).ok_or_else(|| Error::Scan {
                path: path.into(),
                reason: "a de-identification key is 64 hexadecimal digits".into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = DeidKey::generate();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                }
                // Written whole under a name of this process's, then linked into place: processes starting
                // at once (a server's workers) never read a half-written key, and all of them use the
                // first key linked.
                let draft = path.with_extension(format!("{}.{}", std::process::id(), &Self::generate().to_hex()[..16]));
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut file = options.open(&draft).map_err(|e| Error::io(&draft, e))?;
                writeln!(file, "{}", key.to_hex()).map_err(|e| Error::io(&draft, e))?;
                drop(file);
                let linked = std::fs::hard_link(&draft, path);
                let _ = std::fs::remove_file(&draft);
                match linked {
                    Ok(()) => Ok(key),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load_or_create(path),
                    Err(e) => Err(Error::io(path, e)),
                }
            }
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn digest(&self, domain: &str, value: &str) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(self.0);
        hash.update(domain.as_bytes());
        hash.update([0]);
        hash.update(value.as_bytes());
        hash.finalize().into()
    }

    /// A UID under the UUID-derived root `2.25.`, the same for the same input and key.
    pub fn pseudonym_uid(&self, uid: &str) -> String {
        let digest = self.digest("uid", uid.trim_end_matches('\0').trim());
        let mut value = u128::from_be_bytes(digest[..16].try_into().expect("16 bytes"));
        // As for a version-4 UUID: the integer must fit 128 bits; clearing the top bit keeps it well inside.
        value &= u128::MAX >> 1;
        format!("2.25.{value}")
    }

    /// A pseudonymous patient identifier, `ANON-` and 16 hexadecimal digits.
    pub fn pseudonym_patient(&self, patient_id: &str) -> String {
        let digest = self.digest("patient", patient_id.trim());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("ANON-{}", hex.to_ascii_uppercase())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// X: remove.
    Remove,
    /// Z: keep the attribute, empty its value (type 2 attributes).
    Empty,
    /// D: replace with the patient pseudonym.
    PatientPseudonym,
    /// K: keep (attributes that a VR rule would otherwise change but the profile keeps).
    Keep,
}

/// The Basic Profile's actions for the attributes it lists (PS3.15 Table E.1-1), where the profile offers
/// a choice taking the one that leaves least: removing unless the attribute is type 2 in a CT image.
/// UIDs, person names, dates and times not listed here are handled by the VR rules in [`deidentify`].
/// Retired attributes are listed too: old files still carry them.
#[allow(deprecated)]
const PROFILE: &[(Tag, Action)] = &[
    (tags::PATIENT_NAME, Action::PatientPseudonym),
    (tags::PATIENT_ID, Action::PatientPseudonym),
    (tags::PATIENT_BIRTH_DATE, Action::Empty),
    (tags::PATIENT_SEX, Action::Empty),
    (tags::STUDY_DATE, Action::Empty),
    (tags::STUDY_TIME, Action::Empty),
    (tags::ACCESSION_NUMBER, Action::Empty),
    (tags::STUDY_ID, Action::Empty),
    (tags::REFERRING_PHYSICIAN_NAME, Action::Empty),
    (tags::PATIENT_BIRTH_TIME, Action::Remove),
    (tags::PATIENT_AGE, Action::Remove),
    (tags::PATIENT_SIZE, Action::Remove),
    (tags::PATIENT_WEIGHT, Action::Remove),
    (tags::PATIENT_ADDRESS, Action::Remove),
    (tags::PATIENT_TELEPHONE_NUMBERS, Action::Remove),
    (tags::PATIENT_MOTHER_BIRTH_NAME, Action::Remove),
    (tags::PATIENT_BIRTH_NAME, Action::Remove),
    (tags::OTHER_PATIENT_I_DS, Action::Remove),
    (tags::OTHER_PATIENT_NAMES, Action::Remove),
    (tags::OTHER_PATIENT_I_DS_SEQUENCE, Action::Remove),
    (tags::ISSUER_OF_PATIENT_ID, Action::Remove),
    (tags::MILITARY_RANK, Action::Remove),
    (tags::BRANCH_OF_SERVICE, Action::Remove),
    (tags::ETHNIC_GROUP, Action::Remove),
    (tags::OCCUPATION, Action::Remove),
    (tags::ADDITIONAL_PATIENT_HISTORY, Action::Remove),
    (tags::PATIENT_COMMENTS, Action::Remove),
    (tags::MEDICAL_RECORD_LOCATOR, Action::Remove),
    (tags::MEDICAL_ALERTS, Action::Remove),
    (tags::ALLERGIES, Action::Remove),
    (tags::COUNTRY_OF_RESIDENCE, Action::Remove),
    (tags::REGION_OF_RESIDENCE, Action::Remove),
    (tags::PATIENT_RELIGIOUS_PREFERENCE, Action::Remove),
    (tags::PATIENT_INSURANCE_PLAN_CODE_SEQUENCE, Action::Remove),
    (tags::PREGNANCY_STATUS, Action::Remove),
    (tags::SMOKING_STATUS, Action::Remove),
    (tags::RESPONSIBLE_PERSON, Action::Remove),
    (tags::RESPONSIBLE_ORGANIZATION, Action::Remove),
    (tags::INSTITUTION_NAME, Action::Remove),
    (tags::INSTITUTION_ADDRESS, Action::Remove),
    (tags::INSTITUTION_CODE_SEQUENCE, Action::Remove),
    (tags::INSTITUTIONAL_DEPARTMENT_NAME, Action::Remove),
    (tags::STATION_NAME, Action::Remove),
    (tags::DEVICE_SERIAL_NUMBER, Action::Remove),
    (tags::SOFTWARE_VERSIONS, Action::Remove),
    (tags::REFERRING_PHYSICIAN_ADDRESS, Action::Remove),
    (tags::REFERRING_PHYSICIAN_TELEPHONE_NUMBERS, Action::Remove),
    (tags::REFERRING_PHYSICIAN_IDENTIFICATION_SEQUENCE, Action::Remove),
    (tags::CONSULTING_PHYSICIAN_NAME, Action::Remove),
    (tags::PHYSICIANS_OF_RECORD, Action::Remove),
    (tags::PHYSICIANS_OF_RECORD_IDENTIFICATION_SEQUENCE, Action::Remove),
    (tags::PERFORMING_PHYSICIAN_NAME, Action::Remove),
    (tags::PERFORMING_PHYSICIAN_IDENTIFICATION_SEQUENCE, Action::Remove),
    (tags::NAME_OF_PHYSICIANS_READING_STUDY, Action::Remove),
    (tags::PHYSICIANS_READING_STUDY_IDENTIFICATION_SEQUENCE, Action::Remove),
    (tags::OPERATORS_NAME, Action::Remove),
    (tags::OPERATOR_IDENTIFICATION_SEQUENCE, Action::Remove),
    (tags::REQUESTING_PHYSICIAN, Action::Remove),
    (tags::REQUESTING_SERVICE, Action::Remove),
    (tags::STUDY_DESCRIPTION, Action::Remove),
    (tags::SERIES_DESCRIPTION, Action::Remove),
    (tags::IMAGE_COMMENTS, Action::Remove),
    (tags::FRAME_COMMENTS, Action::Remove),
    (tags::DERIVATION_DESCRIPTION, Action::Remove),
    (tags::PROTOCOL_NAME, Action::Remove),
    (tags::ADMITTING_DIAGNOSES_DESCRIPTION, Action::Remove),
    (tags::ADMITTING_DIAGNOSES_CODE_SEQUENCE, Action::Remove),
    (tags::REASON_FOR_STUDY, Action::Remove),
    (tags::REQUESTED_PROCEDURE_DESCRIPTION, Action::Remove),
    (tags::REQUESTED_PROCEDURE_ID, Action::Remove),
    (tags::REQUEST_ATTRIBUTES_SEQUENCE, Action::Remove),
    (tags::SCHEDULED_PROCEDURE_STEP_DESCRIPTION, Action::Remove),
    (tags::PERFORMED_PROCEDURE_STEP_ID, Action::Remove),
    (tags::PERFORMED_PROCEDURE_STEP_DESCRIPTION, Action::Remove),
    (tags::PERFORMED_LOCATION, Action::Remove),
    (tags::PERFORMED_STATION_NAME, Action::Remove),
    (tags::PERFORMED_STATION_AE_TITLE, Action::Remove),
    (tags::PROCEDURE_CODE_SEQUENCE, Action::Remove),
    (tags::REFERENCED_PATIENT_SEQUENCE, Action::Remove),
    (tags::REFERENCED_STUDY_SEQUENCE, Action::Remove),
    (tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE, Action::Remove),
    (tags::ORDER_ENTERED_BY, Action::Remove),
    (tags::ORDER_ENTERER_LOCATION, Action::Remove),
    (tags::ORDER_CALLBACK_PHONE_NUMBER, Action::Remove),
    (tags::TEXT_COMMENTS, Action::Remove),
    (tags::CONTENT_CREATOR_NAME, Action::Remove),
    (tags::VERIFYING_OBSERVER_NAME, Action::Remove),
    (tags::PERSON_NAME, Action::Remove),
    (tags::ACQUISITION_COMMENTS, Action::Remove),
    (tags::CONTRAST_BOLUS_AGENT, Action::Remove),
    (tags::DEVICE_UID, Action::Remove),
    (tags::IRRADIATION_EVENT_UID, Action::Remove),
    (tags::DIGITAL_SIGNATURES_SEQUENCE, Action::Remove),
    (tags::ORIGINAL_ATTRIBUTES_SEQUENCE, Action::Remove),
    (tags::MODIFIED_ATTRIBUTES_SEQUENCE, Action::Remove),
    // Dates that stay present, empty, because they are type 2 in a CT image.
    (tags::CONTENT_DATE, Action::Empty),
    (tags::CONTENT_TIME, Action::Empty),
    // Kept: what the image is, not who it is of.
    (tags::MODALITY, Action::Keep),
    (tags::MANUFACTURER, Action::Keep),
];

/// Type 2 attributes of a CT image whose VR rule is "remove": they stay, empty.
const TYPE2_DATES: &[Tag] = &[tags::STUDY_DATE, tags::STUDY_TIME, tags::CONTENT_DATE, tags::CONTENT_TIME];

/// The code for the Basic Application Level Confidentiality Profile (DCM 113100), for the method text.
const METHOD: &str = "DICOM PS3.15 E.1 Basic Application Level Confidentiality Profile (DCM 113100); RepDiff";

/// What [`deidentify`] changed, for the import log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeidReport {
    pub removed: usize,
    pub emptied: usize,
    pub replaced: usize,
}

fn is_standard_uid(uid: &str) -> bool {
    uid.trim_end_matches('\0').starts_with("1.2.840.10008.")
}

fn text(value: &Value<InMemDicomObject, dicom_object::mem::InMemFragment>) -> String {
    value.to_str().map(|s| s.trim_end_matches(['\0', ' ']).to_string()).unwrap_or_default()
}

/// De-identifies `obj` in place, file meta group included. Refuses objects whose pixels carry burned-in
/// text (BurnedInAnnotation = YES): the profile cannot clean those.
pub fn deidentify(obj: &mut DefaultDicomObject, key: &DeidKey) -> Result<DeidReport> {
    let burned_in = obj.get(tags::BURNED_IN_ANNOTATION).map(|e| text(e.value()).to_ascii_uppercase());
    if burned_in.as_deref() == Some("YES") {
        return Err(Error::Scan {
            path: "<dicom object>".into(),
            reason: "BurnedInAnnotation is YES: the pixels carry text that de-identification cannot remove".into(),
        });
    }
    let mut report = DeidReport::default();
    clean_dataset(obj, key, &mut report);
    let put = |obj: &mut DefaultDicomObject, tag, vr, value: &str| {
        obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
    };
    put(obj, tags::PATIENT_IDENTITY_REMOVED, VR::CS, "YES");
    put(obj, tags::DEIDENTIFICATION_METHOD, VR::LO, METHOD);
    put(obj, tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED, VR::CS, "REMOVED");
    let instance = obj.get(tags::SOP_INSTANCE_UID).map(|e| text(e.value())).unwrap_or_default();
    let meta = obj.meta_mut();
    meta.media_storage_sop_instance_uid = instance;
    meta.implementation_class_uid = super::dicom::IMPLEMENTATION_CLASS_UID.to_string();
    meta.implementation_version_name = Some(super::dicom::IMPLEMENTATION_VERSION.to_string());
    meta.source_application_entity_title = None;
    meta.sending_application_entity_title = None;
    meta.receiving_application_entity_title = None;
    meta.private_information_creator_uid = None;
    meta.private_information = None;
    meta.update_information_group_length();
    Ok(report)
}

fn clean_dataset(obj: &mut InMemDicomObject, key: &DeidKey, report: &mut DeidReport) {
    let all: Vec<(Tag, VR)> = obj.iter().map(|e| (e.header().tag, e.header().vr)).collect();
    for (tag, vr) in all {
        if tag.group() % 2 == 1 {
            obj.remove_element(tag);
            report.removed += 1;
            continue;
        }
        let listed = PROFILE.iter().find(|(t, _)| *t == tag).map(|(_, action)| *action);
        let action = match (listed, vr) {
            (Some(action), _) => Some(action),
            (None, VR::PN) => Some(Action::Empty),
            (None, VR::DA | VR::DT | VR::TM) if TYPE2_DATES.contains(&tag) => Some(Action::Empty),
            (None, VR::DA | VR::DT | VR::TM) => Some(Action::Remove),
            _ => None,
        };
        match action {
            Some(Action::Remove) => {
                obj.remove_element(tag);
                report.removed += 1;
            }
            Some(Action::Empty) => {
                obj.put(DataElement::new(tag, vr, PrimitiveValue::Empty));
                report.emptied += 1;
            }
            Some(Action::PatientPseudonym) => {
                let patient_id = obj.get(tags::PATIENT_ID).map(|e| text(e.value())).unwrap_or_default();
                let pseudonym = key.pseudonym_patient(&patient_id);
                obj.put(DataElement::new(tag, vr, PrimitiveValue::from(pseudonym.as_str())));
                report.replaced += 1;
            }
            Some(Action::Keep) => {}
            None if vr == VR::UI => {
                let Some(element) = obj.get(tag) else { continue };
                let uids: Vec<String> = text(element.value()).split('\\').map(str::to_string).collect();
                if uids.iter().all(|uid| uid.is_empty() || is_standard_uid(uid)) {
                    continue;
                }
                let replaced: Vec<String> = uids
                    .iter()
                    .map(
                        |uid| if uid.is_empty() || is_standard_uid(uid) { uid.clone() } else { key.pseudonym_uid(uid) },
                    )
                    .collect();
                obj.put(DataElement::new(tag, vr, PrimitiveValue::from(replaced.join("\\").as_str())));
                report.replaced += 1;
            }
            None if vr == VR::SQ => {
                obj.update_value(tag, |value| {
                    if let Some(items) = value.items_mut() {
                        for item in items.iter_mut() {
                            clean_dataset(item, key, report);
                        }
                    }
                });
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod key_file_tests {
    use super::DeidKey;

    #[test]
    fn processes_creating_the_key_at_once_all_get_the_first_one_and_no_draft_is_left() {
        let dir = std::env::temp_dir().join(format!("repdiff-deid-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("deid.key");
        let keys: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> =
                (0..8).map(|_| s.spawn(|| DeidKey::load_or_create(&path).unwrap().to_hex())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
        assert_eq!(DeidKey::load_or_create(&path).unwrap().to_hex(), keys[0]);
        let files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(files, ["deid.key"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
