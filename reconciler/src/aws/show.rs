//! The three views of a [`Plan`]: text like Terraform's (`+ ~ - -/+`, colour on a terminal,
//! `Plan: X to add, Y to change, Z to destroy.`), JSON (the plan itself, see
//! `docs/plan-format.md`), and markdown for a pull-request comment (summary first, details
//! collapsible, cut to fit GitHub's comment limit).

use super::diff::{self, ResourceAction, ResourceChange, ValueChange};
use super::plan::{Action, ClusterPlan, ConfigChange, Plan};
use serde_json::Value;
use std::fmt::Write;

/// GitHub's limit on a comment body, in characters.
pub const GITHUB_COMMENT_LIMIT: usize = 65_535;

/// Text colours (ANSI) or none.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    colour: bool,
}

impl Style {
    /// Colours when `colour` is true.
    pub fn new(colour: bool) -> Self {
        Style { colour }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// The summary line.
pub fn summary_line(plan: &Plan) -> String {
    let s = plan.summary;
    let mut line = format!(
        "Plan: {} to add, {} to change, {} to destroy.",
        s.add, s.change, s.destroy
    );
    if s.blocked > 0 {
        let _ = write!(line, " {} cluster(s) blocked or refused.", s.blocked);
    }
    line
}

fn symbol(a: ResourceAction) -> (&'static str, &'static str) {
    match a {
        ResourceAction::Add => ("+", "32"),
        ResourceAction::Modify => ("~", "33"),
        ResourceAction::Replace => ("-/+", "31"),
        ResourceAction::Remove => ("-", "31"),
    }
}

fn cluster_symbol(c: &ClusterPlan) -> (&'static str, &'static str) {
    match c.action {
        Action::Create => ("+", "32"),
        Action::Update => ("~", "33"),
        Action::Replace => ("-/+", "31"),
        Action::Delete => ("-", "31"),
        Action::Noop | Action::Orphan => ("=", "2"),
        Action::Blocked => ("!", "31;1"),
    }
}

fn headline(c: &ClusterPlan) -> String {
    let what = match c.action {
        Action::Create => format!("create stack {} in {}", c.stack_name, c.region),
        Action::Update if c.changes_stack() => format!("update stack {}", c.stack_name),
        Action::Update if c.config.is_none() && c.rollout.is_some() => {
            format!("replace the instances of stack {}", c.stack_name)
        }
        Action::Update => "update the etcd config".to_string(),
        Action::Replace => format!("update stack {}, replacing resources", c.stack_name),
        Action::Delete => format!("delete stack {}", c.stack_name),
        Action::Noop => "no changes".to_string(),
        Action::Orphan => format!("orphaned stack {}", c.stack_name),
        Action::Blocked => "blocked".to_string(),
    };
    let mut line = format!("cluster {}: {what}", c.name);
    if let Some(f) = &c.file {
        let _ = write!(line, " ({f})");
    }
    line
}

fn json_short(v: &Option<Value>) -> String {
    match v {
        None => "(none)".into(),
        Some(Value::String(s)) => {
            let s = if s.len() > 80 {
                format!("{}... ({} bytes)", &s[..s.floor_char_boundary(60)], s.len())
            } else {
                s.clone()
            };
            format!("{s:?}")
        }
        Some(other) => {
            let s = other.to_string();
            if s.len() > 80 {
                format!("{}... ({} bytes)", &s[..s.floor_char_boundary(60)], s.len())
            } else {
                s
            }
        }
    }
}

fn value_change_line(kind: &str, v: &ValueChange) -> String {
    let b = v.before.clone().map(Value::String);
    let a = v.after.clone().map(Value::String);
    match (&v.before, &v.after) {
        (None, _) => format!("+ {kind} {} = {}", v.name, json_short(&a)),
        (_, None) => format!("- {kind} {} = {}", v.name, json_short(&b)),
        _ => format!(
            "~ {kind} {}: {} -> {}",
            v.name,
            json_short(&b),
            json_short(&a)
        ),
    }
}

fn resource_lines(r: &ResourceChange, style: Style, out: &mut String) {
    let (sym, code) = symbol(r.action);
    let _ = write!(
        out,
        "    {} {} ({})",
        style.paint(code, sym),
        r.logical_id,
        r.resource_type
    );
    if r.action == ResourceAction::Replace {
        out.push_str(&style.paint("31", " must be replaced"));
    }
    out.push('\n');
    for p in &r.properties {
        let _ = write!(
            out,
            "        ~ {}: {} -> {}",
            p.path,
            json_short(&p.before),
            json_short(&p.after)
        );
        if p.forces_replacement {
            out.push_str(" (forces replacement)");
        }
        out.push('\n');
    }
}

/// The config change as `~ field: before -> after` lines.
pub fn config_lines(c: &ConfigChange) -> Vec<String> {
    let before = c
        .before
        .as_ref()
        .and_then(|b| serde_json::to_value(b).ok())
        .unwrap_or(Value::Object(Default::default()));
    let after = serde_json::to_value(&c.after).unwrap_or(Value::Null);
    diff::value_changes(&before, &after)
        .into_iter()
        // Roles and databases are said in words ([`ConfigChange::catalog`]).
        .filter(|(path, _, _)| path != "catalog" && !path.starts_with("catalog."))
        .map(|(path, b, a)| match (&b, &a) {
            (None, _) => format!("+ {path} = {}", json_short(&a)),
            (_, None) => format!("- {path} = {}", json_short(&b)),
            _ => format!("~ {path}: {} -> {}", json_short(&b), json_short(&a)),
        })
        .collect()
}

/// One cluster's details (without the headline), as plain lines.
fn details(c: &ClusterPlan, style: Style, with_template_diff: bool) -> String {
    let mut out = String::new();
    if let Some(r) = &c.reason {
        let _ = writeln!(
            out,
            "    {}",
            style.paint(
                if c.refused || c.action == Action::Blocked {
                    "31"
                } else {
                    "2"
                },
                r
            )
        );
    }
    for w in &c.warnings {
        let _ = writeln!(out, "    warning: {w}");
    }
    if let Some(h) = &c.handover {
        let _ = writeln!(
            out,
            "    {} {}",
            style.paint("33", "~"),
            h.describe(&c.name)
        );
    }
    if let Some(u) = &c.major_upgrade {
        let _ = writeln!(out, "    {} {}", style.paint("33", "~"), u.describe());
    }
    if let Some(r) = &c.rollout {
        let _ = writeln!(
            out,
            "    {} rollout: {}",
            style.paint("33", "~"),
            r.describe()
        );
    }
    if c.protect {
        let _ = writeln!(
            out,
            "    {} termination protection: on (reconcile.terminationProtection)",
            style.paint("33", "~")
        );
    }
    if let Some(b) = &c.bucket {
        let _ = writeln!(
            out,
            "    {} S3 bucket {b} (encrypted, no public access; outside the stack: it holds the backups and is kept when the cluster is deleted)",
            style.paint("32", "+")
        );
    }
    if let Some(u) = &c.image_upload {
        let _ = writeln!(
            out,
            "    {} spilo image s3://{}/{} (uploaded from {}; plain Debian instances install it at their first boot)",
            style.paint("32", "+"),
            u.bucket,
            u.key,
            u.file.display()
        );
    }
    for p in &c.parameters {
        let _ = writeln!(out, "    {}", value_change_line("parameter", p));
    }
    for t in &c.tags {
        let _ = writeln!(out, "    {}", value_change_line("tag", t));
    }
    for r in &c.resources {
        resource_lines(r, style, &mut out);
    }
    if let Some(cfg) = &c.config {
        let _ = writeln!(
            out,
            "    {} etcd /service/{}/config (compare-and-swap on revision {})",
            style.paint("33", "~"),
            c.name,
            cfg.expected_revision
        );
        for l in config_lines(cfg) {
            let _ = writeln!(out, "        {l}");
        }
        if let Some(s) = &cfg.synchronous {
            let _ = writeln!(out, "        durability: {s}");
        }
        for l in &cfg.catalog {
            let painted = match l.chars().next() {
                Some('+') => style.paint("32", l),
                Some('-') => style.paint("31", l),
                Some('~') => style.paint("33", l),
                _ => l.clone(),
            };
            let _ = writeln!(out, "    {painted}");
        }
        let restarts = super::plan::restarts::restarts(cfg);
        if !restarts.is_empty() {
            let _ = writeln!(
                out,
                "    {} restart: {} take{} effect only after every member restarted (`spilo \
                 restart {} --pending`: the replicas in place, the primary by a switchover); \
                 until then the members show pending restart",
                style.paint("33", "~"),
                restarts.join(", "),
                if restarts.len() == 1 { "s" } else { "" },
                c.name
            );
        }
    }
    if with_template_diff && !c.template_diff.is_empty() {
        out.push_str("    template diff:\n");
        for l in c.template_diff.lines() {
            let painted = if l.starts_with('+') && !l.starts_with("+++") {
                style.paint("32", l)
            } else if l.starts_with('-') && !l.starts_with("---") {
                style.paint("31", l)
            } else {
                l.to_string()
            };
            let _ = writeln!(out, "      {painted}");
        }
    }
    out
}

/// The text view.
pub fn text(plan: &Plan, style: Style) -> String {
    let b = &plan.based_on;
    let mut out = format!(
        "spilo plan of {} at {} ({})\n\n",
        b.repo,
        short(&b.commit),
        b.reference
    );
    if plan.clusters.is_empty() {
        out.push_str("No AWS clusters.\n\n");
    }
    for c in &plan.clusters {
        let (sym, code) = cluster_symbol(c);
        let _ = writeln!(
            out,
            "{} {}",
            style.paint(code, sym),
            style.paint("1", &headline(c))
        );
        out.push_str(&details(c, style, true));
        out.push('\n');
    }
    out.push_str(&summary_line(plan));
    out.push('\n');
    out
}

/// The JSON view: the plan itself.
pub fn json(plan: &Plan) -> String {
    serde_json::to_string_pretty(plan).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

fn markdown_action(c: &ClusterPlan) -> &'static str {
    match (c.action, c.refused) {
        (_, true) => "⛔ refused",
        (Action::Create, _) => "➕ create",
        (Action::Update, _) => "✏️ update",
        (Action::Replace, _) => "♻️ replace",
        (Action::Delete, _) => "🗑️ delete",
        (Action::Noop, _) => "no changes",
        (Action::Orphan, _) => "orphaned",
        (Action::Blocked, _) => "⛔ blocked",
    }
}

/// The markdown view, at most `limit` characters.
pub fn markdown(plan: &Plan, limit: usize) -> String {
    let b = &plan.based_on;
    let mut head = format!(
        "### spilo plan for `{}`\n\n**{}**\n\n",
        short(&b.commit),
        summary_line(plan)
    );
    head.push_str("| cluster | action | stack | changes |\n|---|---|---|---|\n");
    for c in &plan.clusters {
        let changes = if let Some(r) = &c.reason {
            r.replace('|', "\\|")
        } else {
            let mut parts = Vec::new();
            if !c.resources.is_empty() {
                parts.push(format!("{} resource(s)", c.resources.len()));
            }
            if !c.parameters.is_empty() {
                parts.push(format!("{} parameter(s)", c.parameters.len()));
            }
            if let Some(cfg) = &c.config {
                parts.push("etcd config".into());
                if !cfg.catalog.is_empty() {
                    parts.push(format!("{} role/database change(s)", cfg.catalog.len()));
                }
            }
            if let Some(h) = &c.handover {
                parts.push(h.describe(&c.name).replace('|', "\\|"));
            }
            if let Some(u) = &c.major_upgrade {
                parts.push(u.describe().replace('|', "\\|"));
            }
            if let Some(r) = &c.rollout {
                parts.push(format!("rollout: {}", r.describe()).replace('|', "\\|"));
            }
            if parts.is_empty() {
                "-".into()
            } else {
                parts.join(", ")
            }
        };
        let _ = writeln!(
            head,
            "| `{}` | {} | `{}` | {} |",
            c.name,
            markdown_action(c),
            c.stack_name,
            changes
        );
    }
    head.push('\n');
    let cut_note = |n: usize| {
        format!(
            "\n> ✂️ The details of {n} cluster(s) were cut to fit the forge's comment limit ({limit} characters here); the full plan is `spilo plan`'s output (in CI, the run's artefact).\n"
        )
    };
    let reserve = cut_note(plan.clusters.len()).chars().count() + 16;
    let mut body = head;
    let mut cut = 0;
    let with_details: Vec<&ClusterPlan> = plan
        .clusters
        .iter()
        .filter(|c| {
            !c.resources.is_empty()
                || !c.parameters.is_empty()
                || c.config.is_some()
                || !c.warnings.is_empty()
        })
        .collect();
    for c in &with_details {
        let mut section = format!(
            "<details><summary><code>{}</code>: {}</summary>\n\n```diff\n{}",
            c.name,
            markdown_action(c),
            // Lines start with their +/- so GitHub colours the diff block.
            details(c, Style::new(false), false)
                .lines()
                .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
                .collect::<String>()
        );
        if !c.template_diff.is_empty() {
            section.push_str("```\n\nTemplate diff:\n\n```diff\n");
            section.push_str(&c.template_diff);
        }
        section.push_str("```\n\n</details>\n\n");
        if body.chars().count() + section.chars().count() + reserve > limit {
            cut += 1;
            continue;
        }
        body.push_str(&section);
    }
    if cut > 0 {
        body.push_str(&cut_note(cut));
    }
    if body.chars().count() > limit {
        body = body.chars().take(limit.saturating_sub(reserve)).collect();
        body.push_str(&cut_note(plan.clusters.len()));
    }
    body
}
