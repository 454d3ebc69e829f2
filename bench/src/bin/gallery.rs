//! Gallery latency through the local stack with 100,000 public characters.
//!
//! `cargo run --release -p bench --bin gallery [-- CHARACTERS REQUESTS]`
//!
//! Seeds a fresh database (1,000 showcasing users, CHARACTERS public
//! characters with varied styles, tags, counters and ratings), starts the
//! local stack on it, then for each sort and a few filters requests pages of
//! 24 sequentially and prints median, p99 and max latency. Then reads of
//! single characters (`GET /api/v1/characters/{id}`, anonymous, which count
//! views): one client cycling over 50 characters, then 200 clients (told apart
//! by their User-Agent) each reading one of the same 50 again and again (200
//! distinct viewer-character pairs); for each, requests per second,
//! median and p99 latency, and the database rows written per GET (inserts,
//! updates and deletes of every table, from `pg_stat_user_tables`, read after
//! the stack has stopped so that every backend has flushed its statistics).
//! Prints figures; asserts nothing.

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
    let sample: Vec<String> = client
        .query("SELECT id FROM characters ORDER BY id LIMIT 50", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    drop(client);
    println!(
        "seeded {characters} public characters in {:.1?}",
        seeding.elapsed()
    );

    let writes_before = rows_written(&database_url).await?;
    let views_before = views_of(&database_url, &sample).await?;
    let stack = LocalStack::start(LocalOptions {
        port: 0,
        database_url: Some(database_url.clone()),
        migration_url: None,
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

    let reads = requests * 10;
    println!();
    println!(
        "{reads} sequential GET /api/v1/characters/{{id}} per row (anonymous), over 50 characters"
    );
    println!(
        "{:<44} {:>10} {:>10} {:>10}",
        "viewers", "GET/s", "median", "p99"
    );
    let mut row_counts = Vec::new();
    for viewers in [1usize, 200] {
        let started = Instant::now();
        let mut samples: Vec<Duration> = Vec::with_capacity(reads);
        for i in 0..reads {
            let url = format!(
                "{}/api/v1/characters/{}",
                stack.base_url,
                sample[i % sample.len()]
            );
            // Viewer v reads character v mod 50 (50 divides 200), so the
            // row has `viewers` distinct (viewer, character) pairs.
            let agent = format!("bench-viewer-{}", i % viewers);
            let begun = Instant::now();
            let response = http.get(&url).header("user-agent", agent).send().await?;
            let status = response.status();
            response.bytes().await?;
            samples.push(begun.elapsed());
            anyhow::ensure!(status.is_success(), "GET character: {status}");
        }
        let elapsed = started.elapsed();
        samples.sort();
        let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
        println!(
            "{:<44} {:>10.0} {:>10.2?} {:>10.2?}",
            format!("{viewers} viewer(s)"),
            reads as f64 / elapsed.as_secs_f64(),
            at(0.5),
            at(0.99)
        );
        row_counts.push((viewers, reads));
    }
    stack.stop().await?;
    // Every backend has exited (the pool is gone), so its statistics are flushed.
    let written = rows_written(&database_url).await? - writes_before;
    let gets: usize = row_counts.iter().map(|(_, n)| n).sum();
    let views = views_of(&database_url, &sample).await? - views_before;
    println!(
        "rows written by {gets} GETs (gallery pages included): {written} ({:.3} per character GET); \
         views added to the 50 characters: {views}",
        written as f64 / (gets as f64)
    );
    Ok(())
}

/// The 50 characters' views, added up.
async fn views_of(database_url: &str, sample: &[String]) -> anyhow::Result<i64> {
    let client = testkit::connect(database_url).await;
    Ok(client
        .query_one(
            "SELECT coalesce(sum(view_count), 0)::int8 FROM characters WHERE id = ANY($1)",
            &[&sample],
        )
        .await?
        .get(0))
}

/// Rows inserted, updated and deleted in every table of the database so far,
/// as the cumulative statistics have them. Backends publish their counts when
/// idle or at exit, a little later; so this reads until two reads half a
/// second apart agree (at most 30 s).
async fn rows_written(database_url: &str) -> anyhow::Result<i64> {
    let client = testkit::connect(database_url).await;
    let mut last = -1;
    for _ in 0..60 {
        client
            .execute("SELECT pg_stat_clear_snapshot()", &[])
            .await?;
        let now: i64 = client
            .query_one(
                "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::int8 FROM pg_stat_user_tables",
                &[],
            )
            .await?
            .get(0);
        if now == last {
            return Ok(now);
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(last)
}
