//! The three encodings shoal reads and writes, and the pixel layout of a decoded image.

use std::fmt;
use std::str::FromStr;

/// An image encoding shoal accepts at upload and can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// PNG: lossless, 8 or 16 bits per channel, optional alpha.
    Png,
    /// Baseline JPEG: lossy, 8 bits per channel, no alpha.
    Jpeg,
    /// WebP: shoal reads lossy and lossless WebP and writes lossless WebP only.
    WebP,
}

impl Format {
    /// Every format, in the order used in messages.
    pub const ALL: [Format; 3] = [Format::Png, Format::Jpeg, Format::WebP];

    /// The canonical lower-case name: `png`, `jpeg` or `webp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Png => "png",
            Format::Jpeg => "jpeg",
            Format::WebP => "webp",
        }
    }

    /// The media type for a `Content-Type` header.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Png => "image/png",
            Format::Jpeg => "image/jpeg",
            Format::WebP => "image/webp",
        }
    }

    /// The usual file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Png => "png",
            Format::Jpeg => "jpg",
            Format::WebP => "webp",
        }
    }

    /// The largest width or height the format can store.
    pub fn max_dimension(self) -> u32 {
        match self {
            // The PNG specification limits each side to 2^31 - 1.
            Format::Png => i32::MAX.unsigned_abs(),
            // SOF stores 16-bit dimensions.
            Format::Jpeg => u32::from(u16::MAX),
            // VP8L stores `dimension - 1` in 14 bits, so 16384 is legal, but image-webp 0.2
            // reads 16384 back as 0: stay one below so every result can be read again.
            Format::WebP => (1 << 14) - 1,
        }
    }

    /// Recognises a format from the first bytes of a file (its "magic" signature).
    ///
    /// Only the signature is looked at: a file that starts like a PNG but is corrupt further on
    /// still answers `Some(Format::Png)`.
    pub fn from_magic(bytes: &[u8]) -> Option<Format> {
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Format::Png)
        } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Format::Jpeg)
        } else if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP" {
            Some(Format::WebP)
        } else {
            None
        }
    }

    pub(crate) fn image_format(self) -> image::ImageFormat {
        match self {
            Format::Png => image::ImageFormat::Png,
            Format::Jpeg => image::ImageFormat::Jpeg,
            Format::WebP => image::ImageFormat::WebP,
        }
    }

    /// The name used in messages to people: `PNG`, `JPEG`, `WebP`.
    pub fn display_name(self) -> &'static str {
        match self {
            Format::Png => "PNG",
            Format::Jpeg => "JPEG",
            Format::WebP => "WebP",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to parsing a format name that is not `png`, `jpeg`, `jpg` or `webp`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown image format \"{0}\"; expected png, jpeg (or jpg) or webp")]
pub struct UnknownFormat(pub String);

impl FromStr for Format {
    type Err = UnknownFormat;

    /// Accepts `png`, `jpeg`, `jpg` and `webp`, in any letter case, with no surrounding spaces.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "png" => Ok(Format::Png),
            "jpeg" | "jpg" => Ok(Format::Jpeg),
            "webp" => Ok(Format::WebP),
            _ => Err(UnknownFormat(text.chars().take(32).collect())),
        }
    }
}

/// The pixel layout of an image: how many channels, how many bits each, whether one is alpha.
///
/// Channels are 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA); bits are 8 or 16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ColorInfo {
    /// Number of channels per pixel, alpha included: 1 to 4.
    pub channels: u8,
    /// Bits per channel: 8 or 16.
    pub bits_per_channel: u8,
    /// Whether the last channel is alpha (transparency).
    pub has_alpha: bool,
}

impl ColorInfo {
    /// 8-bit gray.
    pub const L8: ColorInfo = ColorInfo::new(1, 8, false);
    /// 8-bit gray with alpha.
    pub const LA8: ColorInfo = ColorInfo::new(2, 8, true);
    /// 8-bit RGB.
    pub const RGB8: ColorInfo = ColorInfo::new(3, 8, false);
    /// 8-bit RGBA.
    pub const RGBA8: ColorInfo = ColorInfo::new(4, 8, true);

    const fn new(channels: u8, bits_per_channel: u8, has_alpha: bool) -> ColorInfo {
        ColorInfo {
            channels,
            bits_per_channel,
            has_alpha,
        }
    }

    /// Whether the colour channels are a single gray channel.
    pub fn is_grayscale(self) -> bool {
        self.color_channels() == 1
    }

    /// Channels that carry colour (alpha excluded).
    pub fn color_channels(self) -> u8 {
        self.channels - u8::from(self.has_alpha)
    }

    /// Bytes one pixel takes once decoded.
    pub fn bytes_per_pixel(self) -> u64 {
        u64::from(self.channels) * u64::from(self.bits_per_channel) / 8
    }

    /// The same layout with `bits` bits per channel.
    pub(crate) fn with_bits(self, bits: u8) -> ColorInfo {
        ColorInfo::new(self.channels, bits, self.has_alpha)
    }

    /// The same layout with the colour channels reduced to one gray channel.
    pub(crate) fn to_grayscale(self) -> ColorInfo {
        ColorInfo::new(
            1 + u8::from(self.has_alpha),
            self.bits_per_channel,
            self.has_alpha,
        )
    }

    /// The same layout with alpha dropped.
    pub(crate) fn without_alpha(self) -> ColorInfo {
        ColorInfo::new(self.color_channels(), self.bits_per_channel, false)
    }

    pub(crate) fn of(color: image::ColorType) -> ColorInfo {
        let channels = color.channel_count();
        let bits = u8::try_from(color.bits_per_pixel() / u16::from(channels)).unwrap_or(16);
        ColorInfo::new(channels, bits, color.has_alpha())
    }
}

impl fmt::Display for ColorInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let layout = match (self.is_grayscale(), self.has_alpha) {
            (true, false) => "gray",
            (true, true) => "gray+alpha",
            (false, false) => "RGB",
            (false, true) => "RGBA",
        };
        write!(f, "{}-bit {layout}", self.bits_per_channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_aliases_parse() {
        for format in Format::ALL {
            assert_eq!(format.as_str().parse::<Format>(), Ok(format));
        }
        assert_eq!("jpg".parse::<Format>(), Ok(Format::Jpeg));
        assert_eq!("JPEG".parse::<Format>(), Ok(Format::Jpeg));
        assert_eq!("WebP".parse::<Format>(), Ok(Format::WebP));
        let error = "gif"
            .parse::<Format>()
            .expect_err("gif is not an output format");
        assert_eq!(
            error.to_string(),
            "unknown image format \"gif\"; expected png, jpeg (or jpg) or webp"
        );
        assert!(" png".parse::<Format>().is_err());
    }

    #[test]
    fn content_types() {
        assert_eq!(Format::Png.content_type(), "image/png");
        assert_eq!(Format::Jpeg.content_type(), "image/jpeg");
        assert_eq!(Format::WebP.content_type(), "image/webp");
    }

    #[test]
    fn magic_bytes() {
        assert_eq!(
            Format::from_magic(b"\x89PNG\r\n\x1a\n...."),
            Some(Format::Png)
        );
        assert_eq!(
            Format::from_magic(&[0xFF, 0xD8, 0xFF, 0xE0]),
            Some(Format::Jpeg)
        );
        assert_eq!(
            Format::from_magic(b"RIFF\0\0\0\0WEBPVP8 "),
            Some(Format::WebP)
        );
        assert_eq!(Format::from_magic(b"RIFF\0\0\0\0WAVEfmt "), None);
        assert_eq!(Format::from_magic(b"GIF89a"), None);
        assert_eq!(Format::from_magic(b""), None);
    }

    #[test]
    fn color_info_of_image_color_types() {
        assert_eq!(ColorInfo::of(image::ColorType::L8), ColorInfo::L8);
        assert_eq!(ColorInfo::of(image::ColorType::Rgba8), ColorInfo::RGBA8);
        let rgba16 = ColorInfo::of(image::ColorType::Rgba16);
        assert_eq!(rgba16, ColorInfo::RGBA8.with_bits(16));
        assert_eq!(rgba16.bytes_per_pixel(), 8);
        assert_eq!(rgba16.to_string(), "16-bit RGBA");
        assert_eq!(ColorInfo::LA8.to_string(), "8-bit gray+alpha");
        assert_eq!(rgba16.to_grayscale(), ColorInfo::LA8.with_bits(16));
        assert_eq!(ColorInfo::RGBA8.without_alpha(), ColorInfo::RGB8);
    }
}
