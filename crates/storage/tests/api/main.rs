//! Integration tests of `shoal storage`: one API suite run against the local directory and
//! against a real S3-compatible server (moto), plus tests of the local layout.

mod api;
mod local;
mod support;
