//! `prefold-gen`: generates the demo data set of `scripts/demo/model.toml` and
//! writes it to an origin.
//!
//! Usage: `prefold-gen --origin http://127.0.0.1:8080 --scale 1 --seed 1`.
//! `--scale 1` is a few hundred objects (what `make run` loads), `--scale
//! 10000` a few million; `--count-only` prints the counts per entity type
//! without touching the network. The data is deterministic for a seed; the id
//! scheme and counts are documented in `prefold_bench::gen`.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use prefold_bench::gen::{demo, load, Destination, Scale};
use prefold_core::OriginList;

#[derive(Parser)]
#[command(about = "Generates the demo data set and PUTs it to an origin")]
struct Args {
    /// The origin's (or the edge's) base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    origin: String,
    /// Instead of `--origin`: write each object to its owner in this origin
    /// list (`name=url,...`, as the origins and the edge have it).
    #[arg(long, conflicts_with = "origin")]
    origins: Option<String>,
    /// Size: 1 is a few hundred objects, 10000 a few million.
    #[arg(long, default_value_t = 1)]
    scale: usize,
    /// Seed of the generator: the same seed gives the same objects.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// A write token (`prefold-token` mints one); not needed by an origin
    /// started with `--open-writes`.
    #[arg(long, env = "PREFOLD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the number of objects per entity type and exit, without writing.
    #[arg(long)]
    count_only: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let scale = Scale::new(args.scale);
    let counts = scale.counts();
    if args.count_only {
        for (kind, count) in counts.per_type() {
            println!("{kind:<12} {count:>10}");
        }
        println!("{:<12} {:>10}", "total", counts.total());
        return Ok(());
    }
    let waves = demo(&scale, args.seed);
    // A progress bar only for a person watching; logs get the summary line.
    let progress = std::io::stderr().is_terminal();
    let to = match &args.origins {
        Some(list) => Destination::Cluster(
            OriginList::parse(list).map_err(|e| anyhow::anyhow!("--origins: {e}"))?,
        ),
        None => Destination::Origin(args.origin.clone()),
    };
    let target = args.origins.as_deref().unwrap_or(&args.origin).to_owned();
    let stats = load(
        &to,
        args.token.as_deref(),
        waves,
        args.concurrency,
        progress,
    )
    .await
    .with_context(|| {
        format!(
            "loading the demo data (scale {}, seed {}) into {}",
            args.scale, args.seed, target
        )
    })?;
    println!(
        "prefold-gen: {} objects in {:.2} s ({:.0} objects/s, {} retries) to {}",
        stats.objects,
        stats.elapsed.as_secs_f64(),
        stats.per_sec(),
        stats.retries,
        target
    );
    Ok(())
}
