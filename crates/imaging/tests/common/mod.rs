//! Helpers shared by the integration tests: synthetic images, encoders for inputs, a decoder
//! for outputs, and a layout-independent pixel representation with reference operations.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{DynamicImage, ImageBuffer, ImageEncoder, ImageReader};

/// A small deterministic generator (xorshift64*), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, bound: u32) -> u32 {
        u32::try_from(self.next_u64() % u64::from(bound)).expect("below a u32")
    }
}

/// The eight layouts shoal handles.
pub const LAYOUTS: [image::ColorType; 8] = [
    image::ColorType::L8,
    image::ColorType::La8,
    image::ColorType::Rgb8,
    image::ColorType::Rgba8,
    image::ColorType::L16,
    image::ColorType::La16,
    image::ColorType::Rgb16,
    image::ColorType::Rgba16,
];

/// Random pixels in the given layout; alpha includes 0 and fully opaque values.
pub fn noise(color: image::ColorType, width: u32, height: u32, seed: u64) -> DynamicImage {
    let mut rng = Rng::new(seed);
    let channels = usize::from(color.channel_count());
    let wide = color.bytes_per_pixel() / color.channel_count() == 2;
    let count = width as usize * height as usize * channels;
    let mut sample = |i: usize| -> u16 {
        let alpha = color.has_alpha() && i % channels == channels - 1;
        let max = if wide { 65_535 } else { 255 };
        match rng.below(8) {
            0 if alpha => 0,
            1 if alpha => max,
            _ => u16::try_from(rng.below(u32::from(max) + 1)).expect("fits"),
        }
    };
    let samples: Vec<u16> = (0..count).map(&mut sample).collect();
    from_samples(color, width, height, samples)
}

/// A smooth, photo-like RGB image (gradients and low-frequency waves), which JPEG keeps well.
pub fn smooth_rgb(width: u32, height: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(ImageBuffer::from_fn(width, height, |x, y| {
        let (xf, yf) = (x as f32, y as f32);
        let r = 128.0 + 90.0 * (xf / 23.0).sin() * (yf / 31.0).cos();
        let g = 60.0 + 150.0 * xf / width as f32;
        let b = 200.0 - 150.0 * yf / height as f32;
        image::Rgb([r as u8, g as u8, b as u8])
    }))
}

/// Builds an image from samples stored as u16 (8-bit layouts use 0..=255).
pub fn from_samples(
    color: image::ColorType,
    width: u32,
    height: u32,
    samples: Vec<u16>,
) -> DynamicImage {
    let narrow = |samples: Vec<u16>| -> Vec<u8> {
        samples
            .into_iter()
            .map(|v| u8::try_from(v).expect("8-bit sample"))
            .collect()
    };
    let image = match color {
        image::ColorType::L8 => {
            ImageBuffer::from_raw(width, height, narrow(samples)).map(DynamicImage::ImageLuma8)
        }
        image::ColorType::La8 => {
            ImageBuffer::from_raw(width, height, narrow(samples)).map(DynamicImage::ImageLumaA8)
        }
        image::ColorType::Rgb8 => {
            ImageBuffer::from_raw(width, height, narrow(samples)).map(DynamicImage::ImageRgb8)
        }
        image::ColorType::Rgba8 => {
            ImageBuffer::from_raw(width, height, narrow(samples)).map(DynamicImage::ImageRgba8)
        }
        image::ColorType::L16 => {
            ImageBuffer::from_raw(width, height, samples).map(DynamicImage::ImageLuma16)
        }
        image::ColorType::La16 => {
            ImageBuffer::from_raw(width, height, samples).map(DynamicImage::ImageLumaA16)
        }
        image::ColorType::Rgb16 => {
            ImageBuffer::from_raw(width, height, samples).map(DynamicImage::ImageRgb16)
        }
        image::ColorType::Rgba16 => {
            ImageBuffer::from_raw(width, height, samples).map(DynamicImage::ImageRgba16)
        }
        other => panic!("layout {other:?} is not used in tests"),
    };
    image.expect("sample count matches the size")
}

pub fn png(image: &DynamicImage) -> Vec<u8> {
    let mut out = Vec::new();
    PngEncoder::new(&mut out)
        .write_image(
            image.as_bytes(),
            image.width(),
            image.height(),
            image.color().into(),
        )
        .expect("PNG encodes");
    out
}

pub fn webp(image: &DynamicImage) -> Vec<u8> {
    let mut out = Vec::new();
    WebPEncoder::new_lossless(&mut out)
        .write_image(
            image.as_bytes(),
            image.width(),
            image.height(),
            image.color().into(),
        )
        .expect("WebP encodes");
    out
}

pub fn jpeg(image: &DynamicImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, quality)
        .write_image(
            image.as_bytes(),
            image.width(),
            image.height(),
            image.color().into(),
        )
        .expect("JPEG encodes");
    out
}

pub fn decode(bytes: &[u8]) -> DynamicImage {
    ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .expect("readable")
        .decode()
        .expect("decodes")
}

/// Pixels independent of layout: samples widened to u16, with the layout's facts beside them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raw {
    pub width: u32,
    pub height: u32,
    pub channels: usize,
    pub alpha: bool,
    pub max: u16,
    pub samples: Vec<u16>,
}

impl Raw {
    pub fn of(image: &DynamicImage) -> Raw {
        let color = image.color();
        let wide = color.bytes_per_pixel() / color.channel_count() == 2;
        let samples: Vec<u16> = if wide {
            image
                .as_bytes()
                .chunks_exact(2)
                .map(|b| u16::from_ne_bytes([b[0], b[1]]))
                .collect()
        } else {
            image.as_bytes().iter().map(|&v| u16::from(v)).collect()
        };
        Raw {
            width: image.width(),
            height: image.height(),
            channels: usize::from(color.channel_count()),
            alpha: color.has_alpha(),
            max: if wide { 65_535 } else { 255 },
            samples,
        }
    }

    pub fn pixel(&self, x: u32, y: u32) -> &[u16] {
        let start = (y as usize * self.width as usize + x as usize) * self.channels;
        &self.samples[start..start + self.channels]
    }

    fn color_channels(&self) -> usize {
        self.channels - usize::from(self.alpha)
    }

    fn map_pixels(&self, f: impl Fn(&[u16]) -> Vec<u16>, channels: usize) -> Raw {
        Raw {
            channels,
            samples: self
                .samples
                .chunks_exact(self.channels)
                .flat_map(f)
                .collect(),
            ..self.clone()
        }
    }

    fn remap(&self, width: u32, height: u32, source: impl Fn(u32, u32) -> (u32, u32)) -> Raw {
        let mut samples = Vec::with_capacity(self.samples.len());
        for y in 0..height {
            for x in 0..width {
                let (sx, sy) = source(x, y);
                samples.extend_from_slice(self.pixel(sx, sy));
            }
        }
        Raw {
            width,
            height,
            samples,
            ..self.clone()
        }
    }

    /// The reference result of one operation (no resize or blur: those are tested apart).
    pub fn apply(&self, op: &str) -> Raw {
        let (w, h) = (self.width, self.height);
        let color = self.color_channels();
        let max = self.max;
        match op {
            "swap-rg" => self.map_pixels(
                |p| {
                    let mut p = p.to_vec();
                    if color == 3 {
                        p.swap(0, 1);
                    }
                    p
                },
                self.channels,
            ),
            "invert" => self.map_pixels(
                |p| {
                    p.iter()
                        .enumerate()
                        .map(|(i, &v)| if i < color { max - v } else { v })
                        .collect()
                },
                self.channels,
            ),
            "grayscale" if color == 3 => {
                let alpha = self.alpha;
                self.map_pixels(
                    move |p| {
                        let y = (0.2126 * f64::from(p[0])
                            + 0.7152 * f64::from(p[1])
                            + 0.0722 * f64::from(p[2]))
                        .round();
                        let mut out = vec![y as u16];
                        if alpha {
                            out.push(p[3]);
                        }
                        out
                    },
                    1 + usize::from(self.alpha),
                )
            }
            "grayscale" => self.clone(),
            "rotate:90" => self.remap(h, w, |x, y| (y, h - 1 - x)),
            "rotate:180" => self.remap(w, h, |x, y| (w - 1 - x, h - 1 - y)),
            "rotate:270" => self.remap(h, w, |x, y| (w - 1 - y, x)),
            "flip:h" => self.remap(w, h, |x, y| (w - 1 - x, y)),
            "flip:v" => self.remap(w, h, |x, y| (x, h - 1 - y)),
            other => panic!("no reference for {other}"),
        }
    }

    /// Rounds 16-bit samples to 8 bits, `(v + 128) / 257`.
    pub fn to_8bit(&self) -> Raw {
        if self.max == 255 {
            return self.clone();
        }
        Raw {
            max: 255,
            samples: self
                .samples
                .iter()
                .map(|&v| ((u32::from(v) + 128) / 257) as u16)
                .collect(),
            ..self.clone()
        }
    }

    /// The mean absolute difference of two images of the same size and layout.
    pub fn mean_abs_error(&self, other: &Raw) -> f64 {
        assert_eq!(
            (self.width, self.height, self.channels),
            (other.width, other.height, other.channels)
        );
        let total: u64 = self
            .samples
            .iter()
            .zip(&other.samples)
            .map(|(&a, &b)| u64::from(a.abs_diff(b)))
            .sum();
        total as f64 / self.samples.len() as f64
    }
}

/// CRC-32 as PNG chunks use it (bitwise; fine for the few bytes tests build by hand).
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG chunk: length, type, data, CRC.
pub fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut chunk = Vec::with_capacity(12 + data.len());
    chunk.extend_from_slice(&u32::try_from(data.len()).expect("small").to_be_bytes());
    chunk.extend_from_slice(kind);
    chunk.extend_from_slice(data);
    let mut checked = kind.to_vec();
    checked.extend_from_slice(data);
    chunk.extend_from_slice(&crc32(&checked).to_be_bytes());
    chunk
}

/// A PNG signature and IHDR claiming `width` x `height` 8-bit RGB, with no pixel data.
pub fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    png
}

/// The markers of the segments before the image data of a JPEG (stops at SOS).
pub fn jpeg_markers(jpeg: &[u8]) -> Vec<u8> {
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "starts with SOI");
    let mut markers = Vec::new();
    let mut at = 2;
    while at + 4 <= jpeg.len() && jpeg[at] == 0xFF {
        let marker = jpeg[at + 1];
        markers.push(marker);
        if marker == 0xDA {
            break;
        }
        let length = usize::from(u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]));
        at += 2 + length;
    }
    markers
}

/// An EXIF APP1 segment holding only an orientation tag, built byte by byte (big-endian TIFF).
pub fn exif_orientation_segment(orientation: u16) -> Vec<u8> {
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"MM\x00\x2A"); // big-endian TIFF header
    tiff.extend_from_slice(&8u32.to_be_bytes()); // IFD0 right after the header
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // tag: Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // type: SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes()); // count
    tiff.extend_from_slice(&orientation.to_be_bytes()); // value, left-justified
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    // A GPS-looking string, to be sure nothing of the block survives.
    tiff.extend_from_slice(b"GPS 52.37N 4.89E");
    let mut payload = b"Exif\x00\x00".to_vec();
    payload.extend(tiff);
    let mut segment = vec![0xFF, 0xE1];
    segment.extend_from_slice(
        &u16::try_from(payload.len() + 2)
            .expect("small")
            .to_be_bytes(),
    );
    segment.extend(payload);
    segment
}

/// Inserts a segment right after a JPEG's SOI marker.
pub fn with_segment(jpeg: &[u8], segment: &[u8]) -> Vec<u8> {
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(segment);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// A minimal ICC profile header for the given data colour space (`b"RGB "` or `b"GRAY"`),
/// padded to `len` bytes. Encoders copy it as it is; no colour management reads it here.
pub fn fake_icc_profile(space: &[u8; 4], len: usize) -> Vec<u8> {
    let mut profile = vec![0u8; len];
    profile[..4].copy_from_slice(&u32::try_from(len).expect("small").to_be_bytes());
    profile[12..16].copy_from_slice(b"mntr");
    profile[16..20].copy_from_slice(space);
    profile[20..24].copy_from_slice(b"XYZ ");
    profile[36..40].copy_from_slice(b"acsp");
    profile
}
