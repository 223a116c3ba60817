//! shoal imaging: the image operations the pipeline's workers run, and the checks the master
//! runs at upload so that a request is refused then (HTTP 400/413) rather than failing later
//! as a task.
//!
//! ```
//! use shoal_imaging::{Limits, Pipeline, check, probe, worst_case_output_bytes};
//! # fn demo(upload: &[u8]) -> Result<(), shoal_imaging::ImageError> {
//! let limits = Limits::default();
//! let pipeline: Pipeline = "resize:800x600,grayscale".parse()?; // 400 on error
//! let info = probe(upload, &limits)?;                             // header only
//! check(&info, &pipeline, None, &limits)?;                        // pixel counts, format limits
//! let most = worst_case_output_bytes(&info, &pipeline, None);     // compare with storage's limit
//! # let _ = most; Ok(()) }
//! ```
//!
//! A worker then calls [`process`], which decodes (applying the EXIF orientation), runs the
//! chain and encodes. All entry points take borrowed bytes and return a `Result`, and every
//! argument is `UnwindSafe`, so a worker can wrap a call in `std::panic::catch_unwind` without
//! `AssertUnwindSafe`.
//!
//! # Layout
//!
//! - `format.rs`: [`Format`] (PNG, JPEG, WebP) and [`ColorInfo`] (channels, bits, alpha).
//! - `op.rs`: [`Op`], [`Pipeline`], their text form and bounds, [`OpError`].
//! - `decode.rs`: [`Limits`], [`ImageInfo`], header-first decoding.
//! - `ops.rs`, `blur.rs`: the operations on pixels.
//! - `encode.rs`: output layouts, encoders, [`worst_case_output_bytes`].
//! - `error.rs`: [`ImageError`].
//!
//! # Formats, bit depth and alpha
//!
//! Inputs: PNG (all bit depths; below 8 bits and palettes are expanded to 8-bit), baseline and
//! progressive JPEG (CMYK is converted to RGB), lossy and lossless WebP. Animated PNG and WebP
//! yield their first frame. Anything else is [`ImageError::Unsupported`].
//!
//! The output keeps the input's format unless another is requested. Bit depth and alpha are
//! kept end to end; the operations are defined for all eight layouts (gray, gray+alpha, RGB,
//! RGBA at 8 and 16 bits): `invert` of a 16-bit value `v` is `65535 - v`, `swap-rg`,
//! `grayscale` and `invert` leave alpha untouched, `swap-rg` leaves gray images as they are,
//! `grayscale` turns RGB(A) into gray(+alpha) at the same depth. When the output format cannot
//! carry the layout: JPEG is 8-bit without alpha, so 16-bit is rounded to 8 bits and alpha is
//! flattened onto white; WebP output is lossless (the only WebP encoder the `image` crate has)
//! and 8-bit, so 16-bit is rounded to 8 bits. Details in `encode.rs`.
//!
//! EXIF orientation (JPEG, and PNG/WebP when they carry EXIF) is applied before the chain, and
//! [`probe`] reports the oriented size. Results carry no EXIF, XMP or GPS metadata; a matching
//! ICC colour profile is kept so colours look the same.
//!
//! # Limits
//!
//! [`Limits::max_pixels`] (default 40 MP) bounds the input, read from its header before any
//! pixel is decoded, and every intermediate and final size of the chain ([`check`]). Chains
//! are bounded by [`op::MAX_OPS`], blur sigma by [`op::MAX_BLUR_SIGMA`], resize and thumbnail
//! sizes by [`op::MAX_DIMENSION`]; the output must fit its format (JPEG 65535, WebP 16383 per
//! side).
//!
//! # Measured choices
//!
//! One core of the 2-core CI machine kind, release build, a 1000x1000 (1 MP) synthetic
//! photo-like RGB image (smooth gradients plus noise), median of 15 runs. Reproduce with
//! `cargo test -p shoal-imaging --release --test measure -- --ignored --nocapture`.
//!
//! | stage (1 MP) | ms | chosen over |
//! | --- | --- | --- |
//! | decode PNG 8-bit RGB (`png` via `image`) | 6.2 | `zune-png` 23.9 |
//! | decode PNG 16-bit RGBA | 13.3 | |
//! | decode JPEG q90 (`zune-jpeg` via `image`) | 4.9 | `jpeg-decoder` 7.3 |
//! | decode WebP lossless (`image-webp`) | 12.0 | libwebp (C, `webp` crate) 12.6 |
//! | decode WebP lossy q90 (`image-webp`) | 40 | libwebp 15.6 (kept pure Rust: untrusted input) |
//! | encode PNG Fast + adaptive filter, 8-bit RGB | 5.5 | level 6: 30x slower (DEPENDENCIES.md) |
//! | encode PNG Fast + adaptive filter, 16-bit RGBA | 32.3 | |
//! | encode JPEG q90 4:4:4 (`jpeg-encoder`, AVX2) | 12.5 | `image`'s encoder 27.9 |
//! | encode WebP lossless (`image-webp`) | 6.1 | (the only WebP encoder of `image`) |
//! | `swap-rg` / `invert` / `flip:h` / `rotate:90` | 0.5 / 1.4 / 0.9 / 1.1 | |
//! | `blur:1` / `blur:2.9` (exact kernel) | 10.7 / 18.1 | `image` Gaussian: 8.4 at sigma 1 |
//! | `blur:3` / `blur:50` (three boxes) | 15.7 / 17.7 | `image` Gaussian: 16.7 / 301 |
//! | `blur:3`, 16-bit RGBA | 27.6 | |
//! | resize to 500x500, Lanczos3 (`fast_image_resize`) | 1.3 | `image::imageops` 15.9 |
//! | resize 16-bit RGBA to 500x500 / RGB 8-bit to 2000x2000 | 7.1 / 9.5 | `image` 21.4 / 239 |
//! | `process` PNG to PNG, `swap-rg` (the default) | 11.7 | |
//! | `process` PNG 16-bit RGBA to PNG, `swap-rg` | 46.4 | |
//! | `process` JPEG to JPEG, `swap-rg` | 17.2 | |
//! | `process` WebP lossless to WebP, `swap-rg` | 19.1 | |
//! | `process` PNG to JPEG, `swap-rg` | 19.0 | |
//! | `process` JPEG to JPEG, `resize:800x600,grayscale` | 9.4 | |
//! | `process` JPEG to JPEG, `thumbnail:256` | 8.2 | |
//!
//! Decoding and encoding dominate, as DEPENDENCIES.md found; the default job runs at about 85
//! images per second per core at 1 MP. The "chosen over" figures for other crates come from a
//! separate scratch benchmark on the same image and machine (the crates are not dependencies).
//! JPEG output keeps full-resolution chroma (4:4:4): 4:2:0 encodes about a third faster (11
//! against 17 ms, both without SIMD) and 13% smaller, but halves colour resolution, which
//! operations like `swap-rg` make visible.
//!
//! # Memory
//!
//! A job holds the input bytes, the decoded image, one operation's output (each operation
//! reads one buffer and writes another; blur works in place on a 16-bit copy), and the
//! encoded result; PNG encoding of 16-bit images makes one big-endian copy. Plan on about
//! four times `width * height * bytes per pixel` at peak: 1.3 GB for 40 MP of 16-bit RGBA,
//! 480 MB for 40 MP of 8-bit RGB.
#![forbid(unsafe_code)]

mod blur;
mod decode;
mod encode;
mod error;
mod format;
pub mod op;
mod ops;

pub use decode::{DEFAULT_MAX_PIXELS, ImageInfo, Limits, MAX_ICC_PROFILE_LEN};
pub use encode::{JPEG_QUALITY, worst_case_output_bytes};
pub use error::ImageError;
pub use format::{ColorInfo, Format, UnknownFormat};
pub use op::{Op, OpError, Pipeline};

/// The result of [`process`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    /// The encoded image.
    pub bytes: Vec<u8>,
    /// Its format.
    pub format: Format,
    /// Its width.
    pub width: u32,
    /// Its height.
    pub height: u32,
}

/// Reads an image's header, and only its header: the format (from the signature; PNG, JPEG
/// and WebP only), the size after EXIF orientation, the pixel layout, the ICC profile.
///
/// Errors: [`ImageError::Unsupported`] for other formats and empty data;
/// [`ImageError::TooLarge`] when the header claims more than `limits.max_pixels` (no pixel
/// buffer is allocated); [`ImageError::Invalid`] for a corrupt header. Corrupt pixel data is
/// only found by [`process`].
pub fn probe(bytes: &[u8], limits: &Limits) -> Result<ImageInfo, ImageError> {
    decode::open(bytes, limits).map(|opened| opened.info)
}

/// Checks what can be checked without pixels: the input and every intermediate and final
/// size of the chain against `limits.max_pixels`, and the output against its format's largest
/// dimension. [`process`] runs the same check before decoding.
pub fn check(
    info: &ImageInfo,
    pipeline: &Pipeline,
    output: Option<Format>,
    limits: &Limits,
) -> Result<(), ImageError> {
    limits.check_pixels("the image is", info.width, info.height)?;
    for (op, (width, height)) in pipeline
        .ops()
        .iter()
        .zip(pipeline.stage_dimensions(info.width, info.height))
    {
        limits.check_pixels(&format!("after \"{op}\" the image would be"), width, height)?;
    }
    let format = output.unwrap_or(info.format);
    let (width, height) = pipeline.output_dimensions(info.width, info.height);
    let max = format.max_dimension();
    if width > max || height > max {
        return Err(ImageError::TooLarge(format!(
            "the result would be {width}x{height}; a {} image can be at most {max} pixels wide \
             and high",
            format.display_name()
        )));
    }
    Ok(())
}

/// Decodes `bytes` (applying the EXIF orientation), runs `pipeline`, and encodes the result as
/// `output`, or in the input's format when `output` is `None`.
///
/// Runs [`check`] before decoding pixels. The result is never larger than
/// [`worst_case_output_bytes`] for the same arguments. Errors: those of [`probe`] and
/// [`check`], [`ImageError::Invalid`] for corrupt or truncated pixel data.
pub fn process(
    bytes: &[u8],
    pipeline: &Pipeline,
    output: Option<Format>,
    limits: &Limits,
) -> Result<Processed, ImageError> {
    let opened = decode::open(bytes, limits)?;
    let info = opened.info.clone();
    check(&info, pipeline, output, limits)?;
    let icc_profile = opened.icc_profile.clone();
    let image = opened.decode()?;
    let image = ops::run(image, pipeline)?;

    let format = output.unwrap_or(info.format);
    let (width, height) = (image.width(), image.height());
    if (width, height) != pipeline.output_dimensions(info.width, info.height) {
        return Err(ImageError::Internal(format!(
            "the chain produced {width}x{height}, not the predicted size"
        )));
    }
    let bytes = encode::encode(image, format, icc_profile.as_deref())?;
    let bound = worst_case_output_bytes(&info, pipeline, output);
    if bytes.len() as u64 > bound {
        return Err(ImageError::Internal(format!(
            "the {} result is {} bytes, above its bound of {bound}",
            format.display_name(),
            bytes.len()
        )));
    }
    Ok(Processed {
        bytes,
        format,
        width,
        height,
    })
}
