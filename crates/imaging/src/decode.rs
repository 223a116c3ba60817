//! Reading images: the format from the signature, the header first, every limit checked
//! before a pixel buffer exists.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader};

use crate::error::{ImageError, human_pixels};
use crate::format::{ColorInfo, Format};

/// The default of [`Limits::max_pixels`]: 40 million pixels (e.g. 7300x5470).
pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;

/// ICC profiles up to this size are carried from input to output; larger ones are dropped.
/// Real profiles are 0.5 to 4 KiB, rarely a few hundred KiB.
pub const MAX_ICC_PROFILE_LEN: usize = 1 << 20;

/// The most bytes a decoded pixel takes (16-bit RGBA).
const MAX_BYTES_PER_PIXEL: u64 = 8;
/// What a decoder may allocate beyond the pixels: metadata chunks, row buffers, JPEG
/// coefficient tables.
const DECODER_OVERHEAD: u64 = 64 << 20;

/// Resource limits applied to every image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most pixels the input, every intermediate result and the output may have.
    ///
    /// The decompression-bomb guard: the input's pixel count is read from its header and
    /// checked before any pixel is decoded. The decoders are also given a memory bound of
    /// `max_pixels * 8 bytes + 64 MiB`, so they refuse to allocate beyond it themselves.
    pub max_pixels: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

impl Limits {
    /// The limits handed to the `image` crate's decoders.
    fn decoder_limits(&self) -> image::Limits {
        let mut limits = image::Limits::no_limits();
        // No side can be longer than the pixel limit allows.
        let side = u32::try_from(self.max_pixels).unwrap_or(u32::MAX);
        limits.max_image_width = Some(side);
        limits.max_image_height = Some(side);
        limits.max_alloc = Some(
            self.max_pixels
                .saturating_mul(MAX_BYTES_PER_PIXEL)
                .saturating_add(DECODER_OVERHEAD),
        );
        limits
    }

    /// Refuses `width` x `height` if it has more than `max_pixels` pixels; `what` starts the
    /// message ("the image is", "after \"resize:...\" the image would be").
    pub(crate) fn check_pixels(
        &self,
        what: &str,
        width: u32,
        height: u32,
    ) -> Result<(), ImageError> {
        let pixels = u64::from(width) * u64::from(height);
        if pixels > self.max_pixels {
            return Err(ImageError::TooLarge(format!(
                "{what} {width}x{height} = {}; at most {} allowed",
                human_pixels(pixels),
                human_pixels(self.max_pixels)
            )));
        }
        Ok(())
    }
}

/// What the header of an image says, as [`crate::probe`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The format, recognised from the signature.
    pub format: Format,
    /// Width after the EXIF orientation is applied (a 90° rotation swaps width and height).
    pub width: u32,
    /// Height after the EXIF orientation is applied.
    pub height: u32,
    /// The pixel layout the decoder produces (JPEG and WebP: always 8-bit; WebP: RGB or RGBA).
    pub color: ColorInfo,
    /// Bytes of the embedded ICC colour profile that will be carried to the output, 0 if
    /// none. Profiles larger than [`MAX_ICC_PROFILE_LEN`], malformed ones and ones for another
    /// colour model (CMYK, Lab) are dropped.
    pub icc_profile_len: u32,
}

impl ImageInfo {
    /// Width times height.
    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

/// An image whose header has been read and checked, ready to decode.
pub(crate) struct Opened<D> {
    pub(crate) info: ImageInfo,
    pub(crate) icc_profile: Option<Vec<u8>>,
    orientation: Orientation,
    decoder: D,
}

impl<D: ImageDecoder> Opened<D> {
    /// Decodes the pixels and applies the EXIF orientation.
    pub(crate) fn decode(self) -> Result<DynamicImage, ImageError> {
        let format = self.info.format;
        let mut image = DynamicImage::from_decoder(self.decoder)
            .map_err(|error| ImageError::from_decoding(format, error))?;
        image.apply_orientation(self.orientation);
        Ok(image)
    }
}

/// Reads and checks the header: format, dimensions against the pixel limit, layout,
/// orientation, ICC profile. No pixel buffer is allocated.
pub(crate) fn open<'a>(
    bytes: &'a [u8],
    limits: &Limits,
) -> Result<Opened<impl ImageDecoder + 'a>, ImageError> {
    let format = detect(bytes)?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format.image_format());
    reader.limits(limits.decoder_limits());
    let mut decoder = reader
        .into_decoder()
        .map_err(|error| ImageError::from_decoding(format, error))?;

    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(ImageError::Invalid(format!(
            "the {} header gives the size {width}x{height}",
            format.display_name()
        )));
    }
    limits.check_pixels("the image is", width, height)?;
    let color = ColorInfo::of(decoder.color_type());

    // A broken EXIF block is ignored, as browsers do, rather than refusing a viewable image.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let (width, height) = match orientation {
        Orientation::Rotate90
        | Orientation::Rotate270
        | Orientation::Rotate90FlipH
        | Orientation::Rotate270FlipH => (height, width),
        _ => (width, height),
    };

    let icc_profile = decoder
        .icc_profile()
        .ok()
        .flatten()
        .filter(|profile| icc_profile_fits(profile, color));
    let icc_profile_len = icc_profile.as_ref().map_or(0, |profile| {
        u32::try_from(profile.len()).unwrap_or(u32::MAX)
    });

    Ok(Opened {
        info: ImageInfo {
            format,
            width,
            height,
            color,
            icc_profile_len,
        },
        icc_profile,
        orientation,
        decoder,
    })
}

/// Whether an ICC profile can describe an image of layout `color`: a plausible size and a
/// header whose data colour space is `RGB ` for colour images or `GRAY` for gray ones.
pub(crate) fn icc_profile_fits(profile: &[u8], color: ColorInfo) -> bool {
    let expected: &[u8; 4] = if color.is_grayscale() {
        b"GRAY"
    } else {
        b"RGB "
    };
    // The fixed ICC header is 128 bytes; the data colour space is at bytes 16..20.
    (128..=MAX_ICC_PROFILE_LEN).contains(&profile.len()) && &profile[16..20] == expected
}

/// The format from the signature; anything but PNG, JPEG and WebP is unsupported.
fn detect(bytes: &[u8]) -> Result<Format, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Unsupported(
            "the data is empty; expected a PNG, JPEG or WebP image".to_owned(),
        ));
    }
    if let Some(format) = Format::from_magic(bytes) {
        return Ok(format);
    }
    let what = match image::guess_format(bytes) {
        Ok(other) => match other.extensions_str().first() {
            Some(extension) => format!("{} images are not supported", extension.to_uppercase()),
            None => "this image format is not supported".to_owned(),
        },
        Err(_) => "the data is not an image shoal can read".to_owned(),
    };
    Err(ImageError::Unsupported(format!(
        "{what}; upload a PNG, JPEG or WebP image"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_images_are_unsupported() {
        let unsupported = |bytes: &[u8]| match open(bytes, &Limits::default()) {
            Err(ImageError::Unsupported(message)) => message,
            other => panic!("expected Unsupported, got {:?}", other.map(|o| o.info)),
        };
        assert_eq!(
            unsupported(b""),
            "the data is empty; expected a PNG, JPEG or WebP image"
        );
        assert_eq!(
            unsupported(b"GIF89a\x01\x00\x01\x00\x00\x00\x00"),
            "GIF images are not supported; upload a PNG, JPEG or WebP image"
        );
        assert_eq!(
            unsupported(b"hello, world"),
            "the data is not an image shoal can read; upload a PNG, JPEG or WebP image"
        );
        assert!(unsupported(b"BM\x00\x00\x00\x00").starts_with("BMP images"));
    }

    #[test]
    fn icc_profiles_must_match_the_colour_model() {
        let mut rgb = vec![0u8; 200];
        rgb[16..20].copy_from_slice(b"RGB ");
        let mut gray = rgb.clone();
        gray[16..20].copy_from_slice(b"GRAY");
        assert!(icc_profile_fits(&rgb, ColorInfo::RGBA8));
        assert!(!icc_profile_fits(&rgb, ColorInfo::LA8));
        assert!(icc_profile_fits(&gray, ColorInfo::L8));
        assert!(!icc_profile_fits(&gray, ColorInfo::RGB8));
        assert!(!icc_profile_fits(&rgb[..100], ColorInfo::RGB8));
    }

    #[test]
    fn pixel_limit_message() {
        let limits = Limits::default();
        assert!(limits.check_pixels("the image is", 8000, 5000).is_ok());
        let error = limits
            .check_pixels("the image is", 50_000, 50_000)
            .expect_err("too large");
        assert_eq!(
            error.to_string(),
            "the image is 50000x50000 = 2.5 GP; at most 40 MP allowed"
        );
    }
}
