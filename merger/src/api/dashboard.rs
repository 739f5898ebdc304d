//! The creator dashboard, served at `/` from files embedded in the binary
//! (`web/dashboard`, with uPlot 1.6.32 and a world map from @svg-maps/world vendored
//! from npm): nothing is fetched from a CDN.
//! The page reads only the merger's public HTTP API, with an API key the browser keeps.

use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

const FILES: [(&str, &str, &str); 8] = [
    (
        "/",
        include_str!("../../../web/dashboard/index.html"),
        "text/html; charset=utf-8",
    ),
    (
        "/dashboard/dashboard.js",
        include_str!("../../../web/dashboard/dashboard.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "/dashboard/dashboard.css",
        include_str!("../../../web/dashboard/dashboard.css"),
        "text/css; charset=utf-8",
    ),
    (
        "/dashboard/vendor/uPlot.iife.min.js",
        include_str!("../../../web/dashboard/vendor/uPlot.iife.min.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "/dashboard/vendor/uPlot.min.css",
        include_str!("../../../web/dashboard/vendor/uPlot.min.css"),
        "text/css; charset=utf-8",
    ),
    (
        "/dashboard/vendor/world-map.json",
        include_str!("../../../web/dashboard/vendor/world-map.json"),
        "application/json",
    ),
    (
        "/dashboard/vendor/world-map.LICENSE.md",
        include_str!("../../../web/dashboard/vendor/world-map.LICENSE.md"),
        "text/plain; charset=utf-8",
    ),
    (
        "/dashboard/vendor/uPlot.LICENSE",
        include_str!("../../../web/dashboard/vendor/uPlot.LICENSE"),
        "text/plain; charset=utf-8",
    ),
];

/// The dashboard file at the request's path (404 for others under `/dashboard/`).
#[utoipa::path(get, path = "/", tag = "dashboard", summary = "The creator dashboard (HTML; its scripts, styles and uPlot are under /dashboard/)", responses((status = 200, description = "HTML", content_type = "text/html")))]
pub async fn serve(uri: Uri) -> Response {
    match FILES.iter().find(|(p, _, _)| *p == uri.path()) {
        Some((_, body, content_type)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "no-cache"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' blob: data:",
                ),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}
