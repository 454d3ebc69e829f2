//! The built-in renderer: an abstract "character card" drawn from prompt,
//! seed and style, for when no image server answers (and for the local
//! stack, which has none). It never passes for AI output: its info says
//! `"provider": "fallback", "procedural": true`.
//!
//! **Deterministic.** Everything comes from a splitmix64 stream seeded by
//! SHA-256 over (renderer version, style, prompt, seed); no thread RNG, no map
//! iteration order. Pixels use only IEEE-exact arithmetic (+ − × ÷ √, no sin
//! or exp, whose last bits differ between libms), so the same request gives
//! the same pixels on x86-64 and arm64, and the same PNG bytes for a given
//! build (a new `png` crate version may compress differently).
//!
//! The card: a two-colour gradient from the style's palette, a few translucent
//! discs, rings, bands and diamonds, a halo, a head-and-shoulders silhouette
//! with a rim light, a frame, and a name plate whose bars encode the hash.
//! Background removal draws the silhouette alone on transparency.

use futures::FutureExt;
use futures::future::BoxFuture;
use image::codecs::png::{CompressionType, FilterType as PngFilter, PngEncoder};
use image::imageops::FilterType;
use image::{ExtendedColorType, ImageEncoder};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{
    GeneratedImages, GenerationRequest, GeneratorError, ImageGenerator, JobType, Progress,
    ProgressReporter, decode_png, upscaled_size,
};

/// Part of the hash and of the info: a change to the drawing bumps it.
pub const RENDERER_VERSION: &str = "procedural-v1";

/// The fallback provider.
pub struct ProceduralGenerator;

impl ImageGenerator for ProceduralGenerator {
    /// Reports progress once, 1.0 when the images are made: a render takes
    /// well under a second.
    fn generate<'a>(
        &'a self,
        request: &'a GenerationRequest,
        progress: &'a ProgressReporter,
    ) -> BoxFuture<'a, Result<GeneratedImages, GeneratorError>> {
        // Rendering and PNG encoding are CPU work: keep them off the async
        // threads that serve the worker's other messages.
        let request = request.clone();
        async move {
            let images = tokio::task::spawn_blocking(move || render(&request))
                .await
                .map_err(|e| GeneratorError::Render(e.to_string()))??;
            progress.report(Progress::DONE);
            Ok(images)
        }
        .boxed()
    }

    fn name(&self) -> &'static str {
        "fallback"
    }
}

/// Renders a request synchronously (what [`ProceduralGenerator`] runs on a
/// blocking thread).
///
/// - character_generation: `batch_size` cards, seeds `seed`, `seed + 1`, ...
///   (as A1111 numbers a batch), each exactly width×height, RGB.
/// - style_transfer, variation: the same cards; with a source image, each is
///   blended over the source (resized to width×height) by `denoising_strength`.
/// - upscale: one image, as A1111's extras answer: the source resized by the
///   factor (triangle filter), or without a source a card of width×factor by
///   height×factor.
/// - background_removal: RGBA; the source inside a soft oval cut-out, one
///   image; without a source, `batch_size` silhouettes alone on transparency.
pub fn render(request: &GenerationRequest) -> Result<GeneratedImages, GeneratorError> {
    request.validate()?;
    let seeds: Vec<i64> = (0..request.batch_size)
        .map(|i| request.seed.wrapping_add(i64::from(i)))
        .collect();
    let source = request
        .init_image
        .as_deref()
        .map(|bytes| {
            decode_png(bytes).map_err(|e| {
                GeneratorError::InvalidRequest(format!("the source image is not a valid PNG: {e}"))
            })
        })
        .transpose()?;

    let (images, used_seeds, out_size) = draw(request, source.as_ref(), &seeds)?;

    Ok(GeneratedImages {
        images,
        provider: "fallback".into(),
        info: json!({
            "provider": "fallback",
            "procedural": true,
            "renderer": RENDERER_VERSION,
            "note": "abstract placeholder drawn by the built-in renderer, not AI output",
            "job_type": request.job_type,
            "style_type": request.style_type,
            "seed": request.seed,
            "all_seeds": used_seeds,
            "width": out_size.0,
            "height": out_size.1,
            "source_image": source.is_some(),
        }),
        gpu_time_ms: None,
    })
}

/// What [`draw`] makes: the PNGs, the seeds they used, and their size.
type Drawn = (Vec<Vec<u8>>, Vec<i64>, (u32, u32));

/// The PNGs for the request's job type, with the seeds they used and their
/// size.
fn draw(
    request: &GenerationRequest,
    source: Option<&image::DynamicImage>,
    seeds: &[i64],
) -> Result<Drawn, GeneratorError> {
    let (width, height) = (request.width, request.height);
    let card = |seed: i64, w: u32, h: u32, mode: Mode| {
        let scene = Scene::new(&request.prompt, seed, &request.style_type);
        scene.paint(w, h, mode)
    };

    Ok(match (request.job_type, source) {
        (JobType::Upscale, Some(source)) => upscale_source(source, request.upscale_factor)?,
        (JobType::Upscale, None) => {
            // One image, as A1111's extras answer: a card at the target size.
            let (w, h) = upscaled_size(width, height, request.upscale_factor)?;
            let png = encode(&card(request.seed, w, h, Mode::Card), w, h, Channels::Rgb)?;
            (vec![png], vec![request.seed], (w, h))
        }
        (JobType::BackgroundRemoval, Some(source)) => {
            let rgba = source
                .resize_exact(width, height, FilterType::Triangle)
                .to_rgba8();
            let cut = oval_cutout(rgba.into_raw(), width, height);
            (
                vec![encode(&cut, width, height, Channels::Rgba)?],
                vec![],
                (width, height),
            )
        }
        (JobType::BackgroundRemoval, None) => {
            let images = seeds
                .iter()
                .map(|&seed| {
                    encode(
                        &card(seed, width, height, Mode::Cutout),
                        width,
                        height,
                        Channels::Rgba,
                    )
                })
                .collect::<Result<_, _>>()?;
            (images, seeds.to_vec(), (width, height))
        }
        (JobType::StyleTransfer | JobType::Variation, Some(source)) => {
            let images = blend_over_source(request, source, seeds, card)?;
            (images, seeds.to_vec(), (width, height))
        }
        (JobType::CharacterGeneration | JobType::StyleTransfer | JobType::Variation, _) => {
            let images = seeds
                .iter()
                .map(|&seed| {
                    encode(
                        &card(seed, width, height, Mode::Card),
                        width,
                        height,
                        Channels::Rgb,
                    )
                })
                .collect::<Result<_, _>>()?;
            (images, seeds.to_vec(), (width, height))
        }
    })
}

/// Upscale with a source: the source resized by the factor (triangle
/// filter), as one PNG and no seeds.
fn upscale_source(source: &image::DynamicImage, factor: f64) -> Result<Drawn, GeneratorError> {
    let (w, h) = upscaled_size(source.width(), source.height(), factor)?;
    let resized = source.resize_exact(w, h, FilterType::Triangle);
    let mut png = Vec::new();
    resized
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| GeneratorError::Render(e.to_string()))?;
    Ok((vec![png], vec![], (w, h)))
}

/// Style transfer and variation with a source: each seed's card blended over
/// the source (resized to width×height) by `denoising_strength`.
fn blend_over_source(
    request: &GenerationRequest,
    source: &image::DynamicImage,
    seeds: &[i64],
    card: impl Fn(i64, u32, u32, Mode) -> Vec<u8>,
) -> Result<Vec<Vec<u8>>, GeneratorError> {
    let (width, height) = (request.width, request.height);
    let base = source
        .resize_exact(width, height, FilterType::Triangle)
        .to_rgb8()
        .into_raw();
    let strength = request.denoising_strength as f32;
    seeds
        .iter()
        .map(|&seed| {
            let painted = card(seed, width, height, Mode::Card);
            let mixed: Vec<u8> = base
                .iter()
                .zip(&painted)
                .map(|(&b, &p)| to_u8(lerp(f32::from(b), f32::from(p), strength) / 255.0))
                .collect();
            encode(&mixed, width, height, Channels::Rgb)
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Channels {
    Rgb,
    Rgba,
}

fn encode(
    pixels: &[u8],
    width: u32,
    height: u32,
    channels: Channels,
) -> Result<Vec<u8>, GeneratorError> {
    let mut png = Vec::new();
    let color = match channels {
        Channels::Rgb => ExtendedColorType::Rgb8,
        Channels::Rgba => ExtendedColorType::Rgba8,
    };
    PngEncoder::new_with_quality(&mut png, CompressionType::Fast, PngFilter::Adaptive)
        .write_image(pixels, width, height, color)
        .map_err(|e| GeneratorError::Render(e.to_string()))?;
    Ok(png)
}

/// The source inside a soft-edged oval, transparent outside: a procedural
/// stand-in for background removal that keeps the user's picture.
fn oval_cutout(mut rgba: Vec<u8>, width: u32, height: u32) -> Vec<u8> {
    let (w, h) = (width as f32, height as f32);
    let (rx, ry) = (0.42 * w, 0.46 * h);
    let feather = (0.02 * w.min(h)).max(1.0);
    for (i, px) in rgba.chunks_exact_mut(4).enumerate() {
        let x = (i as u32 % width) as f32 + 0.5;
        let y = (i as u32 / width) as f32 + 0.5;
        let d = ellipse_distance(x - 0.5 * w, y - 0.5 * h, rx, ry);
        let coverage = clamp01(0.5 - d / feather);
        px[3] = to_u8(f32::from(px[3]) / 255.0 * coverage);
    }
    rgba
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The whole card, opaque.
    Card,
    /// The silhouette only, on transparency.
    Cutout,
}

type Rgb = [f32; 3];

/// splitmix64: tiny, fast, well mixed, and ours (no dependency can change it).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), exactly representable.
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u32 << 24) as f32
    }

    fn range(&mut self, low: f32, high: f32) -> f32 {
        low + (high - low) * self.unit()
    }

    fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }
}

/// Palettes per style: gradient start, gradient end, three accents, the
/// silhouette.
struct Palette {
    background: [Rgb; 2],
    accents: [Rgb; 3],
    silhouette: Rgb,
}

const fn hex(rgb: u32) -> Rgb {
    [
        ((rgb >> 16) & 0xff) as f32 / 255.0,
        ((rgb >> 8) & 0xff) as f32 / 255.0,
        (rgb & 0xff) as f32 / 255.0,
    ]
}

const fn palette(bg: [u32; 2], accents: [u32; 3], silhouette: u32) -> Palette {
    Palette {
        background: [hex(bg[0]), hex(bg[1])],
        accents: [hex(accents[0]), hex(accents[1]), hex(accents[2])],
        silhouette: hex(silhouette),
    }
}

/// In the order of the character style types.
const STYLES: [(&str, Palette); 10] = [
    (
        "anime",
        palette(
            [0xffd1dc, 0xa0c4ff],
            [0xff6f91, 0x845ec2, 0xffc75f],
            0x2b2d42,
        ),
    ),
    (
        "realistic",
        palette(
            [0xd8c3a5, 0x8e8d8a],
            [0xe98074, 0xe85a4f, 0xeae7dc],
            0x3d3a36,
        ),
    ),
    (
        "cartoon",
        palette(
            [0xffe66d, 0x4ecdc4],
            [0xff6b6b, 0x1a535c, 0xf7fff7],
            0x1a1a2e,
        ),
    ),
    (
        "fantasy",
        palette(
            [0x2d1b69, 0x7b2cbf],
            [0xe0aaff, 0xffd166, 0x06d6a0],
            0x10002b,
        ),
    ),
    (
        "cyberpunk",
        palette(
            [0x0d0221, 0x261447],
            [0xff3864, 0x2de2e6, 0xf6019d],
            0x07060f,
        ),
    ),
    (
        "steampunk",
        palette(
            [0x3e2723, 0xa1887f],
            [0xc69c6d, 0x8d6e63, 0xffb300],
            0x1b1210,
        ),
    ),
    (
        "minimalist",
        palette(
            [0xf5f5f5, 0xdedede],
            [0x212121, 0x9e9e9e, 0xff5252],
            0x2a2a2a,
        ),
    ),
    (
        "comic",
        palette(
            [0xfff200, 0xff7f00],
            [0xe40303, 0x004dff, 0xffffff],
            0x111111,
        ),
    ),
    (
        "portrait",
        palette(
            [0x3a3a52, 0x8a7f8d],
            [0xd4a373, 0xfaedcd, 0xccd5ae],
            0x1e1e2a,
        ),
    ),
    (
        "artistic",
        palette(
            [0x264653, 0xe9c46a],
            [0x2a9d8f, 0xf4a261, 0xe76f51],
            0x1d3557,
        ),
    ),
];

fn palette_of(style: &str) -> &'static Palette {
    match STYLES.iter().find(|(name, _)| *name == style) {
        Some((_, palette)) => palette,
        // An unknown style still gets a stable palette of its own choosing.
        None => {
            let digest = Sha256::digest(style.as_bytes());
            &STYLES[usize::from(digest[0]) % STYLES.len()].1
        }
    }
}

enum ShapeKind {
    Disc { radius: f32 },
    Ring { radius: f32, half_width: f32 },
    Band { normal: [f32; 2], half_width: f32 },
    Diamond { radius: f32 },
}

#[derive(Clone, Copy)]
enum Headgear {
    None,
    /// A larger round outline behind the head.
    Hood,
    /// A knot on top.
    Bun,
    /// Two small lobes: ears, horns, a bow, whatever the eye makes of them.
    Lobes,
}

struct Shape {
    /// Centre, in units of the shorter side, from the image centre.
    centre: [f32; 2],
    kind: ShapeKind,
    color: Rgb,
    alpha: f32,
}

/// Everything about one card that depends on the hash, in size-free units
/// (fractions of the shorter side), so the same card renders at any size.
struct Scene {
    background: [Rgb; 2],
    /// Unit vector the gradient runs along.
    gradient: [f32; 2],
    shapes: Vec<Shape>,
    silhouette: Rgb,
    rim: Rgb,
    rim_width: f32,
    halo: Rgb,
    frame: Rgb,
    /// The head's offset from its usual place, and its radius.
    head: [f32; 2],
    head_radius: f32,
    headgear: Headgear,
    /// Gap between the chin and the top of the shoulders.
    neck_length: f32,
    neck_half_width: f32,
    /// The shoulders' half-width and half-height (an ellipse).
    shoulders: [f32; 2],
    /// 32 bars of the name plate, from the hash.
    plate_bits: u32,
}

impl Scene {
    fn new(prompt: &str, seed: i64, style: &str) -> Self {
        let mut rng = Self::seeded_rng(prompt, seed, style);

        let palette = palette_of(style);
        let accent = |rng: &mut SplitMix64| palette.accents[rng.below(3)];
        // Tint the gradient a little towards an accent, so seeds differ in colour too.
        let tint = accent(&mut rng);
        let amount = rng.range(0.0, 0.3);
        let mut background = palette.background;
        if rng.unit() < 0.5 {
            background.swap(0, 1);
        }
        let background = background.map(|c| mix(c, tint, amount * rng.unit()));
        let gradient = unit_vector(&mut rng);

        let shapes = Self::random_shapes(&mut rng, accent);

        let head_radius = rng.range(0.13, 0.17);
        let head = [rng.range(-0.03, 0.03), rng.range(-0.03, 0.03)];
        let headgear = match rng.below(4) {
            0 => Headgear::None,
            1 => Headgear::Hood,
            2 => Headgear::Bun,
            _ => Headgear::Lobes,
        };
        let neck_length = rng.range(0.04, 0.08);
        let neck_half_width = head_radius * rng.range(0.38, 0.5);
        let shoulders = [rng.range(0.36, 0.42), rng.range(0.3, 0.38)];
        let rim = accent(&mut rng);
        Self {
            background,
            gradient,
            shapes,
            silhouette: palette.silhouette,
            rim,
            rim_width: rng.range(0.008, 0.02),
            halo: accent(&mut rng),
            frame: accent(&mut rng),
            head,
            head_radius,
            headgear,
            neck_length,
            neck_half_width,
            shoulders,
            plate_bits: (rng.next_u64() >> 32) as u32,
        }
    }

    /// The card's random stream: splitmix64 seeded by SHA-256 over (renderer
    /// version, style, prompt, seed).
    fn seeded_rng(prompt: &str, seed: i64, style: &str) -> SplitMix64 {
        let mut hasher = Sha256::new();
        for part in [
            RENDERER_VERSION.as_bytes(),
            style.as_bytes(),
            prompt.as_bytes(),
        ] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        hasher.update(seed.to_le_bytes());
        let digest = hasher.finalize();
        let mut word = [0u8; 8];
        word.copy_from_slice(&digest[..8]);
        SplitMix64(u64::from_le_bytes(word))
    }

    /// Four to seven translucent discs, rings, bands and diamonds, each in
    /// one of the accents.
    fn random_shapes(rng: &mut SplitMix64, accent: impl Fn(&mut SplitMix64) -> Rgb) -> Vec<Shape> {
        let count = 4 + rng.below(4);
        (0..count)
            .map(|_| {
                let centre = [rng.range(-0.55, 0.55), rng.range(-0.55, 0.55)];
                let kind = match rng.below(4) {
                    0 => ShapeKind::Disc {
                        radius: rng.range(0.06, 0.32),
                    },
                    1 => ShapeKind::Ring {
                        radius: rng.range(0.1, 0.4),
                        half_width: rng.range(0.006, 0.03),
                    },
                    2 => ShapeKind::Band {
                        normal: unit_vector(rng),
                        half_width: rng.range(0.015, 0.09),
                    },
                    _ => ShapeKind::Diamond {
                        radius: rng.range(0.05, 0.22),
                    },
                };
                Shape {
                    centre,
                    kind,
                    color: accent(rng),
                    alpha: rng.range(0.18, 0.6),
                }
            })
            .collect()
    }

    /// RGB bytes for [`Mode::Card`], RGBA for [`Mode::Cutout`].
    fn paint(&self, width: u32, height: u32, mode: Mode) -> Vec<u8> {
        let channels = match mode {
            Mode::Card => 3,
            Mode::Cutout => 4,
        };
        let mut out = Vec::with_capacity(width as usize * height as usize * channels);
        let (w, h) = (width as f32, height as f32);
        let unit = w.min(h);
        // One pixel, in scene units: edges are anti-aliased over it.
        let px = 1.0 / unit;
        let (half_w, half_h) = (0.5 * w / unit, 0.5 * h / unit);

        // The bust stands on the bottom edge, centred: the head's centre
        // about 42% down a square card, the shoulders running off the bottom
        // (and never reaching the corners: rx < 0.5).
        let bottom = half_h;
        let r = self.head_radius;
        let head = [self.head[0], bottom - 0.58 + self.head[1]];
        let shoulders_top = head[1] + r + self.neck_length;
        let shoulders_centre = [0.0, shoulders_top + self.shoulders[1]];
        let neck_top = head[1];
        let neck_bottom = shoulders_top + 0.03;
        let margin = 0.035;
        let frame_half_width = (0.004f32).max(0.75 * px);
        let plate_half = [half_w.min(0.5) * 0.55, 0.032];
        let plate_centre = [0.0, bottom - margin - 0.03 - plate_half[1]];

        for row in 0..height {
            let y = (row as f32 + 0.5) / unit - half_h;
            for col in 0..width {
                let x = (col as f32 + 0.5) / unit - half_w;

                let d_body =
                    self.body_distance(x, y, head, shoulders_centre, neck_top, neck_bottom);
                let body = coverage(d_body, px);
                // A rim light: the edge band in an accent colour, the inside dark.
                let inner = coverage(d_body + self.rim_width, px);
                let body_color = mix(self.rim, self.silhouette, inner);

                if mode == Mode::Cutout {
                    out.extend_from_slice(&[
                        to_u8(body_color[0]),
                        to_u8(body_color[1]),
                        to_u8(body_color[2]),
                        to_u8(body),
                    ]);
                    continue;
                }

                let mut color = self.backdrop(x, y, half_w, half_h, px);
                color = self.halo_over(color, x, y, head);
                color = mix(color, body_color, body);

                // The frame: a rounded rectangle inset from the edges.
                let d_frame = rounded_box_distance(x, y, half_w - margin, half_h - margin, 0.04);
                color = mix(
                    color,
                    self.frame,
                    0.85 * coverage(d_frame.abs() - frame_half_width, px),
                );

                color = self.name_plate(color, x, y, plate_centre, plate_half, px);

                out.extend_from_slice(&[to_u8(color[0]), to_u8(color[1]), to_u8(color[2])]);
            }
        }
        out
    }

    /// The silhouette's signed distance at (x, y): head, neck and shoulders,
    /// smoothly joined.
    fn body_distance(
        &self,
        x: f32,
        y: f32,
        head: [f32; 2],
        shoulders_centre: [f32; 2],
        neck_top: f32,
        neck_bottom: f32,
    ) -> f32 {
        let d_head = self.head_distance(x, y, head);
        let d_shoulders = ellipse_distance(
            x - shoulders_centre[0],
            y - shoulders_centre[1],
            self.shoulders[0],
            self.shoulders[1],
        );
        let d_neck = box_distance(
            x - head[0] * 0.5,
            y - 0.5 * (neck_top + neck_bottom),
            self.neck_half_width,
            0.5 * (neck_bottom - neck_top),
        );
        smooth_min(smooth_min(d_head, d_neck, 0.04), d_shoulders, 0.08)
    }

    /// The head's signed distance at (x, y), headgear included.
    fn head_distance(&self, x: f32, y: f32, head: [f32; 2]) -> f32 {
        let r = self.head_radius;
        let d_head = length(x - head[0], y - head[1]) - r;
        match self.headgear {
            Headgear::None => d_head,
            Headgear::Hood => smooth_min(
                d_head,
                length(x - head[0], y - (head[1] - 0.12 * r)) - 1.28 * r,
                0.02,
            ),
            Headgear::Bun => smooth_min(
                d_head,
                length(x - head[0], y - (head[1] - 1.1 * r)) - 0.42 * r,
                0.03,
            ),
            Headgear::Lobes => {
                let lobe_y = y - (head[1] - 0.78 * r);
                let left = length(x - (head[0] - 0.78 * r), lobe_y) - 0.36 * r;
                let right = length(x - (head[0] + 0.78 * r), lobe_y) - 0.36 * r;
                smooth_min(d_head, left.min(right), 0.025)
            }
        }
    }

    /// The card's colour at (x, y) behind the bust: gradient, vignette and
    /// the translucent shapes.
    fn backdrop(&self, x: f32, y: f32, half_w: f32, half_h: f32, px: f32) -> Rgb {
        let t = clamp01(0.5 + 0.7 * (x * self.gradient[0] + y * self.gradient[1]));
        let mut color = mix(self.background[0], self.background[1], t);
        // A soft vignette: darker towards the corners.
        let r2 = (x * x + y * y) / (half_w * half_w + half_h * half_h);
        color = scale(color, 1.0 - 0.3 * r2);

        for shape in &self.shapes {
            let dx = x - shape.centre[0];
            let dy = y - shape.centre[1];
            let d = match shape.kind {
                ShapeKind::Disc { radius } => length(dx, dy) - radius,
                ShapeKind::Ring { radius, half_width } => {
                    (length(dx, dy) - radius).abs() - half_width
                }
                ShapeKind::Band { normal, half_width } => {
                    (dx * normal[0] + dy * normal[1]).abs() - half_width
                }
                ShapeKind::Diamond { radius } => {
                    (dx.abs() + dy.abs() - radius) * std::f32::consts::FRAC_1_SQRT_2
                }
            };
            color = mix(color, shape.color, shape.alpha * coverage(d, px));
        }
        color
    }

    /// `color` with the halo behind the head blended over it at (x, y).
    fn halo_over(&self, color: Rgb, x: f32, y: f32, head: [f32; 2]) -> Rgb {
        let r = self.head_radius;
        // A halo behind the head.
        let glow = clamp01(1.0 - (length(x - head[0], y - head[1]) / (2.4 * r)));
        mix(color, self.halo, 0.45 * glow * glow)
    }

    /// `color` with the name plate drawn over it at (x, y), its bars spelling
    /// the hash.
    fn name_plate(
        &self,
        mut color: Rgb,
        x: f32,
        y: f32,
        plate_centre: [f32; 2],
        plate_half: [f32; 2],
        px: f32,
    ) -> Rgb {
        let d_plate = rounded_box_distance(
            x - plate_centre[0],
            y - plate_centre[1],
            plate_half[0],
            plate_half[1],
            0.015,
        );
        let plate = coverage(d_plate, px);
        if plate > 0.0 {
            let plate_color = mix(self.silhouette, self.frame, 0.18);
            color = mix(color, plate_color, 0.8 * plate);
            let u = (x - plate_centre[0] + plate_half[0] * 0.85) / (plate_half[0] * 1.7);
            let v = (y - plate_centre[1]).abs();
            if (0.0..1.0).contains(&u) && v < plate_half[1] * 0.5 {
                let bar = ((u * 32.0) as u32).min(31);
                let within = u * 32.0 - bar as f32;
                if self.plate_bits >> bar & 1 == 1 && within < 0.6 {
                    color = mix(color, self.frame, 0.9 * plate);
                }
            }
        }
        color
    }
}

fn unit_vector(rng: &mut SplitMix64) -> [f32; 2] {
    // Rejection sampling keeps the direction uniform without sin/cos.
    for _ in 0..64 {
        let (x, y) = (rng.range(-1.0, 1.0), rng.range(-1.0, 1.0));
        let len = length(x, y);
        if len > 0.05 && len <= 1.0 {
            return [x / len, y / len];
        }
    }
    [
        std::f32::consts::FRAC_1_SQRT_2,
        std::f32::consts::FRAC_1_SQRT_2,
    ]
}

fn length(x: f32, y: f32) -> f32 {
    (x * x + y * y).sqrt()
}

/// An approximate signed distance to an axis-aligned ellipse (exact enough
/// for a one-pixel anti-aliased edge).
fn ellipse_distance(x: f32, y: f32, rx: f32, ry: f32) -> f32 {
    (length(x / rx, y / ry) - 1.0) * rx.min(ry)
}

fn box_distance(x: f32, y: f32, half_w: f32, half_h: f32) -> f32 {
    let qx = x.abs() - half_w;
    let qy = y.abs() - half_h;
    length(qx.max(0.0), qy.max(0.0)) + qx.max(qy).min(0.0)
}

fn rounded_box_distance(x: f32, y: f32, half_w: f32, half_h: f32, radius: f32) -> f32 {
    box_distance(x, y, half_w - radius, half_h - radius) - radius
}

/// A union of two distance fields with a rounded join of size `k`.
fn smooth_min(a: f32, b: f32, k: f32) -> f32 {
    let h = (k - (a - b).abs()).max(0.0) / k;
    a.min(b) - h * h * k * 0.25
}

/// How much of a pixel (`px` wide) lies inside a shape at signed distance `d`.
fn coverage(d: f32, px: f32) -> f32 {
    clamp01(0.5 - d / px)
}

fn clamp01(v: f32) -> f32 {
    v.clamp(0.0, 1.0)
}

fn lerp(a: f32, b: f32, t: f32) -> f32 {
    a + (b - a) * t
}

fn mix(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [
        lerp(a[0], b[0], t),
        lerp(a[1], b[1], t),
        lerp(a[2], b[2], t),
    ]
}

fn scale(c: Rgb, k: f32) -> Rgb {
    [c[0] * k, c[1] * k, c[2] * k]
}

fn to_u8(v: f32) -> u8 {
    (clamp01(v) * 255.0 + 0.5) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(prompt: &str, seed: i64) -> GenerationRequest {
        GenerationRequest {
            prompt: prompt.into(),
            seed,
            style_type: "fantasy".into(),
            width: 96,
            height: 64,
            ..Default::default()
        }
    }

    fn decode(png: &[u8]) -> image::DynamicImage {
        image::load_from_memory_with_format(png, image::ImageFormat::Png).unwrap()
    }

    fn png_of(width: u32, height: u32) -> Vec<u8> {
        let mut img = image::RgbImage::new(width, height);
        for (x, y, p) in img.enumerate_pixels_mut() {
            *p = image::Rgb([(x * 7) as u8, (y * 5) as u8, 128]);
        }
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn same_inputs_give_the_same_bytes() {
        let a = render(&request("a knight with a red cloak", 42)).unwrap();
        let b = render(&request("a knight with a red cloak", 42)).unwrap();
        assert_eq!(a.images, b.images);
        assert_eq!(a.info, b.info);
    }

    #[test]
    fn another_seed_prompt_or_style_gives_another_image() {
        let base = render(&request("a knight with a red cloak", 42))
            .unwrap()
            .images;
        let seed = render(&request("a knight with a red cloak", 43))
            .unwrap()
            .images;
        let prompt = render(&request("a knight with a blue cloak", 42))
            .unwrap()
            .images;
        let style = render(&GenerationRequest {
            style_type: "cyberpunk".into(),
            ..request("a knight with a red cloak", 42)
        })
        .unwrap()
        .images;
        assert_ne!(base, seed);
        assert_ne!(base, prompt);
        assert_ne!(base, style);
        // Different pixels, not merely different bytes.
        assert_ne!(decode(&base[0]).to_rgb8(), decode(&seed[0]).to_rgb8());
    }

    #[test]
    fn images_have_the_exact_size_and_count_asked_for() {
        for (width, height, batch) in [(96, 64, 1), (64, 96, 3), (1, 1, 2), (17, 250, 1)] {
            let out = render(&GenerationRequest {
                width,
                height,
                batch_size: batch,
                ..request("size", 1)
            })
            .unwrap();
            assert_eq!(out.images.len(), batch as usize);
            for png in &out.images {
                let img = decode(png);
                assert_eq!((img.width(), img.height()), (width, height));
                assert_eq!(img.color(), image::ColorType::Rgb8);
            }
        }
    }

    #[test]
    fn a_batch_uses_consecutive_seeds_and_says_it_is_procedural() {
        let batch = render(&GenerationRequest {
            batch_size: 3,
            ..request("batch", 10)
        })
        .unwrap();
        assert_eq!(batch.provider, "fallback");
        assert_eq!(batch.info["provider"], "fallback");
        assert_eq!(batch.info["procedural"], true);
        assert_eq!(batch.info["all_seeds"], json!([10, 11, 12]));
        assert_ne!(batch.images[0], batch.images[1]);
        assert_ne!(batch.images[1], batch.images[2]);
        // Image i of a batch is the single image of seed + i.
        let single = render(&request("batch", 11)).unwrap();
        assert_eq!(batch.images[1], single.images[0]);
    }

    #[test]
    fn background_removal_is_a_subject_on_transparency() {
        let (width, height) = (120, 90);
        let out = render(&GenerationRequest {
            job_type: JobType::BackgroundRemoval,
            width,
            height,
            batch_size: 2,
            ..request("cutout", 5)
        })
        .unwrap();
        assert_eq!(out.images.len(), 2);
        for png in &out.images {
            let img = decode(png);
            assert_eq!(img.color(), image::ColorType::Rgba8);
            let img = img.to_rgba8();
            assert_eq!(img.dimensions(), (width, height));
            for (x, y) in [
                (0, 0),
                (width - 1, 0),
                (0, height - 1),
                (width - 1, height - 1),
            ] {
                assert_eq!(img.get_pixel(x, y)[3], 0, "corner {x},{y}");
            }
            assert_eq!(img.get_pixel(width / 2, height * 3 / 4)[3], 255);
            let transparent = img.pixels().filter(|p| p[3] == 0).count();
            let opaque = img.pixels().filter(|p| p[3] == 255).count();
            assert!(
                transparent > 1000 && opaque > 1000,
                "{transparent} {opaque}"
            );
        }

        // With a source image: the source inside an oval, one image.
        let out = render(&GenerationRequest {
            job_type: JobType::BackgroundRemoval,
            init_image: Some(png_of(80, 60)),
            width,
            height,
            ..request("cutout", 5)
        })
        .unwrap();
        assert_eq!(out.images.len(), 1);
        let img = decode(&out.images[0]).to_rgba8();
        assert_eq!(img.dimensions(), (width, height));
        assert_eq!(img.get_pixel(0, 0)[3], 0);
        assert_eq!(img.get_pixel(width - 1, height - 1)[3], 0);
        assert_eq!(img.get_pixel(width / 2, height / 2)[3], 255);
    }

    #[test]
    fn upscale_resizes_the_source_by_the_factor() {
        let out = render(&GenerationRequest {
            job_type: JobType::Upscale,
            init_image: Some(png_of(40, 30)),
            upscale_factor: 2.5,
            ..request("up", 1)
        })
        .unwrap();
        assert_eq!(out.images.len(), 1);
        let img = decode(&out.images[0]);
        assert_eq!((img.width(), img.height()), (100, 75));
        assert_eq!(out.info["width"], 100);

        // No source: one card at the target size, whatever the batch size.
        let out = render(&GenerationRequest {
            job_type: JobType::Upscale,
            upscale_factor: 2.0,
            batch_size: 3,
            ..request("up", 1)
        })
        .unwrap();
        assert_eq!(out.images.len(), 1);
        let img = decode(&out.images[0]);
        assert_eq!((img.width(), img.height()), (192, 128));

        let too_big = render(&GenerationRequest {
            job_type: JobType::Upscale,
            width: 4096,
            height: 16,
            upscale_factor: 4.0,
            ..request("up", 1)
        });
        assert!(matches!(too_big, Err(GeneratorError::InvalidRequest(_))));
    }

    #[test]
    fn style_transfer_keeps_the_source_visible() {
        let source = png_of(96, 64);
        let weak = render(&GenerationRequest {
            job_type: JobType::StyleTransfer,
            init_image: Some(source.clone()),
            denoising_strength: 0.0,
            ..request("style", 3)
        })
        .unwrap();
        // Strength 0 leaves the source as it was.
        assert_eq!(decode(&weak.images[0]).to_rgb8(), decode(&source).to_rgb8());
        let strong = render(&GenerationRequest {
            job_type: JobType::StyleTransfer,
            init_image: Some(source.clone()),
            denoising_strength: 1.0,
            ..request("style", 3)
        })
        .unwrap();
        assert_eq!(strong.images, render(&request("style", 3)).unwrap().images);
    }

    #[test]
    fn a_source_that_is_not_a_png_is_refused() {
        let out = render(&GenerationRequest {
            job_type: JobType::Upscale,
            init_image: Some(b"not a png".to_vec()),
            ..request("x", 1)
        });
        assert!(matches!(out, Err(GeneratorError::InvalidRequest(_))));
    }

    #[test]
    fn unknown_styles_get_a_stable_palette() {
        let a = render(&GenerationRequest {
            style_type: "vaporwave".into(),
            ..request("x", 1)
        })
        .unwrap();
        let b = render(&GenerationRequest {
            style_type: "vaporwave".into(),
            ..request("x", 1)
        })
        .unwrap();
        assert_eq!(a.images, b.images);
    }

    #[test]
    fn the_prng_is_splitmix64() {
        // Reference values of splitmix64 seeded with 0.
        let mut rng = SplitMix64(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut rng = SplitMix64(7);
        for _ in 0..1000 {
            let u = rng.unit();
            assert!((0.0..1.0).contains(&u));
            assert!(rng.below(3) < 3);
        }
    }

    /// Pins the pixels of one card, so an accidental change to the drawing
    /// (or a platform difference) shows up; bump [`RENDERER_VERSION`] when
    /// changing it on purpose.
    #[test]
    fn the_pixels_of_a_known_card_do_not_change() {
        let out = render(&request("a knight with a red cloak", 42)).unwrap();
        let pixels = decode(&out.images[0]).to_rgb8().into_raw();
        let digest = hex::encode(Sha256::digest(&pixels));
        assert_eq!(
            digest,
            "7fabbdca615cbe7c6ed9e19be9f8cd0c0cd46393b52dd5e4d929a1c7f9fa7c4c"
        );
    }
}
