//! Snapshots of what people read: the help, and the human output of `stats`, `log`, `show` and
//! `diff`. Temporary paths, times, hashes, hosts and users are filtered out; review changes
//! with `cargo insta review` (or `INSTA_UPDATE=always`).

use crate::Project;

fn filters(p: &Project) -> Vec<(String, String)> {
    let tmp = p.dir.path().display().to_string();
    vec![
        (regex_escape(&tmp), "[PROJECT]".into()),
        (r"\b[0-9a-f]{64}\b".into(), "[HASH]".into()),
        (r"\b[0-9a-f]{16}\b".into(), "[DIGEST16]".into()),
        (r"\b[0-9a-f]{12}\b".into(), "[ID]".into()),
        (r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z".into(), "[TIME]".into()),
        (r"host:       .*".into(), "host:       [HOST]".into()),
        (r"duration:   .*".into(), "duration:   [DURATION]".into()),
    ]
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .map(
            |c| {
                if c.is_ascii_alphanumeric() || c == '/' { c.to_string() } else { format!("\\{c}") }
            },
        )
        .collect()
}

fn settings(p: &Project) -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path("snapshots");
    s.set_prepend_module_to_snapshot(false);
    for (re, with) in filters(p) {
        s.add_filter(&re, with);
    }
    s
}

fn project_with_history() -> (Project, String, String) {
    let p = Project::new();
    p.write("in", "input");
    p.write("out", "first output");
    p.run(&["cache", "save", "build", "in", "out", "--tag", "team=web", "--duration", "90s"]).ok();
    let first = p.run(&["--json", "log"]).ok().json()[0]["id"].as_str().unwrap().to_owned();
    p.write("out", "second output, longer");
    p.run(&["cache", "save", "build", "in", "out", "--duration", "2m"]).ok();
    let second = p.run(&["--json", "log"]).ok().json()[0]["id"].as_str().unwrap().to_owned();
    p.write("in2", "other");
    p.write("out2", "x");
    p.run(&["cache", "save", "test", "in2", "out2"]).ok();
    p.run(&["cache", "get", "build", "in", "got"]).ok();
    p.run(&["cache", "get", "test", "in", "got"]).code_is(1);
    (p, first, second)
}

#[test]
fn help_texts() {
    let p = Project::new();
    let s = settings(&p);
    s.bind(|| {
        insta::assert_snapshot!("help", p.run(&["--help"]).ok().stdout());
        insta::assert_snapshot!("help_run", p.run(&["run", "--help"]).ok().stdout());
        insta::assert_snapshot!("help_stats", p.run(&["stats", "--help"]).ok().stdout());
        insta::assert_snapshot!("help_rm", p.run(&["rm", "--help"]).ok().stdout());
    });
}

#[test]
fn human_output_of_stats_log_show_and_diff() {
    let (p, first, second) = project_with_history();
    let s = settings(&p);
    s.bind(|| {
        insta::assert_snapshot!("stats", p.run(&["stats"]).ok().stdout());
        insta::assert_snapshot!("stats_by_task", p.run(&["stats", "--by-task"]).ok().stdout());
        insta::assert_snapshot!("log", p.run(&["log"]).ok().stdout());
        insta::assert_snapshot!("log_all", p.run(&["log", "--all"]).ok().stdout());
        insta::assert_snapshot!("show", p.run(&["show", &second]).ok().stdout());
        insta::assert_snapshot!("diff", p.run(&["diff", &first, &second]).ok().stdout());
    });
}
