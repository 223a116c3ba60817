//! The one error type of this crate, with messages meant for the person who uploaded the image.

use crate::format::Format;
use crate::op::OpError;

/// Why an image was refused or could not be processed.
///
/// Every message is a full sentence fragment that can be shown to an end user as it is
/// ("the image is 50000x50000 = 2.5 GP; at most 40 MP allowed").
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Not a PNG, JPEG or WebP file (GIF, TIFF, text, empty data...), or a variant of one of
    /// them that the decoders do not read.
    #[error("{0}")]
    Unsupported(String),
    /// The file is recognised (its signature matches) but its header or pixel data is corrupt
    /// or truncated.
    #[error("{0}")]
    Invalid(String),
    /// The image, an intermediate result of the chain, or the output exceeds a limit: the pixel
    /// limit, the decoder's memory limit, or the output format's largest dimension.
    #[error("{0}")]
    TooLarge(String),
    /// The chain of operations is malformed or out of bounds.
    #[error(transparent)]
    Op(#[from] OpError),
    /// Not the input's fault: an encoder refused data the checks did not foresee, or an
    /// internal invariant failed. Reaching this is a bug in shoal-imaging.
    #[error("internal error while processing the image: {0}")]
    Internal(String),
}

impl ImageError {
    /// A stable, machine-readable code: `unsupported`, `invalid`, `too_large`, `bad_operation`
    /// or `internal`.
    pub fn code(&self) -> &'static str {
        match self {
            ImageError::Unsupported(_) => "unsupported",
            ImageError::Invalid(_) => "invalid",
            ImageError::TooLarge(_) => "too_large",
            ImageError::Op(_) => "bad_operation",
            ImageError::Internal(_) => "internal",
        }
    }

    /// Whether the request was at fault (an HTTP 4xx), rather than shoal (a 5xx).
    pub fn is_client_error(&self) -> bool {
        !matches!(self, ImageError::Internal(_))
    }

    /// Translates an error of the `image` crate met while reading a `format` file.
    pub(crate) fn from_decoding(format: Format, error: image::ImageError) -> ImageError {
        let name = format.display_name();
        match error {
            image::ImageError::Limits(limit) => ImageError::TooLarge(format!(
                "the {name} image needs more memory to decode than allowed ({limit})"
            )),
            image::ImageError::Unsupported(unsupported) => ImageError::Unsupported(format!(
                "this {name} image uses a feature that cannot be read: {unsupported}"
            )),
            image::ImageError::IoError(io) => {
                ImageError::Invalid(format!("the {name} data is truncated or unreadable: {io}"))
            }
            other => ImageError::Invalid(format!("the {name} data is corrupt: {other}")),
        }
    }
}

/// A pixel count for people: `950 pixels`, `12.3 MP`, `2.5 GP`.
pub(crate) fn human_pixels(pixels: u64) -> String {
    // Precision loss above 2^53 pixels is irrelevant for a message.
    let value = pixels as f64;
    let (scaled, unit) = if pixels >= 1_000_000_000 {
        (value / 1e9, "GP")
    } else if pixels >= 1_000_000 {
        (value / 1e6, "MP")
    } else {
        return format!("{pixels} pixels");
    };
    let text = format!("{scaled:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_counts_read_well() {
        assert_eq!(human_pixels(950), "950 pixels");
        assert_eq!(human_pixels(40_000_000), "40 MP");
        assert_eq!(human_pixels(12_345_678), "12.3 MP");
        assert_eq!(human_pixels(2_500_000_000), "2.5 GP");
        assert_eq!(human_pixels(1_000_000), "1 MP");
    }

    #[test]
    fn codes_and_client_errors() {
        assert_eq!(ImageError::TooLarge(String::new()).code(), "too_large");
        assert_eq!(ImageError::Op(OpError::Empty).code(), "bad_operation");
        assert!(ImageError::Invalid(String::new()).is_client_error());
        assert!(!ImageError::Internal(String::new()).is_client_error());
        assert_eq!(
            ImageError::from(OpError::Empty).to_string(),
            OpError::Empty.to_string()
        );
    }
}
