//! A stand-in AUTOMATIC1111 server for end-to-end tests: real HTTP on
//! 127.0.0.1, answering like A1111 with `--api` (and the rembg extension),
//! and recording every body it receives so tests can check what the
//! platform asked for. Its pictures are flat colours of the right size:
//! what the tests care about is sizes, counts and what was sent.
//!
//! - `POST /sdapi/v1/txt2img`, `/sdapi/v1/img2img`: `batch_size` PNGs of
//!   `width`×`height`, `info` as a JSON string (A1111's way);
//! - `POST /sdapi/v1/extra-single-image`: the source scaled by
//!   `upscaling_resize`;
//! - `POST /rembg`: an RGBA PNG the size of `input_image`;
//! - `GET /sdapi/v1/progress`: a fraction that grows with each poll.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use shared::kernel::config::GeneratorConfig;
use shared::ports::generator::{GeneratorChain, build_chain};

#[derive(Clone, Default)]
struct Shared {
    received: Arc<Mutex<Vec<(String, Value)>>>,
    polls: Arc<AtomicU32>,
    /// Every render answers this status instead (0: render).
    failing: Arc<AtomicU32>,
}

pub struct StandIn {
    pub url: String,
    shared: Shared,
}

impl StandIn {
    pub async fn start() -> Self {
        let shared = Shared::default();
        let app = Router::new()
            .route("/sdapi/v1/progress", get(progress))
            .route("/sdapi/v1/{endpoint}", post(render))
            .route("/rembg", post(rembg))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the stand-in A1111 server");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, shared }
    }

    /// The bodies received, as `(endpoint, body)`, oldest first.
    pub fn received(&self) -> Vec<(String, Value)> {
        self.shared
            .received
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// From now on every render answers `status` (e.g. 503), or renders again with 0.
    pub fn fail_with(&self, status: u16) {
        self.shared
            .failing
            .store(u32::from(status), Ordering::SeqCst);
    }

    /// The chain a worker configured with this server as its primary uses:
    /// this server, then the procedural fallback.
    pub fn chain(&self) -> GeneratorChain {
        build_chain(&GeneratorConfig {
            primary_url: Some(self.url.clone()),
            ..GeneratorConfig::default()
        })
        .expect("generator chain")
    }
}

fn record(shared: &Shared, endpoint: &str, body: &Value) {
    if let Ok(mut received) = shared.received.lock() {
        received.push((endpoint.to_string(), body.clone()));
    }
}

fn png(width: u32, height: u32, alpha: bool) -> String {
    let mut out = Vec::new();
    let image: image::DynamicImage = if alpha {
        image::RgbaImage::from_pixel(width, height, image::Rgba([40, 120, 200, 128])).into()
    } else {
        image::RgbImage::from_pixel(width, height, image::Rgb([40, 120, 200])).into()
    };
    image
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("encode png");
    BASE64.encode(out)
}

fn size_of(encoded: &str) -> Option<(u32, u32)> {
    let bytes = BASE64.decode(encoded).ok()?;
    let image = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).ok()?;
    Some((image.width(), image.height()))
}

fn failing(shared: &Shared) -> Option<(StatusCode, Json<Value>)> {
    let status = shared.failing.load(Ordering::SeqCst);
    (status != 0).then(|| {
        (
            StatusCode::from_u16(status as u16).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            Json(json!({"error": "StandInFailure", "detail": "told to fail"})),
        )
    })
}

async fn render(
    State(shared): State<Shared>,
    Path(endpoint): Path<String>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    record(&shared, &endpoint, &body);
    if let Some(failure) = failing(&shared) {
        return failure;
    }
    let number =
        |name: &str, default: u64| body.get(name).and_then(Value::as_u64).unwrap_or(default);
    match endpoint.as_str() {
        "txt2img" | "img2img" => {
            let (w, h) = (number("width", 512) as u32, number("height", 512) as u32);
            let images: Vec<String> = (0..number("batch_size", 1))
                .map(|_| png(w, h, false))
                .collect();
            let info = json!({"seed": body.get("seed"), "width": w, "height": h, "stand_in": true});
            (
                StatusCode::OK,
                Json(json!({"images": images, "parameters": body, "info": info.to_string()})),
            )
        }
        "extra-single-image" => {
            let factor = body
                .get("upscaling_resize")
                .and_then(Value::as_f64)
                .unwrap_or(2.0);
            let Some((w, h)) = body.get("image").and_then(Value::as_str).and_then(size_of) else {
                return (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Json(json!({"detail": "image is not a PNG"})),
                );
            };
            let (w, h) = (
                (f64::from(w) * factor).round() as u32,
                (f64::from(h) * factor).round() as u32,
            );
            (
                StatusCode::OK,
                Json(json!({"image": png(w, h, false), "html_info": "<p>stand-in</p>"})),
            )
        }
        _ => (StatusCode::NOT_FOUND, Json(json!({"detail": "Not Found"}))),
    }
}

async fn rembg(State(shared): State<Shared>, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    record(&shared, "rembg", &body);
    if let Some(failure) = failing(&shared) {
        return failure;
    }
    match body
        .get("input_image")
        .and_then(Value::as_str)
        .and_then(size_of)
    {
        Some((w, h)) => (StatusCode::OK, Json(json!({"image": png(w, h, true)}))),
        None => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"detail": "input_image is not a PNG"})),
        ),
    }
}

async fn progress(State(shared): State<Shared>) -> Json<Value> {
    let polls = shared.polls.fetch_add(1, Ordering::SeqCst) + 1;
    let fraction = (f64::from(polls) / 10.0).min(0.95);
    Json(json!({"progress": fraction, "eta_relative": 1.0 - fraction, "state": {"job_count": 1}}))
}
