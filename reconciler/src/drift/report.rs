//! `spilo drift`: a one-shot drift report of the AWS and etcd clusters at a ref. Exit 0 no drift,
//! 2 drift, 1 error (including a cluster whose drift cannot be told).

use super::detect::{self, Drift};
use crate::aws::clients::Clients;
use crate::aws::commands::{
    AwsArgs, EXIT_CHANGES, EXIT_CLEAN, EXIT_ERROR, Source, TableFormat, cache_dir,
};
use crate::aws::plan::PlanOptions;
use crate::desired;
use serde::Serialize;
use std::fmt::Write;

/// `spilo drift`.
#[derive(Debug, Clone, clap::Args)]
pub struct DriftArgs {
    #[command(flatten)]
    source: Source,
    #[command(flatten)]
    aws: AwsArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: TableFormat,
}

/// The report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The commit compared against.
    pub commit: String,
    /// Every drift found.
    pub drift: Vec<Drift>,
    /// Clusters whose drift could not be told, with the reason.
    pub unknown: Vec<(String, String)>,
}

/// Renders the text view.
pub fn text(r: &Report) -> String {
    let mut out = String::new();
    for d in &r.drift {
        let _ = writeln!(out, "{}: {}: {}", d.cluster, d.kind.as_str(), d.detail);
    }
    for (c, why) in &r.unknown {
        let _ = writeln!(out, "{c}: unknown: {why}");
    }
    let _ = writeln!(
        out,
        "{} drift(s), {} cluster(s) unknown, against {}",
        r.drift.len(),
        r.unknown.len(),
        r.commit.get(..12).unwrap_or(&r.commit)
    );
    out
}

/// Runs `spilo drift`.
pub async fn run(args: DriftArgs) -> anyhow::Result<u8> {
    let clients = Clients::new(args.aws.endpoint_url.clone());
    let mut d = desired::read(&args.source.repo, &args.source.reference, &cache_dir())?;
    let (_, observed) =
        crate::aws::plan_desired(&clients, &mut d, &args.aws.regions, PlanOptions::default()).await;
    let mut report = Report {
        commit: d.commit.clone(),
        drift: Vec::new(),
        unknown: Vec::new(),
    };
    for (path, f) in crate::aws::aws_clusters(&d) {
        let name = f.metadata.name.to_string();
        let Some(o) = observed.clusters.get(&name) else {
            report.unknown.push((name, "not observed".into()));
            continue;
        };
        match detect::detect(path, f, o) {
            Ok(found) => report.drift.extend(found),
            Err(why) => report.unknown.push((name, why)),
        }
    }
    for (path, f) in crate::aws::etcd_clusters(&d) {
        let name = f.metadata.name.to_string();
        let Some(o) = observed.clusters.get(&name) else {
            report.unknown.push((name, "not observed".into()));
            continue;
        };
        match detect::detect_etcd(path, f, o) {
            Ok(found) => report.drift.extend(found),
            Err(why) => report.unknown.push((name, why)),
        }
    }
    match args.format {
        TableFormat::Text => print!("{}", text(&report)),
        TableFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(if !report.unknown.is_empty() {
        EXIT_ERROR
    } else if report.drift.is_empty() {
        EXIT_CLEAN
    } else {
        EXIT_CHANGES
    })
}
