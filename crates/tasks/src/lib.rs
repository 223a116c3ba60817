//! `shoal tasks`: the seed's task database as a durable leased work queue.
//!
//! Under construction: the state machine comes first, so every route is built on one decision
//! function. The plan (store, queue, routes, tests) is in docs/ARCHITECTURE.md.
//!
//! # Layout
//! - [`state`]: task states and the one function that decides every transition.

pub mod state;
