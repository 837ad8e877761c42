//! Preference-data loaders against the fixtures of `tools/make_data_fixtures.py`
//! (`tests/assets/data/`): exact pair lists (prompt, sha256 of the chosen and of the rejected image)
//! computed independently in Python, skip counts per reason, Pillow-reference pixels, and every
//! bad-data case as a clear error and, where it makes sense, a counted skip.

use dpoimg::data::{
    detect_format, load_pairs, resize_crop, to_unit_chw, DataError, DatasetFormat, ImageSize,
    ImageSource, LoadOptions, OnBadRow, PreferencePair, PromptFilter, Resample, RgbImage,
    SkipReason,
};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Largest |difference| allowed between dpoimg's and Pillow's decode of a JPEG, in 8-bit levels.
/// PNG and lossy WebP (image-webp vs libwebp) must match exactly; JPEG does not, because zune-jpeg
/// upsamples 4:2:0 chroma with different rounding from libjpeg-turbo's "fancy" upsampling.
/// Measured on 4:2:0 quality-90 files from 24x20 to 512x512: max 4-6 levels, mean 0.36-0.44,
/// 10-12 % of samples off by more than 1; 4:4:4 files: max 3, mean 0.02.
const JPEG_DECODE_TOL: f32 = 8.0;
/// The mean bound of the same comparison, in levels: the error is sparse rounding, not a shift.
const JPEG_DECODE_MEAN_TOL: f32 = 1.0;
/// The same bounds after preprocessing, in [-1, 1] units (2/255 per level).
const JPEG_PIXEL_TOL: f32 = JPEG_DECODE_TOL * 2.0 / 255.0;
const JPEG_PIXEL_MEAN_TOL: f32 = JPEG_DECODE_MEAN_TOL * 2.0 / 255.0;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/assets/data")
}

fn bad(name: &str) -> PathBuf {
    data_dir().join("bad").join(name)
}

fn expected() -> Value {
    let text = std::fs::read_to_string(data_dir().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn skip() -> LoadOptions {
    LoadOptions {
        on_bad_row: OnBadRow::Skip,
        ..Default::default()
    }
}

fn split(s: &str) -> LoadOptions {
    LoadOptions {
        split: Some(s.into()),
        ..Default::default()
    }
}

/// (prompt, chosen sha256, rejected sha256) of every pair.
fn triples(pairs: &[PreferencePair]) -> Vec<(String, String, String)> {
    pairs
        .iter()
        .map(|p| {
            (
                p.prompt.clone(),
                p.chosen.content_hash().unwrap(),
                p.rejected.content_hash().unwrap(),
            )
        })
        .collect()
}

fn expected_triples(v: &Value) -> Vec<(String, String, String)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["prompt"].as_str().unwrap().to_string(),
                p["chosen"].as_str().unwrap().to_string(),
                p["rejected"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn n(v: &Value) -> usize {
    v.as_u64().unwrap() as usize
}

fn err_text(
    r: Result<(Vec<PreferencePair>, dpoimg::data::LoadReport), DataError>,
) -> (DataError, String) {
    match r {
        Ok((p, rep)) => panic!("expected an error, got {} pairs ({rep})", p.len()),
        Err(e) => {
            let s = e.to_string();
            (e, s)
        }
    }
}

fn assert_contains(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message lacks `{p}`:\n{msg}");
    }
}

// ------------------------------------------------------------------------------- good data

#[test]
fn imagereward_train_pairs_match_the_reference_derivation() {
    let exp = &expected()["imagereward_train"];
    let (pairs, report) =
        load_pairs(&data_dir().join("imagereward"), &LoadOptions::default()).unwrap();
    assert_eq!(triples(&pairs), expected_triples(&exp["pairs"]));
    assert_eq!(report.format, DatasetFormat::ImageRewardDb);
    assert_eq!(report.rows_read, n(&exp["rows"]));
    assert_eq!(report.pairs, pairs.len());
    assert_eq!(report.skipped(SkipReason::Tie), n(&exp["ties"]));
    assert_eq!(report.skipped.len(), 1, "{report}");
    assert!(pairs
        .iter()
        .all(|p| matches!(p.chosen, ImageSource::File(_))));
    assert!(
        pairs[0].source.contains("metadata-train.parquet rows"),
        "{}",
        pairs[0].source
    );
    let text = report.to_string();
    assert_contains(&text, &["ImageRewardDB", "rows read", "pairs", "tie pairs"]);
}

#[test]
fn imagereward_validation_reads_images_from_the_split_zips() {
    let exp = &expected()["imagereward_validation"];
    let (pairs, report) =
        load_pairs(&data_dir().join("imagereward"), &split("validation")).unwrap();
    assert_eq!(triples(&pairs), expected_triples(&exp["pairs"]));
    assert_eq!(report.rows_read, n(&exp["rows"]));
    assert_eq!(report.skipped(SkipReason::Tie), n(&exp["ties"]));
    let members: Vec<String> = pairs
        .iter()
        .map(|p| match &p.chosen {
            ImageSource::ZipMember { archive, member } => {
                format!(
                    "{}:{member}",
                    archive.path().file_name().unwrap().to_str().unwrap()
                )
            }
            other => panic!("expected a zip member, got {other:?}"),
        })
        .collect();
    assert!(members
        .iter()
        .any(|m| m.starts_with("validation_1.zip:validation_1/")));
    assert!(members
        .iter()
        .any(|m| m.starts_with("validation_2.zip:validation_2/")));
    // The metadata file itself names the split.
    let file = data_dir().join("imagereward/metadata-validation.parquet");
    assert_eq!(detect_format(&file).unwrap(), DatasetFormat::ImageRewardDb);
    let (again, _) = load_pairs(&file, &LoadOptions::default()).unwrap();
    assert_eq!(triples(&again), triples(&pairs));
    let (e, msg) = err_text(load_pairs(&file, &split("train")));
    assert!(matches!(e, DataError::Options { .. }));
    assert_contains(&msg, &["validation", "train"]);
}

#[test]
fn zip_members_without_the_folder_prefix_and_stored_entries_are_found() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::copy(
        data_dir().join("imagereward/metadata-validation.parquet"),
        root.join("metadata-validation.parquet"),
    )
    .unwrap();
    for part in ["validation_1", "validation_2"] {
        let src = data_dir().join(format!("imagereward/images/validation/{part}.zip"));
        let mut zin = zip::ZipArchive::new(std::fs::File::open(src).unwrap()).unwrap();
        std::fs::create_dir_all(root.join("images/validation")).unwrap();
        let out =
            std::fs::File::create(root.join(format!("images/validation/{part}.zip"))).unwrap();
        let mut zout = zip::ZipWriter::new(out);
        for i in 0..zin.len() {
            let mut f = zin.by_index(i).unwrap();
            let name = f.name().unwrap().rsplit('/').next().unwrap().to_string();
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes).unwrap();
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored);
            zout.start_file(name, opts).unwrap();
            zout.write_all(&bytes).unwrap();
        }
        zout.finish().unwrap();
    }
    let (pairs, _) = load_pairs(root, &split("validation")).unwrap();
    assert_eq!(
        triples(&pairs),
        expected_triples(&expected()["imagereward_validation"]["pairs"])
    );
}

#[test]
fn prompt_filters_select_prompts_and_are_counted() {
    let exp = &expected()["imagereward_train"];
    let dir = data_dir().join("imagereward");
    let with = |filters: Vec<PromptFilter>| {
        let opts = LoadOptions {
            prompt_filters: filters,
            ..Default::default()
        };
        load_pairs(&dir, &opts).unwrap()
    };
    let (p, r) = with(vec![PromptFilter::contains("RED")]);
    assert_eq!(p.len(), n(&exp["filter_contains_red"]));
    assert!(p.iter().all(|p| p.prompt.to_lowercase().contains("red")));
    assert!(r.skipped(SkipReason::Filtered) > 0);
    let (p, _) = with(vec![PromptFilter::regex("^a l").unwrap()]);
    assert_eq!(p.len(), n(&exp["filter_regex_lighthouse"]));
    let (p, _) = with(vec![PromptFilter::ids(["000002-0002", "000003-0003"])]);
    assert_eq!(p.len(), n(&exp["filter_ids_000002_000003"]));
    let (p, r) = with(vec![
        PromptFilter::contains("red"),
        PromptFilter::ids(["000002-0002", "000003-0003"]),
    ]);
    assert_eq!(
        p.len(),
        n(&exp["filter_contains_red_and_ids_000002_000003"])
    );
    assert_eq!(r.rows_read, n(&exp["rows"]));

    // Nothing left is an error that shows the report.
    let opts = LoadOptions {
        prompt_filters: vec![PromptFilter::contains("no such prompt")],
        ..Default::default()
    };
    let (e, msg) = err_text(load_pairs(&dir, &opts));
    assert!(matches!(e, DataError::Empty { .. }));
    assert_contains(
        &msg,
        &["no preference pairs", "excluded by the prompt filters"],
    );

    let e = PromptFilter::regex("(unclosed").unwrap_err();
    assert_contains(&e.to_string(), &["regex", "(unclosed"]);
    let opts = LoadOptions {
        prompt_filters: vec![PromptFilter::ids(["1"])],
        ..Default::default()
    };
    let (_, msg) = err_text(load_pairs(&data_dir().join("pickapic.parquet"), &opts));
    assert_contains(&msg, &["prompt-id filter", "ImageRewardDB"]);
    let (_, msg) = err_text(load_pairs(&data_dir().join("pairs.jsonl"), &split("train")));
    assert_contains(&msg, &["split", "JSONL"]);
}

#[test]
fn unknown_split_lists_the_available_ones() {
    let (e, msg) = err_text(load_pairs(&data_dir().join("imagereward"), &split("test")));
    assert!(matches!(e, DataError::Split { .. }));
    assert_contains(
        &msg,
        &["metadata-test.parquet", "available: train, validation"],
    );
    let (_, msg) = err_text(load_pairs(&data_dir().join("imagereward"), &split("../x")));
    assert_contains(&msg, &["no split `../x`"]);
}

#[test]
fn pickapic_labels_pick_the_image_and_ties_are_dropped() {
    let exp = &expected()["pickapic"];
    let (pairs, report) = load_pairs(
        &data_dir().join("pickapic.parquet"),
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(triples(&pairs), expected_triples(&exp["pairs"]));
    assert_eq!(report.format, DatasetFormat::PickAPic);
    assert_eq!(report.rows_read, n(&exp["rows"]));
    assert_eq!(report.skipped(SkipReason::Tie), n(&exp["ties"]));
    for (p, e) in pairs.iter().zip(exp["pairs"].as_array().unwrap()) {
        let rid = e["ranking_id"].as_u64().unwrap();
        assert!(
            p.source.contains(&format!("ranking_id {rid}")),
            "{}",
            p.source
        );
        assert!(matches!(p.chosen, ImageSource::Bytes { .. }));
    }
}

#[test]
fn jsonl_pairs_resolve_paths_relative_to_the_file() {
    let exp = &expected()["jsonl"];
    let (pairs, report) =
        load_pairs(&data_dir().join("pairs.jsonl"), &LoadOptions::default()).unwrap();
    assert_eq!(triples(&pairs), expected_triples(&exp["pairs"]));
    assert_eq!(
        report.rows_read,
        n(&exp["rows"]),
        "blank lines are not records"
    );
    assert!(report.skipped.is_empty());
    assert_eq!(
        pairs[2].source,
        format!("{} line 4", data_dir().join("pairs.jsonl").display())
    );
}

#[test]
fn loaded_images_have_the_vae_layout() {
    let size = ImageSize::square(16);
    for path in [
        data_dir().join("imagereward"),
        data_dir().join("pickapic.parquet"),
        data_dir().join("pairs.jsonl"),
        data_dir().join("imagereward/metadata-validation.parquet"),
    ] {
        let (pairs, _) = load_pairs(&path, &LoadOptions::default()).unwrap();
        for p in pairs.iter().take(3) {
            for img in [&p.chosen, &p.rejected] {
                let px = img.load(size).unwrap();
                assert_eq!(px.len(), 3 * 16 * 16);
                assert!(px.iter().all(|v| (-1.0..=1.0).contains(v)));
            }
        }
    }
    let nonsquare = ImageSize::new(16, 8);
    let (pairs, _) = load_pairs(&data_dir().join("pairs.jsonl"), &LoadOptions::default()).unwrap();
    assert_eq!(pairs[0].chosen.load(nonsquare).unwrap().len(), 3 * 16 * 8);
    let e = pairs[0].chosen.load(ImageSize::new(0, 16)).unwrap_err();
    assert_contains(&e.to_string(), &["0x16", "out of range"]);
}

#[test]
fn pairs_are_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PreferencePair>();
    let (pairs, _) = load_pairs(&data_dir().join("imagereward"), &split("validation")).unwrap();
    let hashes: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = pairs
            .iter()
            .map(|p| s.spawn(|| p.chosen.content_hash().unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let want: Vec<String> = triples(&pairs).into_iter().map(|t| t.1).collect();
    assert_eq!(hashes, want);
}

// --------------------------------------------------------------------------- pixel goldens

fn read_npy(rel: &str) -> (Vec<usize>, Vec<f32>) {
    dpoimg::npy::read_f32(&data_dir().join(rel)).unwrap()
}

fn max_mean_abs(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let mut max = 0f32;
    let mut sum = 0f64;
    for (x, y) in a.iter().zip(b) {
        let d = (x - y).abs();
        max = max.max(d);
        sum += d as f64;
    }
    (max, (sum / a.len() as f64) as f32)
}

#[test]
fn preprocessing_equals_pillow_and_torchvision() {
    let goldens = expected()["golden"].as_array().unwrap().clone();
    assert!(goldens.len() >= 10);
    for g in goldens {
        let src = data_dir().join(g["source"].as_str().unwrap());
        let size = ImageSize::new(
            g["width"].as_u64().unwrap() as u32,
            g["height"].as_u64().unwrap() as u32,
        );
        let filter = match g["filter"].as_str().unwrap() {
            "bilinear" => Resample::Bilinear,
            "bicubic" => Resample::Bicubic,
            f => panic!("{f}"),
        };
        let exact = g["exact_decode"].as_bool().unwrap();
        let (gshape, golden) = read_npy(g["golden"].as_str().unwrap());
        assert_eq!(gshape, vec![3, size.height as usize, size.width as usize]);
        let (rshape, raw) = read_npy(g["raw"].as_str().unwrap());

        // 1. Resize + crop + normalise from Pillow's own decode: bit-exact for every format.
        let pil = RgbImage {
            width: rshape[1] as u32,
            height: rshape[0] as u32,
            data: raw.iter().map(|&v| v as u8).collect(),
        };
        let ours = to_unit_chw(&resize_crop(&pil, size, filter));
        assert_eq!(
            ours,
            golden,
            "{} {size:?} {filter:?}: resize/crop differs from Pillow",
            src.display()
        );

        // 2. The whole path from the encoded file.
        let enc = ImageSource::File(src.clone()).encoded().unwrap();
        assert_eq!(enc.sha256, g["sha256"].as_str().unwrap());
        let decoded = enc.decode_rgb8().unwrap();
        assert_eq!((decoded.width, decoded.height), (pil.width, pil.height));
        let full = enc.preprocess(size, filter).unwrap();
        if exact {
            assert_eq!(
                decoded.data,
                pil.data,
                "{}: decode differs from Pillow",
                src.display()
            );
            assert_eq!(full, golden, "{}", src.display());
        } else {
            let dec_f: Vec<f32> = decoded.data.iter().map(|&v| v as f32).collect();
            let (dmax, dmean) = max_mean_abs(&dec_f, &raw);
            assert!(
                dmax <= JPEG_DECODE_TOL && dmean <= JPEG_DECODE_MEAN_TOL,
                "{}: decode differs from Pillow by max {dmax}, mean {dmean} levels",
                src.display()
            );
            let (max, mean) = max_mean_abs(&full, &golden);
            assert!(
                max <= JPEG_PIXEL_TOL && mean <= JPEG_PIXEL_MEAN_TOL,
                "{}: max {max} mean {mean}",
                src.display()
            );
        }
        if filter == Resample::Bilinear {
            assert_eq!(ImageSource::File(src.clone()).load(size).unwrap(), full);
        }
    }
}

// ------------------------------------------------------------------------------- bad data

#[test]
fn detect_format_names_what_it_found() {
    assert_eq!(
        detect_format(&data_dir().join("imagereward")).unwrap(),
        DatasetFormat::ImageRewardDb
    );
    assert_eq!(
        detect_format(&data_dir().join("pickapic.parquet")).unwrap(),
        DatasetFormat::PickAPic
    );
    assert_eq!(
        detect_format(&data_dir().join("pairs.jsonl")).unwrap(),
        DatasetFormat::Jsonl
    );
    let cases: &[(&str, &[&str])] = &[
        (
            "data.csv",
            &[
                "data.csv",
                "not a preference dataset",
                "a .csv file",
                "Fix:",
            ],
        ),
        (
            "not_a_dataset",
            &["not_a_dataset", "without metadata-{split}.parquet"],
        ),
        ("other_schema.parquet", &["columns a, b", "caption/jpg_0"]),
    ];
    for (name, parts) in cases {
        let e = detect_format(&bad(name)).unwrap_err();
        assert!(matches!(e, DataError::UnknownFormat { .. }), "{name}: {e}");
        assert_contains(&e.to_string(), parts);
        // load_pairs says the same.
        let (_, msg) = err_text(load_pairs(&bad(name), &LoadOptions::default()));
        assert_contains(&msg, parts);
    }
    let e = detect_format(&bad("no_such_file.jsonl")).unwrap_err();
    assert!(matches!(e, DataError::NotFound { .. }));
    let e = detect_format(&bad("not_parquet.parquet")).unwrap_err();
    assert!(matches!(e, DataError::Parquet { .. }), "{e}");
    assert_contains(
        &e.to_string(),
        &["not_parquet.parquet", "not a readable parquet file"],
    );
}

#[test]
fn missing_loose_image_is_an_error_or_a_counted_skip() {
    let exp = &expected()["bad"]["ir_missing_image"];
    let dir = bad("ir_missing_image");
    let (e, msg) = err_text(load_pairs(&dir, &LoadOptions::default()));
    assert!(matches!(e, DataError::MissingImage { .. }));
    assert_contains(
        &msg,
        &[
            "metadata-train.parquet row 1",
            exp["missing"].as_str().unwrap(),
            "not found",
            "Fix:",
        ],
    );
    let (pairs, r) = load_pairs(&dir, &skip()).unwrap();
    assert_eq!(pairs.len(), n(&exp["skip_pairs"]));
    assert_eq!(r.skipped(SkipReason::MissingImage), n(&exp["skipped_rows"]));
    assert_eq!(r.examples.len(), 1);
    assert!(
        r.to_string().contains("1 rows whose image is missing"),
        "{r}"
    );
}

#[test]
fn missing_zip_member_is_an_error_or_a_counted_skip() {
    let exp = &expected()["bad"]["ir_zip_member_missing"];
    let dir = bad("ir_zip_member_missing");
    let (_, msg) = err_text(load_pairs(&dir, &split("validation")));
    assert_contains(
        &msg,
        &[
            "row 3",
            exp["missing"].as_str().unwrap(),
            "validation_1.zip",
            "member",
        ],
    );
    let opts = LoadOptions {
        split: Some("validation".into()),
        on_bad_row: OnBadRow::Skip,
        ..Default::default()
    };
    let (pairs, r) = load_pairs(&dir, &opts).unwrap();
    assert_eq!(pairs.len(), n(&exp["skip_pairs"]));
    assert_eq!(r.skipped(SkipReason::MissingImage), n(&exp["skipped_rows"]));
}

#[test]
fn missing_zip_archive_names_both_places_looked() {
    let exp = &expected()["bad"]["ir_zip_missing"];
    let dir = bad("ir_zip_missing");
    let (_, msg) = err_text(load_pairs(&dir, &split("validation")));
    assert_contains(&msg, &[exp["zip"].as_str().unwrap(), "row 0", "not found"]);
    // Skipping every row leaves nothing: an error carrying the report.
    let opts = LoadOptions {
        split: Some("validation".into()),
        on_bad_row: OnBadRow::Skip,
        ..Default::default()
    };
    let (e, msg) = err_text(load_pairs(&dir, &opts));
    assert!(matches!(e, DataError::Empty { .. }));
    assert_contains(&msg, &["2 rows whose image is missing"]);
}

#[test]
fn wrong_column_types_and_missing_columns_are_errors() {
    let cases: &[(PathBuf, &[&str])] = &[
        (
            bad("ir_rank_string"),
            &["column `rank`", "BYTE_ARRAY", "expected an integer column"],
        ),
        (
            bad("ir_missing_column"),
            &["column `rank` is missing", "image_path, prompt_id", "Fix:"],
        ),
        (
            bad("pick_missing_label.parquet"),
            &["column `label_0` is missing", "caption, jpg_0"],
        ),
        (
            bad("pick_label_string.parquet"),
            &["column `label_0`", "expected a floating-point column"],
        ),
    ];
    for (path, parts) in cases {
        for opts in [LoadOptions::default(), skip()] {
            let (e, msg) = err_text(load_pairs(path, &opts));
            assert!(
                matches!(
                    e,
                    DataError::ColumnType { .. } | DataError::MissingColumn { .. }
                ),
                "{msg}"
            );
            assert_contains(&msg, parts);
        }
    }
}

#[test]
fn null_fields_are_errors_or_counted_skips() {
    let (_, msg) = err_text(load_pairs(&bad("ir_null_fields"), &LoadOptions::default()));
    assert_contains(
        &msg,
        &[
            "metadata-train.parquet row 1",
            "field `rank`",
            "is null",
            "OnBadRow::Skip",
        ],
    );
    let exp = &expected()["bad"]["ir_null_fields"];
    let (pairs, r) = load_pairs(&bad("ir_null_fields"), &skip()).unwrap();
    assert_eq!(pairs.len(), n(&exp["skip_pairs"]));
    assert_eq!(r.skipped(SkipReason::MissingField), n(&exp["skipped_rows"]));

    let (_, msg) = err_text(load_pairs(
        &bad("pick_null_fields.parquet"),
        &LoadOptions::default(),
    ));
    assert_contains(
        &msg,
        &["row 1 (ranking_id 1001)", "field `caption`", "is null"],
    );
    let exp = &expected()["bad"]["pick_null_fields"];
    let (pairs, r) = load_pairs(&bad("pick_null_fields.parquet"), &skip()).unwrap();
    assert_eq!(pairs.len(), n(&exp["pairs"]));
    assert_eq!(r.skipped(SkipReason::MissingField), n(&exp["skipped_rows"]));
    assert_eq!(r.skipped(SkipReason::Tie), n(&exp["ties"]));
    assert!(
        r.examples.iter().any(|m| m.contains("field `jpg_1`")),
        "{:?}",
        r.examples
    );
}

#[test]
fn labels_other_than_one_zero_or_half_are_bad_rows() {
    let exp = &expected()["bad"]["pick_bad_label"];
    let (e, msg) = err_text(load_pairs(
        &bad("pick_bad_label.parquet"),
        &LoadOptions::default(),
    ));
    assert!(matches!(e, DataError::BadRow { .. }));
    assert_contains(&msg, &["row 0", "field `label_0`", "2 is not 1", "0.5"]);
    let (pairs, r) = load_pairs(&bad("pick_bad_label.parquet"), &skip()).unwrap();
    assert_eq!(pairs.len(), n(&exp["pairs"]));
    assert_eq!(r.skipped(SkipReason::BadValue), n(&exp["skipped_rows"]));
    assert!(
        r.examples.iter().any(|m| m.contains("NaN")),
        "{:?}",
        r.examples
    );
}

#[test]
fn empty_datasets_are_errors() {
    for path in [bad("pick_empty.parquet"), bad("jsonl_empty.jsonl")] {
        for opts in [LoadOptions::default(), skip()] {
            let (e, msg) = err_text(load_pairs(&path, &opts));
            assert!(matches!(e, DataError::Empty { .. }), "{msg}");
            assert_contains(&msg, &["no preference pairs", "0 rows read"]);
        }
    }
}

#[test]
fn broken_images_fail_on_load_or_are_skipped_when_checked() {
    let exp = &expected()["bad"]["pick_bad_images"];
    let path = bad("pick_bad_images.parquet");
    // Loading without checks defers decoding: the pairs exist, their images fail clearly.
    let (pairs, _) = load_pairs(&path, &LoadOptions::default()).unwrap();
    assert_eq!(pairs.len(), n(&exp["pairs_unchecked"]));
    let size = ImageSize::square(16);
    let errors: Vec<String> = pairs
        .iter()
        .flat_map(|p| [&p.chosen, &p.rejected])
        .filter_map(|i| i.load(size).err().map(|e| e.to_string()))
        .collect();
    assert_eq!(errors.len(), n(&exp["bad_image_rows"]), "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|m| m.contains("row 0 (ranking_id 1000) jpg_0") && m.contains("jpeg")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|m| m.contains("jpg_1") && m.contains("not a PNG, JPEG or WebP")),
        "{errors:?}"
    );
    // check_images finds them while loading.
    let checked = LoadOptions {
        check_images: true,
        ..Default::default()
    };
    let (_, msg) = err_text(load_pairs(&path, &checked));
    assert_contains(&msg, &["row 0", "jpg_0", "cannot decode the image"]);
    let checked_skip = LoadOptions {
        check_images: true,
        on_bad_row: OnBadRow::Skip,
        ..Default::default()
    };
    let (pairs, r) = load_pairs(&path, &checked_skip).unwrap();
    assert_eq!(pairs.len(), n(&exp["pairs_checked"]));
    assert_eq!(r.skipped(SkipReason::BadImage), n(&exp["bad_image_rows"]));

    // The same through JSONL files: a truncated PNG and a text file named .png.
    let path = bad("jsonl_bad_images.jsonl");
    let (pairs, _) = load_pairs(&path, &LoadOptions::default()).unwrap();
    let e = pairs[1].chosen.load(size).unwrap_err().to_string();
    assert_contains(&e, &["truncated.png", "cannot decode the image", "png"]);
    let e = pairs[2].rejected.load(size).unwrap_err().to_string();
    assert_contains(
        &e,
        &["not_an_image.png", "not a PNG, JPEG or WebP", "68 65 6c 6c"],
    );
    let (pairs, r) = load_pairs(&path, &checked_skip).unwrap();
    assert_eq!(pairs.len(), 1);
    assert_eq!(r.skipped(SkipReason::BadImage), 2);
    assert_eq!(
        pairs[0].chosen.content_hash().unwrap(),
        expected()["bad"]["jsonl"]["ok_sha256"].as_str().unwrap()
    );
}

#[test]
fn jsonl_bad_lines_are_errors_or_counted_skips() {
    let (e, msg) = err_text(load_pairs(
        &bad("jsonl_bad_line.jsonl"),
        &LoadOptions::default(),
    ));
    assert!(matches!(e, DataError::BadRow { .. }));
    assert_contains(
        &msg,
        &["jsonl_bad_line.jsonl line 2", "invalid JSON", "Fix:"],
    );
    let (pairs, r) = load_pairs(&bad("jsonl_bad_line.jsonl"), &skip()).unwrap();
    assert_eq!(
        (pairs.len(), r.skipped(SkipReason::BadJson), r.rows_read),
        (2, 1, 3)
    );

    let (_, msg) = err_text(load_pairs(
        &bad("jsonl_missing_field.jsonl"),
        &LoadOptions::default(),
    ));
    assert_contains(&msg, &["line 2", "field `rejected`", "missing"]);
    let (pairs, r) = load_pairs(&bad("jsonl_missing_field.jsonl"), &skip()).unwrap();
    assert_eq!(pairs.len(), 2);
    assert_eq!(r.skipped(SkipReason::MissingField), 1);
    assert_eq!(r.skipped(SkipReason::BadValue), 1);
    assert!(r
        .examples
        .iter()
        .any(|m| m.contains("line 3") && m.contains("is 5, not a string")));

    let (e, msg) = err_text(load_pairs(
        &bad("jsonl_missing_image.jsonl"),
        &LoadOptions::default(),
    ));
    assert!(matches!(e, DataError::MissingImage { .. }));
    assert_contains(
        &msg,
        &["line 2, field `chosen`", "images/nope.png", "not found"],
    );
    let (pairs, r) = load_pairs(&bad("jsonl_missing_image.jsonl"), &skip()).unwrap();
    assert_eq!((pairs.len(), r.skipped(SkipReason::MissingImage)), (1, 1));
}

#[test]
fn corrupted_files_give_errors_never_panics() {
    // Deterministic byte flips and truncations of every kind of input file; each load must
    // return (Ok or Err) without a panic escaping.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let tmp = tempfile::tempdir().unwrap();
    let sources = [
        ("pickapic.parquet", data_dir().join("pickapic.parquet")),
        (
            "metadata-validation.parquet",
            data_dir().join("imagereward/metadata-validation.parquet"),
        ),
        ("a.png", data_dir().join("jsonl_images/a_rgb.png")),
        ("c.jpg", data_dir().join("jsonl_images/c_photo.jpg")),
        ("d.webp", data_dir().join("jsonl_images/d_art.webp")),
    ];
    for (name, src) in sources {
        let original = std::fs::read(&src).unwrap();
        for round in 0..40 {
            let mut bytes = original.clone();
            if round % 4 == 3 {
                bytes.truncate((next() as usize) % bytes.len());
            } else {
                for _ in 0..1 + round % 3 {
                    let i = (next() as usize) % bytes.len();
                    bytes[i] ^= 1 << (next() % 8);
                }
            }
            let path = tmp.path().join(name);
            std::fs::write(&path, &bytes).unwrap();
            if name.ends_with(".parquet") {
                let _ = load_pairs(&path, &skip());
            } else {
                let _ = ImageSource::File(path).load(ImageSize::square(8));
            }
        }
    }
}
