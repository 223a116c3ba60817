//! Method routers that answer a wrong method the seeds' way: `405` with
//! `Error: Only POST accepted.` and an `Allow` header (axum's own 405 has neither).

use axum::handler::Handler;
use axum::routing::{self, MethodRouter};

use crate::ApiError;

macro_rules! method_route {
    ($name:ident, $method:literal) => {
        #[doc = concat!("A route for `", $method, "` only; any other method is a 405 naming it.")]
        pub fn $name<H, T, S>(handler: H) -> MethodRouter<S>
        where
            H: Handler<T, S>,
            T: 'static,
            S: Clone + Send + Sync + 'static,
        {
            routing::$name(handler).fallback(|| async { ApiError::MethodNotAllowed($method) })
        }
    };
}

method_route!(get, "GET");
method_route!(post, "POST");
method_route!(put, "PUT");
method_route!(delete, "DELETE");
