//! `worst_case_output_bytes` is an upper bound of what `process` produces, tested on random
//! noise (which no encoder can compress) in every layout and output format.

mod common;

use common::{LAYOUTS, decode, fake_icc_profile, noise, png};
use image::codecs::png::PngEncoder;
use image::{ImageDecoder, ImageEncoder};
use shoal_imaging::{Format, Limits, Pipeline, probe, process, worst_case_output_bytes};

const OUTPUTS: [Format; 3] = [Format::Png, Format::Jpeg, Format::WebP];

fn size_and_bound(input: &[u8], ops: &str, output: Format) -> (u64, u64) {
    let pipeline = Pipeline::parse(ops).expect("valid");
    let info = probe(input, &Limits::default()).expect("probes");
    let bound = worst_case_output_bytes(&info, &pipeline, Some(output));
    let result = process(input, &pipeline, Some(output), &Limits::default())
        .unwrap_or_else(|error| panic!("{ops} to {output}: {error}"));
    (result.bytes.len() as u64, bound)
}

#[test]
fn noise_never_exceeds_the_bound() {
    for (seed, color) in (1..).zip(LAYOUTS) {
        for (width, height) in [(1, 1), (9, 7), (257, 3), (130, 101)] {
            let input = png(&noise(color, width, height, seed));
            for output in OUTPUTS {
                for ops in ["invert", "rotate:90", "grayscale", "flip:v,swap-rg"] {
                    let (size, bound) = size_and_bound(&input, ops, output);
                    assert!(
                        size <= bound,
                        "{color:?} {width}x{height} {ops} to {output}: {size} > {bound}"
                    );
                    if output == Format::Png && width * height > 1000 {
                        // Incompressible: stored, so the bound is exact.
                        assert_eq!(size, bound, "{color:?} {width}x{height} {ops}");
                    }
                }
            }
        }
    }
}

#[test]
fn bound_to_size_ratio_on_noise() {
    // How loose each bound is on the worst realistic content (printed with --nocapture).
    for color in [
        image::ColorType::Rgb8,
        image::ColorType::Rgba8,
        image::ColorType::L8,
    ] {
        let input = png(&noise(color, 512, 512, 42));
        for output in OUTPUTS {
            let (size, bound) = size_and_bound(&input, "swap-rg", output);
            assert!(size <= bound);
            println!(
                "{color:?} 512x512 noise to {output}: {size} bytes, bound {bound} ({:.2}x), {:.2} bytes/pixel",
                bound as f64 / size as f64,
                size as f64 / (512.0 * 512.0)
            );
        }
    }
}

fn png_with_icc(image: &image::DynamicImage, profile: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = PngEncoder::new(&mut out);
    encoder
        .set_icc_profile(profile.to_vec())
        .expect("PNG takes ICC profiles");
    encoder
        .write_image(
            image.as_bytes(),
            image.width(),
            image.height(),
            image.color().into(),
        )
        .expect("encodes");
    out
}

fn icc_of(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut decoder = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .expect("readable")
        .into_decoder()
        .expect("decoder");
    decoder.icc_profile().expect("readable profile")
}

#[test]
fn a_matching_icc_profile_is_kept_and_counted() {
    let profile = fake_icc_profile(b"RGB ", 3000);
    let input = png_with_icc(&noise(image::ColorType::Rgba8, 40, 30, 5), &profile);
    let info = probe(&input, &Limits::default()).expect("probes");
    assert_eq!(info.icc_profile_len, 3000);
    for output in OUTPUTS {
        let (size, bound) = size_and_bound(&input, "invert", output);
        assert!(size <= bound, "{output}: {size} > {bound}");
        let result = process(
            &input,
            &Pipeline::default(),
            Some(output),
            &Limits::default(),
        )
        .expect("processes");
        assert_eq!(
            icc_of(&result.bytes).as_deref(),
            Some(profile.as_slice()),
            "{output}"
        );
        // Still a readable image.
        assert_eq!(decode(&result.bytes).width(), 40);
    }
    // Grayscale makes an RGB profile wrong for the result: it is dropped.
    let result = process(
        &input,
        &Pipeline::parse("grayscale").expect("valid"),
        None,
        &Limits::default(),
    )
    .expect("processes");
    assert_eq!(icc_of(&result.bytes), None);
}

#[test]
fn a_profile_for_another_colour_model_is_dropped() {
    let cmyk = fake_icc_profile(b"CMYK", 500);
    let input = png_with_icc(&noise(image::ColorType::Rgb8, 8, 8, 6), &cmyk);
    assert_eq!(
        probe(&input, &Limits::default())
            .expect("probes")
            .icc_profile_len,
        0
    );
    let result =
        process(&input, &Pipeline::default(), None, &Limits::default()).expect("processes");
    assert_eq!(icc_of(&result.bytes), None);
}
