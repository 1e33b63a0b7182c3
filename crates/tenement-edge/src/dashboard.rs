//! The dashboard: the Svelte app built from `dashboard/` (`npm run build`), embedded into the
//! binary so `cargo install` needs no Node.js. `index.html` is never cached; files under
//! `/assets/` carry a content hash in their names and are cached for a year.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "../../dashboard/dist"]
struct Dist;

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

fn file(path: &str, cache: &'static str) -> Response {
    match Dist::get(path) {
        Some(f) => (
            [
                (header::CONTENT_TYPE, content_type(path)),
                (header::CACHE_CONTROL, cache),
            ],
            f.data.into_owned(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

pub async fn index() -> Response {
    file("index.html", "no-cache, must-revalidate")
}

pub async fn asset(Path(path): Path<String>) -> Response {
    // rust-embed only knows the embedded names: `..` cannot reach anything else.
    file(&format!("assets/{path}"), "public, max-age=86400")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_built_app_is_embedded() {
        let index = super::Dist::get("index.html").expect("dashboard/dist/index.html is embedded");
        let html = String::from_utf8_lossy(&index.data).into_owned();
        let asset = html
            .split("/assets/")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("index links an asset");
        assert!(
            super::Dist::get(&format!("assets/{asset}")).is_some(),
            "{asset} is embedded too"
        );
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "no external requests"
        );
    }
}
