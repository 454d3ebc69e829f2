//! The procedural renderer (the generator chain's fallback): renders per second
//! and milliseconds per 512×512 image, PNG encoding included, on one thread;
//! and the 256 px thumbnail of each.
//!
//! `cargo run --release -p bench --bin render [-- COUNT] [--write DIR]`
//!
//! COUNT renders per job type (default 200). `--write DIR` also saves one card
//! per style (and a cut-out and its thumbnail) there, to look at. Prints
//! figures; asserts nothing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use shared::kernel::vocabulary::JobType;
use shared::ports::generator::procedural::render;
use shared::ports::generator::{GenerationRequest, THUMBNAIL_MAX_SIDE, thumbnail};

const STYLES: [&str; 10] = [
    "anime",
    "realistic",
    "cartoon",
    "fantasy",
    "cyberpunk",
    "steampunk",
    "minimalist",
    "comic",
    "portrait",
    "artistic",
];

fn main() -> anyhow::Result<()> {
    let mut count: usize = 200;
    let mut write_dir: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--write" {
            write_dir = Some(
                args.next()
                    .map(PathBuf::from)
                    .ok_or_else(|| anyhow::anyhow!("--write needs a directory"))?,
            );
        } else {
            count = arg.parse()?;
        }
    }

    let request = |job_type: JobType, seed: i64| GenerationRequest {
        job_type,
        prompt: format!("a wandering knight with a lantern, portrait #{seed}"),
        style_type: STYLES[seed as usize % STYLES.len()].into(),
        seed,
        width: 512,
        height: 512,
        ..Default::default()
    };

    println!("procedural renderer, 512x512, {count} images per row, one thread");
    println!(
        "{:<28} {:>12} {:>10} {:>10} {:>10} {:>12}",
        "job", "renders/s", "median ms", "p99 ms", "max ms", "mean bytes"
    );
    for job_type in [JobType::CharacterGeneration, JobType::BackgroundRemoval] {
        // Warm-up: page faults and allocator growth are not the renderer.
        for seed in 0..5 {
            render(&request(job_type, seed))?;
        }
        let mut times = Vec::with_capacity(count);
        let mut bytes = 0usize;
        let started = Instant::now();
        for seed in 0..count as i64 {
            let t = Instant::now();
            let out = render(&request(job_type, seed))?;
            times.push(t.elapsed());
            bytes += out.images[0].len();
        }
        let total = started.elapsed();
        print_row(job_type.as_str(), &mut times, total, bytes / count.max(1));
    }

    // Thumbnails of rendered cards.
    let cards: Vec<Vec<u8>> = (0..count.min(50) as i64)
        .map(|seed| {
            render(&request(JobType::CharacterGeneration, seed)).map(|o| o.images[0].clone())
        })
        .collect::<Result<_, _>>()?;
    let mut times = Vec::with_capacity(count);
    let mut bytes = 0usize;
    let started = Instant::now();
    for i in 0..count {
        let t = Instant::now();
        let thumb = thumbnail(&cards[i % cards.len()], THUMBNAIL_MAX_SIDE)?;
        times.push(t.elapsed());
        bytes += thumb.len();
    }
    print_row(
        "thumbnail 512 -> 256 (png)",
        &mut times,
        started.elapsed(),
        bytes / count.max(1),
    );
    if let Some(dir) = write_dir {
        std::fs::create_dir_all(&dir)?;
        for (i, style) in STYLES.iter().enumerate() {
            let out = render(&GenerationRequest {
                style_type: (*style).into(),
                ..request(JobType::CharacterGeneration, i as i64)
            })?;
            std::fs::write(dir.join(format!("card-{style}.png")), &out.images[0])?;
        }
        let cutout = render(&request(JobType::BackgroundRemoval, 3))?;
        std::fs::write(dir.join("cutout.png"), &cutout.images[0])?;
        std::fs::write(
            dir.join("cutout-thumbnail.png"),
            thumbnail(&cutout.images[0], THUMBNAIL_MAX_SIDE)?,
        )?;
        println!("samples written to {}", dir.display());
    }
    Ok(())
}

fn print_row(label: &str, times: &mut [Duration], total: Duration, mean_bytes: usize) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{:<28} {:>12.1} {:>10.2} {:>10.2} {:>10.2} {:>12}",
        label,
        times.len() as f64 / total.as_secs_f64(),
        ms(at(0.5)),
        ms(at(0.99)),
        ms(times[times.len() - 1]),
        mean_bytes
    );
}
