//! Refusals: oversized, corrupt, truncated and foreign inputs; chains and outputs beyond the
//! limits. `tests/allocation.rs` shows the oversized ones are refused before any pixel buffer.

mod common;

use common::{jpeg, noise, png, png_chunk, png_header, smooth_rgb, webp};
use shoal_imaging::{
    Format, ImageError, Limits, Pipeline, check, probe, process, worst_case_output_bytes,
};

fn default_process(bytes: &[u8]) -> Result<shoal_imaging::Processed, ImageError> {
    process(bytes, &Pipeline::default(), None, &Limits::default())
}

fn message(result: Result<impl std::fmt::Debug, ImageError>) -> (&'static str, String) {
    let error = result.expect_err("must be refused");
    (error.code(), error.to_string())
}

#[test]
fn a_png_header_claiming_50000_squared_is_too_large() {
    let mut bomb = png_header(50_000, 50_000);
    bomb.extend(png_chunk(b"IDAT", &[0x78, 0x01, 0, 0, 0, 0]));
    let expected = (
        "too_large",
        "the image is 50000x50000 = 2.5 GP; at most 40 MP allowed".to_owned(),
    );
    assert_eq!(message(probe(&bomb, &Limits::default())), expected);
    assert_eq!(message(default_process(&bomb)), expected);
}

#[test]
fn a_jpeg_or_webp_header_claiming_too_many_pixels_is_too_large() {
    // A real JPEG whose SOF0 is patched to 60000x60000.
    let mut big_jpeg = jpeg(&smooth_rgb(16, 16), 90);
    let sof = big_jpeg
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("baseline SOF0");
    big_jpeg[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
    let (code, text) = message(probe(&big_jpeg, &Limits::default()));
    assert_eq!(code, "too_large");
    assert_eq!(
        text,
        "the image is 60000x60000 = 3.6 GP; at most 40 MP allowed"
    );

    // A lossless WebP whose VP8L header is patched to 16383x16383 (image-webp reads 16384,
    // the format's largest size, as 0).
    let mut big_webp = webp(&noise(image::ColorType::Rgb8, 4, 4, 1));
    assert_eq!(&big_webp[12..16], b"VP8L");
    let bits = u32::from_le_bytes(big_webp[21..25].try_into().expect("4 bytes"));
    let patched = (bits & !((1 << 28) - 1)) | 16_382 | (16_382 << 14);
    big_webp[21..25].copy_from_slice(&patched.to_le_bytes());
    let (code, text) = message(probe(&big_webp, &Limits::default()));
    assert_eq!(code, "too_large");
    assert_eq!(
        text,
        "the image is 16383x16383 = 268.4 MP; at most 40 MP allowed"
    );
    assert_eq!(message(default_process(&big_webp)).0, "too_large");
}

#[test]
fn the_pixel_limit_is_configurable() {
    let input = png(&noise(image::ColorType::Rgb8, 11, 10, 2));
    let small = Limits { max_pixels: 100 };
    assert_eq!(
        message(probe(&input, &small)),
        (
            "too_large",
            "the image is 11x10 = 110 pixels; at most 100 pixels allowed".to_owned()
        )
    );
    assert!(probe(&input, &Limits { max_pixels: 110 }).is_ok());
}

#[test]
fn corrupt_pixel_data_after_a_valid_header_is_invalid() {
    let input = png(&noise(image::ColorType::Rgb8, 64, 64, 3));
    let mut corrupt = input.clone();
    let middle = corrupt.len() / 2;
    for byte in &mut corrupt[middle..middle + 64] {
        *byte ^= 0x5A;
    }
    assert!(
        probe(&corrupt, &Limits::default()).is_ok(),
        "the header is intact"
    );
    let (code, text) = message(default_process(&corrupt));
    assert_eq!(code, "invalid");
    assert!(text.starts_with("the PNG data is corrupt"), "{text}");

    let truncated = &input[..input.len() / 2];
    assert!(probe(truncated, &Limits::default()).is_ok());
    let (code, text) = message(default_process(truncated));
    assert_eq!(code, "invalid", "{text}");
    assert!(text.starts_with("the PNG data"), "{text}");

    let webp_input = webp(&noise(image::ColorType::Rgba8, 64, 64, 4));
    let truncated = &webp_input[..webp_input.len() / 2];
    assert_eq!(message(default_process(truncated)).0, "invalid");
}

#[test]
fn corrupt_headers_are_invalid() {
    // A JPEG signature followed by garbage.
    let (code, text) = message(probe(
        b"\xFF\xD8\xFF\xE0garbage garbage garbage",
        &Limits::default(),
    ));
    assert_eq!(code, "invalid", "{text}");
    // A PNG whose IHDR CRC is wrong.
    let mut png_input = png(&noise(image::ColorType::Rgb8, 4, 4, 5));
    png_input[29] ^= 0xFF;
    assert_eq!(message(probe(&png_input, &Limits::default())).0, "invalid");
    // A RIFF/WEBP container with nothing inside.
    assert_eq!(
        message(probe(b"RIFF\x04\0\0\0WEBP", &Limits::default())).0,
        "invalid"
    );
}

#[test]
fn other_formats_and_non_images_are_unsupported() {
    let gif = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;";
    assert_eq!(
        message(probe(gif, &Limits::default())),
        (
            "unsupported",
            "GIF images are not supported; upload a PNG, JPEG or WebP image".to_owned()
        )
    );
    assert_eq!(message(default_process(gif)).0, "unsupported");
    assert_eq!(
        message(probe(b"%PDF-1.7\n", &Limits::default())).0,
        "unsupported"
    );
    assert_eq!(
        message(probe(b"", &Limits::default())),
        (
            "unsupported",
            "the data is empty; expected a PNG, JPEG or WebP image".to_owned()
        )
    );
    assert_eq!(message(default_process(b"")).0, "unsupported");
}

#[test]
fn chains_are_checked_at_every_stage() {
    let input = png(&noise(image::ColorType::Rgb8, 100, 100, 6));
    let info = probe(&input, &Limits::default()).expect("probes");
    let limits = Limits::default();
    let chain = |text: &str| Pipeline::parse(text).expect("valid");

    assert!(check(&info, &chain("resize:6000x6000"), None, &limits).is_ok());
    let (code, text) = message(check(&info, &chain("resize:10000x10000"), None, &limits));
    assert_eq!(code, "too_large");
    assert_eq!(
        text,
        "after \"resize:10000x10000\" the image would be 10000x10000 = 100 MP; at most 40 MP \
         allowed"
    );
    // An intermediate result counts even when the final one is small.
    let (code, _) = message(check(
        &info,
        &chain("resize:10000x10000,thumbnail:100"),
        None,
        &limits,
    ));
    assert_eq!(code, "too_large");
    // `process` runs the same check before decoding.
    assert_eq!(
        message(process(&input, &chain("resize:10000x10000"), None, &limits)).0,
        "too_large"
    );
}

#[test]
fn outputs_must_fit_their_format() {
    let input = png(&noise(image::ColorType::Rgb8, 200, 2, 7));
    let info = probe(&input, &Limits::default()).expect("probes");
    let chain = Pipeline::parse("resize:20000x20000").expect("valid");
    // 20000x200 = 4 MP: within the pixel limit, too wide for WebP, fine for PNG and JPEG.
    assert!(check(&info, &chain, Some(Format::Png), &Limits::default()).is_ok());
    assert!(check(&info, &chain, Some(Format::Jpeg), &Limits::default()).is_ok());
    assert_eq!(
        message(check(&info, &chain, Some(Format::WebP), &Limits::default())),
        (
            "too_large",
            "the result would be 20000x200; a WebP image can be at most 16383 pixels wide and \
             high"
                .to_owned()
        )
    );
    let tall = Pipeline::parse("rotate:90,resize:70000x65535").map(|_| ());
    assert!(tall.is_err(), "resize arguments stop at 65535");
}

#[test]
fn processing_a_small_image_with_every_output() {
    let input = png(&noise(image::ColorType::Rgba8, 30, 20, 8));
    let info = probe(&input, &Limits::default()).expect("probes");
    let chain = Pipeline::parse("rotate:90,thumbnail:10").expect("valid");
    for output in [
        None,
        Some(Format::Png),
        Some(Format::Jpeg),
        Some(Format::WebP),
    ] {
        let result = process(&input, &chain, output, &Limits::default()).expect("processes");
        assert_eq!(result.format, output.unwrap_or(Format::Png));
        assert_eq!((result.width, result.height), (7, 10));
        assert_eq!(Format::from_magic(&result.bytes), Some(result.format));
        assert!(result.bytes.len() as u64 <= worst_case_output_bytes(&info, &chain, output));
    }
}

#[test]
fn the_api_is_unwind_safe() {
    fn unwind_safe<T: std::panic::UnwindSafe>(_: &T) {}
    let input = png(&noise(image::ColorType::Rgb8, 4, 4, 9));
    let pipeline = Pipeline::default();
    let limits = Limits::default();
    // No AssertUnwindSafe needed: every argument is borrowed, immutable data.
    let call = || process(&input, &pipeline, Some(Format::Png), &limits);
    unwind_safe(&call);
    let result = std::panic::catch_unwind(call).expect("no panic");
    assert!(result.is_ok());
}
