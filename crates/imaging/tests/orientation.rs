//! EXIF orientation is applied before the chain, reported by `probe`, and no EXIF (nor
//! anything else of the input's metadata block) reaches the result.

mod common;

use common::{
    Raw, decode, exif_orientation_segment, jpeg, jpeg_markers, noise, png, png_chunk, smooth_rgb,
    with_segment,
};
use shoal_imaging::{Format, Limits, Pipeline, probe, process};

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[test]
fn jpeg_with_orientation_6_comes_out_rotated_and_without_exif() {
    // 32 wide, 16 high as stored; orientation 6 means "rotate 90° clockwise to display".
    let stored = smooth_rgb(32, 16);
    let plain = jpeg(&stored, 95);
    let input = with_segment(&plain, &exif_orientation_segment(6));
    assert!(
        jpeg_markers(&input).contains(&0xE1),
        "the test input has an APP1 segment"
    );
    assert!(contains(&input, b"Exif\0\0"));

    let info = probe(&input, &Limits::default()).expect("probes");
    assert_eq!(
        (info.width, info.height),
        (16, 32),
        "probe reports the displayed size"
    );
    assert_eq!(info.format, Format::Jpeg);

    let result =
        process(&input, &Pipeline::default(), None, &Limits::default()).expect("processes");
    assert_eq!((result.width, result.height), (16, 32));
    assert!(
        !jpeg_markers(&result.bytes).contains(&0xE1),
        "no APP1 segment in the result"
    );
    assert!(!contains(&result.bytes, b"Exif"));
    assert!(!contains(&result.bytes, b"GPS"));

    let output = Raw::of(&decode(&result.bytes));
    let expected = Raw::of(&decode(&plain)).apply("rotate:90").apply("swap-rg");
    let error = output.mean_abs_error(&expected);
    assert!(error <= 1.5, "mean abs error {error}");

    // Converted to PNG: no eXIf chunk either.
    let result = process(
        &input,
        &Pipeline::default(),
        Some(Format::Png),
        &Limits::default(),
    )
    .expect("processes");
    assert!(!contains(&result.bytes, b"eXIf") && !contains(&result.bytes, b"Exif"));
    assert_eq!(decode(&result.bytes).width(), 16);
}

/// A PNG with an eXIf chunk (right after IHDR) holding the given orientation.
fn png_with_orientation(image: &image::DynamicImage, orientation: u16) -> Vec<u8> {
    let plain = png(image);
    let segment = exif_orientation_segment(orientation);
    // The eXIf chunk holds the TIFF data: the APP1 payload without marker, length and "Exif\0\0".
    let tiff = &segment[2 + 2 + 6..];
    let ihdr_end = 8 + 25;
    let mut out = plain[..ihdr_end].to_vec();
    out.extend(png_chunk(b"eXIf", tiff));
    out.extend_from_slice(&plain[ihdr_end..]);
    out
}

#[test]
fn all_eight_orientations_are_applied_exactly() {
    let image = noise(image::ColorType::Rgba16, 5, 3, 21);
    let original = Raw::of(&image);
    let cases: [(u16, &[&str]); 8] = [
        (1, &[]),
        (2, &["flip:h"]),
        (3, &["rotate:180"]),
        (4, &["flip:v"]),
        (5, &["rotate:90", "flip:h"]),
        (6, &["rotate:90"]),
        (7, &["rotate:270", "flip:h"]),
        (8, &["rotate:270"]),
    ];
    for (orientation, ops) in cases {
        let input = png_with_orientation(&image, orientation);
        let info = probe(&input, &Limits::default()).expect("probes");
        let expected = ops.iter().fold(original.clone(), |raw, op| raw.apply(op));
        assert_eq!(
            (info.width, info.height),
            (expected.width, expected.height),
            "{orientation}"
        );
        let result = process(
            &input,
            &Pipeline::parse("invert").expect("valid"),
            None,
            &Limits::default(),
        )
        .expect("processes");
        assert_eq!(
            Raw::of(&decode(&result.bytes)),
            expected.apply("invert"),
            "{orientation}"
        );
        assert!(!contains(&result.bytes, b"eXIf"));
    }
}

#[test]
fn broken_exif_is_ignored() {
    let plain = jpeg(&smooth_rgb(16, 8), 90);
    // An APP1 "Exif" segment whose TIFF header is garbage.
    let segment = [
        0xFF, 0xE1, 0x00, 0x0C, b'E', b'x', b'i', b'f', 0, 0, 1, 2, 3, 4,
    ];
    let input = with_segment(&plain, &segment);
    let info = probe(&input, &Limits::default()).expect("probes");
    assert_eq!((info.width, info.height), (16, 8));
    process(&input, &Pipeline::default(), None, &Limits::default()).expect("processes");
}
