//! Arbitrary bytes as an uploaded labels file, CSV or JSON (the first byte picks which), through the
//! parser the upload endpoint uses: it must return a manifest or an error message, never panic or
//! allocate without bound; a manifest it returns holds only the columns and values it accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use repdiff_engine::manifest::{MAX_SITE, Manifest};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, text)) = data.split_first() else { return };
    let parsed = if pick % 2 == 0 {
        Manifest::from_reader(text)
    } else {
        match std::str::from_utf8(text) {
            Ok(text) => Manifest::from_json_str(text),
            Err(_) => return,
        }
    };
    if let Ok(manifest) = parsed {
        for record in &manifest.records {
            assert!(!record.file.is_empty() && !record.file.contains('\0'), "{:?}", record.file);
            assert!(record.site <= MAX_SITE, "{}", record.site);
        }
    }
});
