//! Running operations on decoded pixels, for every layout the decoders produce: 8- and 16-bit,
//! gray, gray + alpha, RGB, RGBA.

use fast_image_resize as fir;
use image::{DynamicImage, ImageBuffer};

use crate::blur;
use crate::error::ImageError;
use crate::op::{Op, Pipeline};

/// A channel value: `u8` or `u16`.
pub(crate) trait Sample: Copy + Default + 'static {
    /// The largest value (opaque alpha, white).
    const MAX: u32;
    fn to_u32(self) -> u32;
    /// Narrows a value known to be at most `MAX`.
    fn from_u32(value: u32) -> Self;
}

impl Sample for u8 {
    const MAX: u32 = 255;
    fn to_u32(self) -> u32 {
        u32::from(self)
    }
    fn from_u32(value: u32) -> Self {
        u8::try_from(value).unwrap_or(u8::MAX)
    }
}

impl Sample for u16 {
    const MAX: u32 = 65_535;
    fn to_u32(self) -> u32 {
        u32::from(self)
    }
    fn from_u32(value: u32) -> Self {
        u16::try_from(value).unwrap_or(u16::MAX)
    }
}

/// Runs the chain on `image` (already oriented).
pub(crate) fn run(image: DynamicImage, pipeline: &Pipeline) -> Result<DynamicImage, ImageError> {
    pipeline.ops().iter().try_fold(normalize(image), apply)
}

/// Brings a layout no decoder of ours produces (32-bit float) to 16 bits, so every operation
/// only meets the eight integer layouts.
fn normalize(image: DynamicImage) -> DynamicImage {
    match image {
        DynamicImage::ImageLuma8(_)
        | DynamicImage::ImageLumaA8(_)
        | DynamicImage::ImageRgb8(_)
        | DynamicImage::ImageRgba8(_)
        | DynamicImage::ImageLuma16(_)
        | DynamicImage::ImageLumaA16(_)
        | DynamicImage::ImageRgb16(_)
        | DynamicImage::ImageRgba16(_) => image,
        other if other.color().has_alpha() => DynamicImage::ImageRgba16(other.to_rgba16()),
        other => DynamicImage::ImageRgb16(other.to_rgb16()),
    }
}

fn apply(mut image: DynamicImage, op: &Op) -> Result<DynamicImage, ImageError> {
    Ok(match *op {
        Op::SwapRg => {
            for_each_pixel(&mut image, swap_rg::<u8>, swap_rg::<u16>);
            image
        }
        Op::Invert => {
            for_each_pixel(&mut image, invert::<u8>, invert::<u16>);
            image
        }
        Op::Grayscale => grayscale(image)?,
        Op::Blur(sigma) => blur::blur(image, sigma)?,
        Op::Resize { .. } | Op::Thumbnail(_) => {
            let (width, height) = op.output_dimensions(image.width(), image.height());
            resize(image, width, height)?
        }
        Op::Rotate(90) => image.rotate90(),
        Op::Rotate(180) => {
            image.apply_orientation(image::metadata::Orientation::Rotate180);
            image
        }
        Op::Rotate(270) => image.rotate270(),
        Op::FlipH => {
            image.apply_orientation(image::metadata::Orientation::FlipHorizontal);
            image
        }
        Op::FlipV => {
            image.apply_orientation(image::metadata::Orientation::FlipVertical);
            image
        }
        Op::Rotate(degrees) => {
            return Err(ImageError::Internal(format!(
                "a rotation by {degrees} degrees reached the pixels"
            )));
        }
    })
}

/// The samples of an image, whatever its layout.
enum SamplesMut<'a> {
    Eight(&'a mut [u8]),
    Sixteen(&'a mut [u16]),
}

fn samples_mut(image: &mut DynamicImage) -> Option<SamplesMut<'_>> {
    Some(match image {
        DynamicImage::ImageLuma8(buffer) => SamplesMut::Eight(buffer),
        DynamicImage::ImageLumaA8(buffer) => SamplesMut::Eight(buffer),
        DynamicImage::ImageRgb8(buffer) => SamplesMut::Eight(buffer),
        DynamicImage::ImageRgba8(buffer) => SamplesMut::Eight(buffer),
        DynamicImage::ImageLuma16(buffer) => SamplesMut::Sixteen(buffer),
        DynamicImage::ImageLumaA16(buffer) => SamplesMut::Sixteen(buffer),
        DynamicImage::ImageRgb16(buffer) => SamplesMut::Sixteen(buffer),
        DynamicImage::ImageRgba16(buffer) => SamplesMut::Sixteen(buffer),
        // `normalize` leaves no other layout.
        _ => return None,
    })
}

/// Calls `on_u8` or `on_u16` with each pixel's samples and whether the last one is alpha.
fn for_each_pixel(
    image: &mut DynamicImage,
    on_u8: impl Fn(&mut [u8], bool),
    on_u16: impl Fn(&mut [u16], bool),
) {
    let channels = usize::from(image.color().channel_count());
    let alpha = image.color().has_alpha();
    match samples_mut(image) {
        Some(SamplesMut::Eight(samples)) => samples
            .chunks_exact_mut(channels)
            .for_each(|pixel| on_u8(pixel, alpha)),
        Some(SamplesMut::Sixteen(samples)) => samples
            .chunks_exact_mut(channels)
            .for_each(|pixel| on_u16(pixel, alpha)),
        None => {}
    }
}

/// Gray pixels have no red or green to swap: R = G = B, so they are left as they are.
fn swap_rg<T>(pixel: &mut [T], _alpha: bool) {
    if pixel.len() >= 3 {
        pixel.swap(0, 1);
    }
}

fn invert<T: Sample>(pixel: &mut [T], alpha: bool) {
    let color = pixel.len() - usize::from(alpha);
    for value in &mut pixel[..color] {
        *value = T::from_u32(T::MAX - value.to_u32());
    }
}

/// Rec. 709 luma on the stored (gamma-encoded) values, with the `image` crate's coefficients
/// but rounded to nearest where `image` truncates: `Y = (2126 R + 7152 G + 722 B + 5000) /
/// 10000`, integer arithmetic.
pub(crate) fn luma<T: Sample>(r: T, g: T, b: T) -> T {
    // At most 65535 * 10000 + 5000, well inside u32.
    T::from_u32((2126 * r.to_u32() + 7152 * g.to_u32() + 722 * b.to_u32() + 5000) / 10_000)
}

/// RGB to gray and RGBA to gray + alpha, keeping the bit depth; gray images stay as they are.
fn grayscale(image: DynamicImage) -> Result<DynamicImage, ImageError> {
    let (width, height) = (image.width(), image.height());
    Ok(match image {
        DynamicImage::ImageRgb8(buffer) => {
            DynamicImage::ImageLuma8(rebuild(width, height, to_gray(&buffer, 3))?)
        }
        DynamicImage::ImageRgba8(buffer) => {
            DynamicImage::ImageLumaA8(rebuild(width, height, to_gray(&buffer, 4))?)
        }
        DynamicImage::ImageRgb16(buffer) => {
            DynamicImage::ImageLuma16(rebuild(width, height, to_gray(&buffer, 3))?)
        }
        DynamicImage::ImageRgba16(buffer) => {
            DynamicImage::ImageLumaA16(rebuild(width, height, to_gray(&buffer, 4))?)
        }
        gray => gray,
    })
}

fn to_gray<T: Sample>(samples: &[T], channels: usize) -> Vec<T> {
    let alpha = channels == 4;
    let mut out = Vec::with_capacity(samples.len() / channels * (1 + usize::from(alpha)));
    for pixel in samples.chunks_exact(channels) {
        out.push(luma(pixel[0], pixel[1], pixel[2]));
        if alpha {
            out.push(pixel[3]);
        }
    }
    out
}

/// An image buffer from raw samples whose length the caller computed.
pub(crate) fn rebuild<P: image::Pixel>(
    width: u32,
    height: u32,
    samples: Vec<P::Subpixel>,
) -> Result<ImageBuffer<P, Vec<P::Subpixel>>, ImageError> {
    ImageBuffer::from_raw(width, height, samples).ok_or_else(|| {
        ImageError::Internal(format!("a {width}x{height} buffer has the wrong length"))
    })
}

/// Lanczos3 resampling with `fast_image_resize` (SIMD; 10-25x faster than `image::imageops`,
/// see the crate docs). Alpha is premultiplied for the resampling and divided out after, so
/// transparent pixels do not bleed their hidden colour into visible neighbours.
fn resize(image: DynamicImage, width: u32, height: u32) -> Result<DynamicImage, ImageError> {
    if (width, height) == (image.width(), image.height()) {
        return Ok(image);
    }
    let mut resized = DynamicImage::new(width, height, image.color());
    let options = fir::ResizeOptions::new()
        .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Lanczos3));
    fir::Resizer::new()
        .resize(&image, &mut resized, &options)
        .map_err(|error| ImageError::Internal(format!("resize failed: {error}")))?;
    Ok(resized)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, Rgba};

    #[test]
    fn luma_is_rec709_rounded() {
        for (r, g, b) in [
            (0u8, 0u8, 0u8),
            (255, 255, 255),
            (255, 0, 0),
            (12, 200, 77),
            (1, 2, 3),
        ] {
            let exact = 0.2126 * f64::from(r) + 0.7152 * f64::from(g) + 0.0722 * f64::from(b);
            assert_eq!(f64::from(luma(r, g, b)), exact.round(), "{r},{g},{b}");
        }
        assert_eq!(luma(65535u16, 65535, 65535), 65535);
        assert_eq!(luma(0u16, 65535, 0), 46871);
    }

    #[test]
    fn ops_on_tiny_buffers() {
        let rgba = DynamicImage::ImageRgba8(ImageBuffer::from_pixel(1, 1, Rgba([10, 20, 30, 40])));
        let swapped = apply(rgba.clone(), &Op::SwapRg).expect("swap");
        assert_eq!(swapped.as_bytes(), &[20, 10, 30, 40]);
        let inverted = apply(rgba, &Op::Invert).expect("invert");
        assert_eq!(inverted.as_bytes(), &[245, 235, 225, 40]);
        let rgb16 = DynamicImage::ImageRgb16(ImageBuffer::from_pixel(1, 1, Rgb([1u16, 2, 65535])));
        let inverted = apply(rgb16, &Op::Invert).expect("invert");
        assert_eq!(
            inverted.as_rgb16().map(|b| b.as_raw().clone()),
            Some(vec![65534, 65533, 0])
        );
    }
}
