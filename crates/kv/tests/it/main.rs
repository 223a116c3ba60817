//! Integration tests of `shoal kv`: one API suite run against SQLite and against a real
//! PostgreSQL, plus discovery-client tests against a live kv.

mod api;
mod discovery;
mod replicas;
mod support;
