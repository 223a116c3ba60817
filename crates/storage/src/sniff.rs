//! The content type of an object, detected from its first bytes (the seed saved everything as
//! `.png` whatever it was).

/// How many leading bytes [`content_type`] needs at most.
pub const SNIFF_LEN: usize = 12;

/// The media type the leading bytes announce; `application/octet-stream` when unknown.
pub fn content_type(head: &[u8]) -> &'static str {
    const SIGNATURES: &[(&[u8], &str)] = &[
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"\xff\xd8\xff", "image/jpeg"),
        (b"GIF87a", "image/gif"),
        (b"GIF89a", "image/gif"),
        (b"BM", "image/bmp"),
        (b"II*\0", "image/tiff"),
        (b"MM\0*", "image/tiff"),
        (b"\0\0\x01\0", "image/x-icon"),
    ];
    if head.len() >= 12 && head.starts_with(b"RIFF") && &head[8..12] == b"WEBP" {
        return "image/webp";
    }
    SIGNATURES
        .iter()
        .find(|(magic, _)| head.starts_with(magic))
        .map_or("application/octet-stream", |(_, kind)| kind)
}

/// Every type [`content_type`] can answer.
const KNOWN: &[&str] = &[
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/bmp",
    "image/tiff",
    "image/x-icon",
];

/// The static form of a type stored with an object (S3 keeps it as text); anything this
/// service would not have stored reads as `application/octet-stream`.
pub fn known_content_type(stored: &str) -> &'static str {
    KNOWN
        .iter()
        .find(|k| **k == stored)
        .copied()
        .unwrap_or("application/octet-stream")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_the_image_formats() {
        assert_eq!(content_type(b"\x89PNG\r\n\x1a\n\0\0\0\x0d"), "image/png");
        assert_eq!(content_type(b"\xff\xd8\xff\xe0\0\x10JFIF"), "image/jpeg");
        assert_eq!(content_type(b"GIF89a\x01\0"), "image/gif");
        assert_eq!(content_type(b"RIFF\x24\0\0\0WEBPVP8 "), "image/webp");
        assert_eq!(content_type(b"BM\x36\0\0\0"), "image/bmp");
        assert_eq!(
            content_type(b"RIFF\x24\0\0\0WAVEfmt "),
            "application/octet-stream"
        );
        assert_eq!(content_type(b"hello"), "application/octet-stream");
        assert_eq!(content_type(b""), "application/octet-stream");
        assert_eq!(content_type(b"\x89PN"), "application/octet-stream");
    }
}
