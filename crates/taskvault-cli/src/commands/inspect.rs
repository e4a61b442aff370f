//! Looking at entries: `log`, `show`, `get`, `history`, `diff`.

use std::io::Write;
use std::path::Path;

use anyhow::{Result, bail};
use taskvault::{Entry, Status, Vault};

use crate::Outcome;
use crate::cli::{Cli, Select};
use crate::human;

fn status(s: Status) -> &'static str {
    match s {
        Status::Live => "live",
        Status::Superseded => "superseded",
        Status::Corrupt => "corrupt",
        Status::Failed => "failed",
    }
}

fn tags(e: &Entry) -> String {
    e.tags.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

pub fn table(entries: &[Entry]) -> Result<()> {
    human::out(format!(
        "{:<12}  {:<24}  {:<10}  {:>10}  {:>5}  {:<20}  {}",
        "HASH", "TASK", "STATUS", "SIZE", "HITS", "CREATED", "TAGS"
    ))?;
    for e in entries {
        human::out(format!(
            "{:<12}  {:<24}  {:<10}  {:>10}  {:>5}  {:<20}  {}",
            human::short(&e.id),
            e.task,
            status(e.status),
            human::size(e.size as i64),
            e.access_count,
            human::time(e.created_ms),
            tags(e)
        ))?;
    }
    Ok(())
}

pub fn log(cli: &Cli, v: &Vault, select: &Select) -> Result<Outcome> {
    let entries = v.list(&super::filter(select)?)?;
    if cli.json {
        human::json(&entries)?;
    } else {
        table(&entries)?;
    }
    Ok(Outcome::Ok)
}

pub fn show(cli: &Cli, v: &Vault, hash: &str) -> Result<Outcome> {
    let e = v.resolve(hash)?;
    let runs = if cli.json { 0 } else { v.history(&e)?.len() };
    print_run(cli, &e, Some(runs))
}

/// Prints one run as `show` does; `runs` is how many runs its key has, where known.
pub fn print_run(cli: &Cli, e: &Entry, runs: Option<usize>) -> Result<Outcome> {
    if cli.json {
        human::json(e)?;
        return Ok(Outcome::Ok);
    }
    let mut lines = vec![
        format!("run:        {}", e.id),
        format!("key:        {}", e.key),
        format!("task:       {} (namespace {})", e.task, e.namespace),
        format!("status:     {}", status(e.status)),
        format!("created:    {}", human::time(e.created_ms)),
        format!("last used:  {} ({} hits)", human::time(e.last_access_ms), e.access_count),
        format!("expires:    {}", e.expires_ms.map_or("never".into(), human::time)),
    ];
    if let Some(err) = e.details.get("error").and_then(|v| v.as_str()) {
        // A failed run: what it raised (never served; the next call runs again).
        lines.push("error:".into());
        lines.extend(err.lines().map(|l| format!("  {l}")));
    }
    if let Some(d) = e.duration_ms {
        lines.push(format!("duration:   {}", human::duration_ms(d)));
    }
    lines.push(format!("host:       {} (user {})", e.host, e.user));
    if let Some(p) = &e.parent {
        lines.push(format!("parent:     {p}"));
    }
    if let Some(from) = e.details.get("fetched_from") {
        // A remote hit stored here: where it came from, and when.
        let url = from.get("url").and_then(|u| u.as_str()).unwrap_or("a remote");
        let at = from
            .get("at_ms")
            .and_then(|t| t.as_i64())
            .map_or(String::new(), |t| format!(" at {}", human::time(t)));
        lines.push(format!("origin:     fetched from {url}{at} (a remote hit)"));
    }
    if let Some(runs) = runs.filter(|r| *r > 1) {
        // `rm` of this run removes only it; `rm --key` all of these.
        lines.push(format!(
            "history:    {runs} runs of this key (taskvault history {})",
            human::short(&e.id)
        ));
    }
    if !e.tags.is_empty() {
        lines.push(format!("tags:       {}", tags(e)));
    }
    lines.push("inputs:".into());
    for i in &e.inputs {
        let kind = serde_json::to_value(i.kind)?;
        lines.push(format!(
            "  {:<8} {}  {:>10}  {}",
            kind.as_str().unwrap_or_default(),
            i.digest,
            human::size(i.size as i64),
            i.origin.as_deref().unwrap_or("")
        ));
    }
    for (label, value) in &e.extras {
        lines.push(format!("  {label}: {value}"));
    }
    let kind = serde_json::to_value(e.output_kind)?;
    lines.push(format!(
        "outputs ({}, {}):",
        kind.as_str().unwrap_or_default(),
        human::size(e.size as i64)
    ));
    for n in &e.outputs {
        let what = match (&n.digest, &n.target) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => format!("-> {t}"),
            _ => String::new(),
        };
        let name = if n.path.is_empty() { "." } else { &n.path };
        lines.push(format!("  {:04o}  {:>10}  {name}  {what}", n.mode, human::size(n.size as i64)));
    }
    if e.details.get("kind").and_then(|k| k.as_str()) == Some("python") {
        python_details(&e.details, &mut lines);
    } else if !e.details.is_null() {
        lines.push(format!("details:    {}", e.details));
    }
    for l in lines {
        human::out(l)?;
    }
    Ok(Outcome::Ok)
}

pub fn get(cli: &Cli, v: &Vault, hash: &str, output: Option<&Path>) -> Result<Outcome> {
    let e = v.resolve(hash)?;
    match output {
        Some(dest) => {
            if !v.restore_run(&e, dest)? {
                human::note(human::cross(&format!(
                    "{} failed verification; it was quarantined (run `taskvault verify`)",
                    human::short(&e.id)
                )));
                return Ok(Outcome::Miss);
            }
            if cli.json {
                human::json(&e)?;
            } else {
                human::note(human::check(&format!("Restored {} to {}", e.task, dest.display())));
            }
        }
        None => {
            if e.output_kind == taskvault::OutputKind::Dir {
                bail!("{} holds a directory; give a destination with -o", human::short(&e.id));
            }
            let Some(bytes) = v.run_bytes(&e)? else {
                human::note(human::cross("the output failed verification and was quarantined"));
                return Ok(Outcome::Miss);
            };
            let mut o = std::io::stdout().lock();
            o.write_all(&bytes)?;
            o.flush()?;
        }
    }
    Ok(Outcome::Ok)
}

pub fn history(cli: &Cli, v: &Vault, hash: &str) -> Result<Outcome> {
    let e = v.resolve(hash)?;
    let runs = v.history(&e)?;
    if cli.json {
        human::json(&runs)?;
    } else {
        table(&runs)?;
    }
    Ok(Outcome::Ok)
}

pub fn audit(cli: &Cli, v: &Vault, q: &taskvault::audit::AuditQuery) -> Result<Outcome> {
    let rows = v.audit(q)?;
    let mut out = std::io::stdout().lock();
    if cli.json {
        let all: Vec<serde_json::Value> = rows.iter().map(|r| r.to_json()).collect();
        human::json(&all)?;
    } else {
        for r in &rows {
            let origin =
                if r.origin.is_empty() { String::new() } else { format!(" origin={}", r.origin) };
            writeln!(out, "{}{origin}", r.to_text())?;
        }
    }
    Ok(Outcome::Ok)
}

#[derive(serde::Serialize)]
struct Difference {
    field: String,
    a: String,
    b: String,
    /// For multi-line values (a Python function's source): a line diff, in unified form.
    #[serde(skip_serializing_if = "Option::is_none")]
    lines: Option<Vec<String>>,
}

pub fn diff(cli: &Cli, v: &Vault, a: &str, b: &str) -> Result<Outcome> {
    let (ea, eb) = (v.resolve(a)?, v.resolve(b)?);
    let mut d = Vec::new();
    let mut cmp = |field: &str, x: String, y: String| {
        if x != y {
            d.push(Difference { field: field.to_owned(), a: x, b: y, lines: None });
        }
    };
    cmp("task", ea.task.clone(), eb.task.clone());
    cmp("namespace", ea.namespace.clone(), eb.namespace.clone());
    cmp("key", ea.key.clone(), eb.key.clone());
    let n = ea.inputs.len().max(eb.inputs.len());
    for i in 0..n {
        let show = |e: &Entry| {
            e.inputs.get(i).map_or("(none)".to_owned(), |r| {
                format!("{} ({})", r.digest, r.origin.as_deref().unwrap_or("bytes"))
            })
        };
        let same = ea.inputs.get(i).map(|r| r.digest) == eb.inputs.get(i).map(|r| r.digest);
        if !same {
            cmp(&format!("inputs[{i}]"), show(&ea), show(&eb));
        }
    }
    let xa: std::collections::BTreeMap<_, _> = ea.extras.iter().cloned().collect();
    let xb: std::collections::BTreeMap<_, _> = eb.extras.iter().cloned().collect();
    for k in xa.keys().chain(xb.keys()).collect::<std::collections::BTreeSet<_>>() {
        let g = |m: &std::collections::BTreeMap<String, String>| {
            m.get(k).cloned().unwrap_or("(none)".into())
        };
        cmp(k, g(&xa), g(&xb));
    }
    let oa: std::collections::BTreeMap<_, _> =
        ea.outputs.iter().map(|n| (n.path.clone(), n)).collect();
    let ob: std::collections::BTreeMap<_, _> =
        eb.outputs.iter().map(|n| (n.path.clone(), n)).collect();
    for p in oa.keys().chain(ob.keys()).collect::<std::collections::BTreeSet<_>>() {
        let g = |m: &std::collections::BTreeMap<String, &taskvault::tree::Node>| {
            m.get(p).map_or("(none)".to_owned(), |n| match (&n.digest, &n.target) {
                (Some(d), _) => format!("{d} {} {:04o}", human::size(n.size as i64), n.mode),
                (None, Some(t)) => format!("-> {t}"),
                _ => format!("dir {:04o}", n.mode),
            })
        };
        let name = if p.is_empty() { "output".to_owned() } else { format!("output {p}") };
        cmp(&name, g(&oa), g(&ob));
    }
    cmp("size", ea.size.to_string(), eb.size.to_string());
    let dur = |e: &Entry| e.duration_ms.map_or("unknown".into(), human::duration_ms);
    cmp("duration", dur(&ea), dur(&eb));
    cmp("host", ea.host.clone(), eb.host.clone());
    cmp("tags", tags(&ea), tags(&eb));
    python_diff(&ea.details, &eb.details, &mut cmp);
    let (sa, sb) = (python_text(&ea.details, "source"), python_text(&eb.details, "source"));
    if sa != sb {
        let lines = similar::TextDiff::from_lines(&sa, &sb)
            .unified_diff()
            .context_radius(2)
            .iter_hunks()
            .flat_map(|h| h.to_string().lines().map(str::to_owned).collect::<Vec<_>>())
            .collect();
        d.push(Difference { field: "source".into(), a: sa, b: sb, lines: Some(lines) });
    }
    if cli.json {
        human::json(&serde_json::json!({"a": ea.id, "b": eb.id, "differences": d}))?;
    } else if d.is_empty() {
        human::out(format!("{} and {} do not differ", human::short(&ea.id), human::short(&eb.id)))?;
    } else {
        human::out(format!("--- {}\n+++ {}", ea.id, eb.id))?;
        for x in d {
            match &x.lines {
                Some(lines) => {
                    human::out(format!("{}:", x.field))?;
                    for l in lines {
                        human::out(format!("  {l}"))?;
                    }
                }
                None => human::out(format!("{}:\n  - {}\n  + {}", x.field, x.a, x.b))?,
            }
        }
    }
    Ok(Outcome::Ok)
}

/// A field of a Python SDK run's details (empty for other runs).
fn python_text(d: &serde_json::Value, field: &str) -> String {
    if d.get("kind").and_then(|k| k.as_str()) != Some("python") {
        return String::new();
    }
    d.get(field).and_then(|v| v.as_str()).unwrap_or_default().to_owned()
}

/// What differs between two Python SDK runs besides their keys' digests: the function, each
/// argument (as displayed), the runs they consumed, the serializer and the Python version. The
/// source is compared line by line by the caller.
fn python_diff(
    a: &serde_json::Value,
    b: &serde_json::Value,
    cmp: &mut impl FnMut(&str, String, String),
) {
    let is_python =
        |d: &serde_json::Value| d.get("kind").and_then(|k| k.as_str()) == Some("python");
    if !is_python(a) && !is_python(b) {
        return;
    }
    let function = |d: &serde_json::Value| {
        format!("{}.{}", python_text(d, "module"), python_text(d, "function"))
    };
    cmp("function", function(a), function(b));
    let args = |d: &serde_json::Value| {
        d.get("args").and_then(|v| v.as_object()).cloned().unwrap_or_default()
    };
    let (aa, ab) = (args(a), args(b));
    let names: std::collections::BTreeSet<&String> = aa.keys().chain(ab.keys()).collect();
    for name in names {
        let shown = |m: &serde_json::Map<String, serde_json::Value>| {
            m.get(name).map_or("(none)".to_owned(), |v| v.as_str().unwrap_or_default().to_owned())
        };
        cmp(&format!("argument {name}"), shown(&aa), shown(&ab));
    }
    let parents = |d: &serde_json::Value| {
        let ids: Vec<&str> = d
            .get("parents")
            .and_then(|p| p.as_array())
            .map(|p| p.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        if ids.is_empty() { "(none)".to_owned() } else { ids.join(" ") }
    };
    cmp("parents", parents(a), parents(b));
    cmp("serializer", python_text(a, "serializer"), python_text(b, "serializer"));
    cmp("python", python_text(a, "python"), python_text(b, "python"));
}

/// A Python SDK run: the function, its arguments (as displayed, never part of the key), the runs
/// it consumed, and its source.
fn python_details(d: &serde_json::Value, lines: &mut Vec<String>) {
    let text = |k: &str| d.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    lines.push(format!("function:   {} (module {})", text("function"), text("module")));
    lines.push(format!("python:     {} (serializer {})", text("python"), text("serializer")));
    if let Some(args) = d.get("args").and_then(|a| a.as_object()) {
        lines.push("arguments:".into());
        for (name, value) in args {
            lines.push(format!("  {name} = {}", value.as_str().unwrap_or_default()));
        }
    }
    if let Some(parents) = d.get("parents").and_then(|p| p.as_array()).filter(|p| !p.is_empty()) {
        let ids: Vec<&str> = parents.iter().filter_map(|p| p.as_str()).collect();
        lines.push(format!("parents:    {}", ids.join(" ")));
    }
    lines.push("source:".into());
    for l in text("source").lines() {
        lines.push(format!("  {l}"));
    }
}
