//! `envd images`: the images envd built, with their size, age and the environments using them;
//! `envd prune`: what of them nothing uses any more (see [`envd_builder::prune`]).

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::process::ExitCode;

use envd_builder::docker::BuiltImage;

/// `envd images`'s flags.
#[derive(clap::Args)]
pub struct ImagesArgs {
    /// table or json.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    format: String,
}

/// Lists the images.
pub fn run(args: ImagesArgs) -> anyhow::Result<ExitCode> {
    let images = super::tokio()?.block_on(async {
        let docker = envd_builder::docker::connect().await?;
        envd_builder::docker::built_images(&docker).await
    })?;
    if args.format == "json" {
        envd_builder::say!("{}", serde_json::to_string_pretty(&images)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let rows: Vec<[String; 5]> = images.iter().map(|i| row(i, now)).collect();
    let header = ["IMAGE", "ID", "SIZE", "CREATED", "USED BY"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = (r.iter().zip(widths))
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        envd_builder::say!("{}", cells.join("  ").trim_end());
    }
    Ok(ExitCode::SUCCESS)
}

/// `envd prune`'s flags.
#[derive(clap::Args)]
pub struct PruneArgs {
    /// Remove without asking.
    #[arg(short, long)]
    force: bool,
    /// Also remove the engine's build cache (apt and pip downloads too: the next build fetches
    /// them again).
    #[arg(long)]
    cache: bool,
    /// With --cache: only the cache older than this (a Go duration, e.g. 24h).
    #[arg(long, requires = "cache")]
    cache_older_than: Option<String>,
    /// table or json. JSON never asks: without --force it only lists what would go.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    format: String,
}

/// What `envd prune --format json` prints: the plan, and what happened to it.
#[derive(serde::Serialize)]
struct PruneReport<'a> {
    #[serde(flatten)]
    plan: &'a envd_builder::prune::Plan,
    /// Whether the build cache is part of it (`--cache`), and its age limit.
    cache: Option<CacheScope<'a>>,
    /// Whether anything was removed (`--force`), or this is only the list.
    removed: bool,
    /// What the engine refused to remove, in its words.
    kept: Vec<String>,
    /// Bytes of build cache reclaimed.
    cache_reclaimed: i64,
}

#[derive(serde::Serialize)]
struct CacheScope<'a> {
    older_than: Option<&'a str>,
}

/// Shows what would go, asks, removes.
pub fn prune(args: PruneArgs) -> anyhow::Result<ExitCode> {
    super::tokio()?.block_on(async {
        let docker = envd_builder::docker::connect().await?;
        let plan = envd_builder::prune::plan(&docker).await?;
        let json = args.format == "json";
        if !json {
            show_plan(&plan, &args);
            if plan.is_empty() && !args.cache {
                envd_builder::say!("nothing to prune");
                return Ok(ExitCode::SUCCESS);
            }
            if !args.force && !confirmed()? {
                return Ok(ExitCode::FAILURE);
            }
        }
        let mut report = PruneReport {
            plan: &plan,
            cache: args.cache.then_some(CacheScope {
                older_than: args.cache_older_than.as_deref(),
            }),
            removed: false,
            kept: Vec::new(),
            cache_reclaimed: 0,
        };
        if !json || args.force {
            report.kept = envd_builder::prune::apply(&docker, &plan).await;
            report.removed = true;
            if args.cache {
                let older = args.cache_older_than.as_deref();
                report.cache_reclaimed = envd_builder::prune::build_cache(&docker, older).await?;
            }
        }
        if json {
            envd_builder::say!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            show_result(&report);
        }
        Ok(if report.kept.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

/// What would go, a line each.
fn show_plan(plan: &envd_builder::prune::Plan, args: &PruneArgs) {
    for (env, container) in &plan.environments {
        envd_builder::say!("stopped environment {env} (container {container})");
    }
    for i in &plan.images {
        let names = match i.tags.is_empty() {
            true => i.id.clone(),
            false => i.tags.join(", "),
        };
        envd_builder::say!("image {names} ({})", size(i.size));
    }
    for h in &plan.helpers {
        envd_builder::say!("helper image {}", h.tag);
    }
    if args.cache {
        let age = (args.cache_older_than.as_deref())
            .map_or(String::new(), |d| format!(" older than {d}"));
        envd_builder::say!("the engine's build cache{age}");
    }
}

/// What went and what the engine kept.
fn show_result(report: &PruneReport) {
    for f in &report.kept {
        eprintln!("envd: kept {f}");
    }
    let plan = report.plan;
    let removed = plan.environments.len() + plan.images.len() + plan.helpers.len();
    envd_builder::say!("removed {} of {removed}", removed - report.kept.len());
    if report.cache.is_some() {
        envd_builder::say!("build cache: {} reclaimed", size(report.cache_reclaimed));
    }
}

/// Asks at a terminal; refuses where nobody can answer.
fn confirmed() -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("envd prune asks before it removes anything, and no terminal can answer; --force removes without asking");
    }
    print!("Remove these? [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    let yes = matches!(answer.trim(), "y" | "Y" | "yes");
    if !yes {
        envd_builder::say!("nothing removed");
    }
    Ok(yes)
}

fn row(i: &BuiltImage, now: i64) -> [String; 5] {
    let name = i
        .tags
        .first()
        .cloned()
        .unwrap_or_else(|| "<untagged>".into());
    let id =
        i.id.trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect();
    let used = if i.used_by.is_empty() {
        "-".to_string()
    } else {
        i.used_by.join(", ")
    };
    [name, id, size(i.size), age(now - i.created), used]
}

/// `741 MB`, `2.1 GB`.
fn size(bytes: i64) -> String {
    let mb = bytes as f64 / 1e6;
    if mb >= 1000.0 {
        format!("{:.1} GB", mb / 1000.0)
    } else {
        format!("{mb:.0} MB")
    }
}

/// `12 seconds ago`, `5 minutes ago`, `3 hours ago`, `2 days ago`.
fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    let (n, unit) = match s {
        0..=119 => (s, "seconds"),
        120..=7199 => (s / 60, "minutes"),
        7200..=172_799 => (s / 3600, "hours"),
        _ => (s / 86_400, "days"),
    };
    format!("{n} {unit} ago")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_read_as_people_say_them() {
        assert_eq!(size(740_500_000), "740 MB");
        assert_eq!(size(2_140_000_000), "2.1 GB");
        assert_eq!(age(5), "5 seconds ago");
        assert_eq!(age(600), "10 minutes ago");
        assert_eq!(age(3 * 3600), "3 hours ago");
        assert_eq!(age(3 * 86_400), "3 days ago");
        assert_eq!(age(-4), "0 seconds ago");
    }
}
