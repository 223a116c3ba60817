//! Integration tests of the multicast hub with real subscribers on loopback.

mod api;
mod delivery;
mod support;
