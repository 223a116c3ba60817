//! Operations and chains of operations: their text form, their bounds, and what they do to an
//! image's dimensions and pixel layout (without touching pixels).
//!
//! # Text form
//!
//! A chain is a comma-separated list run left to right: `resize:800x600,grayscale`.
//!
//! | op | meaning |
//! | --- | --- |
//! | `swap-rg` | swap the red and the green channel (the default chain) |
//! | `grayscale` | Rec. 709 luma; RGB becomes gray, RGBA becomes gray + alpha |
//! | `invert` | every colour channel `v` becomes `max - v`; alpha is kept |
//! | `blur:SIGMA` | Gaussian blur, `0 < SIGMA <= 50`, decimal notation (`2`, `0.5`) |
//! | `resize:WxH` | scale to fit inside `W`x`H`, keeping the aspect ratio (may enlarge) |
//! | `thumbnail:N` | scale down to fit inside `N`x`N`; never enlarges |
//! | `rotate:90\|180\|270` | rotate clockwise |
//! | `flip:h\|v` | mirror left-right (`h`) or top-bottom (`v`) |
//!
//! Whitespace policy: spaces (and tabs, newlines) around an operation are ignored, so
//! `resize:800x600, grayscale` is accepted; whitespace inside an operation (`resize: 800x600`)
//! is an error. Letter case is ignored (`Resize:800X600`). [`Pipeline`]'s `Display` gives the
//! canonical form (lower case, no spaces), which parses back to the same chain.
//!
//! Bounds: at most [`MAX_OPS`] operations; `W`, `H` and `N` in `1..=`[`MAX_DIMENSION`]; sigma in
//! `(0, `[`MAX_BLUR_SIGMA`]`]`. Pixel-count limits depend on the image and are checked by
//! [`crate::check`].

use std::fmt;
use std::str::FromStr;

use crate::format::ColorInfo;

/// The most operations one chain may hold.
pub const MAX_OPS: usize = 16;
/// The largest blur sigma. Blur time does not grow with sigma (see [`crate`] docs), but a
/// larger sigma turns any image into a flat colour.
pub const MAX_BLUR_SIGMA: f32 = 50.0;
/// The largest `W`, `H` or `N` of `resize` and `thumbnail` (JPEG's limit; the chain's pixel
/// count is bounded separately by [`crate::Limits::max_pixels`]).
pub const MAX_DIMENSION: u32 = 65_535;
/// The longest chain text accepted, in bytes.
pub const MAX_TEXT_LEN: usize = 1024;

/// The operations shoal runs, listed in the text form for messages.
const KNOWN: &str = "swap-rg, grayscale, invert, blur:SIGMA, resize:WxH, thumbnail:N, \
                     rotate:90|180|270, flip:h|v";

/// One image operation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    /// Swap the red and the green channel. Gray images are left as they are.
    SwapRg,
    /// Convert to gray (Rec. 709 luma), keeping bit depth and alpha.
    Grayscale,
    /// Invert the colour channels (`max - v`); alpha is kept.
    Invert,
    /// Gaussian blur with this sigma, in pixels.
    Blur(f32),
    /// Scale to fit inside `width` x `height`, keeping the aspect ratio. May enlarge.
    Resize {
        /// The most columns the result may have.
        width: u32,
        /// The most rows the result may have.
        height: u32,
    },
    /// Scale down to fit inside `N` x `N`, keeping the aspect ratio. Never enlarges.
    Thumbnail(u32),
    /// Rotate clockwise by 90, 180 or 270 degrees.
    Rotate(u16),
    /// Mirror left-right.
    FlipH,
    /// Mirror top-bottom.
    FlipV,
}

/// Why an operation or a chain of operations was refused.
///
/// Messages quote the offending text and say what is expected, so they can be shown to the
/// person who typed the chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// The chain is empty or only whitespace.
    #[error(
        "no operation given; expected a comma-separated list such as \"resize:800x600,grayscale\""
    )]
    Empty,
    /// The chain text is longer than [`MAX_TEXT_LEN`].
    #[error("the operation list is {len} bytes long; at most {max} allowed")]
    TooLong {
        /// Length of the text, in bytes.
        len: usize,
        /// [`MAX_TEXT_LEN`].
        max: usize,
    },
    /// More than [`MAX_OPS`] operations.
    #[error("{count} operations given; at most {max} allowed in one chain")]
    TooMany {
        /// Operations given.
        count: usize,
        /// [`MAX_OPS`].
        max: usize,
    },
    /// An empty item: two commas in a row, or a comma at the start or the end.
    #[error("operation {position} is empty (two commas in a row, or a comma at the start or end)")]
    EmptyItem {
        /// 1-based position in the chain.
        position: usize,
    },
    /// Whitespace inside an operation.
    #[error("\"{text}\": spaces are allowed around commas but not inside an operation")]
    Whitespace {
        /// The operation as given.
        text: String,
    },
    /// An operation name shoal does not know.
    #[error("unknown operation \"{name}\"; known operations: {KNOWN}")]
    Unknown {
        /// The name as given.
        name: String,
    },
    /// An operation that needs an argument was given none.
    #[error("\"{name}\" needs an argument: {usage}")]
    MissingArgument {
        /// The operation's name.
        name: &'static str,
        /// How the operation is written.
        usage: &'static str,
    },
    /// An operation that takes no argument was given one.
    #[error("\"{text}\": {name} takes no argument")]
    UnexpectedArgument {
        /// The operation's name.
        name: &'static str,
        /// The operation as given.
        text: String,
    },
    /// A malformed or out-of-bounds argument.
    #[error("\"{text}\": {problem} (usage: {usage})")]
    InvalidArgument {
        /// The operation as given (or, for an [`Op`] built in code, its canonical text).
        text: String,
        /// What is wrong.
        problem: String,
        /// How the operation is written.
        usage: &'static str,
    },
}

const BLUR_USAGE: &str = "blur:SIGMA with 0 < SIGMA <= 50, e.g. blur:2.5";
const RESIZE_USAGE: &str = "resize:WxH with W and H from 1 to 65535, e.g. resize:800x600";
const THUMBNAIL_USAGE: &str = "thumbnail:N with N from 1 to 65535, e.g. thumbnail:256";
const ROTATE_USAGE: &str = "rotate:90, rotate:180 or rotate:270";
const FLIP_USAGE: &str = "flip:h or flip:v";

impl Op {
    /// Checks the operation's argument against its bounds (parsing already does this; an `Op`
    /// built in code is checked by [`Pipeline::new`]).
    pub fn validate(&self) -> Result<(), OpError> {
        let invalid = |problem: &str, usage| OpError::InvalidArgument {
            text: self.to_string(),
            problem: problem.to_owned(),
            usage,
        };
        match *self {
            Op::Blur(sigma) => {
                if !(sigma.is_finite() && sigma > 0.0 && sigma <= MAX_BLUR_SIGMA) {
                    return Err(invalid(
                        "sigma must be greater than 0 and at most 50",
                        BLUR_USAGE,
                    ));
                }
            }
            Op::Resize { width, height } => {
                if !(1..=MAX_DIMENSION).contains(&width) || !(1..=MAX_DIMENSION).contains(&height) {
                    return Err(invalid(
                        "width and height must be from 1 to 65535",
                        RESIZE_USAGE,
                    ));
                }
            }
            Op::Thumbnail(size) => {
                if !(1..=MAX_DIMENSION).contains(&size) {
                    return Err(invalid("the size must be from 1 to 65535", THUMBNAIL_USAGE));
                }
            }
            Op::Rotate(degrees) => {
                if !matches!(degrees, 90 | 180 | 270) {
                    return Err(invalid("the angle must be 90, 180 or 270", ROTATE_USAGE));
                }
            }
            Op::SwapRg | Op::Grayscale | Op::Invert | Op::FlipH | Op::FlipV => {}
        }
        Ok(())
    }

    /// The dimensions of the result for an input of `width` x `height`.
    pub fn output_dimensions(&self, width: u32, height: u32) -> (u32, u32) {
        match *self {
            Op::Resize {
                width: max_width,
                height: max_height,
            } => fit_inside(width, height, max_width, max_height),
            Op::Thumbnail(size) if width > size || height > size => {
                fit_inside(width, height, size, size)
            }
            Op::Rotate(90 | 270) => (height, width),
            _ => (width, height),
        }
    }

    /// The pixel layout of the result for an input of layout `color`.
    pub fn output_color(&self, color: ColorInfo) -> ColorInfo {
        match self {
            Op::Grayscale => color.to_grayscale(),
            _ => color,
        }
    }
}

/// The largest size with the aspect ratio of `width` x `height` that fits inside `max_width` x
/// `max_height`, each side rounded to the nearest integer and at least 1.
fn fit_inside(width: u32, height: u32, max_width: u32, max_height: u32) -> (u32, u32) {
    if width == 0 || height == 0 {
        return (width, height);
    }
    let (w, h) = (u64::from(width), u64::from(height));
    let (max_w, max_h) = (u64::from(max_width), u64::from(max_height));
    // Compare the aspect ratios w/h and max_w/max_h without division.
    let (new_w, new_h) = if w * max_h >= h * max_w {
        // Relatively wider than the box: the width binds.
        (max_w, ((h * max_w * 2 + w) / (2 * w)).clamp(1, max_h))
    } else {
        (((w * max_h * 2 + h) / (2 * h)).clamp(1, max_w), max_h)
    };
    // Both are at most max_width / max_height, so they fit in u32.
    (
        u32::try_from(new_w).unwrap_or(max_width),
        u32::try_from(new_h).unwrap_or(max_height),
    )
}

impl fmt::Display for Op {
    /// The canonical text form, e.g. `resize:800x600`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::SwapRg => f.write_str("swap-rg"),
            Op::Grayscale => f.write_str("grayscale"),
            Op::Invert => f.write_str("invert"),
            // f32's Display is the shortest text that parses back to the same value.
            Op::Blur(sigma) => write!(f, "blur:{sigma}"),
            Op::Resize { width, height } => write!(f, "resize:{width}x{height}"),
            Op::Thumbnail(size) => write!(f, "thumbnail:{size}"),
            Op::Rotate(degrees) => write!(f, "rotate:{degrees}"),
            Op::FlipH => f.write_str("flip:h"),
            Op::FlipV => f.write_str("flip:v"),
        }
    }
}

impl FromStr for Op {
    type Err = OpError;

    /// Parses one operation; surrounding whitespace is ignored.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_op(text.trim())
    }
}

fn parse_op(text: &str) -> Result<Op, OpError> {
    if text.chars().any(char::is_whitespace) {
        return Err(OpError::Whitespace {
            text: text.to_owned(),
        });
    }
    let lower = text.to_ascii_lowercase();
    let (name, argument) = match lower.split_once(':') {
        Some((name, argument)) => (name, Some(argument)),
        None => (lower.as_str(), None),
    };
    let invalid = |problem: &str, usage| OpError::InvalidArgument {
        text: text.to_owned(),
        problem: problem.to_owned(),
        usage,
    };
    let op = match name {
        "swap-rg" => no_argument(Op::SwapRg, "swap-rg", argument, text)?,
        "grayscale" => no_argument(Op::Grayscale, "grayscale", argument, text)?,
        "invert" => no_argument(Op::Invert, "invert", argument, text)?,
        "blur" => {
            let argument = required(argument, "blur", BLUR_USAGE)?;
            let sigma = parse_decimal(argument)
                .ok_or_else(|| invalid("sigma must be a decimal number", BLUR_USAGE))?;
            Op::Blur(sigma)
        }
        "resize" => {
            let argument = required(argument, "resize", RESIZE_USAGE)?;
            let (width, height) = argument
                .split_once('x')
                .ok_or_else(|| invalid("expected WxH", RESIZE_USAGE))?;
            let width = parse_dimension(width)
                .ok_or_else(|| invalid("the width must be a whole number", RESIZE_USAGE))?;
            let height = parse_dimension(height)
                .ok_or_else(|| invalid("the height must be a whole number", RESIZE_USAGE))?;
            Op::Resize { width, height }
        }
        "thumbnail" => {
            let argument = required(argument, "thumbnail", THUMBNAIL_USAGE)?;
            let size = parse_dimension(argument)
                .ok_or_else(|| invalid("the size must be a whole number", THUMBNAIL_USAGE))?;
            Op::Thumbnail(size)
        }
        "rotate" => match required(argument, "rotate", ROTATE_USAGE)? {
            "90" => Op::Rotate(90),
            "180" => Op::Rotate(180),
            "270" => Op::Rotate(270),
            _ => return Err(invalid("the angle must be 90, 180 or 270", ROTATE_USAGE)),
        },
        "flip" => match required(argument, "flip", FLIP_USAGE)? {
            "h" => Op::FlipH,
            "v" => Op::FlipV,
            _ => return Err(invalid("the direction must be h or v", FLIP_USAGE)),
        },
        _ => {
            return Err(OpError::Unknown {
                name: text.split(':').next().unwrap_or(text).to_owned(),
            });
        }
    };
    // Bounds are checked in one place; rewrite the message to quote the text as given.
    op.validate().map_err(|error| match error {
        OpError::InvalidArgument { problem, usage, .. } => OpError::InvalidArgument {
            text: text.to_owned(),
            problem,
            usage,
        },
        other => other,
    })?;
    Ok(op)
}

fn no_argument(
    op: Op,
    name: &'static str,
    argument: Option<&str>,
    text: &str,
) -> Result<Op, OpError> {
    match argument {
        None => Ok(op),
        Some(_) => Err(OpError::UnexpectedArgument {
            name,
            text: text.to_owned(),
        }),
    }
}

fn required<'a>(
    argument: Option<&'a str>,
    name: &'static str,
    usage: &'static str,
) -> Result<&'a str, OpError> {
    match argument {
        Some(argument) if !argument.is_empty() => Ok(argument),
        _ => Err(OpError::MissingArgument { name, usage }),
    }
}

/// Digits only (no sign, no spaces); values beyond `u32` become `u32::MAX`, so they fail the
/// bound check with the bound in the message rather than a parse error.
fn parse_dimension(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse::<u32>().unwrap_or(u32::MAX))
}

/// `123`, `1.5`, `.5` or `5.`: digits with at most one decimal point; no sign, exponent, `inf`
/// or `nan`, which `f32::from_str` would accept.
fn parse_decimal(text: &str) -> Option<f32> {
    let digits = text.bytes().filter(u8::is_ascii_digit).count();
    let points = text.bytes().filter(|&b| b == b'.').count();
    if digits == 0 || points > 1 || digits + points != text.len() {
        return None;
    }
    text.parse::<f32>().ok()
}

/// A chain of operations, run left to right. Always valid: built by [`Pipeline::parse`] or
/// [`Pipeline::new`], which check every bound that does not depend on the image.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    ops: Vec<Op>,
}

impl Pipeline {
    /// A chain of the given operations, checked against the bounds.
    pub fn new(ops: Vec<Op>) -> Result<Pipeline, OpError> {
        if ops.is_empty() {
            return Err(OpError::Empty);
        }
        if ops.len() > MAX_OPS {
            return Err(OpError::TooMany {
                count: ops.len(),
                max: MAX_OPS,
            });
        }
        for op in &ops {
            op.validate()?;
        }
        Ok(Pipeline { ops })
    }

    /// Parses the text form (see the [module docs](self)).
    pub fn parse(text: &str) -> Result<Pipeline, OpError> {
        if text.len() > MAX_TEXT_LEN {
            return Err(OpError::TooLong {
                len: text.len(),
                max: MAX_TEXT_LEN,
            });
        }
        if text.trim().is_empty() {
            return Err(OpError::Empty);
        }
        let count = text.split(',').count();
        if count > MAX_OPS {
            return Err(OpError::TooMany {
                count,
                max: MAX_OPS,
            });
        }
        let ops = text
            .split(',')
            .enumerate()
            .map(|(index, item)| {
                let item = item.trim();
                if item.is_empty() {
                    Err(OpError::EmptyItem {
                        position: index + 1,
                    })
                } else {
                    parse_op(item)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pipeline { ops })
    }

    /// The operations, in the order they run.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// The dimensions of the result for an input of `width` x `height` (after EXIF orientation).
    pub fn output_dimensions(&self, width: u32, height: u32) -> (u32, u32) {
        self.ops
            .iter()
            .fold((width, height), |(w, h), op| op.output_dimensions(w, h))
    }

    /// The dimensions after each operation, in order; the last is the result's.
    pub fn stage_dimensions(&self, width: u32, height: u32) -> Vec<(u32, u32)> {
        let mut current = (width, height);
        self.ops
            .iter()
            .map(|op| {
                current = op.output_dimensions(current.0, current.1);
                current
            })
            .collect()
    }

    /// The pixel layout of the result (before any conversion the output format needs).
    pub fn output_color(&self, color: ColorInfo) -> ColorInfo {
        self.ops
            .iter()
            .fold(color, |color, op| op.output_color(color))
    }
}

impl Default for Pipeline {
    /// `swap-rg`: shoal's default operation.
    fn default() -> Self {
        Pipeline {
            ops: vec![Op::SwapRg],
        }
    }
}

impl fmt::Display for Pipeline {
    /// The canonical text form, e.g. `resize:800x600,grayscale`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, op) in self.ops.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            write!(f, "{op}")?;
        }
        Ok(())
    }
}

impl FromStr for Pipeline {
    type Err = OpError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Pipeline::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Op>, OpError> {
        Pipeline::parse(text).map(|pipeline| pipeline.ops().to_vec())
    }

    fn error(text: &str) -> String {
        Pipeline::parse(text)
            .expect_err("the text must be refused")
            .to_string()
    }

    #[test]
    fn every_op_parses() {
        let cases = [
            ("swap-rg", Op::SwapRg),
            ("grayscale", Op::Grayscale),
            ("invert", Op::Invert),
            ("blur:2", Op::Blur(2.0)),
            ("blur:0.5", Op::Blur(0.5)),
            ("blur:.5", Op::Blur(0.5)),
            ("blur:5.", Op::Blur(5.0)),
            ("blur:50", Op::Blur(50.0)),
            (
                "resize:800x600",
                Op::Resize {
                    width: 800,
                    height: 600,
                },
            ),
            (
                "resize:1x65535",
                Op::Resize {
                    width: 1,
                    height: 65535,
                },
            ),
            ("thumbnail:256", Op::Thumbnail(256)),
            ("rotate:90", Op::Rotate(90)),
            ("rotate:180", Op::Rotate(180)),
            ("rotate:270", Op::Rotate(270)),
            ("flip:h", Op::FlipH),
            ("flip:v", Op::FlipV),
        ];
        for (text, op) in cases {
            assert_eq!(parse(text), Ok(vec![op]), "{text}");
            assert_eq!(text.parse::<Op>(), Ok(op), "{text}");
        }
    }

    #[test]
    fn chains_run_in_order() {
        assert_eq!(
            parse("resize:800x600,grayscale"),
            Ok(vec![
                Op::Resize {
                    width: 800,
                    height: 600
                },
                Op::Grayscale
            ])
        );
        assert_eq!(
            parse("flip:h,swap-rg,flip:h"),
            Ok(vec![Op::FlipH, Op::SwapRg, Op::FlipH])
        );
    }

    #[test]
    fn whitespace_around_ops_is_ignored_and_case_too() {
        assert_eq!(
            parse(" resize:800x600 ,\tgrayscale\n"),
            parse("resize:800x600,grayscale")
        );
        assert_eq!(
            parse("Resize:800X600,GRAYSCALE"),
            parse("resize:800x600,grayscale")
        );
        assert_eq!(parse("FLIP:H"), Ok(vec![Op::FlipH]));
    }

    #[test]
    fn whitespace_inside_an_op_is_refused() {
        assert_eq!(
            error("resize: 800x600"),
            "\"resize: 800x600\": spaces are allowed around commas but not inside an operation"
        );
        assert!(Pipeline::parse("blur :2").is_err());
        assert!(Pipeline::parse("resize:800 x600").is_err());
    }

    #[test]
    fn canonical_display_round_trips() {
        for text in [
            "swap-rg",
            "resize:800x600,grayscale",
            "blur:2.5,invert,thumbnail:128,rotate:270,flip:v,flip:h",
            "blur:0.1",
            "blur:50",
        ] {
            let pipeline = Pipeline::parse(text).expect("valid");
            assert_eq!(pipeline.to_string(), text);
            assert_eq!(Pipeline::parse(&pipeline.to_string()), Ok(pipeline));
        }
        let messy = Pipeline::parse(" Blur:02.50 , RESIZE:0800x600").expect("valid");
        assert_eq!(messy.to_string(), "blur:2.5,resize:800x600");
        assert_eq!(Pipeline::default().to_string(), "swap-rg");
    }

    #[test]
    fn empty_and_malformed_chains_are_refused() {
        assert_eq!(Pipeline::parse(""), Err(OpError::Empty));
        assert_eq!(Pipeline::parse("  "), Err(OpError::Empty));
        assert_eq!(
            Pipeline::parse("grayscale,,invert"),
            Err(OpError::EmptyItem { position: 2 })
        );
        assert_eq!(
            Pipeline::parse("grayscale,"),
            Err(OpError::EmptyItem { position: 2 })
        );
        assert_eq!(
            Pipeline::parse(",grayscale"),
            Err(OpError::EmptyItem { position: 1 })
        );
        assert_eq!(
            error("grayscale,"),
            "operation 2 is empty (two commas in a row, or a comma at the start or end)"
        );
    }

    #[test]
    fn unknown_ops_name_the_known_ones() {
        assert_eq!(
            error("sharpen:2"),
            "unknown operation \"sharpen\"; known operations: swap-rg, grayscale, invert, \
             blur:SIGMA, resize:WxH, thumbnail:N, rotate:90|180|270, flip:h|v"
        );
        assert!(matches!(
            Pipeline::parse("swap-rb"),
            Err(OpError::Unknown { name }) if name == "swap-rb"
        ));
    }

    #[test]
    fn missing_and_unexpected_arguments() {
        assert_eq!(
            error("blur"),
            "\"blur\" needs an argument: blur:SIGMA with 0 < SIGMA <= 50, e.g. blur:2.5"
        );
        assert_eq!(
            error("blur:").split(':').next(),
            Some("\"blur\" needs an argument")
        );
        assert_eq!(
            error("grayscale:1"),
            "\"grayscale:1\": grayscale takes no argument"
        );
        assert!(matches!(
            Pipeline::parse("invert:"),
            Err(OpError::UnexpectedArgument { .. })
        ));
        assert!(matches!(
            Pipeline::parse("resize"),
            Err(OpError::MissingArgument { name: "resize", .. })
        ));
    }

    #[test]
    fn malformed_arguments() {
        for text in [
            "blur:abc",
            "blur:-1",
            "blur:+1",
            "blur:1e1",
            "blur:inf",
            "blur:nan",
            "blur:1.2.3",
            "blur:.",
            "resize:800",
            "resize:800x",
            "resize:x600",
            "resize:-1x5",
            "resize:8x6x4",
            "resize:1.5x2",
            "thumbnail:big",
            "thumbnail:+5",
            "rotate:45",
            "rotate:-90",
            "rotate:0",
            "rotate:360",
            "flip:x",
            "flip:hv",
        ] {
            assert!(
                matches!(Pipeline::parse(text), Err(OpError::InvalidArgument { .. })),
                "{text}: {:?}",
                Pipeline::parse(text)
            );
        }
        assert_eq!(
            error("resize:800"),
            "\"resize:800\": expected WxH (usage: resize:WxH with W and H from 1 to 65535, e.g. \
             resize:800x600)"
        );
        assert_eq!(
            error("rotate:45"),
            "\"rotate:45\": the angle must be 90, 180 or 270 (usage: rotate:90, rotate:180 or \
             rotate:270)"
        );
    }

    #[test]
    fn out_of_bounds_arguments() {
        for text in [
            "blur:0",
            "blur:0.0",
            "blur:50.01",
            "blur:1000000000000000000000000000000000000000000000",
            "resize:0x600",
            "resize:800x0",
            "resize:65536x1",
            "resize:99999999999999999999x1",
            "thumbnail:0",
            "thumbnail:65536",
        ] {
            assert!(
                matches!(Pipeline::parse(text), Err(OpError::InvalidArgument { .. })),
                "{text}"
            );
        }
        assert_eq!(
            error("blur:51"),
            "\"blur:51\": sigma must be greater than 0 and at most 50 (usage: blur:SIGMA with 0 \
             < SIGMA <= 50, e.g. blur:2.5)"
        );
        assert_eq!(
            error("resize:0x600"),
            "\"resize:0x600\": width and height must be from 1 to 65535 (usage: resize:WxH with \
             W and H from 1 to 65535, e.g. resize:800x600)"
        );
    }

    #[test]
    fn chain_length_is_bounded() {
        let sixteen = vec!["invert"; 16].join(",");
        assert_eq!(Pipeline::parse(&sixteen).map(|p| p.ops().len()), Ok(16));
        let seventeen = vec!["invert"; 17].join(",");
        assert_eq!(
            Pipeline::parse(&seventeen),
            Err(OpError::TooMany { count: 17, max: 16 })
        );
        assert_eq!(
            Pipeline::parse(&seventeen)
                .expect_err("too many")
                .to_string(),
            "17 operations given; at most 16 allowed in one chain"
        );
        let long = "a".repeat(MAX_TEXT_LEN + 1);
        assert!(matches!(
            Pipeline::parse(&long),
            Err(OpError::TooLong {
                len: 1025,
                max: 1024
            })
        ));
    }

    #[test]
    fn ops_built_in_code_are_validated() {
        assert_eq!(Pipeline::new(vec![]), Err(OpError::Empty));
        assert!(Pipeline::new(vec![Op::Rotate(45)]).is_err());
        assert!(Pipeline::new(vec![Op::Blur(f32::NAN)]).is_err());
        assert!(Pipeline::new(vec![Op::Blur(f32::INFINITY)]).is_err());
        assert!(Pipeline::new(vec![Op::Blur(-1.0)]).is_err());
        assert!(Pipeline::new(vec![Op::Thumbnail(0)]).is_err());
        assert!(
            Pipeline::new(vec![Op::Resize {
                width: 10,
                height: 70_000
            }])
            .is_err()
        );
        assert!(Pipeline::new(vec![Op::Invert; 17]).is_err());
        assert!(Pipeline::new(vec![Op::Rotate(90), Op::Blur(1.5)]).is_ok());
    }

    #[test]
    fn resize_fits_inside_and_keeps_aspect_ratio() {
        let resize = |w, h| Op::Resize {
            width: w,
            height: h,
        };
        assert_eq!(resize(800, 600).output_dimensions(4000, 3000), (800, 600));
        assert_eq!(resize(800, 600).output_dimensions(3000, 3000), (600, 600));
        assert_eq!(resize(800, 600).output_dimensions(1000, 200), (800, 160));
        assert_eq!(resize(800, 600).output_dimensions(200, 1000), (120, 600));
        // Enlarges.
        assert_eq!(resize(800, 600).output_dimensions(40, 30), (800, 600));
        // Rounds to nearest and never below 1.
        assert_eq!(resize(100, 100).output_dimensions(3, 2), (100, 67));
        assert_eq!(resize(10, 10).output_dimensions(10_000, 1), (10, 1));
        assert_eq!(resize(65535, 65535).output_dimensions(1, 65535), (1, 65535));
    }

    #[test]
    fn thumbnail_only_shrinks() {
        assert_eq!(Op::Thumbnail(256).output_dimensions(1024, 512), (256, 128));
        assert_eq!(Op::Thumbnail(256).output_dimensions(100, 50), (100, 50));
        assert_eq!(Op::Thumbnail(256).output_dimensions(300, 20), (256, 17));
    }

    #[test]
    fn chain_dimensions_and_layout() {
        let pipeline =
            Pipeline::parse("resize:800x600,rotate:90,thumbnail:300,grayscale").expect("valid");
        assert_eq!(
            pipeline.stage_dimensions(4000, 3000),
            vec![(800, 600), (600, 800), (225, 300), (225, 300)]
        );
        assert_eq!(pipeline.output_dimensions(4000, 3000), (225, 300));
        assert_eq!(
            pipeline.output_color(ColorInfo::RGBA8.with_bits(16)),
            ColorInfo::LA8.with_bits(16)
        );
        assert_eq!(
            Pipeline::default().output_color(ColorInfo::RGB8),
            ColorInfo::RGB8
        );
    }
}
