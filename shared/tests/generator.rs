//! The image generator adapters over real HTTP: a stub AUTOMATIC1111 server
//! (axum on 127.0.0.1:0) records what it receives and answers the way A1111
//! does (base64 PNGs, `info` as a JSON string), or fails the way servers fail.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use shared::config::GeneratorConfig;
use shared::generator::{
    A1111Generator, GenerationRequest, GeneratorChain, GeneratorError, ImageGenerator, JobType,
    ProceduralGenerator, build_chain,
};

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

#[derive(Clone)]
struct Stub {
    behaviour: Behaviour,
    received: Arc<Mutex<Vec<(String, Value)>>>,
}

struct StubServer {
    url: String,
    received: Arc<Mutex<Vec<(String, Value)>>>,
}

impl StubServer {
    async fn start(behaviour: Behaviour) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let stub = Stub {
            behaviour,
            received: received.clone(),
        };
        let app = Router::new()
            .route("/sdapi/v1/{endpoint}", post(answer))
            .with_state(stub);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, received }
    }

    /// The requests received so far: (endpoint, JSON body).
    fn received(&self) -> Vec<(String, Value)> {
        self.received.lock().unwrap().clone()
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

async fn answer(
    State(stub): State<Stub>,
    Path(endpoint): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    stub.received
        .lock()
        .unwrap()
        .push((endpoint.clone(), body.clone()));
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
    });
    Json(json!({"images": images, "parameters": body, "info": info.to_string()})).into_response()
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

fn a1111(name: &'static str, url: &str, timeout: Duration) -> Arc<dyn ImageGenerator> {
    Arc::new(A1111Generator::new(
        name,
        url,
        timeout,
        reqwest::Client::new(),
    ))
}

fn config(primary: Option<&StubServer>, secondary: Option<&StubServer>) -> GeneratorConfig {
    GeneratorConfig {
        primary_url: primary.map(|s| s.url.clone()),
        secondary_url: secondary.map(|s| s.url.clone()),
        timeout: Duration::from_secs(5),
        ..GeneratorConfig::default()
    }
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
        .generate(&request(JobType::CharacterGeneration))
        .await
        .unwrap();

    let received = stub.received();
    assert_eq!(received.len(), 1);
    let (endpoint, body) = &received[0];
    assert_eq!(endpoint, "txt2img");
    assert_eq!(body["prompt"], "a lighthouse keeper, oil painting");
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

    assert_eq!(out.provider, "primary");
    assert_eq!(out.images.len(), 2);
    assert_eq!(out.images[0], png(64, 48, 0));
    assert_eq!(out.images[1], png(64, 48, 40));
    // `info` arrived as a JSON string and is kept parsed.
    assert_eq!(out.info["seed"], 1234);
    assert_eq!(out.info["all_seeds"], json!([1234, 1235]));
    assert!(out.gpu_time_ms.is_some());
}

#[tokio::test]
async fn style_transfer_and_variation_send_the_source_to_img2img() {
    let stub = StubServer::start(Behaviour::Render).await;
    let generator = a1111("primary", &stub.url, Duration::from_secs(5));
    let source = png(32, 32, 200);
    for job_type in [JobType::StyleTransfer, JobType::Variation] {
        let out = generator
            .generate(&GenerationRequest {
                init_image: Some(source.clone()),
                batch_size: 1,
                ..request(job_type)
            })
            .await
            .unwrap();
        assert_eq!(out.images.len(), 1);
        assert_eq!(decode(&out.images[0]).width(), 64);
    }
    let received = stub.received();
    assert_eq!(received.len(), 2);
    for (endpoint, body) in &received {
        assert_eq!(endpoint, "img2img");
        let images = body["init_images"].as_array().unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!(BASE64.decode(images[0].as_str().unwrap()).unwrap(), source);
        assert_eq!(body["denoising_strength"], 0.55);
        assert_eq!(body["prompt"], "a lighthouse keeper, oil painting");
        assert_eq!(body["sampler_name"], "DPM++ 2M Karras");
        assert_eq!(body["seed"], 1234);
        assert_eq!(body["width"], 64);
    }

    // Without a source image, img2img is not even asked.
    let err = generator
        .generate(&request(JobType::StyleTransfer))
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
        .generate(&GenerationRequest {
            init_image: Some(source.clone()),
            upscale_factor: 2.5,
            ..request(JobType::Upscale)
        })
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

    assert_eq!(out.provider, "secondary");
    assert_eq!(out.images.len(), 1);
    let upscaled = decode(&out.images[0]);
    assert_eq!((upscaled.width(), upscaled.height()), (100, 75));
    assert_eq!(out.info["upscaling_resize"], 2.5);

    // An answer over 8192 px a side would be refused: the GPU is not asked.
    let err = generator
        .generate(&GenerationRequest {
            init_image: Some(png(2100, 8, 1)),
            upscale_factor: 4.0,
            ..request(JobType::Upscale)
        })
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
        .generate(&request(JobType::CharacterGeneration))
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
        .generate(&request(JobType::CharacterGeneration))
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
        .generate(&request(JobType::CharacterGeneration))
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
            .generate(&GenerationRequest {
                batch_size: 1,
                ..request(JobType::CharacterGeneration)
            })
            .await
            .unwrap_err();
        assert!(
            matches!(direct, GeneratorError::InvalidResponse(_)),
            "{direct}"
        );
        assert!(!direct.is_transient());

        let chain = build_chain(&config(Some(&stub), None)).unwrap();
        let outcome = chain
            .generate(&GenerationRequest {
                batch_size: 1,
                ..request(JobType::CharacterGeneration)
            })
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
        .generate(&request(JobType::CharacterGeneration))
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
async fn background_removal_skips_a1111_for_the_fallback() {
    let primary = StubServer::start(Behaviour::Render).await;
    let chain = build_chain(&config(Some(&primary), None)).unwrap();
    let outcome = chain
        .generate(&GenerationRequest {
            init_image: Some(png(64, 48, 10)),
            ..request(JobType::BackgroundRemoval)
        })
        .await
        .unwrap();
    assert_eq!(outcome.provider(), "fallback");
    assert!(primary.received().is_empty(), "A1111 was not asked");
    assert_eq!(outcome.failures.len(), 1);
    assert_eq!(outcome.failures[0].kind, "unsupported");
    assert!(!outcome.failures[0].transient);
    let img = decode(&outcome.images.images[0]);
    assert!(img.color().has_alpha());
    assert_eq!(img.to_rgba8().get_pixel(0, 0)[3], 0);
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
        .generate(&request(JobType::CharacterGeneration))
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
        .generate(&request(JobType::CharacterGeneration))
        .await
        .unwrap_err();
    assert!(!err.is_transient());
}
