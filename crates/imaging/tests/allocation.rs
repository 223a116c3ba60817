//! The header guard runs before any pixel buffer exists: refusing an image that claims
//! billions of pixels allocates almost nothing. One test only, so no other test's allocations
//! are counted.

mod common;

use std::alloc::System;

use common::{png_chunk, png_header};
use shoal_imaging::{ImageError, Limits, Pipeline, probe, process};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn refusing_a_decompression_bomb_allocates_no_pixel_buffer() {
    // 50000x50000 RGB would need 7.5 GB once decoded.
    let mut bomb = png_header(50_000, 50_000);
    bomb.extend(png_chunk(b"IDAT", &[0x78, 0x01, 0, 0, 0, 0]));

    let region = Region::new(GLOBAL);
    let probed = probe(&bomb, &Limits::default());
    let probe_bytes = region.change().bytes_allocated;
    assert!(matches!(probed, Err(ImageError::TooLarge(_))), "{probed:?}");

    let region = Region::new(GLOBAL);
    let processed = process(&bomb, &Pipeline::default(), None, &Limits::default());
    let process_bytes = region.change().bytes_allocated;
    assert!(
        matches!(processed, Err(ImageError::TooLarge(_))),
        "{processed:?}"
    );

    // The PNG decoder sets up about one row (150 KB) while it reads the header; the pixels
    // would be 50,000 times that.
    assert!(probe_bytes < 1 << 20, "probe allocated {probe_bytes} bytes");
    assert!(
        process_bytes < 1 << 20,
        "process allocated {process_bytes} bytes"
    );
}
