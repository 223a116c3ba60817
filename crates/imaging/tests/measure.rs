//! Timings behind the choices in the crate docs. Run in release, on an otherwise idle machine:
//!
//! ```text
//! cargo test -p shoal-imaging --release --test measure -- --ignored --nocapture
//! ```
//!
//! Codec rows time the libraries with the settings `process` uses; operation rows are the
//! difference between a chain of 16 copies of the operation and a chain of one, divided by
//! 15, so decoding and encoding cancel out.

mod common;

use std::hint::black_box;
use std::io::Cursor;
use std::time::Instant;

use common::{jpeg, png, webp};
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{DynamicImage, ImageEncoder, ImageReader, RgbImage};
use shoal_imaging::{Format, Limits, Pipeline, process};

const RUNS: usize = 15;

fn median_ms(mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[RUNS / 2]
}

/// Smooth gradients and waves plus a little noise: compresses like a photo, not like a chart.
fn photo(width: u32, height: u32) -> RgbImage {
    let mut rng = common::Rng::new(12_345);
    RgbImage::from_fn(width, height, |x, y| {
        let noise = rng.below(17) as f32 - 8.0;
        let (xf, yf) = (x as f32, y as f32);
        let r = 120.0 + 60.0 * (xf / 37.0).sin() * (yf / 23.0).cos() + xf * 0.05 + noise;
        let g = 100.0 + 50.0 * (xf / 91.0 + yf / 57.0).sin() + yf * 0.06 + noise;
        let b = 90.0 + 70.0 * ((xf * yf).sqrt() / 29.0).cos() + noise;
        image::Rgb([
            r.clamp(0.0, 255.0) as u8,
            g.clamp(0.0, 255.0) as u8,
            b.clamp(0.0, 255.0) as u8,
        ])
    })
}

fn decode(bytes: &[u8]) -> DynamicImage {
    ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .expect("readable")
        .decode()
        .expect("decodes")
}

fn run(input: &[u8], ops: &str, output: Option<Format>) {
    let pipeline = Pipeline::parse(ops).expect("valid");
    black_box(process(input, &pipeline, output, &Limits::default()).expect("processes"));
}

#[test]
#[ignore = "a measurement, not a check; run in release with --ignored --nocapture"]
fn measure_1_megapixel() {
    let rgb = DynamicImage::ImageRgb8(photo(1000, 1000));
    let rgba16 = DynamicImage::ImageRgba16(image::ImageBuffer::from_fn(1000, 1000, |x, y| {
        let p = rgb.as_rgb8().expect("rgb").get_pixel(x, y);
        image::Rgba([
            u16::from(p[0]) * 257 + 3,
            u16::from(p[1]) * 257,
            u16::from(p[2]) * 257,
            ((x + y) % 65_536) as u16,
        ])
    }));
    let png_rgb = png(&rgb);
    let png_rgba16 = png(&rgba16);
    let jpeg_rgb = jpeg(&rgb, 90);
    let webp_rgb = webp(&rgb);

    println!("\n1 MP (1000x1000) photo-like image, release, median of {RUNS}");
    println!("| stage | ms |\n| --- | --- |");
    let row = |name: &str, ms: f64| println!("| {name} | {ms:.2} |");

    row(
        "decode PNG 8-bit RGB (png)",
        median_ms(|| {
            black_box(decode(&png_rgb));
        }),
    );
    row(
        "decode PNG 16-bit RGBA (png)",
        median_ms(|| {
            black_box(decode(&png_rgba16));
        }),
    );
    row(
        "decode JPEG q90 (zune-jpeg)",
        median_ms(|| {
            black_box(decode(&jpeg_rgb));
        }),
    );
    row(
        "decode WebP lossless (image-webp)",
        median_ms(|| {
            black_box(decode(&webp_rgb));
        }),
    );

    let encode_png = |image: &DynamicImage| {
        let mut out = Vec::new();
        PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive)
            .write_image(
                image.as_bytes(),
                image.width(),
                image.height(),
                image.color().into(),
            )
            .expect("encodes");
        out
    };
    row(
        "encode PNG Fast, adaptive filter, 8-bit RGB",
        median_ms(|| {
            black_box(encode_png(&rgb));
        }),
    );
    row(
        "encode PNG Fast, adaptive filter, 16-bit RGBA",
        median_ms(|| {
            black_box(encode_png(&rgba16));
        }),
    );
    row(
        "encode JPEG q90 4:4:4 (jpeg-encoder, AVX2)",
        median_ms(|| {
            let mut out = Vec::new();
            let mut encoder = jpeg_encoder::Encoder::new(&mut out, 90);
            encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::F_1_1);
            encoder
                .encode(rgb.as_bytes(), 1000, 1000, jpeg_encoder::ColorType::Rgb)
                .expect("encodes");
            black_box(out);
        }),
    );
    row(
        "encode JPEG q90 (image's encoder, not used)",
        median_ms(|| {
            black_box(jpeg(&rgb, 90));
        }),
    );
    row(
        "encode WebP lossless (image-webp)",
        median_ms(|| {
            black_box(webp(&rgb));
        }),
    );

    for ops in [
        "swap-rg",
        "invert",
        "flip:h",
        "rotate:90",
        "blur:1",
        "blur:2.9",
        "blur:3",
        "blur:50",
    ] {
        let one = median_ms(|| run(&png_rgb, ops, None));
        let sixteen = median_ms(|| run(&png_rgb, &vec![ops; 16].join(","), None));
        row(&format!("op {ops}, 8-bit RGB"), (sixteen - one) / 15.0);
    }
    for ops in ["swap-rg", "blur:3"] {
        let one = median_ms(|| run(&png_rgba16, ops, None));
        let sixteen = median_ms(|| run(&png_rgba16, &vec![ops; 16].join(","), None));
        row(&format!("op {ops}, 16-bit RGBA"), (sixteen - one) / 15.0);
    }
    row(
        "image::imageops blur sigma 3 (not used)",
        median_ms(|| {
            black_box(rgb.blur(3.0));
        }),
    );
    row(
        "image::imageops blur sigma 50 (not used)",
        median_ms(|| {
            black_box(rgb.blur(50.0));
        }),
    );
    row(
        "resize 1000x1000 -> 500x500, fir Lanczos3, 8-bit RGB",
        median_ms(|| {
            let mut out = DynamicImage::new(500, 500, rgb.color());
            fast_image_resize::Resizer::new()
                .resize(&rgb, &mut out, None)
                .expect("resizes");
            black_box(out);
        }),
    );
    row(
        "resize 1000x1000 -> 500x500, image Lanczos3 (not used)",
        median_ms(|| {
            black_box(rgb.resize_exact(500, 500, image::imageops::FilterType::Lanczos3));
        }),
    );

    for (name, input, ops, output) in [
        ("PNG -> PNG, swap-rg", &png_rgb, "swap-rg", None),
        (
            "PNG 16-bit RGBA -> PNG, swap-rg",
            &png_rgba16,
            "swap-rg",
            None,
        ),
        ("JPEG -> JPEG, swap-rg", &jpeg_rgb, "swap-rg", None),
        ("WebP -> WebP, swap-rg", &webp_rgb, "swap-rg", None),
        (
            "PNG -> JPEG, swap-rg",
            &png_rgb,
            "swap-rg",
            Some(Format::Jpeg),
        ),
        (
            "JPEG -> JPEG, resize:800x600,grayscale",
            &jpeg_rgb,
            "resize:800x600,grayscale",
            None,
        ),
        (
            "JPEG -> JPEG, thumbnail:256",
            &jpeg_rgb,
            "thumbnail:256",
            None,
        ),
    ] {
        row(
            &format!("process {name}"),
            median_ms(|| run(input, ops, output)),
        );
    }
}
