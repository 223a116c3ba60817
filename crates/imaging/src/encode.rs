//! Writing results, and the upper bound of their size.
//!
//! What each format can carry, and what happens to what it cannot:
//!
//! | output | layouts written | conversion |
//! | --- | --- | --- |
//! | PNG | all eight (gray/gray+alpha/RGB/RGBA, 8/16-bit) | none |
//! | JPEG | 8-bit gray, 8-bit RGB | 16-bit rounded to 8 (`(v + 128) / 257`); alpha flattened onto white |
//! | WebP | 8-bit gray, gray+alpha, RGB, RGBA (lossless) | 16-bit rounded to 8 |
//!
//! Flattening onto white composites each pixel over an opaque white background
//! (`c * a + max * (max - a)`, rounded), which is how a transparent image looks on a page; plain
//! dropping of alpha would show whatever colour transparent pixels happen to hide (often black).
//!
//! No EXIF, XMP or other metadata is written: results are re-encoded from pixels, which also
//! removes GPS positions. An ICC colour profile is kept when the output's colour model matches
//! it (see [`crate::ImageInfo::icc_profile_len`]).

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::codecs::webp::WebPEncoder;
use image::{DynamicImage, ImageEncoder};

use crate::decode::{ImageInfo, icc_profile_fits};
use crate::error::ImageError;
use crate::format::{ColorInfo, Format};
use crate::op::Pipeline;
use crate::ops::{Sample, rebuild};

/// JPEG quality, 1-100. At 90 the encoder keeps full-resolution chroma (4:4:4).
pub const JPEG_QUALITY: u8 = 90;

/// Encodes `image` as `format`, converting the layout if the format needs it.
pub(crate) fn encode(
    image: DynamicImage,
    format: Format,
    icc_profile: Option<&[u8]>,
) -> Result<Vec<u8>, ImageError> {
    let image = to_encodable(image, format)?;
    let color = ColorInfo::of(image.color());
    let icc_profile = icc_profile.filter(|profile| icc_profile_fits(profile, color));
    let (width, height) = (image.width(), image.height());
    let internal = |error: &dyn std::fmt::Display| {
        ImageError::Internal(format!(
            "encoding a {width}x{height} {color} {} failed: {error}",
            format.display_name()
        ))
    };
    let mut out = Vec::new();
    match format {
        Format::Png => {
            let mut encoder =
                PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive);
            if let Some(profile) = icc_profile {
                encoder
                    .set_icc_profile(profile.to_vec())
                    .map_err(|error| internal(&error))?;
            }
            encoder
                .write_image(image.as_bytes(), width, height, image.color().into())
                .map_err(|error| internal(&error))?;
        }
        Format::Jpeg => {
            let (w, h) = match (u16::try_from(width), u16::try_from(height)) {
                (Ok(w), Ok(h)) => (w, h),
                _ => return Err(internal(&"JPEG dimensions are at most 65535")),
            };
            let color_type = if color.is_grayscale() {
                jpeg_encoder::ColorType::Luma
            } else {
                jpeg_encoder::ColorType::Rgb
            };
            let mut encoder = jpeg_encoder::Encoder::new(&mut out, JPEG_QUALITY);
            encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::F_1_1);
            if let Some(profile) = icc_profile {
                encoder
                    .add_icc_profile(profile)
                    .map_err(|error| internal(&error))?;
            }
            encoder
                .encode(image.as_bytes(), w, h, color_type)
                .map_err(|error| internal(&error))?;
        }
        Format::WebP => {
            let mut encoder = WebPEncoder::new_lossless(&mut out);
            if let Some(profile) = icc_profile {
                encoder
                    .set_icc_profile(profile.to_vec())
                    .map_err(|error| internal(&error))?;
            }
            encoder
                .write_image(image.as_bytes(), width, height, image.color().into())
                .map_err(|error| internal(&error))?;
        }
    }
    Ok(out)
}

/// The layout `format` stores for an image of layout `color` (see the module table).
pub(crate) fn encoded_color(color: ColorInfo, format: Format) -> ColorInfo {
    match format {
        Format::Png => color,
        Format::Jpeg => color.without_alpha().with_bits(8),
        Format::WebP => color.with_bits(8),
    }
}

/// Converts the image to a layout `format` can store.
fn to_encodable(image: DynamicImage, format: Format) -> Result<DynamicImage, ImageError> {
    let (width, height) = (image.width(), image.height());
    Ok(match (format, image) {
        (Format::Png, image) => image,
        (Format::Jpeg, DynamicImage::ImageLumaA8(buffer)) => {
            DynamicImage::ImageLuma8(rebuild(width, height, flatten_on_white(&buffer, 2))?)
        }
        (Format::Jpeg, DynamicImage::ImageLumaA16(buffer)) => {
            DynamicImage::ImageLuma8(rebuild(width, height, flatten_on_white(&buffer, 2))?)
        }
        (Format::Jpeg, DynamicImage::ImageRgba8(buffer)) => {
            DynamicImage::ImageRgb8(rebuild(width, height, flatten_on_white(&buffer, 4))?)
        }
        (Format::Jpeg, DynamicImage::ImageRgba16(buffer)) => {
            DynamicImage::ImageRgb8(rebuild(width, height, flatten_on_white(&buffer, 4))?)
        }
        (_, image @ (DynamicImage::ImageLuma8(_) | DynamicImage::ImageRgb8(_))) => image,
        (Format::WebP, image @ (DynamicImage::ImageLumaA8(_) | DynamicImage::ImageRgba8(_))) => {
            image
        }
        (_, DynamicImage::ImageLuma16(buffer)) => {
            DynamicImage::ImageLuma16(buffer).into_luma8().into()
        }
        (Format::WebP, DynamicImage::ImageLumaA16(buffer)) => {
            DynamicImage::ImageLumaA16(buffer).into_luma_alpha8().into()
        }
        (Format::WebP, DynamicImage::ImageRgba16(buffer)) => {
            DynamicImage::ImageRgba16(buffer).into_rgba8().into()
        }
        (_, other) => other.into_rgb8().into(),
    })
}

/// Composites gray+alpha or RGBA samples over opaque white, giving 8-bit gray or RGB.
fn flatten_on_white<T: Sample>(samples: &[T], channels: usize) -> Vec<u8> {
    let max = u64::from(T::MAX);
    let mut out = Vec::with_capacity(samples.len() / channels * (channels - 1));
    for pixel in samples.chunks_exact(channels) {
        let alpha = u64::from(pixel[channels - 1].to_u32());
        for &value in &pixel[..channels - 1] {
            let composed =
                (u64::from(value.to_u32()) * alpha + max * (max - alpha) + max / 2) / max;
            let eight_bit = if T::MAX == 255 {
                composed
            } else {
                (composed + 128) / 257
            };
            out.push(u8::try_from(eight_bit).unwrap_or(u8::MAX));
        }
    }
    out
}

/// An upper bound of the size of the result [`crate::process`] produces for this input, chain
/// and output format; `process` never returns a larger result (it fails with
/// [`ImageError::Internal`] instead, which the bounds below make unreachable).
///
/// - PNG: the size of the image stored without compression, which is what the encoder falls
///   back to when compression does not pay: `8` (signature) `+ 25` (IHDR) `+ 12` (IEND) `+ 12`
///   per IDAT chunk (at most 2^31 - 1 bytes each) `+` the zlib stream: `2 + 4` (header,
///   checksum) `+ 5` per stored block of 65535 bytes `+` the filtered rows, `height *
///   (1 + ceil(width * channels * bits / 8))`. Exact for incompressible images.
/// - JPEG (baseline, standard Huffman tables, 4:4:4): each 8x8 block of each component costs at
///   most `11 + 11` bits for the DC difference (code and magnitude) plus 63 AC coefficients of
///   at most `16 + 10` bits, 1660 bits; every `0xFF` byte gets a stuffed `0x00`, so at most twice
///   that: 415 bytes per block, plus 2 KiB of headers. About 19.5 bytes per pixel for colour,
///   6.5 for gray. This is a guarantee, not an estimate, and it is loose: random noise, the
///   worst realistic content, takes 1.9 bytes per pixel in colour at quality 90 (a tenth of
///   the bound); the photo-like image of the measurements takes 0.3.
/// - WebP lossless (the `image-webp` encoder: one Huffman group, literals and run-length
///   copies only): every pixel costs at most 15 bits (the longest WebP Huffman code) per coded
///   channel — 1 for gray, 2 gray+alpha, 3 RGB, 4 RGBA — and runs cost less per pixel; plus
///   at most 512 bytes per Huffman tree (5 trees) and 64 bytes of headers. Random noise takes
///   8 bits per channel, about half the bound.
///
/// `tests/bounds.rs` checks the bounds on random noise in every layout and output format.
///
/// An ICC profile that will be kept adds its length plus its container overhead.
pub fn worst_case_output_bytes(
    info: &ImageInfo,
    pipeline: &Pipeline,
    output: Option<Format>,
) -> u64 {
    let format = output.unwrap_or(info.format);
    let (width, height) = pipeline.output_dimensions(info.width, info.height);
    let color = encoded_color(pipeline.output_color(info.color), format);
    let icc = u64::from(info.icc_profile_len);
    match format {
        Format::Png => png_bound(width, height, color, icc),
        Format::Jpeg => jpeg_bound(width, height, color, icc),
        Format::WebP => webp_bound(width, height, color, icc),
    }
}

fn png_bound(width: u32, height: u32, color: ColorInfo, icc: u64) -> u64 {
    const STORED_BLOCK: u64 = 65_535;
    const MAX_CHUNK: u64 = (1 << 31) - 1;
    let bits_per_row =
        u64::from(width) * u64::from(color.channels) * u64::from(color.bits_per_channel);
    let raw = u64::from(height).saturating_mul(1 + bits_per_row.div_ceil(8));
    let blocks = raw.div_ceil(STORED_BLOCK).max(1);
    let zlib = raw.saturating_add(2 + 4).saturating_add(blocks * 5);
    let idat = zlib.saturating_add(12 * zlib.div_ceil(MAX_CHUNK).max(1));
    let iccp = if icc == 0 {
        0
    } else {
        // Chunk framing, profile name "_" and its NUL, method byte; the profile is
        // zlib-compressed at the default level, at worst stored: 5 bytes per 16 KiB block.
        12 + 3 + icc + icc.div_ceil(16_384) * 5 + 6
    };
    (8 + 25 + 12 + iccp).saturating_add(idat)
}

fn jpeg_bound(width: u32, height: u32, color: ColorInfo, icc: u64) -> u64 {
    const BITS_PER_BLOCK: u64 = (11 + 11) + 63 * (16 + 10);
    const HEADERS: u64 = 2048;
    const ICC_CHUNK: u64 = 65_519;
    let components = if color.is_grayscale() { 1 } else { 3 };
    let blocks = u64::from(width).div_ceil(8) * u64::from(height).div_ceil(8) * components;
    let entropy = blocks.saturating_mul(BITS_PER_BLOCK).div_ceil(8) + 1;
    // APP2 "ICC_PROFILE\0", sequence number, count, marker and length: 18 bytes a chunk.
    let iccp = icc + icc.div_ceil(ICC_CHUNK) * 18;
    entropy.saturating_mul(2).saturating_add(HEADERS + iccp)
}

fn webp_bound(width: u32, height: u32, color: ColorInfo, icc: u64) -> u64 {
    const MAX_CODE_BITS: u64 = 15;
    const TREES: u64 = 5 * 512;
    const HEADERS: u64 = 64;
    let pixels = u64::from(width) * u64::from(height);
    let coded_channels = u64::from(color.channels);
    let data = pixels
        .saturating_mul(MAX_CODE_BITS * coded_channels)
        .div_ceil(8);
    // Extended format: VP8X chunk (18 bytes) and ICCP chunk (8 + profile, padded to even).
    let iccp = if icc == 0 { 0 } else { 18 + 8 + icc + 1 };
    data.saturating_add(TREES + HEADERS + iccp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattening_onto_white() {
        // Opaque stays, transparent becomes white, half-transparent black becomes mid gray.
        let rgba: Vec<u8> = vec![10, 20, 30, 255, 10, 20, 30, 0, 0, 0, 0, 128];
        assert_eq!(
            flatten_on_white(&rgba, 4),
            vec![10, 20, 30, 255, 255, 255, 127, 127, 127]
        );
        let la16: Vec<u16> = vec![257 * 100, 65_535, 0, 0];
        assert_eq!(flatten_on_white(&la16, 2), vec![100, 255]);
    }

    #[test]
    fn encoded_layouts() {
        let rgba16 = ColorInfo::RGBA8.with_bits(16);
        assert_eq!(encoded_color(rgba16, Format::Png), rgba16);
        assert_eq!(encoded_color(rgba16, Format::Jpeg), ColorInfo::RGB8);
        assert_eq!(encoded_color(rgba16, Format::WebP), ColorInfo::RGBA8);
        assert_eq!(encoded_color(ColorInfo::LA8, Format::Jpeg), ColorInfo::L8);
    }

    #[test]
    fn png_bound_by_hand() {
        // 10x10 RGB8: rows of 1 + 30 bytes, 310 raw, one stored block.
        assert_eq!(
            png_bound(10, 10, ColorInfo::RGB8, 0),
            8 + 25 + 12 + 12 + 310 + 2 + 4 + 5
        );
    }
}
