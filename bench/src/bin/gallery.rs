//! Gallery latency through the local stack with 100,000 public characters.
//!
//! `cargo run --release -p bench --bin gallery [-- CHARACTERS REQUESTS]`
//!
//! Seeds a fresh database (1,000 showcasing users, CHARACTERS public
//! characters with varied styles, tags, counters and ratings), starts the
//! local stack on it, then for each sort and a few filters requests pages of
//! 24 sequentially and prints median, p99 and max latency. Prints figures;
//! asserts nothing.

use std::time::{Duration, Instant};

use local::{LocalOptions, LocalStack};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let characters: i64 = args
        .first()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let requests: usize = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(300);

    let database_url = testkit::fresh_database().await;
    let client = testkit::connect(&database_url).await;
    let seeding = Instant::now();
    client
        .batch_execute(
            "INSERT INTO users (email, username, allow_gallery_showcase)
             SELECT 'bench' || i || '@example.com', 'bench_' || i, true FROM generate_series(1, 1000) i",
        )
        .await?;
    client
        .execute(
            "INSERT INTO characters (user_id, name, prompt, style_type, tags, is_public, view_count, like_count,
                                     download_count, rating_count, rating_sum, published_at)
             SELECT u.id, 'Character ' || i, 'portrait number ' || i || ' of a hero',
                    (ARRAY['anime','realistic','cartoon','fantasy','cyberpunk','steampunk','minimalist','comic',
                           'portrait','artistic'])[1 + i % 10],
                    ARRAY['tag' || (i % 50), 'tag' || (i % 7)], true, (i * 7919) % 5000, (i * 104729) % 300,
                    (i * 31) % 100, i % 6, (i % 6) * (1 + i % 5), now() - make_interval(secs => i)
             FROM generate_series(1, $1::bigint) i
             JOIN users u ON u.username = 'bench_' || (1 + i % 1000)",
            &[&characters],
        )
        .await?;
    client.batch_execute("ANALYZE").await?;
    println!(
        "seeded {characters} public characters in {:.1?}",
        seeding.elapsed()
    );

    let stack = LocalStack::start(LocalOptions {
        port: 0,
        database_url: Some(database_url),
        data_dir: std::env::temp_dir(),
        signing_key: Some(testkit::signing_key()),
        background_tasks: false,
    })
    .await?;
    let http = reqwest::Client::new();
    println!("{requests} sequential requests per query, page size 24");
    println!(
        "{:<44} {:>10} {:>10} {:>10}",
        "query", "median", "p99", "max"
    );
    for query in [
        "sort=recent",
        "sort=popular",
        "sort=top_rated",
        "sort=recent&style_type=anime",
        "sort=popular&tag=tag3",
        "sort=recent&q=hero",
    ] {
        let url = format!("{}/api/v1/gallery?limit=24&{query}", stack.base_url);
        // Warm the plan cache and the pool.
        for _ in 0..10 {
            http.get(&url).send().await?.bytes().await?;
        }
        let mut samples: Vec<Duration> = Vec::with_capacity(requests);
        for _ in 0..requests {
            let started = Instant::now();
            let response = http.get(&url).send().await?;
            let status = response.status();
            response.bytes().await?;
            samples.push(started.elapsed());
            anyhow::ensure!(status.is_success(), "{query}: {status}");
        }
        samples.sort();
        let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
        println!(
            "{:<44} {:>10.2?} {:>10.2?} {:>10.2?}",
            query,
            at(0.5),
            at(0.99),
            samples[samples.len() - 1]
        );
    }
    stack.stop().await?;
    Ok(())
}
