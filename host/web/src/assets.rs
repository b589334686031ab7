//! The page, embedded at compile time: no build step, no Node.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// `GET /` (and any page path: the app routes on the hash).
pub const INDEX: &str = include_str!("../assets/index.html");
/// `GET /app.js`
pub const APP_JS: &str = include_str!("../assets/app.js");
/// `GET /style.css`
pub const STYLE: &str = include_str!("../assets/style.css");

fn asset(ct: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, ct),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

pub async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}
