//! The image generator adapters over real HTTP: a stub AUTOMATIC1111 server
//! (axum on 127.0.0.1:0) records what it receives and answers the way A1111
//! does (base64 PNGs, `info` as a JSON string, `/sdapi/v1/progress`, the rembg
//! extension's `/rembg`), or fails the way servers fail.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use shared::kernel::config::GeneratorConfig;
use shared::kernel::vocabulary::JobType;
use shared::ports::generator::{
    A1111Generator, GenerationRequest, GeneratorChain, GeneratorError, ImageGenerator,
    ProceduralGenerator, Progress, ProgressReporter, build_chain, compose,
};
use tokio::sync::{Semaphore, watch};

/// How the stub answers.
#[derive(Clone)]
enum Behaviour {
    /// Like A1111: one PNG per batch item, sized as asked.
    Render,
    /// This status, with A1111's error body.
    Fail(u16),
    /// Answers only after this long.
    Sleep(Duration),
    /// `images: ["%%% not base64 %%%"]`.
    GarbageBase64,
    /// Valid base64 of bytes that are not a PNG.
    NotPng,
}

/// How the stub's `/rembg` answers.
#[derive(Clone, Copy, PartialEq)]
enum Rembg {
    /// The extension: the source with a transparent corner.
    Installed,
    /// No extension: no such route (404).
    Missing,
    /// A route that takes GET only (405).
    GetOnly,
    /// The extension answering a JPEG (the server's samples_format).
    Jpeg,
}

/// How the stub's `/sdapi/v1/progress` answers.
#[derive(Clone, Copy, PartialEq)]
enum ProgressMode {
    /// While a render is in flight, 0.15 more at each poll (at most 0.9);
    /// idle, A1111's idle answer (job_count 0).
    Counting,
    /// Alternately HTML and a 500.
    Garbled,
}

#[derive(Clone)]
struct Stub {
    behaviour: Behaviour,
    rembg: Rembg,
    progress: ProgressMode,
    received: Arc<Mutex<Vec<(String, Value)>>>,
    /// When set, a render (or rembg) waits for a permit (or 30 s) before
    /// answering.
    gate: Option<Arc<Semaphore>>,
    in_flight: Arc<AtomicUsize>,
    /// The query string of each progress poll.
    progress_queries: Arc<Mutex<Vec<String>>>,
    /// Counts progress polls, for tests to wait on.
    polls: Arc<watch::Sender<usize>>,
}

impl Stub {
    /// With a gate, waits for a permit (at most 30 s) and uses it up.
    async fn pass_gate(&self) {
        let Some(gate) = &self.gate else { return };
        if let Ok(Ok(permit)) = tokio::time::timeout(Duration::from_secs(30), gate.acquire()).await
        {
            permit.forget();
        }
    }
}

struct StubServer {
    url: String,
    received: Arc<Mutex<Vec<(String, Value)>>>,
    gate: Option<Arc<Semaphore>>,
    progress_queries: Arc<Mutex<Vec<String>>>,
    polls: watch::Receiver<usize>,
}

struct StubOptions {
    behaviour: Behaviour,
    rembg: Rembg,
    progress: ProgressMode,
    gated: bool,
}

impl StubServer {
    async fn start(behaviour: Behaviour) -> Self {
        Self::with(StubOptions {
            behaviour,
            rembg: Rembg::Installed,
            progress: ProgressMode::Counting,
            gated: false,
        })
        .await
    }

    async fn with(options: StubOptions) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let gate = options.gated.then(|| Arc::new(Semaphore::new(0)));
        let (polls, polls_receiver) = watch::channel(0);
        let stub = Stub {
            behaviour: options.behaviour,
            rembg: options.rembg,
            progress: options.progress,
            received: received.clone(),
            gate: gate.clone(),
            in_flight: Arc::new(AtomicUsize::new(0)),
            progress_queries: Arc::new(Mutex::new(Vec::new())),
            polls: Arc::new(polls),
        };
        let progress_queries = stub.progress_queries.clone();
        let mut app = Router::new()
            .route("/sdapi/v1/progress", get(progress))
            .route("/sdapi/v1/{endpoint}", post(answer));
        app = match options.rembg {
            Rembg::Installed | Rembg::Jpeg => app.route("/rembg", post(rembg)),
            Rembg::GetOnly => app.route("/rembg", get(|| async { "GET only" })),
            Rembg::Missing => app,
        };
        let app = app.with_state(stub);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url,
            received,
            gate,
            progress_queries,
            polls: polls_receiver,
        }
    }

    /// The requests received so far: (endpoint, JSON body).
    fn received(&self) -> Vec<(String, Value)> {
        self.received.lock().unwrap().clone()
    }

    /// Lets one gated render answer.
    fn release(&self) {
        self.gate.as_ref().unwrap().add_permits(1);
    }

    /// Waits (at most 20 s) until the stub has answered `n` progress polls.
    async fn wait_for_polls(&self, n: usize) {
        let mut polls = self.polls.clone();
        tokio::time::timeout(Duration::from_secs(20), polls.wait_for(|count| *count >= n))
            .await
            .unwrap_or_else(|_| panic!("fewer than {n} progress polls in 20 s"))
            .unwrap();
    }

    fn poll_count(&self) -> usize {
        *self.polls.borrow()
    }
}

fn png(width: u32, height: u32, shade: u8) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(width, height, image::Rgb([shade, 255 - shade, 40]));
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn decode(png: &[u8]) -> image::DynamicImage {
    image::load_from_memory_with_format(png, image::ImageFormat::Png).unwrap()
}

/// Counts a render in flight for as long as it lives.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn answer(
    State(stub): State<Stub>,
    Path(endpoint): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    stub.received
        .lock()
        .unwrap()
        .push((endpoint.clone(), body.clone()));
    let _in_flight = InFlight::new(&stub.in_flight);
    stub.pass_gate().await;
    match stub.behaviour {
        Behaviour::Fail(status) => {
            return (
                StatusCode::from_u16(status).unwrap(),
                Json(json!({"error": "OutOfMemoryError", "detail": "", "body": "", "errors": "CUDA out of memory"})),
            )
                .into_response();
        }
        Behaviour::Sleep(delay) => tokio::time::sleep(delay).await,
        Behaviour::GarbageBase64 => {
            return Json(json!({"images": ["%%% not base64 %%%"], "parameters": {}, "info": "{}"}))
                .into_response();
        }
        Behaviour::NotPng => {
            return Json(json!({
                "images": [BASE64.encode(b"\xff\xd8\xff\xe0 a JPEG, say")],
                "parameters": {},
                "info": "{}",
            }))
            .into_response();
        }
        Behaviour::Render => {}
    }
    if endpoint == "extra-single-image" {
        let source = BASE64
            .decode(body["image"].as_str().unwrap_or_default())
            .unwrap();
        let source = decode(&source);
        let factor = body["upscaling_resize"].as_f64().unwrap();
        let (w, h) = (
            (f64::from(source.width()) * factor) as u32,
            (f64::from(source.height()) * factor) as u32,
        );
        return Json(json!({"image": BASE64.encode(png(w, h, 7)), "html_info": "<p>upscaled</p>"}))
            .into_response();
    }
    let (width, height) = (
        body["width"].as_u64().unwrap() as u32,
        body["height"].as_u64().unwrap() as u32,
    );
    let batch = body["batch_size"].as_u64().unwrap();
    let seed = body["seed"].as_i64().unwrap();
    let images: Vec<String> = (0..batch)
        .map(|i| BASE64.encode(png(width, height, i as u8 * 40)))
        .collect();
    let all_seeds: Vec<i64> = (0..batch as i64).map(|i| seed + i).collect();
    let info = json!({
        "prompt": body["prompt"],
        "seed": seed,
        "all_seeds": all_seeds,
        "sampler_name": body["sampler_name"],
        "index_of_first_image": 0,
        "sd_model_name": "whatever_the_server_has_loaded",
    });
    Json(json!({"images": images, "parameters": body, "info": info.to_string()})).into_response()
}

/// What the rembg extension would answer: the source as RGBA, its top-left
/// pixel transparent.
fn cut_out(source: &[u8]) -> Vec<u8> {
    let mut rgba = decode(source).to_rgba8();
    rgba.put_pixel(0, 0, image::Rgba([0, 0, 0, 0]));
    let mut out = Vec::new();
    rgba.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

async fn rembg(State(stub): State<Stub>, Json(body): Json<Value>) -> Response {
    stub.received
        .lock()
        .unwrap()
        .push(("rembg".into(), body.clone()));
    let _in_flight = InFlight::new(&stub.in_flight);
    stub.pass_gate().await;
    let source = BASE64
        .decode(body["input_image"].as_str().unwrap_or_default())
        .unwrap();
    let image = match stub.rembg {
        Rembg::Jpeg => b"\xff\xd8\xff\xe0 a JPEG, say".to_vec(),
        _ => cut_out(&source),
    };
    Json(json!({"image": BASE64.encode(image)})).into_response()
}

async fn progress(State(stub): State<Stub>, RawQuery(query): RawQuery) -> Response {
    stub.progress_queries
        .lock()
        .unwrap()
        .push(query.unwrap_or_default());
    let mut count = 0;
    stub.polls.send_modify(|polls| {
        *polls += 1;
        count = *polls;
    });
    match stub.progress {
        ProgressMode::Garbled if count % 2 == 0 => {
            (StatusCode::INTERNAL_SERVER_ERROR, "busy").into_response()
        }
        ProgressMode::Garbled => "<html>progress</html>".into_response(),
        ProgressMode::Counting if stub.in_flight.load(Ordering::SeqCst) == 0 => {
            Json(json!({"progress": 0.0, "eta_relative": 0.0, "state": {"job_count": 0}, "current_image": null}))
                .into_response()
        }
        ProgressMode::Counting => {
            let fraction = (count as f64 * 0.15).min(0.9);
            Json(json!({
                "progress": fraction,
                "eta_relative": 10.0 * (1.0 - fraction),
                "state": {"job_count": 1, "sampling_step": count, "sampling_steps": 20},
                "current_image": null,
                "textinfo": null,
            }))
            .into_response()
        }
    }
}

fn request(job_type: JobType) -> GenerationRequest {
    GenerationRequest {
        job_type,
        prompt: "a lighthouse keeper, oil painting".into(),
        negative_prompt: "blurry, extra fingers".into(),
        style_type: "artistic".into(),
        art_style: None,
        mood: None,
        color_palette: Vec::new(),
        tags: Vec::new(),
        model_version: None,
        steps: 28,
        cfg_scale: 6.5,
        sampler: "DPM++ 2M Karras".into(),
        seed: 1234,
        width: 64,
        height: 48,
        batch_size: 2,
        init_image: None,
        denoising_strength: 0.55,
        upscale_factor: 2.0,
    }
}

/// The prompt A1111 receives for [`request`]: the user's, then the
/// `artistic` style's phrase.
const COMPOSED: &str = "a lighthouse keeper, oil painting, digital painting, painterly";

const ANIME_CHECKPOINT: &str = "animagine-xl-3.1.safetensors [1449e5b0b9]";

fn models() -> BTreeMap<String, String> {
    [
        ("v1.0", "sd_xl_base_1.0.safetensors"),
        ("anime-v3", ANIME_CHECKPOINT),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn a1111(name: &'static str, url: &str, timeout: Duration) -> Arc<dyn ImageGenerator> {
    Arc::new(A1111Generator::new(
        name,
        url,
        timeout,
        reqwest::Client::new(),
    ))
}

/// An adapter with the test's model allow-list, polling progress every 100 ms.
fn configured(name: &'static str, url: &str) -> Arc<dyn ImageGenerator> {
    Arc::new(
        A1111Generator::new(name, url, Duration::from_secs(10), reqwest::Client::new())
            .with_models(models())
            .with_progress_interval(Duration::from_millis(100)),
    )
}

fn config(primary: Option<&StubServer>, secondary: Option<&StubServer>) -> GeneratorConfig {
    GeneratorConfig {
        primary_url: primary.map(|s| s.url.clone()),
        secondary_url: secondary.map(|s| s.url.clone()),
        timeout: Duration::from_secs(5),
        ..GeneratorConfig::default()
    }
}

fn none() -> ProgressReporter {
    ProgressReporter::none()
}

/// A URL where nothing listens.
async fn closed_port_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

#[tokio::test]
async fn txt2img_sends_every_parameter_and_decodes_the_images() {
    let stub = StubServer::start(Behaviour::Render).await;
    // A trailing slash on the configured URL is fine.
    let generator = a1111("primary", &format!("{}/", stub.url), Duration::from_secs(5));
    let out = generator
        .generate(&request(JobType::CharacterGeneration), &none())
        .await
        .unwrap();

    let received = stub.received();
    assert_eq!(received.len(), 1);
    let (endpoint, body) = &received[0];
    assert_eq!(endpoint, "txt2img");
    assert_eq!(body["prompt"], COMPOSED);
    assert_eq!(body["negative_prompt"], "blurry, extra fingers");
    assert_eq!(body["steps"], 28);
    assert_eq!(body["cfg_scale"], 6.5);
    assert_eq!(body["sampler_name"], "DPM++ 2M Karras");
    assert_eq!(body["seed"], 1234);
    assert_eq!(body["width"], 64);
    assert_eq!(body["height"], 48);
    assert_eq!(body["batch_size"], 2);
    assert_eq!(body["save_images"], false);
    assert!(body.get("init_images").is_none());
    // No model_version: the server's loaded model.
    assert!(body.get("override_settings").is_none());

    assert_eq!(out.provider, "primary");
    assert_eq!(out.images.len(), 2);
    assert_eq!(out.images[0], png(64, 48, 0));
    assert_eq!(out.images[1], png(64, 48, 40));
    // `info` arrived as a JSON string and is kept parsed.
    assert_eq!(out.info["seed"], 1234);
    assert_eq!(out.info["all_seeds"], json!([1234, 1235]));
    assert_eq!(
        out.info["model"],
        json!({"requested": null, "checkpoint": null})
    );
    assert!(out.gpu_time_ms.is_some());
}

#[tokio::test]
async fn txt2img_receives_the_composed_prompt_and_the_mapped_checkpoint() {
    let stub = StubServer::start(Behaviour::Render).await;
    let generator = configured("primary", &stub.url);
    let character = GenerationRequest {
        style_type: "anime".into(),
        art_style: Some("watercolor".into()),
        mood: Some("melancholic".into()),
        color_palette: vec!["#1e90ff".into(), "#ffa500".into()],
        tags: vec!["lighthouse".into(), "stormy sea".into()],
        model_version: Some("anime-v3".into()),
        ..request(JobType::CharacterGeneration)
    };
    let out = generator.generate(&character, &none()).await.unwrap();

    let received = stub.received();
    assert_eq!(received.len(), 1);
    let (endpoint, body) = &received[0];
    assert_eq!(endpoint, "txt2img");
    let expected = "a lighthouse keeper, oil painting, anime style, cel shading, watercolor, \
                    melancholic mood, blue and orange color palette, stormy sea";
    assert_eq!(body["prompt"], expected);
    assert_eq!(
        body["negative_prompt"],
        "blurry, extra fingers, photorealistic, 3d render"
    );
    // What the adapter sends is what the one composition function makes.
    let composed = compose(&character);
    assert_eq!(body["prompt"], composed.prompt);
    assert_eq!(body["negative_prompt"], composed.negative_prompt);
    assert_eq!(
        body["override_settings"],
        json!({"sd_model_checkpoint": ANIME_CHECKPOINT})
    );
    assert_eq!(body["override_settings_restore_afterwards"], true);
    assert_eq!(
        out.info["model"],
        json!({"requested": "anime-v3", "checkpoint": ANIME_CHECKPOINT})
    );
    // A1111's own info is kept beside it.
    assert_eq!(out.info["sd_model_name"], "whatever_the_server_has_loaded");

    // A model_version outside the allow-list is not passed on: the server
    // renders with its loaded model, and the info says what was asked.
    let out = generator
        .generate(
            &GenerationRequest {
                model_version: Some("v2.0".into()),
                ..character.clone()
            },
            &none(),
        )
        .await
        .unwrap();
    let received = stub.received();
    assert_eq!(received.len(), 2);
    let body = &received[1].1;
    assert!(body.get("override_settings").is_none(), "{body}");
    assert!(body.get("override_settings_restore_afterwards").is_none());
    assert_eq!(body["prompt"], expected);
    assert_eq!(
        out.info["model"],
        json!({"requested": "v2.0", "checkpoint": null})
    );
}

#[tokio::test]
async fn style_transfer_and_variation_send_the_source_to_img2img() {
    let stub = StubServer::start(Behaviour::Render).await;
    let generator = configured("primary", &stub.url);
    // The dispatcher sizes the request as the source image.
    let source = png(40, 24, 200);
    for job_type in [JobType::StyleTransfer, JobType::Variation] {
        let out = generator
            .generate(
                &GenerationRequest {
                    init_image: Some(source.clone()),
                    width: 40,
                    height: 24,
                    batch_size: 1,
                    model_version: Some("v1.0".into()),
                    ..request(job_type)
                },
                &none(),
            )
            .await
            .unwrap();
        assert_eq!(out.images.len(), 1);
        let image = decode(&out.images[0]);
        assert_eq!((image.width(), image.height()), (40, 24));
        assert_eq!(
            out.info["model"]["checkpoint"],
            "sd_xl_base_1.0.safetensors"
        );
    }
    let received = stub.received();
    assert_eq!(received.len(), 2);
    for (endpoint, body) in &received {
        assert_eq!(endpoint, "img2img");
        let images = body["init_images"].as_array().unwrap();
        assert_eq!(images.len(), 1);
        let sent = BASE64.decode(images[0].as_str().unwrap()).unwrap();
        assert_eq!(sent, source);
        assert_eq!(decode(&sent).to_rgb8(), decode(&source).to_rgb8());
        assert_eq!(body["denoising_strength"], 0.55);
        assert_eq!(body["prompt"], COMPOSED);
        assert_eq!(body["negative_prompt"], "blurry, extra fingers");
        assert_eq!(body["sampler_name"], "DPM++ 2M Karras");
        assert_eq!(body["seed"], 1234);
        assert_eq!(body["width"], 40);
        assert_eq!(body["height"], 24);
        assert_eq!(body["batch_size"], 1);
        assert_eq!(
            body["override_settings"],
            json!({"sd_model_checkpoint": "sd_xl_base_1.0.safetensors"})
        );
        assert_eq!(body["override_settings_restore_afterwards"], true);
    }

    // Without a source image, img2img is not even asked.
    let err = generator
        .generate(&request(JobType::StyleTransfer), &none())
        .await
        .unwrap_err();
    assert!(matches!(err, GeneratorError::InvalidRequest(_)), "{err}");
    assert_eq!(stub.received().len(), 2);
}

#[tokio::test]
async fn upscale_goes_to_extra_single_image() {
    let stub = StubServer::start(Behaviour::Render).await;
    let generator = a1111("secondary", &stub.url, Duration::from_secs(5));
    let source = png(40, 30, 90);
    let out = generator
        .generate(
            &GenerationRequest {
                init_image: Some(source.clone()),
                upscale_factor: 2.5,
                ..request(JobType::Upscale)
            },
            &none(),
        )
        .await
        .unwrap();
    let received = stub.received();
    assert_eq!(received.len(), 1);
    let (endpoint, body) = &received[0];
    assert_eq!(endpoint, "extra-single-image");
    assert_eq!(
        BASE64.decode(body["image"].as_str().unwrap()).unwrap(),
        source
    );
    assert_eq!(body["upscaling_resize"], 2.5);
    assert_eq!(body["upscaler_1"], "R-ESRGAN 4x+");
    // Upscaling renders nothing: no prompt, no model switch.
    assert!(body.get("prompt").is_none());
    assert!(body.get("override_settings").is_none());

    assert_eq!(out.provider, "secondary");
    assert_eq!(out.images.len(), 1);
    let upscaled = decode(&out.images[0]);
    assert_eq!((upscaled.width(), upscaled.height()), (100, 75));
    assert_eq!(out.info["upscaling_resize"], 2.5);

    // An answer over 8192 px a side would be refused: the GPU is not asked.
    let err = generator
        .generate(
            &GenerationRequest {
                init_image: Some(png(2100, 8, 1)),
                upscale_factor: 4.0,
                ..request(JobType::Upscale)
            },
            &none(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, GeneratorError::InvalidRequest(_)), "{err}");
    assert_eq!(stub.received().len(), 1);
}

#[tokio::test]
async fn a_primary_answering_500_hands_over_to_the_secondary_and_is_recorded() {
    let primary = StubServer::start(Behaviour::Fail(500)).await;
    let secondary = StubServer::start(Behaviour::Render).await;
    let chain = build_chain(&config(Some(&primary), Some(&secondary))).unwrap();
    assert_eq!(chain.provider_names(), ["primary", "secondary", "fallback"]);

    let outcome = chain
        .generate(&request(JobType::CharacterGeneration), &none())
        .await
        .unwrap();
    assert_eq!(outcome.provider(), "secondary");
    assert_eq!(outcome.images.images, vec![png(64, 48, 0), png(64, 48, 40)]);
    assert_eq!(outcome.failures.len(), 1);
    let failure = &outcome.failures[0];
    assert_eq!(failure.provider, "primary");
    assert_eq!(failure.kind, "http_status");
    assert!(failure.transient);
    assert!(failure.message.contains("500"), "{}", failure.message);
    assert!(
        failure.message.contains("CUDA out of memory"),
        "{}",
        failure.message
    );
    assert_eq!(primary.received().len(), 1);
    assert_eq!(secondary.received().len(), 1);

    let metadata = outcome.metadata();
    assert_eq!(metadata["provider"], "secondary");
    assert_eq!(metadata["failed_providers"][0]["provider"], "primary");
    assert_eq!(metadata["provider_info"]["seed"], 1234);
}

#[tokio::test]
async fn a_primary_that_times_out_is_abandoned_for_the_next() {
    let primary = StubServer::start(Behaviour::Sleep(Duration::from_secs(10))).await;
    let secondary = StubServer::start(Behaviour::Render).await;
    let chain = GeneratorChain::new(vec![
        a1111("primary", &primary.url, Duration::from_millis(300)),
        a1111("secondary", &secondary.url, Duration::from_secs(5)),
        Arc::new(ProceduralGenerator),
    ]);
    let started = Instant::now();
    let outcome = chain
        .generate(&request(JobType::CharacterGeneration), &none())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited out the stub"
    );
    assert_eq!(outcome.provider(), "secondary");
    assert_eq!(outcome.failures.len(), 1);
    assert_eq!(outcome.failures[0].provider, "primary");
    assert_eq!(outcome.failures[0].kind, "timeout");
    assert!(outcome.failures[0].transient);
    assert_eq!(primary.received().len(), 1, "the primary was asked");
}

#[tokio::test]
async fn when_both_servers_fail_the_fallback_serves() {
    let primary = StubServer::start(Behaviour::Fail(503)).await;
    let chain = build_chain(&GeneratorConfig {
        secondary_url: Some(closed_port_url().await),
        ..config(Some(&primary), None)
    })
    .unwrap();
    let outcome = chain
        .generate(&request(JobType::CharacterGeneration), &none())
        .await
        .unwrap();
    assert_eq!(outcome.provider(), "fallback");
    assert_eq!(outcome.images.info["procedural"], true);
    assert_eq!(outcome.images.images.len(), 2);
    for png in &outcome.images.images {
        let img = decode(png);
        assert_eq!((img.width(), img.height()), (64, 48));
    }
    let failed: Vec<(&str, &str)> = outcome
        .failures
        .iter()
        .map(|f| (f.provider.as_str(), f.kind.as_str()))
        .collect();
    assert_eq!(
        failed,
        [("primary", "http_status"), ("secondary", "connection")]
    );
    assert!(outcome.failures.iter().all(|f| f.transient));
    // The connection error names no URL.
    assert!(
        !outcome.failures[1].message.contains("127.0.0.1"),
        "{}",
        outcome.failures[1].message
    );
}

#[tokio::test]
async fn unusable_images_are_permanent_errors_and_the_chain_moves_on() {
    for behaviour in [Behaviour::GarbageBase64, Behaviour::NotPng] {
        let stub = StubServer::start(behaviour).await;
        let direct = a1111("primary", &stub.url, Duration::from_secs(5))
            .generate(
                &GenerationRequest {
                    batch_size: 1,
                    ..request(JobType::CharacterGeneration)
                },
                &none(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(direct, GeneratorError::InvalidResponse(_)),
            "{direct}"
        );
        assert!(!direct.is_transient());

        let chain = build_chain(&config(Some(&stub), None)).unwrap();
        let outcome = chain
            .generate(
                &GenerationRequest {
                    batch_size: 1,
                    ..request(JobType::CharacterGeneration)
                },
                &none(),
            )
            .await
            .unwrap();
        assert_eq!(outcome.provider(), "fallback");
        assert_eq!(outcome.failures[0].kind, "invalid_response");
        assert!(!outcome.failures[0].transient);
    }
}

#[tokio::test]
async fn client_errors_are_permanent() {
    let stub = StubServer::start(Behaviour::Fail(422)).await;
    let err = a1111("primary", &stub.url, Duration::from_secs(5))
        .generate(&request(JobType::CharacterGeneration), &none())
        .await
        .unwrap_err();
    assert_eq!(
        err,
        GeneratorError::Status {
            status: 422,
            detail: "OutOfMemoryError: CUDA out of memory".into()
        }
    );
    assert!(!err.is_transient());
}

#[tokio::test]
async fn background_removal_goes_to_the_rembg_extension() {
    let stub = StubServer::start(Behaviour::Render).await;
    let chain = build_chain(&config(Some(&stub), None)).unwrap();
    let source = png(64, 48, 10);
    let outcome = chain
        .generate(
            &GenerationRequest {
                init_image: Some(source.clone()),
                ..request(JobType::BackgroundRemoval)
            },
            &none(),
        )
        .await
        .unwrap();
    let received = stub.received();
    assert_eq!(received.len(), 1);
    let (endpoint, body) = &received[0];
    assert_eq!(endpoint, "rembg");
    assert_eq!(
        BASE64
            .decode(body["input_image"].as_str().unwrap())
            .unwrap(),
        source
    );
    assert_eq!(body["model"], "u2net");
    assert_eq!(body["return_mask"], false);
    assert_eq!(body["alpha_matting"], false);

    // The extension's answer is the image.
    assert_eq!(outcome.provider(), "primary");
    assert!(outcome.failures.is_empty());
    assert_eq!(outcome.images.images, vec![cut_out(&source)]);
    let img = decode(&outcome.images.images[0]);
    assert!(img.color().has_alpha());
    assert_eq!((img.width(), img.height()), (64, 48));
    assert_eq!(img.to_rgba8().get_pixel(0, 0)[3], 0);
    assert_eq!(outcome.images.info["rembg_model"], "u2net");

    // Without a source image the server is not asked.
    let err = a1111("primary", &stub.url, Duration::from_secs(5))
        .generate(&request(JobType::BackgroundRemoval), &none())
        .await
        .unwrap_err();
    assert!(matches!(err, GeneratorError::InvalidRequest(_)), "{err}");
    assert_eq!(stub.received().len(), 1);
}

#[tokio::test]
async fn a_server_without_rembg_hands_background_removal_to_the_fallback() {
    for rembg in [Rembg::Missing, Rembg::GetOnly] {
        let primary = StubServer::with(StubOptions {
            behaviour: Behaviour::Render,
            rembg,
            progress: ProgressMode::Counting,
            gated: false,
        })
        .await;
        let direct = a1111("primary", &primary.url, Duration::from_secs(5))
            .generate(
                &GenerationRequest {
                    init_image: Some(png(64, 48, 10)),
                    ..request(JobType::BackgroundRemoval)
                },
                &none(),
            )
            .await
            .unwrap_err();
        assert_eq!(
            direct,
            GeneratorError::Unsupported(JobType::BackgroundRemoval)
        );
        assert!(!direct.is_transient());

        let chain = build_chain(&config(Some(&primary), None)).unwrap();
        let outcome = chain
            .generate(
                &GenerationRequest {
                    init_image: Some(png(64, 48, 10)),
                    ..request(JobType::BackgroundRemoval)
                },
                &none(),
            )
            .await
            .unwrap();
        assert_eq!(outcome.provider(), "fallback");
        assert_eq!(outcome.failures.len(), 1);
        assert_eq!(outcome.failures[0].provider, "primary");
        assert_eq!(outcome.failures[0].kind, "unsupported");
        assert!(!outcome.failures[0].transient);
        let img = decode(&outcome.images.images[0]);
        assert!(img.color().has_alpha());
        assert_eq!(img.to_rgba8().get_pixel(0, 0)[3], 0);
    }
}

#[tokio::test]
async fn a_rembg_answer_that_is_not_a_png_is_refused() {
    let primary = StubServer::with(StubOptions {
        behaviour: Behaviour::Render,
        rembg: Rembg::Jpeg,
        progress: ProgressMode::Counting,
        gated: false,
    })
    .await;
    let chain = build_chain(&config(Some(&primary), None)).unwrap();
    let outcome = chain
        .generate(
            &GenerationRequest {
                init_image: Some(png(16, 16, 10)),
                ..request(JobType::BackgroundRemoval)
            },
            &none(),
        )
        .await
        .unwrap();
    assert_eq!(primary.received().len(), 1);
    assert_eq!(outcome.provider(), "fallback");
    assert_eq!(outcome.failures[0].kind, "invalid_response");
}

/// Collects progress reports until `enough` says so (at most 20 s).
async fn collect_reports(
    receiver: &mut watch::Receiver<Option<Progress>>,
    enough: impl Fn(&[Progress]) -> bool,
) -> Vec<Progress> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !enough(&seen) {
        tokio::time::timeout_at(deadline, receiver.changed())
            .await
            .unwrap_or_else(|_| panic!("not enough progress in 20 s: {seen:?}"))
            .unwrap();
        if let Some(progress) = *receiver.borrow_and_update() {
            seen.push(progress);
        }
    }
    seen
}

#[tokio::test]
async fn a_slow_render_reports_its_progress_and_stops_polling_when_done() {
    let stub = StubServer::with(StubOptions {
        behaviour: Behaviour::Render,
        rembg: Rembg::Installed,
        progress: ProgressMode::Counting,
        gated: true,
    })
    .await;
    let generator = configured("primary", &stub.url);
    let (reporter, mut receiver) = ProgressReporter::channel();
    let job = tokio::spawn({
        let generator = generator.clone();
        async move {
            generator
                .generate(&request(JobType::CharacterGeneration), &reporter)
                .await
        }
    });

    // The render is held until two reports have come through.
    let seen = collect_reports(&mut receiver, |seen| seen.len() >= 2).await;
    for pair in seen.windows(2) {
        assert!(pair[0].fraction < pair[1].fraction, "{seen:?}");
    }
    for report in &seen {
        assert!(report.fraction > 0.0 && report.fraction < 1.0, "{seen:?}");
        assert!(report.eta_seconds.is_some_and(|eta| eta > 0.0), "{seen:?}");
    }
    stub.release();
    let out = tokio::time::timeout(Duration::from_secs(20), job)
        .await
        .expect("the render ends once released")
        .unwrap()
        .unwrap();
    assert_eq!(out.images.len(), 2);
    assert_eq!(*receiver.borrow(), Some(Progress::DONE));

    let queries = stub.progress_queries.lock().unwrap().clone();
    assert!(
        queries.iter().all(|q| q == "skip_current_image=true"),
        "{queries:?}"
    );
    // The polling ended with the call: nothing arrives after it. (This can
    // only fail if a poller outlives the call.)
    let polls = stub.poll_count();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stub.poll_count(), polls, "polls after the call ended");
}

#[tokio::test]
async fn a_garbled_progress_answer_never_fails_the_job() {
    let stub = StubServer::with(StubOptions {
        behaviour: Behaviour::Render,
        rembg: Rembg::Installed,
        progress: ProgressMode::Garbled,
        gated: true,
    })
    .await;
    let generator = configured("primary", &stub.url);
    let (reporter, receiver) = ProgressReporter::channel();
    let job = tokio::spawn({
        let generator = generator.clone();
        let reporter = reporter.clone();
        async move {
            generator
                .generate(&request(JobType::CharacterGeneration), &reporter)
                .await
        }
    });
    // An HTML answer, a 500, an HTML answer: none of them is a report.
    stub.wait_for_polls(3).await;
    assert_eq!(*receiver.borrow(), None);
    stub.release();
    let out = tokio::time::timeout(Duration::from_secs(20), job)
        .await
        .expect("the render ends once released")
        .unwrap()
        .unwrap();
    assert_eq!(out.provider, "primary");
    assert_eq!(*receiver.borrow(), Some(Progress::DONE));
}

#[tokio::test]
async fn every_endpoint_is_watched_while_in_flight() {
    let stub = StubServer::with(StubOptions {
        behaviour: Behaviour::Render,
        rembg: Rembg::Installed,
        progress: ProgressMode::Counting,
        gated: true,
    })
    .await;
    let generator = configured("primary", &stub.url);
    let source = png(16, 16, 3);
    for job_type in [
        JobType::StyleTransfer,
        JobType::Upscale,
        JobType::BackgroundRemoval,
    ] {
        let polls_before = stub.poll_count();
        let (reporter, receiver) = ProgressReporter::channel();
        let job = tokio::spawn({
            let generator = generator.clone();
            let request = GenerationRequest {
                init_image: Some(source.clone()),
                width: 16,
                height: 16,
                batch_size: 1,
                ..request(job_type)
            };
            async move { generator.generate(&request, &reporter).await }
        });
        stub.wait_for_polls(polls_before + 1).await;
        stub.release();
        let out = tokio::time::timeout(Duration::from_secs(20), job)
            .await
            .expect("the call ends once released")
            .unwrap();
        let out = out.unwrap_or_else(|e| panic!("{job_type}: {e}"));
        assert_eq!(out.images.len(), 1, "{job_type}");
        assert_eq!(*receiver.borrow(), Some(Progress::DONE), "{job_type}");
    }
    let endpoints: Vec<String> = stub.received().into_iter().map(|(e, _)| e).collect();
    assert_eq!(endpoints, ["img2img", "extra-single-image", "rembg"]);
}

#[tokio::test]
async fn nobody_listening_means_no_polling() {
    let stub = StubServer::with(StubOptions {
        behaviour: Behaviour::Render,
        rembg: Rembg::Installed,
        progress: ProgressMode::Counting,
        gated: true,
    })
    .await;
    let generator = configured("primary", &stub.url);
    let job = tokio::spawn({
        let generator = generator.clone();
        async move {
            generator
                .generate(
                    &request(JobType::CharacterGeneration),
                    &ProgressReporter::none(),
                )
                .await
        }
    });
    // Wait until the render is in flight, then let it go.
    let deadline = Instant::now() + Duration::from_secs(20);
    while stub.received().is_empty() {
        assert!(Instant::now() < deadline, "the render never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stub.release();
    tokio::time::timeout(Duration::from_secs(20), job)
        .await
        .expect("the render ends once released")
        .unwrap()
        .unwrap();
    assert_eq!(stub.poll_count(), 0);
}

#[tokio::test]
async fn a_chain_moving_on_starts_its_progress_over() {
    let gated = |behaviour, progress| {
        StubServer::with(StubOptions {
            behaviour,
            rembg: Rembg::Installed,
            progress,
            gated: true,
        })
    };
    // The primary makes progress, then fails; the secondary's progress
    // answers are useless, so what the receiver holds while it renders is
    // what the chain reported on moving on.
    let primary = gated(Behaviour::Fail(500), ProgressMode::Counting).await;
    let secondary = gated(Behaviour::Render, ProgressMode::Garbled).await;
    let chain = GeneratorChain::new(vec![
        configured("primary", &primary.url),
        configured("secondary", &secondary.url),
    ]);
    let (reporter, mut receiver) = ProgressReporter::channel();
    let job = tokio::spawn(async move {
        chain
            .generate(&request(JobType::CharacterGeneration), &reporter)
            .await
    });

    let seen = collect_reports(&mut receiver, |seen| !seen.is_empty()).await;
    assert!(seen[0].fraction > 0.0, "{seen:?}");
    primary.release();
    secondary.wait_for_polls(1).await;
    assert_eq!(*receiver.borrow(), Some(Progress::START));
    secondary.release();

    let outcome = tokio::time::timeout(Duration::from_secs(20), job)
        .await
        .expect("the chain ends once released")
        .unwrap()
        .unwrap();
    assert_eq!(outcome.provider(), "secondary");
    assert_eq!(outcome.failures.len(), 1);
    assert_eq!(outcome.failures[0].kind, "http_status");
    assert_eq!(*receiver.borrow(), Some(Progress::DONE));
}

#[tokio::test]
async fn when_every_provider_fails_each_error_is_reported() {
    let broken = StubServer::start(Behaviour::Fail(502)).await;
    let garbage = StubServer::start(Behaviour::GarbageBase64).await;
    let chain = GeneratorChain::new(vec![
        a1111("primary", &broken.url, Duration::from_secs(5)),
        a1111("secondary", &garbage.url, Duration::from_secs(5)),
    ]);
    let err = chain
        .generate(&request(JobType::CharacterGeneration), &none())
        .await
        .unwrap_err();
    assert_eq!(err.failures.len(), 2);
    assert_eq!(err.failures[0].provider, "primary");
    assert_eq!(err.failures[0].kind, "http_status");
    assert_eq!(err.failures[1].provider, "secondary");
    assert_eq!(err.failures[1].kind, "invalid_response");
    // The 502 may pass: worth retrying the job.
    assert!(err.is_transient());
    let text = err.to_string();
    assert!(text.contains("primary: HTTP 502"), "{text}");
    assert!(text.contains("secondary: invalid response"), "{text}");
    assert_eq!(
        err.details()["failed_providers"][1]["kind"],
        "invalid_response"
    );

    // Only permanent failures: a retry would fail the same way.
    let chain = GeneratorChain::new(vec![a1111("primary", &garbage.url, Duration::from_secs(5))]);
    let err = chain
        .generate(&request(JobType::CharacterGeneration), &none())
        .await
        .unwrap_err();
    assert!(!err.is_transient());
}
