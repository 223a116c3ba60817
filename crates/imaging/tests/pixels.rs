//! Pixel-by-pixel correctness of every operation for every layout: build an image, encode it,
//! run `process`, decode the result and compare with a reference computed here.

mod common;

use common::{LAYOUTS, Raw, decode, from_samples, jpeg, noise, png, smooth_rgb, webp};
use image::DynamicImage;
use shoal_imaging::{Format, Limits, Pipeline, Processed, process};

const EXACT_OPS: [&str; 9] = [
    "swap-rg",
    "grayscale",
    "invert",
    "rotate:90",
    "rotate:180",
    "rotate:270",
    "flip:h",
    "flip:v",
    "flip:h,swap-rg,rotate:90,invert,rotate:180,grayscale,flip:v",
];

fn run(input: &[u8], ops: &str, output: Option<Format>) -> Processed {
    let pipeline = Pipeline::parse(ops).expect("valid chain");
    process(input, &pipeline, output, &Limits::default())
        .unwrap_or_else(|error| panic!("{ops}: {error}"))
}

fn reference(input: &Raw, ops: &str) -> Raw {
    ops.split(',').fold(input.clone(), |raw, op| raw.apply(op))
}

#[test]
fn png_every_layout_every_op_is_exact() {
    for (seed, color) in (1..).zip(LAYOUTS) {
        let image = noise(color, 7, 5, seed);
        let input = png(&image);
        let original = Raw::of(&image);
        assert_eq!(Raw::of(&decode(&input)), original, "{color:?} survives PNG");
        for ops in EXACT_OPS {
            let result = run(&input, ops, None);
            assert_eq!(result.format, Format::Png);
            let output = Raw::of(&decode(&result.bytes));
            let expected = reference(&original, ops);
            assert_eq!(output, expected, "{color:?} {ops}");
            assert_eq!(
                (result.width, result.height),
                (expected.width, expected.height)
            );
        }
    }
}

#[test]
fn default_chain_swaps_red_and_green_and_keeps_alpha_and_depth() {
    let image = from_samples(
        image::ColorType::Rgba16,
        2,
        1,
        vec![
            1000, 60_000, 30_000, 0, //
            65_535, 1, 2, 12_345,
        ],
    );
    let result =
        process(&png(&image), &Pipeline::default(), None, &Limits::default()).expect("processes");
    let output = decode(&result.bytes);
    let samples = output
        .as_rgba16()
        .expect("still 16-bit RGBA")
        .as_raw()
        .clone();
    assert_eq!(samples, vec![60_000, 1000, 30_000, 0, 1, 65_535, 2, 12_345]);
}

#[test]
fn webp_lossless_every_op_is_exact() {
    for (seed, color) in (100..).zip([
        image::ColorType::Rgb8,
        image::ColorType::Rgba8,
        image::ColorType::L8,
    ]) {
        let image = noise(color, 9, 4, seed);
        let input = webp(&image);
        // WebP has no gray layout: a gray image decodes as RGB with R = G = B.
        let original = Raw::of(&decode(&input));
        for ops in EXACT_OPS {
            let result = run(&input, ops, None);
            assert_eq!(result.format, Format::WebP);
            let output = Raw::of(&decode(&result.bytes));
            let mut expected = reference(&original, ops);
            if ops.contains("grayscale") {
                // Written as gray, read back as RGB (or RGBA).
                expected = Raw {
                    channels: output.channels,
                    samples: expected
                        .samples
                        .chunks_exact(expected.channels)
                        .flat_map(|p| {
                            let mut rgb = vec![p[0], p[0], p[0]];
                            rgb.extend_from_slice(&p[1..]);
                            rgb
                        })
                        .collect(),
                    ..expected
                };
            }
            assert_eq!(output, expected, "{color:?} {ops}");
        }
    }
}

#[test]
fn sixteen_bit_to_webp_rounds_to_eight_bits_and_keeps_alpha() {
    let image = noise(image::ColorType::Rgba16, 6, 6, 7);
    let result = run(&png(&image), "invert", Some(Format::WebP));
    assert_eq!(result.format, Format::WebP);
    let output = Raw::of(&decode(&result.bytes));
    assert_eq!(output, reference(&Raw::of(&image), "invert").to_8bit());

    let gray = noise(image::ColorType::La16, 5, 3, 8);
    let result = run(&png(&gray), "swap-rg", Some(Format::WebP));
    let output = Raw::of(&decode(&result.bytes));
    let expected = Raw::of(&gray).to_8bit();
    for (out, exp) in output
        .samples
        .chunks_exact(4)
        .zip(expected.samples.chunks_exact(2))
    {
        assert_eq!(out, [exp[0], exp[0], exp[0], exp[1]]);
    }
}

/// JPEG is lossy: results are compared with the reference within a mean absolute error, on
/// smooth content (noise would measure the codec, not the operation).
const JPEG_TOLERANCE: f64 = 1.5;

#[test]
fn jpeg_ops_are_within_tolerance() {
    let input = jpeg(&smooth_rgb(64, 40), 95);
    let original = Raw::of(&decode(&input));
    for ops in EXACT_OPS {
        let result = run(&input, ops, None);
        assert_eq!(result.format, Format::Jpeg);
        let output = Raw::of(&decode(&result.bytes));
        let expected = reference(&original, ops);
        let error = output.mean_abs_error(&expected);
        assert!(error <= JPEG_TOLERANCE, "{ops}: mean abs error {error}");
    }
}

#[test]
fn png_to_jpeg_flattens_alpha_onto_white_and_rounds_16_bits() {
    let smooth = smooth_rgb(48, 32);
    let rgba = DynamicImage::ImageRgba16(image::ImageBuffer::from_fn(48, 32, |x, y| {
        let p = smooth.as_rgb8().expect("rgb").get_pixel(x, y);
        // Alpha from transparent (left) to opaque (right).
        let alpha = u16::try_from(x * 65_535 / 47).expect("fits");
        image::Rgba([
            u16::from(p[0]) * 257,
            u16::from(p[1]) * 257,
            u16::from(p[2]) * 257,
            alpha,
        ])
    }));
    let result = run(&png(&rgba), "swap-rg", Some(Format::Jpeg));
    assert_eq!(result.format, Format::Jpeg);
    let output = decode(&result.bytes);
    assert_eq!(output.color(), image::ColorType::Rgb8);
    let swapped = reference(&Raw::of(&rgba), "swap-rg");
    let flattened = Raw {
        channels: 3,
        alpha: false,
        max: 255,
        samples: swapped
            .samples
            .chunks_exact(4)
            .flat_map(|p| {
                let a = f64::from(p[3]) / 65_535.0;
                p[..3]
                    .iter()
                    .map(|&c| ((f64::from(c) / 257.0) * a + 255.0 * (1.0 - a)).round() as u16)
                    .collect::<Vec<_>>()
            })
            .collect(),
        ..swapped
    };
    let error = Raw::of(&output).mean_abs_error(&flattened);
    assert!(error <= JPEG_TOLERANCE, "mean abs error {error}");
    // The fully transparent column is white.
    let left = output.to_rgb8().get_pixel(0, 16).0;
    assert!(left.iter().all(|&v| v >= 250), "{left:?}");
}

#[test]
fn gray_jpeg_output_for_gray_and_grayscale() {
    let input = jpeg(&smooth_rgb(32, 32), 95);
    let result = run(&input, "grayscale", None);
    assert_eq!(decode(&result.bytes).color(), image::ColorType::L8);

    let gray16 = noise(image::ColorType::L16, 16, 16, 9);
    let result = run(&png(&gray16), "invert", Some(Format::Jpeg));
    assert_eq!(decode(&result.bytes).color(), image::ColorType::L8);
}

#[test]
fn resize_of_flat_images_is_exact_in_every_layout() {
    for color in LAYOUTS {
        let channels = usize::from(color.channel_count());
        let wide = color.bytes_per_pixel() / color.channel_count() == 2;
        // Opaque: premultiplied 8-bit resampling cannot keep colours exact under low alpha
        // (see `resize_keeps_flat_translucent_colours_as_composited` for that case).
        let base: &[u16] = match channels {
            2 => &[40_000, 65_535],
            _ => &[40_000, 1234, 65_000, 65_535],
        };
        let pixel: Vec<u16> = base[..channels]
            .iter()
            .map(|&v| if wide { v } else { v / 257 })
            .collect();
        let samples = pixel
            .iter()
            .copied()
            .cycle()
            .take(40 * 30 * channels)
            .collect();
        let image = from_samples(color, 40, 30, samples);
        for ops in [
            "resize:13x9",
            "resize:100x100",
            "thumbnail:7",
            "blur:1.5",
            "blur:20",
        ] {
            let result = run(&png(&image), ops, None);
            let output = Raw::of(&decode(&result.bytes));
            assert!(
                output
                    .samples
                    .chunks_exact(channels)
                    .all(|p| p == pixel.as_slice()),
                "{color:?} {ops}: {:?}",
                &output.samples[..channels]
            );
        }
    }
}

#[test]
fn resize_keeps_flat_translucent_colours_as_composited() {
    for (color, alpha) in [
        (image::ColorType::Rgba8, 4u16),
        (image::ColorType::Rgba8, 128),
        (image::ColorType::Rgba16, 1000),
    ] {
        let max: u16 = if color == image::ColorType::Rgba8 {
            255
        } else {
            65_535
        };
        let pixel = [
            u16::try_from(u32::from(max) * 3 / 5).expect("fits"),
            max / 7,
            max,
            alpha,
        ];
        let samples = pixel.iter().copied().cycle().take(40 * 30 * 4).collect();
        let image = from_samples(color, 40, 30, samples);
        for ops in ["resize:13x9", "blur:1.5", "blur:20"] {
            let result = run(&png(&image), ops, None);
            let output = Raw::of(&decode(&result.bytes));
            for p in output.samples.chunks_exact(4) {
                assert_eq!(p[3], alpha, "{color:?} {ops}: alpha kept");
                for c in 0..3 {
                    // What the pixel contributes when composited: colour times alpha, in units
                    // of the largest value; off by at most one unit.
                    let composed = |v: u16| f64::from(v) * f64::from(alpha) / f64::from(max);
                    let difference = (composed(p[c]) - composed(pixel[c])).abs();
                    assert!(difference <= 1.0, "{color:?} {ops}: {p:?} vs {pixel:?}");
                }
            }
        }
    }
}

#[test]
fn resize_dimensions_keep_aspect_ratio() {
    let input = png(&noise(image::ColorType::Rgb8, 40, 30, 3));
    for (ops, size) in [
        ("resize:20x20", (20, 15)),
        ("resize:80x80", (80, 60)),
        ("thumbnail:16", (16, 12)),
        ("thumbnail:100", (40, 30)),
        ("rotate:90,resize:15x100", (15, 20)),
    ] {
        let result = run(&input, ops, None);
        assert_eq!((result.width, result.height), size, "{ops}");
        assert_eq!(decode(&result.bytes).width(), size.0);
    }
    // A thumbnail of an image that already fits is the image itself, pixel for pixel.
    let result = run(&input, "thumbnail:100", None);
    assert_eq!(Raw::of(&decode(&result.bytes)), Raw::of(&decode(&input)));
}

#[test]
fn resize_agrees_with_the_image_crate_on_opaque_images() {
    let image = smooth_rgb(120, 90);
    for (ops, (w, h)) in [("resize:50x50", (50, 38)), ("resize:200x200", (200, 150))] {
        let result = run(&png(&image), ops, None);
        let ours = Raw::of(&decode(&result.bytes));
        let theirs = Raw::of(&image.resize_exact(w, h, image::imageops::FilterType::Lanczos3));
        let error = ours.mean_abs_error(&theirs);
        assert!(error <= 1.0, "{ops}: mean abs error {error}");
    }
}

#[test]
fn resize_and_blur_keep_16_bit_precision() {
    let smooth = smooth_rgb(64, 64).to_rgb16();
    // Offsets that 8 bits cannot carry.
    let fine = DynamicImage::ImageRgb16(image::ImageBuffer::from_fn(64, 64, |x, y| {
        let p = smooth.get_pixel(x, y);
        image::Rgb([p[0] + 100, p[1] + 37, p[2].saturating_sub(11)])
    }));
    for ops in ["resize:30x30", "blur:1", "blur:8"] {
        let result = run(&png(&fine), ops, None);
        let output = decode(&result.bytes);
        let samples = output.as_rgb16().expect("16-bit kept").as_raw().clone();
        let off_grid = samples.iter().filter(|&&v| v % 257 != 0).count();
        assert!(
            off_grid > samples.len() / 2,
            "{ops}: only {off_grid} values off the 8-bit grid"
        );
    }
}

#[test]
fn resize_and_blur_do_not_bleed_hidden_colour() {
    // Left: opaque blue; right: fully transparent with hidden red.
    let image = DynamicImage::ImageRgba8(image::ImageBuffer::from_fn(32, 8, |x, _| {
        if x < 16 {
            image::Rgba([0, 0, 255, 255])
        } else {
            image::Rgba([255, 0, 0, 0])
        }
    }));
    for ops in ["resize:12x3", "resize:64x16", "blur:2", "blur:6"] {
        let result = run(&png(&image), ops, None);
        let output = decode(&result.bytes).to_rgba8();
        for pixel in output.pixels().filter(|p| p[3] >= 8) {
            assert!(pixel[0] <= 2 && pixel[2] >= 250, "{ops}: {pixel:?}");
        }
    }
}

#[test]
fn blur_approximates_a_gaussian() {
    let image = noise(image::ColorType::Rgb8, 80, 60, 11);
    for sigma in [1.0f32, 2.5, 3.0, 6.0] {
        let result = run(&png(&image), &format!("blur:{sigma}"), None);
        let ours = Raw::of(&decode(&result.bytes));
        let theirs = Raw::of(&image.blur(sigma));
        let error = ours.mean_abs_error(&theirs);
        assert!(error <= 1.0, "sigma {sigma}: mean abs error {error}");
    }
}

#[test]
fn tiny_images_survive_every_op() {
    for (seed, color) in (200..).zip(LAYOUTS) {
        for (width, height) in [(1, 1), (1, 5), (5, 1), (2, 3)] {
            let input = png(&noise(color, width, height, seed));
            for ops in [
                "blur:50",
                "blur:0.3",
                "blur:2.9",
                "resize:3x3",
                "resize:1x1",
                "thumbnail:1",
                "rotate:90,blur:4,flip:v",
                "resize:65535x65535,thumbnail:2",
            ] {
                for output in [None, Some(Format::Jpeg), Some(Format::WebP)] {
                    let pipeline = Pipeline::parse(ops).expect("valid");
                    let expected = pipeline.output_dimensions(width, height);
                    match process(&input, &pipeline, output, &Limits::default()) {
                        Ok(result) => {
                            assert_eq!((result.width, result.height), expected, "{ops}");
                            assert_eq!(decode(&result.bytes).width(), expected.0);
                        }
                        // Only the 65535-wide intermediate may be refused (too many pixels).
                        Err(error) => assert!(
                            ops.starts_with("resize:65535") && error.code() == "too_large",
                            "{color:?} {width}x{height} {ops}: {error}"
                        ),
                    }
                }
            }
        }
    }
}
