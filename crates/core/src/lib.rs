//! shoal-core: the plumbing every shoal service stands on.
//!
//! A service crate builds an [`axum::Router`] of its own routes and hands it to
//! [`server::run`], which adds everything operators expect from every shoal service:
//! request ids, tracing, Prometheus metrics, body limits, request timeouts, the optional
//! shared-secret check, `/healthz`, `/readyz`, `/metrics`, uniform `Error: …` bodies and a
//! graceful, bounded shutdown.
//!
//! # Layout
//! - [`config`]: the common flags (`--kv`, `--token`, `--log-format`, `--database-url`) and
//!   parsers shared by every subcommand.
//! - [`db`]: opening the embedded SQLite file or a PostgreSQL schema, the same way everywhere.
//! - [`error`]: [`ApiError`], the one mapping from failures to HTTP responses.
//! - [`query`]: strict query-string parsing (percent-decoding without silent loss).
//! - [`server`]: bootstrap, middleware stack, health and shutdown.
//! - [`metrics`]: the process-wide Prometheus recorder and the per-route HTTP metrics.
//! - [`routes`]: method routers whose wrong-method answer is `405 Error: Only GET accepted.`
//! - [`request_id`]: `x-request-id` accepted or generated, and carried to outgoing calls.
//! - [`logging`]: `tracing` initialisation (`RUST_LOG`, text or JSON).
//! - [`client`]: the one pooled HTTP client every shoal service uses to call another.
//! - [`discovery`]: registering in and resolving through the k/v store.
//! - [`testkit`]: start any service on `127.0.0.1:0` in a test.

pub mod address_policy;
pub mod backoff;
pub mod client;
pub mod config;
pub mod connections;
pub mod db;
pub mod discovery;
pub mod error;
pub mod idempotency;
pub mod logging;
pub mod metrics;
pub mod query;
pub mod request_id;
pub mod routes;
pub mod server;
pub mod testkit;
pub mod upstream;

pub use error::ApiError;
